"""Task heads and the router that sends each request's task to its head (the seed's dynamic routing)."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Fused vector (B, D) -> logits (B, C) for single-label classification."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 0, dropout: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        if hidden:
            self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        else:
            self.net = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)


class MultiLabelHead(ClassificationHead):
    """Same as ClassificationHead, read with independent sigmoids (one per label)."""

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()


class TaskRouter(nn.Module):
    """Routes each sample to the head of its task; mixed-task batches are split and re-assembled.

    ``forward(x, "intent")`` runs one head on the whole batch; ``forward(x, ["intent", "emotion", ...])``
    runs each head on its own rows and returns ``{task: (row_indices, logits)}``.
    """

    def __init__(self, heads: dict[str, nn.Module]):
        super().__init__()
        if not heads:
            raise ValueError("TaskRouter needs at least one head")
        self.heads = nn.ModuleDict(heads)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def forward(self, x: torch.Tensor, task: str | list[str]):
        if isinstance(task, str):
            return self._head(task)(x)
        if len(task) != x.shape[0]:
            raise ValueError(f"got {len(task)} task names for a batch of {x.shape[0]}")
        routed = {}
        for name in dict.fromkeys(task):  # first-seen order
            rows = torch.tensor([i for i, t in enumerate(task) if t == name], device=x.device)
            routed[name] = (rows, self._head(name)(x.index_select(0, rows)))
        return routed

    def _head(self, task: str) -> nn.Module:
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; this model serves {self.tasks}")
        return self.heads[task]
