"""Paired image + vibration benchmark from an explicit generative assumption.

No public data pairs a PCB camera image with the vibration of the machine that made the board, so
events are *composed* from the two real datasets under one stated assumption (``PairingConfig``):

1. the machine state m ~ ``state_prior`` (normal, ball, inner race, outer race);
2. the board is defective with probability
   ``p(m) = base_defect_rate + coupling * (fault_defect_rate[m] - base_defect_rate)``:
   coupling 0 makes board quality independent of the machine, coupling 1 gives the full rates;
3. a defective board's image is a DeepPCB *tested* image; with probability ``coupling * class_shift``
   it is drawn among boards whose most frequent defect class is one the fault favours
   (``fault_classes``), else uniformly; a good board's image is a DeepPCB *template*;
4. the vibration window is a real CWRU window recorded in state m.

Images come from the detector's held-out board groups only, split again by group (fusion-train:
group13000, fusion-test: group50600); vibration windows from the classifier's validation time
blocks only, split in time (first half fusion-train, second half fusion-test). The upstream models
are frozen; only the fusion model and the calibration of the Bayesian combination are fitted.

Decisions (board flagged defective) compared per coupling:
- image-only: any detection >= the detector's threshold (the production rule);
- vibration-only: P(defective | vibration), with P(defective | predicted state) counted on
  fusion-train events (pooled unless they show the state predicts defects: ``defect_rates_by_state``);
- Bayesian: logit P(d | vibration) + calibrated image log-likelihood ratio (Platt scaling of the
  detector's max-confidence logit: the detector bundle's own ``platt``, fitted on board groups it
  never trained on, when it has one, as the service uses it; else fitted on fusion-train events),
  assuming image and vibration independent given d; both posteriors are cut at the image rule's operating
  point (``BayesianCombiner.decision_logit``), not at 0.5, so that all three trade false alarms for misses
  alike and a machine state that says nothing leaves the image decision as it is;
- learned: the FusionModel (SpatioTemporalAttention over detector tokens x vibration time tokens,
  ModalityGate), trained on fusion-train events.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

STATE_NAMES = ("normal", "ball", "inner_race", "outer_race")


@dataclass
class PairingConfig:
    """Every parameter of the generative assumption (documented in the module docstring)."""

    state_prior: tuple[float, ...] = (0.7, 0.1, 0.1, 0.1)  # normal, ball, inner race, outer race
    base_defect_rate: float = 0.2  # P(defective board) from a healthy machine, at every coupling
    fault_defect_rate: tuple[float, ...] = (0.2, 0.6, 0.9, 0.75)  # P(defective | state) at coupling 1
    fault_classes: dict = field(
        default_factory=lambda: {1: ["mousebite", "open"], 2: ["short", "spur"], 3: ["copper", "pin-hole"]}
    )
    class_shift: float = 0.8  # at coupling 1, share of a faulty machine's defective boards drawn from its favoured classes
    couplings: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    train_events: int = 2000
    test_events: int = 4000
    fusion_train_groups: tuple[str, ...] = ("group13000",)
    fusion_test_groups: tuple[str, ...] = ("group50600",)
    epochs: int = 8
    token_dropout: float = 0.5  # share of training events whose image tokens are zeroed (see train_fusion)
    seed: int = 0

    def defect_rate(self, state: int, coupling: float) -> float:
        return self.base_defect_rate + coupling * (self.fault_defect_rate[state] - self.base_defect_rate)


# --------------------------------------------------------------------------- upstream features
def image_features(detector_dir: Path, deeppcb_root: Path, split: str, out: Path, threads: int = 1, limit=None,
                   precision: str = "fp32") -> Path:
    """Run the frozen detector once over tested images and templates of `split`; cache to npz.

    ``precision``: "int8" scores with the bundle's quantised model, as the service does by default."""
    import torch

    from apps.industrial.data import DEFECT_CLASSES, load_deeppcb, load_gray
    from apps.industrial.detector import detect_with_tokens, load_onnx_detector, prepare_image

    torch.set_num_threads(threads)
    model, config, bundle = load_onnx_detector(detector_dir, threads, precision=precision)
    platt = bundle.config.get("platt") or {}
    rows = {"max_conf": [], "n_defects": [], "tokens": [], "defective": [], "group": [], "dominant": []}
    for s in load_deeppcb(deeppcb_root, split)[:limit]:
        for path, defective in ((s.image, 1), (s.template, 0)):
            if path is None:
                continue
            dets, tokens = detect_with_tokens(model, [prepare_image(load_gray(path), config)], config, conf=0.05)
            confs = [d.confidence for d in dets[0]]
            rows["max_conf"].append(max(confs, default=0.0))
            rows["n_defects"].append(sum(c >= config.report_conf for c in confs))
            rows["tokens"].append(tokens[0].astype(np.float16))
            rows["defective"].append(defective)
            rows["group"].append(s.group)
            dominant = np.bincount(s.classes, minlength=len(DEFECT_CLASSES)).argmax() if defective else -1
            rows["dominant"].append(dominant)
    # The bundle's own Platt scaling travels with its scores (run_benchmark uses it, as the service does).
    extra = {"platt_a": float(platt["a"]), "platt_b": float(platt["b"])} if platt else {}
    np.savez_compressed(out, **{k: np.asarray(v) for k, v in rows.items()}, threshold=config.conf, precision=precision, **extra)
    return Path(out)


