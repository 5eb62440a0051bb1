"""The learned digit recogniser: front-end, augmentation, segmentation, training -> bundle -> ASR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.customer_service.logmel import (
    FrontEndConfig,
    LogMel,
    augment_waves,
    mel_filterbank,
    mel_warp_index,
    spec_augment,
    speed_perturb,
    time_stretch,
    warp_bands,
)
from apps.customer_service.speech import digits as D


def _tone(freq: float, seconds: float, sr: int = 8000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    env = np.hanning(len(t))
    return (0.3 * env * np.sin(2 * np.pi * freq * t) + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def test_logmel_masks_padding_and_removes_the_utterance_mean():
    fe = LogMel(FrontEndConfig.from_name("digits"))
    wave = torch.randn(2, 4000) * 0.1
    lengths = torch.tensor([4000, 2000])
    x, mask = fe(wave, lengths)
    assert x.shape[:2] == (2, 40) and mask.shape == (2, x.shape[-1])
    assert mask[0].all() and mask[1].sum() == 2000 // 80 + 1
    assert torch.all(x[1][:, ~mask[1]] == 0)
    means = (x * mask[:, None]).sum(-1) / mask.sum(-1, keepdim=True)
    assert means.abs().max() < 1e-4
    # a gain change is a constant in the log domain: normalisation removes it
    x2, _ = fe(wave * 3.0, lengths)
    assert torch.allclose(x, x2, atol=1e-3)


def test_vtln_warp_moves_the_filterbank_and_keeps_the_band_edge():
    base = mel_filterbank(8000, 256, 40, 60, 3800)
    up = mel_filterbank(8000, 256, 40, 60, 3800, warp=1.1)
    freqs = np.linspace(0, 4000, 129)
    def centre(fb):
        return (fb * freqs).sum(1) / fb.sum(1)
    assert np.all(centre(up)[5:30] < centre(base)[5:30])  # reading f*1.1: filters sit lower in f
    idx = mel_warp_index(FrontEndConfig.from_name("emotion"), 1.0)
    assert np.allclose(idx, np.arange(64), atol=1e-3)
    x = torch.randn(1, 64, 10)
    assert torch.allclose(warp_bands(x, torch.tensor(idx)[None]), x, atol=1e-3)


def test_augmentations_keep_lengths_consistent():
    torch.manual_seed(0)
    wave = torch.randn(3, 4000)
    lengths = torch.tensor([4000, 3000, 1000])
    w, n = speed_perturb(wave, lengths, 0.9, 1.1)
    assert w.shape[0] == 3 and n.max() == w.shape[1] and torch.all((n > 800) & (n < 4500))
    w2, n2 = augment_waves(w, n)
    assert torch.all(n2 >= n) and w2.shape[1] == n2.max()
    assert torch.all(w2[2, n2[2]:] == 0)
    x, mask = LogMel()(w2, n2)
    _x3, m3 = time_stretch(x, mask, 0.8, 0.8)
    assert torch.all((m3.sum(1) - (mask.sum(1) * 0.8).round()).abs() <= 1)
    assert spec_augment(x, mask).shape == x.shape


def test_speech_span_and_pause_segmentation():
    sr = 8000
    silence = np.zeros(int(0.3 * sr), np.float32) + 1e-4 * np.random.default_rng(0).standard_normal(int(0.3 * sr)).astype(np.float32)
    word = _tone(400, 0.35)
    x = np.concatenate([silence, word, silence, word, silence, word, silence])
    s, e = D.speech_span(x)
    assert 0.2 * sr <= s <= 0.3 * sr and len(x) - 0.3 * sr <= e <= len(x) - 0.2 * sr
    segs = D.split_digits(x)
    assert len(segs) == 3
    assert all(0.3 * sr <= e - s <= 0.6 * sr for s, e in segs)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A tiny digit model trained for two epochs on tones (one pitch per digit) -> a bundle."""
    tmp = tmp_path_factory.mktemp("digits")
    waves, y, spk = [], [], []
    for s, speaker in enumerate(("ann", "bob")):
        for d in range(10):
            for k in range(2):
                waves.append(_tone(300 + 150 * d, 0.3 + 0.05 * k, seed=s * 100 + d * 10 + k))
                y.append(d)
                spk.append(speaker)
    lens = np.array([len(w) for w in waves])
    pack = tmp / "pack.npz"
    np.savez(pack, pcm=(np.concatenate(waves) * 32767).astype(np.int16), lengths=lens, y=np.array(y),
             speakers=np.array(spk), names=np.array([f"{d}_{s}_{i}.wav" for i, (d, s) in enumerate(zip(y, spk))]))
    run = tmp / "run"
    D.run_training(pack, run, fold="ann", preset="tiny", device="cpu")
    D.run_training(pack, run, fold="all", preset="tiny", device="cpu")
    # a "grammar" that is right on every other clip: the fusion weight's grid is reported per speaker
    names = np.array([f"{d}_{s}_{i}.wav" for i, (d, s) in enumerate(zip(y, spk))])
    np.savez(tmp / "grammar.npz", names=names, digit=np.where(np.arange(len(y)) % 2 == 0, np.array(y), -1))
    metrics = D.finalize([run], tmp / "bundle", grammar=tmp / "grammar.npz", grammar_weight=1.0)
    return tmp / "bundle", metrics


