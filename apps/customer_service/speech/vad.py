"""Voice activity detection: Silero VAD (MIT) in plain PyTorch, so generative decoders hear only speech.

Whisper and other sequence-to-sequence recognisers write fluent sentences into line noise, hold music and
the agent's channel while the caller talks (Whisper base: 29 s of -50 dBFS noise -> "I'm going to go to the
next room." three times). Those words would then be redacted, read for emotion and intent, and stored as what
the caller said. So those backends decode only what a VAD calls speech, as faster-whisper's ``vad_filter`` does,
in free speech (mode "default"). A number the caller was prompted for (modes "digit", "digits", "amount") is
decoded whole: such clips are short and cut tight, and the detector finds no speech in 10 % of FSDD's isolated
digits (0.17-0.35 s long; Whisper base's digit accuracy on 60 of them fell from 0.80 to 0.77 with it).

The network is Silero VAD 6's 16 kHz model (a learned STFT, four convolutions, one LSTM cell), imported once
from the ``silero-vad`` wheel's TorchScript file into a bundle in this package (``python -m
apps.customer_service.speech.vad import --source .../silero_vad/data/silero_vad.jit``; the wheel's
``silero_vad_16k.safetensors`` holds different, older weights). The service never imports ``silero_vad``:
importing it sets torch's thread count for the whole process, and TorchScript loading is deprecated. The
port reads every 32 ms window with the 4 ms before it as context, as the package's own models do, and
matches its TorchScript model's probabilities (tested). Speech spans follow the package's ``get_speech_timestamps`` rules (enter at
``threshold``, leave below ``threshold - 0.15`` after ``min_silence_ms``, drop spans under
``min_speech_ms``, pad each side by ``pad_ms``), without its splitting of very long spans.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from apps.customer_service.speech.asr import Word
from core.bundle import ModelCard, copy_licences, import_weights_cli, load_bundle, save_bundle

RATE = 16_000
WINDOW = 512  # samples per probability (32 ms)
CONTEXT = 64  # samples of the previous window each window is read with
BUNDLE_DIR = Path(__file__).parents[1] / "weights" / "vad"


class SileroVAD(nn.Module):
    """Speech probability of every 32 ms window of 16 kHz audio."""

    def __init__(self) -> None:
        super().__init__()
        self.n_fft, self.hop, self.reflect = 256, 128, 64
        self.stft_conv = nn.Conv1d(1, 2 * (self.n_fft // 2 + 1), self.n_fft, stride=self.hop, bias=False)
        self.conv1 = nn.Conv1d(self.n_fft // 2 + 1, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm = nn.LSTM(128, 128, batch_first=True)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, CONTEXT + WINDOW) consecutive windows of one recording -> (N,) speech probabilities."""
        x = nn.functional.pad(windows, (0, self.reflect), mode="reflect").unsqueeze(1)
        x = self.stft_conv(x)
        bins = self.n_fft // 2 + 1
        x = (x[:, :bins] ** 2 + x[:, bins:] ** 2).sqrt()
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = conv(x).relu()
        # the convolutions see one window at a time; only the LSTM carries state from window to window
        h, _ = self.lstm(x.squeeze(-1).unsqueeze(0))
        return self.final_conv(h[0].relu().unsqueeze(-1)).sigmoid().mean(dim=(1, 2))



