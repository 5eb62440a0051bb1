"""openSMILE functionals, the linear voice model, its bundle and its use by the service."""

from __future__ import annotations

import numpy as np
import pytest

from apps.customer_service.data import VOICE_LABELS
from apps.customer_service.smile import FEATURE_SETS, feature_names, smile_features, voice_features
from tests.apps.customer_service.conftest import tone, wav_bytes


@pytest.mark.parametrize("name", ["egemaps", "compare"])
def test_functionals_shape_and_finite(name):
    f = smile_features(tone(1.0), feature_set=name)
    assert f.shape == (FEATURE_SETS[name][1],) and f.dtype == np.float32 and np.all(np.isfinite(f))
    assert len(feature_names(name)) == f.size


def test_egemaps_pitch_follows_the_voice():
    i = feature_names("egemaps").index("F0semitoneFrom27.5Hz_sma3nz_amean")
    low = smile_features(tone(1.0, f0=110), feature_set="egemaps")[i]
    high = smile_features(tone(1.0, f0=220), feature_set="egemaps")[i]
    assert abs((high - low) - 12.0) < 1.5  # one octave = 12 semitones


def test_gain_does_not_move_the_functionals():
    a = smile_features(tone(1.0, loud=0.1), feature_set="egemaps")
    b = smile_features(tone(1.0, loud=0.6), feature_set="egemaps")
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)  # peak-normalised before openSMILE


def test_blocks_concatenate_in_order_and_refuse_silence():
    from apps.customer_service.features import FEATURE_DIM

    x = voice_features(tone(1.0), ("stats", "egemaps"))
    assert x.shape == (FEATURE_DIM + 88,)
    np.testing.assert_allclose(x[FEATURE_DIM:], smile_features(tone(1.0), feature_set="egemaps"), rtol=1e-5)
    with pytest.raises(ValueError, match="too short or silent"):
        voice_features(np.zeros(16000, np.float32), ("egemaps",))


def _toy(n_per=12, dim=300, seed=0):
    """High-dimensional (dim > clips) Gaussian classes for three labels of each corpus."""
    rng = np.random.default_rng(seed)
    labels = ["neutral", "angry", "sad", "calm", "boredom"]
    centres = rng.normal(0, 1.0, (len(labels), dim))
    xs, ys, spk, corp = [], [], [], []
    for k, name in enumerate(labels):
        for i in range(n_per):
            corpus = "emodb" if name == "boredom" or (name != "calm" and i % 2) else "ravdess"
            xs.append(centres[k] + rng.normal(0, 3.0, dim))
            ys.append(VOICE_LABELS.index(name))
            spk.append(f"{corpus}:{i % 4}")
            corp.append(corpus)
    return np.array(xs, np.float32), np.array(ys), np.array(spk), np.array(corp)


@pytest.mark.parametrize("kind", ["logreg", "svm"])
def test_row_space_fit_equals_the_full_fit(kind):
    from apps.customer_service.train import _fit_linear, _Standardised

    x, y, _, _ = _toy()
    st = _Standardised(x)
    assert st.basis is not None and st.z.shape == (len(y), len(y))
    reduced = st.params(*_fit_linear(st.z, y, kind, 1e-2))
    z_full = (x - st.mean) / st.scale
    coef, intercept = _fit_linear(z_full, y, kind, 1e-2)
    s_red = z_full @ reduced["coef"].T + reduced["intercept"]
    s_full = z_full @ coef.T + intercept
    seen = sorted(set(y.tolist()))
    np.testing.assert_allclose(s_red[:, seen], s_full[:, seen], atol=2e-2 * np.abs(s_full[:, seen]).max())


def test_cross_validation_is_speaker_independent_and_learns():
    from apps.customer_service.train import LinearVoiceConfig, cross_validate_linear

    x, y, spk, corp = _toy(n_per=16, dim=60)
    cfg = LinearVoiceConfig(blocks=("egemaps",), kind="logreg", grid=(1e-3, 1e-1), inner_folds=2)
    metrics, oof, choices, _ = cross_validate_linear(x, y, spk, corp, cfg, log=lambda s: None)
    assert oof.shape == (len(y), len(VOICE_LABELS))
    np.testing.assert_allclose(oof.sum(1), 1.0, atol=1e-4)
    assert metrics["ravdess_macro_f1"] > 0.6 and metrics["emodb_macro_f1"] > 0.6
    assert all(c["C"] in cfg.grid and c["temperature"] > 0 for c in choices)