def vibration_features(vibration_dir: Path, cwru_root: Path, out: Path, val_fraction: float = 0.25, threads: int = 1) -> Path:
    """Frozen vibration classifier over the validation time blocks; cache probs + tokens to npz."""
    import torch

    from apps.industrial.model import load_vibration_classifier
    from apps.industrial.signals import frame, time_blocks
    from apps.industrial.train import recordings_at_model_rate

    torch.set_num_threads(threads)
    model, _ = load_vibration_classifier(vibration_dir)
    rows = {"probs": [], "tokens": [], "state": [], "half": []}
    for r in recordings_at_model_rate(cwru_root):
        _, va = time_blocks(len(r.signal), val_fraction)
        windows = frame(r.signal[va])
        with torch.inference_mode():
            x = torch.from_numpy(windows)
            enc = model.encoder(x)
            probs = model.head(enc.pooled()).softmax(-1).numpy()
        half = (np.arange(len(windows)) >= len(windows) // 2).astype(int)  # 0 = fusion-train, 1 = fusion-test
        rows["probs"].append(probs), rows["tokens"].append(enc.tokens.numpy().astype(np.float16))
        rows["state"].append(np.full(len(windows), r.label)), rows["half"].append(half)
    np.savez_compressed(out, **{k: np.concatenate(v) for k, v in rows.items()})
    return Path(out)


# ----------------------------------------------------------------------------------- events
def upstream_features(detector_dir: Path, vibration_dir: Path, deeppcb_root: Path, cwru_root: Path, split: str,
                      cache: Path, log=print) -> tuple[Path, Path, dict | None, str]:
    """Cached detector and vibration outputs for the paired benchmark: (image npz, vibration npz, the detector's
    own Platt or None, the precision the boards were scored at). Boards are scored as the service scores them
    (its default INT8 model when the bundle ships one) and the caches are named by the upstream weights, so a
    retrained model never reuses stale features."""
    from core.bundle import load_bundle

    detector_bundle = load_bundle(detector_dir)
    int8 = detector_bundle.card.extra.get("int8")
    precision = "int8" if int8 else "fp32"
    # a re-quantised INT8 model scores boards differently from the same fp32 weights: its own digest names it
    suffix = f"-int8-{int8['sha256'][:12]}" if int8 else ""
    cache.mkdir(parents=True, exist_ok=True)
    img_npz = cache / f"images-{detector_bundle.sha256[:12]}{suffix}.npz"
    vib_npz = cache / f"vibration-{load_bundle(vibration_dir).sha256[:12]}.npz"
    if not img_npz.exists():
        log("running the detector over the held-out boards (cached) ...")
        image_features(detector_dir, deeppcb_root, split, img_npz, precision=precision)
    if not vib_npz.exists():
        vibration_features(vibration_dir, cwru_root, vib_npz)
    return img_npz, vib_npz, detector_bundle.config.get("platt"), precision


def sample_events(images: dict, vib: dict, config: PairingConfig, coupling: float, side: int, n: int, rng) -> dict:
    """Indices of (image, vibration window) pairs and the board label, per the generative assumption."""
    from apps.industrial.data import DEFECT_CLASSES

    groups = config.fusion_train_groups if side == 0 else config.fusion_test_groups
    in_side = np.isin(images["group"], groups)
    defective_idx = np.flatnonzero(in_side & (images["defective"] == 1))
    good_idx = np.flatnonzero(in_side & (images["defective"] == 0))
    vib_by_state = {k: np.flatnonzero((vib["state"] == k) & (vib["half"] == side)) for k in range(len(STATE_NAMES))}
    states = rng.choice(len(STATE_NAMES), size=n, p=np.asarray(config.state_prior) / sum(config.state_prior))
    img, win, label = np.empty(n, int), np.empty(n, int), np.empty(n, int)
    for i, m in enumerate(states):
        d = rng.random() < config.defect_rate(int(m), coupling)
        label[i] = int(d)
        if d:
            pool = defective_idx
            favoured = config.fault_classes.get(int(m))
            if favoured and rng.random() < coupling * config.class_shift:
                wanted = [DEFECT_CLASSES.index(c) for c in favoured]
                subset = defective_idx[np.isin(images["dominant"][defective_idx], wanted)]
                pool = subset if len(subset) else defective_idx
            img[i] = rng.choice(pool)
        else:
            img[i] = rng.choice(good_idx)
        win[i] = rng.choice(vib_by_state[int(m)])
    return {"image": img, "window": win, "label": label, "state": states}


def _logit(p, eps=1e-4):
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


def _evidence(images, vib, ev) -> np.ndarray:
    return np.concatenate(
        [
            _logit(images["max_conf"][ev["image"]])[:, None],
            np.log1p(images["n_defects"][ev["image"]])[:, None],
            vib["probs"][ev["window"]],
        ],
        axis=1,
    ).astype(np.float32)


def defect_rates_by_state(label: np.ndarray, state: np.ndarray, n_states: int, alpha: float = 0.01) -> list[float]:
    """P(defective | predicted machine state) counted on fusion-train events.

    The pooled share for every state unless the events show that the state predicts defects (chi-square test of
    independence at ``alpha``): without that evidence the machine must not move a board. At zero coupling the
    per-state shares differ by sampling noise alone, and the per-state counts used before session 34 (Laplace
    smoothed) passed 0.4 % of the defective boards the image alone sent to review. Where the test holds, each
    state's share is shrunk toward the pooled one by empirical Bayes (beta-binomial, method-of-moments estimate
    of the between-state variance), so a rarely predicted state borrows from the others.
    """
    from scipy.stats import chi2_contingency

    label, state = np.asarray(label, float), np.asarray(state, int)
    pooled = float(label.mean()) if len(label) else 0.5
    n = np.bincount(state, minlength=n_states).astype(float)
    x = np.bincount(state, weights=label, minlength=n_states)
    seen = n > 0
    if seen.sum() < 2 or pooled in (0.0, 1.0):
        return [pooled] * n_states
    if chi2_contingency(np.stack([x[seen], n[seen] - x[seen]]), correction=False).pvalue >= alpha:
        return [pooled] * n_states
    total, rate = n.sum(), np.where(seen, x / np.maximum(n, 1), pooled)
    noise = (seen.sum() - 1) * pooled * (1 - pooled)  # what sum n_k (rate_k - pooled)^2 would be without any effect
    between = max(0.0, ((n * (rate - pooled) ** 2).sum() - noise) / (total - (n**2).sum() / total))
    if between == 0.0:
        return [pooled] * n_states
    strength = max(0.0, pooled * (1 - pooled) / between - 1)  # the beta prior's pseudo-count
    return [float((x[k] + strength * pooled) / (n[k] + strength)) for k in range(n_states)]


@dataclass
class BayesianCombiner:
    """logit P(d | image, vibration) = logit P(d | vibration) + calibrated image log-likelihood ratio."""

    platt_a: float
    platt_b: float
    train_prior: float
    defect_rate_by_state: list[float]

    @classmethod
    def fit(cls, images, vib, ev, platt: dict | None = None) -> BayesianCombiner:
        """P(d | predicted state) and the train prior from fusion-train events; the image side from ``platt``
        (a detector bundle's own, class-balanced: ``b + logit(train prior)``, as the service builds it) when
        given, else Platt scaling fitted on these events."""
        from sklearn.linear_model import LogisticRegression

        prior = float(ev["label"].mean())
        rates = defect_rates_by_state(ev["label"], vib["probs"][ev["window"]].argmax(1), len(STATE_NAMES))
        if platt:
            return cls(0.0, 0.0, prior, rates).with_platt(platt)
        s = _logit(images["max_conf"][ev["image"]])[:, None]
        lr = LogisticRegression(C=10.0).fit(s, ev["label"])
        return cls(float(lr.coef_[0, 0]), float(lr.intercept_[0]), prior, rates)

    def with_platt(self, platt: dict) -> BayesianCombiner:
        """The same vibration side with a detector bundle's own Platt scaling. That Platt was fitted on
        class-balanced boards (tested image vs its defect-free counterpart), so its intercept is the image
        log-likelihood ratio's offset; ``image_llr`` subtracts the train prior's logit, hence
        ``b + logit(train_prior)``."""
        return BayesianCombiner(float(platt["a"]), float(platt["b"]) + float(_logit(np.array(self.train_prior))),
                                self.train_prior, list(self.defect_rate_by_state))

    def p_vibration(self, probs: np.ndarray) -> np.ndarray:
        return probs @ np.asarray(self.defect_rate_by_state)

    def image_llr(self, max_conf: np.ndarray) -> np.ndarray:
        return self.platt_a * _logit(max_conf) + self.platt_b - _logit(np.array(self.train_prior))

    def decision_logit(self, image_threshold: float) -> float:
        """The image rule's operating point as a cut on the posterior log-odds: where a board scoring exactly
        the image threshold lands when the machine tells nothing (the train prior).

        The image threshold encodes the plant's price of a miss against a false alarm (it is chosen for
        recall >= 99 % at <= 1 % false alarms), so the fused posterior is cut at the same place instead of at
        the minimum-error 0.5: with a machine state that carries no information the fused decision is the
        image decision, and vibration only moves boards whose odds it actually changes."""
        return float(self.platt_a * _logit(np.array(image_threshold)) + self.platt_b)

    def log_odds(self, max_conf: np.ndarray | None, probs: np.ndarray | None) -> np.ndarray:
        """logit P(d | image, vibration); what ``decision_logit`` cuts (no round trip through a clipped probability)."""
        prior = self.p_vibration(probs) if probs is not None else np.full(len(max_conf), self.train_prior)
        return _logit(prior) + (self.image_llr(max_conf) if max_conf is not None else 0.0)

    def combine(self, max_conf: np.ndarray | None, probs: np.ndarray | None) -> np.ndarray:
        return 1 / (1 + np.exp(-self.log_odds(max_conf, probs)))


PASS, REVIEW, FAIL = 0, 1, 2


def review_decisions(log_odds: np.ndarray, cut: float, review_band: float) -> np.ndarray:
    """The service's verdicts on defect log-odds: PASS / REVIEW / FAIL, the band ``0.5 +- review_band`` carried to
    ``cut`` in log-odds (fail at or above cut + band, pass at or below cut - band, review between; NaN: review)."""
    band = float(_logit(np.array(0.5 + review_band)))
    z = np.asarray(log_odds, dtype=float)
    return np.where(z >= cut + band, FAIL, np.where(z <= cut - band, PASS, REVIEW))


def _service_rates(verdict: np.ndarray, label: np.ndarray) -> dict:
    """Rates of three-way verdicts as the eval counts them: a board answered review is not passed (a clean one is a
    false alarm, a defective one is caught)."""
    return {**_rates(verdict != PASS, label), "review_rate": float((verdict == REVIEW).mean())}


def _rates(flag: np.ndarray, label: np.ndarray) -> dict:
    good, bad = label == 0, label == 1
    return {
        "false_alarm_rate": float(flag[good].mean()) if good.any() else float("nan"),
        "miss_rate": float((~flag[bad]).mean()) if bad.any() else float("nan"),
        "error_rate": float((flag != bad).mean()),
    }


def train_fusion(images, vib, ev, config: PairingConfig, fusion_config=None, log=print):
    """Fit the FusionModel on fusion-train events, selecting the epoch on events whose images it never saw.

    A quarter of the fusion-train images (by index) is held out: events showing them form the
    selection set. Tokens of the ~300 remaining images identify their labels, so the epoch after
    which the model starts keying on them shows up as a rising selection loss.
    """
    import copy

    import torch

    from apps.industrial.model import FusionModel, FusionModelConfig

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + 1)
    fusion_config = fusion_config or FusionModelConfig()
    fusion_config.image.in_dim = int(images["tokens"].shape[-1])
    fusion_config.vibration_dim = int(vib["tokens"].shape[-1])
    model = FusionModel(fusion_config)
    held = (ev["image"] // 2) % 4 == 0  # a quarter of the boards (tested image + template; stored in pairs)
    img_tok = torch.from_numpy(images["tokens"][ev["image"]].astype(np.float32))
    vib_tok = torch.from_numpy(vib["tokens"][ev["window"]].astype(np.float32))
    evidence = torch.from_numpy(_evidence(images, vib, ev))
    y = torch.from_numpy(ev["label"].astype(np.float32))
    train_idx, sel_idx = np.flatnonzero(~held), np.flatnonzero(held)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    best, best_state, n = float("inf"), copy.deepcopy(model.state_dict()), len(train_idx)
    for epoch in range(config.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(train_idx))
        drop = rng.random((len(y), 2))
        present = np.ones((len(y), 2), bool)
        present[drop[:, 0] < 0.1, 0] = False
        present[(drop[:, 1] < 0.1) & present[:, 0], 1] = False
        present = torch.from_numpy(present)
        # Zeroing the tokens of some events keeps the scalar evidence path load-bearing.
        keep_tokens = torch.from_numpy(rng.random(len(y)) >= config.token_dropout).float()[:, None, None]
        total = 0.0
        for i in range(0, n, 128):
            idx = order[i : i + 128]
            logit, _ = model(img_tok[idx] * keep_tokens[idx], vib_tok[idx], evidence[idx], present[idx])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        with torch.inference_mode():
            sel = torch.from_numpy(sel_idx)
            logit, _ = model(img_tok[sel], vib_tok[sel], evidence[sel], torch.ones(len(sel), 2, dtype=torch.bool))
            sel_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logit, y[sel]))
        if sel_loss < best:
            best, best_state = sel_loss, copy.deepcopy(model.state_dict())
        log(f"  fusion epoch {epoch + 1}/{config.epochs} train {total / n:.4f} selection {sel_loss:.4f}")
    model.load_state_dict(best_state)
    return model.eval(), fusion_config