def windows_of(x: np.ndarray) -> torch.Tensor:
    """16 kHz samples -> (N, CONTEXT + WINDOW): the last window zero-padded, the first one's context zeros."""
    n = max(1, -(-len(x) // WINDOW))
    padded = np.zeros(CONTEXT + n * WINDOW, dtype=np.float32)
    padded[CONTEXT:CONTEXT + len(x)] = x
    t = torch.from_numpy(padded)
    return t.unfold(0, CONTEXT + WINDOW, WINDOW)


def silero_state_dict(torchscript: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 16 kHz model's tensors of Silero's TorchScript file (``_model.*``), named as :class:`SileroVAD`'s."""
    names = {"stft.forward_basis_buffer": "stft_conv.weight", "decoder.decoder.2.weight": "final_conv.weight",
             "decoder.decoder.2.bias": "final_conv.bias"}
    for i in range(4):
        for part in ("weight", "bias"):
            names[f"encoder.{i}.reparam_conv.{part}"] = f"conv{i + 1}.{part}"
    for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        names[f"decoder.rnn.{part}"] = f"lstm.{part}_l0"  # an LSTMCell there, one LSTM layer here
    return {new: torchscript[old].float().contiguous() for old, new in names.items()}


def import_silero(source: Path, out: Path) -> Path:
    """Write the 16 kHz model of the ``silero-vad`` wheel's ``silero_vad.jit`` as a bundle (fp32: 1.2 MB)."""
    scripted = torch.jit.load(str(source), map_location="cpu")
    state = silero_state_dict(scripted._model.state_dict())
    SileroVAD().load_state_dict(state)  # names and shapes must agree
    card = ModelCard(
        name="customer-service-vad", version="silero-vad-6.2.3",
        task="voice activity detection (speech probability per 32 ms window of 16 kHz audio): the whisper and "
             "seq2seq recognisers decode only the spans it calls speech",
        data=["Silero VAD 6.2.3 (Silero Team, MIT licence; pip package `silero-vad`), its silero_vad.jit's "
              "16 kHz model: trained by its authors on their speech and noise corpora; not trained in this project"],
        split="not trained here",
        reproduce="pip download silero-vad==6.2.3 --no-deps; unzip the wheel; "
                  "python -m apps.customer_service.speech.vad import --source silero_vad/data/silero_vad.jit"
                  + ("" if Path(out).resolve() == BUNDLE_DIR.resolve() else f" --out {out}"),
        limitations=["redistributed under the MIT licence (LICENSE.txt beside the weights)",
                     "the 8 kHz model is not imported: audio is resampled to 16 kHz first, as for every recogniser",
                     "very long speech spans are not split (the package's max_speech_duration_s): the "
                     "recognisers cut long audio themselves"],
        extra={"source_sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest(), "licence": "MIT"},
    )
    save_bundle(out, state, {"vad": {"rate": RATE, "window": WINDOW, "context": CONTEXT}}, card)
    copy_licences(Path(source).parent.parent.parent, "silero_vad-*.dist-info/licenses/LICENSE", out)
    return out


@dataclass(frozen=True)
class SpanRules:
    """faster-whisper's defaults for Whisper (its ``VadOptions``): a span ends after 2 s below the exit level
    and is widened by 0.4 s each side, so a recogniser hears whole words and their context. (Silero's own
    defaults, 0.1 s and 0.03 s, clipped words: WER 0.130 -> 0.152 on the Sphinx test data with Whisper base.)"""

    threshold: float = 0.5
    min_speech_ms: int = 0
    min_silence_ms: int = 2000
    pad_ms: int = 400


class SpeechDetector:
    """Speech spans of 16 kHz audio; thread-safe (the network keeps no state between calls)."""

    def __init__(self, bundle_dir: str | Path = BUNDLE_DIR, rules: SpanRules = SpanRules()) -> None:
        bundle = load_bundle(bundle_dir)
        self.model = SileroVAD()
        self.model.load_state_dict(bundle.state_dict)
        self.model.eval()
        self.version = bundle.version
        self.rules = rules

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(windows_of(np.asarray(x, dtype=np.float32))).numpy()

    def spans(self, x: np.ndarray) -> list[tuple[int, int]]:
        """[start, end) sample ranges of speech in ``x``."""
        return spans_from_probabilities(self.probabilities(x), len(x), self.rules)


def spans_from_probabilities(probs: np.ndarray, n_samples: int, rules: SpanRules) -> list[tuple[int, int]]:
    ms = RATE // 1000
    leave = max(rules.threshold - 0.15, 0.01)
    spans, start, quiet_since = [], None, None
    for i, p in enumerate(probs):
        at = i * WINDOW
        if p >= rules.threshold:
            quiet_since = None
            if start is None:
                start = at
        elif start is not None and p < leave:
            quiet_since = at if quiet_since is None else quiet_since
            if at - quiet_since >= rules.min_silence_ms * ms:
                if quiet_since - start > rules.min_speech_ms * ms:
                    spans.append((start, quiet_since))
                start, quiet_since = None, None
    if start is not None and n_samples - start > rules.min_speech_ms * ms:
        spans.append((start, n_samples))
    return padded_spans(spans, rules.pad_ms * ms, n_samples)


def padded_spans(spans: list[tuple[int, int]], pad: int, n_samples: int) -> list[tuple[int, int]]:
    """Each span widened by ``pad`` each side; two spans closer than twice that meet halfway."""
    out = []
    for k, (a, b) in enumerate(spans):
        lo = max(0, a - pad) if k == 0 else max(a - pad, (spans[k - 1][1] + a) // 2)
        hi = min(n_samples, b + pad) if k == len(spans) - 1 else min(b + pad, (b + spans[k + 1][0]) // 2)
        out.append((lo, hi))
    return out


@dataclass(frozen=True)
class SpeechOnly:
    """A recording's speech spans joined end to end, and the way back to the recording's own times."""

    audio: np.ndarray
    spans: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, x: np.ndarray, spans: list[tuple[int, int]]) -> SpeechOnly:
        audio = np.concatenate([x[a:b] for a, b in spans]) if spans else x[:0]
        return cls(audio, tuple(spans))

    @classmethod
    def whole(cls, x: np.ndarray) -> SpeechOnly:
        """All of ``x``, for a recogniser whose voice activity detection is off."""
        return cls(x, ((0, len(x)),))

    def restore(self, words: list[Word]) -> list[Word]:
        """``words`` timed in :attr:`audio` -> timed in the recording."""
        return [replace(w, start=self.original_time(w.start), end=self.original_time(w.end, end=True))
                for w in words]

    def original_time(self, t: float, *, end: bool = False) -> float:
        """Seconds in the recording of ``t`` seconds into :attr:`audio`; a word's ``end`` that falls on a join
        belongs to the span before it."""
        sample, joined = t * RATE, 0
        for k, (a, b) in enumerate(self.spans):
            length = b - a
            last = k == len(self.spans) - 1
            if sample < joined + length or (end and sample <= joined + length) or last:
                return (a + min(max(sample - joined, 0.0), length)) / RATE
            joined += length
        return t


_shared: SpeechDetector | None = None
_shared_lock = threading.Lock()


def speech_of(x: np.ndarray, use_vad: bool) -> SpeechOnly:
    """What of ``x`` (16 kHz) a recogniser should decode: its speech spans, or all of it without VAD."""
    if not use_vad:
        return SpeechOnly.whole(x)
    return SpeechOnly.of(x, shared_detector().spans(x))


def shared_detector() -> SpeechDetector:
    """One detector per process (the bundle, read on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SpeechDetector()
        return _shared


def main(argv: list[str] | None = None) -> None:
    import_weights_cli(argv, "python -m apps.customer_service.speech.vad",
                       "Silero VAD's silero_vad.jit -> a voice-activity bundle.", import_silero, BUNDLE_DIR)


if __name__ == "__main__":
    main()
