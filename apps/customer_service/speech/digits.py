"""Learned spoken-digit recogniser: 8 kHz log-mel -> small CNN -> one of ten digits.

Why not the grammar: pocketsphinx's acoustic model was trained on wide-band read speech; on
trimmed 8 kHz digits from new speakers it reached 0.835 (grammar + band fill + pad). Ten classes
with 2,000 real examples and strong speaker augmentation (speed, VTLN warp, tempo, gain, noise,
shift, SpecAugment) are a better fit for "say your digit".

Audio path (the same in training, evaluation and service): whatever comes in is resampled to
16 kHz by ``speech.audio`` (as the ASR does), then to 8 kHz here (soxr), so telephone and
wide-band callers look alike; silence at both ends is trimmed by :func:`speech_span`.

``mode="digit"`` of the pocketsphinx backend uses :class:`DigitRecognizer` for the one word;
``mode="digits"`` uses it per VAD segment when the segmentation is clean (every segment a
plausible single-digit length, pauses between digits), else the JSGF grammar decides.

Training: ``python -m apps.customer_service.speech.digits pack`` (here, needs librosa) then
``... train PACK OUT`` (GPU or CPU), then ``... finalize OUT`` writes ``weights/digits``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 8000
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "digits"


# -- signal helpers (numpy; no torch needed) -----------------------------------------------------

def frame_db(x: np.ndarray, sr: int = SAMPLE_RATE, win_s: float = 0.02, hop_s: float = 0.01) -> np.ndarray:
    win, hop = int(win_s * sr), int(hop_s * sr)
    if len(x) < win:
        return np.array([10 * np.log10(np.mean(x ** 2) + 1e-12)])
    n = 1 + (len(x) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    return 10 * np.log10(np.mean(x[idx] ** 2, axis=1) + 1e-12)


def speech_span(x: np.ndarray, sr: int = SAMPLE_RATE, rel_db: float = 45.0, margin_s: float = 0.06) -> tuple[int, int]:
    """Sample range holding the speech: frames within ``rel_db`` of the loudest frame and above the
    noise floor (10th percentile + 6 dB), widened by ``margin_s``. Generous on purpose: cutting a
    weak /s/ or /t/ costs more than keeping a little silence."""
    db = frame_db(x, sr)
    if len(db) < 3:
        return 0, len(x)
    thresh = max(db.max() - rel_db, np.percentile(db, 10) + 6.0)
    active = np.flatnonzero(db > thresh)
    if active.size == 0:
        return 0, len(x)
    hop = int(0.01 * sr)
    start = max(0, active[0] * hop - int(margin_s * sr))
    end = min(len(x), (active[-1] + 2) * hop + int(margin_s * sr))
    return int(start), int(end)


def split_digits(x: np.ndarray, sr: int = SAMPLE_RATE, min_gap_s: float = 0.12, rel_db: float = 30.0,
                 min_word_s: float = 0.12) -> list[tuple[int, int]]:
    """Speech segments separated by pauses of at least ``min_gap_s`` (frames more than ``rel_db``
    under the loudest one count as pause). Used for digit strings read with pauses."""
    db = frame_db(x, sr)
    hop = int(0.01 * sr)
    thresh = max(db.max() - rel_db, np.percentile(db, 10) + 6.0)
    active = db > thresh
    segs, start, quiet = [], None, 0
    for i, a in enumerate(active):
        if a:
            if start is None:
                start = i
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * 0.01 >= min_gap_s:
                segs.append((start, i - quiet + 1))
                start, quiet = None, 0
    if start is not None:
        segs.append((start, len(active) - quiet))
    out = []
    margin = int(0.05 * sr)
    for s, e in segs:
        if (e - s) * 0.01 >= min_word_s:
            out.append((max(0, s * hop - margin), min(len(x), (e + 1) * hop + margin)))
    return out


def to_8k(audio16k: np.ndarray) -> np.ndarray:
    from apps.customer_service.speech.audio import resample

    return resample(np.asarray(audio16k, dtype=np.float32), 16_000, SAMPLE_RATE)


# -- model ---------------------------------------------------------------------------------------

def _configs():
    from apps.customer_service.logmel import FrontEndConfig, LogMelCNNConfig

    return FrontEndConfig, LogMelCNNConfig


@dataclass
class DigitTrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-2
    label_smoothing: float = 0.1
    speed: tuple = (0.85, 1.15)
    tempo: tuple = (0.85, 1.2)
    seed: int = 0

    @classmethod
    def from_name(cls, name: str) -> DigitTrainConfig:
        presets = {"small": cls(), "tiny": cls(epochs=2, batch_size=8)}
        return presets[name]


def build_model(preset: str = "digits", config: dict | None = None):
    """The digit classifier: LogMel front-end -> ("audio", "logmel_cnn") encoder -> linear head."""
    import torch
    from torch import nn

    from apps.customer_service.logmel import (
        FrontEndConfig,
        LogMel,
        LogMelCNNConfig,
        LogMelCNNEncoder,
        LogMelTDNNConfig,
        LogMelTDNNEncoder,
        pool_tokens,
    )

    kinds = {"cnn": (LogMelCNNConfig, LogMelCNNEncoder), "tdnn": (LogMelTDNNConfig, LogMelTDNNEncoder)}
    if config is None:
        kind = "tdnn" if preset.startswith("tdnn") else "cnn"
        size = "tiny" if preset.endswith("tiny") else "digits"
        front = FrontEndConfig.from_name("tiny" if size == "tiny" else "digits")
        config = {"frontend": front.to_dict(), "encoder": kinds[kind][0].from_name(size).to_dict(),
                  "encoder_kind": kind, "labels": list(DIGIT_WORDS)}
    enc_cfg, enc_cls = kinds[config.get("encoder_kind", "cnn")]

    class DigitModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            self.frontend = LogMel(FrontEndConfig.from_dict(config["frontend"]))
            self.encoder = enc_cls(enc_cfg.from_dict(config["encoder"]))
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * self.encoder.dim, len(config["labels"])))

        def features(self, wave: torch.Tensor, lengths: torch.Tensor, warp_index=None):
            return self.frontend(wave, lengths, warp_index)

        def classify(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.head(pool_tokens(self.encoder({"x": x, "mask": mask})))

        def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            x, mask = self.features(wave, lengths)
            return self.classify(x, mask)

    return DigitModel()


def pad_batch(waves: list[np.ndarray]):
    import torch

    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    out = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        out[i, :len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return out, lengths


def train_digit_model(waves: list[np.ndarray], labels: np.ndarray, cfg: DigitTrainConfig | None = None,
                      preset: str = "digits", device: str = "cpu", log=print,
                      extra: tuple[list[np.ndarray], np.ndarray] | None = None, init: dict | None = None):
    """Train one classifier on 8 kHz trimmed clips with the speaker augmentations of ``logmel``.

    ``extra`` (waves, labels): more training clips (the synthetic espeak-ng speakers of
    ``digit_augment``) mixed into the batches. An epoch stays ``len(waves) // batch_size`` steps
    drawn from the pooled clips, so a run with extra data costs the same as one without.
    ``init``: a state dict to start from (continued training of an earlier run of the same fold)."""
    import torch
    from torch.nn import functional as F

    from apps.customer_service.logmel import augment_waves, spec_augment, speed_perturb, time_stretch

    cfg = cfg or DigitTrainConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(preset).to(device)
    if init is not None:
        model.load_state_dict(init)
    steps_per_epoch = max(1, len(waves) // cfg.batch_size)
    if extra is not None and len(extra[0]):
        waves, labels = list(waves) + list(extra[0]), np.concatenate([labels, extra[1]])
    wave_all, len_all = pad_batch(waves)
    wave_all, len_all = wave_all.to(device), len_all.to(device)
    y_all = torch.as_tensor(labels, dtype=torch.long, device=device)
    n = len(waves)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    n_warps = len(model.frontend.config.warps)
    t0 = time.time()
    model.train()
    stream = np.zeros(0, dtype=np.int64)
    for epoch in range(cfg.epochs):
        losses = []
        for _ in range(steps_per_epoch):
            while len(stream) < cfg.batch_size:  # a continuous stream of permutations of the pool
                stream = np.concatenate([stream, rng.permutation(n)])
            idx, stream = torch.as_tensor(stream[:cfg.batch_size], device=device), stream[cfg.batch_size:]
            lens = len_all[idx]
            wave = wave_all[idx, :int(lens.max())]
            wave, lens = speed_perturb(wave, lens, *cfg.speed)
            wave, lens = augment_waves(wave, lens, sample_rate=model.frontend.config.sample_rate)
            warp = torch.randint(0, n_warps, (len(idx),), device=device)
            x, mask = model.features(wave, lens, warp)
            x, mask = time_stretch(x, mask, *cfg.tempo)
            x = spec_augment(x, mask, freq_width=max(2, x.shape[1] // 7))
            loss = F.cross_entropy(model.classify(x, mask), y_all[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        if (epoch + 1) % 5 == 0 or epoch == cfg.epochs - 1:
            log(f"  epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses):.3f} ({time.time() - t0:.0f}s)")
    return model.eval()


# Every clip the networks classify gets silence on both sides plus a faint noise floor: training
# always saw 0-150 ms of silence around the word and noise at 5-40 dB SNR (augment_waves), so a
# word trimmed to its edges and digitally clean is out of distribution (leave-one-speaker-out CNN
# accuracy 0.786 bare -> 0.891 with 75 ms + 25 dB). The probabilities are averaged over six draws
# from inside the training ranges (pads x noise seeds): 0.891 -> 0.903.
PAD_S = 0.075
NOISE_SNR_DB = 25.0
CONDITIONS = tuple((pad, seed) for pad in (0.05, 0.1, 0.15) for seed in (0, 1))


def condition_clip(x: np.ndarray, pad_s: float = PAD_S, snr_db: float | None = NOISE_SNR_DB,
                   seed: int = 0) -> np.ndarray:
    """``x`` (8 kHz) with ``pad_s`` of silence each side and white noise ``snr_db`` under its
    power (seeded: the same clip always gets the same answer)."""
    z = np.zeros(int(pad_s * SAMPLE_RATE), np.float32)
    y = np.concatenate([z, np.asarray(x, dtype=np.float32), z])
    if snr_db is not None and x.size:
        power = float(np.mean(np.square(x, dtype=np.float64)))
        y = y + np.random.default_rng(seed).standard_normal(len(y)).astype(np.float32) * np.float32(
            np.sqrt(power / 10 ** (snr_db / 10)))
    return y


def predict_proba(model, waves: list[np.ndarray], device: str = "cpu", batch_size: int = 128,
                  condition: bool = True) -> np.ndarray:
    import torch

    variants = [[condition_clip(w, pad, NOISE_SNR_DB, seed) for w in waves] for pad, seed in CONDITIONS] \
        if condition else [waves]
    probs = []
    with torch.no_grad():
        for ws in variants:
            out = [model(*(t.to(device) for t in pad_batch(ws[i:i + batch_size]))).softmax(-1).cpu().numpy()
                   for i in range(0, len(ws), batch_size)]
            probs.append(np.concatenate(out) if out else np.zeros((0, 10), dtype=np.float32))
    return np.mean(probs, axis=0)


# -- the recogniser the ASR calls ---------------------------------------------------------------

class DigitRecognizer:
    """Shipped digit classifier (``weights/digits``). ``transcribe_digit`` and ``transcribe_digits``
    take 16 kHz float audio and return :class:`~.asr.Word` lists (times in seconds)."""

    name = "digit-cnn"

    def __init__(self, bundle: str | Path | None = None) -> None:
        import torch

        from core.bundle import load_bundle

        b = load_bundle(bundle or WEIGHTS)
        self.members = []
        for i, cfg in enumerate(b.config["members"]):
            m = build_model(config=cfg)
            prefix = f"members.{i}."
            m.load_state_dict({k[len(prefix):]: v.float() for k, v in b.state_dict.items() if k.startswith(prefix)})
            self.members.append(m.eval())
        self.model = self.members[0]
        # log-probability bonus for the digit the JSGF grammar decoded (0 = networks alone): the
        # two err on different clips (see the card's leave-one-speaker-out grid)
        self.grammar_weight = float(b.config.get("grammar_weight", 0.0))
        # Google's speech embedding (digit_embedding), frozen with a linear head or fine-tuned: its
        # log-probabilities are added to the networks' (the card's grid)
        emb = b.config.get("embedding")
        self.embedding_weight = float(emb["weight"]) if emb else 0.0
        self.clip_s = float(emb["clip_s"]) if emb else 0.0
        self.tuned = None
        if emb and emb.get("kind") == "finetuned":  # the whole network, fine-tuned, is in this bundle
            from apps.customer_service.speech.digit_embedding import build_classifier

            prefix = "embedding_model."
            self.tuned = build_classifier()
            self.tuned.load_state_dict({k[len(prefix):]: v.float() for k, v in b.state_dict.items()
                                        if k.startswith(prefix)})
            self.tuned.eval()
        elif emb:
            from apps.customer_service.speech_embedding import load_encoder
            from core.bundle import BundleError

            self.embedder = load_encoder(step=emb["step"])
            if self.embedder.sha256 != emb["encoder_sha256"]:
                raise BundleError(f"digit bundle {b.path}: its head was fitted on speech embedding "
                                  f"{emb['encoder_sha256'][:12]}…, the installed one is {self.embedder.sha256[:12]}…")
            self.head = {k: b.state_dict[f"embedding_head.{k}"].float().numpy() for k in HEAD_KEYS}
        self.version = f"{b.card.name}-{b.card.version}"
        self.sha256 = b.card.sha256
        self._torch = torch

    def _classify(self, pieces: list[np.ndarray], hints: list[int | None] | None = None) -> np.ndarray:
        logp = np.log(np.mean([predict_proba(m, pieces) for m in self.members], axis=0) + 1e-9)
        if self.tuned is not None:
            logp = logp + self.embedding_weight * self.tuned.log_proba(pieces, self.clip_s)
        elif self.embedding_weight:
            from apps.customer_service.speech.digit_embedding import clip_features, head_log_proba

            logp = logp + self.embedding_weight * head_log_proba(self.head, clip_features(pieces, self.embedder,
                                                                                          self.clip_s))
        for i, hint in enumerate(hints or []):
            if hint is not None and self.grammar_weight:
                logp[i, hint] += self.grammar_weight
        p = np.exp(logp - logp.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    def transcribe_digit(self, audio16k: np.ndarray, hint: int | None = None) -> list:
        """One digit word; ``hint`` is the grammar's digit for the same audio (or None)."""
        from apps.customer_service.speech.asr import Word

        x = to_8k(audio16k)
        s, e = speech_span(x)
        p = self._classify([x[s:e]], [hint])[0]
        k = int(p.argmax())
        return [Word(DIGIT_WORDS[k], s / SAMPLE_RATE, e / SAMPLE_RATE, float(p[k]))]

    def segment_digits(self, audio16k: np.ndarray, max_word_s: float = 1.1) -> list[tuple[int, int]] | None:
        """8 kHz sample ranges of the digits when the pauses make them separable, else None."""
        x = to_8k(audio16k)
        segs = split_digits(x)
        if not segs or any((e - s) / SAMPLE_RATE > max_word_s for s, e in segs):
            return None
        return segs

    def transcribe_segments(self, audio16k: np.ndarray, segs: list[tuple[int, int]],
                            hints: list[int | None] | None = None) -> list:
        from apps.customer_service.speech.asr import Word

        x = to_8k(audio16k)
        probs = self._classify([x[s:e] for s, e in segs], hints)
        return [Word(DIGIT_WORDS[int(p.argmax())], s / SAMPLE_RATE, e / SAMPLE_RATE, float(p.max()))
                for (s, e), p in zip(segs, probs)]


