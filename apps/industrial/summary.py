"""A period's stored inspections in numbers, as a quality engineer reads a shift: how many boards passed,
failed or went to review, which defect classes account for the failures (a Pareto), and what state the
machine was in; and the same period as CSV rows, one per inspection, for the engineer's own SPC tools.
Pure functions over the few payload fields the store hands back (``FIELDS``, ``EXPORT_FIELDS``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from apps.industrial.data import DEFECT_CLASSES

DECISIONS = ("pass", "fail", "review")
# what a summary reads of each stored inspection (name -> payload key or path), not the whole payload
FIELDS = {"decision": "decision", "defects": "defects", "machine": ("machine_state", "label"),
          "detector_input": "detector_input"}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``rows``: ``FIELDS`` of each inspection. Defects the board's template refuted are counted apart:
    they neither failed a board nor belong in its Pareto."""
    decisions = Counter({d: 0 for d in DECISIONS})
    defects, boards_with, refuted = Counter(), Counter(), 0
    machine = Counter()
    imaged = 0
    for row in rows:
        decisions[row["decision"]] += 1
        if row.get("machine"):
            machine[row["machine"]] += 1
        if row.get("detector_input") is None:  # vibration only: no board was looked at
            continue
        imaged += 1
        kept = [d for d in row.get("defects") or [] if not d.get("refuted_by_template")]
        refuted += len(row.get("defects") or []) - len(kept)
        defects.update(d["class"] for d in kept)
        boards_with.update({d["class"] for d in kept})
    total = sum(decisions.values())
    pareto, running = [], 0
    for name, count in sorted(defects.items(), key=lambda item: (-item[1], item[0])):
        running += count
        pareto.append({"class": name, "defects": count, "boards": boards_with[name],
                       "cumulative_share": round(running / sum(defects.values()), 4)})
    return {
        "inspections": total,
        "boards_imaged": imaged,
        "decisions": dict(decisions),
        "pass_rate": round(decisions["pass"] / total, 4) if total else None,
        "defect_classes": pareto,
        "refuted_by_template": refuted,
        "machine_states": dict(machine.most_common()),
    }


# one CSV row per inspection: what a spreadsheet or an SPC tool pivots on (no image, no box)
EXPORT_FIELDS = {"board_id": "board_id", "board": "board",  # + the result's id and time (with_ids)
                 "decision": "decision", "defect_probability": "defect_probability", "defects": "defects",
                 "machine": ("machine_state", "label"), "detector_input": "detector_input",
                 "model_version": "model_version"}
EXPORT_COLUMNS = ("created_at", "id", "board_id", "batch_index", "decision", "defect_probability", "defects",
                  *(f"defects_{name}" for name in DEFECT_CLASSES), "refuted_by_template", "machine_state",
                  "detector_input", "model_version")


def export_rows(rows: list[dict[str, Any]]) -> Iterator[str]:
    """CSV text, a header line then one line per inspection (``EXPORT_FIELDS`` of each, oldest first).
    Defects the board's template refuted are counted in their own column, not in the classes'."""
    from core.serving import csv_lines

    def values(row: dict[str, Any]) -> list:
        found = row.get("defects") or []
        kept = Counter(d["class"] for d in found if not d.get("refuted_by_template"))
        probability = row.get("defect_probability")
        return [row["created_at"], row["id"], row.get("board_id") or "", "" if row.get("board") is None else row["board"],
                row["decision"], "" if probability is None else f"{probability:.4f}", sum(kept.values()),
                *(kept.get(name, 0) for name in DEFECT_CLASSES), len(found) - sum(kept.values()),
                row.get("machine") or "", row.get("detector_input") or "", row.get("model_version") or ""]

    return csv_lines(EXPORT_COLUMNS, map(values, rows))
