import json

from core.reporting import print_metrics, write_json, write_metrics_json


def test_flat_json_keeps_numbers_only(tmp_path, capsys):
    metrics = {"accuracy": 0.5, "n": 3, "ok": True, "confusion": [[1]], "name": "x"}
    flat = write_metrics_json(tmp_path / "sub" / "out.json", metrics)
    assert flat == {"accuracy": 0.5, "n": 3.0}
    assert json.loads((tmp_path / "sub" / "out.json").read_text()) == flat
    print_metrics("demo", flat)
    assert "accuracy" in capsys.readouterr().out
    assert write_metrics_json(None, metrics) == flat


def test_write_json_nulls_undefined_numbers_at_any_depth(tmp_path):
    out = tmp_path / "sub" / "report.json"
    write_json(out, {"target": "x", "results": [{"p50_ms": float("nan"), "p95_ms": None, "rps": 1.5}],
                     "ratio": {"1": float("inf")}})
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"target": "x", "results": [{"p50_ms": None, "p95_ms": None, "rps": 1.5}],
                                "ratio": {"1": None}}
