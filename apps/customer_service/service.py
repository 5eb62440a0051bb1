"""Call analysis as plain Python (no HTTP): audio and/or text in, the agent's view out.

Pipeline for audio: decode (speech.load_audio) -> per channel ASR with word timestamps ->
segments (pauses / max length) -> PII redaction over the words -> per segment: voice emotion from
acoustic statistics of the segment's samples, text emotion from the segment's redacted words,
fused by the core ModalityGate that sees the ASR confidence -> intent over the caller's redacted
text -> escalation rules -> reply (text, or WAV by espeak-ng). Stereo calls: channel 0 = agent,
channel 1 = caller; emotion, intent and escalation are about the caller.
Typed text: the same minus audio (sentences are the segments, voice absent, ASR confidence 1).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from apps.customer_service.data import EKMAN_LABELS, VOICE_LABELS
from apps.customer_service.escalation import (
    EscalationRules,
    choose_output_mode,
    decide_escalation,
    reply_text,
)
from apps.customer_service.pii import normalise_redacted, without_placeholders
from apps.customer_service.settings import CustomerServiceSettings
from core.serving.uploads import plain_text

if TYPE_CHECKING:
    from core.serving.retention import ArtefactFolder

SAMPLE_RATE = 16000
REDACTED_AUDIO_NAME = "redacted.wav"
PAUSE_S = 0.6  # a silence this long between words ends a segment
TEXT_MODELS = ("intent", "dialogue_acts", "text_emotion")  # the engine's models that read text


@dataclass
class CallRequest:
    audio: bytes | None = None
    text: str | None = None
    output_mode: str | None = None  # "text" | "voice" | None (decide from the User-Agent)
    user_agent: str | None = None
    redact_audio: bool = False  # also return the audio with every redacted word silenced


class InputError(ValueError):
    """Bad input the client can fix; ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_AUDIO_STATUS = {"not_audio": 415, "too_long": 413, "too_short": 422, "empty": 422, "corrupt": 422,
                 "too_many_channels": 422, "bad_sample_rate": 422}


def check_request(req: CallRequest, settings: CustomerServiceSettings) -> str:
    """The request's text, cleaned, once the checks that need no model have passed (no input, text
    too long, audio whose header says it is too long). The API runs them before it acknowledges a
    background job, so such a call is refused at once instead of accepted and then failed."""
    text = plain_text(req.text or "")
    if req.audio is None and not text:
        raise InputError(422, "no_input", "Send audio (WAV, FLAC, OGG or MP3) and/or text.")
    if req.redact_audio and req.audio is None:
        raise InputError(422, "no_audio_to_redact", "redact_audio needs an audio file (WAV, FLAC, OGG or MP3).")
    if len(text) > settings.max_text_chars:
        raise InputError(413, "text_too_long", f"Text is {len(text)} characters; the limit is {settings.max_text_chars}.")
    # every sentence or line is read by the text models: 20,000 characters of "a\n" are 10,000 reads
    if (count := len(text_segments(text))) > settings.max_text_segments:
        raise InputError(413, "too_many_segments",
                         f"Text has {count} sentences or lines; the limit is {settings.max_text_segments} "
                         "(analyse a longer chat in parts).")
    if req.audio is not None:
        from apps.customer_service.speech.audio import AudioError, check_duration

        try:
            check_duration(req.audio, settings.max_audio_seconds, settings.min_audio_seconds)
        except AudioError as exc:
            raise InputError(_AUDIO_STATUS.get(exc.code, 422), exc.code, str(exc)) from None
    return text


def redacted_audio_path(settings: CustomerServiceSettings, artefact_id: str) -> Path:
    """Where a call's silenced audio lives; KeyError for an id that is not one of ours (32 hex)."""
    if not re.fullmatch(r"[0-9a-f]{32}", artefact_id):
        raise KeyError(artefact_id)
    return Path(settings.artefact_dir) / "customer-service" / artefact_id / REDACTED_AUDIO_NAME


# a stored call's redacted audio, named by the link its analysis answered with (api._with_audio_link)
_AUDIO_LINK = re.compile(r"/v1/audio/([0-9a-f]{32})/")


def call_artefacts(settings: CustomerServiceSettings, payload: dict) -> list[Path]:
    """The files a stored call owns (its redacted recording's folder), erased with it."""
    match = _AUDIO_LINK.search(str((payload.get("redacted_audio") or {}).get("url") or ""))
    return [redacted_audio_path(settings, match.group(1)).parent] if match else []


