"""Modality-agnostic encoders that live in core: feature vectors and 1-D signals.

Domain encoders (CT, detector features, speech) live in the apps and register themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from core.config import ConfigBase
from core.encoders.base import Encoder, EncoderOutput
from core.encoders.registry import register_encoder


def _as_sequence(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Accept a tensor or ``{"x": tensor, "mask": tensor}``; return (x, mask or None)."""
    if isinstance(batch, dict):
        return batch["x"], batch.get("mask")
    return batch, None


@dataclass
class MLPEncoderConfig(ConfigBase):
    in_dim: int = 64  # features per vector
    dim: int = 128  # output token width
    hidden: int = 256  # hidden width of the two-layer MLP
    dropout: float = 0.1

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"in_dim": 8, "dim": 16, "hidden": 32, "dropout": 0.0}}


class MLPEncoder(Encoder):
    """Feature vectors ``(B, F)`` (one token) or sequences ``(B, T, F)`` (T tokens) -> tokens."""

    modality = "vector"

    def __init__(self, in_dim: int = 64, dim: int = 128, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
        )

    def forward(self, batch) -> EncoderOutput:
        x, mask = _as_sequence(batch)
        if x.dim() == 2:
            x = x.unsqueeze(1)  # (B, 1, F)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return EncoderOutput(self.net(x), mask.bool())


def _mlp_example():
    return MLPEncoderConfig.from_name("tiny").to_dict(), torch.randn(2, 8)


register_encoder("vector", "mlp", example=_mlp_example)(MLPEncoder)


@dataclass
class ConvLSTMEncoderConfig(ConfigBase):
    in_channels: int = 1  # signal channels (e.g. accelerometer axes)
    dim: int = 128  # output token width
    conv_channels: int = 64  # width of the Conv1d front-end
    conv_layers: int = 3  # each halves the time axis after its stride-2 conv
    kernel_size: int = 7
    lstm_hidden: int = 64  # per direction
    lstm_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.1

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"dim": 16, "conv_channels": 8, "conv_layers": 2, "lstm_hidden": 8, "dropout": 0.0},
        "small": {},
    }


class ConvLSTMEncoder(Encoder):
    """1-D signals ``(B, C, L)`` or ``(B, L)`` -> Conv1d front-end (downsampling) -> LSTM -> tokens.

    The convolutions learn local filters (resonances, impacts); the LSTM integrates them over time.
    Optional ``lengths`` (B,) mark valid samples so padded tails produce masked tokens.
    """

    modality = "signal"

    def __init__(
        self,
        in_channels: int = 1,
        dim: int = 128,
        conv_channels: int = 64,
        conv_layers: int = 3,
        kernel_size: int = 7,
        lstm_hidden: int = 64,
        lstm_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.dim = dim
        self.downsample = 2**conv_layers
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(conv_layers):
            layers += [
                nn.Conv1d(channels, conv_channels, kernel_size, stride=2, padding=kernel_size // 2),
                nn.BatchNorm1d(conv_channels),
                nn.GELU(),
            ]
            channels = conv_channels
        self.front = nn.Sequential(*layers)
        self.lstm = nn.LSTM(
            channels,
            lstm_hidden,
            num_layers=lstm_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.out = nn.Linear(lstm_hidden * (2 if bidirectional else 1), dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch) -> EncoderOutput:
        if isinstance(batch, dict):
            x, lengths = batch["signal"], batch.get("lengths")
        else:
            x, lengths = batch, None
        if x.dim() == 2:
            x = x.unsqueeze(1)  # (B, 1, L)
        features = self.front(x).transpose(1, 2)  # (B, T, C) with T = L / 2**conv_layers
        hidden, _ = self.lstm(features)  # (B, T, H)
        tokens = self.out(self.dropout(hidden))  # (B, T, D)
        steps = torch.arange(tokens.shape[1], device=x.device)
        if lengths is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
        else:
            valid_steps = torch.div(lengths.to(x.device) + self.downsample - 1, self.downsample, rounding_mode="floor")
            mask = steps.unsqueeze(0) < valid_steps.unsqueeze(1)
        return EncoderOutput(tokens, mask)


def _conv_lstm_example():
    signal = torch.randn(2, 1, 256)
    return ConvLSTMEncoderConfig.from_name("tiny").to_dict(), {"signal": signal, "lengths": torch.tensor([256, 128])}


register_encoder("signal", "conv_lstm", example=_conv_lstm_example)(ConvLSTMEncoder)
