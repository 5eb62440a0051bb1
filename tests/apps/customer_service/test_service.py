from __future__ import annotations

import base64

import numpy as np
import pytest

from apps.customer_service.service import CallRequest, CustomerServiceEngine, InputError
from tests.apps.customer_service.conftest import INTENTS, tone, wav_bytes

CARD = "4111 1111 1111 1111"  # Luhn-valid test number


@pytest.fixture(scope="module")
def recognizer():
    from apps.customer_service.speech import create_recognizer

    return create_recognizer("pocketsphinx", topn=2, bestpath=False)


@pytest.fixture()
def engine(cs_settings, recognizer):
    from apps.customer_service.model import load_fusion, load_text_classifier, load_voice_model

    return CustomerServiceEngine(
        cs_settings,
        intent=load_text_classifier(cs_settings.intent_bundle),
        text_emotion=load_text_classifier(cs_settings.text_emotion_bundle),
        voice=load_voice_model(cs_settings.voice_emotion_bundle),
        fusion=load_fusion(cs_settings.fusion_bundle),
        recognizer=recognizer,
    )


def test_text_call_is_redacted_and_complete(engine):
    out = engine.analyze(CallRequest(text=f"My card {CARD} was stolen. I am furious!"))
    assert CARD not in out["transcript"]["text"] and "[CARD]" in out["transcript"]["text"]
    assert out["transcript"]["redactions"][0]["type"] == "card"
    assert all(CARD not in s["text"] for s in out["segments"])
    assert len(out["segments"]) == 2  # sentences are the segments of typed text
    for s in out["segments"]:
        assert s["modality_weights"] == {"voice": 0.0, "text": 1.0}  # no audio: text alone
        assert abs(sum(s["contact_centre"].values()) - 1) < 1e-3
    assert out["intent"]["label"] in INTENTS and 0 <= out["intent"]["confidence"] <= 1
    assert set(out["escalation"]) == {"escalate", "reasons"}
    assert out["reply"]["mode"] == "text" and out["reply"]["text"]
    assert set(out["model_versions"]) == {"intent", "dialogue_acts", "text_emotion", "voice", "fusion", "asr"}
    assert out["timings_ms"]["total_ms"] > 0


def test_text_models_read_the_redacted_text_without_placeholders(engine):
    """Placeholders are tokens the text models never saw in training; a segment that is only a redaction
    gives the text branch nothing (and with no audio, no emotion)."""
    seen: dict[str, list[str]] = {"intent": [], "text_emotion": []}
    for name in seen:
        model = getattr(engine, name)
        real = model.predict_proba
        model.predict_proba = lambda texts, _real=real, _name=name, **kw: (seen[_name].extend(texts), _real(texts, **kw))[1]
    out = engine.analyze(CallRequest(text=f"My card {CARD} was stolen. {CARD}. I am furious!"))
    assert out["transcript"]["text"].count("[CARD]") == 2
    assert seen["intent"] == ["My card was stolen.", "I am furious!"]  # one turn each (no dialogue-act model here)
    assert seen["text_emotion"] == ["My card was stolen.", "I am furious!"]
    only_card = [s for s in out["segments"] if s["text"] == "[CARD]."]
    assert len(only_card) == 1 and only_card[0]["emotion"] is None


def test_control_characters_are_not_words(engine):
    out = engine.analyze(CallRequest(text="my card\x00is blocked\x07\tplease help"))
    assert "\x00" not in str(out) and "\x07" not in str(out)
    assert out["transcript"]["text"] == "my card is blocked \tplease help"
    with pytest.raises(InputError):
        engine.analyze(CallRequest(text="\x00\x01 \x1b"))  # nothing but control characters: no input


