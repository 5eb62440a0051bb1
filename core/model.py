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
        batch_size, device = self._batch_info(inputs, present)
        outputs = {}
        for name in self.modalities:
            batch = inputs.get(name)
            encoder = self.encoders[name]
            if batch is None:
                tokens = torch.zeros(batch_size, 1, encoder.dim, device=device)
                out = EncoderOutput(tokens, torch.zeros(batch_size, 1, dtype=torch.bool, device=device))
            else:
                out = encoder(batch)
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

    def _batch_info(self, inputs: dict[str, Any], present: dict[str, torch.Tensor] | None) -> tuple[int, torch.device]:
        for value in list(inputs.values()) + list((present or {}).values()):
            tensor = _first_tensor(value)
            if tensor is not None:
                return tensor.shape[0], tensor.device
        raise ValueError("no modality has data: pass at least one input tensor or a present mask")


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        for item in value.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None
