"""Losses: symmetric cross-modal InfoNCE with a learnable temperature, weighted CE and focal loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor | float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` and row i of ``b`` are a pair, every other row a negative.

    ``L = -log(exp(a_i·b_i/τ) / Σ_k exp(a_i·b_k/τ))``, averaged over both directions.
    """
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    logits = a @ b.T / temperature  # (N, N)
    targets = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class ContrastiveLoss(nn.Module):
    """InfoNCE with a learnable temperature (CLIP-style log-parameterised, clamped to stay stable)."""

    def __init__(self, initial_temperature: float = 0.07, min_temperature: float = 0.01):
        super().__init__()
        self.log_inverse_temperature = nn.Parameter(torch.tensor(math.log(1.0 / initial_temperature)))
        self.max_log = math.log(1.0 / min_temperature)

    @property
    def temperature(self) -> torch.Tensor:
        return 1.0 / self.log_inverse_temperature.clamp(max=self.max_log).exp()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return info_nce(a, b, self.temperature)


def class_weights(counts: Sequence[int] | torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency class weights normalised to mean 1 (``power`` < 1 softens them)."""
    counts = torch.as_tensor(counts, dtype=torch.float32).clamp_min(1.0)
    weights = (counts.sum() / counts) ** power
    return weights / weights.mean()


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Multi-class focal loss ``(1 - p_t)^γ · CE``; γ = 0 gives (weighted) cross-entropy exactly."""
    ce = F.cross_entropy(logits, targets, weight=weight, reduction="none", label_smoothing=label_smoothing)
    if gamma == 0:
        return ce.sum() / (weight[targets].sum() if weight is not None else ce.numel())
    p_t = logits.float().softmax(dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    loss = (1.0 - p_t) ** gamma * ce
    return loss.sum() / (weight[targets].sum() if weight is not None else loss.numel())