def test_training_writes_a_bundle_with_the_held_out_speaker_scored(tiny_bundle):
    bundle, metrics = tiny_bundle
    assert {"loso_accuracy_ann", "loso_accuracy_mean", "cnn_ann", "grammar_ann"} <= set(metrics)
    assert 0.0 <= metrics["loso_accuracy_ann"] <= 1.0 and metrics["grammar_ann"] == 0.5
    assert "leave-one-speaker-out" in (bundle / "MODEL_CARD.md").read_text()
    rec = D.DigitRecognizer(bundle)
    assert rec.grammar_weight == 1.0 and len(rec.members) == 1
    audio16k = np.repeat(_tone(600, 0.4), 2)
    (word,) = rec.transcribe_digit(audio16k)
    assert word.text in D.DIGIT_WORDS and 0.0 <= word.confidence <= 1.0
    assert 0.0 <= word.start < word.end <= len(audio16k) / 16_000 + 1e-6
    # the grammar's digit adds its weight to that digit's log-probability
    piece = D.to_8k(audio16k)
    plain = rec._classify([piece])[0]
    hinted = rec._classify([piece], [3])[0]
    assert np.isclose(hinted.sum(), 1.0) and hinted[3] > plain[3]
    assert np.isclose(np.log(hinted[3] / hinted[0]) - np.log(plain[3] / plain[0]), 1.0, atol=1e-4)


def test_sphinx_digit_mode_uses_the_learned_model(tiny_bundle):
    from apps.customer_service.speech.sphinx import SphinxConfig, SphinxRecognizer

    bundle, _ = tiny_bundle
    rec = SphinxRecognizer(SphinxConfig(lm="bank", topn=2, bestpath=False, digit_bundle=str(bundle)))
    audio16k = np.repeat(_tone(900, 0.4), 2)
    out = rec.transcribe(audio16k, mode="digit")
    assert out.extra["search"] == "digit-cnn" and len(out.words) == 1
    # a string with clear pauses goes through the same model, one word per segment
    gap = np.zeros(4000, np.float32)
    string = np.concatenate([gap, np.repeat(_tone(450, 0.35), 2), gap, np.repeat(_tone(900, 0.35), 2), gap])
    out = rec.transcribe(string, mode="digits")
    assert out.extra["search"] == "digit-cnn" and len(out.words) == 2
    assert out.words[0].end <= out.words[1].start
    # the grammar stays available
    grammar = SphinxRecognizer(SphinxConfig(lm="bank", topn=2, bestpath=False, digit_model=False))
    assert grammar.transcribe(audio16k, mode="digit").extra["search"] == "digit"


