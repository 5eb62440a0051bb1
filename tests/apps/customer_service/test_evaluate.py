from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from apps.customer_service.train import speaker_normalize
from tests.apps.customer_service.conftest import INTENTS
from tests.apps.customer_service.test_data import _write_emodb, _write_ravdess


@pytest.fixture()
def tiny_env(cs_tiny_bundles, monkeypatch):
    """Point the settings (and so the CLI) at the tiny bundles."""
    from apps.customer_service.settings import get_settings

    for key, name in (("INTENT_BUNDLE", "intent"), ("TEXT_EMOTION_BUNDLE", "text_emotion"),
                      ("VOICE_EMOTION_BUNDLE", "voice"), ("DIALOGUE_ACTS_BUNDLE", "dialogue_acts")):
        monkeypatch.setenv(f"TRIPTYCH_CUSTOMER_SERVICE_{key}", str(cs_tiny_bundles[name]))
    monkeypatch.setenv("TRIPTYCH_CUSTOMER_SERVICE_VOICE_EMOTION_SPEAKER_NORM_BUNDLE", str(cs_tiny_bundles["voice"]))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_speaker_normalize_removes_speaker_offsets():
    rng = np.random.default_rng(0)
    speakers = np.repeat(np.array(["a", "b", "c"]), 20)
    x = rng.normal(0, 1, (60, 4)) + np.repeat(np.array([[0.0], [10.0], [-5.0]]), 20, axis=0)
    z = speaker_normalize(x.astype(np.float32), speakers)
    for s in "abc":
        assert np.allclose(z[speakers == s].mean(0), 0, atol=1e-5)
    few = speaker_normalize(x[:3].astype(np.float32), speakers[:3], min_clips=5)  # too few: global centring
    assert np.all(np.isfinite(few))


def test_cli_intent_eval_writes_flat_json(tiny_env, tmp_path):
    import typer

    from apps.customer_service.cli import evaluate

    csv_path = tmp_path / "test.csv"
    rows = ["text,category"] + [f"query number {i} about {c},{c}" for i, c in enumerate(INTENTS * 3)]
    csv_path.write_text("\n".join(rows) + "\n")
    app = typer.Typer()
    app.command()(evaluate)
    out = tmp_path / "m.json"
    r = CliRunner().invoke(app, ["--intent", str(csv_path), "--json", str(out)])
    assert r.exit_code == 0, r.output
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"accuracy", "macro_f1"} and all(isinstance(v, float) for v in metrics.values())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 12
    bad = CliRunner().invoke(app, ["--intent", str(csv_path), "--text-emotion", str(csv_path)])
    assert bad.exit_code != 0 and "exactly one" in bad.output


def test_dialogue_eval_scores_turns_and_calls(tiny_env, tmp_path):
    from apps.customer_service.evaluate import evaluate_dialogue

    folder = tmp_path / "dialogue"
    folder.mkdir()
    with pytest.raises(FileNotFoundError):
        evaluate_dialogue(folder)
    turns = [{"text": "hello there", "acts": ["greet"], "style": "typed"},
             {"text": "my card has not arrived", "acts": ["request"], "style": "spoken"},
             {"text": "my name is jo", "acts": [], "style": "spoken"}]
    (folder / "heldout_turns.jsonl").write_text("".join(json.dumps(t) + "\n" for t in turns))
    calls = [{"turns": ["hi", "where is my card", "thanks bye"], "asked": ["card_arrival"], "style": "spoken"},
             {"turns": ["my card was stolen and what is the rate"], "asked": ["lost_or_stolen_card", "exchange_rate"],
              "style": "spoken"}]
    (folder / "heldout_calls.jsonl").write_text("".join(json.dumps(c) + "\n" for c in calls))
    m = evaluate_dialogue(folder)
    assert m["turns"] == 3 and m["turns_spoken"] == 2 and m["calls"] == 2
    assert m["request_support"] == 1 and m["greet_support"] == 1
    for key in ("request_accuracy", "request_accuracy_spoken", "call_intent_in_asked", "all_asked_listed",
                "call_intent_in_asked_whole_text", "all_asked_in_top3_whole_text"):
        assert 0 <= m[key] <= 1
    (folder / "heldout_turns.jsonl").write_text(json.dumps({"text": "x", "acts": ["complain"]}) + "\n")
    with pytest.raises(ValueError, match="complain"):
        evaluate_dialogue(folder)
    (folder / "heldout_turns.jsonl").unlink()
    (folder / "heldout_calls.jsonl").write_text(json.dumps({"turns": ["x"], "asked": ["no_such_intent"]}) + "\n")
    with pytest.raises(ValueError, match="no_such_intent"):
        evaluate_dialogue(folder)


