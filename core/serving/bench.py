"""``triptych bench serve``: a bounded loopback load generator.

Without ``url`` it serves a toy model in-process (uvicorn on 127.0.0.1, a free port) twice, with
dynamic batching on (``max_batch=32``) and off (``max_batch=1``), and drives each with N concurrent
clients. The toy model is a real torch MLP whose weights (~134 MB) must be read from memory on every
call, so one call on 32 items costs far less than 32 calls on one item -- the same reason batching
pays off for the apps' real models. Mean batch size comes from the server's own /metrics.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import multiprocessing
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from core.serving.app import create_service_app, get_batcher
from core.serving.batching import DynamicBatcher
from core.serving.settings import AppSettings

TOY_IN, TOY_HIDDEN, TOY_OUT = 16, 4096, 16
MAX_REQUESTS, MAX_DURATION_S = 100_000, 600.0


@dataclass
class LevelResult:
    mode: str  # "batched" | "unbatched" | "url"
    concurrency: int
    requests: int  # completed with 2xx
    errors: int
    seconds: float
    throughput_rps: float
    p50_ms: float | None  # None: no request succeeded
    p95_ms: float | None
    mean_batch: float | None


class ToyMLPRunner:
    """A ModelRunner over a small MLP; input is a list of TOY_IN floats per item."""

    name = "toy"

    def __init__(self, hidden: int = TOY_HIDDEN, seed: int = 0) -> None:
        import torch
        from torch import nn

        torch.manual_seed(seed)
        self.model = nn.Sequential(
            nn.Linear(TOY_IN, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, TOY_OUT),
        ).eval()
        digest = hashlib.sha256()
        for tensor in self.model.state_dict().values():
            digest.update(tensor.numpy().tobytes())
        self.sha256 = digest.hexdigest()
        self.version = f"toy-mlp-{hidden}"

    def predict_batch(self, items: list[Any]) -> list[Any]:
        import torch

        out: list[Any] = [None] * len(items)
        good, rows = [], []
        for i, item in enumerate(items):
            if isinstance(item, list) and len(item) == TOY_IN and all(isinstance(v, (int, float)) for v in item):
                good.append(i)
                rows.append(item)
            else:
                out[i] = ValueError(f"x must be a list of {TOY_IN} numbers")
        if rows:
            with torch.inference_mode():
                probs = self.model(torch.tensor(rows, dtype=torch.float32)).softmax(-1)  # (B, TOY_OUT)
            top = probs.max(-1)
            for j, i in enumerate(good):
                out[i] = {"label": int(top.indices[j]), "score": float(top.values[j])}
        return out


class ToyItem(BaseModel):
    x: list[float]


toy_router = APIRouter()


@toy_router.post("/predict")
async def toy_predict(item: ToyItem, batcher: Annotated[DynamicBatcher, Depends(get_batcher("toy"))]) -> dict[str, Any]:
    return await batcher.submit(item.x)


def create_toy_app(max_batch: int, database_url: str, runner: ToyMLPRunner | None = None):
    settings = AppSettings(max_batch=max_batch, max_delay_ms=2.0, max_queue=4096, database_url=database_url)
    shared = runner or ToyMLPRunner()
    return create_service_app(name="bench", settings=settings, routers=[toy_router], load_runners=lambda: {"toy": shared})


class LoopbackServer:
    """uvicorn in a background thread on 127.0.0.1 and a port the OS picks."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose listening
        # socket has proto == IPPROTO_TCP; with proto 0, Nagle + delayed ACK add ~40 ms per response
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        # keep-alive well past any stall: with uvicorn's 5 s, a pooled connection the (starved) client
        # reuses just as the server closes it for idleness fails with a ReadError (seen under load)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", log_config=None,
                                timeout_keep_alive=120)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("loopback server did not become ready within 60 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def _check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"bench serve only targets loopback addresses (127.0.0.0/8, ::1, localhost), not {host!r}")


_METRIC = re.compile(r"^triptych_batch_size_(sum|count)\{[^}]*\}\s+([0-9.eE+-]+)$", re.MULTILINE)


def _batch_totals(metrics_text: str) -> tuple[float, float]:
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in _METRIC.findall(metrics_text):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def _read_batch_totals(client: Any, metrics_url: str | None) -> tuple[float, float] | None:
    if not metrics_url:
        return None
    try:
        response = client.get(metrics_url, timeout=30)
    except Exception:
        return None
    if response.status_code != 200 or "triptych_batch_size" not in response.text:
        return None
    return _batch_totals(response.text)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None  # undefined: no latency was measured (null in the JSON, never NaN)
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _drive(
    url: str, concurrency: int, total: int, duration_s: float, bodies: list[Any] | None, metrics_url: str | None,
    mode: str, pool: Any = None,
) -> LevelResult:
    import httpx

    from core.serving import loadgen

    before = _read_batch_totals(httpx, metrics_url)
    args = (url, concurrency, total, duration_s, bodies)
    # the client runs in its own process so it does not share the server's interpreter lock
    raw = pool.apply(loadgen.drive_in_process, (args,)) if pool is not None else loadgen.drive_in_process(args)
    after = _read_batch_totals(httpx, metrics_url)
    latencies, seconds = raw["latencies"], raw["seconds"]
    mean_batch = None
    if before is not None and after is not None and after[1] > before[1]:
        mean_batch = (after[0] - before[0]) / (after[1] - before[1])
    return LevelResult(
        mode=mode, concurrency=concurrency, requests=len(latencies), errors=raw["errors"], seconds=round(seconds, 3),
        throughput_rps=round(len(latencies) / seconds, 1) if seconds > 0 else 0.0,
        p50_ms=_ms(_percentile(latencies, 0.50)), p95_ms=_ms(_percentile(latencies, 0.95)),
        mean_batch=None if mean_batch is None else round(mean_batch, 2),
    )


def _toy_body(seed: int) -> dict[str, list[float]]:
    # cheap deterministic varied inputs, so no two requests are byte-identical
    return {"x": [((seed * 2654435761 + k * 40503) % 1000) / 500.0 - 1.0 for k in range(TOY_IN)]}


MAX_CONCURRENCY = 1024


def _parse_levels(concurrency: str | list[int]) -> list[int]:
    from core.cli_checks import parse_numbers

    text = concurrency if isinstance(concurrency, str) else ",".join(str(int(c)) for c in concurrency)
    try:
        return parse_numbers(text, int, 1, MAX_CONCURRENCY)
    except ValueError as exc:
        raise ValueError(f"--concurrency: {exc}") from None


def _read_body(body: str) -> Any:
    """The --body file: one JSON document, POSTed as it is."""
    from core.cli_checks import require_file

    path = require_file(body, "--body", "a JSON file to POST")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--body {body} is not a JSON document ({exc})") from None


def _check_reached(url: str, results: list[LevelResult]) -> None:
    """With --url: no request answered 2xx means nothing was measured; say why instead of a table of nulls."""
    if any(r.requests for r in results):
        return
    import httpx

    try:
        status = httpx.get(url, timeout=5).status_code
    except httpx.HTTPError as exc:
        raise ConnectionError(f"cannot reach {url} ({type(exc).__name__}: {exc or 'no answer'}); "
                              "is the server running there?") from None
    raise ConnectionError(f"no request to {url} succeeded ({sum(r.errors for r in results)} errors; a GET there "
                          f"answers HTTP {status}): check the path and --body")


def _default_metrics_url(url: str) -> str:
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    path = f"/{segments[0]}/metrics" if len(segments) > 1 else "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def run_bench(
    url: str | None = None,
    concurrency: str | list[int] = "1,8,32,64",
    requests: int = 400,
    duration_s: float = 20.0,
    json_out: str | None = None,
    body: str | None = None,
    metrics_url: str | None = None,
    hidden: int = TOY_HIDDEN,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the benchmark, print a table, optionally write JSON; returns the same dict."""
    import tempfile

    import torch

    from core.reporting import check_json_destination, write_json

    levels = _parse_levels(concurrency)
    if requests < 1 or requests > MAX_REQUESTS or duration_s <= 0 or duration_s > MAX_DURATION_S:
        raise ValueError(f"requests must be 1..{MAX_REQUESTS} and duration 0..{MAX_DURATION_S:g} s")
    if url is None and (body or metrics_url):
        raise ValueError("--body and --metrics-url apply with --url only (the built-in toy model has its own)")
    if url is not None:
        _check_loopback(url)
    check_json_destination(json_out)
    bodies = [_read_body(body)] if url is not None and body else None
    torch.set_num_threads(1)  # a shared 2-core machine: one model thread is the honest setting
    results: list[LevelResult] = []
    context = multiprocessing.get_context("spawn")  # fork would copy the server's threads and locks
    with context.Pool(1) as pool:
        if url is not None:
            murl = metrics_url or _default_metrics_url(url)
            _check_loopback(murl)
            for level in levels:
                results.append(_drive(url, level, requests, duration_s, bodies, murl, "url", pool))
            _check_reached(url, results)
        else:
            runner = ToyMLPRunner(hidden=hidden)
            bodies = [_toy_body(seed) for seed in range(256)]
            with tempfile.TemporaryDirectory(prefix="triptych-bench-") as tmp:
                for mode, max_batch in (("batched", 32), ("unbatched", 1)):
                    app = create_toy_app(max_batch, f"sqlite:///{tmp}/{mode}.db", runner)
                    with LoopbackServer(app) as server:
                        for level in levels:
                            results.append(
                                _drive(server.url + "/predict", level, requests, duration_s, bodies,
                                       server.url + "/metrics", mode, pool)
                            )
    ratios: dict[str, float] = {}
    for level in levels:
        on = next((r for r in results if r.mode == "batched" and r.concurrency == level), None)
        off = next((r for r in results if r.mode == "unbatched" and r.concurrency == level), None)
        if on and off and off.throughput_rps > 0:
            ratios[str(level)] = round(on.throughput_rps / off.throughput_rps, 2)
    report = {
        "target": url or "toy-mlp (in-process loopback)",
        "toy_model": None if url else {"layers": [TOY_IN, hidden, hidden, hidden, TOY_OUT], "torch_threads": 1},
        "requests_per_level": requests,
        "duration_bound_s": duration_s,
        "results": [asdict(r) for r in results],
        "throughput_ratio_batched_over_unbatched": ratios,
    }
    if not quiet:
        _print(report)
    if json_out:
        write_json(json_out, report)
    return report


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"triptych bench serve: {report['target']}")
    for column in ("mode", "concurrency", "ok", "errors", "req/s", "p50 ms", "p95 ms", "mean batch"):
        table.add_column(column, justify="right")
    for r in report["results"]:
        table.add_row(
            r["mode"], str(r["concurrency"]), str(r["requests"]), str(r["errors"]), f"{r['throughput_rps']:.1f}",
            *("-" if r[key] is None else f"{r[key]:.1f}" for key in ("p50_ms", "p95_ms")),
            "-" if r["mean_batch"] is None else f"{r['mean_batch']:.2f}",
        )
    console = Console()
    console.print(table)
    ratios = report["throughput_ratio_batched_over_unbatched"]
    if ratios:
        console.print("throughput batched / unbatched: " + ", ".join(f"c={k}: {v:.2f}x" for k, v in ratios.items()))