@pytest.mark.data
@pytest.mark.slow
def test_shipped_digit_model_on_real_fsdd(shared_data):
    """Sanity check of the shipped bundle on clips of its own (training) speakers; the held-out
    numbers are the leave-one-speaker-out ones in its card."""
    from apps.customer_service.speech.evaluate import evaluate_asr

    root = shared_data / "fsdd"
    if not (root / "recordings").is_dir():
        pytest.skip("fsdd not present")
    if not (D.WEIGHTS / "config.json").is_file():
        pytest.skip("no shipped digit bundle")
    out = evaluate_asr(root, limit=40)
    assert out["utterances"] == 40 and out["digit_accuracy"] >= 0.9
    assert out["wer"] == pytest.approx(1 - out["digit_accuracy"])


def test_shipped_digit_model_reads_an_unseen_synthetic_voice(bank_recognizer):
    """espeak-ng en-us+klatt (wide-band, synthetic): the ASR's digit mode (shipped CNN + grammar
    hint) must read it. That voice is held out of the synthetic training speakers
    (digit_augment.HELD_OUT), but the klatt variants of other English dialects are in them, so
    this is a near-unseen voice, not a new speaker in the FSDD sense."""
    from .conftest import speak

    if not (D.WEIGHTS / "model.safetensors").is_file():
        pytest.skip("no shipped digit bundle")
    words = ("two", "five", "six", "eight", "nine")
    heard = [bank_recognizer.transcribe(speak(w), mode="digit") for w in words]
    assert all(t.extra["search"] == "digit-cnn" for t in heard)
    assert sum(t.text == w for t, w in zip(heard, words)) >= 4


def test_speech_embedding_head_joins_the_bundle_in_the_log_domain(tiny_bundle, tmp_path):
    import json

    from apps.customer_service.speech import digit_embedding as DE
    from core.bundle import BundleError

    bundle, _ = tiny_bundle
    tmp = bundle.parent
    cfg = DE.EmbeddingHeadConfig(speed_rates=(1.1,))
    report = DE.run_embedding_head(tmp / "pack.npz", tmp / "emb", cfg=cfg, cache_dir=tmp / "cache", log=lambda m: None)
    assert set(report) == {"ann", "bob"} and (tmp / "emb" / "head_all.npz").is_file()
    metrics = D.finalize([tmp / "run"], tmp_path / "bundle", grammar=tmp / "grammar.npz", grammar_weight=1.0,
                         embedding=tmp / "emb", embedding_weight=2.0)
    assert {"loso_accuracy_ann", "embedding_ann", "without_embedding_ann", "cnn_ann"} <= set(metrics)
    assert metrics["without_embedding_ann"] == D.loso_report([tmp / "run"], tmp / "grammar.npz")["fused_w1_ann"]
    assert "speech embedding" in (tmp_path / "bundle" / "MODEL_CARD.md").read_text()

    rec, plain = D.DigitRecognizer(tmp_path / "bundle"), D.DigitRecognizer(bundle)
    assert rec.embedding_weight == 2.0 and plain.embedding_weight == 0.0
    piece = D.to_8k(np.repeat(_tone(600, 0.4), 2))
    head = DE.head_log_proba(rec.head, DE.clip_features([piece], rec.embedder, rec.clip_s))
    logp = np.log(plain._classify([piece])) + 2.0 * head
    expected = np.exp(logp - logp.max()) / np.exp(logp - logp.max()).sum()
    np.testing.assert_allclose(rec._classify([piece]), expected, rtol=1e-4, atol=1e-7)

    # a head fitted on another speech embedding is refused, not silently mis-scored
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    config["embedding"]["encoder_sha256"] = "0" * 64
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="speech embedding"):
        D.DigitRecognizer(tmp_path / "bundle")


