"""Hugging Face sequence-to-sequence ASR (Whisper, Speech2Text, SpeechEncoderDecoderModel) from a local model folder.

The folder is what ``save_pretrained`` writes for the model and its processor (or its feature extractor and
tokenizer): ``config.json``, the weights, the feature extractor's and the tokenizer's files. It is read with
``local_files_only=True``; nothing is fetched by name.

Decoding is greedy, one chunk at a time: audio longer than the model's window (Whisper: 30 s; others
``chunk_s``) is cut at the quietest 20 ms near each window's end, so a cut rarely splits a word. Each chunk
may emit at most ``tokens_per_second`` tokens per second of its audio (plus a few), never more than the
decoder has positions for: a model that never says its end-of-text token (a random or a confused one)
stops there instead of at the decoder's limit. Only what the voice activity detector calls speech is decoded
(``vad.py``; its spans joined end to end, words timed back in the recording; ``vad=False`` decodes all), and a
chunk of digital silence (below ``asr.SILENCE_PEAK``) is skipped, as a silent input is: models hallucinate in
both (Whisper base: " you" in zeros, whole sentences in line noise).

Words are the decoded text split at spaces, as the model writes them (Whisper keeps its casing and
punctuation, as the ``whisper`` backend does); a word's confidence is the mean probability of its tokens,
the utterance's the mean over its words, as ``ctc.py`` gives them. Word times are APPROXIMATE: these models
give no alignment, so each chunk's words are laid out over the chunk's voiced stretch (first to last frame
above a fifth of its loudest frame's level) in proportion to their length in characters; a word's start
and end may be off by a word or so. Audio redaction (``redact_audio``) silences by those times: with this
backend it may leave the edge of a redacted word audible or silence a neighbour. ``extra["word_times"]``
says "approximate".
"""

from __future__ import annotations

import copy
import math
import re
import time
from pathlib import Path

import numpy as np

from apps.customer_service.speech.asr import (
    Transcript,
    Word,
    check_audio,
    confidence_of,
    no_speech_transcript,
    silent_transcript,
)
from apps.customer_service.speech.vad import speech_of

RATE = 16_000
FRAME = RATE // 50  # 20 ms: the unit a chunk is cut at and its voiced stretch is measured in
# Room kept in the decoder's positions for the tokens it is started with (Whisper: start of transcript,
# language, task, no-timestamps).
PROMPT_TOKENS = 4


