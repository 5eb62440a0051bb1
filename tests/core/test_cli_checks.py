"""The option checks every command shares: choices, number lists, devices, options for another mode, files."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from core.cli_checks import (
    check_device,
    check_out_folder,
    number_list,
    one_of,
    parse_numbers,
    refuse_inapplicable,
    require_file,
)
from tests.conftest import plain_text


def test_parse_numbers_reads_lists_and_names_the_bad_item():
    assert parse_numbers("1, 8,32") == [1, 8, 32]
    assert parse_numbers("0,0.25,1", float, 0, 1) == [0.0, 0.25, 1.0]
    with pytest.raises(ValueError, match=r"'a' is not a whole number; give comma-separated whole numbers, e.g. 1,8,32"):
        parse_numbers("a,b")
    with pytest.raises(ValueError, match="'x' is not a number"):
        parse_numbers("0.5,x", float)
    with pytest.raises(ValueError, match="each value must be between 0 and 1"):
        parse_numbers("0.5,2", float, 0, 1)
    with pytest.raises(ValueError, match="at least 1"):
        parse_numbers("0", int, 1)
    with pytest.raises(ValueError, match="'nan' is not a number"):
        parse_numbers("nan", float)
    with pytest.raises(ValueError, match="expected comma-separated"):
        parse_numbers("")


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def run(
        backend: Annotated[str, typer.Option(callback=one_of("onnx", "torch"))] = "onnx",
        precision: Annotated[str | None, typer.Option(callback=one_of("fp32", "int8"))] = None,
        levels: Annotated[str, typer.Option(callback=number_list(int, 1, 64))] = "1,8",
    ) -> None:
        typer.echo(f"{backend} {precision} {levels}")

    return app


def test_callbacks_refuse_at_parse_time_naming_the_option():
    runner = CliRunner()
    ok = runner.invoke(_app(), ["--backend", "torch", "--levels", "2,4"])
    assert ok.exit_code == 0 and ok.output.strip() == "torch None 2,4"  # the command still gets the text
    for args, message in ((["--backend", "foo"], "'foo' is not one of onnx, torch"),
                          (["--precision", "fp16"], "'fp16' is not one of fp32, int8"),
                          (["--levels", "a,b"], "'a' is not a whole number"),
                          (["--levels", "0"], "between 1 and 64")):
        bad = runner.invoke(_app(), args)
        assert bad.exit_code == 2 and args[0] in bad.output and message in plain_text(bad.output), bad.output


def test_check_device():
    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    with pytest.raises(ValueError, match="'tpu' is not a device: use auto, cpu, cuda, cuda:N or mps"):
        check_device("tpu")
    with pytest.raises(ValueError, match="not a device: use cpu"):
        check_device("auto", allow_auto=False)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available on this machine"):
            check_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_refuse_inapplicable_says_which_options_apply_where():
    applies = {"--limit": ("--asr",), "--telephone": ("--asr", "--emotion")}
    refuse_inapplicable("--asr", {"--limit": True, "--telephone": True}, applies)
    refuse_inapplicable("--intent", {"--limit": False, "--telephone": False}, applies)
    with pytest.raises(typer.BadParameter) as refused:
        refuse_inapplicable("--intent", {"--limit": True, "--telephone": True}, applies)
    assert str(refused.value) == ("--limit applies to --asr only; --telephone applies to --asr and --emotion only, "
                                  "not to --intent")


def test_require_file_and_check_out_folder(tmp_path):
    a_file = tmp_path / "a.csv"
    a_file.write_text("x")
    assert require_file(a_file, "--intent", "a CSV") == a_file
    with pytest.raises(IsADirectoryError, match="--intent .* is a folder, not a file; expected a CSV"):
        require_file(tmp_path, "--intent", "a CSV")
    with pytest.raises(FileNotFoundError, match="does not exist; expected a CSV"):
        require_file(tmp_path / "nope.csv", "--intent", "a CSV")
    assert check_out_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()
    with pytest.raises(NotADirectoryError, match="--out .* is a file; --out must be a folder"):
        check_out_folder(a_file)
    with pytest.raises(NotADirectoryError, match="a.csv is a file, not a folder"):
        check_out_folder(a_file / "sub")
