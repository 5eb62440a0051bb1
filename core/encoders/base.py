"""The one encoder contract: every modality's batch becomes tokens ``(B, T, D)`` and a mask ``(B, T)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EncoderOutput:
    tokens: torch.Tensor  # (B, T, D) float
    mask: torch.Tensor  # (B, T) bool, True where the token is real

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3:
            raise ValueError(f"tokens must be (B, T, D), got shape {tuple(self.tokens.shape)}")
        if self.mask.shape != self.tokens.shape[:2] or self.mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool (B, T) = {tuple(self.tokens.shape[:2])}, got {self.mask.dtype} {tuple(self.mask.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def pooled(self) -> torch.Tensor:
        """Masked mean over tokens, (B, D); rows with no valid token pool to zeros."""
        return masked_mean(self.tokens, self.mask)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, T, 1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class Encoder(nn.Module):
    """Base class for encoders. Subclasses set ``modality`` and ``dim`` and implement ``forward``."""

    modality: str = ""
    dim: int = 0

    def forward(self, batch) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError
