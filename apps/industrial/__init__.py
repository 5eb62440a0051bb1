"""Factory QC: PCB defects + machine vibration -> pass/fail per board."""

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"  # the shipped bundles
SPLITS = Path(__file__).parent / "splits"  # the board-group lists, shipped with the package