def test_bidirectional_overrides_are_not_stored(engine):
    """U+202E makes a stored transcript display reversed ("Trojan Source"); the card is redacted either way."""
    out = engine.analyze(CallRequest(text="my card \u202e4539 1488 0343 6467\u202c is blocked \u2066ok\u2069"))
    text = out["transcript"]["text"]
    assert text == "my card [CARD] is blocked ok"
    assert all(ch not in str(out) for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def test_audio_call_segments_carry_voice_weight(engine):
    audio = np.concatenate([tone(1.2, 140), np.zeros(8000, np.float32), tone(1.2, 220, loud=0.6)])
    out = engine.analyze(CallRequest(audio=wav_bytes(audio)))
    assert out["transcript"]["duration_s"] == pytest.approx(len(audio) / 16000, abs=0.01)
    assert out["segments"], "a voiced recording yields segments (words or fixed windows)"
    voiced = [s for s in out["segments"] if s["emotion"] is not None]
    assert voiced and all(s["modality_weights"]["voice"] > 0 for s in voiced)
    assert all(s["speaker"] == "caller" for s in out["segments"])


def test_stereo_call_splits_agent_and_caller(engine):
    stereo = np.stack([tone(1.0, 120), tone(1.0, 230)], axis=1)
    out = engine.analyze(CallRequest(audio=wav_bytes(stereo)))
    assert {s["speaker"] for s in out["segments"]} == {"agent", "caller"}


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"this is plain text, not audio", 415, "not_audio"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt junk", 422, "corrupt"),
])
def test_bad_audio_is_a_client_error(engine, data, status, code):
    with pytest.raises(InputError) as err:
        engine.analyze(CallRequest(audio=data))
    assert (err.value.status, err.value.code) == (status, code)


def test_too_long_audio_is_refused(engine):
    with pytest.raises(InputError) as err:
        engine.analyze(CallRequest(audio=wav_bytes(np.zeros(16000 * 25, np.float32))))  # limit is 20 s here
    assert err.value.status == 413


def test_no_input_is_refused(engine):
    with pytest.raises(InputError):
        engine.analyze(CallRequest(text="   "))


def test_voice_reply_uses_tts_or_says_why_not(engine):
    from apps.customer_service.speech import tts

    ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"
    out = engine.analyze(CallRequest(text="where is my new card", user_agent=ua))
    if tts.available():
        assert out["reply"]["mode"] == "voice"
        assert base64.b64decode(out["reply"]["audio_wav_base64"])[:4] == b"RIFF"
    else:
        assert out["reply"]["mode"] == "text" and "TTSUnavailable" in out["reply"]["voice_unavailable"]
    assert engine.analyze(CallRequest(text="where is my card", user_agent=ua, output_mode="text"))["reply"]["mode"] == "text"


def test_word_level_redaction_and_segmentation(engine):
    from apps.customer_service.pii import redact_words
    from apps.customer_service.speech import Word

    spoken = ["my", "card", "is", "four", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "thanks"]
    words = [Word(w, 0.3 * i, 0.3 * i + 0.25, 0.9) for i, w in enumerate(spoken)]
    words[-1] = Word("thanks", 20.0, 20.4, 0.9)  # after a long pause
    result, hits = redact_words(words)
    types = engine._word_types(words, result)
    segs = engine._split_words(words, 21.0)
    texts = [engine._redacted_words(words, s["idx"], types) for s in segs]
    assert texts[-1] == "thanks" and len(segs) >= 2
    joined = " ".join(texts)
    assert "[CARD]" in joined and "four one" not in joined


def test_each_redaction_carries_the_times_of_its_own_words(cs_settings):
    """Two numbers in one channel are two stretches of audio (for audio redaction and review), and a
    number announced as a phone number next to a card number is a phone number."""
    from types import SimpleNamespace

    from apps.customer_service.speech import Word

    spoken = ("call me on oh seven seven oh oh nine oh oh one two three or my card is four one one one "
              "one one one one one one one one one one one one thanks and my landline is oh two oh seven nine four six "
              "oh nine five eight").split()
    words = [Word(w, 0.3 * i, 0.3 * i + 0.25, 0.9) for i, w in enumerate(spoken)]

    class Recognizer:
        name = "stub"

        def transcribe(self, samples, sample_rate):
            return SimpleNamespace(words=words, confidence=0.9)

    engine = CustomerServiceEngine(cs_settings, recognizer=Recognizer())
    out = engine.analyze(CallRequest(audio=wav_bytes(np.zeros(16000 * 16, np.float32))))
    assert out["transcript"]["text"] == "call me on [PHONE] or my card is [CARD] thanks and my landline is [PHONE]"
    phone, card, landline = out["transcript"]["redactions"]
    assert (phone["type"], phone["start_s"], phone["end_s"]) == ("phone", round(words[3].start, 3), round(words[13].end, 3))
    assert (card["type"], card["start_s"], card["end_s"]) == ("card", round(words[18].start, 3), round(words[33].end, 3))
    assert (landline["start_s"], landline["end_s"]) == (round(words[39].start, 3), round(words[-1].end, 3))


