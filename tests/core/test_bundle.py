from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from core.bundle import BundleError, ModelCard, load_bundle, require_bundle_files, save_bundle


def _card():
    return ModelCard(name="toy", version="0.1.0", task="toy classification", data=["generated"], split="none", metrics={"accuracy": 1.0})


def test_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    bundle = save_bundle(tmp_path, model, {"in": 3, "out": 2}, _card())
    loaded = load_bundle(tmp_path)
    assert loaded.config == {"in": 3, "out": 2}
    assert loaded.sha256 == bundle.sha256 and len(loaded.sha256) == 64
    restored = nn.Linear(3, 2)
    restored.load_state_dict(loaded.state_dict)
    assert torch.equal(restored.weight, model.weight)
    assert "sha256" in (tmp_path / "MODEL_CARD.md").read_text()


def test_corrupted_weights_refused(tmp_path):
    save_bundle(tmp_path, nn.Linear(3, 2), {}, _card())
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(tmp_path)


def test_truncated_weights_refused(tmp_path):
    save_bundle(tmp_path, nn.Linear(30, 20), {}, _card())
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(tmp_path)


def test_missing_files_and_missing_hash_refused(tmp_path):
    save_bundle(tmp_path, nn.Linear(3, 2), {}, _card())
    card = json.loads((tmp_path / "card.json").read_text())
    card["sha256"] = ""
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="no sha256"):
        load_bundle(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(BundleError, match="config.json is missing"):
        load_bundle(tmp_path)


def test_a_bundle_path_that_is_no_folder_is_named_as_such(tmp_path):
    with pytest.raises(BundleError, match=r"bundle .*nope does not exist \(expected a bundle folder: model.safetensors"):
        load_bundle(tmp_path / "nope")
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"x")
    with pytest.raises(BundleError, match="is a file, not a bundle folder"):
        load_bundle(a_file)
    with pytest.raises(BundleError, match=r"^--bundle .* is incomplete: card.json is missing$"):
        require_bundle_files(tmp_path, ("card.json",), what="--bundle")


def test_the_same_tensors_always_get_the_same_sha256(tmp_path):
    """A bundle's sha256 names its weights: saving the same tensors again must not change it (other
    bundles record it, e.g. a voice model records its speaker encoder's)."""
    torch.manual_seed(0)
    state = {"b.weight": torch.randn(3, 3), "a.weight": torch.randn(2), "c.bias": torch.zeros(4)}
    hashes = {save_bundle(tmp_path / str(i), state, {}, ModelCard(name="x", version=f"1.{i}", task="t")).sha256
              for i in range(8)}
    assert len(hashes) == 1


def test_card_lists_every_shipped_file_with_its_sha256():
    card = ModelCard(name="m", version="1", task="t", sha256="a" * 64,
                     extra={"int8": {"file": "model-int8.onnx", "sha256": "b" * 64}, "train_config": {"lr": 0.1}})
    markdown = card.to_markdown()
    assert f"- sha256 of model.safetensors: `{'a' * 64}`" in markdown
    assert markdown.endswith(f"- sha256 of model-int8.onnx: `{'b' * 64}`\n")
    assert "lr" not in markdown.split("## Integrity")[1]
