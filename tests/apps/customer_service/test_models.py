from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.customer_service.data import EKMAN_LABELS, VOICE_LABELS
from apps.customer_service.model import (
    CONTACT_CENTRE_LABELS,
    EmotionFusion,
    FusionConfigCS,
    TextClassifier,
    TextClassifierConfig,
    ekman_to_contact_matrix,
    load_fusion,
    load_text_classifier,
    load_voice_model,
    restricted_argmax,
    voice_to_ekman_matrix,
)
from apps.customer_service.train import (
    FusionTrainConfig,
    TextTrainConfig,
    VoiceTrainConfig,
    build_pairs,
    fit_fusion,
    fit_macro_f1_bias,
    fit_temperature,
    fit_voice_mlp,
    macro_f1,
    restricted_predictions,
    speaker_folds,
    train_text_classifier,
)


def test_text_classifier_learns_keywords_with_lora_only():
    torch.manual_seed(0)
    cfg = TextClassifierConfig.from_name("tiny", labels=["card", "refund"])
    model = TextClassifier(cfg)
    base_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" not in k and not k.startswith("head")}
    words = ["card", "refund"]
    fillers = ["my", "please", "the", "I", "need", "help", "with", "a", "now"]
    rng = np.random.default_rng(0)

    def make(n):
        texts, ys = [], []
        for _ in range(n):
            y = int(rng.integers(2))
            toks = list(rng.choice(fillers, 4)) + [words[y]]
            rng.shuffle(toks)
            texts.append(" ".join(toks))
            ys.append(y)
        return texts, np.array(ys)

    tr_t, tr_y = make(96)
    va_t, va_y = make(40)
    state, hist, logits = train_text_classifier(
        model, tr_t, np.eye(2, dtype=np.float32)[tr_y], va_t, va_y,
        TextTrainConfig(epochs=6, batch_size=16, lr=5e-3, head_lr=1e-2), metric="accuracy")
    assert max(h["val_accuracy"] for h in hist) >= 0.9
    assert logits.shape == (40, 2)
    # only adapters and head are trained: the base is untouched and absent from the shipped state
    for k, v in model.named_parameters():
        if k in base_before:
            assert torch.equal(v, base_before[k]), k
    assert all("lora_" in k or k.startswith("head.") for k in state)


def test_text_bundle_round_trip(cs_tiny_bundles):
    a = load_text_classifier(cs_tiny_bundles["intent"], merge=False)
    b = load_text_classifier(cs_tiny_bundles["intent"], merge=True)  # adapters folded into the base
    texts = ["where is my card", "what is the exchange rate"]
    pa, pb = a.predict_proba(texts), b.predict_proba(texts)
    assert pa.shape == (2, 4)
    assert torch.allclose(pa, pb, atol=1e-5)
    assert torch.allclose(pa.sum(-1), torch.ones(2), atol=1e-5)
    assert a.version == "0.0.1" and len(a.sha256) == 64


def test_corrupt_bundle_is_refused(cs_tiny_bundles, tmp_path):
    import shutil

    from core.bundle import BundleError

    bad = tmp_path / "voice"
    shutil.copytree(cs_tiny_bundles["voice"], bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="sha256"):
        load_voice_model(bad)


def test_voice_mlp_separates_and_restricts_classes():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (len(VOICE_LABELS), 434))
    y = rng.integers(0, len(VOICE_LABELS), 300)
    x = (centers[y] + rng.normal(0, 1, (300, 434))).astype(np.float32)
    model = fit_voice_mlp(x, y, VoiceTrainConfig(epochs=60), seed=0)
    with torch.no_grad():
        proba = model(torch.tensor(x)).softmax(-1).numpy()
    assert (proba.argmax(1) == y).mean() > 0.9
    corpora = np.array(["emodb"] * 300)
    pred = restricted_predictions(proba, corpora)
    assert not set(pred.tolist()) & {VOICE_LABELS.index("calm"), VOICE_LABELS.index("surprised")}
    allowed = restricted_argmax(torch.tensor(proba), VOICE_LABELS, ["angry", "sad"])
    assert set(allowed.tolist()) <= {VOICE_LABELS.index("angry"), VOICE_LABELS.index("sad")}