HEAD_KEYS = ("mean", "scale", "coef", "intercept")


_SHARED: dict[str, DigitRecognizer] = {}


def shared_digit_recognizer(bundle: str | Path | None = None) -> DigitRecognizer:
    key = str(bundle or WEIGHTS)
    if key not in _SHARED:
        _SHARED[key] = DigitRecognizer(bundle)
    return _SHARED[key]


def learned_digit_words(audio16k: np.ndarray, mode: str, bundle: str | Path | None = None,
                        hint: Callable[[], int | None] | None = None,
                        segment_hint: Callable[[np.ndarray], int | None] | None = None,
                        strings_bundle: str | Path | None = None) -> tuple[list, str] | None:
    """The digit modes' words from the learned recogniser: ``(words, model version)``, or None when
    the grammar should decide (no bundle shipped, or a digit string without clear pauses and no
    string model: ``digit_strings``, ``strings_bundle`` or the shipped one).

    ``hint`` gives the grammar's digit for the whole clip (mode "digit"); ``segment_hint`` the
    grammar's digit for one segment's 16 kHz audio (mode "digits"). Both are asked only when the
    bundle weighs the grammar's answer."""
    if bundle is None and not (WEIGHTS / "model.safetensors").is_file():
        return None  # a checkout without the shipped digit bundle: the grammar still works
    rec = shared_digit_recognizer(bundle)
    if mode == "digit":
        return rec.transcribe_digit(audio16k, hint() if hint is not None and rec.grammar_weight else None), rec.version
    segs = rec.segment_digits(audio16k)
    if segs is None:  # digits run together: the CTC string model when one is shipped, else the grammar
        from apps.customer_service.speech.digit_strings import read_digit_string

        return read_digit_string(audio16k, strings_bundle)
    hints = ([segment_hint(audio16k[2 * s:2 * e]) for s, e in segs]  # 8 -> 16 kHz sample ranges
             if segment_hint is not None and rec.grammar_weight else None)
    return rec.transcribe_segments(audio16k, segs, hints), rec.version


