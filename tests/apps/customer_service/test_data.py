from __future__ import annotations

import csv

import numpy as np
import pytest

from apps.customer_service.data import (
    DATASET_CLASSES,
    VOICE_LABELS,
    banking77_categories,
    detect_emotion_corpus,
    load_banking77,
    load_emodb,
    load_emotion_corpus,
    load_goemotions,
    load_ravdess,
    read_audio,
    stratified_split,
)
from tests.apps.customer_service.conftest import tone


def _write_ravdess(root, actors=(1, 2), emotions=((1, "neutral"), (5, "angry"))):
    import soundfile as sf

    rows = []
    for actor in actors:
        folder = root / "audio_flac" / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for code, name in emotions:
            rel = f"audio_flac/Actor_{actor:02d}/03-01-{code:02d}-01-01-01-{actor:02d}.flac"
            sf.write(root / rel, tone(0.5, sr=48000), 48000, subtype="PCM_16")
            rows.append([rel, "03", "01", f"{code:02d}", name, "normal", "Kids are talking by the door", "01",
                         actor, "male" if actor % 2 else "female", 48000, 1, 0.5])
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "modality", "vocal_channel", "emotion_code", "emotion", "intensity", "statement",
                    "repetition", "actor", "sex", "sample_rate", "channels", "duration_s"])
        w.writerows(rows)


def _write_emodb(root):
    import soundfile as sf

    (root / "wav").mkdir(parents=True)
    rows = []
    for spk, emo, letter in (("03", "anger", "W"), ("08", "boredom", "L"), ("08", "happiness", "F")):
        name = f"{spk}a01{letter}a.wav"
        sf.write(root / "wav" / name, tone(0.5, sr=22050), 22050, subtype="PCM_16")
        rows.append([name, spk, "a01", letter, emo, "a", 2.0, 22050])
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "speaker_id", "sentence_code", "emotion_code", "emotion", "take", "duration_s", "sample_rate"])
        w.writerows(rows)


def test_ravdess_and_emodb_layouts(tmp_path):
    rav, emo = tmp_path / "ravdess", tmp_path / "emodb"
    rav.mkdir()
    _write_ravdess(rav)
    _write_emodb(emo)
    assert detect_emotion_corpus(rav) == "ravdess" and detect_emotion_corpus(emo) == "emodb"
    clips = load_ravdess(rav)
    assert [c.label for c in clips] == ["neutral", "angry"] * 2
    assert {c.speaker for c in clips} == {"ravdess:01", "ravdess:02"}
    corpus, eclips = load_emotion_corpus(emo)
    assert corpus == "emodb"
    assert [c.label for c in eclips] == ["angry", "boredom", "happy"]  # mapped into the shared space
    assert all(c.label in DATASET_CLASSES[c.corpus] for c in clips + eclips)
    audio = read_audio(clips[0].path)
    assert audio.dtype == np.float32 and abs(audio.size - 8000) <= 2  # 0.5 s at 48 kHz -> 16 kHz


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="RAVDESS"):
        detect_emotion_corpus(tmp_path)