@pytest.mark.parametrize("heard", [
    "yes it is four one one one one one one one one one one one one one one one",  # a redacted channel first
    "",  # a silent channel first: no words, no part in the transcript
])
def test_redaction_offsets_point_into_the_unredacted_transcript(cs_settings, heard):
    """Offsets of every part (channels, then typed text) count the unredacted text before it, and
    only the parts that hold words."""
    from types import SimpleNamespace

    from apps.customer_service.speech import Word

    class Recognizer:
        name = "stub"

        def transcribe(self, samples, sample_rate):
            words = [Word(w, 0.3 * i, 0.3 * i + 0.25, 0.9) for i, w in enumerate(heard.split())]
            return SimpleNamespace(words=words, confidence=0.9)

    typed = f"my card {CARD} is lost"
    engine = CustomerServiceEngine(cs_settings, recognizer=Recognizer())
    out = engine.analyze(CallRequest(audio=wav_bytes(np.zeros(16000 * 6, np.float32)), text=typed))
    unredacted = " ".join(p for p in (heard, typed) if p)
    spans = [unredacted[r["start"]:r["end"]] for r in out["transcript"]["redactions"]]
    assert spans[-1] == CARD and len(spans) == (2 if heard else 1)


def test_the_transcript_comes_in_written_form_too_with_its_redactions_as_they_were(cs_settings):
    """A card number and an amount in one utterance: the written form shows "£12.50" and "[CARD]", never the
    card's digits; text, redaction offsets and times stay those of the words. Typed text is kept as typed."""
    from types import SimpleNamespace

    from apps.customer_service.speech import Word
    from tests.apps.customer_service.test_pii import SPOKEN_CARD_AND_AMOUNT

    words = [Word(w, 0.2 + 0.12 * i, 0.3 + 0.12 * i, 0.9) for i, w in enumerate(SPOKEN_CARD_AND_AMOUNT.split())]

    class Recognizer:
        name = "stub"

        def transcribe(self, samples, sample_rate):
            return SimpleNamespace(words=words, confidence=0.9)

    typed = "Oh, oh no. I paid £12.50 on 3 March 1985, ok?"
    engine = CustomerServiceEngine(cs_settings, recognizer=Recognizer())
    out = engine.analyze(CallRequest(audio=wav_bytes(tone(4.0)), text=typed))
    spoken = "my card number is [CARD] and i paid twelve pounds fifty on the third of march"
    assert out["transcript"]["text"] == f"{spoken} {typed}"
    assert out["transcript"]["normalised"] == f"my card number is [CARD] and i paid £12.50 on 3 March {typed}"
    (card,) = out["transcript"]["redactions"]
    unredacted = f"{SPOKEN_CARD_AND_AMOUNT} {typed}"
    assert unredacted[card["start"]:card["end"]] == "four five three nine one four eight eight oh three four three six four six seven"
    assert (card["start_s"], card["end_s"]) == (round(words[4].start, 3), round(words[19].end, 3))
    said, *chat = out["segments"]
    assert said["text"] == spoken and said["normalised"] == "my card number is [CARD] and i paid £12.50 on 3 March"
    assert [s["normalised"] for s in chat] == [s["text"] for s in chat] == ["Oh, oh no.", "I paid £12.50 on 3 March 1985, ok?"]
    assert "4539" not in str(out) and "6467" not in str(out)


