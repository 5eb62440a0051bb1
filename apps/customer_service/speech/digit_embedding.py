"""The digit recogniser's second member: Google's pretrained speech embedding, frozen or fine-tuned.

The log-mel CNN learns its features from three or four FSDD speakers; the speech embedding
(``apps.customer_service.speech_embedding``) was trained on a very large number of voices to spot
keywords. Two ways to use it, both scored leave-one-speaker-out like the CNN (digit card):

- frozen: a class-balanced multinomial logistic regression on its window vectors of the clip
  (:func:`run_embedding_head`; 0.963 alone);
- fine-tuned end to end with a LayerNorm + linear head, with speed, placement, noise and SpecAugment
  (:func:`run_finetune`, on a GPU; 0.983 alone). This one ships.

The recogniser adds the member's log-probabilities to the CNN's.

Clip path (training, evaluation and service alike): the trimmed 8 kHz word (``digits.speech_span``)
-> 16 kHz -> peak at 0.5 -> centred in ``CLIP_S`` seconds of a faint seeded noise floor (a longer word
keeps its centre) -> the embedding's window vectors every 40 ms -> flattened (21 x 96). The frozen head
upsamples with soxr (``speech.audio.resample``), the fine-tuned model by zero-padding the spectrum
(:func:`upsample_2x`, numpy only, so the GPU machine without librosa computes exactly what the service
does); for 8 kHz speech the two agree to rounding.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CLIP_S = 1.6
STEP = 4  # mel frames between window embeddings (40 ms)
PEAK = 0.5
NOISE = 1e-4


@dataclass
class EmbeddingHeadConfig:
    c: float = 0.03  # inverse L2 strength of the logistic regression
    speed_rates: tuple[float, ...] = ()  # training-only speed copies of the real clips (0.9 / 1.1 did not help)
    clip_s: float = CLIP_S
    step: int = STEP


def clip_frames(wave8k: np.ndarray, encoder, clip_s: float = CLIP_S, speed: float = 1.0) -> np.ndarray:
    """One trimmed 8 kHz clip -> its flattened window embeddings (``encoder``: a loaded
    ``SpeechEmbeddingEncoder`` whose ``step`` sets the hop)."""
    from apps.customer_service.speech.audio import resample

    x = resample(np.asarray(wave8k, dtype=np.float32), 8000, 16000)
    if speed != 1.0:  # read at 16 kHz after resampling as if recorded at 16 kHz x speed: tempo and pitch x 1/speed
        x = resample(x, 16000, round(16000 / speed))
    return encoder.frames(centred_clip(x, clip_s)).reshape(-1)


def clip_features(waves8k: list[np.ndarray], encoder, clip_s: float = CLIP_S, speed: float = 1.0) -> np.ndarray:
    return np.stack([clip_frames(w, encoder, clip_s, speed) for w in waves8k]).astype(np.float32)


def fit_head(x: np.ndarray, y: np.ndarray, c: float) -> dict[str, np.ndarray]:
    """Standardise -> multinomial logistic regression; returns its arrays (the bundle's tensors)."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit((x - mean) / scale, y)
    if list(lr.classes_) != list(range(10)):
        raise ValueError(f"the head needs all ten digits in training, got {list(lr.classes_)}")
    return {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32),
            "coef": lr.coef_.astype(np.float32), "intercept": lr.intercept_.astype(np.float32)}


