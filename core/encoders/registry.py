"""Registry of encoders keyed by (modality, name), in the spirit of timm's ``register_model``.

Each entry carries an ``example`` function returning ``(tiny_kwargs, example_batch)`` so a single
parametrised contract test can build and exercise every registered encoder, core's and the apps'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.encoders.base import Encoder

ExampleFn = Callable[[], tuple[dict[str, Any], Any]]


@dataclass(frozen=True)
class EncoderEntry:
    modality: str
    name: str
    builder: Callable[..., Encoder]
    example: ExampleFn | None


_REGISTRY: dict[tuple[str, str], EncoderEntry] = {}


def register_encoder(modality: str, name: str, example: ExampleFn | None = None):
    """Class or function decorator adding a builder to the registry."""

    def decorator(builder):
        key = (modality, name)
        existing = _REGISTRY.get(key)
        if existing is not None and existing.builder is not builder:
            qualname = getattr(builder, "__qualname__", builder)
            # Re-registration of the same qualified name happens on module reload; anything else is a clash.
            if getattr(existing.builder, "__qualname__", None) != qualname:
                raise ValueError(f"encoder {key} already registered by {existing.builder}")
        _REGISTRY[key] = EncoderEntry(modality, name, builder, example)
        return builder

    return decorator


def create_encoder(modality: str, name: str, **kwargs: Any) -> Encoder:
    try:
        entry = _REGISTRY[(modality, name)]
    except KeyError:
        raise KeyError(f"no encoder ({modality!r}, {name!r}); registered: {list_encoders()}") from None
    return entry.builder(**kwargs)


def list_encoders(modality: str | None = None) -> list[tuple[str, str]]:
    return sorted(key for key in _REGISTRY if modality is None or key[0] == modality)


def get_entry(modality: str, name: str) -> EncoderEntry:
    return _REGISTRY[(modality, name)]