def test_a_mono_call_saved_as_stereo_is_one_caller(cs_settings):
    """Recorders often write one signal to both channels: that is the caller once, not an agent repeating
    every word of the caller."""
    from types import SimpleNamespace

    from apps.customer_service.speech import Word

    class Recognizer:
        name = "stub"

        def transcribe(self, samples, sample_rate):
            return SimpleNamespace(words=[Word("hello", 0.1, 0.5, 0.9)], confidence=0.9)

    engine = CustomerServiceEngine(cs_settings, recognizer=Recognizer())
    x = tone(1.0)
    out = engine.analyze(CallRequest(audio=wav_bytes(np.stack([x, x], axis=1))))
    assert out["transcript"]["text"] == "hello" and {s["speaker"] for s in out["segments"]} == {"caller"}
    two = engine.analyze(CallRequest(audio=wav_bytes(np.stack([x, np.zeros_like(x)], axis=1))))
    assert {s["speaker"] for s in two["segments"]} == {"agent", "caller"}  # one side silent: still two


def test_redacted_audio_silences_the_card_and_nothing_else(cs_settings):
    """redact_audio: the WAV (written before the result is returned) is the call with the card's words
    silent, pauses between them included, and every other word as it was."""
    from types import SimpleNamespace

    import soundfile as sf

    from apps.customer_service.service import redacted_audio_path
    from apps.customer_service.speech import Word

    spoken = "my card is four one one one one one one one one one one one one one one one thanks".split()
    words = [Word(w, 0.5 + 0.4 * i, 0.5 + 0.4 * i + 0.3, 0.9) for i, w in enumerate(spoken)]

    class Recognizer:
        name = "stub"

        def transcribe(self, samples, sample_rate):
            return SimpleNamespace(words=words, confidence=0.9)

    call = (0.4 * np.sin(np.arange(16000 * 9) * 0.05) + 0.5).astype(np.float32)  # never zero
    engine = CustomerServiceEngine(cs_settings, recognizer=Recognizer())
    out = engine.analyze(CallRequest(audio=wav_bytes(call), redact_audio=True))
    audio = out["redacted_audio"]
    samples, rate = sf.read(redacted_audio_path(cs_settings, audio["artefact_id"]), dtype="float32")
    assert rate == 16000 and samples.shape == (len(call),) and audio["channels"] == 1
    first, last = words[3], words[18]  # "four" ... the last "one"
    t = np.arange(len(samples)) / 16000
    card = (t > first.start) & (t < last.end)
    assert np.all(samples[card] == 0)  # the digits and the pauses between them
    spoken_outside = (t < first.start - 0.06) | (t > last.end + 0.06)
    assert np.all(samples[spoken_outside] != 0)
    assert audio["silenced_s"] == pytest.approx(last.end - first.start + 0.1, abs=0.01)  # + 50 ms either side
    assert engine.analyze(CallRequest(audio=wav_bytes(call)))["redacted_audio"] is None  # only when asked
    with pytest.raises(InputError, match="redact_audio needs an audio file"):
        engine.analyze(CallRequest(text="hello", redact_audio=True))


def test_a_stereo_calls_segments_follow_the_conversation(cs_settings):
    """Agent and caller take turns: the segments come in time order, not one channel after the other."""
    from types import SimpleNamespace

    from apps.customer_service.speech import Word

    turns = {0: [(0.5, "hello how can i help"), (4.0, "of course")], 1: [(2.0, "my card is lost"), (5.5, "thank you")]}

    class Recognizer:
        name = "stub"

        def __init__(self):
            self.channel = 0

        def transcribe(self, samples, sample_rate):
            words = [Word(w, t + 0.3 * i, t + 0.3 * i + 0.25, 0.9) for t, text in turns[self.channel] for i, w in enumerate(text.split())]
            self.channel += 1
            return SimpleNamespace(words=words, confidence=0.9)

    stereo = np.stack([tone(7.0, 120), tone(7.0, 230)], axis=1)
    out = CustomerServiceEngine(cs_settings, recognizer=Recognizer()).analyze(CallRequest(audio=wav_bytes(stereo)))
    assert [(s["speaker"], s["text"]) for s in out["segments"]] == [
        ("agent", "hello how can i help"), ("caller", "my card is lost"), ("agent", "of course"), ("caller", "thank you")]


