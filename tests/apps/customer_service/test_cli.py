"""`triptych train|eval|bench customer-service`: options refused with the rule they break, before any model loads."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from apps.customer_service import cli
from tests.conftest import plain_text


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(cli.train)
    app.command("eval")(cli.evaluate)
    app.command("bench")(cli.bench)
    return app


@pytest.fixture
def no_model(monkeypatch):
    from apps.customer_service import model

    monkeypatch.setattr(model, "load_text_classifier", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.mark.parametrize(("extra", "message"), [
    (["--limit", "5"], "--limit applies to --asr only, not to --intent"),
    (["--telephone"], "--telephone applies to --asr and --emotion only, not to --intent"),
    (["--workers", "2", "--backend", "whisper"], "--workers applies to --asr only; --backend applies to --asr only, not to --intent"),
])
def test_eval_refuses_options_of_another_eval(tmp_path, no_model, extra, message):
    csv = tmp_path / "b77.csv"
    csv.write_text("text,category\nwhere is my card,card_arrival\n")
    r = CliRunner().invoke(_app(), ["eval", "--intent", str(csv), *extra])
    assert r.exit_code == 2 and message in plain_text(r.output), r.output


def test_eval_no_vad_applies_to_the_recognisers_that_use_it(tmp_path, no_model):
    csv = tmp_path / "b77.csv"
    csv.write_text("text,category\nwhere is my card,card_arrival\n")
    r = CliRunner().invoke(_app(), ["eval", "--intent", str(csv), "--no-vad"])
    assert r.exit_code == 2 and "--no-vad applies to --asr only, not to --intent" in plain_text(r.output), r.output
    r = CliRunner().invoke(_app(), ["eval", "--asr", str(tmp_path), "--no-vad"])
    assert r.exit_code == 2, r.output
    assert "--no-vad: the pocketsphinx backend decodes without voice activity detection" in plain_text(r.output)


def test_eval_limit_must_be_positive(tmp_path):
    for value in ("0", "-1"):
        r = CliRunner().invoke(_app(), ["eval", "--asr", str(tmp_path), "--limit", value])
        assert r.exit_code == 2 and "'--limit': Input should be greater than or equal to 1" in plain_text(r.output)


@pytest.mark.parametrize(("option", "expected"), [("--intent", "a BANKING77 CSV"), ("--text-emotion", "a GoEmotions Ekman TSV")])
def test_eval_file_options_given_a_folder(tmp_path, no_model, option, expected):
    r = CliRunner().invoke(_app(), ["eval", option, str(tmp_path)])
    assert isinstance(r.exception, IsADirectoryError)
    assert str(r.exception).startswith(f"{option} {tmp_path} is a folder, not a file; expected {expected}")


def test_bench_checks_its_values_and_audio_files_before_starting(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_setup", lambda: pytest.fail("the benchmark started"))
    for args, message in ((["--repeats", "0"], "'--repeats': Input should be greater than or equal to 1"),
                          (["--chunk-ms", "0"], "'--chunk-ms': Input should be greater than or equal to 1")):
        r = CliRunner().invoke(_app(), ["bench", *args])
        assert r.exit_code == 2 and message in plain_text(r.output)
    r = CliRunner().invoke(_app(), ["bench", "--audio", str(tmp_path)])
    assert isinstance(r.exception, IsADirectoryError) and "--audio" in str(r.exception)
    r = CliRunner().invoke(_app(), ["bench", "--audio", str(tmp_path / "nope.wav")])
    assert isinstance(r.exception, FileNotFoundError) and "nope.wav does not exist" in str(r.exception)


def test_train_workers_help_says_what_zero_means():
    r = CliRunner().invoke(_app(), ["train", "--help"])
    assert "0 = the CPU count, at most 6" in plain_text(r.output)
