"""Voice activity detection: the plain-PyTorch Silero port, its span rules and the way back to recording times."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.customer_service.speech.asr import Word
from apps.customer_service.speech.vad import (
    RATE,
    WINDOW,
    SpanRules,
    SpeechDetector,
    SpeechOnly,
    padded_spans,
    shared_detector,
    spans_from_probabilities,
)
from tests.apps.customer_service.speech.conftest import speak

MS = RATE // 1000


def _noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


def test_the_port_reads_every_window_as_the_torchscript_model_it_was_imported_from():
    threads = torch.get_num_threads()
    silero_vad = pytest.importorskip("silero_vad")  # a dev dependency; importing it sets torch's thread count
    torch.set_num_threads(threads)
    scripted = silero_vad.load_silero_vad()
    x = np.concatenate([speak("please cancel my card"), _noise(0.7, -40), speak("thank you")])
    scripted.reset_states()
    expected = [scripted(torch.from_numpy(np.pad(x[i:i + WINDOW], (0, max(0, i + WINDOW - len(x))))), RATE).item()
                for i in range(0, len(x), WINDOW)]
    ours = shared_detector().probabilities(x)
    assert ours.shape == (len(expected),)
    assert np.abs(ours - np.array(expected)).max() < 1e-4
    assert ours.max() > 0.9 and ours.min() < 0.1  # speech and the pause between are both there


def test_speech_is_found_and_noise_hum_and_silence_are_not():
    detector = shared_detector()
    x = np.concatenate([np.zeros(RATE, np.float32), speak("I would like to report a lost card"), _noise(3.0, -50)])
    spans = detector.spans(x)
    assert len(spans) == 1 and spans[0][0] < 1.0 * RATE + 0.5 * RATE and spans[0][1] < len(x) - 1.0 * RATE
    t = np.arange(10 * RATE) / RATE
    hum = (0.05 * np.sin(2 * np.pi * 50 * t)).astype(np.float32) + _noise(10.0, -45)
    for quiet in (_noise(29.0, -50), hum, np.zeros(RATE, np.float32)):
        assert detector.spans(quiet) == []


def test_spans_follow_the_enter_and_leave_levels_and_the_minimum_silence():
    rules = SpanRules(threshold=0.5, min_speech_ms=0, min_silence_ms=100, pad_ms=0)
    n = 30
    probs = np.zeros(n)
    probs[2:6] = 0.9
    probs[6:8] = 0.4  # between the levels: still speech
    probs[8] = 0.1  # below the exit level, but for less than 100 ms
    probs[9:11] = 0.8
    probs[14:16] = 0.9  # after 4 windows below the exit level (96 ms from the first): the same span
    probs[22:24] = 0.7  # after 6 (the 5th is 128 ms from the first): a new span
    assert spans_from_probabilities(probs, n * WINDOW, rules) == [(2 * WINDOW, 16 * WINDOW), (22 * WINDOW, 24 * WINDOW)]
    # a span still open at the end runs to the last sample; one shorter than the minimum is dropped
    probs[29:] = 0.9
    assert spans_from_probabilities(probs, n * WINDOW - 100, rules)[-1] == (29 * WINDOW, n * WINDOW - 100)
    short = SpanRules(threshold=0.5, min_speech_ms=100, min_silence_ms=100, pad_ms=0)
    assert (22 * WINDOW, 24 * WINDOW) not in spans_from_probabilities(probs, n * WINDOW, short)


def test_padding_widens_each_span_and_close_spans_meet_halfway():
    assert padded_spans([(1000, 2000), (2300, 3000), (9000, 9500)], 400, 9700) == [
        (600, 2150), (2150, 3400), (8600, 9700)]
    assert padded_spans([], 400, 100) == []


def test_words_of_the_joined_speech_are_timed_in_the_recording():
    x = np.arange(6 * RATE, dtype=np.float32)
    speech = SpeechOnly.of(x, [(RATE, 2 * RATE), (4 * RATE, 5 * RATE)])
    assert len(speech.audio) == 2 * RATE and speech.audio[0] == RATE and speech.audio[RATE] == 4 * RATE
    assert speech.original_time(0.5) == pytest.approx(1.5)
    assert speech.original_time(1.0) == pytest.approx(4.0)  # a start on the join opens the next span
    assert speech.original_time(1.0, end=True) == pytest.approx(2.0)  # an end on it closes the span before
    assert speech.original_time(2.5) == pytest.approx(5.0)  # past the end: the last span's end
    words = speech.restore([Word("lost", 0.25, 0.75, 0.9), Word("card", 1.25, 1.5, 0.8)])
    assert words == [Word("lost", 1.25, 1.75, 0.9), Word("card", 4.25, 4.5, 0.8)]
    whole = SpeechOnly.whole(x)
    assert whole.audio is x and whole.original_time(3.3) == pytest.approx(3.3)


def test_the_bundle_is_checked_and_read_once():
    detector = shared_detector()
    assert detector is shared_detector() and detector.version == "silero-vad-6.2.3"
    assert SpeechDetector().rules == SpanRules()
