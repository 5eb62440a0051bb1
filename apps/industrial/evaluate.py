"""Evaluation on the public datasets in their original layout: DeepPCB detection and CWRU vibration.

Every function returns ONE flat dict metric-name -> number (what ``triptych eval industrial --json``
writes). Boards are judged defective when any detection reaches the detector's decision threshold.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def evaluate_deeppcb(
    bundle_dir: Path,
    root: Path,
    split: str = "trainval.txt",
    threads: int = 1,
    limit: int | None = None,
    binarize: bool | None = None,
    progress: bool = False,
    backend: str = "onnx",
    precision: str = "fp32",
) -> dict[str, float]:
    """mAP on the tested images of `split`; board-level decisions on tested images and their templates.

    ``board_false_alarm_rate``: share of defect-free templates with any detection >= the decision
    threshold; ``board_recall``: share of tested (defective) boards with one. ``images_per_second``:
    single-image forward + NMS on `threads` CPU threads, image decoding excluded.
    """
    import torch

    from apps.industrial.data import load_deeppcb, load_gray
    from apps.industrial.detector import (
        detect,
        detection_scores,
        load_detector,
        load_onnx_detector,
        prepare_image,
    )

    torch.set_num_threads(threads)
    if backend != "onnx" and precision != "fp32":
        raise ValueError("INT8 runs through onnxruntime: use backend='onnx'")
    model, config, _ = load_onnx_detector(bundle_dir, threads, precision=precision) if backend == "onnx" else load_detector(bundle_dir)
    if binarize is not None:
        config.binarize = binarize
    samples = load_deeppcb(root, split)[:limit]
    preds, truths, test_max, temp_max = [], [], [], []
    seconds, n_timed = 0.0, 0
    for i, s in enumerate(samples):
        for kind, path in (("test", s.image), ("temp", s.template)):
            if path is None:
                continue
            prepared = prepare_image(load_gray(path), config)
            start = time.perf_counter()
            dets = detect(model, [prepared], config, conf=config.nms_conf)[0]
            seconds += time.perf_counter() - start
            n_timed += 1
            top = max((d.confidence for d in dets), default=0.0)
            if kind == "test":
                preds.append(dets)
                truths.append((s.boxes, s.classes))
                test_max.append(top)
            else:
                temp_max.append(top)
        if progress and (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(samples)} boards", flush=True)
    scores = detection_scores(preds, truths)
    test_max, temp_max = np.array(test_max), np.array(temp_max)
    result = {
        "map50": scores.map50,
        "map50_95": scores.map50_95,
        "precision": scores.precision,
        "recall": scores.recall,
        "board_false_alarm_rate": float((temp_max >= config.conf).mean()) if len(temp_max) else float("nan"),
        "board_recall": float((test_max >= config.conf).mean()) if len(test_max) else float("nan"),
        "images_per_second": n_timed / seconds if seconds else 0.0,
        "n_boards": float(len(test_max)),
        "n_templates": float(len(temp_max)),
        "decision_threshold": float(config.conf),
    }
    result.update({f"ap50_{k}": v for k, v in scores.per_class_ap50.items()})
    # Where a lower or higher threshold would put the two board-level error rates (for the card).
    for t in (0.1, 0.25, 0.5, 0.7):
        result[f"board_fa@{t}"] = float((temp_max >= t).mean()) if len(temp_max) else float("nan")
        result[f"board_recall@{t}"] = float((test_max >= t).mean()) if len(test_max) else float("nan")
    return result


def evaluate_cwru(bundle_dir: Path, root: Path, threads: int = 1) -> dict[str, float]:
    """Every *.npz under root; label and rate from the file name; non-overlapping 2,048-sample windows.

    ``accuracy`` / ``macro_f1`` are over windows (4 machine states); ``recording_accuracy`` takes the
    majority vote of each recording's windows; ``fault_accuracy`` counts fault recordings' windows only.
    """
    import torch

    from apps.industrial.data import FAULT_CLASSES, load_cwru
    from apps.industrial.model import load_vibration_classifier
    from apps.industrial.signals import MODEL_RATE, frame, resample
    from apps.industrial.train import predict_windows
    from core.metrics import classification_metrics

    torch.set_num_threads(threads)
    model, _ = load_vibration_classifier(bundle_dir)
    ys, ps, votes, by_rpm = [], [], [], {}
    for rec in load_cwru(root):
        windows = frame(resample(rec.signal, rec.sample_rate, MODEL_RATE))
        if not len(windows):
            continue
        probs = predict_windows(model, windows)
        y = np.full(len(windows), rec.label)
        ys.append(y), ps.append(probs)
        votes.append(int(np.bincount(probs.argmax(1), minlength=len(FAULT_CLASSES)).argmax() == rec.label))
        by_rpm.setdefault(rec.rpm, []).append(probs.argmax(1) == y)
    y, p = np.concatenate(ys), np.concatenate(ps)
    m = classification_metrics(y, p, labels=list(range(len(FAULT_CLASSES))))
    fault = y != 0
    result = {
        "accuracy": float(m["accuracy"]),
        "macro_f1": float(m["macro_f1"]),
        "n_windows": float(len(y)),
        "fault_accuracy": float((p.argmax(1) == y)[fault].mean()) if fault.any() else float("nan"),
        "recording_accuracy": float(np.mean(votes)),
        "n_recordings": float(len(votes)),
    }
    for rpm, hits in sorted(by_rpm.items()):
        result[f"accuracy_{rpm}rpm"] = float(np.concatenate(hits).mean())
    for i, name in enumerate(FAULT_CLASSES):
        if (y == i).any():
            result[f"recall_{name}"] = float((p.argmax(1)[y == i] == i).mean())
    return result


def detector_speed(bundle_dir: Path, images: list[Path], threads: int, repeats: int = 1, batch: int = 1,
                   backend: str = "onnx") -> dict[str, float]:
    """Images/s of forward + NMS at the bundle's size on `threads` CPU threads (decoding excluded)."""
    import torch

    from apps.industrial.data import load_gray
    from apps.industrial.detector import detect, load_detector, load_onnx_detector, prepare_image

    torch.set_num_threads(threads)
    model, config, _ = load_onnx_detector(bundle_dir, threads) if backend == "onnx" else load_detector(bundle_dir)
    prepared = [prepare_image(load_gray(p), config) for p in images]
    detect(model, prepared[:batch], config)  # warm-up
    start, count = time.perf_counter(), 0
    for _ in range(repeats):
        for i in range(0, len(prepared), batch):
            detect(model, prepared[i : i + batch], config)
            count += len(prepared[i : i + batch])
    seconds = time.perf_counter() - start
    return {"images_per_second": count / seconds, "ms_per_image": 1000 * seconds / count, "threads": float(threads), "imgsz": float(config.imgsz)}


def precision_speed(bundle_dir: Path, images: list[Path], threads: int, rounds: int = 3,
                    precisions: tuple[str, ...] = ("fp32", "int8")) -> dict[str, float]:
    """Images/s of forward + NMS for each precision, measured interleaved in one process.

    Each round runs every precision over the same images, one after the other, so a load spike from
    other jobs on a shared machine hits all of them alike; the per-precision totals are compared.
    """
    import torch

    from apps.industrial.data import load_gray
    from apps.industrial.detector import detect, load_onnx_detector, prepare_image

    torch.set_num_threads(threads)
    models = {p: load_onnx_detector(bundle_dir, threads, precision=p) for p in precisions}
    config = models[precisions[0]][1]
    prepared = [prepare_image(load_gray(p), config) for p in images]
    seconds = dict.fromkeys(precisions, 0.0)
    for p in precisions:
        detect(models[p][0], prepared[:1], config)  # warm-up
    for _ in range(rounds):
        for p in precisions:
            start = time.perf_counter()
            for im in prepared:
                detect(models[p][0], [im], config)
            seconds[p] += time.perf_counter() - start
    n = rounds * len(prepared)
    return {f"{p}_{threads}thread_images_per_second": n / seconds[p] for p in precisions}
