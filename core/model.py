"""Assembly of encoders, projection, progressive fusion and routed heads into one model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.encoders.base import Encoder, EncoderOutput
from core.fusion.progressive import FusionConfig, FusionOutput, ProgressiveFusion
from core.fusion.projection import ModalityProjector
from core.heads import TaskRouter


@dataclass
class ModelOutput:
    logits: Any  # (B, C) for one task, or {task: (rows, logits)} for mixed tasks
    weights: torch.Tensor  # (B, M) modality weights from the gate
    fused: torch.Tensor  # (B, D)
    fusion: FusionOutput


class MultimodalModel(nn.Module):
    """``encoders`` by modality name -> shared space -> progressive fusion -> gate -> routed heads.

    Any modality may be absent: pass ``None`` for the whole batch, or a ``present`` mask (B,) per
    modality for individual samples. Absent modalities get zero gate weight; a sample with no
    modality at all fuses to zeros (the heads then give their prior).
    """

    def __init__(self, encoders: dict[str, Encoder], fusion: FusionConfig, heads: dict[str, nn.Module]):
        super().__init__()
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.projector = ModalityProjector({name: enc.dim for name, enc in encoders.items()}, fusion.dim)
        self.fusion = ProgressiveFusion(self.modalities, fusion)
        self.router = TaskRouter(heads)

    def encode(self, inputs: dict[str, Any], present: dict[str, torch.Tensor] | None = None) -> dict[str, EncoderOutput]:
        encoded = {name: self.encoders[name](inputs[name]) for name in self.modalities if inputs.get(name) is not None}
        batch_size, device = self._batch_info(encoded, present)
        outputs = {}
        for name in self.modalities:
            out = encoded.get(name)
            if out is None:
                tokens = torch.zeros(batch_size, 1, self.encoders[name].dim, device=device)
                out = EncoderOutput(tokens, torch.zeros(batch_size, 1, dtype=torch.bool, device=device))
            if present is not None and name in present:
                keep = present[name].to(device=out.mask.device, dtype=torch.bool)
                out = EncoderOutput(out.tokens * keep[:, None, None].to(out.tokens.dtype), out.mask & keep[:, None])
            outputs[name] = out
        return outputs

    def forward(
        self,
        inputs: dict[str, Any],
        present: dict[str, torch.Tensor] | None = None,
        task: str | list[str] | None = None,
        reliability: torch.Tensor | None = None,
    ) -> ModelOutput:
        encoded = self.encode(inputs, present)
        fusion = self.fusion(self.projector(encoded), reliability)
        logits = self.router(fusion.fused, task or self.router.tasks[0])
        return ModelOutput(logits, fusion.weights, fusion.fused, fusion)

    @staticmethod
    def _batch_info(encoded: dict[str, EncoderOutput], present: dict[str, torch.Tensor] | None) -> tuple[int, torch.device]:
        """The batch size every modality must share, from encoder outputs and present masks."""
        sizes = {f"{name} tokens": (out.batch_size, out.tokens.device) for name, out in encoded.items()}
        sizes.update({f"{name} present mask": (len(mask), mask.device) for name, mask in (present or {}).items()})
        if not sizes:
            raise ValueError("no modality has data: pass at least one input or a present mask")
        if len({size for size, _ in sizes.values()}) > 1:
            raise ValueError(f"modalities disagree on the batch size: { {k: v[0] for k, v in sizes.items()} }")
        return next(iter(sizes.values()))
