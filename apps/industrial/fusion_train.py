"""Packaging and fusion training: detector bundles from trained weights, the shipped fusion bundle."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from apps.industrial import SPLITS, WEIGHTS
from apps.industrial.data import DEEPPCB_VAL_GROUPS, DEFECT_CLASSES


def _set_detector_fields(bundle_dir: Path, **fields) -> None:
    """Write ``DetectorConfig`` fields into a detector bundle's config.json (weights untouched)."""
    path = Path(bundle_dir) / "config.json"
    config = json.loads(path.read_text())
    config["detector"].update(fields)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def set_detector_thresholds(bundle_dir: Path, conf: float, conf_no_template: float | None = None) -> None:
    """Write the board decision thresholds into a detector bundle's config.json (weights untouched)."""
    _set_detector_fields(bundle_dir, conf=float(conf),
                         **({} if conf_no_template is None else {"conf_no_template": float(conf_no_template)}))


def set_detector_border(bundle_dir: Path, border: int) -> None:
    """Write the network's gray margin (``DetectorConfig.border``) into a detector bundle's config.json.

    The INT8 model, thresholds and Platt scaling were made for the old input: rebuild them after."""
    if border < 0 or border % 16:
        raise ValueError(f"border must be a non-negative multiple of 16 px (half the detector's largest stride), not {border}")
    _set_detector_fields(bundle_dir, border=int(border))