def test_dialogue_eval_reads_jsonl_with_a_byte_order_mark(tiny_env, tmp_path):
    from apps.customer_service.evaluate import evaluate_dialogue

    turn = json.dumps({"text": "hello there", "acts": ["greet"], "style": "typed"})
    (tmp_path / "heldout_turns.jsonl").write_text("\ufeff" + turn + "\n", encoding="utf-8")
    assert evaluate_dialogue(tmp_path)["turns"] == 1


def test_voice_eval_refuses_missing_audio_before_loading_the_model(tmp_path, monkeypatch):
    from apps.customer_service import model
    from apps.customer_service.evaluate import evaluate_voice_emotion

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the corpus was checked")

    monkeypatch.setattr(model, "load_voice_model", no_model)
    _write_ravdess(tmp_path, actors=(19,))
    (tmp_path / "audio_flac" / "Actor_19" / "03-01-05-01-01-01-19.flac").unlink()
    with pytest.raises(ValueError, match="03-01-05-01-01-01-19.flac"):
        evaluate_voice_emotion(tmp_path)


def test_text_emotion_eval_scores_single_label_rows(tiny_env, tmp_path):
    from apps.customer_service.evaluate import evaluate_text_emotion

    tsv = tmp_path / "test.tsv"
    tsv.write_text("great stuff\t3\ta\nugh\t0,1\tb\nsad day\t5\tc\nok\t4\td\n")
    m = evaluate_text_emotion(tsv)
    assert m["n"] == 3 and set(m) >= {"macro_f1", "accuracy"}
    assert m["n_skipped_multi_label"] == 1  # "ugh" has two labels: the output says it was left out


def test_voice_eval_on_both_layouts(tiny_env, tmp_path):
    from apps.customer_service.evaluate import evaluate_voice_emotion

    rav, emo = tmp_path / "ravdess", tmp_path / "emodb"
    rav.mkdir()
    _write_ravdess(rav, actors=(19, 20))
    _write_emodb(emo)
    for root, n in ((rav, 4), (emo, 3)):
        m = evaluate_voice_emotion(root)
        assert m["n"] == n and 0 <= m["macro_f1"] <= 1 and "speaker_norm_macro_f1" in m
        assert m["telephone_band"] == 0.0
    assert evaluate_voice_emotion(emo, telephone=True)["telephone_band"] == 1.0


def test_telephone_band_keeps_speech_band_and_removes_the_rest():
    from apps.customer_service.speech.audio import telephone_band

    t = np.arange(16000) / 16000
    low, high = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 6000 * t)
    assert telephone_band(low).shape == low.shape
    assert np.abs(telephone_band(low)[200:-200] - low[200:-200]).max() < 0.05  # 1 kHz passes
    assert np.abs(telephone_band(high)[200:-200]).max() < 0.01  # 6 kHz is gone


def test_g711_line_band_limits_and_quantises_like_mu_law():
    from apps.customer_service.speech.audio import g711_line, telephone_band

    t = np.arange(16000) / 16000
    speech_like = 0.5 * np.sin(2 * np.pi * 700 * t) + 0.05 * np.sin(2 * np.pi * 2300 * t)
    out = g711_line(speech_like)
    assert out.shape == speech_like.shape and out.dtype == np.float32
    assert np.abs(g711_line(np.sin(2 * np.pi * 6000 * t))[200:-200]).max() < 0.01  # nothing above 4 kHz
    ref = telephone_band(speech_like)[200:-200]
    err = out[200:-200] - ref
    snr_db = 10 * np.log10(np.mean(ref ** 2) / np.mean(err ** 2))
    assert 25 < snr_db < 50  # 8-bit mu-law: ~38 dB, not lossless, not garbage


@pytest.mark.parametrize(("content", "message"), [("hello\n", "lacks the BANKING77 columns"),
                                                  ("foo,bar\n1,2\n", "lacks the BANKING77 columns"),
                                                  ("text,category\n", "no rows"),
                                                  (b"\xff\xfe\x00binary", "not UTF-8 text")])
def test_load_banking77_says_what_layout_it_expects(tmp_path, content, message):
    from apps.customer_service.data import load_banking77

    path = tmp_path / "intent.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        load_banking77(path)


def test_macro_f1_counts_the_classes_a_file_holds_not_every_class_the_model_knows():
    """A 40-row BANKING77 file read perfectly scored macro-F1 0.30: the 54 intents it never asks about were 0 each."""
    import numpy as np

    from apps.customer_service.evaluate import _scores

    y = np.array([0, 0, 1, 1, 2])
    perfect = _scores(y, y.copy(), list(range(77)))
    assert perfect["macro_f1"] == 1.0 and perfect["accuracy"] == 1.0
    wrong_class = _scores(y, np.array([0, 0, 1, 1, 5]), list(range(77)))  # a class predicted, never asked: counts
    assert wrong_class["macro_f1"] == np.mean([1.0, 1.0, 0.0, 0.0])