def test_perturbed_copies_join_only_their_own_clips_training_part():
    """Labels carry no signal; each clip's copy is the clip itself. A held-out clip's copy in its own
    training part would be memorised (more features than clips) and scored right: chance must stay chance."""
    from apps.customer_service.train import LinearVoiceConfig, cross_validate_linear, with_copies

    x, _, spk, corp = _toy(n_per=16, dim=300)
    y = np.random.default_rng(1).permutation(np.array([VOICE_LABELS.index(n) for n in ("neutral", "angry", "sad")] * 27)[:len(x)])
    copies = np.stack([x, x], axis=1)
    xs, ys = with_copies(x[:3], y[:3], copies[:3])
    assert xs.shape == (9, x.shape[1]) and list(ys) == list(y[:3]) * 3
    cfg = LinearVoiceConfig(blocks=("egemaps",), grid=(1e2,), inner_folds=2, speed_rates=(0.9, 1.1))
    _, oof, _, _ = cross_validate_linear(x, y, spk, corp, cfg, log=lambda s: None, copies=copies)
    assert (oof.argmax(1) == y).mean() < 0.6


def test_other_views_of_the_clips_are_scored_by_each_folds_model():
    from apps.customer_service.train import LinearVoiceConfig, cross_validate_linear

    x, y, spk, corp = _toy(n_per=16, dim=60)
    cfg = LinearVoiceConfig(blocks=("egemaps",), kind="logreg", grid=(1e-1,), inner_folds=2)
    noise = np.random.default_rng(2).normal(0, 50, x.shape)
    metrics, oof, _, oof_views = cross_validate_linear(x, y, spk, corp, cfg, log=lambda s: None,
                                                       views={"same": x, "noisy": x + noise})
    assert metrics["same_ravdess_macro_f1"] == metrics["ravdess_macro_f1"]  # the same features: the same scores
    assert metrics["noisy_ravdess_macro_f1"] < metrics["ravdess_macro_f1"]
    np.testing.assert_array_equal(oof_views["same"], oof)


def test_parallel_cross_validation_gives_the_same_results():
    from apps.customer_service.train import LinearVoiceConfig, cross_validate_linear, select_linear_c

    x, y, spk, corp = _toy(n_per=16, dim=40)
    copies = (x + np.random.default_rng(3).normal(0, 1, x.shape))[:, None]
    cfg = LinearVoiceConfig(blocks=("egemaps",), kind="logreg", grid=(1e-3, 1e-1), inner_folds=2)
    one = cross_validate_linear(x, y, spk, corp, cfg, log=lambda s: None, copies=copies, views={"v": x * 2})
    two = cross_validate_linear(x, y, spk, corp, cfg, log=lambda s: None, copies=copies, views={"v": x * 2}, workers=2)
    assert one[0] == two[0] and one[2] == two[2]
    np.testing.assert_array_equal(one[1], two[1])
    np.testing.assert_array_equal(one[3]["v"], two[3]["v"])
    assert select_linear_c(x, y, spk, corp, cfg, copies) == select_linear_c(x, y, spk, corp, cfg, copies, workers=2)


def test_training_copies_are_speed_then_telephone(monkeypatch, tmp_path):
    from apps.customer_service import train as T

    n, f = 5, 3
    monkeypatch.setattr(T, "speed_copies", lambda root, blocks, rates, cache, log=print: np.ones((n, len(rates), f)))
    monkeypatch.setattr(T, "telephone_features", lambda root, blocks, cache, log=print: np.full((n, f), 2.0))
    both = T.training_copies(tmp_path, T.LinearVoiceConfig(speed_rates=(0.9, 1.1), telephone_copies=True), tmp_path)
    assert both.shape == (n, 3, f) and (both[:, :2] == 1).all() and (both[:, 2] == 2).all()
    assert T.training_copies(tmp_path, T.LinearVoiceConfig(speed_rates=(), telephone_copies=True), tmp_path).shape == (n, 1, f)
    assert T.training_copies(tmp_path, T.LinearVoiceConfig(speed_rates=(), telephone_copies=False), tmp_path) is None
    desc = T._linear_description(T.LinearVoiceConfig(speed_rates=(), telephone_copies=True), 10)
    assert "telephone-band (4 kHz) copy" in desc


