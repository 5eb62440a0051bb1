"""Hugging Face CTC backend (Wav2Vec2ForCTC and friends) from a local model folder.

Greedy CTC decoding: per frame argmax, repeats collapsed, blanks dropped, words split at the
tokenizer's word delimiter ("|"). A word's time span is its first to last emitting frame times
the model's frame stride; its confidence is the mean top-class probability over those frames.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from apps.customer_service.speech.asr import Transcript, Word, check_audio, confidence_of, silent_transcript


class CTCRecognizer:
    name = "ctc"

    def __init__(self, model_dir: str | Path, *, device: str = "cpu") -> None:
        from core.offline import enforce_offline

        enforce_offline()
        from transformers import AutoModelForCTC, AutoProcessor

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a local Hugging Face model folder (no config.json); models are never downloaded.")
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForCTC.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = device
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.stride_s = float(self.model.config.inputs_to_logits_ratio) / 16_000
        self.version = f"ctc-{path.name}"

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16_000, *, mode: str = "default") -> Transcript:
        import torch

        x = check_audio(audio, sample_rate)
        if (silent := silent_transcript(x, self.name, mode)) is not None:
            return silent
        t0 = time.perf_counter()
        inputs = self.processor(x, sampling_rate=16_000, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(inputs["input_values"].to(self.device)).logits[0]  # (T, V)
        probs = logits.float().softmax(-1)
        best_p, best_id = probs.max(-1)
        words = self._words(best_id.tolist(), best_p.tolist())
        return Transcript(words=words, confidence=confidence_of(words), backend=self.name, mode=mode,
                          duration_s=len(x) / 16_000, decode_s=time.perf_counter() - t0)

    def _words(self, ids: list[int], probs: list[float]) -> list[Word]:
        blank = self.tokenizer.pad_token_id
        delim = getattr(self.tokenizer, "word_delimiter_token", "|")
        words: list[Word] = []
        chars: list[str] = []
        frames: list[int] = []
        conf: list[float] = []

        def flush() -> None:
            if chars:
                words.append(Word("".join(chars).lower(), frames[0] * self.stride_s, (frames[-1] + 1) * self.stride_s,
                                  float(np.mean(conf))))
            chars.clear(), frames.clear(), conf.clear()

        prev = None
        for t, (i, p) in enumerate(zip(ids, probs)):
            if i == prev:
                if chars and i != blank:
                    frames.append(t)
                    conf.append(p)
                continue
            prev = i
            if i == blank:
                continue
            token = self.tokenizer.convert_ids_to_tokens(i)
            if token == delim or token in self.tokenizer.all_special_tokens:
                flush()
                continue
            chars.append(token)
            frames.append(t)
            conf.append(p)
        flush()
        return words