class KeywordActs:
    """A stand-in dialogue-act model for the routing tests: acts by keyword, the real model's interface."""

    class config:  # noqa: N801 - mirrors DialogueActModel.config
        acts = ["request", "greet", "thank", "affirm", "handoff"]
        threshold = 0.5

    version = "keywords"
    sha256 = ""

    def __init__(self):
        self.seen: list[str] = []

    def predict_proba(self, texts):
        self.seen.extend(texts)
        rows = []
        for t in texts:
            low = t.lower()
            rows.append([float(any(w in low for w in ("card", "transfer", "fee", "rate"))), float("hello" in low),
                         float("thank" in low), float(low.startswith("yes")), float("person" in low)])
        return np.array(rows, dtype=np.float32)


def scripted_intents(engine, read) -> None:
    """The intent model's place taken by ``read(text) -> {label: probability}``, the rest spread evenly."""
    import torch

    labels = engine.intent.config.labels

    def predict(texts, **kw):
        rows = []
        for text in texts:
            chosen = read(text)
            rest = (1 - sum(chosen.values())) / (len(labels) - len(chosen))
            rows.append([chosen.get(label, rest) for label in labels])
        return torch.tensor(rows)

    engine.intent.predict_proba = predict


def test_intents_come_from_request_turns_only(engine):
    engine.dialogue_acts = KeywordActs()
    seen: list[str] = []
    real = engine.intent.predict_proba
    engine.intent.predict_proba = lambda texts, **kw: (seen.extend(texts), real(texts, **kw))[1]
    out = engine.analyze(CallRequest(text="Hello there. My card has not arrived. Yes. What is the transfer fee? "
                                          "Thank you."))
    assert engine.dialogue_acts.seen == ["Hello there.", "My card has not arrived.", "Yes.",
                                         "What is the transfer fee?", "Thank you."]
    assert seen == ["My card has not arrived.", "What is the transfer fee?"]  # one batch, requests only
    acts = [s["acts"] for s in out["segments"]]
    assert acts == [["greet"], ["request"], ["affirm"], ["request"], ["thank"]]
    with_intent = [i for i, s in enumerate(out["segments"]) if s.get("intent")]
    assert with_intent == [1, 3]
    proba = real(seen).numpy()
    labels = engine.intent.config.labels
    assert out["intent"]["label"] == labels[int(proba.mean(0).argmax())]  # the mean of the request turns
    assert out["intent"]["confidence"] == pytest.approx(float(proba.mean(0).max()), abs=1e-4)
    for item in out["requests"]:
        assert item["label"] in INTENTS and set(item["segments"]) <= {1, 3}
        assert item["confidence"] >= engine.rules.request_min_confidence


def test_requests_list_each_confident_intent_once_in_call_order(engine):
    engine.dialogue_acts = KeywordActs()
    engine.rules.request_min_confidence = 0.0
    scripted_intents(engine, lambda t: {"lost_or_stolen_card" if "card" in t else "exchange_rate": 0.9})
    out = engine.analyze(CallRequest(text="My card is gone. What rate do you use? My card was taken. Thanks."))
    assert [(r["label"], r["segments"]) for r in out["requests"]] == [("lost_or_stolen_card", [0, 2]),
                                                                     ("exchange_rate", [1])]
    engine.rules.request_min_confidence = 0.95  # above every intent's confidence: nothing is listed
    engine.rules.later_request_min_confidence = None  # later turns: the same threshold
    assert engine.analyze(CallRequest(text="My card is gone. What rate do you use?"))["requests"] == []
    # the stolen card escalates as an urgent intent through the requests as well
    assert "urgent intent lost_or_stolen_card" in out["escalation"]["reasons"]