def synthetic_strings(waves: list[np.ndarray], labels: np.ndarray, n: int = 100, length: tuple[int, int] = (4, 8),
                      gap_s: tuple[float, float] = (0.15, 0.5), snr_db: float = 30.0, seed: int = 0):
    """Digit strings read with pauses, built from isolated clips (8 kHz): ``(audio16k, digits)``
    pairs. Real callers coarticulate more than this; it measures the segmentation path only."""
    from apps.customer_service.speech.audio import resample

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(length[0], length[1] + 1))
        idx = rng.integers(0, len(waves), k)
        parts = [np.zeros(int(rng.uniform(*gap_s) * SAMPLE_RATE), np.float32)]
        for i in idx:
            parts += [waves[i], np.zeros(int(rng.uniform(*gap_s) * SAMPLE_RATE), np.float32)]
        x = np.concatenate(parts)
        x = x + rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(np.mean(x ** 2) / 10 ** (snr_db / 10))
        out.append((resample(x.astype(np.float32), SAMPLE_RATE, 16_000), [int(labels[i]) for i in idx]))
    return out


# -- data pack, training runs, bundle ------------------------------------------------------------

_FSDD = r"^(\d)_([A-Za-z]+)_(\d+)\.wav$"


def fsdd_clips(root: str | Path) -> list[tuple[Path, int, str]]:
    """(path, digit, speaker) of every FSDD clip in ``<root>/recordings/`` (or ``root`` when it has none), sorted.
    Listed as the other loaders list data (``core.data.dataset_files``): the extension in any case (``.WAV``
    written on another OS), hidden files (macOS ``._<name>`` copies) skipped; the recordings folder only, not
    the folders below it."""
    import re

    from core.data import dataset_files

    root = Path(root)
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    out = []
    for path in dataset_files(rec, ".wav"):
        m = re.match(_FSDD, path.name, re.IGNORECASE)
        if m and path.parent == rec:
            out.append((path, int(m.group(1)), m.group(2)))
    return out


