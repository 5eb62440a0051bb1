"""`triptych data medical render|check`: option values refused before anything is rendered or read."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from apps.medical.cli_data import data
from tests.conftest import plain_text


def _root() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(data, name="data")
    return root


def test_render_out_must_be_a_folder(tmp_path, monkeypatch):
    from apps.medical.render import dataset

    monkeypatch.setattr(dataset, "render_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rendered")))
    a_file = tmp_path / "afile.txt"
    a_file.write_text("x")
    r = CliRunner().invoke(_root(), ["data", "render", "--patients", "1:2", "--out", str(a_file), "--preset", "tiny"])
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: --out {a_file} is a file; --out must be a folder (it is created if missing)"


def test_render_and_check_option_ranges(tmp_path):
    for args, message in ((["render", "--patients", "1:2", "--out", str(tmp_path), "--dicom-share", "-0.5"],
                           "'--dicom-share': Input should be greater than or equal to 0"),
                          (["render", "--patients", "1:2", "--out", str(tmp_path), "--preset", "nosuch"],
                           "'nosuch' is not one of default, fine, pylidc, tiny"),
                          (["check", "--ct", str(tmp_path), "--limit", "-3"], "greater than or equal to 0")):
        r = CliRunner().invoke(_root(), ["data", *args])
        assert r.exit_code == 2 and message in plain_text(r.output), r.output
    assert not list(tmp_path.iterdir())
