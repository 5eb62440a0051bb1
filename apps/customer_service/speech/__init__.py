"""Speech side of the contact centre: audio I/O, ASR backends, bank LM, grammars, text
normalisation, streaming, TTS and ASR evaluation. Importing this package is cheap: every name
below is loaded on first use.

Public API (stable; the service, API and CLI call these):

Audio (``speech.audio``)
    ``load_audio(source: bytes | path, *, target_rate=16000, max_seconds=600, max_channels=2) -> Audio``
        WAV/FLAC/OGG/MP3, any rate, mono or stereo -> ``Audio.samples`` (C, N) float32 at 16 kHz;
        ``Audio.mono()``, ``Audio.channel(i)`` (stereo calls: agent and caller separately).
    ``AudioError(code, message)`` (a ValueError): code in not_audio | empty | corrupt | too_long |
        too_many_channels; message says what is accepted. Map it to HTTP 415/422/413.
    ``sniff_audio_format(bytes)``, ``to_wav_bytes(samples, rate)``, ``to_pcm16``, ``from_pcm16``,
    ``ACCEPTED_FORMATS``, ``ACCEPTED_TEXT``.

ASR (``speech.asr``, ``speech.sphinx``, ``speech.whisper_backend``, ``speech.ctc``, ``speech.seq2seq``)
    ``create_recognizer(backend="pocketsphinx" | "whisper" | "ctc" | "seq2seq", *, model_path=None, **options) -> Recognizer``
    ``Recognizer.transcribe(audio (N,) float, sample_rate=16000, *, mode="default"|"digit"|"digits"|"amount") -> Transcript``
    ``Transcript``: ``.words`` [``Word(text, start, end, confidence)``], ``.text`` (spoken form),
        ``.normalised`` (written form), ``.confidence``, ``.backend``, ``.to_dict()``.
    ``SphinxRecognizer(SphinxConfig(lm="generic"|"bank"|"interpolated", ...))``;
        ``SphinxConfig.from_name("default"|"bank"|"interpolated"|"streaming"|"tiny")``.
    ``WhisperRecognizer(checkpoint.pt)`` (openai-whisper), ``CTCRecognizer(hf_folder)`` (Wav2Vec2ForCTC),
        ``Seq2SeqRecognizer(hf_folder)`` (AutoModelForSpeechSeq2Seq: Whisper, Speech2Text, SpeechEncoderDecoder;
        word times approximate).

Text (``speech.textnorm``)
    ``normalise(text) -> str`` ("twelve pounds fifty" -> "£12.50"); ``normalise_aligned(text)``
    keeps source offsets per output token.

Streaming (``speech.streaming``, ``speech.router``)
    ``StreamingRecognizer(config=None, *, mode="default", pool=None, decoder=None)``: ``.accept(pcm16_bytes) ->
        [StreamEvent]`` (type "partial" | "final"), ``.finish()``; ``DecoderPool(config, size)``:
        ``.acquire(timeout_s)`` (blocks a thread), ``await .acquire_async(timeout_s)`` (waits on the event loop).
    ``create_stream_router(*, pool=None, redact=True, max_session_s=600, idle_timeout_s=60, decoder_wait_s=10)
        -> fastapi.APIRouter``: WebSocket ``/v1/stream`` (mount under ``/customer-service``); protocol in
        ``speech.router``.
    ``bench_streaming(audio=None, *, chunk_ms=160, repeats=1) -> dict`` (flat: chunk_p50_ms,
        chunk_p95_ms, rtf, first_partial_ms, ...).

TTS (``speech.tts``)
    ``synthesize(text, *, voice="en-gb", speed_wpm=160) -> bytes`` (WAV); ``TTSUnavailable`` when
    espeak-ng is missing, ``TTSError`` for bad text; ``available()``.

Evaluation (``speech.evaluate``)
    ``evaluate_asr(root, *, recognizer=None, limit=None) -> dict`` for a LibriSpeech tree
    (``*.trans.txt``), an FSDD ``recordings/`` folder (keys ``wer``, ``digit_accuracy``) or the
    Sphinx test-data layout (``*.transcription``); flat dict of numbers.
    ``evaluate_spoken_card_redaction(n=40, *, recognizer=None) -> dict``: TTS card numbers ->
    ASR -> redaction; ``card_leak_free``, ``card_fully_redacted``, ``digit_wer``.
    ``evaluate_bank_lm(banking77_root, *, n=60) -> dict``: ``wer_generic``, ``wer_bank``,
    ``wer_interpolated`` on held-out BANKING77 queries spoken by espeak-ng.

Bank LM (``speech.lm``)
    ``python -m apps.customer_service.speech.lm --banking77 ../shared/data/banking77`` rebuilds
    ``resources/bank.lm``.

PII redaction lives next door in ``apps.customer_service.pii``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Audio": "audio", "AudioError": "audio", "load_audio": "audio", "sniff_audio_format": "audio",
    "to_wav_bytes": "audio", "to_pcm16": "audio", "from_pcm16": "audio", "ACCEPTED_FORMATS": "audio",
    "ACCEPTED_TEXT": "audio",
    "Recognizer": "asr", "Transcript": "asr", "Word": "asr", "create_recognizer": "asr",
    "SphinxConfig": "sphinx", "SphinxRecognizer": "sphinx",
    "WhisperRecognizer": "whisper_backend", "CTCRecognizer": "ctc",
    "Seq2SeqRecognizer": "seq2seq",
    "normalise": "textnorm", "normalise_aligned": "textnorm",
    "StreamingRecognizer": "streaming", "StreamEvent": "streaming", "DecoderPool": "streaming",
    "bench_streaming": "streaming",
    "create_stream_router": "router",
    "synthesize": "tts", "TTSUnavailable": "tts", "TTSError": "tts",
    "evaluate_asr": "evaluate", "evaluate_spoken_card_redaction": "evaluate",
    "evaluate_bank_lm": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
