"""Model bundles: ``config.json`` + ``model.safetensors`` + ``MODEL_CARD.md`` (+ ``card.json``).

The card records data sources, split, metrics, date and the sha256 of the weights. Loading
verifies the hash before reading a byte of the tensors, so a truncated or swapped file is refused
with a clear error. Weights are safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD_JSON = "card.json"
CARD_MD = "MODEL_CARD.md"


class BundleError(RuntimeError):
    """A bundle is missing, incomplete or does not match its recorded hash."""


@dataclass
class ModelCard:
    name: str
    version: str
    task: str
    data: list[str] = field(default_factory=list)  # data sources, with licences
    split: str = ""  # how train / validation / test were separated
    metrics: dict[str, float] = field(default_factory=dict)
    reproduce: str = ""  # the exact command that trains / evaluates it
    limitations: list[str] = field(default_factory=list)
    notes: str = ""
    date: str = ""
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = [f"# Model card: {self.name} {self.version}", "", f"**Task.** {self.task}", ""]
        lines += ["## Data", *[f"- {item}" for item in self.data], "", "## Split", self.split, ""]
        lines += ["## Metrics", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in self.metrics.items()]
        if self.reproduce:
            lines += ["", "## Reproduce", "```", self.reproduce, "```"]
        if self.limitations:
            lines += ["", "## Limitations", *[f"- {item}" for item in self.limitations]]
        if self.notes:
            lines += ["", "## Notes", self.notes]
        lines += ["", "## Integrity", f"- date: {self.date}", f"- sha256 of {WEIGHTS}: `{self.sha256}`"]
        # Other files shipped in the bundle (e.g. an INT8 export) record {"file", "sha256"} in ``extra``;
        # listing them here keeps them whenever any command rewrites the card.
        lines += [f"- sha256 of {v['file']}: `{v['sha256']}`" for v in self.extra.values()
                  if isinstance(v, dict) and {"file", "sha256"} <= v.keys()]
        return "\n".join(lines + [""])


@dataclass
class Bundle:
    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    card: ModelCard

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def sha256(self) -> str:
        return self.card.sha256


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(
    directory: str | Path,
    model_or_state: nn.Module | dict[str, torch.Tensor],
    config: dict[str, Any],
    card: ModelCard,
) -> Bundle:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    # safetensors refuses shared or non-contiguous storage; clone to be safe.
    state = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    # No safetensors metadata: it is written in hash-map order, so the same tensors would get a new
    # sha256 on every save. Name and version live in card.json.
    save_file(state, str(directory / WEIGHTS))
    card.sha256 = sha256_file(directory / WEIGHTS)
    card.date = card.date or _dt.date.today().isoformat()
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (directory / CARD_JSON).write_text(json.dumps(card.__dict__, indent=2) + "\n")
    (directory / CARD_MD).write_text(card.to_markdown())
    return Bundle(directory, config, state, card)


def require_bundle_files(directory: str | Path, files: tuple[str, ...] = (WEIGHTS, CONFIG, CARD_JSON),
                         what: str = "bundle") -> Path:
    """``directory`` must be an existing folder holding ``files``; ``what`` names it in the message
    (e.g. ``--detector``)."""
    directory = Path(directory)
    if not directory.exists():
        raise BundleError(f"{what} {directory} does not exist (expected a bundle folder: {', '.join(files)})")
    if not directory.is_dir():
        raise BundleError(f"{what} {directory} is a file, not a bundle folder ({', '.join(files)})")
    for required in files:
        if not (directory / required).is_file():
            raise BundleError(f"{what} {directory} is incomplete: {required} is missing")
    return directory


def load_bundle(directory: str | Path, map_location: str = "cpu") -> Bundle:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = require_bundle_files(directory)
    card = ModelCard(**json.loads((directory / CARD_JSON).read_text()))
    actual = sha256_file(directory / WEIGHTS)
    if not card.sha256:
        raise BundleError(f"bundle {directory}: card.json records no sha256; refusing unverified weights")
    if actual != card.sha256:
        raise BundleError(
            f"bundle {directory}: {WEIGHTS} has sha256 {actual[:12]}… but its card records {card.sha256[:12]}…; "
            "the file is corrupt, truncated or was replaced"
        )
    try:
        state = load_file(str(directory / WEIGHTS), device=map_location)
    except SafetensorError as exc:  # pragma: no cover - hash check catches this first
        raise BundleError(f"bundle {directory}: unreadable weights: {exc}") from exc
    config = json.loads((directory / CONFIG).read_text())
    return Bundle(directory, config, state, card)


def import_weights_cli(argv: list[str] | None, prog: str, what: str,
                       importer: Callable[[Path, Path], Path], default_out: Path) -> None:
    """``python -m <module> import --source PATH [--out DIR]``: the one-time import of third-party
    pretrained weights (``importer(source, out)``) into a bundle shipped in the package."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help=what)
    imp.add_argument("--source", type=Path, required=True)
    imp.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    print(f"wrote {importer(args.source, args.out)}")


def copy_licences(pattern_root: Path, pattern: str, out: Path) -> None:
    """Licence files of the distribution the weights came from (``pattern_root.glob(pattern)``) as
    ``out/LICENSE.txt``: Apache-2.0 and similar licences ask for their text beside redistributed work."""
    for path in pattern_root.glob(pattern):
        (out / "LICENSE.txt").write_text(path.read_text())
