"""How an app plugs into the suite: one small descriptor per app, found through entry points.

Core knows nothing about any app. Each app declares, in ``pyproject.toml``::

    [project.entry-points."triptych.apps"]
    industrial = "apps.industrial.plugin:PLUGIN"

and its plugin module must stay cheap to import (no torch, no models): the CLI reads it to build
``triptych --help``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "triptych.apps"


@dataclass(frozen=True)
class AppPlugin:
    name: str  # CLI name, e.g. "customer-service"
    mount: str  # URL prefix under the gateway, e.g. "/customer-service"
    summary: str  # one line for --help
    create_app: str  # "module:function" returning a FastAPI app; called with no arguments
    cli: str | None = None  # module with optional `train`, `evaluate`, `bench` commands and a `data` Typer
    encoders: str | None = None  # module whose import registers the app's encoders

    def load_create_app(self) -> Callable[..., Any]:
        return _resolve(self.create_app)

    def load_cli(self):
        return importlib.import_module(self.cli) if self.cli else None

    def load_encoders(self) -> None:
        if self.encoders:
            importlib.import_module(self.encoders)


def _resolve(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def discover_plugins() -> list[AppPlugin]:
    """All installed app plugins, sorted by name."""
    plugins = [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return sorted(plugins, key=lambda plugin: plugin.name)


def get_plugin(name: str) -> AppPlugin:
    for plugin in discover_plugins():
        if plugin.name == name:
            return plugin
    known = ", ".join(p.name for p in discover_plugins()) or "none installed"
    raise KeyError(f"unknown app {name!r}; installed apps: {known}")
