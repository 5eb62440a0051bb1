from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.customer_service.dialogue import (
    ACTS,
    ActTrainConfig,
    DialogueActConfig,
    DialogueActModel,
    act_examples,
    act_head,
    act_metrics,
    cross_validate_acts,
    fit_head,
    load_dialogue_acts,
    nlupp_acts,
    read_nlupp,
    train_dialogue_acts,
)

TURNS = [  # (text, NLU++ intents)
    ("hello, good morning", ["greet"]),
    ("thank you so much", ["thank"]),
    ("yes that is right", ["affirm"]),
    ("no, never", ["deny"]),
    ("i want to speak to a real person", ["handoff"]),
    ("how do i make a transfer abroad", ["make_open_apply_setup_get_activate", "transfer_payment_deposit", "international"]),
    ("hi, my card is not working", ["greet", "card", "wrong_notworking_notshowing"]),
    ("my name is jo", []),
    ("can you repeat that", ["repeat"]),
]


def write_nlupp(folder, folds: int = 5, copies: int = 2):
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(folds):
        rows = [{"text": f"{t} {k}", "intents": i} if i else {"text": f"{t} {k}"} for k in range(copies) for t, i in TURNS]
        (folder / f"fold{f}.json").write_text(json.dumps(rows))
    return folder


def write_banking(path, n: int = 6):
    path.write_text("text,category\n" + "".join(f"where is my card {k}?,card_arrival\n" for k in range(n)))
    return path


def test_nlupp_labels_map_to_acts():
    assert dict(zip(ACTS, nlupp_acts(["greet", "card", "wrong_notworking_notshowing"]))) == {
        "request": 1, "greet": 1, "thank": 0, "end_call": 0, "affirm": 0, "deny": 0, "acknowledge": 0,
        "dont_know": 0, "handoff": 0}
    assert nlupp_acts(["repeat"]).sum() == 0  # conversational, but not an act of its own
    assert nlupp_acts([]).sum() == 0  # an answer (a name, a date): neither a request nor an act
    assert nlupp_acts(["handoff"])[ACTS.index("request")] == 0


def test_read_nlupp_orders_folds_numerically_and_refuses_an_empty_folder(tmp_path):
    folder = tmp_path / "nlupp"
    folder.mkdir()
    for f in (10, 2):
        (folder / f"fold{f}.json").write_text(json.dumps([{"text": f"t{f}", "intents": ["greet"]}]))
    assert [fold for _, _, fold in read_nlupp(folder)] == [2, 10]
    with pytest.raises(FileNotFoundError):
        read_nlupp(tmp_path / "missing")


def test_banking_rows_teach_request_only(tmp_path):
    data = act_examples(write_nlupp(tmp_path / "nlupp", folds=2, copies=1), write_banking(tmp_path / "b.csv", 3))
    bank = data.group == -1
    assert bank.sum() == 3 and (data.group[~bank] >= 0).all()
    request = ACTS.index("request")
    assert (data.known[bank, request] == 1).all() and data.known[bank].sum() == 3  # the other acts: unknown
    assert (data.targets[bank, request] == 1).all()
    assert (data.known[~bank] == 1).all()


def test_fit_head_ignores_unknown_targets_and_learns_separable_acts():
    torch.manual_seed(0)
    n, d = 200, 16
    y = np.zeros((n, len(ACTS)), dtype=np.float32)
    y[np.arange(n), np.arange(n) % len(ACTS)] = 1
    x = torch.randn(n, d) + 3 * torch.as_tensor(y) @ torch.randn(len(ACTS), d)
    known = np.ones_like(y)
    noisy = y.copy()
    noisy[:50] = 1 - noisy[:50]  # wrong targets that carry no loss must not matter
    known[:50] = 0
    head = act_head(d, DialogueActConfig(hidden=0))
    fit_head(head, x, noisy, known, ActTrainConfig(steps=300))
    with torch.no_grad():
        pred = head(x[50:]).sigmoid().numpy() >= 0.5
    assert (pred == y[50:].astype(bool)).mean() > 0.97


def test_act_metrics_counts_per_act():
    targets = np.zeros((4, len(ACTS)), dtype=np.float32)
    targets[:2, 0] = 1
    proba = np.zeros_like(targets)
    proba[[0, 2], 0] = 0.9
    m = act_metrics(proba, targets, ACTS, 0.5)
    assert m["request_precision"] == 0.5 and m["request_recall"] == 0.5 and m["request_support"] == 2
    assert m["request_accuracy"] == 0.5


def test_cross_validation_holds_out_whole_folds(tmp_path):
    data = act_examples(write_nlupp(tmp_path / "nlupp", folds=5), write_banking(tmp_path / "b.csv"))
    x = torch.randn(len(data.texts), 8)
    seen_train: list[set] = []
    import apps.customer_service.dialogue as D

    real = D.fit_head

    def spy(head, xs, targets, known, cfg):
        seen_train.append({tuple(r) for r in xs.numpy().round(5)})
        real(head, xs, targets, known, cfg)

    D.fit_head = spy
    try:
        metrics, oof = cross_validate_acts(data, DialogueActConfig(hidden=0), ActTrainConfig(steps=5, folds=5), x=x)
    finally:
        D.fit_head = real
    nlu = data.group >= 0
    assert not np.isnan(oof[nlu]).any() and np.isnan(oof[~nlu]).all()
    for g, trained in enumerate(seen_train):
        held = x[torch.as_tensor(nlu & (data.group % 5 == g))].numpy().round(5)
        assert not trained & {tuple(r) for r in held}  # no held-out turn was trained on
    assert 0 <= metrics["request_accuracy"] <= 1