def fit_template_platt(bundle_dir: Path, deeppcb: Path, split: str | Path | None = None, groups=("group13000",),
                       precision: str = "int8", threads: int = 1) -> dict:
    """Platt scaling of a detector's board score (template-aware or image-only), for the service's Bayesian rule.

    Fitted on the fusion-TRAIN board group (group13000, as the fusion bundle's own calibration; never
    the fusion-test group50600): logit P(defective) = a * logit(max confidence) + b on class-balanced
    boards (tested image + template vs repaired scan + template), so b is the image log-likelihood
    ratio's offset. Written to the bundle's config.json as ``platt``.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from apps.industrial.benchmark import _logit
    from apps.industrial.data import load_deeppcb
    from apps.industrial.detector import load_onnx_detector
    from apps.industrial.evaluate import board_scores, primary_clean_scores

    samples = [s for s in load_deeppcb(deeppcb, split or SPLITS / "deeppcb_val.txt") if s.group in groups]
    if not samples:
        raise ValueError(f"no boards of groups {list(groups)} in {split or 'deeppcb_val.txt'}")
    model, config, bundle = load_onnx_detector(bundle_dir, threads, precision=precision)
    held_out = bundle.config.get("held_out_groups")
    leaked = sorted(set(groups) - set(held_out) - set(DEEPPCB_VAL_GROUPS)) if held_out is not None else []
    if leaked:
        raise ValueError(f"{bundle_dir} was trained on board groups {leaked}; calibrate it on held-out groups {held_out}")
    _, top, modes, *_ = board_scores(model, config, samples, True, nms_conf=0.05)
    clean = primary_clean_scores(top, modes)
    clean = clean[~np.isnan(clean)]
    primary = max(set(modes), key=modes.count)  # for the card: what the defect-free boards mostly were
    x = np.concatenate([top["test"], clean])
    y = np.concatenate([np.ones(len(top["test"])), np.zeros(len(clean))])
    lr = LogisticRegression(C=10.0).fit(_logit(np.clip(x, 1e-4, 1 - 1e-4))[:, None], y)
    paired = "+template" if config.input == "template-diff" else ""  # an image-only detector sees no template
    platt = {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0]), "fitted_on": f"{', '.join(groups)} ({len(samples)} boards, "
             f"tested{paired} vs {primary}{paired}, {precision})"}
    path = Path(bundle_dir) / "config.json"
    cfg = json.loads(path.read_text())
    cfg["platt"] = platt
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return platt


def make_detector_bundle(weights: Path, arch: str, out: Path, conf: float = 0.25, metrics: dict | None = None, notes: str = "",
                         input_mode: str = "gray", held_out_groups: tuple[str, ...] = (), border: int = 0):
    """A core bundle from ``model.safetensors`` written by ``train_detector`` (fp16 state_dict).

    ``held_out_groups``: training board groups the weights were trained without (``--exclude-groups``);
    recorded in config.json so that threshold, Platt and INT8 calibration use / avoid them. ``border``: the
    gray margin the network runs with (``DetectorConfig.border``; 16 px is ultralytics' own validation margin)."""
    from safetensors.torch import load_file

    from apps.industrial.detector import DetectorConfig, detector_bundle_config, model_yaml
    from core.bundle import ModelCard, save_bundle

    weights = Path(weights)
    state = load_file(str(weights / "model.safetensors"))
    if metrics is None and (weights / "metrics.json").exists():
        metrics = training_metrics(weights / "metrics.json")
    td = input_mode == "template-diff"
    prepared = "datasets/prepared/deeppcb_td" if td else "datasets/prepared/deeppcb"
    card = ModelCard(
        name=f"industrial-detector-{arch}" + ("-template" if td else ""),
        version="0.1.0",
        task=(f"PCB defect detection ({', '.join(DEFECT_CLASSES)}) on 640x640 binarised scans; size_mm from a pixel pitch"
              + ("; input channels: tested image, aligned defect-free template, |difference| (template optional)" if td else "")),
        data=["DeepPCB (Tang et al. 2019, github.com/tangsanli5201/DeepPCB, MIT licence file, research use): "
              "PCBData/trainval.txt, 1,000 tested images with boxes + defect-free templates"],
        split=_split_text(td, held_out_groups),
        metrics={k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
        reproduce=(
            f"triptych data industrial prepare --deeppcb DIR --out {prepared}" + (" --input template-diff" if td else "") + "\n"
            f"triptych train industrial --part detector --arch {arch} --data {prepared}/data.yaml --device cuda --hours "
            + ("0.09 --dropout 0.3 --keep last" if td else "0.1") + "\n"
            "triptych eval industrial --deeppcb DIR --split apps/industrial/splits/deeppcb_val.txt --json OUT"
        ),
        limitations=[
            "DeepPCB defects are largely hand-added to binarised scans; colour AOI images will not transfer",
            "trained 6 minutes on one GPU (time-bounded); more epochs would likely raise mAP",
        ],
        notes=notes,
    )
    config = DetectorConfig(arch=arch, conf=conf, input=input_mode, border=border)
    bundle_config = detector_bundle_config(config, model_yaml(arch))
    if held_out_groups:
        bundle_config["held_out_groups"] = list(held_out_groups)
    return save_bundle(out, state, bundle_config, card)


ULTRALYTICS_VAL_KEYS = ("precision", "recall", "mAP50", "mAP50-95")


def training_metrics(path: Path) -> dict[str, float]:
    """A training run's metrics.json for a card. ultralytics' own validator numbers (its val folder, logged
    each epoch, not this repo's evaluator) are renamed ``ultralytics_val_*`` so that no card reads them
    as validation results."""
    raw = json.loads(Path(path).read_text())
    return {(f"ultralytics_val_{k}" if k in ULTRALYTICS_VAL_KEYS else k): float(v) for k, v in raw.items()
            if isinstance(v, (int, float))}


def _split_text(td: bool, held_out_groups=()) -> str:
    """The card's split line, counted from the training list (DeepPCB trainval minus the validation groups)."""
    from collections import Counter

    clean = "repaired scans (defect boxes copied from the template)" if td else "templates"
    text = f"by board group: validation = {', '.join(DEEPPCB_VAL_GROUPS)} (248 boards; apps/industrial/splits/deeppcb_val.txt), "
    if not held_out_groups:
        return text + (f"training = the other 5 groups (752 boards + 752 defect-free {clean} as label-free background images; "
                       "apps/industrial/splits/deeppcb_train.txt)")
    try:
        counts = Counter(s.split("/")[0] for s in (SPLITS / "deeppcb_train.txt").read_text().split()[::2])
    except OSError:
        counts = Counter()
    n_cal = sum(counts[g] for g in held_out_groups)
    fit = sorted(set(counts) - set(held_out_groups))
    return text + (f"calibration (board threshold, Platt scaling; never trained on) = {', '.join(held_out_groups)} ({n_cal} boards), "
                   f"training = {', '.join(fit)} ({sum(counts[g] for g in fit)} boards + as many defect-free {clean} as "
                   "label-free background images; apps/industrial/splits/deeppcb_train.txt minus the calibration groups)")


FUSION_NOTES = (
    "How to read the table: the image rule is the detector bundle's fixed board threshold (named above, with where it "
    "was chosen); Bayes is the same detector score through the Platt scaling named above plus logit P(defective | "
    "vibration) (P(defective | predicted machine state) counted on fusion-train events), assuming image and vibration "
    "independent given the board. Since session 14 the Bayes and vibration-only posteriors are cut at the image rule's "
    "operating point (the posterior of a board scoring exactly the image threshold, at the fusion-train prior: "
    "BayesianCombiner.decision_logit), not at 0.5: the image threshold is chosen for recall >= 99 % at <= 1 % false "
    "alarms, and a cut at 0.5 traded misses for false alarms at another rate, so Bayes differed from the image rule even "
    "where the vibration says nothing. At zero coupling Bayes now equals the image rule up to the counting noise of "
    "P(defective | state); fusion must not hurt there. The service carries its review band (0.5 +- 0.15 by default) "
    "to the same cut in log-odds. The learned fusion still cuts at 0.5. The learned attention fusion "
    "(SpatioTemporalAttention over 16 detector region-score tokens x 4x16 vibration time tokens, ModalityGate, linear "
    "evidence skip) is trained on one board group (group13000, epoch chosen on a quarter of its boards) and has so far "
    "transferred badly to the fusion-test group (the learned column): it learns that group's score distribution. The "
    "service therefore decides with the Bayesian rule by default (`TRIPTYCH_INDUSTRIAL_DECISION_RULE=bayes`; `learned` "
    "and `image` are selectable) and reports each modality's share of the log-odds as its weight. The upstream bundles "
    "are named by sha256 in extra (detector_sha256, vibration_sha256); with another image-only detector the service "
    "turns the learned model off (it read this detector's tokens) and keeps the Bayesian rule only when that detector "
    "carries its own Platt scaling (config.json `platt`), else the image rule decides."
)


def benchmark_table(bench: dict, couplings, image_threshold: float) -> str:
    """The paired benchmark (``benchmark.run_benchmark`` output) as the card's markdown table."""
    cols = ["image_only", "vibration_only", "bayes", "learned"]
    head = (f"| coupling | defect share | image rule (>={image_threshold:.4f}) FA / miss | "
            "vibration only FA / miss | Bayes FA / miss | learned FA / miss | learned vib. weight |")
    rows = [head, "|" + "---|" * 7]
    for c in couplings:
        k = f"c{c:g}"
        cells = [f"{bench[f'{k}/{m}/false_alarm_rate']:.3f} / {bench[f'{k}/{m}/miss_rate']:.3f}" for m in cols]
        rows.append(f"| {c:g} | {bench[f'{k}/defect_share']:.3f} | " + " | ".join(cells)
                    + f" | {bench[f'{k}/learned/mean_vibration_weight']:.2f} |")
    return "\n".join(rows)


def train_fusion_bundle(deeppcb: Path, cwru: Path, out: Path, coupling: float = 0.5, seed: int = 0,
                        detector_dir: Path | None = None, vibration_dir: Path | None = None,
                        cache: Path = Path("runs/industrial/bench"), log=print, benchmark: bool = True,
                        notes: str = FUSION_NOTES) -> dict:
    """Train the FusionModel on paired events at one coupling and save it with the Bayesian parameters.

    With ``benchmark`` the paired benchmark over every coupling of PairingConfig runs on the same
    cached features and its table goes into the card (what ``triptych bench industrial`` prints).
    """
    import numpy as np

    from apps.industrial.benchmark import (
        BayesianCombiner,
        PairingConfig,
        _rates,
        fusion_predict,
        run_benchmark,
        sample_events,
        train_fusion,
        upstream_features,
    )
    from core.bundle import ModelCard, save_bundle

    detector_dir = Path(detector_dir or WEIGHTS / "detector")
    vibration_dir = Path(vibration_dir or WEIGHTS / "vibration")
    from core.bundle import load_bundle

    detector_bundle = load_bundle(detector_dir)
    detector_sha256 = detector_bundle.sha256
    vibration_sha256 = load_bundle(vibration_dir).sha256
    # scored and calibrated as the service does: what is benchmarked is what runs
    img_npz, vib_npz, platt, precision = upstream_features(detector_dir, vibration_dir, deeppcb, cwru, str(SPLITS / "deeppcb_val.txt"),
                                                cache, log)
    images, vib = dict(np.load(img_npz)), dict(np.load(vib_npz))
    config = PairingConfig(seed=seed)
    rng = np.random.default_rng(seed + int(coupling * 1000))
    train_ev = sample_events(images, vib, config, coupling, 0, config.train_events, rng)
    test_ev = sample_events(images, vib, config, coupling, 1, config.test_events, rng)
    model, fusion_config = train_fusion(images, vib, train_ev, config, log=log)
    bayes = BayesianCombiner.fit(images, vib, train_ev, platt)
    p, w = fusion_predict(model, images, vib, test_ev)
    metrics = {f"learned_{k}": v for k, v in _rates(p >= 0.5, test_ev["label"]).items()}
    threshold = float(detector_bundle.config["detector"]["conf"])  # the bundle's current one, as the service and bench
    log_odds = bayes.log_odds(images["max_conf"][test_ev["image"]], vib["probs"][test_ev["window"]])
    metrics.update({f"bayes_{k}": v for k, v in _rates(log_odds >= bayes.decision_logit(threshold), test_ev["label"]).items()})
    metrics.update({f"image_only_{k}": v for k, v in _rates(images["max_conf"][test_ev["image"]] >= threshold, test_ev["label"]).items()})
    metrics["mean_vibration_weight"] = float(w[:, 1].mean())
    held = detector_bundle.config.get("held_out_groups") or []
    table = ""
    if benchmark:
        bench, _ = run_benchmark(img_npz, vib_npz, config, log=log, image_threshold=threshold, platt=platt)
        table = ("Paired benchmark (computed by the train command under Reproduce, on the same cached features; "
                 f"{config.test_events:,} fusion-test events per coupling, images from board group "
                 f"{', '.join(config.fusion_test_groups)} only, vibration from the second half of CWRU validation blocks; "
                 "board false-alarm rate = flagged clean boards / clean boards, miss rate = passed defective boards / "
                 f"defective boards; detector scores {precision}, as the service runs it; image rule = the image-only "
                 f"detector's shipped threshold {threshold:.4f}, " + (f"chosen on board groups it never trained on ({', '.join(held)})"
                 if held else "chosen on its training boards") + "; Bayes = " + (
                     f"the detector bundle's own Platt scaling (a = {platt['a']:.3f}, b = {platt['b']:.3f}, fitted on "
                     f"{platt.get('fitted_on', 'its held-out groups')}), intercept shifted by the fusion-train prior's logit"
                     if platt else "Platt scaling fitted on fusion-train events") + "):\n\n"
                 + benchmark_table(bench, config.couplings, threshold))
    card = ModelCard(
        name="industrial-fusion",
        version="0.1.0",
        task="board defective? from detector feature tokens x vibration time tokens (SpatioTemporalAttention + ModalityGate)",
        data=["DeepPCB held-out board groups (group13000 fusion-train, group50600 fusion-test) paired with CWRU "
              "validation time blocks (first half fusion-train, second half fusion-test) under PairingConfig"],
        split="events composed per apps/industrial/benchmark.py; images and windows never shared between fusion-train and fusion-test",
        metrics=metrics,
        reproduce=(f"triptych train industrial --part fusion --deeppcb DIR --cwru DIR --coupling {coupling} --out apps/industrial/weights/fusion"
                   "  # CPU; caches detector/vibration features under runs/industrial/bench, named by each bundle's sha256"),
        limitations=["trained on a synthetic pairing: the coupling between machine state and board defects is an assumption "
                     f"(coupling {coupling}), to be re-fitted on a real line's history"],
        notes="\n\n".join(t for t in (table, notes) if t),
        extra={"pairing": asdict(config), "coupling": coupling, "detector_sha256": detector_sha256,
               "vibration_sha256": vibration_sha256, "image_threshold": threshold, "image_precision": precision,
               "image_platt": platt or "fitted on fusion-train events"},
    )
    # The learned model read THIS detector's tokens and scores; the service turns it off with another one (and,
    # unless that detector brings its own Platt scaling, the Bayesian rule too). Both rules' P(defective | state)
    # was counted over THIS vibration classifier's predictions: with another one the image rule decides.
    save_bundle(out, model, {"fusion": fusion_config.to_dict(), "bayes": asdict(bayes), "coupling": coupling,
                             "detector_sha256": detector_sha256, "vibration_sha256": vibration_sha256,
                             "image_platt": "detector" if platt else "fusion-train"}, card)
    return metrics
