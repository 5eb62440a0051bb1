import json

from core.reporting import print_metrics, write_metrics_json


def test_flat_json_keeps_numbers_only(tmp_path, capsys):
    metrics = {"accuracy": 0.5, "n": 3, "ok": True, "confusion": [[1]], "name": "x"}
    flat = write_metrics_json(tmp_path / "sub" / "out.json", metrics)
    assert flat == {"accuracy": 0.5, "n": 3.0}
    assert json.loads((tmp_path / "sub" / "out.json").read_text()) == flat
    print_metrics("demo", flat)
    assert "accuracy" in capsys.readouterr().out
    assert write_metrics_json(None, metrics) == flat
