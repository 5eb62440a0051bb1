"""A period's stored inspections in numbers, as a quality engineer reads a shift: how many boards passed,
failed or went to review, which defect classes account for the failures (a Pareto), and what state the
machine was in. Pure functions over the few payload fields the store hands back (``FIELDS``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

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
