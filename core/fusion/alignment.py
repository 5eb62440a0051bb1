"""Cross-modal contrastive alignment: per-modality projection heads into one normalised space.

Trained with symmetric InfoNCE on paired samples (core.losses.ContrastiveLoss); evaluated with
Recall@K / median rank (core.metrics.retrieval_metrics). Used for retrieval and as a
self-supervised pre-training signal before fusion.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.losses import ContrastiveLoss


class CrossModalAligner(nn.Module):
    def __init__(self, in_dims: dict[str, int], dim: int = 128, initial_temperature: float = 0.07):
        super().__init__()
        self.heads = nn.ModuleDict(
            {name: nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, dim)) for name, width in in_dims.items()}
        )
        self.loss_fn = ContrastiveLoss(initial_temperature)

    def embed(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """(B, F) features of one modality -> (B, dim) unit vectors in the shared space."""
        return F.normalize(self.heads[modality](features), dim=-1)

    def forward(self, first: str, a: torch.Tensor, second: str, b: torch.Tensor) -> torch.Tensor:
        """InfoNCE loss of row-aligned pairs (a[i], b[i])."""
        return self.loss_fn(self.embed(first, a), self.embed(second, b))
