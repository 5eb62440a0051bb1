"""Graph attention over modalities: one node per present modality, fully connected (GAT-style).

Lets modalities resolve ambiguity through each other at the summary level (the seed's GNN over
modalities). Absent nodes neither send nor receive messages.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.fusion.attention import masked_softmax


class ModalityGraphAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.norm = nn.LayerNorm(dim)
        self.node = nn.Linear(dim, dim, bias=False)
        self.attend_source = nn.Parameter(torch.randn(heads, self.head_dim) * 0.1)
        self.attend_target = nn.Parameter(torch.randn(heads, self.head_dim) * 0.1)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, nodes: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """nodes (B, M, D), present (B, M) -> (updated nodes (B, M, D), edge weights (B, H, M, M))."""
        batch, count, dim = nodes.shape
        h = self.node(self.norm(nodes)).view(batch, count, self.heads, self.head_dim)  # (B, M, H, d)
        source = (h * self.attend_source).sum(-1)  # (B, M, H): score as receiver i
        target = (h * self.attend_target).sum(-1)  # (B, M, H): score as sender j
        edges = F.leaky_relu(source.permute(0, 2, 1).unsqueeze(-1) + target.permute(0, 2, 1).unsqueeze(-2), 0.2)  # (B, H, M, M)
        edge_mask = (present.unsqueeze(-1) & present.unsqueeze(-2)).unsqueeze(1)  # (B, 1, M, M)
        alpha = masked_softmax(edges, edge_mask).to(h.dtype)
        messages = alpha @ h.permute(0, 2, 1, 3)  # (B, H, M, d)
        messages = messages.permute(0, 2, 1, 3).reshape(batch, count, dim)
        updated = nodes + self.dropout(self.out(messages))
        return updated * present.unsqueeze(-1).to(updated.dtype), alpha
