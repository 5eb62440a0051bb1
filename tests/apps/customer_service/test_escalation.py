from __future__ import annotations

import pytest

from apps.customer_service.escalation import (
    EscalationRules,
    choose_output_mode,
    decide_escalation,
    is_mobile,
    reply_text,
)

CALM = {"angry": 0.05, "frustrated": 0.05, "anxious": 0.05, "neutral": 0.8, "satisfied": 0.05}
ANGRY = {"angry": 0.8, "frustrated": 0.1, "anxious": 0.0, "neutral": 0.1, "satisfied": 0.0}
CROSS = {"angry": 0.3, "frustrated": 0.45, "anxious": 0.0, "neutral": 0.25, "satisfied": 0.0}


def seg(view):
    return {"contact_centre": view}


def test_calm_clear_call_is_not_escalated():
    out = decide_escalation(EscalationRules(), [seg(CALM)] * 3, {"label": "card_arrival", "confidence": 0.9})
    assert out == {"escalate": False, "reasons": []}


def test_each_rule_fires_with_its_reason():
    rules = EscalationRules()
    assert "caller angry" in decide_escalation(rules, [seg(CALM), seg(ANGRY)], None)["reasons"][0]
    reasons = decide_escalation(rules, [seg(CROSS)] * 3, None)["reasons"]
    assert any("consecutive" in r for r in reasons) and any("negative over the call" in r for r in reasons)
    assert decide_escalation(rules, [], {"label": "compromised_card", "confidence": 0.99})["reasons"] == [
        "urgent intent compromised_card"]
    assert "intent unclear" in decide_escalation(rules, [], {"label": "card_arrival", "confidence": 0.1})["reasons"][0]


def test_requests_count_and_a_call_asking_two_things_is_not_unclear():
    rules = EscalationRules()
    call = {"label": "card_arrival", "confidence": 0.3}  # the mean over two different requests
    asked = [{"label": "card_arrival", "confidence": 0.9}, {"label": "compromised_card", "confidence": 0.8}]
    assert decide_escalation(rules, [], call, asked)["reasons"] == ["urgent intent compromised_card"]
    assert decide_escalation(rules, [], call, [])["reasons"] == ["intent unclear (confidence 0.30 < 0.35)"]
    handoff = [{"contact_centre": None, "acts": ["handoff"]}]
    assert decide_escalation(rules, handoff, None)["reasons"] == ["caller asked for a person"]
    assert decide_escalation(EscalationRules(handoff=False), handoff, None)["escalate"] is False


def test_rules_are_configurable():
    assert decide_escalation(EscalationRules.from_name("off"), [seg(ANGRY)] * 5, None)["escalate"] is False
    lenient = EscalationRules(angry_threshold=0.95, negative_threshold=0.99, sustained_segments=10)
    assert decide_escalation(lenient, [seg(ANGRY)], None)["escalate"] is False
    assert EscalationRules.from_dict({"angry_threshold": 0.5}).angry_threshold == 0.5
    with pytest.raises(ValueError):
        EscalationRules.from_dict({"no_such_rule": 1})


@pytest.mark.parametrize(("requested", "ua", "mode"), [
    ("text", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148", "text"),
    ("voice", "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0", "voice"),
    (None, "Mozilla/5.0 (Linux; Android 14; Pixel 8) Mobile Safari/537.36", "voice"),
    (None, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0", "text"),
    (None, None, "text"),
])
def test_output_mode(requested, ua, mode):
    assert choose_output_mode(requested, ua) == mode


def test_is_mobile():
    assert is_mobile("Mozilla/5.0 (iPad; CPU OS 16_0)") and not is_mobile("curl/8.0")


def test_reply_follows_intent_emotion_and_escalation():
    r = reply_text("lost_or_stolen_card", "angry", True)
    assert r.startswith("I am sorry") and "frozen your card" in r and "senior colleague" in r
    assert "worrying" in reply_text("card_payment_not_recognised", "anxious", False)
    assert "few more details" in reply_text(None, None, False)


def test_every_reason_counts_under_its_rule_without_its_measured_values():
    from apps.customer_service.escalation import reason_kind

    rules = EscalationRules(angry_threshold=0.1, negative_threshold=0.1, sustained_segments=2, min_intent_confidence=0.9)
    angry = {"contact_centre": {"angry": 0.8, "frustrated": 0.1, "neutral": 0.05, "satisfied": 0.05}}
    out = decide_escalation(rules, [angry, angry, angry], {"label": "compromised_card", "confidence": 0.5})
    assert {reason_kind(r) for r in out["reasons"]} == {
        "caller angry", "negative over the call", "consecutive negative segments", "urgent intent compromised_card",
        "intent unclear"}
