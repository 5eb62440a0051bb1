from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.compression import (
    SessionPool,
    channel_sparsity,
    export_onnx,
    onnx_session,
    prune_channels,
    quantize_int8,
)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32, 4)).eval()


def test_onnx_export_matches_torch(tmp_path):
    model = _model()
    x = torch.randn(3, 1, 32)
    path = export_onnx(model, (x,), tmp_path / "m.onnx", ["signal"], ["logits"])
    session = onnx_session(path)
    out = session.run(None, {"signal": torch.randn(5, 1, 32).numpy()})[0]  # dynamic batch
    assert out.shape == (5, 4)
    ort_out = session.run(None, {"signal": x.numpy()})[0]
    np.testing.assert_allclose(ort_out, model(x).detach().numpy(), atol=1e-4)


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _model()

    def forward(self, x):
        logits = self.body(x)
        return logits, x.mean(-1)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_session_pool_splits_a_batch_and_keeps_its_order(tmp_path, batch):
    model = _TwoHeads().eval()
    path = export_onnx(model, (torch.randn(2, 1, 32),), tmp_path / "m.onnx", ["signal"], ["logits", "mean"])
    x = torch.randn(batch, 1, 32).numpy()
    one = onnx_session(path).run(None, {"signal": x})
    pool = SessionPool(path, workers=3, threads=1)
    out = pool.run({"signal": x})
    assert len(out) == 2 and [o.shape for o in out] == [o.shape for o in one]
    for a, b in zip(out, one):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # a lone item runs on one session of all the pool's threads, without starting the worker threads
    assert (pool._executor is None) == (batch == 1)
    assert pool.solo not in pool.sessions and pool.solo.get_session_options().intra_op_num_threads == 3
    assert SessionPool(path, workers=1, threads=2).solo.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ValueError, match="workers >= 1"):
        SessionPool(path, workers=0)


def test_int8_quantisation_stays_close():
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    x = torch.randn(32, 16)
    quantised = quantize_int8(model)
    assert any("quantized" in type(m).__module__ for m in quantised.modules())
    assert torch.allclose(quantised(x), model(x), atol=0.05)


@pytest.mark.parametrize("amount", [0.25, 0.5])
def test_structured_pruning_zeroes_that_share_of_channels(amount):
    pruned = prune_channels(_model(), amount=amount)
    assert channel_sparsity(pruned) == pytest.approx(amount, abs=0.05)
    assert channel_sparsity(_model()) == 0.0


def test_static_onnx_quantisation_is_qdq_and_close(tmp_path):
    import onnx

    from core.compression import quantize_onnx_static

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)).eval()
    fp32 = export_onnx(model, (torch.randn(1, 3, 16, 16),), tmp_path / "m.onnx", ["x"], ["y"])
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    int8 = quantize_onnx_static(fp32, tmp_path / "m8.onnx", calibration)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("QuantizeLinear") >= 2 and "DequantizeLinear" in ops
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref = onnx_session(fp32).run(None, {"x": x})[0]
    out = onnx_session(int8).run(None, {"x": x})[0]
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    # Excluded nodes stay float: no QDQ pair feeds the second conv's weights then.
    last = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"][-1]
    partial = quantize_onnx_static(fp32, tmp_path / "p8.onnx", calibration, nodes_to_exclude=[last])
    assert ops.count("DequantizeLinear") > [n.op_type for n in onnx.load(str(partial)).graph.node].count("DequantizeLinear")
    with pytest.raises(ValueError, match="empty"):
        quantize_onnx_static(fp32, tmp_path / "e.onnx", [])


@pytest.mark.parametrize(
    ("flags", "saturate"),
    [("fpu sse2 avx avx2 fma", True), ("fpu avx2 avx512f avx512bw", True), ("avx2 avx512f avx512_vnni", False),
     ("avx2 avx_vnni", False), (None, False)],
)
def test_int8_kernels_saturate_on_x86_without_vnni(tmp_path, flags, saturate):
    from core.compression import int8_kernels_saturate

    cpuinfo = tmp_path / "cpuinfo"
    # an ARM cpuinfo lists "Features", not "flags"
    cpuinfo.write_text("processor\t: 0\n" + (f"flags\t\t: {flags}\n" if flags else "Features\t: fp asimd asimddp\n"))
    assert int8_kernels_saturate(cpuinfo) is saturate
    assert int8_kernels_saturate(tmp_path / "missing") is False


def test_quantised_weights_are_seven_bit(tmp_path):
    import onnx
    from onnx import numpy_helper

    from core.compression import full_range_int8_weights, quantize_onnx_static

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    fp32 = export_onnx(model, (torch.randn(1, 3, 12, 12),), tmp_path / "m.onnx", ["x"], ["y"])
    calibration = [{"x": np.random.default_rng(s).standard_normal((1, 3, 12, 12)).astype(np.float32)} for s in range(4)]
    int8 = quantize_onnx_static(fp32, tmp_path / "m8.onnx", calibration)
    assert not full_range_int8_weights(int8)
    # the same model with one weight pushed to the full int8 range is flagged
    graph = onnx.load(str(int8))
    weight = next(i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)
    values = numpy_helper.to_array(weight).copy()
    assert 32 < np.abs(values).max() <= 64  # per channel, the largest weight sits at the 7-bit edge
    values.flat[0] = -127
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(graph, str(tmp_path / "full.onnx"))
    assert full_range_int8_weights(tmp_path / "full.onnx")
