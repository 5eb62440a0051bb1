"""`triptych train|eval|bench medical` on generated data (typer's runner, no subprocess)."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from apps.medical import cli


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(cli.train)
    app.command("bench")(cli.bench)
    return app


def test_train_tiny_preset_runs_with_the_bundled_bert(toy_studies, tmp_path):
    """The smoke-test preset with no --bert-path: the model takes the bundled MiniLM's width (384), not
    the tests' 16-wide BERT the preset names."""
    out = tmp_path / "tiny"
    r = CliRunner().invoke(_app(), ["train", "--ct", str(toy_studies), "--preset", "tiny", "--epochs", "1",
                                    "--device", "cpu", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["model"]["bert_hidden"] == 384


def test_train_refuses_a_device_before_reading_any_data(tmp_path, monkeypatch):
    from apps.medical import data

    monkeypatch.setattr(data, "load_rendered", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data read")))
    r = CliRunner().invoke(_app(), ["train", "--ct", str(tmp_path), "--device", "cuda:99"])
    assert r.exit_code == 2 and "--device" in r.output
