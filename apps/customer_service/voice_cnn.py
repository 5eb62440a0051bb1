"""Learned voice-emotion model: 16 kHz log-mel -> CRNN (``("audio", "logmel_cnn")`` "emotion"
preset: conv blocks + BiGRU) -> masked mean/max pooling -> the 9 voice labels.

Training works on precomputed log-mels (the GPU image has no librosa; the pack is small), with
the augmentations applied in the feature domain: speed/VTLN (bands read on a scaled frequency
axis) + tempo (frames resampled) together stand in for speed perturbation; SpecAugment; mixup.
Normalisation: per utterance (band means removed, as in :func:`logmel.normalise`).

``python -m apps.customer_service.voice_cnn pack`` (here) -> ``train PACK OUT --fold K`` (GPU) ->
out-of-fold probabilities with the SAME 6 speaker folds as the statistics MLP
(:func:`train.speaker_folds`), so the numbers compare.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_FRAMES = 400  # 4 s: RAVDESS sentences trimmed are 1.5-3.5 s, Emo-DB here is cut at 2 s


@dataclass
class EmotionTrainConfig:
    epochs: int = 70
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-2
    mixup: float = 0.4
    label_smoothing: float = 0.05
    warp: tuple = (0.88, 1.12)
    tempo: tuple = (0.85, 1.15)
    crop_frames: int = 250  # random crop in training (a segment of the call, 2.5 s)
    seed: int = 0


def build_model(config: dict | None = None, preset: str = "emotion"):
    import torch
    from torch import nn

    from apps.customer_service.data import VOICE_LABELS
    from apps.customer_service.logmel import (
        FrontEndConfig,
        LogMel,
        LogMelCNNConfig,
        LogMelCNNEncoder,
        normalise,
        pool_tokens,
    )

    if config is None:
        config = {"frontend": FrontEndConfig.from_name("emotion" if preset == "emotion" else "tiny",
                                                      **({} if preset == "emotion" else {"sample_rate": 16000})).to_dict(),
                  "encoder": LogMelCNNConfig.from_name(preset).to_dict(), "labels": list(VOICE_LABELS)}

    class VoiceCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            self.frontend = LogMel(FrontEndConfig.from_dict(config["frontend"]))
            self.encoder = LogMelCNNEncoder(LogMelCNNConfig.from_dict(config["encoder"]))
            self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * self.encoder.dim, len(config["labels"])))

        def classify(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.head(pool_tokens(self.encoder({"x": x, "mask": mask})))

        def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            raw, mask = self.frontend.raw(wave, lengths)
            return self.classify(normalise(raw, mask), mask)

    return VoiceCNN()


def trim(x: np.ndarray, sr: int = 16000) -> np.ndarray:
    from apps.customer_service.speech.digits import speech_span

    s, e = speech_span(x, sr, rel_db=40.0, margin_s=0.1)
    return x[s:e]


def pack(data_root: Path, out: Path) -> None:
    """Raw log-mels (fp16) of RAVDESS + Emo-DB, silence-trimmed, with labels / speakers / corpora."""
    import torch

    from apps.customer_service.data import load_emodb, load_ravdess, read_audio

    torch.set_num_threads(1)
    clips = load_ravdess(data_root / "ravdess") + load_emodb(data_root / "emodb")  # train.voice_corpus order
    model = build_model()
    feats, lens = [], []
    t0 = time.time()
    with torch.no_grad():
        for c in clips:
            x = trim(read_audio(c.path))[: MAX_FRAMES * 160]
            raw, mask = model.frontend.raw(torch.from_numpy(x)[None])
            feats.append(raw[0, :, : int(mask.sum())].numpy().astype(np.float16))
            lens.append(feats[-1].shape[1])
    from apps.customer_service.data import VOICE_LABELS

    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, mel=np.concatenate(feats, axis=1), lengths=np.array(lens),
                        y=np.array([VOICE_LABELS.index(c.label) for c in clips]),
                        speakers=np.array([c.speaker for c in clips]), corpora=np.array([c.corpus for c in clips]),
                        paths=np.array([str(c.path) for c in clips]))
    print(f"{len(clips)} clips, mean {np.mean(lens):.0f} frames, {time.time() - t0:.0f}s -> {out}")


def read_pack(path: Path):
    z = np.load(path, allow_pickle=False)
    offs = np.concatenate([[0], np.cumsum(z["lengths"])])
    mel = z["mel"].astype(np.float32)
    feats = [mel[:, offs[i]:offs[i + 1]] for i in range(len(z["lengths"]))]
    return feats, z["y"], z["speakers"], z["corpora"]


def pad_feats(feats: list[np.ndarray]):
    import torch

    lens = [f.shape[1] for f in feats]
    x = torch.zeros(len(feats), feats[0].shape[0], max(lens))
    for i, f in enumerate(feats):
        x[i, :, :f.shape[1]] = torch.from_numpy(f)
    mask = torch.arange(max(lens))[None, :] < torch.tensor(lens)[:, None]
    return x, mask


def train_emotion_model(feats, y, cfg: EmotionTrainConfig, device: str = "cpu", preset: str = "emotion", log=print):
    import torch
    from torch.nn import functional as F

    from apps.customer_service.logmel import mel_warp_index, normalise, spec_augment, time_stretch, warp_bands

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(preset=preset).to(device)
    n_cls = len(model.config["labels"])
    counts = np.bincount(y, minlength=n_cls).astype(np.float64)
    cw = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0.0),
                      dtype=torch.float32, device=device)
    warps = np.linspace(cfg.warp[0], cfg.warp[1], 13)
    warp_idx = torch.tensor(np.stack([mel_warp_index(model.frontend.config, w) for w in warps]), device=device)
    n = len(feats)
    steps = max(1, n // cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    t0 = time.time()
    model.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(n)
        losses = []
        for s in range(steps):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            crops = []
            for i in idx:
                f = feats[i]
                if f.shape[1] > cfg.crop_frames:
                    o = rng.integers(0, f.shape[1] - cfg.crop_frames + 1)
                    f = f[:, o:o + cfg.crop_frames]
                crops.append(f)
            x, mask = pad_feats(crops)
            x, mask = x.to(device), mask.to(device)
            x = warp_bands(x, warp_idx[torch.randint(0, len(warps), (len(idx),), device=device)])
            x, mask = time_stretch(x, mask, *cfg.tempo)
            x = normalise(x, mask)
            x = spec_augment(x, mask, freq_width=8, time_frac=0.1)
            target = F.one_hot(yt[torch.as_tensor(idx, device=device)], n_cls).float()
            if cfg.mixup > 0:
                lam = float(rng.beta(cfg.mixup, cfg.mixup))
                lam = max(lam, 1 - lam)
                perm = torch.randperm(len(idx), device=device)
                # mix the shorter's padding as zeros: both masks united
                x = lam * x + (1 - lam) * x[perm]
                mask = mask | mask[perm]
                target = lam * target + (1 - lam) * target[perm]
            target = target * (1 - cfg.label_smoothing) + cfg.label_smoothing / n_cls
            logp = model.classify(x, mask).log_softmax(-1)
            loss = -((target * logp) * cw[None, :]).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        if (epoch + 1) % 10 == 0 or epoch == cfg.epochs - 1:
            log(f"  epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses):.3f} ({time.time() - t0:.0f}s)")
    return model.eval()


def predict_feats(model, feats, device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    import torch

    from apps.customer_service.logmel import normalise

    out = []
    with torch.no_grad():
        for i in range(0, len(feats), batch_size):
            x, mask = pad_feats(feats[i:i + batch_size])
            x, mask = x.to(device), mask.to(device)
            out.append(model.classify(normalise(x, mask), mask).softmax(-1).cpu().numpy())
    return np.concatenate(out)


def run_training(pack_path: Path, out: Path, *, fold: int = -1, seed: int = 0, epochs: int | None = None,
                 device: str | None = None) -> None:
    """``fold`` 0-5: train on the other folds, write out-of-fold probabilities; -1: all clips."""
    import torch
    from safetensors.torch import save_file

    from apps.customer_service.train import speaker_folds

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(1)
    feats, y, spk, corp = read_pack(pack_path)
    val = speaker_folds(spk, corp)[fold] if fold >= 0 else np.zeros(len(y), dtype=bool)
    cfg = EmotionTrainConfig(seed=seed, **({"epochs": epochs} if epochs else {}))
    t0 = time.time()
    model = train_emotion_model([f for f, v in zip(feats, val) if not v], y[~val], cfg, device=device,
                                log=lambda m: print(f"[emo {fold}/{seed}] {m}", flush=True))
    out.mkdir(parents=True, exist_ok=True)
    tag = f"f{fold}_s{seed}" if fold >= 0 else f"all_s{seed}"
    if fold >= 0:
        proba = predict_feats(model, [f for f, v in zip(feats, val) if v], device)
        np.savez(out / f"emo_oof_{tag}.npz", proba=proba, index=np.flatnonzero(val))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"emo_{tag}.safetensors"))
    (out / f"emo_{tag}.json").write_text(json.dumps({"model": model.config, "train": cfg.__dict__, "fold": fold,
                                                     "seed": seed, "train_s": time.time() - t0}, default=list))
    print(f"emo fold {fold} seed {seed} done in {time.time() - t0:.0f}s", flush=True)


def corpus_metrics(proba: np.ndarray, y: np.ndarray, corpora: np.ndarray) -> dict:
    """Per-corpus macro-F1 / UAR / accuracy with the argmax restricted to the corpus's classes
    (exactly what ``train.cross_validate_voice`` reports)."""
    from apps.customer_service.train import restricted_predictions
    from core.metrics import classification_metrics

    pred = restricted_predictions(proba, corpora)
    out = {}
    for corpus in sorted(set(corpora)):
        m = corpora == corpus
        r = classification_metrics(y[m], np.eye(proba.shape[1])[pred[m]], labels=sorted(set(y[m].tolist())))
        for key in ("macro_f1", "uar", "accuracy"):
            out[f"{corpus}_{key}"] = round(float(r[key]), 4)
    return out


def collect_oof(run: Path, n: int, seeds: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Out-of-fold probabilities (N, 9), averaged over the seeds' members."""
    per_seed = []
    for s in seeds:
        oof = np.full((n, 9), np.nan, dtype=np.float32)
        for f in sorted(run.glob(f"emo_oof_f*_s{s}.npz")):
            z = np.load(f)
            oof[z["index"]] = z["proba"]
        if np.isnan(oof).any():
            raise FileNotFoundError(f"{run}: seed {s} lacks some folds")
        per_seed.append(oof)
    return np.mean(per_seed, axis=0)