def head_log_proba(head: dict, x: np.ndarray) -> np.ndarray:
    """(N, 10) log-probabilities of the fitted head for features ``x`` (N, F)."""
    z = ((x - head["mean"]) / head["scale"]) @ head["coef"].T + head["intercept"]
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _features(pack_path: Path, encoder, rates: tuple[float, ...], cache_dir: Path, cfg: EmbeddingHeadConfig,
              log=print) -> dict[float, np.ndarray]:
    """Every clip of the pack at speed 1 and each of ``rates``, cached per pack and rate."""
    from apps.customer_service.speech.digits import read_pack

    waves = None
    out = {}
    for rate in (1.0, *rates):
        path = cache_dir / f"emb_{pack_path.stem}_speed{rate:g}_clip{cfg.clip_s:g}_step{cfg.step}.npz"
        if path.is_file():
            z = np.load(path)
            if str(z["encoder"]) == encoder.sha256:
                out[rate] = z["x"]
                continue
        waves = waves if waves is not None else read_pack(pack_path)[0]
        t0 = time.perf_counter()
        out[rate] = clip_features(waves, encoder, cfg.clip_s, rate)
        log(f"{pack_path.name} speed {rate:g}: {len(waves)} clips, "
            f"{(time.perf_counter() - t0) / max(len(waves), 1) * 1000:.0f} ms/clip")
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=out[rate], encoder=encoder.sha256)
    return out


def run_embedding_head(pack_path: Path, out: Path, extra_pack: Path | None = None,
                       cfg: EmbeddingHeadConfig | None = None, cache_dir: Path = Path(".pack/cs/embedding"),
                       log=print) -> dict:
    """Leave-one-speaker-out heads (``head_oof_<speaker>.npz``: log-probabilities of the held-out
    speaker) and the head fitted on every speaker (``head_all.npz``), with ``extra_pack``'s synthetic
    speakers (speed 1 only) added to every training part."""
    from apps.customer_service.speech.digits import read_pack
    from apps.customer_service.speech_embedding import load_encoder

    cfg = cfg or EmbeddingHeadConfig()
    encoder = load_encoder(step=cfg.step)
    _w, y, spk, names = read_pack(pack_path)
    feats = _features(pack_path, encoder, cfg.speed_rates, cache_dir, cfg, log)
    extra_x = extra_y = None
    if extra_pack is not None:
        extra_x = _features(extra_pack, encoder, (), cache_dir, cfg, log)[1.0]
        extra_y = read_pack(extra_pack)[1]
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for fold in [*sorted(set(spk.tolist())), "all"]:
        train = spk != fold
        xs = [feats[r][train] for r in (1.0, *cfg.speed_rates)]
        ys = [y[train]] * len(xs)
        if extra_x is not None:
            xs.append(extra_x)
            ys.append(extra_y)
        head = fit_head(np.concatenate(xs), np.concatenate(ys), cfg.c)
        if fold == "all":
            np.savez(out / "head_all.npz", **head)
            continue
        logp = head_log_proba(head, feats[1.0][~train])
        np.savez(out / f"head_oof_{fold}.npz", logp=logp, y=y[~train], names=names[~train])
        report[fold] = round(float((logp.argmax(1) == y[~train]).mean()), 4)
        log(f"embedding head, held-out {fold}: accuracy {report[fold]}")
    meta = {"config": asdict(cfg), "encoder_sha256": encoder.sha256, "pack": str(pack_path),
            "extra": None if extra_pack is None else {"pack": str(extra_pack), "clips": len(extra_y)},
            "loso_accuracy": report}
    (out / "embedding_head.json").write_text(json.dumps(meta, indent=1))
    return report


# -- fine-tuning the embedding itself ------------------------------------------------------------