def load_fsdd_8k(root: str | Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[str]]:
    """FSDD clips through the service's audio path (load_audio -> 16 kHz -> 8 kHz), trimmed."""
    from apps.customer_service.speech.audio import load_audio

    waves, ys, spk, names = [], [], [], []
    for path, digit, speaker in fsdd_clips(root):
        x = to_8k(load_audio(path).mono())
        s, e = speech_span(x)
        waves.append(x[s:e])
        ys.append(digit)
        spk.append(speaker)
        names.append(path.name)
    return waves, np.array(ys), np.array(spk), names


def pack(fsdd: Path, out: Path) -> None:
    waves, y, spk, names = load_fsdd_8k(fsdd)
    lens = np.array([len(w) for w in waves])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, pcm=(np.concatenate(waves) * 32767).round().clip(-32768, 32767).astype(np.int16),
                        lengths=lens, y=y, speakers=spk, names=np.array(names))
    print(f"{len(waves)} clips, {lens.sum() / SAMPLE_RATE:.0f} s -> {out}")


def read_pack(path: Path):
    z = np.load(path, allow_pickle=False)
    pcm = z["pcm"].astype(np.float32) / 32767.0
    offs = np.concatenate([[0], np.cumsum(z["lengths"])])
    waves = [pcm[offs[i]:offs[i + 1]] for i in range(len(z["lengths"]))]
    return waves, z["y"], z["speakers"], z["names"]


def run_training(pack_path: Path, out: Path, *, fold: str = "all", epochs: int | None = None, seed: int = 0,
                 device: str | None = None, preset: str = "digits", extra_pack: Path | None = None,
                 init_run: Path | None = None, lr: float | None = None) -> None:
    """``fold``: a speaker name (leave it out, score it) or "all" (the shipped refit).
    ``extra_pack``: synthetic speakers (``digit_augment``) added to the training clips only.
    ``init_run``: a training output folder whose model of the SAME fold (never trained on the
    held-out speaker) is the starting point; on one CPU thread a 60-epoch run from scratch takes
    about 20 minutes, continued training a quarter of that."""
    import torch
    from safetensors.torch import save_file

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(1)
    waves, y, spk, names = read_pack(pack_path)
    base = DigitTrainConfig.from_name("tiny" if preset.endswith("tiny") else "small")
    cfg = base.__class__(**{**base.__dict__, "seed": seed, **({"epochs": epochs} if epochs else {}),
                            **({"lr": lr} if lr else {})})
    train = spk != fold
    t0 = time.time()
    print(f"fold {fold}: {train.sum()} train clips on {device}", flush=True)
    extra = None
    if extra_pack is not None:
        ew, ey, _es, _en = read_pack(extra_pack)
        extra = (ew, ey)
        print(f"+ {len(ew)} synthetic clips from {extra_pack}", flush=True)
    init = None
    if init_run is not None:
        from safetensors.torch import load_file

        init = load_file(str(Path(init_run) / f"digits_{fold}_s{seed}.safetensors"))
        print(f"starting from {init_run}/digits_{fold}_s{seed}", flush=True)
    model = train_digit_model([w for w, t in zip(waves, train) if t], y[train], cfg, preset=preset, device=device,
                              log=lambda m: print(f"[{fold}/{seed}] {m}", flush=True), extra=extra, init=init)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{fold}_s{seed}"
    result = {"fold": fold, "seed": seed, "epochs": cfg.epochs, "train_s": time.time() - t0,
              "extra": None if extra is None else {"pack": str(extra_pack), "clips": len(extra[0])},
              "init": None if init_run is None else str(init_run)}
    if fold != "all":
        held = ~train
        proba = predict_proba(model, [w for w, h in zip(waves, held) if h], device)
        acc = float((proba.argmax(1) == y[held]).mean())
        result.update(accuracy=acc, n=int(held.sum()))
        np.savez(out / f"oof_{tag}.npz", proba=proba, y=y[held], names=names[held])
        print(f"fold {fold} seed {seed}: accuracy {acc:.4f} on {held.sum()} clips", flush=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"digits_{tag}.safetensors"))
    (out / f"digits_{tag}.json").write_text(json.dumps({"model": model.config, "train": cfg.__dict__, **result},
                                                       default=list, indent=1))


def rescore(run: Path, pack_path: Path, seed: int = 0) -> None:
    """Recompute every fold's out-of-fold probabilities from its saved weights (after a change
    of the inference-time conditioning)."""
    from safetensors.torch import load_file

    waves, y, spk, names = read_pack(pack_path)
    for f in sorted(run.glob(f"digits_*_s{seed}.json")):
        meta = json.loads(f.read_text())
        if meta["fold"] == "all":
            continue
        model = build_model(config=meta["model"])
        model.load_state_dict(load_file(str(f.with_suffix(".safetensors"))))
        held = spk == meta["fold"]
        proba = predict_proba(model.eval(), [w for w, h in zip(waves, held) if h])
        np.savez(run / f"oof_{meta['fold']}_s{seed}.npz", proba=proba, y=y[held], names=names[held])
        meta["accuracy"] = float((proba.argmax(1) == y[held]).mean())
        f.write_text(json.dumps(meta, indent=1))