def test_finetuned_speech_embedding_joins_the_bundle(tiny_bundle, tmp_path):
    from apps.customer_service.speech import digit_embedding as DE

    bundle, _ = tiny_bundle
    tmp = bundle.parent
    cfg = DE.FinetuneConfig(epochs=1, batch_size=8)
    held = DE.run_finetune(tmp / "pack.npz", tmp_path / "tuned", fold="ann", cfg=cfg, device="cpu")
    DE.run_finetune(tmp / "pack.npz", tmp_path / "tuned", fold="bob", cfg=cfg, device="cpu")
    DE.run_finetune(tmp / "pack.npz", tmp_path / "tuned", fold="all", cfg=cfg, device="cpu")
    assert 0.0 <= held["accuracy"] <= 1.0 and (tmp_path / "tuned" / "finetuned_all.safetensors").is_file()
    metrics = D.finalize([tmp / "run"], tmp_path / "bundle", grammar=tmp / "grammar.npz", grammar_weight=0.0,
                         embedding=tmp_path / "tuned", embedding_weight=1.0)
    assert {"loso_accuracy_ann", "embedding_ann"} <= set(metrics)
    assert "embed-tune" in (tmp_path / "bundle" / "MODEL_CARD.md").read_text()

    rec, plain = D.DigitRecognizer(tmp_path / "bundle"), D.DigitRecognizer(bundle)
    assert rec.tuned is not None and rec.embedding_weight == 1.0
    piece = D.to_8k(np.repeat(_tone(600, 0.4), 2))
    logp = np.log(plain._classify([piece])) + rec.tuned.log_proba([piece], rec.clip_s)
    expected = np.exp(logp - logp.max()) / np.exp(logp - logp.max()).sum()
    np.testing.assert_allclose(rec._classify([piece]), expected, rtol=1e-4, atol=1e-7)
    # scoring is deterministic: the same clip gets the same answer
    np.testing.assert_array_equal(rec.tuned.log_proba([piece]), rec.tuned.log_proba([piece]))


def test_upsampling_and_placement_keep_the_word():
    from apps.customer_service.speech import digit_embedding as DE

    tone = _tone(500, 0.3)
    up = DE.upsample_2x(tone)
    assert len(up) == 2 * len(tone)
    spectrum = np.abs(np.fft.rfft(up))
    assert abs(np.argmax(spectrum) * 16000 / len(up) - 500) < 5  # same pitch, twice the rate
    clip = DE.centred_clip(up)
    assert clip.shape == (int(DE.CLIP_S * 16000),) and np.isclose(np.abs(clip).max(), DE.PEAK, atol=1e-3)
    loud = np.flatnonzero(np.abs(clip) > 0.05)
    assert abs((loud[0] + loud[-1]) / 2 - len(clip) / 2) < 400  # centred
    shifted = DE.centred_clip(up, shift=1600)
    assert np.flatnonzero(np.abs(shifted) > 0.05)[0] - loud[0] == 1600


def test_fsdd_recordings_are_listed_in_any_case_as_the_other_loaders_list_them(tmp_path):
    """``.WAV`` written on another OS counts, as ``core.data.dataset_files`` counts it; macOS ``._`` copies, other
    files and the folders below recordings/ do not."""
    import soundfile as sf

    rec = tmp_path / "recordings"
    (rec / "old").mkdir(parents=True)
    for name in ("0_jo_1.wav", "7_ann_0.WAV", "9_jo_2.Wav", "old/3_jo_0.wav", "readme.wav"):
        sf.write(rec / name, _tone(440.0, 0.5, sr=16_000), 16_000)
    (rec / "._0_jo_1.wav").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (rec / "5_jo_1.txt").write_text("not audio")
    expected = [(rec / "0_jo_1.wav", 0, "jo"), (rec / "7_ann_0.WAV", 7, "ann"), (rec / "9_jo_2.Wav", 9, "jo")]
    assert D.fsdd_clips(tmp_path) == expected == D.fsdd_clips(rec)
    waves, y, speakers, names = D.load_fsdd_8k(tmp_path)
    assert names == ["0_jo_1.wav", "7_ann_0.WAV", "9_jo_2.Wav"] and y.tolist() == [0, 7, 9]
    assert speakers.tolist() == ["jo", "ann", "jo"] and len(waves) == 3 and all(0 < len(w) <= 4_000 for w in waves)