def call_artefact_folder(settings: CustomerServiceSettings) -> ArtefactFolder:
    """The calls' redacted-recording folders as retention sees them (``core.serving.retention.ArtefactFolder``):
    a stored call's files (``call_artefacts``), named by its payload's ``redacted_audio.url``; a folder no
    stored call names (its process died before the row was stored) is swept. ``create_app``'s ``artefacts``."""
    import functools

    from core.serving.retention import ArtefactFolder

    return ArtefactFolder(Path(settings.artefact_dir) / "customer-service", functools.partial(call_artefacts, settings),
                          fields=(("redacted_audio", "url"),))


def _dual_mono(samples: np.ndarray) -> bool:
    """True when the two channels of (2, N) ``samples`` carry the same signal (their difference 40 dB
    down): a mono call saved as stereo, not agent and caller; read as two, every word came twice."""
    a, b = samples[0].astype(np.float64), samples[1].astype(np.float64)
    return float(np.sum((a - b) ** 2)) <= 1e-4 * float(np.sum(a ** 2 + b ** 2))


def text_segments(text: str) -> list[str]:
    """The segments of typed text: its sentences and lines."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+|\n+", text) if p.strip()]
    return parts or ([text.strip()] if text.strip() else [])


# Where one turn may hold two requests: sentence ends, and "and" / "also" / "plus" between clauses.
_CLAUSE_BREAK = re.compile(r"(?<=[.!?;])\s+|,?\s+\b(?:and also|and then|and|also|plus)\b\s+", re.IGNORECASE)


# Where a request for a person may sit inside a request sentence: after a comma or a sentence end.
_PIECES = re.compile(r"(?<=[.!?;,])\s+")


def clauses(text: str, min_words: int = 3) -> list[str]:
    """The clauses of a turn that could each be a request (at least ``min_words`` words), or the turn
    whole when fewer than two are."""
    pieces = [p.strip(" ,;") for p in _CLAUSE_BREAK.split(text)]
    pieces = [p for p in pieces if len(p.split()) >= min_words]
    return pieces if len(pieces) > 1 else [text]


def caller_utterances(segments: list[dict]) -> list[tuple[list[int], str]]:
    """The caller's utterances as (segment indices, text without placeholders), in order. Segments are
    windows for the voice (cut at pauses and at ``segment_seconds``); an utterance joins the caller's
    consecutive segments that the length cap cut (less than ``PAUSE_S`` apart) or that a punctuating
    recogniser shows to be one sentence (the first does not end one, the next starts in lower case), with
    no agent segment between. Typed text has no times: each sentence is one utterance; nor does a segment
    marked ``endpointed`` (a streamed final: the recogniser's endpointer heard the caller stop) continue."""
    out: list[tuple[list[int], list[str]]] = []
    last = None  # index of the previous segment when it was the caller's
    for i, seg in enumerate(segments):
        if seg["speaker"] != "caller":
            last = None
            continue
        text = without_placeholders(seg["text"])
        if not text:
            continue
        if last is not None and out and _same_utterance(segments[last], seg):
            out[-1][0].append(i)
            out[-1][1].append(text)
        else:
            out.append(([i], [text]))
        last = i
    return [(members, " ".join(parts)) for members, parts in out]


def _same_utterance(prev: dict, seg: dict) -> bool:
    if prev.get("end") is None or seg.get("start") is None or prev.get("endpointed"):
        return False
    if seg["start"] - prev["end"] < PAUSE_S:
        return True
    text = prev["text"].rstrip()
    return bool(text) and text[-1] not in ".!?" and seg["text"][:1].islower() and any(c in ".!?" for c in text + seg["text"])


def redaction_records(words, redactions, char_offset: int = 0, speaker: str = "caller") -> list[dict]:
    """``redactions`` (``.type``, ``.start``, ``.end`` into ``words`` joined by spaces) as a call stores them:
    offsets moved by ``char_offset`` (where these words start in the call's unredacted transcript) and the
    times of each redaction's own words (two phone numbers in a call are two stretches of audio)."""
    offsets = CustomerServiceEngine._word_offsets(words)
    out = []
    for r in redactions:
        span = [w for w, (a, b) in zip(words, offsets) if a < r.end and b > r.start] or words
        out.append({"type": r.type, "start": r.start + char_offset, "end": r.end + char_offset,
                    "start_s": round(span[0].start, 3) if span else None,
                    "end_s": round(span[-1].end, 3) if span else None, "speaker": speaker})
    return out


def _probs_dict(labels, row) -> dict[str, float]:
    return {name: round(float(p), 4) for name, p in zip(labels, row)}


def recognizer_for(settings: CustomerServiceSettings):
    """The recogniser ``settings`` name: the embedded pocketsphinx with its bank-adapted LM, or a Whisper /
    CTC / sequence-to-sequence model from a local path (Whisper without one: the installed Whisper base)."""
    from apps.customer_service.speech import create_recognizer
    from apps.customer_service.speech.asr import vad_option

    if settings.asr_backend == "pocketsphinx":
        return create_recognizer("pocketsphinx", lm=settings.asr_lm, maxhmmpf=settings.asr_maxhmmpf)
    return create_recognizer(settings.asr_backend, model_path=settings.asr_model_path,
                             **vad_option(settings.asr_backend, settings.asr_vad))


class MemoizedTexts:
    """A text model whose ``predict_proba(texts)`` reads each distinct text once (rows kept by text, ``rows``
    given in advance when known); everything else (``config``, ``version`` ...) is the model's. Returns what
    the model returns: an array, or a tensor for the text classifiers."""

    def __init__(self, model, rows: dict[str, np.ndarray] | None = None) -> None:
        self.model = model
        self._rows: dict[str, np.ndarray] = dict(rows or {})
        self._tensor = None  # whether the model answers with torch tensors (known after its first call)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def predict_proba(self, texts: list[str]):
        if not texts:
            return self.model.predict_proba([])
        missing = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if missing:
            out = self.model.predict_proba(missing)
            self._tensor = not isinstance(out, np.ndarray)
            self._rows |= dict(zip(missing, np.asarray(out.numpy() if self._tensor else out)))
        rows = np.stack([self._rows[t] for t in texts])
        if self._tensor:
            import torch

            return torch.from_numpy(rows)
        return rows


class CustomerServiceEngine:
    """Holds the models; ``analyze`` is thread-safe for concurrent reads (torch inference only)."""

    def __init__(
        self,
        settings: CustomerServiceSettings,
        *,
        intent=None,
        dialogue_acts=None,
        text_emotion=None,
        voice=None,
        fusion=None,
        recognizer=None,
        synthesize=None,
    ):
        self.settings = settings
        self.intent = intent
        self.dialogue_acts = dialogue_acts
        self.text_emotion = text_emotion
        self.voice = voice
        self.fusion = fusion
        self.recognizer = recognizer
        self._synthesize = synthesize
        self.rules = EscalationRules.from_dict(settings.escalation) if settings.escalation else EscalationRules()

    @classmethod
    def from_settings(cls, settings: CustomerServiceSettings) -> CustomerServiceEngine:
        """Load every shipped bundle (and the embedded ASR) named in ``settings``."""
        import torch

        from core.offline import enforce_offline

        enforce_offline()
        torch.set_num_threads(max(1, settings.torch_threads))
        from apps.customer_service.dialogue import load_dialogue_acts
        from apps.customer_service.model import load_fusion, load_text_classifier, load_voice_model

        engine = cls(
            settings,
            intent=load_text_classifier(settings.intent_bundle),
            dialogue_acts=load_dialogue_acts(settings.dialogue_acts_bundle) if settings.dialogue_acts_bundle else None,
            text_emotion=load_text_classifier(settings.text_emotion_bundle),
            voice=load_voice_model(settings.voice_emotion_bundle),
            fusion=load_fusion(settings.fusion_bundle),
            recognizer=recognizer_for(settings),
        )
        engine.warm_up_voice()
        return engine

    def warm_up_voice(self) -> None:
        """Run the voice features once at load time: the first call otherwise pays several seconds
        of one-off costs (librosa's JIT compilation, openSMILE's configuration, loading the speaker
        encoder) inside a request."""
        if self.voice is None:
            return
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        self.voice.features((0.3 * np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)))
                            .astype(np.float32))

    # ---- identity for X-Model-Version / X-Model-Sha256 ----
    def versions(self) -> dict[str, str]:
        out = {}
        for name in ("intent", "dialogue_acts", "text_emotion", "voice", "fusion"):
            model = getattr(self, name)
            out[name] = str(getattr(model, "version", "unknown")) if model is not None else "absent"
        # which weights transcribed the call ("whisper-base", "ctc-<folder>", "seq2seq-<folder>"); pocketsphinx is its name
        rec = self.recognizer
        out["asr"] = "absent" if rec is None else str(getattr(rec, "version", None) or getattr(rec, "name", "unknown"))
        return out

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for name in ("intent", "dialogue_acts", "text_emotion", "voice", "fusion"):
            digest.update(str(getattr(getattr(self, name), "sha256", "")).encode())
        return digest.hexdigest()

    def memoized(self, names: tuple[str, ...] = TEXT_MODELS) -> CustomerServiceEngine:
        """This engine (the same models) with the text models ``names`` reading each distinct text once
        (``MemoizedTexts``) for as long as the copy lives: one call, or one live session."""
        reader = copy.copy(self)
        for name in names:
            if getattr(self, name) is not None:
                setattr(reader, name, MemoizedTexts(getattr(self, name)))
        return reader

    # ---- the pipeline ----
    def analyze(self, req: CallRequest) -> dict[str, Any]:
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        text = check_request(req, self.settings)
        segments: list[dict] = []
        redactions: list[dict] = []
        transcript_parts: list[str] = []
        written: list[str] = []  # the same parts in written form
        duration = 0.0
        offset = 0  # where the typed text starts in the unredacted transcript
        redacted_audio = None
        warnings: list[str] = []
        if req.audio is not None:
            silenced: list | None = [] if req.redact_audio else None
            segments, redactions, transcript_parts, duration, offset = self._audio_segments(req.audio, timings, silenced, warnings)
            segments.sort(key=lambda seg: seg["start"])  # a stereo call reads as the conversation went
            written = [normalise_redacted(part) for part in transcript_parts]
            if silenced is not None:
                t0 = time.perf_counter()
                redacted_audio = self._save_redacted_audio(silenced)
                timings["audio_redaction_ms"] = (time.perf_counter() - t0) * 1000
        if text:
            segments_t, redactions_t = self._text_segments(text, timings)
            for r in redactions_t:
                r["start"] += offset
                r["end"] += offset
            segments += segments_t
            redactions += redactions_t
            transcript_parts.append(" ".join(s["text"] for s in segments_t))
            written.append(transcript_parts[-1])  # typed text is written already (see _text_segments)
        # the cost of a text grows with its distinct sentences, not its repeated ones ("Cancel. " 2,500 times
        # took 49 s on one thread here), and a clause that is also a whole turn is read once
        reader = self.memoized()
        t0 = time.perf_counter()
        reader.read_emotions(segments)
        timings["emotion_ms"] = (time.perf_counter() - t0) * 1000
        caller = [s for s in segments if s["speaker"] == "caller"]
        t0 = time.perf_counter()
        intent, requests = reader.read_intents(segments)
        timings["intent_ms"] = (time.perf_counter() - t0) * 1000
        call_emotion = self.call_emotion(caller)
        escalation = decide_escalation(self.rules, caller, intent, requests)
        reply = self.reply(req, intent, call_emotion, escalation, timings)
        timings["total_ms"] = (time.perf_counter() - t_all) * 1000
        return self.call_result(" ".join(p for p in transcript_parts if p), " ".join(p for p in written if p),
                                redactions, duration, segments,
                                {"emotion": call_emotion, "intent": intent, "requests": requests,
                                 "escalation": escalation}, reply, timings, redacted_audio, warnings)

    def call_result(self, text: str, normalised: str, redactions: list[dict], duration_s: float, segments: list[dict],
                    call: dict, reply: dict, timings: dict, redacted_audio: dict | None, warnings: list[str]) -> dict:
        """An analysed call as ``/v1/calls:analyze`` answers and stores it; ``text``: the redacted transcript
        (the redactions' times and offsets are its words'), ``normalised``: the same in written form ("£12.50"
        for "twelve pounds fifty"); ``call``: its ``emotion``, ``intent``, ``requests`` and ``escalation``."""
        return {
            "transcript": {"text": text, "normalised": normalised, "redactions": redactions,
                           "duration_s": round(duration_s, 3)},
            "segments": segments,
            **{k: call[k] for k in ("emotion", "intent", "requests", "escalation")},
            "reply": reply,
            "model_versions": self.versions(),
            "timings_ms": {k: round(v, 2) for k, v in timings.items()},
            "redacted_audio": redacted_audio,
            "warnings": warnings,
        }

    def _save_redacted_audio(self, silenced: list[tuple[np.ndarray, float]]) -> dict:
        """The silenced channels as a 16-bit PCM WAV in the artefact folder, written and synced before
        the result that links to it is stored; (C, N) samples at SAMPLE_RATE with the seconds silenced."""
        import io
        import uuid

        import soundfile as sf

        from core.serving import write_durably

        samples = np.stack([x for x, _ in silenced], axis=1)  # (N, C)
        artefact_id = uuid.uuid4().hex
        wav = io.BytesIO()
        sf.write(wav, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        write_durably(redacted_audio_path(self.settings, artefact_id), wav.getvalue())
        return {"artefact_id": artefact_id, "sample_rate": SAMPLE_RATE, "channels": samples.shape[1],
                "seconds": round(samples.shape[0] / SAMPLE_RATE, 3),
                "silenced_s": round(max(seconds for _, seconds in silenced), 3)}

    # ---- audio ----
    def _audio_segments(self, data: bytes, timings: dict, silenced: list | None = None, warnings: list | None = None
                        ) -> tuple[list[dict], list[dict], list[str], float, int]:
        """Segments, redactions, the redacted text per channel, the duration, and the length of the
        unredacted transcript so far (with its trailing space: where a following part starts).
        ``silenced``: a list to receive each channel of the audio (16 kHz) with its redacted words
        silenced, with the seconds silenced (``pii.redact_audio``); ``warnings``: a list to receive what
        the caller should know about the recording (it was cut short, or its header understated it)."""
        from apps.customer_service.pii import redact_audio, redact_words
        from apps.customer_service.speech import AudioError, load_audio

        t0 = time.perf_counter()
        try:
            audio = load_audio(data, max_seconds=self.settings.max_audio_seconds, max_channels=2,
                               min_seconds=self.settings.min_audio_seconds)
        except AudioError as exc:
            raise InputError(_AUDIO_STATUS.get(exc.code, 422), exc.code, str(exc)) from None
        timings["decode_ms"] = (time.perf_counter() - t0) * 1000
        if audio.truncated_from_s is not None and warnings is not None:
            warnings.append(f"the recording is cut short: its header declares {audio.truncated_from_s:.1f} s, "
                            f"{audio.duration_s:.1f} s were there and were analysed")
        if audio.understated_from_s is not None and warnings is not None:
            warnings.append(f"the recording's header is wrong: it declares {audio.understated_from_s:.1f} s of audio, "
                            f"{audio.duration_s:.1f} s follow it and were all analysed")
        roles = ["caller"] if audio.channels == 1 or _dual_mono(audio.samples) else ["agent", "caller"]
        segments, redactions, parts = [], [], []
        asr_ms = 0.0
        char_offset = 0
        for ch, role in enumerate(roles):
            samples = audio.channel(ch)
            words, confidence = [], 0.0
            if self.recognizer is not None:
                t0 = time.perf_counter()
                tr = self.recognizer.transcribe(samples, SAMPLE_RATE)
                asr_ms += (time.perf_counter() - t0) * 1000
                words = [w for w in tr.words if w.text and not w.text.startswith(("<", "["))]
                confidence = float(tr.confidence)
            result = redact_words(words)[0] if words else None
            word_types = self._word_types(words, result)
            offsets = self._word_offsets(words)
            redactions += redaction_records(words, result.redactions if result else [], char_offset, role)
            if silenced is not None:
                quiet = redact_audio(samples, SAMPLE_RATE, words, sorted(word_types))
                silenced.append((quiet, float(np.sum((quiet == 0) & (samples != 0))) / SAMPLE_RATE))
            red_text = result.text if result else ""
            parts.append(red_text)
            # redaction offsets refer to the unredacted words (as redact_words joined them), and the
            # transcript joins only the channels that said something
            plain_len = offsets[-1][1] if words else 0
            char_offset += plain_len + 1 if plain_len else 0
            for seg_words in self._split_words(words, samples.size / SAMPLE_RATE):
                start, end = seg_words["start"], seg_words["end"]
                text = self._redacted_words(words, seg_words["idx"], word_types)
                conf = float(np.mean([words[i].confidence for i in seg_words["idx"]])) if seg_words["idx"] else 0.0
                a, b = int(max(0.0, start - 0.1) * SAMPLE_RATE), int((end + 0.1) * SAMPLE_RATE)
                segments.append({"speaker": role, "start": round(start, 3), "end": round(end, 3), "text": text,
                                 "normalised": normalise_redacted(text),
                                 "asr_confidence": round(conf if seg_words["idx"] else confidence, 4),
                                 "_samples": samples[a:b]})
        timings["asr_ms"] = asr_ms
        return segments, redactions, parts, audio.duration_s, char_offset

    @staticmethod
    def _word_offsets(words) -> list[tuple[int, int]]:
        """Each word's [start, end) in the words joined by spaces (the text redact_words redacts)."""
        offsets, pos = [], 0
        for w in words:
            offsets.append((pos, pos + len(w.text)))
            pos += len(w.text) + 1
        return offsets

    @classmethod
    def _word_types(cls, words, result) -> dict[int, str]:
        """Word index -> PII type for words inside a redaction."""
        types: dict[int, str] = {}
        if result is None:
            return types
        for i, (a, b) in enumerate(cls._word_offsets(words)):
            for r in result.redactions:
                if a < r.end and b > r.start:
                    types[i] = r.type
        return types

    @staticmethod
    def _redacted_words(words, idx: list[int], word_types: dict[int, str]) -> str:
        out, last_type = [], None
        for i in idx:
            kind = word_types.get(i)
            if kind is None:
                out.append(words[i].text)
                last_type = None
            elif kind != last_type:
                out.append(f"[{kind.upper()}]")
                last_type = kind
        return " ".join(out)

    def _split_words(self, words, duration: float) -> list[dict]:
        """Segments of word indices broken at pauses and at ``segment_seconds``; fixed windows when
        the recogniser heard no words (the voice branch still reads the audio)."""
        max_len = self.settings.segment_seconds
        if not words:
            n = max(1, int(np.ceil(duration / max_len)))
            return [{"start": i * max_len, "end": min(duration, (i + 1) * max_len), "idx": []} for i in range(n)]
        segs, cur = [], [0]
        for i in range(1, len(words)):
            pause = words[i].start - words[i - 1].end
            if pause >= PAUSE_S or words[i].end - words[cur[0]].start > max_len:
                segs.append(cur)
                cur = []
            cur.append(i)
        segs.append(cur)
        return [{"start": words[s[0]].start, "end": words[s[-1]].end, "idx": s} for s in segs]

    # ---- text ----
    def _text_segments(self, text: str, timings: dict) -> tuple[list[dict], list[dict]]:
        from apps.customer_service.pii import redact

        t0 = time.perf_counter()
        result = redact(text)
        redactions = [{"type": r.type, "start": r.start, "end": r.end, "start_s": None, "end_s": None,
                       "speaker": "caller"} for r in result.redactions]
        # typed text is its own written form: the normaliser is for spoken words, and on chat it would drop
        # punctuation ("1985, ok" -> "1985 ok") and read "oh, oh" as "00"
        segments = [{"speaker": "caller", "start": None, "end": None, "text": s, "normalised": s, "asr_confidence": 1.0,
                     "_samples": None} for s in text_segments(result.text)]
        timings["redaction_ms"] = (time.perf_counter() - t0) * 1000
        return segments, redactions

    # ---- intent ----
    def read_intents(self, segments: list[dict]) -> tuple[dict | None, list[dict]]:
        """Each caller utterance's dialogue acts and, for a request, its intent (set on each of its segments);
        the call's intent (the mean of its requests' probabilities: every request votes once, "yes" and
        "thanks, bye" do not vote, and nothing is cut to the model's 64 tokens) and the distinct requests
        in call order. Without the dialogue-act model every caller utterance counts as a request. When it
        finds none (a greeting and a request for a person), the call's intent is still read from every
        utterance, as the best guess an "intent unclear" rule can weigh, but nothing gets an intent or is
        listed. An utterance asking for a person is that request, which no BANKING77 intent names ("can I
        speak to a manager" read as receiving_money): only its clauses that ask something else are read."""
        turns = caller_utterances(segments)
        if not turns or self.intent is None:
            return None, []
        requests, handoffs = list(range(len(turns))), []
        if self.dialogue_acts is not None:
            proba = self.dialogue_acts.predict_proba([t for _, t in turns])
            names, threshold = self.dialogue_acts.config.acts, self.dialogue_acts.config.threshold
            for (members, _), row in zip(turns, proba):
                for i in members:
                    segments[i]["acts"] = [name for name, p in zip(names, row) if p >= threshold]
            asking = [k for k, (members, _) in enumerate(turns) if "request" in segments[members[0]]["acts"]]
            handoffs = [k for k in asking if "handoff" in segments[turns[k][0][0]]["acts"]]
            requests = [k for k in asking if k not in handoffs]
        proba = self.intent.predict_proba([turns[k][1] for k in requests or range(len(turns))]).numpy()
        labels = self.intent.config.labels
        listed: dict[str, dict] = {}

        first = min(requests, default=len(turns))
        later_min = self.rules.later_request_min_confidence
        if later_min is None:
            later_min = self.rules.request_min_confidence

        def add(label: str, confidence: float, members: list[int], k: int) -> None:
            if confidence >= (later_min if k > first else self.rules.request_min_confidence):
                item = listed.setdefault(label, {"label": label, "confidence": 0.0, "segments": []})
                item["confidence"] = max(item["confidence"], round(confidence, 4))
                item["segments"] += [i for i in members if i not in item["segments"]]

        # An utterance may ask two things, and one asking for a person may ask something else too: their
        # clauses are read as well, in one pass (``_clause_intents``)
        reread = requests + handoffs
        found = {}
        if self.dialogue_acts is not None and reread:
            found = self._clause_intents([turns[k][1] for k in reread], [2] * len(requests) + [1] * len(handoffs))
        clause_intents = {k: found.get(m) for m, k in enumerate(reread)}
        row_of = {k: n for n, k in enumerate(requests)}
        for k in sorted(reread):  # in call order
            members = turns[k][0]
            if k in row_of:
                n = row_of[k]
                best = int(proba[n].argmax())
                for i in members:
                    segments[i]["intent"] = {"label": labels[best], "confidence": round(float(proba[n, best]), 4)}
                for label, confidence in clause_intents[k] or [(labels[best], float(proba[n, best]))]:
                    add(label, confidence, members, k)
            else:  # a request for a person: what else it asks, if anything
                for label, confidence in clause_intents[k] or []:
                    add(label, confidence, members, k)
        if self.dialogue_acts is not None and requests:
            self._handoff_in_pieces(segments, [turns[k] for k in requests])
        call = proba.mean(0)
        top = np.argsort(call)[::-1][:3]
        intent = {"label": labels[top[0]], "confidence": round(float(call[top[0]]), 4),
                  "top": [{"label": labels[i], "confidence": round(float(call[i]), 4)} for i in top]}
        return intent, list(listed.values())

    def _handoff_in_pieces(self, segments: list[dict], turns: list[tuple[list[int], str]]) -> None:
        """A request for a person inside a request sentence, after a comma ("my card was stolen yesterday, put
        me through to someone now"): the act model reads the whole as a request only. Its pieces (split at
        commas and sentence ends, 3 words or more) are read too, for the handoff escalation; the request keeps
        its intent, which was read before."""
        pieces = [(members, piece) for members, text in turns if len(parts := _PIECES.split(text)) > 1
                  for piece in parts if len(piece.split()) >= 3]
        if not pieces:
            return
        names, threshold = list(self.dialogue_acts.config.acts), self.dialogue_acts.config.threshold
        proba = self.dialogue_acts.predict_proba([piece for _, piece in pieces])
        for (members, _), row in zip(pieces, proba):
            if row[names.index("handoff")] >= threshold:
                for i in members:
                    if "handoff" not in segments[i]["acts"]:
                        segments[i]["acts"].append("handoff")

    def _clause_intents(self, texts: list[str], at_least: list[int]) -> dict[int, list[tuple[str, float]]]:
        """Request turns that ask two things in one breath ("my card was stolen and I need a new pin"):
        {turn: [(intent, confidence) of each clause]} for a turn whose clauses (split at sentence ends and
        "and" / "also" / "plus") include ``at_least[turn]`` requests (not for a person) with different,
        confident intents. A turn not split that way keeps its one intent; "I topped up and it failed" stays one
        request. Every request turn is read so: gating it on the whole turn's confidence (< 0.6) missed 5 of
        6 such turns in the first hand-written held-out calls (README, "Calls of many turns"). A request for
        a person is read with ``at_least`` 1: "my card was stolen and put me through to someone" still names
        the card."""
        parts = {n: pieces for n, text in enumerate(texts) if len(pieces := clauses(text)) > 1}
        if not parts:
            return {}
        flat = [(n, piece) for n, pieces in parts.items() for piece in pieces]
        acts = self.dialogue_acts.predict_proba([piece for _, piece in flat])
        names, threshold = list(self.dialogue_acts.config.acts), self.dialogue_acts.config.threshold
        asked = [(n, piece) for (n, piece), row in zip(flat, acts)
                 if row[names.index("request")] >= threshold and row[names.index("handoff")] < threshold]
        if not asked:
            return {}
        proba = self.intent.predict_proba([piece for _, piece in asked]).numpy()
        labels = self.intent.config.labels
        found: dict[int, list[tuple[str, float]]] = {}
        for (n, _), row in zip(asked, proba):
            best = int(row.argmax())
            if row[best] >= self.rules.request_min_confidence and labels[best] not in (x for x, _ in found.get(n, [])):
                found.setdefault(n, []).append((labels[best], float(row[best])))
        return {n: intents for n, intents in found.items() if len(intents) >= at_least[n]}

    # ---- emotion ----
    def read_emotions(self, segments: list[dict]) -> None:
        """Each segment's emotion (set in place): the voice read from its ``_samples`` (removed), the text from
        its words without placeholders, fused by the gate that sees its ASR confidence."""
        import torch

        from apps.customer_service.model import (
            CONTACT_CENTRE_LABELS,
            ekman_to_contact_matrix,
            voice_to_ekman_matrix,
        )

        if not segments:
            return
        n = len(segments)
        voice_p = np.full((n, len(EKMAN_LABELS)), 1.0 / len(EKMAN_LABELS), dtype=np.float32)
        text_p = voice_p.copy()
        present = np.zeros((n, 2), dtype=bool)
        voice_raw: dict[int, np.ndarray] = {}
        if self.voice is not None:
            feats, rows = [], []
            for i, s in enumerate(segments):
                samples = s.pop("_samples", None)
                if samples is None or samples.size < SAMPLE_RATE // 4:
                    continue
                try:
                    feats.append(self.voice.features(samples))  # the blocks the bundle was trained on
                    rows.append(i)
                except ValueError:  # silent or too short: the voice branch abstains
                    continue
            if rows:
                raw = self.voice.predict_proba(np.stack(feats))  # (R, 9)
                ekman = raw @ voice_to_ekman_matrix().numpy()
                for j, i in enumerate(rows):
                    voice_p[i], present[i, 0] = ekman[j], True
                    voice_raw[i] = raw[j]
        for s in segments:
            s.pop("_samples", None)
        # a segment that is only a redaction ("[CARD]") says nothing about emotion: voice alone reads it
        model_text = [without_placeholders(s["text"]) for s in segments]
        text_rows = [i for i, t in enumerate(model_text) if t]
        if text_rows and self.text_emotion is not None:
            probs = self.text_emotion.predict_proba([model_text[i] for i in text_rows]).numpy()
            for j, i in enumerate(text_rows):
                text_p[i], present[i, 1] = probs[j], True
        conf = np.array([s["asr_confidence"] for s in segments], dtype=np.float32)
        if self.fusion is not None:
            with torch.no_grad():
                logp, weights = self.fusion(torch.tensor(voice_p), torch.tensor(text_p), torch.tensor(present),
                                            torch.tensor(conf))
            fused = logp.exp().numpy()
            weights = weights.numpy()
        else:  # no fusion bundle: equal weights over present branches
            weights = present / np.maximum(present.sum(1, keepdims=True), 1)
            fused = weights[:, :1] * voice_p + weights[:, 1:] * text_p
        contact = fused @ ekman_to_contact_matrix().numpy()
        for i, s in enumerate(segments):
            if not present[i].any():
                s.update({"emotion": None, "contact_centre": None, "ekman": None,
                          "modality_weights": {"voice": 0.0, "text": 0.0}})
                continue
            s["ekman"] = _probs_dict(EKMAN_LABELS, fused[i])
            s["contact_centre"] = _probs_dict(CONTACT_CENTRE_LABELS, contact[i])
            s["emotion"] = CONTACT_CENTRE_LABELS[int(contact[i].argmax())]
            s["modality_weights"] = {"voice": round(float(weights[i, 0]), 4), "text": round(float(weights[i, 1]), 4)}
            s["voice"] = _probs_dict(VOICE_LABELS, voice_raw[i]) if i in voice_raw else None
            s["text_emotion"] = _probs_dict(EKMAN_LABELS, text_p[i]) if present[i, 1] else None

    @staticmethod
    def call_emotion(caller: list[dict]) -> dict | None:
        views = [s["contact_centre"] for s in caller if s.get("contact_centre")]
        if not views:
            return None
        mean = {k: round(float(np.mean([v[k] for v in views])), 4) for k in views[0]}
        return {"label": max(mean, key=mean.get), "probabilities": mean}

    # ---- reply ----
    def reply(self, req: CallRequest, intent, call_emotion, escalation, timings: dict) -> dict:
        mode = choose_output_mode(req.output_mode or (None if self.settings.default_output_mode == "auto"
                                                      else self.settings.default_output_mode), req.user_agent)
        text = reply_text(intent["label"] if intent else None, call_emotion["label"] if call_emotion else None,
                          escalation["escalate"])
        out: dict[str, Any] = {"mode": mode, "text": text, "audio_wav_base64": None}
        if mode == "voice":
            t0 = time.perf_counter()
            try:
                synth = self._synthesize
                if synth is None:
                    from apps.customer_service.speech import synthesize as synth
                wav = synth(text)
                out["audio_wav_base64"] = base64.b64encode(wav).decode("ascii")
            except Exception as exc:  # TTSUnavailable (no espeak-ng) or TTSError: answer in text
                out.update({"mode": "text", "voice_unavailable": f"{type(exc).__name__}: {exc}"})
            timings["tts_ms"] = (time.perf_counter() - t0) * 1000
        return out
