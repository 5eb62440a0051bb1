"""Option checks shared by every ``triptych`` command, so a wrong value is refused with one clear line
before anything is loaded, instead of being ignored or failing deep inside a run.

Two kinds of helper: plain checks that raise ``ValueError`` or an ``OSError`` naming the option (callable
from any code; ``triptych`` prints them as one ``error:`` line, exit 2), and typer callbacks built on them
(``typer.Option(callback=...)``), which turn the error into typer's usage error for that option (exit 2). Imports only typer and the standard library; torch is
imported inside :func:`check_device` alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import typer


def _as_usage_error(check: Callable[[Any], Any]) -> Callable[..., Any]:
    """A typer callback running ``check(value)`` (skipped for None); a ValueError becomes the option's usage error."""

    def callback(ctx, param, value):  # untyped on purpose: typer passes (context, parameter, value) by position
        if value is None or ctx.resilient_parsing:
            return value
        try:
            return check(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return callback


# -- choices ---------------------------------------------------------------------------------------


def check_choice(value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return value


def one_of(*choices: str) -> Callable[..., Any]:
    """Callback: the value must be one of ``choices`` (None, an omitted optional, passes)."""
    return _as_usage_error(lambda value: check_choice(value, choices))


# -- comma-separated numbers -------------------------------------------------------------------------


def parse_numbers(text: str, kind: type = int, low: float | None = None, high: float | None = None) -> list:
    """``"1,8,32"`` -> ``[1, 8, 32]``; every item a ``kind`` (int or float) within ``low``..``high``."""
    noun = "whole numbers" if kind is int else "numbers"
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError(f"expected comma-separated {noun}, e.g. {'1,8,32' if kind is int else '0,0.5,1'}")
    values = []
    for item in items:
        try:
            value = kind(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a {noun[:-1]}; give comma-separated {noun}, "
                             f"e.g. {'1,8,32' if kind is int else '0,0.5,1'}") from None
        if value != value:  # NaN
            raise ValueError(f"{item!r} is not a {noun[:-1]}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low:g} and {high:g}" if low is not None and high is not None else (
                f"at least {low:g}" if low is not None else f"at most {high:g}")
            raise ValueError(f"{item} is out of range: each value must be {bounds}")
        values.append(value)
    return values


def number_list(kind: type = int, low: float | None = None, high: float | None = None) -> Callable[..., Any]:
    """Callback: a comma-separated list of numbers; the command still receives the text."""

    def check(value: str) -> str:
        parse_numbers(value, kind, low, high)
        return value

    return _as_usage_error(check)


# -- devices ---------------------------------------------------------------------------------------

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device(device: str, allow_auto: bool = True) -> str:
    """A torch device this machine has: cpu, cuda, cuda:N or mps (and ``auto`` when allowed)."""
    if allow_auto and device == "auto":
        return device
    if not _DEVICE.match(device):
        raise ValueError(f"{device!r} is not a device: use {'auto, ' if allow_auto else ''}cpu, cuda, cuda:N or mps")
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{device}: CUDA is not available on this machine (use cpu"
                             f"{' or auto' if allow_auto else ''})")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"{device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("mps: Apple's MPS backend is not available on this machine (use cpu)")
    return device


def device_option(allow_auto: bool = True) -> Callable[..., Any]:
    """Callback: see :func:`check_device`."""
    return _as_usage_error(lambda value: check_device(value, allow_auto))


# -- options that only apply to some modes -----------------------------------------------------------


def refuse_inapplicable(mode: str, used: dict[str, bool], applies_to: dict[str, Iterable[str]]) -> None:
    """Refuse options given for a mode they do not apply to (they would be silently ignored).

    ``mode``: what the command is doing (e.g. ``--intent``); ``used``: option -> whether it was given;
    ``applies_to``: option -> the modes it applies to."""
    wrong = [option for option, given in used.items() if given and mode not in tuple(applies_to[option])]
    if wrong:
        rules = "; ".join(f"{option} applies to {' and '.join(applies_to[option])} only" for option in wrong)
        raise typer.BadParameter(f"{rules}, not to {mode}")


# -- files and folders -----------------------------------------------------------------------------


def require_file(path: str | Path, option: str, expected: str) -> Path:
    """``path`` must be an existing file; ``expected`` says what it should be (e.g. "a BANKING77 CSV")."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder, not a file; expected {expected}")
    if not path.exists():
        raise FileNotFoundError(f"{option} {path} does not exist; expected {expected}")
    return path


def check_out_folder(path: str | Path, option: str = "--out") -> Path:
    """An output folder: it may exist (as a folder) or not yet; an existing file there is refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file; {option} must be a folder (it is created if missing)")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise NotADirectoryError(f"{option} {path}: {blocking} is a file, not a folder")
    return path
