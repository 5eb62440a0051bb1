"""A period's stored calls in numbers, as a contact-centre lead reads a day: how many calls, how many
went to a supervisor and why, what callers wanted, how they felt, how much PII was redacted; and the
same period as CSV rows, one per call, for the quality team's spreadsheets (no transcript: the export
carries labels and counts only). Pure functions over the few payload fields the store hands back
(``FIELDS``, ``EXPORT_FIELDS``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from apps.customer_service.escalation import reason_kind
from apps.customer_service.pii import TYPES as PII_TYPES
from core.serving.jobs import job_status

# what a summary reads of each stored call (name -> payload key or path), not the whole payload
FIELDS = {"status": "status", "heartbeat": "heartbeat", "escalate": ("escalation", "escalate"),
          "reasons": ("escalation", "reasons"), "intent": ("intent", "label"), "emotion": ("emotion", "label"),
          "seconds": ("transcript", "duration_s"), "redactions": ("transcript", "redactions"),
          "requests": "requests", "source": "source"}
STATUSES = ("done", "running", "failed", "interrupted")
TOP_INTENTS = 10


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``rows``: ``FIELDS`` of each call. Escalations, intents, emotions and redactions are counted over
    the finished calls only (a running or failed job has none yet)."""
    statuses = Counter({s: 0 for s in STATUSES})
    reasons, intents, emotions, redactions = Counter(), Counter(), Counter(), Counter()
    escalated, seconds, live = 0, [], 0
    for row in rows:
        # a call analysed synchronously is stored once done; a background job keeps its status
        status = job_status({k: row[k] for k in ("status", "heartbeat") if row.get(k) is not None}) or "done"
        statuses[status] += 1
        if status != "done":
            continue
        if row.get("escalate"):
            escalated += 1
            reasons.update({reason_kind(r) for r in row.get("reasons") or []})
        intents.update(_asked(row))
        if row.get("emotion"):
            emotions[row["emotion"]] += 1
        if row.get("seconds"):
            seconds.append(float(row["seconds"]))
        live += row.get("source") == "stream"
        redactions.update(r["type"] for r in row.get("redactions") or [])
    done = statuses["done"]
    return {
        "calls": sum(statuses.values()),
        "statuses": dict(statuses),
        "escalated": escalated,
        "escalation_rate": round(escalated / done, 4) if done else None,
        "escalation_reasons": dict(reasons.most_common()),
        # calls that asked for each intent (a call asking two things counts for both: shares may sum above 1)
        "top_intents": [{"intent": name, "calls": n, "share": round(n / done, 4)} for name, n in intents.most_common(TOP_INTENTS)],
        "caller_emotions": dict(emotions.most_common()),
        "audio_calls": len(seconds),
        "live_calls": live,
        "audio_minutes": round(sum(seconds) / 60, 2),
        "mean_call_seconds": round(sum(seconds) / len(seconds), 1) if seconds else None,
        "redactions": dict(redactions.most_common()),
    }


def source_of(payload: dict[str, Any]) -> str:
    """"stream": a call read live over the WebSocket (stored at its end); "upload": sent to /v1/calls:analyze."""
    return "stream" if payload.get("source") == "stream" else "upload"


def _asked(row: dict[str, Any]) -> list[str]:
    """What a call asked for: its distinct requests (since session 21; a call may ask two things), else its
    intent (older results, or a call whose turns held no request)."""
    asked = list(dict.fromkeys(r["label"] for r in row.get("requests") or []))
    return asked or ([row["intent"]] if row.get("intent") else [])


# one CSV row per call (+ the result's id and time, with_ids): labels and counts, never the transcript
EXPORT_FIELDS = {**FIELDS, "intent_confidence": ("intent", "confidence")}
EXPORT_COLUMNS = ("created_at", "id", "status", "escalate", "escalation_rules", "intent", "intent_confidence",
                  "requests", "caller_emotion", "seconds", "source", *(f"redacted_{t}" for t in PII_TYPES))


def export_rows(rows: list[dict[str, Any]]) -> Iterator[str]:
    """CSV text, a header line then one line per call (``EXPORT_FIELDS`` of each, oldest first); a call
    not finished has its status and nothing else."""
    from core.serving import csv_lines

    def values(row: dict[str, Any]) -> list:
        status = job_status({k: row[k] for k in ("status", "heartbeat") if row.get(k) is not None}) or "done"
        if status != "done":
            return [row["created_at"], row["id"], status] + [""] * (len(EXPORT_COLUMNS) - 3)
        redacted = Counter(r["type"] for r in row.get("redactions") or [])
        confidence = row.get("intent_confidence")
        return [row["created_at"], row["id"], status, "yes" if row.get("escalate") else "no",
                "; ".join(dict.fromkeys(reason_kind(r) for r in row.get("reasons") or [])), row.get("intent") or "",
                "" if confidence is None else f"{confidence:.3f}",
                "; ".join(dict.fromkeys(r["label"] for r in row.get("requests") or [])), row.get("emotion") or "",
                "" if row.get("seconds") is None else f"{float(row['seconds']):.1f}", source_of(row),
                *(redacted.get(t, 0) for t in PII_TYPES)]

    return csv_lines(EXPORT_COLUMNS, map(values, rows))
