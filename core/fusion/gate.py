"""Dynamic modality weighting: per-sample softmax over the modalities that are present.

The seed's ``softmax(attention_scores)``: each modality's summary (and optional reliability
features such as ASR confidence or image quality) is scored; the softmax runs over present
modalities only, so absent ones get exactly zero weight and the rest renormalise.
"""

from __future__ import annotations

import torch
from torch import nn

from core.fusion.attention import masked_softmax


class ModalityGate(nn.Module):
    def __init__(self, dim: int, num_modalities: int, reliability_dim: int = 0, hidden: int = 64):
        super().__init__()
        self.reliability_dim = reliability_dim
        self.score = nn.Sequential(nn.LayerNorm(dim + reliability_dim), nn.Linear(dim + reliability_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.modality_bias = nn.Parameter(torch.zeros(num_modalities))

    def forward(
        self,
        summaries: torch.Tensor,  # (B, M, D)
        present: torch.Tensor,  # (B, M) bool
        reliability: torch.Tensor | None = None,  # (B, M, R)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (fused (B, D), weights (B, M)); a sample with no modality fuses to zeros."""
        features = summaries
        if self.reliability_dim:
            if reliability is None:
                reliability = torch.zeros(*summaries.shape[:2], self.reliability_dim, device=summaries.device, dtype=summaries.dtype)
            features = torch.cat([summaries, reliability.to(summaries.dtype)], dim=-1)
        scores = self.score(features).squeeze(-1) + self.modality_bias  # (B, M)
        weights = masked_softmax(scores, present).to(summaries.dtype)
        fused = (weights.unsqueeze(-1) * summaries).sum(dim=1)
        return fused, weights
