"""The period summary's arithmetic on hand-made stored fields."""

from __future__ import annotations

import datetime as dt

from apps.customer_service.summary import summarise


def _done(intent="card_arrival", emotion="neutral", escalate=False, reasons=(), seconds=None, redactions=()):
    return {"status": None, "heartbeat": None, "escalate": escalate, "reasons": list(reasons), "intent": intent,
            "emotion": emotion, "seconds": seconds, "redactions": [{"type": t} for t in redactions]}


def test_counts_statuses_escalations_intents_emotions_and_redactions():
    fresh = dt.datetime.now(dt.UTC).isoformat()
    stale = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat()
    rows = [
        _done(escalate=True, reasons=["caller angry (P=0.81 >= 0.6)", "3 consecutive negative segments (>= 3)"],
              intent="compromised_card", emotion="angry", seconds=90.0, redactions=["card", "cvv", "card"]),
        _done(escalate=True, reasons=["caller angry (P=0.70 >= 0.6)", "urgent intent compromised_card"],
              intent="compromised_card", emotion="frustrated", seconds=30.0, redactions=["credential"]),
        _done(),  # typed: no audio
        {"status": "done", "heartbeat": None, "escalate": False, "reasons": [], "intent": "card_arrival",
         "emotion": "satisfied", "seconds": 60.0, "redactions": []},  # a finished background job
        {**_done(intent="card_arrival", seconds=60.0), "source": "stream"},  # read live over the WebSocket
        {"status": "running", "heartbeat": fresh},
        {"status": "running", "heartbeat": stale},  # its worker died: interrupted
        {"status": "failed", "heartbeat": None},
    ]
    s = summarise(rows)
    assert s["calls"] == 8 and s["statuses"] == {"done": 5, "running": 1, "failed": 1, "interrupted": 1}
    assert s["escalated"] == 2 and s["escalation_rate"] == 0.4
    assert s["escalation_reasons"] == {"caller angry": 2, "consecutive negative segments": 1,
                                       "urgent intent compromised_card": 1}
    assert s["top_intents"] == [{"intent": "card_arrival", "calls": 3, "share": 0.6},
                                {"intent": "compromised_card", "calls": 2, "share": 0.4}]
    assert s["caller_emotions"] == {"neutral": 2, "angry": 1, "frustrated": 1, "satisfied": 1}
    assert s["audio_calls"] == 4 and s["audio_minutes"] == 4.0 and s["mean_call_seconds"] == 60.0
    assert s["live_calls"] == 1
    assert s["redactions"] == {"card": 2, "cvv": 1, "credential": 1}


def test_an_empty_period_and_at_most_ten_intents():
    s = summarise([])
    assert s["calls"] == 0 and s["escalation_rate"] is None and s["mean_call_seconds"] is None
    assert s["statuses"] == {"done": 0, "running": 0, "failed": 0, "interrupted": 0}
    many = summarise([_done(intent=f"intent_{i % 12}") for i in range(24)])
    assert len(many["top_intents"]) == 10 and all(i["calls"] == 2 for i in many["top_intents"])


def test_export_rows_are_one_csv_line_per_call_with_labels_and_counts_only():
    import csv
    import io

    from apps.customer_service.summary import EXPORT_COLUMNS, export_rows

    done = {**_done(escalate=True, reasons=["caller angry (P=0.81 >= 0.6)", "caller angry (P=0.9 >= 0.6)",
                                            "urgent intent compromised_card"], intent="compromised_card",
                    emotion="angry", seconds=61.27, redactions=["card", "card", "credential"]),
            "intent_confidence": 0.91234, "created_at": "2026-11-30T06:00:00+00:00", "id": "a" * 32}
    failed = {"status": "failed", "heartbeat": None, "created_at": "2026-11-30T06:01:00+00:00", "id": "b" * 32}
    table = list(csv.DictReader(io.StringIO("".join(export_rows([done, failed])))))
    assert list(table[0]) == list(EXPORT_COLUMNS) and len(table) == 2
    first = table[0]
    assert first["escalate"] == "yes" and first["escalation_rules"] == "caller angry; urgent intent compromised_card"
    assert (first["intent"], first["intent_confidence"], first["caller_emotion"], first["seconds"]) == (
        "compromised_card", "0.912", "angry", "61.3")
    assert (first["redacted_card"], first["redacted_credential"], first["redacted_iban"]) == ("2", "1", "0")
    assert first["requests"] == ""  # a call stored before requests were listed
    assert first["source"] == "upload"
    streamed = {**done, "source": "stream"}
    assert list(csv.DictReader(io.StringIO("".join(export_rows([streamed])))))[0]["source"] == "stream"
    assert table[1]["status"] == "failed" and table[1]["intent"] == "" and table[1]["redacted_card"] == ""


def test_a_call_asking_two_things_counts_for_both():
    from apps.customer_service.summary import EXPORT_COLUMNS, export_rows

    two = {**_done(intent="card_arrival"), "requests": [{"label": "card_arrival", "confidence": 0.9, "segments": [1]},
                                                       {"label": "lost_or_stolen_card", "confidence": 0.8, "segments": [3]},
                                                       ]}
    nothing_asked = {**_done(intent="exchange_rate"), "requests": []}  # its best guess counts, as before
    s = summarise([two, nothing_asked])
    assert {i["intent"]: i["calls"] for i in s["top_intents"]} == {"card_arrival": 1, "lost_or_stolen_card": 1,
                                                                   "exchange_rate": 1}
    row = {**two, "intent_confidence": 0.5, "created_at": "2026-11-30T06:00:00+00:00", "id": "c" * 32}
    line = "".join(export_rows([row])).splitlines()[1].split(",")
    assert line[EXPORT_COLUMNS.index("requests")] == "card_arrival; lost_or_stolen_card"
