"""evaluate_asr over generated LibriSpeech / FSDD / Sphinx layouts, and over the real test data."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from apps.customer_service.speech.evaluate import (
    evaluate_asr,
    find_layout,
    fsdd_items,
    librispeech_items,
    scoring_text,
    sphinx_items,
)
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


# What macOS leaves beside every file it copies to a foreign disk: binary, not UTF-8.
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \xff\xfe"


def test_hidden_files_and_folders_are_not_read_as_data(tmp_path):
    libri = tmp_path / "libri" / "test-clean" / "84" / "121123"
    libri.mkdir(parents=True)
    (libri / "84-121123-0000.flac").write_bytes(b"")
    (libri / "84-121123.trans.txt").write_text("84-121123-0000 HELLO\n")
    (libri / "._84-121123.trans.txt").write_bytes(APPLEDOUBLE)
    trash = tmp_path / "libri" / ".Trashes" / "501"
    trash.mkdir(parents=True)
    (trash / "1-2.trans.txt").write_text("1-2-0000 DELETED\n")  # its audio is gone: would be refused
    assert [(p.name, words) for p, words in librispeech_items(tmp_path / "libri")] == [("84-121123-0000.flac", "HELLO")]

    cards = tmp_path / "sphinx" / "cards"
    cards.mkdir(parents=True)
    (cards / "001.wav").write_bytes(b"")
    (cards / "cards.fileids").write_text("001\n")
    (cards / "cards.transcription").write_text("<s> ten of clubs </s> (001)\n")
    (cards / "._cards.transcription").write_bytes(APPLEDOUBLE)
    (cards / "._cards.fileids").write_bytes(APPLEDOUBLE)
    assert find_layout(tmp_path / "sphinx") == "sphinx"
    assert [(p.name, words) for p, words in sphinx_items(tmp_path / "sphinx")] == [("001.wav", "ten of clubs")]

    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    (recordings / "0_jo_1.wav").write_bytes(b"")
    (recordings / "._0_jo_1.wav").write_bytes(APPLEDOUBLE)
    assert [p.name for p, _ in fsdd_items(tmp_path / "fsdd")] == ["0_jo_1.wav"]


def test_a_transcript_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "84-121123.trans.txt").write_bytes(b"84-121123-0000 CAF\xc9\n")  # Latin-1
    with pytest.raises(ValueError, match=r"84-121123\.trans\.txt is not UTF-8"):
        librispeech_items(tmp_path)


def test_upper_case_audio_extensions_are_read(tmp_path):
    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for name in ("8_jo_1.WAV", "9_jo_1.Wav"):
        (recordings / name).write_bytes(b"")
    assert find_layout(tmp_path / "fsdd") == "fsdd"
    assert [(p.name, digit) for p, digit in fsdd_items(tmp_path / "fsdd")] == [("8_jo_1.WAV", "eight"), ("9_jo_1.Wav", "nine")]

    chapter = tmp_path / "libri" / "84" / "121123"
    chapter.mkdir(parents=True)
    (chapter / "84-121123-0000.FLAC").write_bytes(b"")
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 HELLO\n")
    assert [p.name for p, _ in librispeech_items(tmp_path / "libri")] == ["84-121123-0000.FLAC"]


def test_sphinxtrain_layout_finds_audio_under_wav(tmp_path):
    """sphinxtrain databases (AN4) keep ``etc/<db>_test.transcription`` + ``.fileids`` beside ``wav/<fileid>.wav``."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "wav" / "cards").mkdir(parents=True)
    (tmp_path / "wav" / "cards" / "001.wav").write_bytes(b"")
    (tmp_path / "etc" / "db_test.fileids").write_text("cards/001\n")
    (tmp_path / "etc" / "db_test.transcription").write_text("<s> ten of clubs </s> (001)\n")
    assert sphinx_items(tmp_path) == [(tmp_path / "wav" / "cards" / "001.wav", "ten of clubs")]


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


class _ByLength:
    """A recogniser that says the sentence of the recording's length (whole seconds): a reference read beside
    the wrong recording then scores a word error rate above 0."""

    def __init__(self, sentences: dict[int, str]):
        self.sentences = sentences

    def transcribe(self, samples, sample_rate, *, mode="default"):
        from types import SimpleNamespace

        return SimpleNamespace(text=self.sentences[round(len(samples) / sample_rate)], confidence=0.9)


def _sphinxtrain_db(root, utterances: list[tuple[str, str, float]], *, name: str = "bank_test") -> None:
    """``etc/<name>.fileids`` + ``etc/<name>.transcription`` + ``wav/<fileid>.wav`` (a tone of the given seconds)."""
    (root / "etc").mkdir(parents=True)
    for fileid, _, seconds in utterances:
        wav = root / "wav" / f"{fileid}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * 16_000)) / 16_000
        sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16), 16_000)
    (root / "etc" / f"{name}.fileids").write_text("".join(f"{f}\n" for f, _, _ in utterances))
    # sphinxtrain writes "<s> words </s> (id)"; some databases drop the sentence marks
    lines = [f"<s> {text.upper()} </s> ({f.rsplit('/', 1)[-1]})" if i % 2 == 0 else f"{text} ({f.rsplit('/', 1)[-1]})"
             for i, (f, text, _) in enumerate(utterances)]
    (root / "etc" / f"{name}.transcription").write_text("\n".join(lines) + "\n")


