"""Shared test set-up: one torch thread, offline environment, real-data fixtures that skip cleanly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.offline import enforce_offline

SHARED_DATA = Path(os.environ.get("TRIPTYCH_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    enforce_offline()
    import torch

    torch.set_num_threads(1)  # 2 threads under contention can be 10x slower than 1 (stack.md)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA.resolve()} (set TRIPTYCH_SHARED_DATA)")
    return SHARED_DATA.resolve()


def require_dataset(shared: Path, name: str) -> Path:
    path = shared / name
    if not path.is_dir():
        pytest.skip(f"dataset {name!r} not found under {shared}")
    return path


def plain_text(output: str) -> str:
    """A command's output with typer's error box taken apart (its borders dropped, wrapped lines joined):
    one line, words single-spaced, for asserting on a message wherever the box broke it."""
    for border in "│╭╮╰╯─":
        output = output.replace(border, " ")
    return " ".join(output.split())
