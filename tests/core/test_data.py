import numpy as np
import pytest
import torch

from core.data import MemmapDataset, write_arrays


def test_memmap_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    y = np.arange(10)
    write_arrays(tmp_path, {"x": x, "y": y})
    dataset = MemmapDataset(tmp_path)
    assert len(dataset) == 10
    row = dataset[3]
    assert torch.equal(row["x"], torch.from_numpy(x[3])) and int(row["y"]) == 3
    assert isinstance(dataset.arrays["x"], np.memmap)


def test_mismatched_lengths_refused(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        write_arrays(tmp_path, {"x": np.zeros(3), "y": np.zeros(4)})


def test_dataset_files_skip_hidden_match_any_case_and_follow_linked_folders(tmp_path):
    from core.data import dataset_files

    shared = tmp_path / "storage" / "loads_1_3"  # a held-out part delivered as a link into shared storage
    shared.mkdir(parents=True)
    (shared / "1772_IR_7_DE12.NPZ").write_bytes(b"x")
    root = tmp_path / "cwru"
    (root / ".Trashes").mkdir(parents=True)
    (root / ".Trashes" / "old.npz").write_bytes(b"x")
    (root / "1797_B_7_DE12.npz").write_bytes(b"x")
    (root / "._1797_B_7_DE12.npz").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    (root / "notes.npz.bak").write_bytes(b"x")
    (root / "other_loads").symlink_to(shared, target_is_directory=True)
    (shared / "back").symlink_to(root, target_is_directory=True)  # a cycle is walked once
    found = dataset_files(root, ".npz")
    assert [p.name for p in found] == ["1797_B_7_DE12.npz", "1772_IR_7_DE12.NPZ"]
