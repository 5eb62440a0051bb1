"""The `triptych` command: serve, train, eval, bench, data.

Core owns the command tree; each installed app (see ``core.plugins``) adds its own ``train``,
``eval`` and ``bench`` commands and a ``data`` group. App CLI modules import heavy libraries
inside their commands, so ``triptych --help`` stays quick.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from core.cli_checks import number_list, refuse_inapplicable
from core.offline import enforce_offline
from core.plugins import discover_plugins

app = typer.Typer(
    name="triptych",
    help="Three AI products on one multimodal engine: contact centre, radiology, factory QC.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train an app's models on the real datasets.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate an app's shipped models; every eval takes --json OUT.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: serving throughput/latency and app-specific timings.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare or render datasets.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")


@app.command()
def serve(
    app_name: Annotated[str | None, typer.Option("--app", help="Serve one app alone (e.g. industrial).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind (1-65535).")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the three apps behind one gateway (or one app with --app)."""
    from core.serving.gateway import run_gateway

    try:
        run_gateway(app_name=app_name, host=host, port=port, log_level=log_level)
    except KeyError as exc:  # unknown --app name: the message lists the installed apps
        raise typer.BadParameter(str(exc.args[0]), param_hint="--app") from None


@bench_app.command("serve")
def bench_serve(
    url: Annotated[str | None, typer.Option(help="Benchmark a running server at this loopback URL instead of the toy model.")] = None,
    concurrency: Annotated[str, typer.Option(callback=number_list(int, 1, 1024), help="Comma-separated client concurrencies (1-1024).")] = "1,8,32,64",
    requests: Annotated[int, typer.Option(min=1, max=100_000, help="Requests per concurrency level (bounded).")] = 400,
    duration_s: Annotated[float, typer.Option("--duration", min=0.001, max=600.0, help="Upper bound in seconds per level (at most 600).")] = 20.0,
    json_out: Annotated[str | None, typer.Option("--json", help="Write results as JSON here.")] = None,
    body: Annotated[str | None, typer.Option(help="With --url only: a JSON file to POST (default: GET).")] = None,
    metrics_url: Annotated[str | None, typer.Option(help="With --url only: the app's /metrics (for mean batch size).")] = None,
) -> None:
    """Throughput, p50/p95 latency and mean batch size, with and without dynamic batching."""
    from core.reporting import check_json_destination
    from core.serving.bench import run_bench

    refuse_inapplicable("--url" if url else "the built-in toy model", {"--body": body is not None,
                        "--metrics-url": metrics_url is not None}, {"--body": ("--url",), "--metrics-url": ("--url",)})
    check_json_destination(json_out)  # before the servers start
    try:
        run_bench(url=url, concurrency=concurrency, requests=requests, duration_s=duration_s, json_out=json_out,
                  body=body, metrics_url=metrics_url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


_attached = False


def _attach_plugins() -> None:
    global _attached
    if _attached:
        return
    _attached = True
    for plugin in discover_plugins():
        try:
            module = plugin.load_cli()
        except ModuleNotFoundError as exc:  # an app whose CLI is not written yet
            if exc.name and exc.name.startswith("apps."):
                continue
            raise
        if module is None:
            continue
        for group, attribute in ((train_app, "train"), (eval_app, "evaluate"), (bench_app, "bench")):
            command = getattr(module, attribute, None)
            if command is not None:
                group.command(plugin.name, help=(command.__doc__ or plugin.summary))(command)
        data_group = getattr(module, "data", None)
        if data_group is not None:
            data_app.add_typer(data_group, name=plugin.name, help=f"Data commands for {plugin.name}.")


def _registered_names(group: typer.Typer) -> list[str]:
    return [command.name for command in group.registered_commands if command.name]


# Errors that mean "the input you gave is wrong": exit 2, as typer's own usage errors do. Apps raise
# these (their own input errors subclass ValueError); anything else is a bug or an environment failure.
# ConnectionError: a --url that nothing answers at.
INPUT_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                                 PermissionError, ConnectionError, ValueError, KeyError)
DEBUG_ENV = "TRIPTYCH_DEBUG"


def _input_errors() -> tuple[type[BaseException], ...]:
    from core.bundle import BundleError  # a bundle folder given on the command line that is not one

    return (*INPUT_ERRORS, BundleError)


def error_line(exc: BaseException, with_type: bool = False) -> str:
    """``error: <message>``; the exception's type is added when asked or when the message alone would not
    say what happened (an empty one, or a single token such as KeyError's missing key)."""
    message = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    if with_type or len(message.split()) <= 1:
        message = f"{type(exc).__name__}: {message}" if message.strip() else type(exc).__name__
    return f"error: {message}"


def run_cli(command: typer.Typer, args: list[str] | None = None) -> None:
    """Run ``command``; an exception that escapes it becomes one line on stderr instead of a traceback:
    exit 2 for input errors, 1 (with a pointer to TRIPTYCH_DEBUG=1) for anything else.

    typer/click's own exits (usage errors, --help, Ctrl-C) are SystemExit and pass through untouched."""
    try:
        command(args=args)
    except Exception as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        if isinstance(exc, _input_errors()):
            print(error_line(exc), file=sys.stderr)
            sys.exit(2)
        print(f"{error_line(exc, with_type=True)} (run with {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    enforce_offline()
    _attach_plugins()
    run_cli(app)


if __name__ == "__main__":
    main()
