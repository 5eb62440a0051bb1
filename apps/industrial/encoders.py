"""Industrial encoders, registered in the core registry (import registers them).

- ("vibration", "envelope_conv_lstm"): raw 12 kHz accelerometer windows -> per-window normalised raw
  signal + its high-passed Hilbert envelope -> Conv1d front-end -> bidirectional LSTM -> time tokens.
- ("detector", "tokens"): a projection of detector feature tokens (pooled neck features of the
  YOLO model, computed outside: the detector itself is frozen and served by ultralytics' modules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from core.config import ConfigBase
from core.encoders import ConvLSTMEncoder, Encoder, EncoderOutput, register_encoder


@dataclass
class VibrationEncoderConfig(ConfigBase):
    sample_rate: int = 12_000  # the rate windows arrive at (signals.MODEL_RATE)
    highpass_hz: float = 1_000.0  # envelope band: bearing impacts ring the housing's kHz resonances
    dim: int = 64  # output token width
    conv_channels: int = 32
    conv_layers: int = 5  # 2,048 samples -> 64 time tokens
    kernel_size: int = 9
    lstm_hidden: int = 32  # per direction
    dropout: float = 0.1
    # Envelope only: drop the raw waveform and feed the demodulated envelope decimated by `decimate`.
    # Without the carrier the network cannot key on the housing resonance of one recording; it has
    # to use the impact periodicity, which is what fault type changes and load does not.
    envelope_only: bool = False
    decimate: int = 8  # 12 kHz envelope -> 1.5 kHz (fault frequencies are below 600 Hz)
    # Envelope-spectrum branch (0 = off): the log envelope spectrum up to spectrum_max_hz, a small
    # Conv1d over frequency, max-pooled into spectrum_pool bands, added to every LSTM time token. BPFO /
    # BSF / BPFI and their harmonics are lines there; max-pooling over ~60 Hz bands lets a 1-4 % speed
    # shift move a line inside its band without changing the code.
    spectrum_channels: int = 0
    spectrum_max_hz: float = 1_000.0
    spectrum_pool: int = 16

    PRESETS: ClassVar[dict] = {
        "tiny": {"dim": 16, "conv_channels": 8, "conv_layers": 2, "lstm_hidden": 8, "dropout": 0.0},
        "tiny_spectrum": {"dim": 16, "conv_channels": 8, "conv_layers": 2, "lstm_hidden": 8, "dropout": 0.0,
                          "spectrum_channels": 4, "spectrum_pool": 4},
        "small": {},
        "spectrum": {"spectrum_channels": 16, "spectrum_pool": 32},
        "envelope": {"envelope_only": True, "conv_layers": 2},
    }


def analytic_envelope(x: torch.Tensor, sample_rate: int, highpass_hz: float) -> torch.Tensor:
    """|analytic signal| of the high-passed input, both done with one FFT: (B, L) -> (B, L).

    Bearing faults show as periodic impacts whose rate (BPFI/BPFO/BSF) scales with shaft speed; the
    envelope exposes that periodicity independently of which resonance the impacts excite, which is
    what should carry over between loads better than the raw waveform alone.
    """
    length = x.shape[-1]
    spectrum = torch.fft.fft(x, dim=-1)
    freqs = torch.fft.fftfreq(length, d=1.0 / sample_rate).to(x.device)
    # Analytic-signal weights: keep DC/Nyquist once, double positive, drop negative frequencies.
    weights = torch.where(freqs > 0, 2.0, 0.0)
    weights = torch.where(freqs.abs() < highpass_hz, torch.zeros_like(weights), weights)
    return torch.fft.ifft(spectrum * weights.to(spectrum.dtype), dim=-1).abs()


def standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-window zero mean, unit variance: load and sensor gain change amplitude, not the fault."""
    return (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + eps)


def log_envelope_spectrum(envelope: torch.Tensor, sample_rate: int, max_hz: float) -> torch.Tensor:
    """(B, L) envelope -> (B, F) log magnitude spectrum of its fluctuation, 0 < f <= max_hz, per-window centred.

    Hann-windowed so a line leaks into its neighbours only; the log and the centring make it
    independent of the window's overall level (that level moves with load).
    """
    length = envelope.shape[-1]
    centred = envelope - envelope.mean(dim=-1, keepdim=True)
    hann = torch.hann_window(length, periodic=False, dtype=centred.dtype, device=centred.device)
    magnitude = torch.fft.rfft(centred * hann, dim=-1).abs()
    bins = int(max_hz * length / sample_rate)
    logs = torch.log(magnitude[:, 1 : bins + 1] + 1e-3 * magnitude[:, 1:].mean(dim=-1, keepdim=True) + 1e-8)
    return logs - logs.mean(dim=-1, keepdim=True)


