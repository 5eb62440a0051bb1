"""Projection of every modality into one shared width, tagged with a learned modality embedding."""

from __future__ import annotations

import torch
from torch import nn

from core.encoders.base import EncoderOutput


class ModalityProjector(nn.Module):
    def __init__(self, in_dims: dict[str, int], dim: int):
        super().__init__()
        self.modalities = list(in_dims)
        self.project = nn.ModuleDict(
            {name: nn.Sequential(nn.Linear(width, dim), nn.LayerNorm(dim)) for name, width in in_dims.items()}
        )
        self.modality_embedding = nn.Parameter(torch.randn(len(self.modalities), dim) * 0.02)

    def forward(self, outputs: dict[str, EncoderOutput]) -> dict[str, EncoderOutput]:
        projected = {}
        for index, name in enumerate(self.modalities):
            out = outputs[name]
            tokens = self.project[name](out.tokens) + self.modality_embedding[index]
            projected[name] = EncoderOutput(tokens * out.mask.unsqueeze(-1).to(tokens.dtype), out.mask)
        return projected
