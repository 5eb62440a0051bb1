"""Progressive (hierarchical) fusion: modality-specific layers, then co-attention, then shared layers.

Shallow layers keep each modality's own features; bidirectional co-attention lets every modality
query the others; deep shared layers mix all tokens into one semantic space. Per-modality
summaries then pass a graph-attention layer and the dynamic gate, whose weights are returned so
callers can show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from core.config import ConfigBase
from core.encoders.base import EncoderOutput, masked_mean
from core.fusion.attention import AttentionBlock
from core.fusion.gate import ModalityGate
from core.fusion.graph import ModalityGraphAttention


@dataclass
class FusionConfig(ConfigBase):
    dim: int = 128  # shared width every modality is projected to
    heads: int = 4
    specific_layers: int = 1  # per-modality self-attention layers (shallow, modality-specific)
    cross_layers: int = 1  # bidirectional co-attention layers
    shared_layers: int = 1  # self-attention over all modalities' tokens together
    graph: bool = True  # graph attention over per-modality summary nodes
    reliability_dim: int = 0  # extra per-modality features the gate sees (e.g. ASR confidence)
    dropout: float = 0.1

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"dim": 16, "heads": 2, "specific_layers": 1, "cross_layers": 1, "shared_layers": 1, "dropout": 0.0},
        "small": {"dim": 64, "heads": 4},
        "base": {"dim": 128, "heads": 4, "specific_layers": 2, "cross_layers": 2, "shared_layers": 2},
    }


@dataclass
class FusionOutput:
    fused: torch.Tensor  # (B, D)
    weights: torch.Tensor  # (B, M) gate weights, zero for absent modalities
    summaries: torch.Tensor  # (B, M, D) per-modality summaries after fusion
    present: torch.Tensor  # (B, M) bool
    tokens: dict[str, EncoderOutput]  # per-modality tokens after fusion
    attention: dict[str, torch.Tensor]  # co-attention maps of the last cross layer, per modality


class CoAttention(nn.Module):
    """One bidirectional co-attention layer: each modality attends to the tokens of all others."""

    def __init__(self, modalities: list[str], dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.modalities = modalities
        self.blocks = nn.ModuleDict({name: AttentionBlock(dim, heads, dropout=dropout) for name in modalities})

    def forward(self, tokens: dict[str, EncoderOutput]) -> tuple[dict[str, EncoderOutput], dict[str, torch.Tensor]]:
        updated, maps = {}, {}
        for name in self.modalities:
            others = [tokens[other] for other in self.modalities if other != name]
            if not others:
                updated[name] = tokens[name]
                continue
            context = torch.cat([o.tokens for o in others], dim=1)
            context_mask = torch.cat([o.mask for o in others], dim=1)
            x, maps[name] = self.blocks[name](tokens[name].tokens, tokens[name].mask, context, context_mask)
            updated[name] = EncoderOutput(x, tokens[name].mask)
        return updated, maps


class ProgressiveFusion(nn.Module):
    def __init__(self, modalities: list[str], config: FusionConfig):
        super().__init__()
        self.modalities = list(modalities)
        self.config = config
        dim, heads, dropout = config.dim, config.heads, config.dropout
        self.specific = nn.ModuleDict(
            {name: nn.ModuleList(AttentionBlock(dim, heads, dropout=dropout) for _ in range(config.specific_layers)) for name in self.modalities}
        )
        self.cross = nn.ModuleList(CoAttention(self.modalities, dim, heads, dropout) for _ in range(config.cross_layers))
        self.shared = nn.ModuleList(AttentionBlock(dim, heads, dropout=dropout) for _ in range(config.shared_layers))
        self.graph = ModalityGraphAttention(dim, heads, dropout) if config.graph else None
        self.gate = ModalityGate(dim, len(self.modalities), config.reliability_dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: dict[str, EncoderOutput], reliability: torch.Tensor | None = None) -> FusionOutput:
        # 1. shallow, modality-specific layers
        stage = {}
        for name in self.modalities:
            x, mask = tokens[name].tokens, tokens[name].mask
            for block in self.specific[name]:
                x, _ = block(x, mask)
            stage[name] = EncoderOutput(x, mask)
        # 2. bidirectional co-attention
        attention: dict[str, torch.Tensor] = {}
        for layer in self.cross:
            stage, attention = layer(stage)
        # 3. deep shared layers over every token
        lengths = [stage[name].tokens.shape[1] for name in self.modalities]
        x = torch.cat([stage[name].tokens for name in self.modalities], dim=1)
        mask = torch.cat([stage[name].mask for name in self.modalities], dim=1)
        for block in self.shared:
            x, _ = block(x, mask)
        x = self.norm(x) * mask.unsqueeze(-1).to(x.dtype)
        pieces = torch.split(x, lengths, dim=1)
        fused_tokens = {name: EncoderOutput(piece, stage[name].mask) for name, piece in zip(self.modalities, pieces)}
        # 4. per-modality summaries -> graph attention -> gate
        summaries = torch.stack([masked_mean(t.tokens, t.mask) for t in fused_tokens.values()], dim=1)  # (B, M, D)
        present = torch.stack([t.mask.any(dim=1) for t in fused_tokens.values()], dim=1)  # (B, M)
        if self.graph is not None:
            summaries, _ = self.graph(summaries, present)
        fused, weights = self.gate(summaries, present, reliability)
        return FusionOutput(fused, weights, summaries, present, fused_tokens, attention)