def upsample_2x(x8k: np.ndarray) -> np.ndarray:
    """8 -> 16 kHz by zero-padding the spectrum: exact for band-limited audio, numpy only (the
    training machine and the service compute the same thing)."""
    n = len(x8k)
    spectrum = np.zeros(n + 1, dtype=np.complex128)
    spectrum[:n // 2 + 1] = np.fft.rfft(np.asarray(x8k, dtype=np.float64))
    return (np.fft.irfft(spectrum, 2 * n) * 2).astype(np.float32)


def centred_clip(x16: np.ndarray, clip_s: float = CLIP_S, shift: int = 0,
                 noise: np.ndarray | None = None) -> np.ndarray:
    """Peak at ``PEAK``, centred (+ ``shift`` samples) in ``clip_s`` of ``noise`` (default: the seeded
    faint floor every scored clip gets); a longer clip keeps its centre."""
    n = int(clip_s * 16000)
    x = np.asarray(x16, dtype=np.float32)
    if len(x) > n:
        start = (len(x) - n) // 2
        x = x[start:start + n]
    x = x * np.float32(PEAK / (float(np.abs(x).max()) + 1e-9))
    out = (np.random.default_rng(0).standard_normal(n).astype(np.float32) * np.float32(NOISE)
           if noise is None else noise)
    start = min(max((n - len(x)) // 2 + shift, 0), n - len(x))
    out[start:start + len(x)] += x
    return out


@dataclass
class FinetuneConfig:
    lr_backbone: float = 3e-5  # the pretrained convolutions move slowly...
    lr_head: float = 1e-3  # ...the new head fast
    epochs: int = 20
    batch_size: int = 64
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    speed: tuple[float, float] = (0.88, 1.12)  # tempo and pitch x 1/speed (linear interpolation at 16 kHz)
    shift_s: float = 0.15  # word placement around the centre
    snr_db: tuple[float, float] = (15.0, 45.0)  # white noise under the word's power
    freq_mask: int = 4  # SpecAugment: up to this many of the 32 mel bands...
    time_mask: int = 12  # ...and this many frames, filled with the clip's mean
    clip_s: float = CLIP_S
    seed: int = 0


def build_classifier(encoder=None, windows: int = 21):
    """The speech embedding + LayerNorm / dropout / linear head on its flattened window vectors."""
    import torch
    from torch import nn

    from apps.customer_service.speech_embedding import SpeechEmbeddingEncoder

    class EmbeddingDigitClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder if encoder is not None else SpeechEmbeddingEncoder(step=STEP)
            d = self.encoder.dim * windows
            self.head = nn.Sequential(nn.LayerNorm(d), nn.Dropout(0.3), nn.Linear(d, 10))

        def forward(self, mel: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder({"mel": mel}).tokens.flatten(1))

        @torch.no_grad()
        def log_proba(self, waves8k: list[np.ndarray], clip_s: float = CLIP_S, batch_size: int = 128) -> np.ndarray:
            """(N, 10) for trimmed 8 kHz clips, through the scoring path (no augmentation)."""
            self.eval()
            device = next(self.parameters()).device
            out = []
            for i in range(0, len(waves8k), batch_size):
                pcm = np.stack([centred_clip(upsample_2x(w), clip_s) for w in waves8k[i:i + batch_size]])
                pcm = torch.from_numpy(np.clip(pcm, -1, 1) * 32767).to(device)
                out.append(self(self.encoder.melspectrogram(pcm)).log_softmax(-1).cpu().numpy())
            return np.concatenate(out) if out else np.zeros((0, 10), np.float32)

    return EmbeddingDigitClassifier()


def _augmented_batch(waves16: list[np.ndarray], idx: np.ndarray, cfg: FinetuneConfig, rng) -> np.ndarray:
    import torch
    from torch.nn import functional as F

    n = int(cfg.clip_s * 16000)
    out = np.zeros((len(idx), n), np.float32)
    for j, i in enumerate(idx):
        x = torch.from_numpy(waves16[i])[None, None]
        x = F.interpolate(x, size=max(8, round(x.shape[-1] / rng.uniform(*cfg.speed))), mode="linear",
                          align_corners=False)[0, 0].numpy()[:n]
        x = x * np.float32(PEAK / (float(np.abs(x).max()) + 1e-9))
        power = float(np.mean(np.square(x)))
        sd = max(np.sqrt(power / 10 ** (rng.uniform(*cfg.snr_db) / 10)), NOISE)
        noise = rng.standard_normal(n).astype(np.float32) * np.float32(sd)
        shift = int(rng.integers(-int(cfg.shift_s * 16000), int(cfg.shift_s * 16000) + 1))
        out[j] = centred_clip(x, cfg.clip_s, shift, noise)
    return out


def _spec_augment(mel, cfg: FinetuneConfig, rng):
    mel = mel.clone()
    b, t, m = mel.shape
    for i in range(b):
        fill = mel[i].mean()
        f0 = int(rng.integers(0, m - cfg.freq_mask))
        mel[i, :, f0:f0 + int(rng.integers(0, cfg.freq_mask + 1))] = fill
        t0 = int(rng.integers(0, t - cfg.time_mask))
        mel[i, t0:t0 + int(rng.integers(0, cfg.time_mask + 1))] = fill
    return mel


def finetune(waves8k: list[np.ndarray], labels: np.ndarray, cfg: FinetuneConfig | None = None,
             device: str = "cpu", log=print, encoder=None):
    """Fine-tune the shipped speech embedding (or ``encoder``) + a new head on trimmed 8 kHz clips with
    speed, placement, noise and SpecAugment; AdamW with a slow backbone and a fast head, one-cycle."""
    import torch
    from torch.nn import functional as F

    from apps.customer_service.speech_embedding import load_encoder

    cfg = cfg or FinetuneConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if encoder is None:
        import copy

        encoder = copy.deepcopy(load_encoder(step=STEP))
    model = build_classifier(encoder).to(device)
    waves16 = [upsample_2x(w) for w in waves8k]
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr_head},
              {"params": list(model.encoder.parameters()), "lr": cfg.lr_backbone}]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * (len(waves16) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                pct_start=0.1)
    t0 = time.time()
    model.train()
    for step in range(steps):
        idx = rng.integers(0, len(waves16), cfg.batch_size)
        pcm = torch.from_numpy(np.clip(_augmented_batch(waves16, idx, cfg, rng), -1, 1) * 32767).to(device)
        mel = _spec_augment(model.encoder.melspectrogram(pcm), cfg, rng)
        loss = F.cross_entropy(model(mel), y[torch.as_tensor(idx, device=device)], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"  step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    return model.eval()


def run_finetune(pack_path: Path, out: Path, fold: str = "all", extra_pack: Path | None = None,
                 cfg: FinetuneConfig | None = None, device: str | None = None) -> dict:
    """One leave-one-speaker-out fold (``head_oof_<fold>.npz``, the held-out speaker's
    log-probabilities, the same layout as :func:`run_embedding_head`) or the all-speaker model
    (``finetuned_all.safetensors``), with ``extra_pack``'s synthetic speakers in training."""
    import torch
    from safetensors.torch import save_file

    from apps.customer_service.speech.digits import read_pack
    from apps.customer_service.speech_embedding import load_encoder

    cfg = cfg or FinetuneConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    waves, y, spk, names = read_pack(pack_path)
    train = spk != fold
    tw, ty = [w for w, t in zip(waves, train) if t], y[train]
    if extra_pack is not None:
        ew, ey, _s, _n = read_pack(extra_pack)
        tw, ty = tw + list(ew), np.concatenate([ty, ey])
    t0 = time.time()
    model = finetune(tw, ty, cfg, device, log=lambda m: print(f"[{fold}] {m}", flush=True))
    out.mkdir(parents=True, exist_ok=True)
    result = {"fold": fold, "config": asdict(cfg), "train_clips": len(tw), "train_s": round(time.time() - t0, 1),
              "pretrained_sha256": load_encoder(step=STEP).sha256,
              "extra": None if extra_pack is None else {"pack": str(extra_pack), "clips": len(ew)}}
    if fold != "all":
        logp = model.log_proba([w for w, t in zip(waves, train) if not t], cfg.clip_s)
        np.savez(out / f"head_oof_{fold}.npz", logp=logp, y=y[~train], names=names[~train])
        result["accuracy"] = float((logp.argmax(1) == y[~train]).mean())
    else:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(out / "finetuned_all.safetensors"))
    (out / f"finetune_{fold}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return result