def test_speaker_folds_are_speaker_disjoint():
    speakers = np.array([f"ravdess:{i % 12:02d}" for i in range(120)] + [f"emodb:{i % 5:02d}" for i in range(50)])
    corpora = np.array([s.split(":")[0] for s in speakers])
    folds = speaker_folds(speakers, corpora)
    covered = np.zeros(len(speakers), bool)
    for val in folds:
        assert set(speakers[val]).isdisjoint(set(speakers[~val]))
        covered |= val
    assert covered.all()


def test_label_maps_are_complete():
    assert torch.equal(voice_to_ekman_matrix().sum(1), torch.ones(len(VOICE_LABELS)))
    assert torch.equal(ekman_to_contact_matrix().sum(1), torch.ones(len(EKMAN_LABELS)))
    assert ekman_to_contact_matrix().sum(0).min() >= 1  # every contact-centre label is reachable
    assert len(CONTACT_CENTRE_LABELS) == 5


def test_fusion_gate_masks_absent_branches():
    model = EmotionFusion(FusionConfigCS.from_name("tiny"))
    p = torch.full((3, 7), 1 / 7)
    present = torch.tensor([[True, True], [True, False], [False, True]])
    logp, w = model(p, p, present, torch.tensor([1.0, 0.5, 0.1]))
    assert torch.allclose(w.sum(1), torch.ones(3))
    assert w[1, 1] == 0 and w[2, 0] == 0
    assert torch.allclose(logp.exp().sum(1), torch.ones(3), atol=1e-5)


def test_fusion_gate_learns_to_distrust_low_confidence_text():
    """Voice is informative; text is right when ASR confidence is high and random when low."""
    rng = np.random.default_rng(0)
    n_cls = 7

    def probs(y, sharp):
        z = rng.normal(0, 1, (len(y), n_cls))
        z[np.arange(len(y)), y] += sharp
        e = np.exp(z)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    voice_y = rng.integers(0, n_cls, 200)
    voice_p = probs(voice_y, 2.0)
    text_y = rng.integers(0, n_cls, 400)
    text_p = probs(text_y, 4.0)
    fixed = probs(np.full(2, 4), 4.0)
    cfg = FusionTrainConfig(pairs_per_clip=4, epochs=100, lr=1e-2)
    model = fit_fusion(build_pairs(voice_p, voice_y, text_p, text_y, fixed, cfg, rng, "mixed"), cfg,
                       FusionConfigCS.from_name("tiny"))
    clean = build_pairs(voice_p, voice_y, text_p, text_y, fixed, cfg, np.random.default_rng(1), "clean")
    noisy = build_pairs(voice_p, voice_y, text_p, text_y, fixed, cfg, np.random.default_rng(1), "noisy")
    with torch.no_grad():
        _, w_clean = model(*(torch.tensor(clean[k]) for k in ("voice", "text", "present", "conf")))
        lp, w_noisy = model(*(torch.tensor(noisy[k]) for k in ("voice", "text", "present", "conf")))
    assert w_noisy[:, 1].mean() < w_clean[:, 1].mean() - 0.1
    # with bad text the fused decision is still about as good as voice alone
    assert macro_f1(noisy["y"], lp.argmax(1).numpy(), n_cls) >= macro_f1(noisy["y"], noisy["voice"].argmax(1), n_cls) - 0.05


def test_fusion_bundle_loads(cs_tiny_bundles):
    model = load_fusion(cs_tiny_bundles["fusion"])
    assert model.version == "0.0.1"


def test_calibration_helpers():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), y] += 1.0
    assert fit_temperature(logits * 4, y) > 1.5  # over-confident logits get cooled down
    skewed = logits.copy()
    skewed[:, 0] += 2.0  # a biased model predicting class 0 too often
    bias = fit_macro_f1_bias(skewed, y)
    assert macro_f1(y, (skewed + bias).argmax(1), 3) > macro_f1(y, skewed.argmax(1), 3)
