"""Memory-mapped arrays for datasets larger than RAM (the seed's memory-mapped multimodal access).

Prepared features are written once as ``.npy`` files (one per field) and read lazily with
``np.load(mmap_mode="r")``: DataLoader workers share the page cache instead of copying arrays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def dataset_files(root: str | Path, ending: str) -> list[Path]:
    """Every file under ``root`` whose name ends in ``ending`` in any case (``.NPZ``, ``.WAV`` written on another
    OS count), sorted. Hidden files and folders are skipped: macOS leaves ``._<name>`` AppleDouble files beside
    every file it copies, which carry the name but hold no data. Symlinked folders are followed (a dataset is
    often delivered as links into shared storage), each real folder once."""
    ending = ending.lower()
    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or two links to one folder
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder) / n for n in names if not n.startswith(".") and n.lower().endswith(ending)]
    return sorted(found)


def write_arrays(directory: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write equally long arrays as ``<field>.npy`` files under ``directory``."""
    directory = Path(directory)
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"all fields need the same length, got {lengths}")
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array))
    return directory


class MemmapDataset(Dataset):
    """Rows of several memory-mapped ``.npy`` fields, returned as a dict of tensors."""

    def __init__(self, directory: str | Path, fields: list[str] | None = None):
        directory = Path(directory)
        names = fields or sorted(path.stem for path in directory.glob("*.npy"))
        if not names:
            raise FileNotFoundError(f"no .npy fields in {directory}")
        self.arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in names}
        lengths = {len(array) for array in self.arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"fields in {directory} have different lengths")
        self.length = lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.array(array[index])) for name, array in self.arrays.items()}
