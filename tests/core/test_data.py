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
