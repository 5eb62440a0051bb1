"""The training loop, written out: AMP + GradScaler on CUDA, clipping, early stopping, checkpoints.

No trainer framework. ``fit`` takes the model, two datasets and two small functions — how to
compute the loss of one batch and how to evaluate — and runs epochs top to bottom. Checkpoints
hold only tensors and plain values so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from core.config import ConfigBase

LossFn = Callable[[nn.Module, Any, torch.device], torch.Tensor]
EvaluateFn = Callable[[nn.Module, DataLoader, torch.device], dict[str, float]]


@dataclass
class TrainConfig(ConfigBase):
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    amp: bool = True  # mixed precision; only ever enabled on CUDA
    scheduler: str = "cosine"  # "cosine" (per step, with warm-up) or "none"
    warmup_steps: int = 0
    monitor: str = "loss"  # validation metric for early stopping / best checkpoint
    mode: str = "min"  # "min" or "max" for ``monitor``
    patience: int = 5  # epochs without improvement before stopping; 0 disables early stopping
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    num_workers: int = -1  # -1: chosen from the device (0 on CPU, up to 8 on CUDA)
    checkpoint_dir: str | None = None  # last.pt / best.pt here; resumes from last.pt when present
    resume: bool = True
    progress: bool = True  # tqdm progress bar

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"epochs": 2, "batch_size": 8, "patience": 0, "progress": False}}


@dataclass
class TrainResult:
    best_metric: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    device: torch.device,
    seed: int = 0,
    num_workers: int = -1,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose workers and pinned memory follow the device, with a seeded order."""
    if num_workers < 0:
        num_workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        collate_fn=collate_fn,
        drop_last=drop_last,
    )


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Recursively move tensors in tensors / dicts / lists / tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


class UnfreezeSchedule:
    """Progressive unfreezing: parameter groups, top (head) first, thawed one more every N epochs."""

    def __init__(self, groups: Sequence[Iterable[nn.Parameter]], every: int = 1):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.groups = [list(group) for group in groups]
        self.every = every

    def apply(self, epoch: int) -> int:
        """Set requires_grad for ``epoch`` (0-based); return how many groups are trainable."""
        thawed = min(len(self.groups), 1 + epoch // self.every)
        for index, group in enumerate(self.groups):
            for parameter in group:
                parameter.requires_grad_(index < thawed)
        return thawed


def apply_lora(
    model: nn.Module,
    target_modules: Sequence[str],
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    trainable_prefixes: Sequence[str] = (),
) -> nn.Module:
    """Inject LoRA adapters (peft) into ``model`` in place; freeze all but adapters and the prefixes.

    Defaults follow the seed (``LoraConfig(r=16, lora_alpha=32)``). Works on plain nn.Modules.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    model = inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name or any(name.startswith(prefix) for prefix in trainable_prefixes))
    return model


def _is_better(value: float, best: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    return value < best if mode == "min" else value > best


def _lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.scheduler != "cosine":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    *,
    loss_fn: LossFn,
    evaluate_fn: EvaluateFn | None = None,
    config: TrainConfig,
    collate_fn: Callable | None = None,
    unfreeze: UnfreezeSchedule | None = None,
    extra_parameters: Iterable[nn.Parameter] = (),
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` and leave it holding the best weights seen on the validation metric.

    ``loss_fn(model, batch, device)`` returns the scalar loss of one training batch.
    ``evaluate_fn(model, loader, device)`` returns validation metrics including ``config.monitor``
    (when omitted, the mean ``loss_fn`` over the validation set is reported as ``loss``).
    """
    from tqdm.auto import tqdm

    log = log or (lambda message: None)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model.to(device)
    extra_parameters = list(extra_parameters)
    parameters = [p for p in model.parameters()] + extra_parameters
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, steps_per_epoch * config.epochs))
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    start_epoch, best, best_epoch, stale, history = 0, (math.inf if config.mode == "min" else -math.inf), -1, 0, []
    if checkpoint_dir and config.resume and (checkpoint_dir / "last.pt").exists():
        state = torch.load(checkpoint_dir / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        for parameter, saved in zip(extra_parameters, state.get("extra", [])):
            parameter.data.copy_(saved)
        start_epoch, best, best_epoch, stale = state["epoch"] + 1, state["best"], state["best_epoch"], state["stale"]
        history = [dict(zip(state["history_keys"], row)) for row in state["history_rows"]]
        log(f"resumed from {checkpoint_dir / 'last.pt'} at epoch {start_epoch}")

    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        torch.manual_seed(config.seed + epoch)  # dropout & augmentation replay identically on resume
        if unfreeze is not None:
            unfreeze.apply(epoch)
        loader = make_loader(
            train_set, config.batch_size, shuffle=True, device=device, seed=config.seed + epoch,
            num_workers=config.num_workers, collate_fn=collate_fn,
        )
        model.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress, leave=False)
        for batch in bar:
            batch = move_to_device(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss = loss_fn(model, batch, device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += float(loss.detach())
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        row = {"epoch": float(epoch), "train_loss": total / max(1, count), "lr": optimizer.param_groups[0]["lr"]}
        if val_set is not None:
            val_loader = make_loader(val_set, config.batch_size, shuffle=False, device=device, num_workers=config.num_workers, collate_fn=collate_fn)
            row.update({f"val_{k}": float(v) for k, v in _validate(model, val_loader, device, loss_fn, evaluate_fn, use_amp, amp_dtype).items()})
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        current = row.get(f"val_{config.monitor}", row["train_loss"])
        if _is_better(current, best, config.mode):
            best, best_epoch, stale = current, epoch, 0
            if checkpoint_dir:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), checkpoint_dir / "best.pt")
            else:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        log(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
        if checkpoint_dir:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            keys = sorted(history[0])
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "extra": [p.detach() for p in extra_parameters],
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "stale": stale,
                    "history_keys": keys,
                    "history_rows": [[r.get(k, float("nan")) for k in keys] for r in history],
                },
                checkpoint_dir / "last.pt",
            )
        if config.patience and stale >= config.patience:
            stopped_early = True
            log(f"early stop: no {config.monitor} improvement for {stale} epochs")
            break

    if best_epoch >= 0:
        if checkpoint_dir and (checkpoint_dir / "best.pt").exists():
            model.load_state_dict(torch.load(checkpoint_dir / "best.pt", map_location=device, weights_only=True))
        elif not checkpoint_dir:
            model.load_state_dict(best_state)
    return TrainResult(best, best_epoch, epoch + 1, history, stopped_early)


@torch.no_grad()
def _validate(model, loader, device, loss_fn, evaluate_fn, use_amp, amp_dtype) -> dict[str, float]:
    model.eval()
    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
        if evaluate_fn is not None:
            return evaluate_fn(model, loader, device)
        total, count = 0.0, 0
        for batch in loader:
            total += float(loss_fn(model, move_to_device(batch, device), device))
            count += 1
    return {"loss": total / max(1, count)}
