"""Compression for deployment: ONNX export (+ onnxruntime session), INT8 quantisation, pruning."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = True,
    opset: int = 17,
) -> Path:
    """Export with a dynamic batch axis; the caller's module must take and return plain tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
    model = model.eval()
    torch.onnx.export(
        model, example_inputs, str(path), input_names=list(input_names), output_names=list(output_names),
        dynamic_axes=axes, opset_version=opset, dynamo=False,
    )
    return path


def onnx_session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_int8(model: nn.Module, layers: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM)) -> nn.Module:
    """Post-training dynamic INT8 quantisation of Linear/LSTM weights (CPU inference)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).eval(), set(layers), dtype=torch.qint8)


def prune_channels(model: nn.Module, amount: float = 0.2, layers: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) -> nn.Module:
    """Structured L2 pruning of ``amount`` of output channels in every matching layer (made permanent).

    Zeroed channels keep tensor shapes, so accuracy can be measured directly; shrinking the layers
    for speed is a separate, architecture-specific step.
    """
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model)
    for module in pruned.modules():
        if isinstance(module, layers) and module.weight.shape[0] > 1:
            prune.ln_structured(module, name="weight", amount=amount, n=2, dim=0)
            prune.remove(module, "weight")
    return pruned


def channel_sparsity(model: nn.Module) -> float:
    """Share of output channels whose weights are entirely zero, over conv and linear layers."""
    zero, total = 0, 0
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            flat = module.weight.detach().reshape(module.weight.shape[0], -1)
            zero += int((flat.abs().sum(dim=1) == 0).sum())
            total += flat.shape[0]
    return zero / max(1, total)
