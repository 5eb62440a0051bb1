from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from core.training import TrainConfig, UnfreezeSchedule, apply_lora, fit


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def _loss(model, batch, device):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _config(tmp_path, epochs, **kw):
    return TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, patience=0, progress=False, checkpoint_dir=str(tmp_path), **kw)


def test_checkpoint_and_resume_reach_the_same_loss(tmp_path):
    straight = fit(_model(), _data(), _data(seed=1), loss_fn=_loss, config=_config(tmp_path / "a", 4))
    calls = {"n": 0}

    def crashing_loss(model, batch, device):  # dies on the first batch of the third epoch
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 1:
            raise KeyboardInterrupt
        return _loss(model, batch, device)

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), _data(), _data(seed=1), loss_fn=crashing_loss, config=_config(tmp_path / "b", 4))
    resumed = fit(_model(), _data(), _data(seed=1), loss_fn=_loss, config=_config(tmp_path / "b", 4))
    assert resumed.epochs_run == 4
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in straight.history], abs=1e-6)
    assert resumed.history[-1]["val_loss"] == pytest.approx(straight.history[-1]["val_loss"], abs=1e-6)


def test_checkpoints_load_without_unpickling(tmp_path):
    fit(_model(), _data(), None, loss_fn=_loss, config=_config(tmp_path, 1))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 0


def test_early_stopping_and_best_weights_restored():
    model = _model()
    calls = {"n": 0}

    def evaluate(model, loader, device):
        calls["n"] += 1
        return {"score": [0.5, 0.9, 0.6, 0.6, 0.6, 0.6][calls["n"] - 1]}

    result = fit(model, _data(), _data(seed=1), loss_fn=_loss, evaluate_fn=evaluate,
                 config=TrainConfig(epochs=6, batch_size=16, monitor="score", mode="max", patience=2, progress=False))
    assert result.stopped_early and result.epochs_run == 4
    assert result.best_epoch == 1 and result.best_metric == 0.9


def test_unfreeze_schedule_thaws_from_the_top():
    model = _model()
    schedule = UnfreezeSchedule([model[3].parameters(), model[0].parameters()], every=2)
    assert schedule.apply(0) == 1
    assert all(p.requires_grad for p in model[3].parameters()) and not any(p.requires_grad for p in model[0].parameters())
    assert schedule.apply(2) == 2
    assert all(p.requires_grad for p in model.parameters())


def test_lora_trains_only_adapters():
    model = _model()
    before = model[0].weight.detach().clone()
    apply_lora(model, target_modules=["0"], r=2, alpha=4, trainable_prefixes=("3.",))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and "3.weight" in trainable
    assert "0.base_layer.weight" not in trainable
    fit(model, _data(), None, loss_fn=_loss, config=TrainConfig(epochs=2, batch_size=16, lr=1e-2, patience=0, progress=False))
    assert torch.equal(model[0].base_layer.weight, before)