def fusion_predict(model, images, vib, ev, present: np.ndarray | None = None):
    import torch

    n = len(ev["label"])
    present = np.ones((n, 2), bool) if present is None else present
    probs, weights = [], []
    with torch.inference_mode():
        for i in range(0, n, 256):
            sl = slice(i, i + 256)
            logit, w = model(
                torch.from_numpy(images["tokens"][ev["image"][sl]].astype(np.float32)),
                torch.from_numpy(vib["tokens"][ev["window"][sl]].astype(np.float32)),
                torch.from_numpy(_evidence(images, vib, {k: v[sl] for k, v in ev.items()})),
                torch.from_numpy(present[sl]),
            )
            probs.append(torch.sigmoid(logit).numpy()), weights.append(w.numpy())
    return np.concatenate(probs), np.concatenate(weights)


def run_benchmark(image_npz: Path, vib_npz: Path, config: PairingConfig | None = None, log=print, image_threshold: float | None = None,
                  learned: bool = True, platt: dict | None = None, review_band: float | None = None):
    """Flat metrics per coupling and method; returns (metrics, {coupling: (model, fusion_config)}).

    ``platt``: the detector bundle's own score calibration; the Bayesian and calibrated-image columns then use
    it (what the service runs) instead of Platt scaling fitted on fusion-train events; None = the one cached with
    the image features, if any. ``review_band``: the service's (settings.review_band); given, two more columns
    decide as the service does under its default Bayes rule, pass / review / fail (``review_decisions``), with
    review counted as not passed and its share as ``review_rate``: ``service_bayes`` (image and vibration) and
    ``service_image`` (the same board sent without vibration)."""
    config = config or PairingConfig()
    images = dict(np.load(image_npz))
    vib = dict(np.load(vib_npz))
    threshold = float(images["threshold"]) if image_threshold is None else image_threshold
    if platt is None and "platt_a" in images:
        platt = {"a": float(images["platt_a"]), "b": float(images["platt_b"])}
    out: dict[str, float] = {}
    models = {}
    for c in config.couplings:
        rng = np.random.default_rng(config.seed + int(c * 1000))
        train_ev = sample_events(images, vib, config, c, 0, config.train_events, rng)
        test_ev = sample_events(images, vib, config, c, 1, config.test_events, rng)
        y = test_ev["label"]
        conf = images["max_conf"][test_ev["image"]]
        image_flag = conf >= threshold
        bayes = BayesianCombiner.fit(images, vib, train_ev, platt)
        vib_probs = vib["probs"][test_ev["window"]]
        # Every posterior is cut at the image rule's operating point (``decision_logit``), so the columns
        # differ by the evidence they use, not by the trade-off between false alarms and misses.
        cut = bayes.decision_logit(threshold)
        vib_flag = bayes.log_odds(None, vib_probs) >= cut
        fused = bayes.log_odds(conf, vib_probs)
        flags = {"image_only": image_flag, "vibration_only": vib_flag, "bayes": fused >= cut}
        if review_band is not None:
            for name, z in (("service_bayes", fused), ("service_image", bayes.log_odds(conf, None))):
                for key, value in _service_rates(review_decisions(z, cut, review_band), y).items():
                    out[f"c{c:g}/{name}/{key}"] = value
        if learned:
            model, fcfg = train_fusion(images, vib, train_ev, config, log=lambda *_: None)
            learned_p, weights = fusion_predict(model, images, vib, test_ev)
            image_only_learned, _ = fusion_predict(model, images, vib, test_ev, np.tile([True, False], (len(y), 1)))
            flags.update({"learned": learned_p >= 0.5, "learned_image_missing_vibration": image_only_learned >= 0.5})
            models[c] = (model, fcfg, bayes)
            out[f"c{c:g}/learned/mean_vibration_weight"] = float(weights[:, 1].mean())
        for name, flag in flags.items():
            for key, value in _rates(flag, y).items():
                out[f"c{c:g}/{name}/{key}"] = value
        out[f"c{c:g}/defect_share"] = float(y.mean())
        log(f"coupling {c:g}: error rates " + " ".join(f"{name} {_rates(flag, y)['error_rate']:.4f}" for name, flag in flags.items()))
    out["config"] = json.dumps(asdict(config))  # type: ignore[assignment]
    return out, models