def compare(run: Path, pack_path: Path, mlp_oof: Path, seeds: tuple[int, ...] = (0, 1)) -> dict:
    """Out-of-fold metrics of the CRNN (seeds averaged), of the shipped statistics MLP
    (``train.py``'s ``voice_oof.npz``, same folds) and of their equal-weight average."""
    z = np.load(pack_path)
    y, corp = z["y"], z["corpora"]
    m = np.load(mlp_oof)
    if list(m["y"]) != list(y) or list(m["speakers"]) != list(z["speakers"]):
        raise ValueError("the MLP's out-of-fold file lists other clips (rebuild both from the same data)")
    cnn = collect_oof(run, len(y), seeds)
    out = {}
    for name, proba in (("crnn", cnn), ("mlp", m["oof"]), ("avg", 0.5 * cnn + 0.5 * m["oof"])):
        out.update({f"{name}_{k}": v for k, v in corpus_metrics(proba, y, corp).items()})
    return out


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m apps.customer_service.voice_cnn")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--data", type=Path, default=Path("../shared/data"))
    a.add_argument("--out", type=Path, default=Path(".pack/cs/emotion_mel.npz"))
    t = sub.add_parser("train")
    t.add_argument("pack", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--fold", type=int, default=-1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--device", default=None)
    c = sub.add_parser("compare")
    c.add_argument("run", type=Path)
    c.add_argument("--pack", type=Path, default=Path(".pack/cs/emotion_mel.npz"))
    c.add_argument("--mlp-oof", type=Path, default=Path("runs/customer_service/voice_oof.npz"))
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.data, args.out)
    elif args.cmd == "compare":
        print(json.dumps(compare(args.run, args.pack, args.mlp_oof), indent=1))
    else:
        run_training(args.pack, args.out, fold=args.fold, seed=args.seed, epochs=args.epochs, device=args.device)


if __name__ == "__main__":
    main(sys.argv[1:])
