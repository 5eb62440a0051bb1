"""The embedded recogniser: grammars, bank LM, word times and confidences, interpolation, errors."""

from __future__ import annotations

import math

import jiwer
import numpy as np
import pytest

from apps.customer_service.speech.audio import AudioError
from apps.customer_service.speech.grammars import DIGIT_VALUES
from apps.customer_service.speech.sphinx import SphinxConfig, SphinxRecognizer, is_band_limited

from .conftest import speak


def test_single_digit_grammar(grammar_recognizer):
    for word in ("seven", "three", "nine"):
        out = grammar_recognizer.transcribe(speak(word), mode="digit")
        assert out.text == word


def test_digit_string_grammar_only_emits_digits(grammar_recognizer):
    out = grammar_recognizer.transcribe(speak("four five three nine, one four eight eight"), mode="digits")
    assert out.words and all(w.text in DIGIT_VALUES or w.text in ("double", "triple") for w in out.words)
    assert jiwer.wer("four five three nine one four eight eight", out.text) <= 0.25
    assert out.normalised.replace(" ", "").isdigit()


def test_bank_lm_transcribes_a_bank_request_with_times_and_confidences(bank_recognizer):
    ref = "i would like to cancel my card because it has been stolen"
    audio = speak(ref)
    out = bank_recognizer.transcribe(audio)
    # robotic espeak speech: the content words must come through, the rest may wobble
    assert {"cancel", "card", "stolen"} <= set(out.text.split())
    assert jiwer.wer(ref, out.text) <= 0.6
    duration = len(audio) / 16_000
    prev = 0.0
    for w in out.words:
        assert prev - 1e-6 <= w.start < w.end <= duration + 1e-6
        assert 0.0 <= w.confidence <= 1.0
        prev = w.end
    assert 0.0 < out.confidence <= 1.0 and out.extra["search"] == "bank"


def test_narrow_band_audio_is_detected_and_still_recognised(grammar_recognizer):
    for word in ("seven", "two"):
        audio = speak(word, rate=8_000)
        assert is_band_limited(audio) and not is_band_limited(speak(word))
        assert grammar_recognizer.transcribe(audio, mode="digit").text == word


def test_interpolation_is_a_mixture_of_the_two_lms():
    rec = SphinxRecognizer(SphinxConfig(lm="interpolated", interp_weight=0.5))
    rec._lms()  # load both LMs up front
    for words in (["my", "card", "has", "not", "arrived"], ["the", "old", "man", "walked", "home"]):
        mixed = rec.interpolated_logprob(words)
        rec.config.interp_weight = 0.0
        only_generic = rec.interpolated_logprob(words)
        rec.config.interp_weight = 1.0
        only_bank = rec.interpolated_logprob(words)
        rec.config.interp_weight = 0.5
        # per word ln(a/2 + b/2) >= ln(max(a, b)/2): the mixture is never much below the better LM
        assert mixed >= max(only_generic, only_bank) - len(words + ["</s>"]) * math.log(2) - 1e-6
        assert min(only_generic, only_bank) - 1e-6 <= mixed or mixed <= max(only_generic, only_bank) + 1e-6
    # bank words are more likely under the bank LM, book words under the generic one
    rec.config.interp_weight = 1.0
    bank_card = rec.interpolated_logprob(["my", "card", "has", "not", "arrived"])
    rec.config.interp_weight = 0.0
    assert bank_card > rec.interpolated_logprob(["my", "card", "has", "not", "arrived"])
    out = rec.transcribe(speak("my card has not arrived"))
    assert out.extra["search"] in ("_default", "bank") and out.words

def test_the_two_passes_are_rescored_on_one_acoustic_scale():
    """With w = 0 the rescoring is the generic search's own objective, so it must keep the generic pass. It
    did not while each search scaled its acoustic scores by its own active senones: "she plays the violin"
    went to the bank pass's words, and real out-of-domain speech (RAVDESS) lost a third of its words."""
    rec = SphinxRecognizer(SphinxConfig(lm="interpolated", interp_weight=0.0))
    assert rec._decoder.config["compallsen"]
    for sentence in ("she plays the violin in an orchestra", "dogs are sitting by the door"):
        assert rec.transcribe(speak(sentence)).extra["search"] == "_default"
    assert not SphinxRecognizer(SphinxConfig(lm="bank"))._decoder.config["compallsen"]  # one search: no need



def test_bad_input_is_refused(bank_recognizer):
    with pytest.raises(AudioError):
        bank_recognizer.transcribe(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError):
        bank_recognizer.transcribe(np.zeros((2, 1600), dtype=np.float32))
    with pytest.raises(AudioError):
        bank_recognizer.transcribe(np.full(1600, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="unknown mode"):
        bank_recognizer.transcribe(np.zeros(1600, dtype=np.float32), mode="poetry")
    with pytest.raises(ValueError, match="lm must be"):
        SphinxRecognizer(SphinxConfig(lm="klingon"))


def test_silence_gives_an_empty_transcript(bank_recognizer):
    # two seconds of digital zeros decoded as "nor" at confidence 1.0 before the silence gate
    rng = np.random.default_rng(0)
    for silence in (np.zeros(32_000, dtype=np.float32), 1e-4 * rng.standard_normal(32_000).astype(np.float32)):
        out = bank_recognizer.transcribe(silence)
        assert out.words == [] and out.confidence == 0.0 and out.extra == {"silent": True}
        assert out.to_dict()["duration_s"] == pytest.approx(2.0)
    # speech far below full scale (-50 dBFS peak) is still decoded, not gated
    quiet = speak("I want to check my balance")
    quiet = quiet / np.abs(quiet).max() * 10 ** (-50 / 20)
    assert "silent" not in bank_recognizer.transcribe(quiet).extra


def test_presets():
    assert SphinxConfig.from_name("streaming").bestpath is False
    with pytest.raises(KeyError):
        SphinxConfig.from_name("huge")
