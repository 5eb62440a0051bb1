"""Google's pretrained speech embedding (a keyword-spotting front-end) as a PyTorch encoder.

Why: the digit recogniser must hear speakers it was never trained on, and FSDD has four. This network
was trained by Google on a very large speech corpus to make keyword spotters from a few examples
(Lin et al., "Training keyword spotters with limited and synthesized speech data", ICASSP 2020,
arXiv:2002.01322); a linear head on its frames separates the ten digits of an unseen FSDD speaker
better than the project's own log-mel CNN does (digit card).

The network: 32 log-mel bands (25 ms DFT windows every 10 ms, 16 kHz, dB clipped 80 dB under the
clip's peak, then ``/10 + 2``) -> windows of 76 frames (0.76 s) -> 20 small convolutions
(3 x 3, 1 x 3, 3 x 1; leaky ReLU 0.2 floored at -0.4; five max-pools) -> one 96-d vector per window.

The weights are openWakeWord's ONNX re-implementation of the TF-Hub ``speech_embedding`` module
(Google, Apache License 2.0; openWakeWord 0.5.1, Apache-2.0 code, which ships them in its wheel),
imported once into a bundle inside this package (``python -m apps.customer_service.speech_embedding
import --source <unzipped wheel>/openwakeword/resources/models``): nothing is fetched at run time
and neither openwakeword nor onnxruntime runs it. Only the two Google networks are imported, not
openWakeWord's own wake-word models (those carry a non-commercial licence).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.bundle import ModelCard, copy_licences, import_weights_cli, load_bundle, save_bundle
from core.config import ConfigBase
from core.encoders import Encoder, EncoderOutput, register_encoder

BUNDLE_DIR = Path(__file__).parent / "weights" / "speech_embedding"
SAMPLE_RATE = 16000
# kernels of the 20 convolutions (channels: SpeechEmbeddingConfig.widths); a max-pool follows those in POOLS
_KERNELS = ((3, 3),) + ((1, 3), (3, 1)) * 9 + ((3, 1),)
POOLS = {2: (2, 2), 6: (1, 2), 10: (2, 2), 14: (1, 2), 18: (2, 2)}


@dataclass
class SpeechEmbeddingConfig(ConfigBase):
    widths: tuple[int, ...] = (24, 48, 72, 96, 96)  # channels of the five stages (between pools)
    n_mels: int = 32
    n_fft: int = 512
    hop: int = 160
    window: int = 76  # mel frames per embedding
    top_db: float = 80.0
    floor: float = -0.4  # activations are max(leaky_relu(x), floor)

    PRESETS: ClassVar[dict[str, dict]] = {"google": {}, "tiny": {"widths": (2, 2, 2, 2, 3)}}

    @property
    def dim(self) -> int:
        return self.widths[-1]


def _channels(widths: tuple[int, ...]) -> list[int]:
    """Output channels of each convolution: stage s (between pools) has width ``widths[s]``."""
    bounds = [-1, *sorted(POOLS)]
    out = []
    for i in range(len(_KERNELS)):
        out.append(widths[min(sum(i > b for b in bounds) - 1, len(widths) - 1)])
    return out


class SpeechEmbeddingEncoder(Encoder):
    """Log-mel frames ``(B, T, 32)`` (the ``/10 + 2`` scale) -> one token per 76-frame window, every
    ``step`` frames: ``(B, W, 96)``. :meth:`melspectrogram` makes the frames from 16 kHz audio."""

    modality = "audio"

    def __init__(self, config: SpeechEmbeddingConfig | None = None, step: int = 8):
        super().__init__()
        self.config = c = config or SpeechEmbeddingConfig()
        self.step = step
        n_bins = c.n_fft // 2 + 1
        # the DFT as two fixed convolutions and the mel matrix, exactly as the imported graph has them
        self.register_buffer("dft_real", torch.zeros(n_bins, 1, c.n_fft))
        self.register_buffer("dft_imag", torch.zeros(n_bins, 1, c.n_fft))
        self.register_buffer("mel_matrix", torch.zeros(n_bins, c.n_mels))
        chans = _channels(tuple(c.widths))
        self.convs = nn.ModuleList()
        for i, (k, ch) in enumerate(zip(_KERNELS, chans)):
            last = i == len(_KERNELS) - 1
            self.convs.append(nn.Conv2d(1 if i == 0 else chans[i - 1], ch, k, padding=(0, k[1] // 2), bias=not last))
        self.dim = c.dim

    @torch.no_grad()
    def melspectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` 16 kHz audio in int16 units (-32768..32767) -> ``(B, T, n_mels)`` frames."""
        x = audio.float()[:, None]
        power = F.conv1d(x, self.dft_real, stride=self.config.hop) ** 2 \
            + F.conv1d(x, self.dft_imag, stride=self.config.hop) ** 2
        db = 10.0 * torch.log10(torch.clamp(power.transpose(1, 2) @ self.mel_matrix, min=1e-10))
        floor = db.amax(dim=(1, 2), keepdim=True) - self.config.top_db  # per clip (the graph: per batch)
        return torch.maximum(db, floor) / 10 + 2

    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """``(N, 76, n_mels)`` -> ``(N, dim)``."""
        h = windows[:, None]
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = torch.clamp_min(F.leaky_relu(h, 0.2), self.config.floor)
            if i in POOLS:
                h = F.max_pool2d(h, POOLS[i])
        return h.flatten(1)

    def forward(self, batch) -> EncoderOutput:
        mel = batch["mel"] if isinstance(batch, dict) else batch
        b, t, m = mel.shape
        w = self.config.window
        if t < w:
            mel = F.pad(mel, (0, 0, 0, w - t), value=float(mel.min()))
        windows = mel.unfold(1, w, self.step).permute(0, 1, 3, 2)  # (B, W, 76, n_mels)
        tokens = self.embed_windows(windows.reshape(-1, w, m)).view(b, windows.shape[1], -1)
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))

    @torch.no_grad()
    def frames(self, audio16k: np.ndarray) -> np.ndarray:
        """``(W, dim)`` float32 window embeddings of one clip of 16 kHz float audio (-1..1)."""
        self.eval()
        pcm = torch.from_numpy(np.clip(np.asarray(audio16k, dtype=np.float32), -1, 1) * 32767)[None]
        return self({"mel": self.melspectrogram(pcm)}).tokens[0].numpy()


