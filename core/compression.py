"""Compression for deployment: ONNX export (+ onnxruntime session), INT8 quantisation, pruning."""

from __future__ import annotations

import copy
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
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


def export_once(path: str | Path, write) -> Path:
    """``path`` after ``write(tmp)`` exported it, unless it already exists: an export cached by name (put the
    weights' sha256 in it), written to a temporary file first so a crash or a concurrent worker never
    leaves a half-written model under the final name."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(path)}.tmp.onnx")
        write(tmp)
        tmp.replace(path)
    return path


def onnx_session(path: str | Path, threads: int = 1):
    """A CPU onnxruntime session on ``threads`` intra-op threads. The threads sleep between runs instead
    of spinning: a service holds several sessions (and other work) on a few cores, and spinning
    threads of an idle session steal those cores from the busy one."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class SessionPool:
    """``workers`` onnxruntime sessions of one model, each on ``threads`` intra-op threads. A batch is split
    along its first axis into one part per session and the parts run concurrently: onnxruntime releases
    the GIL, so Python threads suffice.

    On the few cores of a line PC the kernels of a small model parallelise poorly inside one run: two
    1-thread sessions on two images give more throughput than one 2-thread session taking them in turn
    (the INT8 PCB detector on 2 cores: 23-26 against 15-17.5 images/s). A batch of one cannot be split: it
    runs on one more session holding all ``workers * threads`` threads, which is faster than one worker's
    share (the INT8 PCB detectors on 2 cores without VNNI: 62 against 82 ms at 640 px, 69 against 98 ms at
    672 px): a line sending one board at a time gets that latency. Callers must not run the pool from two
    threads at once (the services' batchers run one batch at a time), or the solo session's threads and the
    workers' would share the cores.
    """

    def __init__(self, path: str | Path, workers: int = 1, threads: int = 1):
        if workers < 1 or threads < 1:
            raise ValueError(f"a session pool needs workers >= 1 and threads >= 1, not {workers} and {threads}")
        self.path = Path(path)
        self.sessions = [onnx_session(path, threads=threads) for _ in range(workers)]
        self.solo = onnx_session(path, threads=threads * workers) if workers > 1 else self.sessions[0]
        self._executor = None  # started on the first split batch, not at construction
        self._starting = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output of the model for ``feeds`` (arrays sharing their first, batch, axis)."""
        n = len(next(iter(feeds.values())))
        parts = min(len(self.sessions), n)
        if parts <= 1:
            return self.solo.run(None, feeds)
        with self._starting:  # concurrent requests must not each start a pool
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(len(self.sessions), thread_name_prefix="onnx-pool")
        bounds = np.linspace(0, n, parts + 1).round().astype(int)
        futures = [
            self._executor.submit(session.run, None, {name: value[a:b] for name, value in feeds.items()})
            for session, a, b in zip(self.sessions, bounds[:-1], bounds[1:])
        ]
        outputs = [f.result() for f in futures]
        return [np.concatenate([out[i] for out in outputs]) for i in range(len(outputs[0]))]


def quantize_onnx_static(
    model_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[dict[str, np.ndarray]],
    *,
    per_channel: bool = True,
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    calibrate_method: str = "minmax",
    preprocess: bool = True,
) -> Path:
    """Post-training static INT8 quantisation of an ONNX model (QDQ format, onnxruntime).

    ``calibration`` yields feed dicts (input name -> array) of representative data; activation
    ranges are measured on them. Activations are uint8 (asymmetric), weights int8 (symmetric,
    per output channel when ``per_channel``): onnxruntime's recommendation for x86 CPUs. Weights use
    7 of their 8 bits (``reduce_range``): on x86 CPUs without VNNI (AVX2 and plain AVX-512, e.g. AMD
    EPYC before Zen 4) onnxruntime's uint8 x int8 kernels add pairs of products in 16 bits and
    saturate on full-range weights: a two-conv network then drifts by 18 % of its output range
    instead of 1.3 %, and the INT8 PCB detector lost its detections. Nodes named
    in ``nodes_to_exclude`` stay float (e.g. a detector's box decoding, where 8 bits over 640 px
    would cost pixels). ``calibrate_method``: "minmax" or "percentile" (99.999th, robust to outliers).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if calibrate_method not in methods:
        raise ValueError(f"calibrate_method must be one of {sorted(methods)}, not {calibrate_method!r}")

    feeds = list(calibration)
    if not feeds:
        raise ValueError("quantize_onnx_static: the calibration data is empty")

    class _Reader(CalibrationDataReader):
        # quantize_static's strided mode feeds one sample per pass and merges ranges, so memory
        # stays at one sample's activations however many samples calibrate.
        def __init__(self):
            self.position, self.end = 0, len(feeds)

        def __len__(self):
            return len(feeds)

        def set_range(self, start_index: int, end_index: int):
            self.position, self.end = start_index, end_index

        def get_next(self):
            if self.position >= self.end:
                return None
            self.position += 1
            return feeds[self.position - 1]

    model_path, out_path = Path(model_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    source = model_path
    with tempfile.TemporaryDirectory() as tmp:
        if preprocess:  # shape inference + graph clean-up: the quantiser needs shapes to place QDQ pairs
            source = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(model_path), str(source), skip_symbolic_shape=True)
        quantize_static(
            str(source), str(out_path), _Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types) if op_types else None,
            per_channel=per_channel, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude), calibrate_method=methods[calibrate_method],
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"CalibStridedMinMax": 1},
        )
    return out_path


def int8_kernels_saturate(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether onnxruntime's uint8 x int8 CPU kernels saturate here: an x86 CPU whose flags list neither
    ``avx512_vnni`` nor ``avx_vnni`` (their products are then summed pairwise in 16 bits). False where
    the CPU cannot be read (another OS) or is not x86: those kernels accumulate in 32 bits."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:  # ARM and others list "Features", and have no such kernels
        return False
    return not {"avx512_vnni", "avx_vnni"} & set(flags)


def full_range_int8_weights(path: str | Path) -> bool:
    """Whether a quantised ONNX model holds int8 weights beyond 7 bits (|w| > 64), which saturating kernels
    (``int8_kernels_saturate``) get wrong; ``quantize_onnx_static`` writes 7-bit ones."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return any(
        np.abs(numpy_helper.to_array(init).astype(np.int16)).max(initial=0) > 64
        for init in graph.initializer
        if init.data_type == onnx.TensorProto.INT8
    )


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