def strings_report(run: Path, pack_path: Path, n: int = 25, grammar_weight: float = 1.0, seed: int = 0) -> dict:
    """Digit strings read with pauses (:func:`synthetic_strings` from each held-out speaker's own
    clips), decoded three ways with that fold's network: the JSGF ``digits`` grammar alone, VAD
    segments + network, VAD segments + network + the grammar's per-segment digit. WER and
    exact-string rate per speaker."""
    import jiwer
    from safetensors.torch import load_file

    from apps.customer_service.speech.grammars import DIGIT_VALUES
    from apps.customer_service.speech.sphinx import SphinxConfig, SphinxRecognizer

    waves, y, spk, _ = read_pack(pack_path)
    grammar = SphinxRecognizer(SphinxConfig(lm="bank", digit_model=False))
    out: dict[str, float] = {}
    for f in sorted(run.glob(f"digits_*_s{seed}.json")):
        meta = json.loads(f.read_text())
        s = meta["fold"]
        if s == "all":
            continue
        model = build_model(config=meta["model"])
        model.load_state_dict(load_file(str(f.with_suffix(".safetensors"))))
        rec = DigitRecognizer.__new__(DigitRecognizer)
        rec.members, rec.model, rec.grammar_weight = [model.eval()], model, grammar_weight
        import torch

        rec._torch = torch
        data = synthetic_strings([w for w, k in zip(waves, spk) if k == s], y[spk == s], n=n, seed=1)
        refs, hyps = [], {"grammar": [], "segments": [], "segments_fused": []}
        for audio, digs in data:
            refs.append(" ".join(DIGIT_WORDS[d] for d in digs))
            g = grammar.transcribe(audio, mode="digits").text.split()
            hyps["grammar"].append(" ".join(DIGIT_WORDS[DIGIT_VALUES[w]] if w in DIGIT_VALUES else w for w in g))
            segs = rec.segment_digits(audio)
            if segs is None:  # what the ASR does then: the grammar
                hyps["segments"].append(hyps["grammar"][-1])
                hyps["segments_fused"].append(hyps["grammar"][-1])
                continue
            hyps["segments"].append(" ".join(w.text for w in rec.transcribe_segments(audio, segs)))
            hints = [grammar._grammar_digit(audio[2 * a:2 * b]) for a, b in segs]
            hyps["segments_fused"].append(" ".join(w.text for w in rec.transcribe_segments(audio, segs, hints)))
        for k, h in hyps.items():
            out[f"wer_{k}_{s}"] = float(jiwer.wer(refs, h))
            out[f"exact_{k}_{s}"] = float(np.mean([a == b for a, b in zip(refs, h)]))
    return {k: round(v, 4) for k, v in sorted(out.items())}


def grammar_decisions(fsdd: Path, out: Path) -> None:
    """The JSGF digit grammar's answer (pocketsphinx, learned model off) for every FSDD clip:
    what the fusion weight is measured against. Never trained on these speakers."""
    from apps.customer_service.speech.audio import load_audio
    from apps.customer_service.speech.grammars import DIGIT_VALUES
    from apps.customer_service.speech.sphinx import SphinxConfig, SphinxRecognizer

    rec = SphinxRecognizer(SphinxConfig(lm="bank", digit_model=False))
    names, hyp = [], []
    for path, _, _ in fsdd_clips(fsdd):
        words = rec.transcribe(load_audio(path).mono(), mode="digit").text.split()
        hyp.append(DIGIT_VALUES.get(words[0], -1) if len(words) == 1 else -1)
        names.append(path.name)
    np.savez(out, names=np.array(names), digit=np.array(hyp))


def loso_report(runs: list[Path], grammar: Path | None, weights=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0), seed: int = 0,
                embedding: Path | None = None, embedding_weights=(0.5, 1.0, 2.0)) -> dict:
    """Leave-one-speaker-out accuracy per held-out speaker: the networks of ``runs`` (their
    probabilities averaged), the grammar alone, and their log-probabilities + ``w`` x
    one-hot(grammar digit) for each ``w``. With ``embedding`` (a ``digit_embedding`` run): its head
    alone (``embedding_*``) and, for each ``a`` of ``embedding_weights``, the networks + ``a`` x the
    head's log-probabilities + ``w`` x the grammar (``fused_e{a}_w{w}_*``)."""
    g = None
    if grammar is not None and Path(grammar).is_file():
        z = np.load(grammar)
        g = dict(zip(z["names"].tolist(), z["digit"].tolist()))
    out: dict[str, float] = {}
    rows: dict[str, list] = {}
    for f in sorted(runs[0].glob(f"oof_*_s{seed}.npz")):
        z = np.load(f)
        spk = f.name[len("oof_"):-len(f"_s{seed}.npz")]
        zs = [np.load(r / f.name) for r in runs]
        if any(list(o["names"]) != list(z["names"]) for o in zs):
            raise ValueError(f"{f.name}: the runs scored different clips")
        logp = np.log(np.mean([o["proba"] for o in zs], axis=0) + 1e-9)
        out[f"cnn_{spk}"] = float((logp.argmax(1) == z["y"]).mean())
        if g is not None:
            hint = np.array([g[n] for n in z["names"]])
            out[f"grammar_{spk}"] = float((hint == z["y"]).mean())
            onehot = np.zeros_like(logp)
            ok = hint >= 0
            onehot[np.flatnonzero(ok), hint[ok]] = 1.0
            for w in weights:
                out[f"fused_w{w:g}_{spk}"] = float(((logp + w * onehot).argmax(1) == z["y"]).mean())
        if embedding is not None:
            e = np.load(Path(embedding) / f"head_oof_{spk}.npz")
            if list(e["names"]) != list(z["names"]):
                raise ValueError(f"{embedding}: the embedding head scored other clips than {f.name}")
            out[f"embedding_{spk}"] = float((e["logp"].argmax(1) == z["y"]).mean())
            for a in embedding_weights:
                for w in weights if g is not None else (0.0,):
                    fused = logp + a * e["logp"] + (w * onehot if g is not None else 0.0)
                    out[f"fused_e{a:g}_w{w:g}_{spk}"] = float((fused.argmax(1) == z["y"]).mean())
        rows[spk] = z["y"]
    for prefix in {k.rsplit("_", 1)[0] for k in out}:
        vals = [out[f"{prefix}_{s}"] for s in rows]
        out[f"{prefix}_mean"] = float(np.mean(vals))
    return {k: round(v, 4) for k, v in sorted(out.items())}