def _tiny_example():
    return {"config": SpeechEmbeddingConfig.from_name("tiny")}, {"mel": torch.rand(2, 90, 32)}


register_encoder("audio", "speech_embedding", example=_tiny_example)(SpeechEmbeddingEncoder)


@cache
def load_encoder(bundle_dir: str | Path = BUNDLE_DIR, step: int = 8) -> SpeechEmbeddingEncoder:
    """The bundled network (sha256-checked), eval mode; one instance per folder and step."""
    bundle = load_bundle(bundle_dir)
    encoder = SpeechEmbeddingEncoder(SpeechEmbeddingConfig.from_dict(bundle.config["encoder"]), step=step)
    encoder.load_state_dict(bundle.state_dict)
    encoder.sha256 = bundle.sha256
    return encoder.eval()


def _onnx_arrays(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def import_openwakeword(source: Path, out: Path) -> Path:
    """``source``: openWakeWord's ``resources/models`` folder (``melspectrogram.onnx`` and
    ``embedding_model.onnx``) -> a bundle of the PyTorch port (fp32, 2.4 MB)."""
    mel, emb = _onnx_arrays(source / "melspectrogram.onnx"), _onnx_arrays(source / "embedding_model.onnx")
    state = {"dft_real": mel["0.stft.conv_real.weight"], "dft_imag": mel["0.stft.conv_imag.weight"],
             "mel_matrix": mel["1.melW"]}
    for i in range(len(_KERNELS)):
        prefix = f"model/conv2d{'' if i == 0 else f'_{i}'}/Conv2D"
        if i < len(_KERNELS) - 1:
            state[f"convs.{i}.weight"] = emb[f"{prefix}_weights_fused_bn"]
            state[f"convs.{i}.bias"] = emb[f"{prefix}_bias_fused_bn"]
        else:
            state[f"convs.{i}.weight"] = emb[f"{prefix}/ReadVariableOp:0"]
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    config = SpeechEmbeddingConfig()
    SpeechEmbeddingEncoder(config).load_state_dict(state)  # shapes must agree
    digests = {name: hashlib.sha256((source / name).read_bytes()).hexdigest()
               for name in ("melspectrogram.onnx", "embedding_model.onnx")}
    card = ModelCard(
        name="customer-service-speech-embedding", version="google-speech_embedding-1+oww0.5.1",
        task="pretrained speech embedding (32 log-mel bands -> 20 convolutions -> 96-d per 0.76 s window, "
             "every 40-80 ms) used frozen by the digit recogniser",
        data=[("Google's speech_embedding (TF-Hub module google/speech_embedding/1, Apache License 2.0): "
               "trained by its authors for few-shot keyword spotting on a large speech corpus "
               "(arXiv:2002.01322); not trained in this project"),
              ("taken from openWakeWord 0.5.1's wheel (pip package `openwakeword`, Apache-2.0), whose "
               "melspectrogram.onnx and embedding_model.onnx re-implement it; ported here to PyTorch")],
        split="not trained here; the digit head on its features is (digit card)",
        reproduce="pip download openwakeword==0.5.1 --no-deps; unzip the wheel; "
                  "python -m apps.customer_service.speech_embedding import --source "
                  "openwakeword/resources/models" + ("" if Path(out).resolve() == BUNDLE_DIR.resolve() else f" --out {out}"),
        limitations=["redistributed under the Apache License 2.0 (LICENSE.txt beside the weights)",
                     "trained for keyword spotting: it carries what was said far more than how",
                     "16 kHz input; 8 kHz telephone audio is upsampled and leaves the upper bands empty",
                     ("the ONNX graph clips the dB floor per batch; this port clips per clip (the same for "
                      "batches of one, as the recogniser runs it)")],
        extra={"source_sha256": digests, "licence": "Apache-2.0"},
    )
    save_bundle(out, state, {"encoder": asdict(config)}, card)
    copy_licences(source.parents[2], "openwakeword-*.dist-info/LICENSE", out)
    return out


def main(argv: list[str] | None = None) -> None:
    import_weights_cli(argv, "python -m apps.customer_service.speech_embedding",
                       "openWakeWord's resources/models -> a speech-embedding bundle.", import_openwakeword, BUNDLE_DIR)


if __name__ == "__main__":
    main()
