"""How every ``triptych eval`` / ``bench`` reports: a readable table and one flat JSON of numbers."""

from __future__ import annotations

import json
import math
import os
import sys
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


def undefined_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the metrics that came out NaN or infinite (e.g. an AUC over one class only)."""
    return [key for key, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)]


def print_metrics(title: str, metrics: Mapping[str, Any]) -> None:
    """The table on stdout; one warning line on stderr names the metrics the data leaves undefined."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value))
    Console().print(table)
    undefined = undefined_metrics(metrics)
    if undefined:
        print(f"warning: undefined on this data (NaN; null in --json): {', '.join(undefined)}", file=sys.stderr)


def check_json_destination(path: str | Path | None) -> None:
    """Refuse a ``--json`` path that could not be written, before an evaluation or benchmark spends its time.

    The nearest existing folder above the file must be a folder where a file can really be created
    (missing ones are created when the file is written), and the path itself must not be a folder. The
    check creates and removes a file (the target itself when it is new): permission bits alone do not
    tell (root passes them everywhere, yet cannot create files in /proc)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--json {path} is a folder; give a file name such as {path / 'metrics.json'}")
    if path.exists():
        try:
            with path.open("a"):  # appends nothing: the file is left as it is
                pass
        except OSError as exc:
            raise PermissionError(f"--json {path} is not writable ({exc.strerror or exc})") from None
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--json {path}: {parent} is a file, not a folder")
    probe = path if parent == path.parent else parent / f".triptych-write-check-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        raise PermissionError(f"--json {path}: cannot create a file in {parent} ({exc.strerror or exc})") from None
    probe.unlink(missing_ok=True)


def json_ready(value: Any) -> Any:
    """NaN and infinities as None, at any depth: JSON (RFC 8259) has no NaN, and strict parsers reject it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as strict JSON (undefined numbers as null), creating missing folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n")


def write_metrics_json(path: str | Path | None, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Write the flat numeric metrics to ``path`` (when given; undefined ones as null) and return them."""
    flat = flat_metrics(metrics)
    if path is not None:
        write_json(path, flat)
    return flat