def _training_steps(run: Path, seed: int = 0) -> list[str]:
    """The train commands that made ``run``, earlier runs it continued from first."""
    meta = json.loads((Path(run) / f"digits_all_s{seed}.json").read_text())
    t = meta["train"]
    steps = _training_steps(Path(meta["init"]), seed) if meta.get("init") else []
    args, env = "", ""
    if meta.get("init"):
        env = "OMP_NUM_THREADS=1 "
        args = f" --device cpu --init {meta['init']} --epochs {t['epochs']} --lr {t['lr']:g}"
    if meta.get("extra"):
        args += f" --extra {meta['extra']['pack']}"
    note = "" if meta.get("init") else f"  # {t['epochs']} epochs from scratch"
    steps.append(f"for f in jackson nicolas theo yweweler all; do {env}python -m apps.customer_service.speech.digits "
                 f"train .pack/cs/fsdd8k.npz {run} --fold $f{args}; done{note}")
    return steps


def _recipe(run: Path, seed: int = 0) -> str:
    """One line for the training chain of ``run``: "60 epochs from scratch + 15 continued (+ synthetic)"."""
    meta = json.loads(sorted(Path(run).glob(f"digits_*_s{seed}.json"))[0].read_text())  # any fold: same recipe
    here = f"{meta['train']['epochs']} {'continued' if meta.get('init') else 'epochs from scratch'}"
    here += " with the synthetic speakers" if meta.get("extra") else ""
    return (_recipe(Path(meta["init"]), seed) + " + " if meta.get("init") else "") + here


