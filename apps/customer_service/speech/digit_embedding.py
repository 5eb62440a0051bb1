"""The digit recogniser's second member: a linear head on Google's pretrained speech embedding.

The log-mel CNN learns its features from three or four FSDD speakers; the speech embedding
(``apps.customer_service.speech_embedding``) was trained on a very large number of voices to spot
keywords. A class-balanced multinomial logistic regression on its frames of a digit clip reads the
word of an unseen speaker better than the CNN does, and the two err on different clips, so the
recogniser adds their log-probabilities (digit card: leave-one-speaker-out grid).

Clip path (training, evaluation and service alike): the trimmed 8 kHz word (``digits.speech_span``)
-> 16 kHz -> peak at 0.5 -> centred in ``CLIP_S`` seconds of a faint seeded noise floor (a longer word
keeps its centre) -> the embedding's window vectors every 40 ms -> flattened (21 x 96). Training adds
speed-perturbed copies (0.9 / 1.1) of every real training clip and, optionally, synthetic speakers
(``digit_augment``); scored clips are never perturbed.
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
    x = x * np.float32(PEAK / (float(np.abs(x).max()) + 1e-9))
    n = int(clip_s * 16000)
    if len(x) > n:
        start = (len(x) - n) // 2
        x = x[start:start + n]
    out = np.random.default_rng(0).standard_normal(n).astype(np.float32) * np.float32(NOISE)
    start = (n - len(x)) // 2
    out[start:start + len(x)] += x
    return encoder.frames(out).reshape(-1)


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