class Seq2SeqRecognizer:
    name = "seq2seq"

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", language: str | None = "en",
                 chunk_s: float = 30.0, tokens_per_second: float = 6.0, search_s: float = 2.0,
                 vad: bool = True) -> None:
        from core.offline import enforce_offline

        enforce_offline()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CTC_MAPPING_NAMES,
            MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
        )

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a local Hugging Face model folder (no config.json); models are never downloaded.")
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        if config.model_type not in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
            hint = " (a CTC model: use the ctc backend)" if config.model_type in MODEL_FOR_CTC_MAPPING_NAMES else ""
            raise ValueError(f"{path} holds a {config.model_type!r} model, not a speech sequence-to-sequence one "
                             f"(Whisper, Speech2Text, SpeechEncoderDecoder){hint}.")
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = device
        self.rate = int(getattr(self.feature_extractor, "sampling_rate", RATE))
        # Whisper's feature extractor pads or cuts every input to its window: a longer chunk would lose its end
        window = getattr(self.feature_extractor, "chunk_length", None)
        self.chunk_s = min(chunk_s, float(window)) if window else chunk_s
        self.search_s = min(search_s, self.chunk_s / 2)
        self.tokens_per_second = tokens_per_second
        self.vad = vad  # decode only what the voice activity detector calls speech (speech/vad.py says why)
        positions = decoder_positions(self.model.config)
        self.max_tokens = None if positions is None else max(1, positions - PROMPT_TOKENS)
        gen = self.model.generation_config
        # only a multilingual Whisper takes a language (an English-only one refuses it)
        self.language = language if getattr(gen, "is_multilingual", False) and getattr(gen, "lang_to_id", None) else None
        self.special_ids = set(self.tokenizer.all_special_ids)
        self.version = f"seq2seq-{path.name}"

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16_000, *, mode: str = "default") -> Transcript:
        x = check_audio(audio, sample_rate)
        if (silent := silent_transcript(x, self.name, mode)) is not None:
            return silent
        t0 = time.perf_counter()
        # free speech only: a prompted number is short and cut tight, and the detector misses some (vad.py)
        speech = speech_of(x, self.vad and mode == "default")
        if not speech.spans:
            return no_speech_transcript(x, self.name, mode, "silero-vad")
        y = speech.audio
        words: list[Word] = []
        for a, b in chunk_bounds(y, int(self.chunk_s * RATE), int(self.search_s * RATE)):
            # a chunk of digital silence is not decoded, as a silent input is not: Whisper base writes " you"
            # in it (a long call's muted or silence-suppressed stretch, the agent's channel while the caller talks)
            if silent_transcript(y[a:b], self.name, mode) is not None:
                continue
            ids, probs = self._generate(y[a:b])
            words += self._words(ids, probs, *(t + a / RATE for t in voiced_span(y[a:b])))
        return Transcript(words=speech.restore(words), confidence=confidence_of(words), backend=self.name,
                          mode=mode, duration_s=len(x) / RATE, decode_s=time.perf_counter() - t0,
                          extra={"word_times": "approximate", "vad": self.vad})

    def new_tokens_for(self, seconds: float) -> int:
        """The most tokens a chunk of ``seconds`` may emit."""
        n = math.ceil(seconds * self.tokens_per_second) + PROMPT_TOKENS
        return n if self.max_tokens is None else min(n, self.max_tokens)

    def _generate(self, chunk: np.ndarray) -> tuple[list[int], list[float]]:
        """The chunk's generated token ids (end-of-text and other special tokens included) and each one's
        probability."""
        import torch

        from apps.customer_service.speech.audio import resample

        samples = resample(chunk, RATE, self.rate) if self.rate != RATE else chunk
        features = self.feature_extractor(samples, sampling_rate=self.rate, return_tensors="pt")
        inputs = features[self.feature_extractor.model_input_names[0]].to(self.device)
        extra = {"attention_mask": features["attention_mask"].to(self.device)} if "attention_mask" in features else {}
        if self.language is not None:
            extra |= {"language": self.language, "task": "transcribe"}
        config = copy.deepcopy(self.model.generation_config)
        config.update(**self._length_bound(self.new_tokens_for(len(chunk) / RATE)), do_sample=False, num_beams=1,
                      return_dict_in_generate=True, output_scores=True)
        with torch.inference_mode():
            out = self.model.generate(inputs, generation_config=config, **extra)
        # Greedy decoding picks the top token of each step's scores, so the scores alone give the tokens and
        # their probabilities, however a model's generate() trims its returned sequences (Whisper drops its prompt)
        probs = torch.stack([s[0] for s in out.scores]).float().softmax(-1)
        best_p, best_id = probs.max(-1)
        return best_id.tolist(), best_p.tolist()

    def _length_bound(self, new_tokens: int) -> dict:
        """The generation settings that let a chunk emit at most ``new_tokens`` tokens, one bound only: given
        both, generate() logs a warning per call that ``max_new_tokens`` takes precedence over ``max_length``.
        Whisper's generate() fills ``max_length``'s default (20) in whenever it is unset and reads it as new
        tokens (it adds its prompt's length itself), so Whisper is bounded by ``max_length``; every other model
        by ``max_new_tokens``, ``max_length`` cleared."""
        if getattr(self.model.config, "model_type", None) == "whisper":
            return {"max_length": new_tokens, "max_new_tokens": None}
        return {"max_new_tokens": new_tokens, "max_length": None}

    def _words(self, ids: list[int], probs: list[float], start: float, end: float) -> list[Word]:
        """Words of the decoded ``ids`` with their tokens' mean probability, laid out over [start, end)."""
        kept = [(i, p) for i, p in zip(ids, probs) if i not in self.special_ids]
        if not kept:
            return []
        # which characters of the text each token wrote: decode each prefix (a byte-level token may end
        # inside a character, so a prefix can be shorter than the one before: never step back)
        ends, last = [], 0
        for k in range(1, len(kept) + 1):
            last = max(last, len(self._decode([i for i, _ in kept[:k]])))
            ends.append(last)
        text = self._decode([i for i, _ in kept])
        spans = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
        if not spans:
            return []
        starts = [0] + ends[:-1]
        per_second = (end - start) / sum(len(w) + 1 for _, _, w in spans)
        words, t = [], start
        for a, b, word in spans:
            token_probs = [p for (_, p), s, e in zip(kept, starts, ends) if s < b and e > a]
            confidence = float(np.mean(token_probs)) if token_probs else float(np.mean([p for _, p in kept]))
            length = (len(word) + 1) * per_second
            words.append(Word(word, t, t + length, confidence))
            t += length
        return words

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def decoder_positions(config) -> int | None:
    """How many tokens the model's decoder can hold (None when its config does not say)."""
    for part in (config, getattr(config, "decoder", None)):
        for key in ("max_target_positions", "max_position_embeddings"):
            value = getattr(part, key, None) if part is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def chunk_bounds(x: np.ndarray, max_len: int, search: int) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering ``x``, each at most ``max_len`` long, each cut (but the last) in
    the quietest 20 ms of its last ``search`` samples."""
    bounds, start = [], 0
    while len(x) - start > max_len:
        lo = start + max_len - search
        region = x[lo:start + max_len]
        frames = len(region) // FRAME
        if frames:
            energy = np.square(region[:frames * FRAME].reshape(frames, FRAME)).mean(1)
            cut = lo + int(np.argmin(energy)) * FRAME + FRAME // 2
        else:
            cut = start + max_len
        bounds.append((start, cut))
        start = cut
    bounds.append((start, len(x)))
    return bounds


def voiced_span(chunk: np.ndarray) -> tuple[float, float]:
    """Seconds from the chunk's start of its first and last 20 ms frame whose RMS reaches a fifth of its
    loudest frame's (the whole chunk when it is shorter than a frame)."""
    frames = len(chunk) // FRAME
    if frames == 0:
        return 0.0, len(chunk) / RATE
    rms = np.sqrt(np.square(chunk[:frames * FRAME].reshape(frames, FRAME)).mean(1))
    loud = np.flatnonzero(rms >= 0.2 * rms.max())
    return float(loud[0] * FRAME / RATE), float((loud[-1] + 1) * FRAME / RATE)
