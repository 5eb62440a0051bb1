"""bench serve: bounded loopback runs with batching on and off; JSON report; loopback only."""

from __future__ import annotations

import json

import pytest

from core.serving.bench import LoopbackServer, ToyMLPRunner, _batch_totals, create_toy_app, run_bench


def test_toy_runner_isolates_bad_items():
    runner = ToyMLPRunner(hidden=32)
    out = runner.predict_batch([[0.0] * 16, "nope", [1.0] * 3, [0.5] * 16])
    assert isinstance(out[1], ValueError) and isinstance(out[2], ValueError)
    assert 0 <= out[0]["label"] < 16 and 0 < out[3]["score"] <= 1
    assert len(runner.sha256) == 64


def test_bench_toy_both_modes_and_json(tmp_path):
    out = tmp_path / "bench.json"
    report = run_bench(concurrency="1,16", requests=48, duration_s=20, json_out=str(out), hidden=1024, quiet=True)
    rows = {(r["mode"], r["concurrency"]): r for r in report["results"]}
    assert set(rows) == {("batched", 1), ("batched", 16), ("unbatched", 1), ("unbatched", 16)}
    for row in rows.values():
        assert row["errors"] == 0 and row["requests"] == 48
        assert row["p50_ms"] <= row["p95_ms"] and row["throughput_rps"] > 0
    assert rows[("unbatched", 16)]["mean_batch"] == 1.0  # max_batch=1 really turns batching off
    assert rows[("batched", 1)]["mean_batch"] == 1.0  # one client never has company
    assert rows[("batched", 16)]["mean_batch"] > 1.0  # sixteen clients share model calls
    assert set(report["throughput_ratio_batched_over_unbatched"]) == {"1", "16"}
    assert json.loads(out.read_text()) == report


def test_bench_url_mode_reads_batch_sizes_from_metrics(tmp_path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"x": [0.1] * 16}))
    with LoopbackServer(create_toy_app(8, f"sqlite:///{tmp_path / 'b.db'}", ToyMLPRunner(hidden=64))) as server:
        report = run_bench(url=server.url + "/predict", concurrency="4", requests=20, duration_s=20, body=str(body),
                           metrics_url=server.url + "/metrics", quiet=True)
    (row,) = report["results"]
    assert row["mode"] == "url" and row["requests"] == 20 and row["errors"] == 0
    assert row["mean_batch"] is not None and 1.0 <= row["mean_batch"] <= 8.0


def test_bench_refuses_non_loopback_and_unbounded():
    with pytest.raises(ValueError, match="loopback"):
        run_bench(url="http://example.com/predict", concurrency="1", requests=1, quiet=True)
    with pytest.raises(ValueError, match="loopback"):
        run_bench(url="http://10.0.0.1:8000/x", concurrency="1", requests=1, quiet=True)
    with pytest.raises(ValueError):
        run_bench(concurrency="0", requests=1, quiet=True)
    with pytest.raises(ValueError):
        run_bench(concurrency="1", requests=10**9, quiet=True)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bench_url_that_nothing_answers_is_an_error_not_a_table_of_nan(tmp_path):
    out = tmp_path / "bench.json"
    url = f"http://127.0.0.1:{_closed_port()}/predict"
    with pytest.raises(ConnectionError, match=f"cannot reach {url}"):
        run_bench(url=url, concurrency="1", requests=3, duration_s=5, json_out=str(out), quiet=True)
    assert not out.exists()


def test_bench_url_where_every_request_fails_says_so(tmp_path):
    with LoopbackServer(create_toy_app(8, f"sqlite:///{tmp_path / 'b.db'}", ToyMLPRunner(hidden=64))) as server:
        with pytest.raises(ConnectionError, match=r"no request to .*/nosuch succeeded \(3 errors; a GET there answers HTTP 404\)"):
            run_bench(url=server.url + "/nosuch", concurrency="1", requests=3, duration_s=5, quiet=True)


def test_a_level_without_one_success_has_no_latency():
    from core.serving.bench import _ms, _percentile

    assert _ms(_percentile([], 0.5)) is None and _ms(_percentile([0.0123], 0.95)) == 12.3


def test_bench_body_must_be_a_json_file(tmp_path):
    bad = tmp_path / "body.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="--body .* is not a JSON document"):
        run_bench(url="http://127.0.0.1:9/x", concurrency="1", requests=1, body=str(bad), quiet=True)
    with pytest.raises(IsADirectoryError, match="--body .* is a folder"):
        run_bench(url="http://127.0.0.1:9/x", concurrency="1", requests=1, body=str(tmp_path), quiet=True)


def test_batch_totals_parser():
    text = (
        'triptych_batch_size_sum{app="x",runner="a"} 12.0\n'
        'triptych_batch_size_count{app="x",runner="a"} 4.0\n'
        'triptych_batch_size_sum{app="x",runner="b"} 3.0\n'
        'triptych_batch_size_count{app="x",runner="b"} 3.0\n'
        'triptych_batch_size_bucket{app="x",le="1.0",runner="a"} 1.0\n'
    )
    assert _batch_totals(text) == (15.0, 7.0)


def test_cli_bench_serve_refuses_remote_targets():
    from typer.testing import CliRunner

    from core.cli import app

    result = CliRunner().invoke(app, ["bench", "serve", "--url", "http://example.com/x", "--requests", "1"])
    assert result.exit_code == 2 and "loopback" in result.output