def test_a_request_after_the_first_needs_more_confidence_to_be_listed(engine):
    """Most turns after the first request answer the agent; an answer with content reads as a request."""
    engine.dialogue_acts = KeywordActs()
    read = {"My card is gone.": {"lost_or_stolen_card": 0.6}, "The visa debit card.": {"card_arrival": 0.7},
            "And what is the transfer fee?": {"transfer_fee_charged": 0.85}}
    scripted_intents(engine, lambda t: read[t])
    text = "My card is gone. The visa debit card. And what is the transfer fee?"
    engine.rules.later_request_min_confidence = 0.8
    listed = [r["label"] for r in engine.analyze(CallRequest(text=text))["requests"]]
    assert listed == ["lost_or_stolen_card", "transfer_fee_charged"]  # the first at 0.6; the answer at 0.7 is not
    engine.rules.later_request_min_confidence = None
    listed = [r["label"] for r in engine.analyze(CallRequest(text=text))["requests"]]
    assert listed == ["lost_or_stolen_card", "card_arrival", "transfer_fee_charged"]


def test_no_request_turn_still_gives_the_call_a_best_guess(engine):
    engine.dialogue_acts = KeywordActs()
    out = engine.analyze(CallRequest(text="Hello. Yes."))
    assert out["intent"] is not None  # the call's best guess, read from every turn
    assert [s["acts"] for s in out["segments"]] == [["greet"], ["affirm"]]
    assert not any(s.get("intent") for s in out["segments"]) and out["requests"] == []  # nothing was asked


def test_asking_for_a_person_escalates_and_names_no_banking_intent(engine):
    engine.dialogue_acts = KeywordActs()
    engine.rules.request_min_confidence = 0.5
    scripted_intents(engine, lambda t: {"lost_or_stolen_card" if "card" in t else "exchange_rate": 0.9})
    out = engine.analyze(CallRequest(text="My card has not arrived. Can I talk to a person please?"))
    assert "caller asked for a person" in out["escalation"]["reasons"]
    assert [r["label"] for r in out["requests"]] == ["lost_or_stolen_card"]
    # a request turn that also asks for a person: only its clauses asking something else are read
    out = engine.analyze(CallRequest(text="The exchange rate is wrong on my card and I want to talk to a person now."))
    assert out["segments"][0]["acts"] == ["request", "handoff"] and out["segments"][0].get("intent") is None
    assert [r["label"] for r in out["requests"]] == ["lost_or_stolen_card"]
    out = engine.analyze(CallRequest(text="Put me through to a person who handles rate questions."))
    assert out["requests"] == []  # one clause, all of it the handoff
    engine.rules.handoff = False
    out = engine.analyze(CallRequest(text="My card has not arrived. Can I talk to a person please?"))
    assert "caller asked for a person" not in out["escalation"]["reasons"]


def test_a_request_for_a_person_after_a_comma_escalates(engine):
    class LateHandoff(KeywordActs):
        """Reads "put me through ..." as a handoff only when it starts the text, as the real model reads
        "my card was stolen yesterday, put me through to someone now" as a request alone."""

        def predict_proba(self, texts):
            rows = super().predict_proba(texts)
            rows[:, 4] = [float(t.lower().startswith("put me through")) for t in texts]
            return rows

    engine.dialogue_acts = LateHandoff()
    scripted_intents(engine, lambda t: {"lost_or_stolen_card": 0.9})
    out = engine.analyze(CallRequest(text="My card is gone, put me through to someone now."))
    assert out["segments"][0]["acts"] == ["request", "handoff"]
    assert "caller asked for a person" in out["escalation"]["reasons"]
    assert [r["label"] for r in out["requests"]] == ["lost_or_stolen_card"]  # the request keeps its intent
    out = engine.analyze(CallRequest(text="My card is gone, I think, since Monday."))
    assert "caller asked for a person" not in out["escalation"]["reasons"]


