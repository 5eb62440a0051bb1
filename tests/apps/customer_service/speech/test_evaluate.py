"""evaluate_asr over generated LibriSpeech / FSDD / Sphinx layouts, and over the real test data."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from apps.customer_service.speech.evaluate import evaluate_asr, find_layout, scoring_text
from tests.conftest import require_dataset

from .conftest import speak

SENTENCES = ["please cancel my card", "my transfer has not arrived"]


def test_scoring_text():
    assert scoring_text("Mr. Smith's top-up, OK?") == "mister smith's top up okay"


def test_librispeech_layout(tmp_path, bank_recognizer):
    chapter = tmp_path / "test-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    lines = []
    for i, text in enumerate(SENTENCES):
        sf.write(chapter / f"84-121123-{i:04d}.flac", speak(text), 16_000)
        lines.append(f"84-121123-{i:04d} {text.upper()}")
    (chapter / "84-121123.trans.txt").write_text("\n".join(lines) + "\n")
    assert find_layout(tmp_path) == "librispeech"
    out = evaluate_asr(tmp_path, recognizer=bank_recognizer)
    assert out["utterances"] == 2 and out["ref_words"] == 9
    assert 0.0 <= out["wer"] <= 0.5
    assert all(isinstance(v, float) for v in out.values())


def test_fsdd_layout_uses_the_digit_grammar(tmp_path, grammar_recognizer):
    rec = tmp_path / "recordings"
    rec.mkdir()
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for d in (1, 2, 3, 7, 8):
        x = speak(digits[d], rate=8_000)
        sf.write(rec / f"{d}_tts_0.wav", x[::2], 8_000)  # 8 kHz files like the real FSDD
    assert find_layout(tmp_path) == "fsdd"
    out = evaluate_asr(tmp_path, recognizer=grammar_recognizer)
    assert out["utterances"] == 5
    assert out["digit_accuracy"] >= 0.8 and out["wer"] == pytest.approx(1 - out["digit_accuracy"])


def test_fsdd_digits_written_as_a_recogniser_writes_them(tmp_path):
    """Whisper writes "7." or "Seven." where pocketsphinx says "seven": each is the digit seven."""
    from apps.customer_service.speech.asr import Transcript, Word

    class Writer:
        name = "fake"

        def __init__(self, answers):
            self.answers = iter(answers)

        def transcribe(self, audio, sample_rate, *, mode="default"):
            assert mode == "digit"
            return Transcript([Word(w, 0.0, 0.3, 0.9) for w in next(self.answers).split()], 0.9, self.name, mode)

    rec = tmp_path / "recordings"
    rec.mkdir()
    for d in (0, 3, 7, 8):
        sf.write(rec / f"{d}_tts_0.wav", np.zeros(4000, np.float32), 8_000)
    out = evaluate_asr(tmp_path, recognizer=Writer(["Oh.", "3", "Seven.", "eight eight"]))  # files sort 0, 3, 7, 8
    assert out["digit_accuracy"] == 0.75  # two words for one digit is wrong
    assert out["wer"] == pytest.approx(1 / 4)


def test_sphinx_layout(tmp_path, bank_recognizer):
    d = tmp_path / "calls"
    d.mkdir()
    ids = []
    for i, text in enumerate(SENTENCES):
        sf.write(d / f"utt{i}.wav", (speak(text) * 32767).astype(np.int16), 16_000)
        ids.append(f"utt{i}")
    (d / "calls.fileids").write_text("\n".join(ids) + "\n")
    (d / "calls.transcription").write_text("".join(f"<s> {t} </s> ({i})\n" for t, i in zip(SENTENCES, ids)))
    assert find_layout(tmp_path) == "sphinx"
    out = evaluate_asr(tmp_path, recognizer=bank_recognizer)
    assert out["utterances"] == 2 and out["wer"] <= 0.5


def test_workers_give_the_numbers_of_one_process(tmp_path):
    """The default recogniser in two spawned processes gives the words of this one, in the items' order."""
    chapter = tmp_path / "test-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    texts = SENTENCES + ["i would like to check my balance"]
    for i, text in enumerate(texts):
        sf.write(chapter / f"84-121123-{i:04d}.flac", speak(text), 16_000)
    (chapter / "84-121123.trans.txt").write_text("".join(f"84-121123-{i:04d} {t.upper()}\n" for i, t in enumerate(texts)))
    one, two = evaluate_asr(tmp_path), evaluate_asr(tmp_path, workers=2)
    assert one["workers"] == 1 and two["workers"] == 2
    for key in ("wer", "utterances", "ref_words", "substitutions", "deletions", "insertions"):
        assert two[key] == one[key], key
    assert two["mean_confidence"] == pytest.approx(one["mean_confidence"], rel=1e-4)  # float sums, thread counts
    assert two["wall_s"] > 0 and two["rtf"] > 0


def test_unknown_layout_is_explained(tmp_path):
    with pytest.raises(ValueError, match="trans.txt"):
        evaluate_asr(tmp_path)
    with pytest.raises(FileNotFoundError):
        evaluate_asr(tmp_path / "missing")


@pytest.mark.data
@pytest.mark.slow
def test_real_sphinx_testdata(shared_data, bank_recognizer):
    root = require_dataset(shared_data, "asr_pocketsphinx_testdata")
    from apps.customer_service.speech.sphinx import SphinxConfig, SphinxRecognizer

    out = evaluate_asr(root / "cards", recognizer=SphinxRecognizer(SphinxConfig(lm="bank")))
    assert out["utterances"] == 5
    # the bank LM has never seen playing cards; it must still find most of the words
    assert out["wer"] < 0.8


@pytest.mark.data
@pytest.mark.slow
def test_real_fsdd_digits_on_training_speakers(shared_data, bank_recognizer):
    root = require_dataset(shared_data, "fsdd")
    out = evaluate_asr(root, recognizer=bank_recognizer, exclude_speakers={"george", "lucas", "jackson", "nicolas"},
                       limit=30)
    assert out["utterances"] == 30 and out["digit_accuracy"] >= 0.6


def test_spoken_card_redaction_end_to_end(bank_recognizer):
    from apps.customer_service.speech import tts
    from apps.customer_service.speech.evaluate import evaluate_spoken_card_redaction

    if not tts.available():
        pytest.skip("espeak-ng not installed")
    out = evaluate_spoken_card_redaction(2, recognizer=bank_recognizer)
    assert out["calls"] == 2.0 and 0.0 <= out["digit_wer"] <= 1.0
    assert out["card_leak_free"] >= out["card_fully_redacted"]
    assert out["card_leak_free"] == 1.0  # both calls: no four true digits in a row survive
