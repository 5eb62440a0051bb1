"""A call read while it happens: each final hypothesis of the streaming recogniser gets the same reading
as a segment of ``/v1/calls:analyze`` (emotion from voice and text, dialogue acts, intent), and the call so
far its intent, requests, emotion and escalation, so an agent sees "caller asked for a person" or "urgent
intent lost_or_stolen_card" during the call instead of after it.

Each final is one utterance (the endpointer heard the caller stop). The call is re-read whole at each final
(its intent is the mean of all its requests, its escalation weighs every segment), but each text is read by
each model once per session: ``service.MemoizedTexts``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from apps.customer_service.escalation import decide_escalation
from apps.customer_service.pii import normalise_redacted
from apps.customer_service.service import redaction_records
from apps.customer_service.speech.router import CONTEXT_WORDS

# What a streamed segment shows of the engine's segment (the samples and private keys stay behind).
_SEGMENT_KEYS = ("speaker", "start", "end", "text", "normalised", "asr", "asr_confidence", "emotion", "contact_centre", "ekman",
                 "modality_weights", "voice", "text_emotion", "acts", "intent")


# A segment's emotion fields before it is read (and after a reading that failed): as read_emotions leaves a
# segment neither branch could read.
UNREAD = {"emotion": None, "contact_centre": None, "ekman": None, "modality_weights": {"voice": 0.0, "text": 0.0}}


class LiveCall:
    """The caller's side of one streamed call. ``add`` takes a final (its text already redacted, its audio)
    and returns the ``analysis`` message; ``close`` returns the ``summary`` at the end of the call, after
    storing the call with ``save`` (the analysis a ``/v1/calls:analyze`` call stores, so it counts in the
    day's numbers). Calls to one LiveCall are serialised (a lock); the engine is shared between sessions
    (thread-safe reads)."""

    def __init__(self, engine, save: Callable[[dict], str] | None = None) -> None:
        self.engine = engine.memoized(("intent", "dialogue_acts"))  # this call's memoised text readers
        self.save = save
        # a recogniser other than the streaming one (Whisper, CTC, seq2seq: settings.asr_backend) writes each final
        # again from its audio; the partials cannot wait for it, the reading and the stored call can
        rec = engine.recognizer
        self.redecoder = rec if rec is not None and getattr(rec, "name", "pocketsphinx") != "pocketsphinx" else None
        self._heard: list[str] = []  # the last words re-decoded, unredacted: context for redaction across finals
        self.segments: list[dict] = []
        self.redactions: list[dict] = []
        self._plain_chars = 0  # length of the unredacted transcript so far (redaction offsets point into it)
        self._analysis_ms = 0.0
        self._lock = threading.Lock()

    def add(self, text: str, start: float, end: float, confidence: float, samples: np.ndarray | None,
            words: list | tuple = (), redactions: list[dict] | tuple = ()) -> dict:
        """One final: ``text`` as shown to the agent (redacted), times in seconds from the start of the stream,
        the recogniser's confidence and the utterance's 16 kHz samples (None: the voice branch abstains); its
        recognised ``words`` and ``redactions`` ({type, start, end} into the words joined by spaces), which
        the stored call keeps as ``/v1/calls:analyze`` does (types, offsets, times; never the values). With
        another recogniser configured (``redecoder``), the final is first written again by it from its
        samples and read in those words (the segment's ``asr`` names it; "stream" otherwise)."""
        with self._lock:
            t0 = time.perf_counter()
            written_again = self._redecode(samples, start)
            if written_again is not None:
                text, confidence, words, redactions = written_again
            # endpointed: the endpointer heard the caller stop, so the next final starts another utterance
            # however short the pause (two finals 0.5 s apart were read as one, and a stolen card followed by
            # "put me through to someone" became one request for a person with no intent)
            segment = {"speaker": "caller", "start": round(start, 3), "end": round(end, 3), "text": text,
                       "normalised": normalise_redacted(text), "asr_confidence": round(float(confidence), 4), "endpointed": True, "_samples": samples,
                       "asr": self.redecoder.name if written_again is not None else "stream"} | UNREAD
            # kept before it is read: the agent has seen this final, so a reading that fails (raised to the
            # stream, which says so for this final) leaves it in the stored call, unread, not out of it
            self.segments.append(segment)
            if words:
                found = [SimpleNamespace(**r) for r in redactions]
                self.redactions += redaction_records(list(words), found, self._plain_chars)
                self._plain_chars += len(" ".join(w.text for w in words)) + 1
            try:
                self.engine.read_emotions([segment])
            finally:
                segment.pop("_samples", None)
            out = {"type": "analysis", "segment_index": len(self.segments) - 1} | self._call(final=False)
            self._analysis_ms += (time.perf_counter() - t0) * 1000.0
            return out

    def _redecode(self, samples: np.ndarray | None, start: float):
        """(redacted text, confidence, words in stream time, redactions) of the final as the configured
        recogniser writes it, or None to keep the streaming recogniser's (none configured, no audio, or it
        heard no words)."""
        if self.redecoder is None or samples is None or samples.size < 16_000 // 4:
            return None
        from apps.customer_service.pii import redact_words
        from apps.customer_service.speech.asr import Word

        transcript = self.redecoder.transcribe(samples, 16_000)
        words = [Word(w.text, start + w.start, start + w.end, w.confidence) for w in transcript.words
                 if w.text and not w.text.startswith(("<", "["))]
        if not words:
            return None
        result, _ = redact_words(words, context=self._heard)
        self._heard = (self._heard + [w.text for w in words])[-CONTEXT_WORDS:]
        found = [{"type": r.type, "start": r.start, "end": r.end} for r in result.redactions]
        return result.text, float(transcript.confidence), words, found

    def close(self, audio_s: float | None = None, warning: str | None = None) -> dict:
        """The whole call's reading, with the rule that only the end of a call can judge (no request named
        with confidence: "intent unclear"); with ``save`` and at least one final, the call is stored first
        (with ``warning`` among its warnings) and the summary names it (``id``)."""
        with self._lock:
            call = self._call(final=True)
            stored = None
            if self.save is not None and self.segments:
                stored = self.save(self._payload(call, audio_s, [warning] if warning else []))
            return {"type": "summary", "segments": len(self.segments), "id": stored} | call

    def _call(self, final: bool) -> dict:
        intent, requests = self.engine.read_intents(self.segments) if self.segments else (None, [])
        emotion = self.engine.call_emotion(self.segments)
        # during the call, no request yet is no sign of an unclear one: the caller may not have said it
        escalation = decide_escalation(self.engine.rules, self.segments, intent if final or requests else None,
                                       requests)
        out = {"intent": intent, "requests": requests, "emotion": emotion, "escalation": escalation}
        if not final and self.segments:
            out["segment"] = self._public(self.segments[-1])
        return out

    @staticmethod
    def _public(segment: dict) -> dict:
        return {k: segment.get(k) for k in _SEGMENT_KEYS}

    def _payload(self, call: dict, audio_s: float | None, warnings: list[str]) -> dict:
        """The call as ``/v1/calls:analyze`` stores one (``source``: "stream"), with the reply it would give."""
        from apps.customer_service.service import CallRequest

        timings = {"analysis_ms": self._analysis_ms}
        reply = self.engine.reply(CallRequest(output_mode="text"), call["intent"], call["emotion"],
                                  call["escalation"], timings)
        duration = audio_s if audio_s is not None else max(s["end"] for s in self.segments)
        return {"source": "stream",
                **self.engine.call_result(" ".join(s["text"] for s in self.segments),
                                          " ".join(s["normalised"] for s in self.segments), self.redactions, duration,
                                          [self._public(s) for s in self.segments], call, reply, timings, None,
                                          warnings)}


def bench_live(engine, audio: list[np.ndarray] | None = None, *, chunk_ms: int = 160, repeats: int = 1) -> dict:
    """A live call as the WebSocket runs it, without HTTP: chunks fed in real time to the streaming recogniser
    in one thread while each redacted final is read by a :class:`LiveCall` in another. Returns a flat dict:
    the recogniser's per-chunk latency while the analysis runs beside it (``chunk_p50_ms``, ``chunk_p95_ms``,
    ``chunk_max_ms``), each final's analysis time (``analysis_p50_ms``, ``analysis_p95_ms``,
    ``analysis_max_ms``), ``finals``, ``audio_s``. ``audio``: 16 kHz float arrays (default: the streaming
    bench's three bank sentences)."""
    import queue

    from apps.customer_service.pii import redact_words
    from apps.customer_service.speech.streaming import (
        DecoderPool,
        StreamingRecognizer,
        default_bench_audio,
        percentile,
    )

    clips = audio if audio is not None else default_bench_audio()
    pool = DecoderPool(size=1)
    pool.release(pool.acquire())  # built before the clock starts, as a server does at start-up
    step = 16_000 * chunk_ms // 1000
    chunk_ms_seen: list[float] = []
    analysis_ms: list[float] = []
    finals = 0
    for _ in range(max(1, repeats)):
        for clip in clips:
            live, todo = LiveCall(engine), queue.Queue()

            def read(live=live, todo=todo) -> None:
                while (item := todo.get()) is not None:
                    t0 = time.perf_counter()
                    live.add(*item)
                    analysis_ms.append((time.perf_counter() - t0) * 1000.0)

            reader = threading.Thread(target=read)
            reader.start()
            rec = StreamingRecognizer(pool=pool, keep_audio=True)
            pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes()
            chunks = -(-len(pcm) // (step * 2))
            started = time.perf_counter()
            for k in range(chunks):
                events = rec.accept(pcm[k * step * 2:(k + 1) * step * 2])
                for event in events + (rec.finish() if k == chunks - 1 else []):
                    if event.type == "final" and event.words:
                        finals += 1
                        text = redact_words(event.words)[0].text
                        todo.put((text, event.start, event.end, event.confidence, event.samples))
                time.sleep(max(0.0, started + (k + 1) * chunk_ms / 1000 - time.perf_counter()))
            todo.put(None)
            reader.join()
            chunk_ms_seen += rec.chunk_latencies_ms
    return {
        "chunk_ms": float(chunk_ms),
        "chunk_p50_ms": percentile(chunk_ms_seen, 0.50),
        "chunk_p95_ms": percentile(chunk_ms_seen, 0.95),
        "chunk_max_ms": max(chunk_ms_seen) if chunk_ms_seen else float("nan"),
        "analysis_p50_ms": percentile(analysis_ms, 0.50),
        "analysis_p95_ms": percentile(analysis_ms, 0.95),
        "analysis_max_ms": max(analysis_ms) if analysis_ms else float("nan"),
        "finals": float(finals),
        "audio_s": sum(len(c) for c in clips) * max(1, repeats) / 16_000,
    }
