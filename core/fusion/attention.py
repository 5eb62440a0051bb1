"""Masked multi-head attention that never produces NaN, and a pre-norm transformer block.

``softmax(QK^T / sqrt(d_k)) V`` written out (rather than ``nn.MultiheadAttention``) so that masks
behave the same everywhere — a query whose keys are all masked attends to nothing and gets zeros —
and the attention maps can be returned for visualisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` restricted to ``mask`` (True = keep); fully masked rows become zeros."""
    if mask is None:
        return torch.softmax(scores.float(), dim=dim).to(scores.dtype)
    scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=dim) * mask
    return (probs / probs.sum(dim=dim, keepdim=True).clamp_min(1e-12)).to(scores.dtype)


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)

    def forward(
        self,
        query: torch.Tensor,  # (B, Tq, D)
        context: torch.Tensor,  # (B, Tk, D)
        context_mask: torch.Tensor | None = None,  # (B, Tk) bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self._split(self.q(query)), self._split(self.k(context)), self._split(self.v(context))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)
        mask = None if context_mask is None else context_mask[:, None, None, :]
        attention = masked_softmax(scores, mask).to(v.dtype)
        mixed = self.dropout(attention) @ v  # (B, H, Tq, d)
        mixed = mixed.transpose(1, 2).reshape(query.shape)
        return self.out(mixed), attention


class AttentionBlock(nn.Module):
    """Pre-norm block: attention (self when ``context`` is None, else cross) then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        mask: torch.Tensor,  # (B, T) bool
        context: torch.Tensor | None = None,  # (B, Tc, D)
        context_mask: torch.Tensor | None = None,  # (B, Tc) bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        query = self.norm_query(x)
        if context is None:
            keys, key_mask = query, mask
        else:
            keys, key_mask = self.norm_context(context), context_mask
        attended, attention = self.attention(query, keys, key_mask)
        x = x + attended
        x = x + self.mlp(self.norm_mlp(x))
        # Padding tokens stay exactly zero so they can never leak into pooled summaries.
        return x * mask.unsqueeze(-1).to(x.dtype), attention
