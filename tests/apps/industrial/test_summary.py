"""The period summary's arithmetic on hand-made stored fields."""

from __future__ import annotations

from apps.industrial.summary import summarise


def _row(decision, defects=(), machine=None, imaged=True):
    return {"decision": decision, "defects": list(defects), "machine": machine,
            "detector_input": "image" if imaged else None}


def test_counts_decisions_pareto_and_machine_states():
    rows = [
        _row("fail", [{"class": "open"}, {"class": "open"}, {"class": "short"}], machine="normal"),
        _row("fail", [{"class": "short"}, {"class": "spur", "refuted_by_template": True}]),
        _row("pass", [{"class": "spur", "refuted_by_template": True}], machine="inner_race"),
        _row("review", machine="inner_race", imaged=False),  # vibration only: no board looked at
    ]
    s = summarise(rows)
    assert s["inspections"] == 4 and s["boards_imaged"] == 3
    assert s["decisions"] == {"pass": 1, "fail": 2, "review": 1} and s["pass_rate"] == 0.25
    assert s["defect_classes"] == [  # most defects first; a refuted detection is in no bar
        {"class": "open", "defects": 2, "boards": 1, "cumulative_share": 0.5},
        {"class": "short", "defects": 2, "boards": 2, "cumulative_share": 1.0},
    ]
    assert s["refuted_by_template"] == 2
    assert s["machine_states"] == {"inner_race": 2, "normal": 1}
    assert list(s["machine_states"]) == ["inner_race", "normal"]


def test_an_empty_period_has_every_decision_at_zero_and_no_pass_rate():
    s = summarise([])
    assert s["decisions"] == {"pass": 0, "fail": 0, "review": 0} and s["pass_rate"] is None
    assert s["defect_classes"] == [] and s["machine_states"] == {} and s["inspections"] == 0


def test_export_rows_are_one_csv_line_per_inspection_with_class_columns():
    import csv
    import io

    from apps.industrial.summary import EXPORT_COLUMNS, export_rows

    rows = [
        {"created_at": "2026-11-30T06:00:00+00:00", "id": "a" * 32, "board_id": "SN-1", "board": None, "decision": "fail",
         "defect_probability": 0.91234, "defects": [{"class": "open"}, {"class": "open"}, {"class": "spur", "refuted_by_template": True}],
         "machine": "normal", "detector_input": "image+template", "model_version": "v1"},
        {"created_at": "2026-11-30T06:00:01+00:00", "id": "b" * 32, "board_id": None, "board": 3, "decision": "pass",
         "defect_probability": None, "defects": [], "machine": None, "detector_input": None, "model_version": "v1"},
    ]
    table = list(csv.reader(io.StringIO("".join(export_rows(rows)))))
    assert tuple(table[0]) == EXPORT_COLUMNS and len(table) == 3
    first = dict(zip(EXPORT_COLUMNS, table[1]))
    assert first["board_id"] == "SN-1" and first["batch_index"] == "" and first["defect_probability"] == "0.9123"
    assert (first["defects"], first["defects_open"], first["defects_spur"], first["refuted_by_template"]) == ("2", "2", "0", "1")
    second = dict(zip(EXPORT_COLUMNS, table[2]))
    assert second["batch_index"] == "3" and second["defect_probability"] == "" and second["machine_state"] == ""
