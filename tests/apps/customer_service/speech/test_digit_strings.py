"""Digit strings without pauses: string building, CTC decoding, the bundle and the ASR hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.customer_service.speech import digit_strings as DS
from apps.customer_service.speech import digits as D

from .test_digits import _tone


def _pack(path):
    waves, y, spk = [], [], []
    for s, speaker in enumerate(("ann", "bob")):
        for d in range(10):
            waves.append(_tone(300 + 150 * d, 0.3, seed=s * 100 + d))
            y.append(d)
            spk.append(speaker)
    np.savez(path, pcm=(np.concatenate(waves) * 32767).astype(np.int16), lengths=np.array([len(w) for w in waves]),
             y=np.array(y), speakers=np.array(spk), names=np.array([f"{d}_{s}_0.wav" for d, s in zip(y, spk)]))
    return path


def test_strings_are_joined_upsampled_and_framed_by_noise():
    a, b = _tone(400, 0.3), _tone(900, 0.3)
    x = DS.make_string([a, b], [0.1])
    edge = int(DS.EDGE_S * 16000)
    assert len(x) == 2 * (len(a) + len(b) + 800) + 2 * edge
    assert np.abs(x[:edge]).max() < 1e-3 and np.isclose(np.abs(x).max(), DS.PEAK, atol=0.01)
    # a gap of 0.1 s: silence between the two words at 16 kHz
    gap = x[edge + 2 * len(a) + 50:edge + 2 * len(a) + 1550]
    assert np.abs(gap).max() < 1e-3
    one, two = DS.test_strings([a, b], np.array([4, 9]), 5, seed=3), DS.test_strings([a, b], np.array([4, 9]), 5, seed=3)
    assert [d for _c, _g, d in one] == [d for _c, _g, d in two] and all(4 <= len(d) <= 8 for _c, _g, d in one)


def test_edit_distance_counts_substitutions_insertions_deletions():
    assert DS.edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert DS.edit_distance([1, 2, 3], [1, 5, 3]) == 1
    assert DS.edit_distance([1, 2, 3], [1, 3]) == 1
    assert DS.edit_distance([1, 2], [1, 2, 2, 7]) == 2


@pytest.fixture(scope="module")
def string_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strings")
    pack = _pack(tmp / "pack.npz")
    cfg = DS.StringTrainConfig(steps=2, batch_size=2, length=(2, 3))
    held = DS.run_strings(pack, tmp / "run", "ann", cfg=cfg, device="cpu", n_test=3)
    DS.run_strings(pack, tmp / "run", "all", cfg=cfg, device="cpu")
    metrics = DS.finalize_strings(tmp / "run", tmp / "bundle")
    return tmp / "bundle", held, metrics


def test_training_scores_the_held_out_speaker_and_bundles_the_refit(string_bundle):
    bundle, held, metrics = string_bundle
    assert 0.0 <= held["digit_error_rate"] and 0.0 <= held["exact_strings"] <= 1.0 and held["n_strings"] == 3
    assert metrics["loso_digit_error_rate_ann"] == round(held["digit_error_rate"], 4)
    assert "leave-one-speaker-out" in (bundle / "MODEL_CARD.md").read_text()
    model = DS.shipped_string_model(bundle)
    assert model is not None and model.version.startswith("customer-service-digit-strings")


def test_ctc_decoding_collapses_repeats_and_the_asr_hook_uses_the_model(string_bundle):
    bundle, _, _ = string_bundle
    model = DS.shipped_string_model(bundle)
    saved = {k: v.clone() for k, v in model.out.state_dict().items()}
    try:
        with torch.no_grad():  # every window says "three": one word after collapsing
            model.out.weight.zero_()
            model.out.bias.fill_(-10.0)
            model.out.bias[3] = 10.0
        run_together = np.repeat(np.concatenate([_tone(f, 0.3) for f in (500, 800, 650, 900, 450)]), 2)  # 1.5 s: no single word
        words, version = DS.read_digit_string(run_together, bundle)
        assert [w.text for w in words] == ["three"] and version == model.version
        assert 0.0 <= words[0].start < words[0].end and 0.0 < words[0].confidence <= 1.0
        # digits run together (no pauses to split at): the ASR's digits mode reads them with the string model
        out = D.learned_digit_words(run_together, "digits", strings_bundle=bundle)
        assert out is not None and [w.text for w in out[0]] == ["three"]
        with torch.no_grad():  # only blanks: nothing heard, the grammar decides
            model.out.bias.fill_(-10.0)
            model.out.bias[DS.BLANK] = 10.0
        assert DS.read_digit_string(run_together, bundle) is None
        assert DS.read_digit_string(np.zeros(16000, np.float32), bundle) is None  # no speech
    finally:
        model.out.load_state_dict(saved)


def test_no_string_model_means_the_grammar_decides(tmp_path):
    assert DS.shipped_string_model(tmp_path / "none") is None
    assert DS.read_digit_string(np.repeat(_tone(500, 0.6), 2), tmp_path / "none") is None


def test_shipped_string_model_reads_digits_run_together(bank_recognizer):
    """espeak-ng en-us+klatt reading digit strings without pauses (a voice held out of the synthetic
    training speakers): the ASR's digits mode reads them with the shipped string model."""
    from .conftest import speak

    if DS.shipped_string_model() is None:
        pytest.skip("no shipped digit-string model")
    said = ["two seven zero six", "nine one two three four five six seven eight", "four five three nine one four eight eight"]
    heard = [bank_recognizer.transcribe(speak(s), mode="digits") for s in said]
    assert all(t.extra["search"] == "digit-strings" for t in heard)
    errors = sum(DS.edit_distance(s.split(), t.text.split()) for s, t in zip(said, heard))
    assert errors <= 4  # of 21 digits (3 when recorded)