class VibrationEncoder(Encoder):
    """(B, L) or (B, 1, L) windows at ``sample_rate`` -> tokens (B, L / 2**conv_layers, dim)."""

    modality = "vibration"

    def __init__(
        self,
        sample_rate: int = 12_000,
        highpass_hz: float = 1_000.0,
        dim: int = 64,
        conv_channels: int = 32,
        conv_layers: int = 5,
        kernel_size: int = 9,
        lstm_hidden: int = 32,
        dropout: float = 0.1,
        envelope_only: bool = False,
        decimate: int = 8,
        spectrum_channels: int = 0,
        spectrum_max_hz: float = 1_000.0,
        spectrum_pool: int = 16,
    ):
        super().__init__()
        self.dim = dim
        self.sample_rate = sample_rate
        self.highpass_hz = highpass_hz
        self.envelope_only = envelope_only
        self.decimate = decimate
        self.spectrum_max_hz = spectrum_max_hz
        self.spectrum = None
        if spectrum_channels > 0:
            c = spectrum_channels
            self.spectrum = nn.Sequential(
                nn.Conv1d(1, c, 5, padding=2), nn.BatchNorm1d(c), nn.GELU(),
                nn.Conv1d(c, c, 5, padding=2), nn.BatchNorm1d(c), nn.GELU(),
                nn.AdaptiveMaxPool1d(spectrum_pool), nn.Flatten(),
                nn.Dropout(dropout), nn.Linear(c * spectrum_pool, dim),
            )
        self.body = ConvLSTMEncoder(
            in_channels=1 if envelope_only else 2,
            dim=dim,
            conv_channels=conv_channels,
            conv_layers=conv_layers,
            kernel_size=kernel_size,
            lstm_hidden=lstm_hidden,
            bidirectional=True,
            dropout=dropout,
        )

    def features(self, x: torch.Tensor, envelope: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) raw -> (B, 2, L) normalised signal + envelope, or (B, 1, L / decimate) envelope only."""
        x = x.float()
        if envelope is None:
            envelope = self.envelope(x)
        if self.envelope_only:
            # Box-filter decimation: enough anti-aliasing for a signal whose content of interest is < 600 Hz.
            low = torch.nn.functional.avg_pool1d(envelope[:, None], self.decimate)  # (B, 1, L / decimate)
            return standardise(low)
        return torch.stack([standardise(x), standardise(envelope)], dim=1)

    def envelope(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return analytic_envelope(x - x.mean(dim=-1, keepdim=True), self.sample_rate, self.highpass_hz)

    def forward(self, batch) -> EncoderOutput:
        x = batch["signal"] if isinstance(batch, dict) else batch
        if x.dim() == 3:
            x = x[:, 0]
        envelope = self.envelope(x)
        out = self.body(self.features(x, envelope))
        if self.spectrum is None:
            return out
        spectrum = log_envelope_spectrum(envelope, self.sample_rate, self.spectrum_max_hz)
        # One spectral code added to every time token: token shape (and the fusion model reading
        # them) stays as it was, and the pooled summary carries the spectrum at full weight.
        code = self.spectrum(spectrum[:, None])
        return EncoderOutput(out.tokens + code[:, None, :], out.mask)


def _vibration_example():
    return VibrationEncoderConfig.from_name("tiny").to_dict(), torch.randn(2, 256)


def _vibration_spectrum_example():
    return VibrationEncoderConfig.from_name("tiny_spectrum").to_dict(), torch.randn(2, 2048)


register_encoder("vibration", "envelope_conv_lstm", example=_vibration_example)(VibrationEncoder)
# The same module with its envelope-spectrum branch on: registered under its own name so the
# registry's contract test exercises that path too.
register_encoder("vibration", "envelope_spectrum_conv_lstm", example=_vibration_spectrum_example)(VibrationEncoder)


@dataclass
class DetectorTokenEncoderConfig(ConfigBase):
    in_dim: int = 6  # per-region detector scores, one per defect class (detector.region_score_tokens)
    dim: int = 64
    dropout: float = 0.1
    score_inputs: bool = True  # inputs are probabilities: use their logits, no per-token LayerNorm

    PRESETS: ClassVar[dict] = {"tiny": {"in_dim": 8, "dim": 16, "dropout": 0.0}}


class DetectorTokenEncoder(Encoder):
    """Detector feature tokens (B, P, C) (+ optional (B, P) mask) -> (B, P, dim)."""

    modality = "image"

    def __init__(self, in_dim: int = 6, dim: int = 64, dropout: float = 0.1, score_inputs: bool = True):
        super().__init__()
        self.dim = dim
        self.score_inputs = score_inputs
        # A LayerNorm across 6 class scores would erase their level, which is the evidence itself.
        norm = nn.Identity() if score_inputs else nn.LayerNorm(in_dim)
        self.net = nn.Sequential(norm, nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, batch) -> EncoderOutput:
        x, mask = (batch["tokens"], batch.get("mask")) if isinstance(batch, dict) else (batch, None)
        if self.score_inputs:
            x = torch.logit(x.clamp(1e-4, 1 - 1e-4)) / 4.0  # probabilities -> bounded logits
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return EncoderOutput(self.net(x), mask.bool())


def _detector_example():
    return DetectorTokenEncoderConfig.from_name("tiny").to_dict(), torch.randn(2, 4, 8)


register_encoder("image", "detector_tokens", example=_detector_example)(DetectorTokenEncoder)