def test_one_turn_asking_two_things_lists_both(engine):
    from apps.customer_service.service import clauses

    engine.dialogue_acts = KeywordActs()
    engine.rules.request_min_confidence = 0.5

    def read(text):
        if "card" in text and "rate" in text:  # a whole two-request turn: torn between them
            return {"lost_or_stolen_card": 0.45, "exchange_rate": 0.45}
        return {"lost_or_stolen_card" if "card" in text else "exchange_rate": 0.9}

    scripted_intents(engine, read)
    out = engine.analyze(CallRequest(text="Hello. My card is gone and what rate do you use for euros?"))
    assert [(r["label"], r["segments"]) for r in out["requests"]] == [("lost_or_stolen_card", [1]), ("exchange_rate", [1])]
    assert out["segments"][1]["intent"]["label"] in ("lost_or_stolen_card", "exchange_rate")  # the turn keeps one
    # an "and" inside one request is not a second request
    assert clauses("I topped up and it failed") == ["I topped up and it failed"]
    assert clauses("I need a new card, and also the fee for it please") == ["I need a new card", "the fee for it please"]
    out = engine.analyze(CallRequest(text="My card is gone and my card is lost."))
    assert [r["label"] for r in out["requests"]] == ["lost_or_stolen_card"]  # the same intent twice: one request


def test_caller_utterances_rejoin_what_the_segment_windows_cut():
    from apps.customer_service.service import PAUSE_S, caller_utterances

    def seg(speaker, start, end, text):
        return {"speaker": speaker, "start": start, "end": end, "text": text}

    segments = [
        seg("caller", 0.0, 1.0, "Hello, good morning."),
        seg("caller", 2.0, 6.0, "Someone has taken 200 pounds from my account and I"),  # cut by the 4 s cap...
        seg("caller", 6.1, 7.0, "do not recognize the payment."),  # ...with no pause: one utterance
        seg("agent", 7.5, 9.0, "Can I have your name?"),
        seg("caller", 9.5, 10.0, "[CARD]"),  # nothing but a redaction: no utterance
        seg("caller", 10.2, 10.8, "Yes, that is it."),
        seg("caller", 12.0, 14.0, "I would also like to know how long a new card takes to"),
        seg("caller", 15.0, 15.5, "arrive."),  # a pause, but the sentence goes on in lower case
        seg("caller", 16.5, 17.0, "Thank you."),
        seg("caller", 18.0, 19.0, "i lost my card"),  # no punctuation (pocketsphinx): a pause ends it
        seg("caller", 18.0 + 1.0 + PAUSE_S, 21.0, "it was yesterday"),
    ]
    assert caller_utterances(segments) == [
        ([0], "Hello, good morning."),
        ([1, 2], "Someone has taken 200 pounds from my account and I do not recognize the payment."),
        ([5], "Yes, that is it."),
        ([6, 7], "I would also like to know how long a new card takes to arrive."),
        ([8], "Thank you."),
        ([9], "i lost my card"),
        ([10], "it was yesterday"),
    ]
    typed = [seg("caller", None, None, "my card"), seg("caller", None, None, "is lost.")]
    assert caller_utterances(typed) == [([0], "my card"), ([1], "is lost.")]  # typed sentences stay apart


def _count_reads(engine) -> dict[str, list[str]]:
    """The texts each text model of ``engine`` is given, as they are given."""
    seen: dict[str, list[str]] = {"intent": [], "text_emotion": []}
    for name in seen:
        model = getattr(engine, name)
        real = model.predict_proba
        model.predict_proba = lambda texts, _real=real, _name=name, **kw: (seen[_name].extend(texts), _real(texts, **kw))[1]
    return seen


def test_a_sentence_said_many_times_is_read_once_by_each_text_model(engine):
    """A text's cost follows its distinct sentences: "Cancel. " 2,500 times took 49 s on one thread."""
    seen = _count_reads(engine)
    out = engine.analyze(CallRequest(text="Cancel my card. " * 40 + "I am furious!"))
    assert len(out["segments"]) == 41 and all(s["emotion"] for s in out["segments"])
    assert seen["text_emotion"] == ["Cancel my card.", "I am furious!"]
    assert seen["intent"] == ["Cancel my card.", "I am furious!"]
    repeated = {tuple(s["ekman"].values()) for s in out["segments"][:40]}
    assert len(repeated) == 1  # every copy gets the one reading


