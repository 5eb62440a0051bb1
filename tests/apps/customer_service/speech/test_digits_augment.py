"""Synthetic espeak-ng digit speakers (training data for the digit recogniser) and training with them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps.customer_service.speech import digit_augment as A
from apps.customer_service.speech import digits as D
from apps.customer_service.speech import tts


def test_voices_are_distinct_reproducible_and_keep_the_test_voice_out():
    voices = A.sample_voices(300, seed=3)
    assert len({v.name for v in voices}) == 300
    assert [v.name for v in voices] == [v.name for v in A.sample_voices(300, seed=3)]
    assert all((v.language, v.variant) not in A.HELD_OUT for v in voices)
    assert all(15 <= v.pitch < 80 and 110 <= v.speed < 220 for v in voices)
    assert A.sample_voices(5, seed=4)[0].name != voices[0].name


@pytest.fixture(scope="module")
def synth_pack(tmp_path_factory):
    if not tts.available():
        pytest.skip("espeak-ng not installed (make install-system)")
    out = tmp_path_factory.mktemp("synth") / "synth.npz"
    A.pack_synthetic(out, n_voices=2, seed=0)
    return out


def test_synthetic_pack_holds_trimmed_8k_digits_of_every_voice(synth_pack):
    waves, y, spk, _names = D.read_pack(synth_pack)
    assert len(waves) == 20 and sorted(y.tolist()) == sorted(list(range(10)) * 2)
    assert len(set(spk.tolist())) == 2 and all(s.startswith("tts:") for s in spk)
    lens = np.array([len(w) for w in waves]) / D.SAMPLE_RATE
    assert np.all((lens > 0.1) & (lens < 2.0))
    # trimmed like the real clips: at most the speech_span margin (60 ms) of silence at either end
    for w in waves:
        loud = np.flatnonzero(D.frame_db(w) > D.frame_db(w).max() - 45)
        assert loud[0] <= 8 and len(D.frame_db(w)) - 1 - loud[-1] <= 10


def test_training_mixes_extra_clips_and_continues_from_a_run(synth_pack, tmp_path):
    waves, y, _, _ = D.read_pack(synth_pack)
    pack = tmp_path / "real.npz"
    spk = np.array(["ann"] * 10 + ["bob"] * 10)
    lens = np.array([len(w) for w in waves])
    np.savez(pack, pcm=(np.concatenate(waves) * 32767).astype(np.int16), lengths=lens, y=y, speakers=spk,
             names=np.array([f"{d}_{s}_{i}.wav" for i, (d, s) in enumerate(zip(y, spk))]))
    first = tmp_path / "first"
    D.run_training(pack, first, fold="ann", preset="tiny", device="cpu")
    second = tmp_path / "second"
    D.run_training(pack, second, fold="ann", preset="tiny", device="cpu", extra_pack=synth_pack, init_run=first,
                   lr=1e-3)
    meta = json.loads((second / "digits_ann_s0.json").read_text())
    assert meta["extra"]["clips"] == 20 and meta["init"] == str(first) and meta["train"]["lr"] == 1e-3
    z = np.load(second / "oof_ann_s0.npz")
    assert z["proba"].shape == (10, 10) and np.allclose(z["proba"].sum(1), 1.0, atol=1e-4)
    assert set(z["names"].tolist()) == {n for n, s in zip(np.load(pack)["names"], spk) if s == "ann"}
    # the refit on every speaker, bundled with the recipe without the extra clips as a comparison
    D.run_training(pack, first, fold="all", preset="tiny", device="cpu")
    D.run_training(pack, second, fold="all", preset="tiny", device="cpu", extra_pack=synth_pack, init_run=first,
                   lr=1e-3)
    with pytest.raises(ValueError, match="trained differently"):
        D.finalize([second, first], tmp_path / "mixed")  # a member without the extra clips
    metrics = D.finalize([second], tmp_path / "bundle", compare={"without_synth": [first]})
    assert {"loso_accuracy_ann", "without_synth_ann", "without_synth_mean"} <= set(metrics)
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert "synth-pack" in card and f"--extra {synth_pack}" in card and "--compare without_synth=" in card
    assert "20 synthetic clips" in card
