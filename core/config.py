"""Typed configs: plain dataclasses with named presets, serialisable to JSON next to the weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, get_type_hints

C = TypeVar("C", bound="ConfigBase")


@dataclasses.dataclass
class ConfigBase:
    """Mixin for config dataclasses: ``from_name`` presets, dict/JSON round trips, ``replace``."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Self:
        if name not in cls.PRESETS:
            raise KeyError(f"{cls.__name__} has no preset {name!r}; presets: {sorted(cls.PRESETS)}")
        return cls.from_dict({**cls.PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        hints = get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{cls.__name__} got unknown fields {sorted(unknown)}")
        kwargs = {}
        for key, value in data.items():
            field_type = hints.get(key)
            if isinstance(field_type, type) and issubclass(field_type, ConfigBase) and isinstance(value, dict):
                value = field_type.from_dict(value)
            kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> Self:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)