def finalize(runs: list[Path], weights: Path = WEIGHTS, seed: int = 0, grammar: Path | None = None,
             grammar_weight: float = 0.0, compare: dict[str, list[Path]] | None = None,
             embedding: Path | None = None, embedding_weight: float = 0.0) -> dict:
    """Bundle the refit-on-all model with the leave-one-speaker-out numbers in its card.
    ``compare``: named alternative run sets (e.g. the same recipe without the synthetic speakers)
    whose leave-one-speaker-out accuracy, with the same grammar weight, goes into the card too.
    ``embedding``: a ``digit_embedding`` run whose all-speaker head joins the bundle with
    ``embedding_weight`` (its leave-one-speaker-out heads are what the card reports)."""
    import torch
    from safetensors.torch import load_file

    from core.bundle import ModelCard, save_bundle

    use_embedding = embedding is not None and embedding_weight > 0
    report = loso_report(runs, grammar, seed=seed, embedding=embedding if use_embedding else None)
    without = f"fused_w{grammar_weight:g}" if grammar_weight else "cnn"
    shipped = f"fused_e{embedding_weight:g}_w{grammar_weight:g}" if use_embedding else without
    metrics = {k.replace(shipped, "loso_accuracy"): v for k, v in report.items() if k.startswith(shipped + "_")}
    metrics.update({k: v for k, v in report.items() if k.startswith(("cnn_", "grammar_", "embedding_"))
                    and shipped != "cnn"})
    if use_embedding:
        metrics.update({k.replace(without, "without_embedding"): v for k, v in report.items()
                        if k.startswith(without + "_")})
    compared = {}
    for name, other in (compare or {}).items():
        rep = loso_report(other, grammar, seed=seed, embedding=embedding if use_embedding else None)
        compared[name] = rep
        # a comparison run on fewer folds gets no mean: it would not compare with the shipped mean
        complete = {k for k in rep if k.startswith(shipped + "_")} >= {k for k in report if k.startswith(shipped + "_")}
        metrics.update({k.replace(shipped, name): v for k, v in rep.items()
                        if k.startswith(shipped + "_") and (complete or not k.endswith("_mean"))})
    metas = [json.loads((r / f"digits_all_s{seed}.json").read_text()) for r in runs]
    fold_metas = [json.loads(f.read_text()) for r in runs for f in sorted(r.glob(f"digits_*_s{seed}.json"))]
    extras = {json.dumps(m.get("extra")) for m in fold_metas}
    inits = {m.get("init") for m in fold_metas}
    if len(extras) > 1 or len(inits) > 1:
        raise ValueError(f"the folds of {runs} were trained differently (extra data {extras}, start {inits})")
    synthetic = metas[0].get("extra")
    state = {}
    for i, r in enumerate(runs):
        for k, v in load_file(str(r / f"digits_all_s{seed}.safetensors")).items():
            state[f"members.{i}.{k}"] = v.half() if v.is_floating_point() else v
    config = {"members": [m["model"] for m in metas], "grammar_weight": grammar_weight}
    head_meta = None
    tuned = use_embedding and (Path(embedding) / "finetuned_all.safetensors").is_file()
    if tuned:
        head_meta = json.loads((Path(embedding) / "finetune_all.json").read_text())
        for k, v in load_file(str(Path(embedding) / "finetuned_all.safetensors")).items():
            state[f"embedding_model.{k}"] = v
        config["embedding"] = {"kind": "finetuned", "weight": embedding_weight,
                               "pretrained_sha256": head_meta["pretrained_sha256"],
                               "clip_s": head_meta["config"]["clip_s"], "finetune": head_meta["config"]}
    elif use_embedding:
        head_meta = json.loads((Path(embedding) / "embedding_head.json").read_text())
        head = np.load(Path(embedding) / "head_all.npz")
        state.update({f"embedding_head.{k}": torch.from_numpy(head[k]) for k in HEAD_KEYS})
        config["embedding"] = {"kind": "linear", "weight": embedding_weight,
                               "encoder_sha256": head_meta["encoder_sha256"],
                               "clip_s": head_meta["config"]["clip_s"], "step": head_meta["config"]["step"],
                               "c": head_meta["config"]["c"], "speed_rates": head_meta["config"]["speed_rates"]}
    kinds = " + ".join(m["model"].get("encoder_kind", "cnn") for m in metas)
    steps = ["python -m apps.customer_service.speech.digits pack --fsdd ../shared/data/fsdd --out .pack/cs/fsdd8k.npz"]
    if synthetic:
        steps.append(f"python -m apps.customer_service.speech.digits synth-pack --out {synthetic['pack']} "
                     "--voices 200 --seed 0")
    steps += _training_steps(runs[0], seed)
    if tuned:
        hc = head_meta["config"]
        steps.append(f"for f in jackson nicolas theo yweweler all; do python -m apps.customer_service.speech.digits "
                     f"embed-tune .pack/cs/fsdd8k.npz {embedding} --fold $f"
                     + (f" --extra {head_meta['extra']['pack']}" if head_meta.get("extra") else "")
                     + f" --lr-backbone {hc['lr_backbone']:g} --epochs {hc['epochs']}; done  # one GPU, folds in parallel")
    elif use_embedding:
        steps.append(f"python -m apps.customer_service.speech.digits embed .pack/cs/fsdd8k.npz {embedding}"
                     + (f" --extra {head_meta['extra']['pack']}" if head_meta.get("extra") else "")
                     + f" --c {head_meta['config']['c']:g}")
    steps += ["python -m apps.customer_service.speech.digits grammar-decisions --out runs/digits_grammar.npz",
              f"python -m apps.customer_service.speech.digits finalize {' '.join(map(str, runs))} --grammar "
              f"runs/digits_grammar.npz --grammar-weight {grammar_weight:g}"
              + (f" --embedding {embedding} --embedding-weight {embedding_weight:g}" if use_embedding else "")
              + "".join(f" --compare {k}={','.join(map(str, v))}" for k, v in (compare or {}).items()),
              "triptych eval customer-service --asr ../shared/data/fsdd --json out.json"]
    data = [("FSDD (Free Spoken Digit Dataset, CC BY-SA 4.0): the 4 speakers here (jackson, nicolas, theo, "
             "yweweler), 2,000 clips, all indices (0-49)")]
    if synthetic:
        data.append(f"{synthetic['clips']:,} synthetic clips (training only, never scored): espeak-ng saying the ten "
                    "digit words in 200 random voices (8 English dialects x 36 voice variants x pitch 15-79 x "
                    "110-219 words/min; en-us+klatt held out for the tests), through the same 8 kHz path and "
                    "trimming as FSDD (speech/digit_augment.py)")
    if tuned:
        data.append("Google's pretrained speech embedding (weights/speech_embedding, Apache-2.0), fine-tuned here "
                    "end to end with a new head on the same FSDD clips"
                    + (f" and the {head_meta['extra']['clips']:,} synthetic clips" if head_meta.get("extra") else "")
                    + " (speed 0.88-1.12, placement +-0.15 s, noise 15-45 dB SNR, SpecAugment)")
    elif use_embedding:
        data.append("Google's pretrained speech embedding (weights/speech_embedding, Apache-2.0; frozen): its "
                    "head is fitted here on the same FSDD clips"
                    + (f" and the {head_meta['extra']['clips']:,} synthetic clips" if head_meta.get("extra") else ""))
    embedding_task = ((f"; plus {embedding_weight:g} x the log-probabilities of Google's pretrained speech embedding "
                       "fine-tuned with a linear head on the clip's 21 x 96 window vectors (speech/digit_embedding.py)")
                      if tuned else
                      (f"; plus {embedding_weight:g} x the log-probabilities of a logistic regression on Google's "
                       "pretrained speech embedding of the clip (21 windows x 96, speech/digit_embedding.py)")
                      if use_embedding else "")
    card = ModelCard(
        name="customer-service-digits", version="1.3.0" if tuned else "1.2.0" if use_embedding else "1.1.0" if synthetic else "1.0.0",
        task="isolated spoken digit (zero..nine) from 8 kHz audio: normalised log-mel (40 bands, 60-3800 Hz) -> "
             f"{kinds} (registered encoders audio/logmel_cnn, audio/logmel_tdnn; probabilities averaged) -> "
             f"10-way softmax, plus {grammar_weight:g} x one-hot of the pocketsphinx digit grammar's answer in the "
             f"log domain{embedding_task}; the ASR's digit mode",
        data=data,
        split="leave-one-speaker-out over the 4 speakers (each fold trains on 3, scores the 4th; a continued "
              "run starts from the same fold's earlier model, which never heard the held-out speaker either); "
              "the shipped model is refitted on all 4 with the same recipe. george and lucas (the hidden "
              f"evaluation speakers) were never seen. loso_accuracy_* is the shipped recipe ({_recipe(runs[0], seed)}); "
              + ", ".join(f"{k}_* the same fusion with the networks of {', '.join(map(str, v))} "
                          f"({_recipe(v[0], seed)})" for k, v in (compare or {}).items())
              + "; cnn_* the shipped recipe's networks alone, "
              "grammar_* the grammar alone"
              + ("; embedding_* the speech-embedding model alone (trained on the 3 training speakers of each "
                 "fold" + (" + the synthetic clips" if head_meta.get("extra") else "") + "), without_embedding_* "
                 "the networks + grammar at the same grammar weight" if use_embedding else "") + ".",
        metrics=metrics,
        reproduce="\n".join(steps),
        limitations=[(("Below" if metrics.get("loso_accuracy_mean", 0.0) < 0.98 else "At")
                      + " the issue's 0.98 on the leave-one-speaker-out proxy (loso_accuracy_*), where three training "
                     "speakers per fold carry little real speaker variety; "
                     + ("the pretrained speech embedding (trained by Google on far more voices) and " if use_embedding
                        else "") + "synthetic voices narrow the gap, "
                     "but the synthetic ones are formant-synthesised, not real callers. The proxy has four speakers: "
                     "the evaluation speakers (george, Greek accent; lucas, German accent) may score lower. The "
                     "accented speaker (nicolas) is the weakest fold."),
                     ("The grammar weight (a grid of six), the embedding weight (a grid of three), the "
                      "embedding head's C or the fine-tuning learning rate (3e-5 / 1e-4), the inference padding (a grid, then six draws inside "
                      "the training ranges) and the continued-training length were looked at on the same "
                      "leave-one-speaker-out predictions they are reported on: mildly optimistic."),
                     ("Trained on 4 adult male speakers (US, Belgian-French, German accents) plus synthetic "
                      "voices: real female, child and other-accent callers are untested."),
                     ("Isolated digits only; digit strings use it only when the caller pauses between digits "
                     "(VAD segments), otherwise the JSGF grammar."),
                     ("Always answers one of ten digits: out-of-vocabulary speech gets a digit with a lower "
                     "confidence, never a refusal.")],
        extra={"train": [m["train"] for m in metas], "train_s_all": [round(m["train_s"], 1) for m in metas],
               "continued_from": metas[0].get("init"), "synthetic": synthetic, "embedding_head": head_meta,
               "inference_conditioning": f"probabilities averaged over (silence each side s, noise seed) = "
                                         f"{list(CONDITIONS)}, white noise {NOISE_SNR_DB:g} dB under the clip's "
                                         "power (draws from inside the training augmentation ranges)",
               "augmentation": "speed 0.85-1.15, VTLN warp 0.86-1.14, tempo 0.85-1.2, gain +-12 dB, white/"
                               "pinkish noise 5-40 dB SNR (p 0.8), 0-150 ms shift both ends, SpecAugment 2F+2T"},
    )
    card.notes = ("Leave-one-speaker-out grid (accuracy per held-out speaker, CNN log-probabilities + w x "
                  "one-hot of the grammar's digit): " + json.dumps(report)
                  + "".join(f"\n\nThe same grid for {k} ({', '.join(map(str, compare[k]))}; held-out speakers "
                            f"{sorted({x.rsplit('_', 1)[1] for x in v if not x.endswith('_mean')})}): "
                            + json.dumps(v) for k, v in compared.items()))
    save_bundle(weights, state, config, card)
    del torch
    return metrics


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m apps.customer_service.speech.digits")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--fsdd", type=Path, default=Path("../shared/data/fsdd"))
    a.add_argument("--out", type=Path, default=Path(".pack/cs/fsdd8k.npz"))
    t = sub.add_parser("train")
    t.add_argument("pack", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--fold", default="all")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None)
    t.add_argument("--preset", default="digits", help="digits (2-D CNN) | tdnn (1-D, CPU-friendly) | tiny | tdnn-tiny")
    t.add_argument("--extra", type=Path, default=None, help="synth-pack output: synthetic speakers for training")
    t.add_argument("--init", type=Path, default=None, help="continue from this run folder's model of the same fold")
    t.add_argument("--lr", type=float, default=None)
    sy = sub.add_parser("synth-pack", help="espeak-ng synthetic digit speakers (training data only)")
    sy.add_argument("--out", type=Path, default=Path(".pack/cs/synth8k.npz"))
    sy.add_argument("--voices", type=int, default=200)
    sy.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("finalize")
    f.add_argument("runs", type=Path, nargs="+", help="training output folders (one member each)")
    f.add_argument("--weights", type=Path, default=WEIGHTS)
    f.add_argument("--grammar", type=Path, default=None, help="grammar-decisions output")
    f.add_argument("--grammar-weight", type=float, default=0.0)
    f.add_argument("--compare", action="append", default=[], metavar="NAME=RUN[,RUN]",
                   help="an alternative recipe's run folders, reported in the card as NAME_<speaker>")
    em = sub.add_parser("embed", help="speech-embedding head: leave-one-speaker-out + the all-speaker fit")
    em.add_argument("pack", type=Path)
    em.add_argument("out", type=Path)
    em.add_argument("--extra", type=Path, default=None, help="synth-pack output: synthetic speakers for training")
    em.add_argument("--c", type=float, default=None)
    f.add_argument("--embedding", type=Path, default=None, help="embed / embed-tune output: add it to the bundle")
    et = sub.add_parser("embed-tune", help="fine-tune the speech embedding: one fold (or all) per call")
    et.add_argument("pack", type=Path)
    et.add_argument("out", type=Path)
    et.add_argument("--fold", default="all")
    et.add_argument("--extra", type=Path, default=None)
    et.add_argument("--lr-backbone", type=float, default=None)
    et.add_argument("--epochs", type=int, default=None)
    et.add_argument("--device", default=None)
    f.add_argument("--embedding-weight", type=float, default=1.0)
    rs = sub.add_parser("rescore")
    rs.add_argument("run", type=Path)
    rs.add_argument("--pack", type=Path, default=Path(".pack/cs/fsdd8k.npz"))
    st = sub.add_parser("strings")
    st.add_argument("run", type=Path)
    st.add_argument("--pack", type=Path, default=Path(".pack/cs/fsdd8k.npz"))
    st.add_argument("--n", type=int, default=25)
    g = sub.add_parser("grammar-decisions")
    g.add_argument("--fsdd", type=Path, default=Path("../shared/data/fsdd"))
    g.add_argument("--out", type=Path, default=Path("runs/digits_grammar.npz"))
    r = sub.add_parser("report")
    r.add_argument("runs", type=Path, nargs="+")
    r.add_argument("--grammar", type=Path, default=None)
    r.add_argument("--embedding", type=Path, default=None)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.fsdd, args.out)
    elif args.cmd == "train":
        run_training(args.pack, args.out, fold=args.fold, epochs=args.epochs, seed=args.seed, device=args.device,
                     preset=args.preset, extra_pack=args.extra, init_run=args.init, lr=args.lr)
    elif args.cmd == "synth-pack":
        from apps.customer_service.speech.digit_augment import pack_synthetic

        pack_synthetic(args.out, args.voices, args.seed)
    elif args.cmd == "embed":
        from apps.customer_service.speech.digit_embedding import EmbeddingHeadConfig, run_embedding_head

        cfg = EmbeddingHeadConfig(**({"c": args.c} if args.c else {}))
        print(json.dumps(run_embedding_head(args.pack, args.out, args.extra, cfg), indent=1))
    elif args.cmd == "embed-tune":
        from apps.customer_service.speech.digit_embedding import FinetuneConfig, run_finetune

        cfg = FinetuneConfig(**{k: v for k, v in (("lr_backbone", args.lr_backbone), ("epochs", args.epochs))
                                if v is not None})
        run_finetune(args.pack, args.out, args.fold, args.extra, cfg, args.device)
    elif args.cmd == "rescore":
        rescore(args.run, args.pack)
    elif args.cmd == "strings":
        print(json.dumps(strings_report(args.run, args.pack, args.n), indent=1))
    elif args.cmd == "grammar-decisions":
        grammar_decisions(args.fsdd, args.out)
    elif args.cmd == "report":
        print(json.dumps(loso_report(args.runs, args.grammar, embedding=args.embedding), indent=1))
    else:
        compare = {c.split("=", 1)[0]: [Path(r) for r in c.split("=", 1)[1].split(",")] for c in args.compare}
        print(json.dumps(finalize(args.runs, args.weights, grammar=args.grammar, grammar_weight=args.grammar_weight,
                                  compare=compare, embedding=args.embedding,
                                  embedding_weight=args.embedding_weight if args.embedding else 0.0), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
