"""Google's speech embedding ported to PyTorch: the import from openWakeWord's ONNX layout, the
architecture against outputs of the original ONNX graphs, the bundled weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.customer_service import speech_embedding as se
from apps.customer_service.speech_embedding import SpeechEmbeddingEncoder, load_encoder

# Computed once by onnxruntime from openWakeWord 0.5.1's melspectrogram.onnx + embedding_model.onnx
# (the graphs this module ports) for reference_signal(): five of its mel frames and the 21 window
# embeddings every 4 frames (rounded to 5 / 4 decimals).
REFERENCE = Path(__file__).parent / "speech_embedding_onnx_reference.json"


def reference_signal() -> np.ndarray:
    t = np.arange(int(1.6 * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * (200 * t + 900 * t ** 2)) * (t > 0.3) * (t < 1.2)
    x += 0.2 * np.sin(2 * np.pi * 140 * t) * np.sin(2 * np.pi * 3 * t) ** 2
    x += 0.01 * np.random.default_rng(123).standard_normal(len(t))
    return x.astype(np.float32)


def _write_onnx_layout(folder: Path, state: dict[str, np.ndarray]) -> None:
    """Two ONNX files holding ``state`` as initializers under openWakeWord's names (no nodes: the
    import reads initializers only)."""
    import onnx
    from onnx import helper, numpy_helper

    folder.mkdir(parents=True)
    mel = {"0.stft.conv_real.weight": state["dft_real"], "0.stft.conv_imag.weight": state["dft_imag"],
           "1.melW": state["mel_matrix"]}
    emb = {}
    for i in range(20):
        prefix = f"model/conv2d{'' if i == 0 else f'_{i}'}/Conv2D"
        if i < 19:
            emb[f"{prefix}_weights_fused_bn"] = state[f"convs.{i}.weight"]
            emb[f"{prefix}_bias_fused_bn"] = state[f"convs.{i}.bias"]
        else:
            emb[f"{prefix}/ReadVariableOp:0"] = state[f"convs.{i}.weight"]
    for name, arrays in (("melspectrogram.onnx", mel), ("embedding_model.onnx", emb)):
        graph = helper.make_graph([], name, [], [], [numpy_helper.from_array(v, k) for k, v in arrays.items()])
        onnx.save(helper.make_model(graph), str(folder / name))


def test_import_maps_every_onnx_initializer(tmp_path):
    torch.manual_seed(0)
    reference = SpeechEmbeddingEncoder()
    for _name, buf in reference.named_buffers():
        buf.normal_()
    state = {k: v.numpy().copy() for k, v in reference.state_dict().items()}
    _write_onnx_layout(tmp_path / "models", state)
    encoder = load_encoder(se.import_openwakeword(tmp_path / "models", tmp_path / "bundle"))
    for k, v in encoder.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)
    from core.bundle import load_bundle

    sources = load_bundle(tmp_path / "bundle").card.extra["source_sha256"]
    assert set(sources) == {"melspectrogram.onnx", "embedding_model.onnx"} and all(len(d) == 64 for d in sources.values())


def test_windows_and_token_shapes_follow_the_step():
    torch.manual_seed(0)
    encoder = SpeechEmbeddingEncoder(step=8).eval()
    mel = torch.rand(2, 76 + 8 * 5, 32)
    out = encoder({"mel": mel})
    assert out.tokens.shape == (2, 6, 96) and out.mask.all()
    # a clip shorter than one window still gives one token (padded with its quietest frame)
    assert encoder({"mel": mel[:, :40]}).tokens.shape == (2, 1, 96)
    # each token only sees its own window
    shifted = mel.clone()
    shifted[:, -1] += 5.0
    changed = (encoder({"mel": shifted}).tokens - out.tokens).abs().amax(-1)
    assert torch.all(changed[:, :-1] == 0) and torch.all(changed[:, -1] > 0)


@pytest.mark.skipif(not (se.BUNDLE_DIR / "model.safetensors").is_file(), reason="no shipped speech embedding")
def test_shipped_port_reproduces_the_original_onnx_graphs():
    encoder = load_encoder(step=4)
    ref = json.loads(REFERENCE.read_text())
    pcm = torch.from_numpy(np.clip(reference_signal(), -1, 1) * 32767)[None]
    mel = encoder.melspectrogram(pcm)[0].numpy()
    assert list(mel.shape) == ref["mel_shape"]
    np.testing.assert_allclose(mel[ref["mel_rows"]], np.array(ref["mel"]), atol=2e-4)
    frames = encoder.frames(reference_signal())
    expected = np.array(ref["embedding"])
    assert frames.shape == (21, 96) == expected.shape
    np.testing.assert_allclose(frames, expected, atol=2e-3, rtol=1e-4)
    card = (se.BUNDLE_DIR / "card.json").read_text()
    assert "Apache" in card and (se.BUNDLE_DIR / "LICENSE.txt").is_file()