def test_telephone_features_lose_the_upper_band(tmp_path):
    import soundfile as sf

    from apps.customer_service.train import extract_feature_block

    t = np.arange(16000) / 16000
    wide = (0.3 * np.sin(2 * np.pi * 150 * t) + 0.3 * np.sin(2 * np.pi * 5500 * t)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wide, 16000)
    clip = type("Clip", (), {"path": tmp_path / "a.wav"})()
    plain = extract_feature_block([clip], "egemaps", log=lambda s: None)
    phone = extract_feature_block([clip], "egemaps", log=lambda s: None, line="telephone")
    assert plain.shape == phone.shape and not np.allclose(plain, phone)


@pytest.fixture(scope="module")
def linear_bundle(tmp_path_factory):
    """A linear voice bundle on eGeMAPS fitted to generated low/high voices (real extraction)."""
    from apps.customer_service.model import linear_voice_state
    from apps.customer_service.train import fit_linear_voice
    from core.bundle import ModelCard, save_bundle

    rng = np.random.default_rng(0)
    audio, y = [], []
    for i in range(8):
        low = i % 2 == 0
        audio.append(tone(0.8, f0=rng.uniform(100, 130) if low else rng.uniform(240, 300),
                          loud=0.2 if low else 0.6))
        y.append(VOICE_LABELS.index("sad" if low else "angry"))
    x = np.stack([voice_features(a, ("egemaps",)) for a in audio])
    params = fit_linear_voice(x, np.array(y), "logreg", 1.0)
    config = {"type": "linear", "labels": list(VOICE_LABELS), "blocks": ["egemaps"], "kind": "logreg",
              "C": 1.0, "temperature": 1.0, "speaker_norm": False}
    root = tmp_path_factory.mktemp("linear_voice")
    save_bundle(root, linear_voice_state(params), config, ModelCard(name="tiny-linear-voice", version="0.0.1", task="test"))
    return root, params


def test_linear_bundle_round_trips(linear_bundle):
    from apps.customer_service.model import LinearVoiceModel, load_voice_model

    root, params = linear_bundle
    model = load_voice_model(root)
    assert isinstance(model, LinearVoiceModel) and model.blocks == ("egemaps",) and model.sha256
    for k in ("mean", "scale", "coef", "intercept"):
        np.testing.assert_array_equal(getattr(model, k), params[k])
    x = np.stack([model.features(tone(0.8, f0=115, loud=0.2)), model.features(tone(0.8, f0=270, loud=0.6))])
    p = model.predict_proba(x)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert [VOICE_LABELS[i] for i in p.argmax(1)] == ["sad", "angry"]
    with pytest.raises(ValueError, match="expected 88 features"):
        model.predict_proba(np.zeros((1, 10)))


def test_service_uses_the_linear_model(linear_bundle, cs_settings):
    from apps.customer_service.model import load_fusion, load_text_classifier, load_voice_model
    from apps.customer_service.service import CallRequest, CustomerServiceEngine
    from apps.customer_service.speech import create_recognizer

    engine = CustomerServiceEngine(
        cs_settings,
        intent=load_text_classifier(cs_settings.intent_bundle),
        text_emotion=load_text_classifier(cs_settings.text_emotion_bundle),
        voice=load_voice_model(linear_bundle[0]),
        fusion=load_fusion(cs_settings.fusion_bundle),
        recognizer=create_recognizer("pocketsphinx", topn=2, bestpath=False),
    )
    audio = np.concatenate([tone(1.2, 120, loud=0.2), np.zeros(8000, np.float32), tone(1.2, 260, loud=0.6)])
    out = engine.analyze(CallRequest(audio=wav_bytes(audio)))
    voiced = [s for s in out["segments"] if s.get("voice")]
    assert voiced, "the voice branch read at least one segment"
    for s in voiced:
        assert abs(sum(s["voice"].values()) - 1) < 1e-3 and set(s["voice"]) == set(VOICE_LABELS)
        assert abs(sum(s["contact_centre"].values()) - 1) < 1e-3
        assert s["modality_weights"]["voice"] > 0
    assert out["model_versions"]["voice"] == "0.0.1"


def test_corpus_evaluation_reads_the_bundle_blocks(linear_bundle, tmp_path):
    from apps.customer_service.evaluate import evaluate_voice_emotion
    from tests.apps.customer_service.test_data import _write_ravdess

    root = tmp_path / "ravdess"
    _write_ravdess(root, actors=(1, 2, 3, 4, 5), emotions=((1, "neutral"), (5, "angry")))
    m = evaluate_voice_emotion(root, bundle=linear_bundle[0], speaker_norm_bundle=linear_bundle[0])
    assert m["n"] == 10 and m["speakers"] == 5
    assert 0 <= m["macro_f1"] <= 1 and 0 <= m["speaker_norm_macro_f1"] <= 1
