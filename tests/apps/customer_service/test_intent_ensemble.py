"""The intent ensemble: member training per phase -> finalisation -> bundle -> eval, on tiny models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from apps.customer_service.model import (
    TextClassifier,
    TextClassifierConfig,
    TextEnsemble,
    load_text_classifier,
)
from apps.customer_service.train import IntentRecipe, _finalize_intent, train_intent_member
from core.bundle import ModelCard, save_bundle

INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "transfer_fee_charged"]
KEYWORDS = {"card_arrival": "arrive", "exchange_rate": "rate", "lost_or_stolen_card": "stolen",
            "transfer_fee_charged": "fee"}


def _write_banking(folder, n_per_class: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    fillers = ["my", "please", "the", "I", "need", "help", "with", "a", "now", "card", "money", "why"]
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for _i in range(n_per_class):
            for cat in INTENTS:
                toks = list(rng.choice(fillers, 4)) + [KEYWORDS[cat]]
                rng.shuffle(toks)
                w.writerow([" ".join(toks), cat])
    (folder / "categories.json").write_text(json.dumps(INTENTS))
    return folder


def test_ensemble_averages_member_logits_and_shares_the_embeddings(tmp_path):
    cfg = TextClassifierConfig.from_name("tiny", labels=INTENTS)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(TextClassifier(cfg))
    for m in members:  # non-zero LoRA B so that merging changes the base weights
        for n, p in m.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
    state = {f"members.{i}.{k}": v for i, m in enumerate(members) for k, v in m.trainable_state().items()}
    save_bundle(tmp_path / "ens", state, {"model": cfg.to_dict(), "members": 2},
                ModelCard(name="tiny-ens", version="0.0.1", task="test"))
    texts = ["where is my card arrive", "what rate today", "stolen card help"]
    expected = torch.stack([m.eval()(m.tokenize(texts)) for m in members]).mean(0)
    for merge in (False, True):
        ens = load_text_classifier(tmp_path / "ens", merge=merge)
        assert isinstance(ens, TextEnsemble) and len(ens.members) == 2
        with torch.no_grad():
            got = ens(ens.tokenize(texts))
        assert torch.allclose(got, expected, atol=1e-4), merge
        emb = [next(mod for n, mod in m.encoder.model.named_modules() if n.endswith("embeddings")) for m in ens.members]
        assert emb[0] is emb[1]
        p = ens.predict_proba(texts)
        assert p.shape == (3, 4) and torch.allclose(p.sum(-1), torch.ones(3), atol=1e-5)
    # a bundle missing one member's tensors is refused, not silently half-loaded
    save_bundle(tmp_path / "bad", {k: v for k, v in state.items() if not k.startswith("members.1.head")},
                {"model": cfg.to_dict(), "members": 2}, ModelCard(name="bad", version="0.0.1", task="test"))
    with pytest.raises(ValueError, match="lacks"):
        load_text_classifier(tmp_path / "bad")


@pytest.mark.slow
def test_intent_ensemble_members_finalise_into_a_served_bundle(tmp_path):
    banking = _write_banking(tmp_path / "banking77")
    run = tmp_path / "run"
    run.mkdir()
    recipe = IntentRecipe(preset="tiny", lora_r=4, lora_alpha=8, max_length=16, lr=5e-3, head_lr=2e-2, epochs=3,
                          batch_size=16, seeds=(0, 1), keep_epochs=2)
    for seed in recipe.seeds:
        for phase in ("val", "full"):
            train_intent_member(banking, None, run, seed, phase, recipe, deadline=1e12, log=lambda s: None)
    info = json.loads((run / "intent_val_s0.json").read_text())
    assert info["epochs_run"] == 3 and info["kept_epochs"] == [2, 3] and info["n_rows"] == 72
    assert json.loads((run / "intent_full_s1.json").read_text())["n_rows"] == 80
    assert np.load(run / "intent_val_s0.npz")["logits"].shape == (3, 8, 4)  # every epoch's validation logits
    (run / "intent_meta.json").write_text(json.dumps({"labels": INTENTS, "encoder": recipe.encoder().to_dict(),
                                                      "recipe": recipe.__dict__}))
    weights = tmp_path / "weights"
    metrics = _finalize_intent(run, banking, weights, log=lambda s: None)
    assert metrics["members"] == 2 and metrics["epochs"] == 3
    assert 0.0 <= metrics["lexical_weight"] <= 0.6
    # the keyword corpus is easy: the lexical half alone must get it, and the ensemble must not be worse
    assert metrics["val_accuracy_lexical_only"] >= 0.99 and metrics["val_accuracy"] >= 0.99
    model = load_text_classifier(weights / "intent")
    assert isinstance(model, TextEnsemble) and len(model.members) == 2 and model.lexical is not None
    card = (weights / "intent" / "MODEL_CARD.md").read_text()
    assert "2 MiniLM-L6" in card and "test.csv was never read" in card

    # the split bundle through the eval code reproduces the finalised validation accuracy
    from apps.customer_service.evaluate import evaluate_intent

    texts = list(csv.DictReader((banking / "train.csv").open()))
    val_index = np.load(run / "intent_val_s0.npz")["val_index"]
    with (tmp_path / "val.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for i in val_index:
            w.writerow([texts[i]["text"], texts[i]["category"]])
    out = evaluate_intent(tmp_path / "val.csv", bundle=run / "intent_split_bundle")
    assert out["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-9)