def test_sphinxtrain_database_pairs_each_fileid_with_its_own_line(tmp_path):
    """Two speakers' utterance 001: line i of the transcription is line i of the fileids (sphinxtrain's rule),
    so each reference meets its own recording (looked up by the id alone, both once met spk2's)."""
    utterances = [("spk1/001", "please cancel my card", 1.0), ("spk2/001", "my transfer has not arrived", 2.0),
                  ("spk2/002", "check my balance", 3.0)]
    _sphinxtrain_db(tmp_path, utterances)
    assert find_layout(tmp_path) == "sphinx"
    assert sphinx_items(tmp_path) == [(tmp_path / "wav" / f"{f}.wav", text.upper() if i % 2 == 0 else text)
                                      for i, (f, text, _) in enumerate(utterances)]
    out = evaluate_asr(tmp_path, recognizer=_ByLength({round(s): t for _, t, s in utterances}))
    assert out["utterances"] == 3 and out["ref_words"] == 12 and out["wer"] == 0.0


def test_sphinxtrain_database_with_missing_audio_or_mismatched_lists_is_refused(tmp_path):
    utterances = [("spk1/001", "please cancel my card", 1.0), ("spk2/001", "my transfer has not arrived", 1.0)]
    _sphinxtrain_db(tmp_path / "missing", utterances)
    (tmp_path / "missing" / "wav" / "spk2" / "001.wav").unlink()
    with pytest.raises(ValueError, match=r"no audio for 001 \(fileid spk2/001"):
        sphinx_items(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):  # still what it was for the other layouts' callers
        evaluate_asr(tmp_path / "missing", recognizer=_ByLength({1: "x"}))

    _sphinxtrain_db(tmp_path / "short", utterances)
    (tmp_path / "short" / "etc" / "bank_test.fileids").write_text("spk1/001\n")
    with pytest.raises(ValueError, match="2 utterances but .*bank_test.fileids lists 1"):
        sphinx_items(tmp_path / "short")

    _sphinxtrain_db(tmp_path / "swapped", utterances)
    (tmp_path / "swapped" / "etc" / "bank_test.fileids").write_text("spk1/001\nspk2/002\n")
    with pytest.raises(ValueError, match="line 2 is utterance '001' but line 2 of .*bank_test.fileids is 'spk2/002'"):
        sphinx_items(tmp_path / "swapped")


def test_missing_audio_is_refused_alike_in_every_layout(tmp_path):
    chapter = tmp_path / "libri" / "84" / "121123"
    chapter.mkdir(parents=True)
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 HELLO\n")
    with pytest.raises(ValueError, match="no audio for 84-121123-0000"):
        librispeech_items(tmp_path / "libri")
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "cards.transcription").write_text("<s> ten of clubs </s> (001)\n")
    with pytest.raises(FileNotFoundError, match="no audio for 001"):
        sphinx_items(tmp_path / "cards")


def test_sphinx_references_hold_only_the_words_said(tmp_path):
    """sphinxtrain's non-speech entries (silences, noises) are no words the recogniser missed: kept, "<sil>" was
    scored as the word "sil" and a recogniser that got every word right scored a WER above 0. Words that name a
    noise, an unknown word and a pronunciation variant's word stay."""
    utterances = [("spk1/001", "<sil> please cancel ++BREATH++ my card [NOISE]", 1.0),
                  ("spk1/002", "the noise <sil> was +COUGH+ loud ++LIP_SMACK++ read(2) it", 2.0),
                  ("spk2/001", "<s> <sil> call <unk> now [SPEECH] <sil> </s>", 3.0)]
    _sphinxtrain_db(tmp_path, utterances)
    assert [words for _, words in sphinx_items(tmp_path)] == ["PLEASE CANCEL MY CARD", "the noise was loud read it",
                                                              "CALL <UNK> NOW"]
    said = {1: "please cancel my card", 2: "the noise was loud read it", 3: "call <unk> now"}
    out = evaluate_asr(tmp_path, recognizer=_ByLength(said))
    assert out["ref_words"] == 13 and out["wer"] == 0.0 and out["wer_normalised"] == 0.0

    # the pocketsphinx test data's layout: a transcription with its fileids beside the recordings
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "001.wav").write_bytes(b"")
    (cards / "cards.fileids").write_text("001\n")
    (cards / "cards.transcription").write_text("<s> ten <sil> of ++NOISE++ clubs [NOISE] </s> (001)\n")
    assert sphinx_items(cards) == [(cards / "001.wav", "ten of clubs")]
