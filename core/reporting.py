"""How every ``triptych eval`` / ``bench`` reports: a readable table and one flat JSON of numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries (booleans and non-numbers dropped) as floats."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def print_metrics(title: str, metrics: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value))
    Console().print(table)


def write_metrics_json(path: str | Path | None, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Write the flat numeric metrics to ``path`` (when given) and return them."""
    flat = flat_metrics(metrics)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(flat, indent=2) + "\n")
    return flat
