"""A pretrained speaker encoder (GE2E: three LSTM layers over 40 mel bands) as a voice-emotion feature block.

Why a speaker encoder: trained on thousands of voices (LibriSpeech, VoxCeleb 1 and 2) to tell speakers
apart, its frame features also carry how a voice is being used (pitch range, effort, tempo, voice
quality). Pooled over an utterance (mean and standard deviation of every layer's outputs) they separate
the acted emotions of unseen speakers better than the openSMILE functionals do (voice-emotion card).

The weights are Resemblyzer's (Resemble AI, Apache-2.0), imported once into a bundle inside this package
(``python -m apps.customer_service.ge2e import --source .../resemblyzer/pretrained.pt``): nothing is
fetched at run time, and the service never imports ``resemblyzer``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.bundle import ModelCard, copy_licences, import_weights_cli, load_bundle, save_bundle
from core.config import ConfigBase
from core.encoders import Encoder, EncoderOutput, register_encoder

BLOCK = "ge2e"  # the feature-block name voice bundles list (smile.voice_features)
BUNDLE_DIR = Path(__file__).parent / "weights" / "speaker_encoder"


@dataclass
class GE2EConfig(ConfigBase):
    n_mels: int = 40
    hidden: int = 256
    layers: int = 3
    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms windows, 10 ms hop: the frames the encoder was trained on
    hop: int = 160
    target_dbfs: float = -30.0  # utterance RMS before the (linear-power) mel spectrogram

    PRESETS = {"resemblyzer": {}, "tiny": {"hidden": 8, "layers": 2}}


class GE2EEncoder(Encoder):
    """Mel frames ``(B, T, n_mels)`` -> every LSTM layer's outputs, concatenated: tokens ``(B, T, layers * hidden)``."""

    modality = "voice"

    def __init__(self, config: GE2EConfig | None = None):
        super().__init__()
        self.config = c = config or GE2EConfig()
        self.lstm = nn.ModuleList(nn.LSTM(c.n_mels if i == 0 else c.hidden, c.hidden, batch_first=True)
                                  for i in range(c.layers))
        self.dim = c.layers * c.hidden

    def forward(self, batch) -> EncoderOutput:
        mel = batch["mel"] if isinstance(batch, dict) else batch
        outs, h = [], mel
        for lstm in self.lstm:
            h, _ = lstm(h)
            outs.append(h)
        tokens = torch.cat(outs, dim=-1)
        mask = batch.get("mask") if isinstance(batch, dict) else None
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask)

    def mel(self, audio: np.ndarray) -> np.ndarray:
        """(T, n_mels) float32 linear-power mel frames of 16 kHz mono audio at the target loudness."""
        import librosa

        c = self.config
        audio = np.asarray(audio, dtype=np.float32)
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
        if rms > 0:
            audio = audio * np.float32(10 ** (c.target_dbfs / 20) / rms)
        frames = librosa.feature.melspectrogram(y=audio, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop,
                                                n_mels=c.n_mels)
        return frames.T.astype(np.float32)

    @torch.no_grad()
    def utterance_statistics(self, audio: np.ndarray) -> np.ndarray:
        """(2 * dim,) float32: per-unit mean and standard deviation over the utterance's frames."""
        self.eval()
        tokens = self(torch.from_numpy(self.mel(audio))[None]).tokens[0]
        return torch.cat([tokens.mean(0), tokens.std(0, correction=0)]).numpy().astype(np.float32)


def _tiny_example():
    return {"config": GE2EConfig.from_name("tiny")}, {"mel": torch.rand(2, 30, 40)}


register_encoder("voice", "ge2e_lstm", example=_tiny_example)(GE2EEncoder)


def feature_dim(bundle_dir: str | Path = BUNDLE_DIR) -> int:
    return 2 * load_encoder(bundle_dir).dim


def load_encoder(bundle_dir: str | Path = BUNDLE_DIR) -> GE2EEncoder:
    """The bundled encoder (sha256-checked), fp32, eval mode; one instance per folder, however it is
    named (``load_encoder()`` and ``load_encoder(BUNDLE_DIR)`` share it)."""
    return _load_encoder(str(Path(bundle_dir).resolve()))


@cache
def _load_encoder(bundle_dir: str) -> GE2EEncoder:
    bundle = load_bundle(bundle_dir)
    encoder = GE2EEncoder(GE2EConfig.from_dict(bundle.config["encoder"]))
    encoder.load_state_dict({k: v.float() for k, v in bundle.state_dict.items()})
    encoder.sha256 = bundle.sha256  # voice bundles record the encoder they were fitted on
    return encoder.eval()


def statistics(audio: np.ndarray, bundle_dir: str | Path = BUNDLE_DIR) -> np.ndarray:
    """The ``ge2e`` feature block of one prepared utterance (``features.prepare_utterance``)."""
    return load_encoder(bundle_dir).utterance_statistics(audio)


def import_resemblyzer(source: Path, out: Path, config: GE2EConfig | None = None) -> Path:
    """Write Resemblyzer's ``pretrained.pt`` LSTM weights as a bundle (fp16: half the size; the
    encoder computes in fp32). Its projection to the 256-d speaker embedding is left out: the emotion
    features are the layers' frame outputs."""
    config = config or GE2EConfig()
    raw = torch.load(source, map_location="cpu", weights_only=True)
    weights = raw.get("model_state", raw)
    state = {}
    for i in range(config.layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            state[f"lstm.{i}.{name}_l0"] = weights[f"lstm.{name}_l{i}"].to(torch.float16)
    GE2EEncoder(config).load_state_dict({k: v.float() for k, v in state.items()})  # shapes must agree
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    card = ModelCard(
        name="customer-service-speaker-encoder", version="0.1.4",
        task="pretrained GE2E speaker encoder (3 x LSTM 256 over 40 linear-power mel bands, 25 ms / 10 ms) "
             "used frozen as a voice-emotion feature block: mean and standard deviation of every layer's outputs",
        data=["Resemblyzer 0.1.4 (Resemble AI, Apache License 2.0; pip package `resemblyzer`), its "
              "pretrained.pt: trained for speaker verification (generalised end-to-end loss) on "
              "LibriSpeech, VoxCeleb1 and VoxCeleb2 by its authors; not trained in this project"],
        split="not trained here; the emotion head on its features is (voice-emotion card)",
        reproduce="pip download resemblyzer==0.1.4 --no-deps; unzip the wheel; "
                  "python -m apps.customer_service.ge2e import --source resemblyzer/pretrained.pt"
                  + ("" if Path(out).resolve() == BUNDLE_DIR.resolve() else f" --out {out}"),
        limitations=["redistributed under the Apache License 2.0 (LICENSE.txt beside the weights)",
                     "a speaker-verification network: its features track voice identity as much as "
                     "emotion; the linear head on top is what is fitted to emotion",
                     "the 256-d speaker-embedding projection is not imported (unused)",
                     "weights stored in fp16 (computed in fp32)"],
        extra={"source_sha256": digest, "licence": "Apache-2.0"},
    )
    save_bundle(out, state, {"encoder": asdict(config)}, card)
    copy_licences(source.parent.parent, "*.dist-info/LICENSE", out)
    return out


def main(argv: list[str] | None = None) -> None:
    import_weights_cli(argv, "python -m apps.customer_service.ge2e",
                       "Resemblyzer's pretrained.pt -> a speaker-encoder bundle.", import_resemblyzer, BUNDLE_DIR)


if __name__ == "__main__":
    main()