def test_banking77_csv_with_quoted_newline(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text('text,category\n"line one\nline two",card_arrival\nhello,exchange_rate\n')
    (tmp_path / "categories.json").write_text('["card_arrival", "exchange_rate"]')
    texts, cats = load_banking77(p)
    assert texts[0] == "line one\nline two" and cats == ["card_arrival", "exchange_rate"]
    assert banking77_categories(tmp_path) == ["card_arrival", "exchange_rate"]


def test_goemotions_tsv(tmp_path):
    p = tmp_path / "dev.tsv"
    p.write_text("so happy\t3\tid1\nmixed\t0,5\tid2\n")
    texts, labels = load_goemotions(p)
    assert texts == ["so happy", "mixed"] and labels == [[3], [0, 5]]


def _add_bom(path):
    """What Excel's "CSV UTF-8" and Windows tools write: a byte-order mark before the header."""
    path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")


def test_csv_and_tsv_files_with_a_byte_order_mark_read_as_without(tmp_path):
    rav, emo = tmp_path / "ravdess", tmp_path / "emodb"
    rav.mkdir()
    _write_ravdess(rav)
    _write_emodb(emo)
    _add_bom(rav / "labels.csv")
    _add_bom(emo / "labels.csv")
    assert detect_emotion_corpus(rav) == "ravdess" and detect_emotion_corpus(emo) == "emodb"
    assert len(load_ravdess(rav)) == 4 and len(load_emodb(emo)) == 3
    banking = tmp_path / "test.csv"
    banking.write_text("text,category\nwhere is my card,card_arrival\n")
    _add_bom(banking)
    assert load_banking77(banking) == (["where is my card"], ["card_arrival"])
    goemotions = tmp_path / "test.tsv"
    goemotions.write_text("so happy\t3\tid1\n")
    _add_bom(goemotions)
    assert load_goemotions(goemotions) == (["so happy"], [[3]])


def test_emotion_corpus_listing_audio_that_is_not_there_is_refused_when_loaded(tmp_path):
    rav, emo = tmp_path / "ravdess", tmp_path / "emodb"
    rav.mkdir()
    _write_ravdess(rav)
    _write_emodb(emo)
    (rav / "audio_flac" / "Actor_02" / "03-01-05-01-01-01-02.flac").unlink()
    (emo / "wav" / "08a01La.wav").unlink()
    with pytest.raises(ValueError, match=r"1 audio file\(s\) that do not exist .*Actor_02/03-01-05-01-01-01-02\.flac"):
        load_emotion_corpus(rav)
    with pytest.raises(ValueError, match=r"labels\.csv lists 1 audio file.*08a01La\.wav"):
        load_emotion_corpus(emo)
    # training reads cached features by path: its loaders take the list as it is
    assert len(load_emodb(emo)) == 3 and len(load_emotion_corpus(rav, check_audio=False)[1]) == 4


def test_goemotions_header_row_is_skipped_and_a_bad_label_field_names_its_line(tmp_path):
    """pandas / Hugging Face exports of the (headerless) GoEmotions TSVs write ``text labels id`` first."""
    p = tmp_path / "test.tsv"
    p.write_text("text\tlabels\tid\r\nso happy\t3\tid1\r\nmixed\t0,5\tid2\r\n")
    assert load_goemotions(p) == (["so happy", "mixed"], [[3], [0, 5]])
    p.write_text("so happy\t3\tid1\nmixed\tjoy\tid2\n")
    with pytest.raises(ValueError, match=r"test\.tsv:2: label field 'joy'"):
        load_goemotions(p)
    p.write_text("so happy\tjoy\tid1\nsad\tsadness\tid2\n")  # words for labels from the first row: no header
    with pytest.raises(ValueError, match=r"test\.tsv:2: label field 'sadness'"):
        load_goemotions(p)


def test_stratified_split_keeps_every_class_and_is_disjoint():
    labels = ["a"] * 50 + ["b"] * 10 + ["c"] * 3
    tr, va = stratified_split(labels, 0.2, seed=1)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(labels)
    assert {labels[i] for i in va} == {"a", "b", "c"}


def test_voice_label_space_covers_both_corpora():
    assert set(DATASET_CLASSES["ravdess"]) | set(DATASET_CLASSES["emodb"]) == set(VOICE_LABELS)


@pytest.mark.data
def test_real_corpora_counts(shared_data):
    from tests.conftest import require_dataset

    rav = load_ravdess(require_dataset(shared_data, "ravdess"))
    emo = load_emodb(require_dataset(shared_data, "emodb"))
    assert len(rav) >= 500 and len(emo) >= 300
    assert {c.label for c in rav} == set(DATASET_CLASSES["ravdess"])
    assert {c.label for c in emo} == set(DATASET_CLASSES["emodb"])
    texts, cats = load_banking77(require_dataset(shared_data, "banking77") / "train.csv")
    assert len(texts) == 10003 and len(set(cats)) == 77