def test_train_writes_a_bundle_that_loads_and_predicts_the_same(tmp_path):
    nlupp = write_nlupp(tmp_path / "nlupp", folds=5)
    cfg = DialogueActConfig.from_name("tiny")
    metrics = train_dialogue_acts(nlupp, write_banking(tmp_path / "b.csv"), tmp_path / "w", tmp_path / "run",
                                  model_cfg=cfg, cfg=ActTrainConfig(steps=20), log=lambda *_: None)
    assert "cv_request_accuracy" in metrics and "cv_handoff_f1" in metrics
    assert (tmp_path / "run" / "dialogue_acts_oof.npz").exists()
    model = load_dialogue_acts(tmp_path / "w" / "dialogue_acts")
    assert model.version == "1.0.0" and len(model.sha256) == 64
    texts = ["hello", "where is my card"]
    p = model.predict_proba(texts)
    assert p.shape == (2, len(ACTS)) and ((p >= 0) & (p <= 1)).all()
    again = load_dialogue_acts(tmp_path / "w" / "dialogue_acts").predict_proba(texts)
    np.testing.assert_allclose(p, again, atol=1e-6)


def test_lora_recipe_fine_tunes_adapters_and_ships_them(tmp_path):
    nlupp = write_nlupp(tmp_path / "nlupp", folds=5, copies=1)
    cfg = DialogueActConfig.from_name("tiny-lora")
    assert cfg.encoder.lora_r > 0
    metrics = train_dialogue_acts(nlupp, write_banking(tmp_path / "b.csv"), tmp_path / "w", tmp_path / "run",
                                  model_cfg=cfg, cfg=ActTrainConfig(epochs=1, batch_size=8), log=lambda *_: None)
    assert 0 <= metrics["cv_non_request_called_request"] <= 1
    from core.bundle import load_bundle

    state = load_bundle(tmp_path / "w" / "dialogue_acts").state_dict
    assert any("lora_" in k for k in state) and any(k.startswith("head.") for k in state)
    texts = ["hello", "where is my card"]
    merged = load_dialogue_acts(tmp_path / "w" / "dialogue_acts")
    unmerged = DialogueActModel(cfg)
    unmerged.load_state_dict(dict(state), strict=False)
    np.testing.assert_allclose(merged.predict_proba(texts), unmerged.predict_proba(texts), atol=1e-5)


def test_a_bundle_whose_tensors_do_not_match_its_config_is_refused(tmp_path, cs_tiny_bundles):
    import shutil

    copy = tmp_path / "acts"
    shutil.copytree(cs_tiny_bundles["dialogue_acts"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["encoder"]["lora_r"] = 4  # the tensors are a frozen model's: no adapters
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match"):
        load_dialogue_acts(copy)


def test_composed_call_benchmark_runs_the_service_path(tmp_path, cs_tiny_bundles):
    from apps.customer_service.dialogue import composed_call_benchmark

    nlupp = write_nlupp(tmp_path / "nlupp", folds=5, copies=1)
    banking = tmp_path / "b.csv"
    banking.write_text("text,category\n" + "".join(f"query {k},{c}\n" for k, c in
                                                   enumerate(["card_arrival", "exchange_rate", "lost_or_stolen_card"] * 3)))
    data = act_examples(nlupp, banking)
    oof = tmp_path / "oof.npz"
    np.savez(oof, proba=data.targets, targets=data.targets, group=data.group)  # perfect acts
    m = composed_call_benchmark(nlupp, banking, oof, cs_tiny_bundles["intent"], cs_tiny_bundles["dialogue_acts"], calls=8)
    assert m["calls"] == 12
    for part in ("one_request", "two_requests", "two_requests_one_turn"):
        for key in ("call_intent_in_asked_before", "call_intent_in_asked_now", "all_asked_in_requests_now",
                    "all_asked_in_requests_whole_turns"):
            assert 0 <= m[f"{part}_{key}"] <= 1
    bad = tmp_path / "bad.npz"
    np.savez(bad, proba=data.targets[:3], targets=data.targets[:3], group=data.group[:3])
    with pytest.raises(ValueError, match="out-of-fold"):
        composed_call_benchmark(nlupp, banking, bad, cs_tiny_bundles["intent"], cs_tiny_bundles["dialogue_acts"], calls=2)


def test_slot_values_become_unscored_answer_turns_in_their_turns_fold(tmp_path):
    from apps.customer_service.dialogue import slot_fragments

    folder = write_nlupp(tmp_path / "nlupp", folds=2, copies=1)
    rows = json.loads((folder / "fold1.json").read_text())
    rows.append({"text": "send 35 pounds to sam on friday", "intents": ["transfer_payment_deposit"],
                 "slots": {"amount_of_money": {"text": "35 pounds", "span": [5, 14]},
                           "person_name": {"text": "sam", "span": [18, 21]},
                           "date": {"text": "on friday.", "span": [22, 31]}}})
    rows.append({"text": "sam", "intents": []})  # a whole turn already: it keeps its own labels
    (folder / "fold1.json").write_text(json.dumps(rows))
    assert slot_fragments(folder) == [("35 pounds", 1), ("on friday", 1)]
    data = act_examples(folder, write_banking(tmp_path / "b.csv"), fragments=True)
    extra = [i for i, t in enumerate(data.texts) if t in ("35 pounds", "on friday")]
    assert len(extra) == 2 and not data.scored[extra].any() and (data.group[extra] == 1).all()
    assert (data.targets[extra] == 0).all() and (data.known[extra] == 1).all()  # no act, every act known
    assert data.scored.sum() == len(read_nlupp(folder))  # only the corpus's own turns are scored
    plain = act_examples(folder, write_banking(tmp_path / "b.csv"))
    assert len(plain.texts) == len(data.texts) - 2 and plain.scored.sum() == data.scored.sum()