def test_a_text_of_more_segments_than_the_limit_is_refused_before_any_model_reads_it(cs_settings, recognizer):
    from apps.customer_service.model import load_text_classifier
    from apps.customer_service.service import check_request

    settings = cs_settings.model_copy(update={"max_text_segments": 5})
    engine = CustomerServiceEngine(settings, intent=load_text_classifier(settings.intent_bundle),
                                   text_emotion=load_text_classifier(settings.text_emotion_bundle))
    seen = _count_reads(engine)
    with pytest.raises(InputError) as err:
        engine.analyze(CallRequest(text="a\n" * 6))
    assert (err.value.status, err.value.code) == (413, "too_many_segments")
    assert "6 sentences or lines" in err.value.message and "limit is 5" in err.value.message
    assert seen == {"intent": [], "text_emotion": []}
    assert len(engine.analyze(CallRequest(text="a.\n" * 5))["segments"]) == 5
    # the review's input: 20,000 characters within max_text_chars, 10,000 lines
    with pytest.raises(InputError, match="10000 sentences or lines; the limit is 1000"):
        check_request(CallRequest(text="a\n" * 10000), cs_settings)


def _understated(wav: bytes, size: int) -> bytes:
    """``wav`` whose data chunk declares ``size`` bytes, whatever follows."""
    at = wav.find(b"data")
    return wav[:at + 4] + size.to_bytes(4, "little") + wav[at + 8:]


def test_a_wav_whose_header_understates_its_audio_is_analysed_whole_with_a_warning(engine):
    audio = np.concatenate([tone(1.0, 140), tone(1.0, 220)])
    out = engine.analyze(CallRequest(audio=_understated(wav_bytes(audio), 10)))
    assert out["transcript"]["duration_s"] == pytest.approx(2.0, abs=0.01)
    (warning,) = out["warnings"]
    assert "header" in warning and "declares 0.0 s" in warning and "2.0 s follow" in warning
    assert any(s["emotion"] for s in out["segments"])


def test_audio_shorter_than_the_minimum_is_refused_with_the_minimum(engine):
    for samples in (1, 16000 // 10):
        with pytest.raises(InputError) as err:
            engine.analyze(CallRequest(audio=wav_bytes(tone(1.0)[:samples])))
        assert (err.value.status, err.value.code) == (422, "too_short")
        assert "at least 0.25 s" in err.value.message and "WAV" in err.value.message
    assert engine.analyze(CallRequest(audio=wav_bytes(tone(0.3))))["transcript"]["duration_s"] == pytest.approx(0.3)


def test_redacted_recordings_of_no_stored_call_are_swept_past_the_grace_period(tmp_path):
    """A process that died between writing a call's redacted recording and storing the call left it on disk
    for ever (no stored call names it: retention and erasure never reached it)."""
    import os
    import time

    from apps.customer_service.api import _with_audio_link
    from apps.customer_service.service import call_artefact_folder, redacted_audio_path
    from apps.customer_service.settings import CustomerServiceSettings
    from core.serving import ResultStore
    from core.serving.retention import sweep_orphans

    settings = CustomerServiceSettings(database_url=f"sqlite:///{tmp_path}/cs.db", artefact_dir=tmp_path / "artefacts")
    store = ResultStore(settings.database_url)
    stored, orphan = "a" * 32, "b" * 32
    for artefact_id in (stored, orphan):
        path = redacted_audio_path(settings, artefact_id)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"RIFF")
        for p in (path, path.parent):
            os.utime(p, (time.time() - 7200,) * 2)
    payload = _with_audio_link({"redacted_audio": {"artefact_id": stored, "seconds": 1.0}, "transcript": "t"},
                               "/customer-service")
    store.save_result("customer-service", "call", None, payload)
    folder = call_artefact_folder(settings)
    assert folder(payload) == [redacted_audio_path(settings, stored).parent]  # what an erasure removes
    assert sweep_orphans(store, "customer-service", folder) == 1
    assert redacted_audio_path(settings, stored).exists() and not redacted_audio_path(settings, orphan).parent.exists()
    store.close()
