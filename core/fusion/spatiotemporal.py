"""Spatio-temporal attention over a (time x position) token grid, factorised.

Each layer attends across positions within a time step (spatial), then across time steps at each
position (temporal), each as ``softmax(QK^T / sqrt(d_k)) V`` with masks. Factorising keeps the cost
at O(T·P² + P·T²) instead of O((T·P)²), which is what makes it usable on a production line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from core.config import ConfigBase
from core.fusion.attention import AttentionBlock


@dataclass
class SpatioTemporalConfig(ConfigBase):
    dim: int = 128
    heads: int = 4
    layers: int = 2
    max_time: int = 64  # learned time-step embeddings
    max_positions: int = 256  # learned position embeddings
    dropout: float = 0.1

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"dim": 16, "heads": 2, "layers": 1, "max_time": 8, "max_positions": 16, "dropout": 0.0}}


class SpatioTemporalAttention(nn.Module):
    def __init__(self, config: SpatioTemporalConfig):
        super().__init__()
        self.config = config
        self.time_embedding = nn.Parameter(torch.randn(config.max_time, config.dim) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(config.max_positions, config.dim) * 0.02)
        self.spatial = nn.ModuleList(AttentionBlock(config.dim, config.heads, dropout=config.dropout) for _ in range(config.layers))
        self.temporal = nn.ModuleList(AttentionBlock(config.dim, config.heads, dropout=config.dropout) for _ in range(config.layers))

    def forward(self, grid: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """grid (B, T, P, D), mask (B, T, P) -> (grid (B, T, P, D), last layer's attention maps)."""
        batch, steps, positions, dim = grid.shape
        if steps > self.config.max_time or positions > self.config.max_positions:
            raise ValueError(
                f"grid {steps}x{positions} exceeds max_time={self.config.max_time}, max_positions={self.config.max_positions}"
            )
        x = grid + self.time_embedding[:steps, None, :] + self.position_embedding[None, :positions, :]
        x = x * mask.unsqueeze(-1).to(x.dtype)
        maps: dict[str, torch.Tensor] = {}
        for spatial, temporal in zip(self.spatial, self.temporal):
            flat, flat_mask = x.reshape(batch * steps, positions, dim), mask.reshape(batch * steps, positions)
            flat, maps["spatial"] = spatial(flat, flat_mask)
            x = flat.view(batch, steps, positions, dim)
            flat = x.transpose(1, 2).reshape(batch * positions, steps, dim)
            flat_mask = mask.transpose(1, 2).reshape(batch * positions, steps)
            flat, maps["temporal"] = temporal(flat, flat_mask)
            x = flat.view(batch, positions, steps, dim).transpose(1, 2)
        return x, maps

    @staticmethod
    def pool(grid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over time and positions, (B, D)."""
        weights = mask.unsqueeze(-1).to(grid.dtype)
        return (grid * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp_min(1.0)
