"""Training: the vibration classifier (CPU is enough), the detector (ultralytics; GPU), the fusion model.

Vibration split (never overlapping windows across sides): each recording is cut into a training
block (its first 75 %) and a validation block (its last 25 %), a window-sized gap between; windows
are drawn inside one block only. ``cross_validate_recordings`` additionally holds out whole fault
recordings (every recording of one fault diameter) to measure generalisation to recordings the
model never saw, the closest proxy for other loads available in the 0 HP data.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from apps.industrial.data import FAULT_CLASSES, VibrationRecording, load_cwru
from apps.industrial.signals import (
    MODEL_RATE,
    NOMINAL_RPM,
    WINDOW,
    augment_window,
    change_speed,
    frame,
    resample,
    time_blocks,
)

SIMULATED_RPMS = (1_772, 1_750, 1_730)  # CWRU 1 / 2 / 3 HP shaft speeds


@dataclass
class VibrationTrainConfig:
    windows_per_epoch: int = 2_048  # random windows drawn per epoch, class-balanced
    stretch: float = 0.06  # +-6 % speed: CWRU's loads run the shaft 1-4 % slower than 0 HP (signals.augment_window)
    noise_snr_db: float = 25.0  # additive white noise at this SNR (half the windows)
    # Random smooth spectral tilt/EQ up to +-eq_db: another load or mounting changes which housing
    # resonances the impacts excite; randomising the transfer function keeps the model off them.
    eq_db: float = 12.0
    val_fraction: float = 0.25
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


class BlockWindows(Dataset):
    """Class-balanced random windows from training blocks, augmented by ``signals.augment_window``."""

    def __init__(self, blocks: list[tuple[np.ndarray, int]], config: VibrationTrainConfig):
        self.by_class: dict[int, list[np.ndarray]] = {}
        for signal, label in blocks:
            if len(signal) >= int(WINDOW * (1 + config.stretch)) + 3:
                self.by_class.setdefault(label, []).append(signal)
        self.labels = sorted(self.by_class)
        self.config = config

    def __len__(self) -> int:
        return self.config.windows_per_epoch

    def __getitem__(self, index: int):
        # Class-balanced by index, recording uniform within the class. The numpy generator is seeded
        # from torch's RNG, which core.training.fit re-seeds per epoch, so augmentation replays.
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, ())))
        label = self.labels[index % len(self.labels)]
        recordings = self.by_class[label]
        signal = recordings[int(rng.integers(len(recordings)))]
        window, _ = augment_window(signal, rng, stretch=self.config.stretch, eq_db=self.config.eq_db,
                                   noise_snr_db=self.config.noise_snr_db)
        return torch.from_numpy(window), label


class FixedWindows(Dataset):
    def __init__(self, windows: np.ndarray, labels: np.ndarray):
        self.windows, self.labels = windows.astype(np.float32), labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return torch.from_numpy(self.windows[index]), int(self.labels[index])


def recordings_at_model_rate(root: Path) -> list[VibrationRecording]:
    recordings = load_cwru(root)
    for r in recordings:
        if r.sample_rate != MODEL_RATE:
            r.signal, r.sample_rate = resample(r.signal, r.sample_rate), MODEL_RATE
    return recordings


def split_blocks(recordings, val_fraction: float):
    train, val_w, val_y = [], [], []
    for r in recordings:
        tr, va = time_blocks(len(r.signal), val_fraction)
        train.append((r.signal[tr], r.label))
        w = frame(r.signal[va])
        val_w.append(w)
        val_y.append(np.full(len(w), r.label))
    return train, np.concatenate(val_w), np.concatenate(val_y)


def _loss(model, batch, device):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.05)


def predict_windows(model, windows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            out.append(model(torch.from_numpy(windows[i : i + batch_size].astype(np.float32))).softmax(-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(FAULT_CLASSES)))


def _evaluate(model, loader, device):
    from core.metrics import classification_metrics

    probs, labels = [], []
    model.eval()
    with torch.inference_mode():
        for x, y in loader:
            probs.append(model(x.to(device)).softmax(-1).cpu().numpy())
            labels.append(y.numpy())
    m = classification_metrics(np.concatenate(labels), np.concatenate(probs))
    return {"accuracy": float(m["accuracy"]), "macro_f1": float(m["macro_f1"])}


def fit_vibration(train_blocks, val_windows, val_labels, encoder_config, config: VibrationTrainConfig, log=print, device: str = "cpu"):
    from apps.industrial.model import VibrationClassifier
    from core.training import TrainConfig, fit

    torch.manual_seed(config.seed)
    model = VibrationClassifier(encoder_config)
    result = fit(
        model,
        BlockWindows(train_blocks, config),
        FixedWindows(val_windows, val_labels),
        loss_fn=_loss,
        evaluate_fn=_evaluate,
        config=TrainConfig(
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            monitor="macro_f1",
            mode="max",
            patience=0,
            seed=config.seed,
            device=device,
            progress=False,
            warmup_steps=20,
        ),
        log=log,
    )
    return model.cpu().eval(), result


def train_vibration(
    cwru_root: Path,
    out: Path | None,
    preset: str = "spectrum",
    config: VibrationTrainConfig | None = None,
    cross_validate: bool = True,
    log=print,
    device: str = "cpu",
    notes: str | None = None,
) -> dict:
    """Train on time-block splits of every recording; optionally leave-one-diameter-out CV first.

    Proxies in the card: (a) ``timeblock_val_*`` held-out time blocks, (b) ``cv_*`` leave-one-fault-
    diameter-out, (c) ``simload_*`` the validation blocks re-timed to 1,772 / 1,750 / 1,730 rpm
    (speed only). Settings were chosen on (a) + (b); (c) is reported, never tuned on.
    """
    from apps.industrial.encoders import VibrationEncoderConfig
    from core.bundle import ModelCard, save_bundle
    from core.metrics import classification_metrics

    config = config or VibrationTrainConfig()
    encoder_config = VibrationEncoderConfig.from_name(preset)
    recordings = recordings_at_model_rate(cwru_root)
    metrics: dict[str, float] = {}
    started = time.time()
    if cross_validate:
        metrics.update(cross_validate_recordings(recordings, encoder_config, config, log=log, device=device))
    train_blocks, val_w, val_y = split_blocks(recordings, config.val_fraction)
    model, _ = fit_vibration(train_blocks, val_w, val_y, encoder_config, config, log=log, device=device)
    probs = predict_windows(model, val_w)
    m = classification_metrics(val_y, probs)
    metrics.update({"timeblock_val_accuracy": float(m["accuracy"]), "timeblock_val_macro_f1": float(m["macro_f1"]),
                    "timeblock_val_windows": float(len(val_y)), "train_seconds": time.time() - started})
    metrics.update(simulated_load_metrics(model, recordings, config.val_fraction))
    log(json.dumps(metrics, indent=1))
    if out is not None:
        card = ModelCard(
            name=f"industrial-vibration-{preset}",
            version="0.1.0",
            task="machine state from one 2,048-sample 12 kHz drive-end vibration window: " + ", ".join(FAULT_CLASSES),
            data=["CWRU Bearing Data Center, 0 HP / 1,797 rpm drive-end recordings (12 kHz faults; 48 kHz normal "
                  "baseline resampled to 12 kHz), npz re-packaging by Rigas et al.; research use"],
            split=(f"time blocks: first {1 - config.val_fraction:.0%} of every recording trains, last "
                   f"{config.val_fraction:.0%} validates, one window gap (metrics 'timeblock_val_*', proxy a); "
                   "cross-validation 'cv_*' (proxy b): all fault recordings of one diameter (7/14/21/28 mil) held out "
                   "at a time, fault windows scored; 'simload_*' (proxy c): the validation blocks resampled by "
                   "1797/rpm and read at 12 kHz as if the shaft ran at 1,772 / 1,750 / 1,730 rpm (CWRU 1 / 2 / 3 HP) - "
                   "it simulates ONLY the speed change of a load change (resonances move with it here, amplitudes "
                   "and transmission stay 0 HP's). None of a, b, c is the real other-load test: those recordings "
                   "are not in the data"),
            metrics=metrics,
            reproduce=("triptych train industrial --part vibration --cwru DIR --out apps/industrial/weights/vibration  "
                       "# seed 0, preset '" + preset + "', VibrationTrainConfig defaults, CPU, 1 thread\n"
                       "triptych eval industrial --cwru DIR --json OUT  # every recording whole: includes the training blocks"),
            notes=VIBRATION_NOTES if notes is None else notes,
            limitations=[
                "trained on load 0 HP only; other loads change speed by up to 4 % (augmented: +-"
                f"{config.stretch:.0%}) and amplitudes / transmission paths (only a random EQ stands in for those)",
                "leave-one-diameter-out accuracy (cv_*) is about half: a fault of a size never trained on is often "
                "given the wrong type; severity is not predicted for that reason",
                "one normal recording: normal-state accuracy on other machines is unmeasured",
                "seeded EDM faults on a lab rig; real wear differs",
            ],
            extra={"train_config": config.__dict__},
        )
        save_bundle(out, model, {"encoder": encoder_config.to_dict(), "classes": list(FAULT_CLASSES), "window": WINDOW, "sample_rate": MODEL_RATE}, card)
    return metrics


VIBRATION_NOTES = (
    "Proxies, all on the 0 HP data only (the real 1-3 HP recordings are the final test and were never used): "
    "(a) held-out time blocks, (b) leave-one-fault-diameter-out, (c) simulated load shift (speed only). "
    "Settings were chosen on (a) + (b) with seed 0; (c) was computed once for the chosen model and once for the "
    "previous one.\n\n"
    "| model (seed 0) | a: time blocks acc | b: LODO acc / macro-F1 | c: simulated 1772 / 1750 / 1730 rpm acc |\n"
    "|---|---|---|---|\n"
    "| previous shipped (Conv1d+BiLSTM on signal + envelope, +-8 % speed, EQ +-12 dB) | 1.000 | 0.466 / 0.455 (its card) "
    "| 0.996 / 0.991 / 0.991 (mean 0.993, macro-F1 0.995) |\n"
    "| same architecture, this code, +-6 % speed | 1.000 | 0.390 / 0.358 | not computed |\n"
    "| + envelope-spectrum branch, 16 bands | 1.000 | 0.512 / 0.388 | not computed |\n"
    "| **+ envelope-spectrum branch, 32 bands (shipped)** | 1.000 | **0.510 / 0.504** | 0.991 / 0.987 / 0.978 (mean 0.986, macro-F1 0.975) |\n"
    "| + 32 bands, no EQ augmentation | 1.000 | 0.465 / 0.334 | not computed |\n"
    "| seed 1 (checked after the choice): same architecture / + 32-band branch | 1.000 / 0.991 | 0.357 / 0.246 vs "
    "0.589 / 0.438 | not computed |\n\n"
    "Reading it: the spectrum branch lifts (b) by 4-12 points of accuracy at equal (a) (+12 points of macro-F1 over the "
    "16-band variant), the reason it ships; with seed 1 the gain over the same architecture without it holds (+23 points "
    "accuracy, +19 macro-F1) at a cost of 2 of 217 time-block windows. Per-fold numbers swing by 0.2 between seeds and "
    "settings (held-out 14 mil: 0.20-0.44), so (b) is a coarse signal. On (c) both models lose only windows of one recording, 1797_OR@6_14 "
    "(outer race 14 mil, a known odd CWRU recording), called ball / normal: 1 / 2 / 2 of its 15 windows for the previous "
    "model, 2 / 3 / 5 for this one at 1772 / 1750 / 1730 rpm; every recording's majority vote stays right for both. "
    "That difference (5 windows of 694) is within what one recording decides, so (c) neither supports nor rules out either "
    "model; it says the speed change alone is covered (the +-6 % speed augmentation), not that the 1-3 HP recordings "
    "will reach 98 %: (c) cannot model the changed amplitudes and load zone. "
    "A hand-built physics baseline on (b), envelope-spectrum SNR at 1-3 x BPFO / BPFI / BSF / 2 BSF / FTF / shaft "
    "(6205 bearing, best over 0.95-1.01 x speed) + kurtosis, scored 0.53 (logistic regression) / 0.55 (random forest): "
    "the diameter shift is hard for any model on this data (that baseline misses mostly outer race at 14 / 21 mil, inner "
    "race at 28 mil and ball at 21 mil). Severity "
    "(diameter) is not an output: with one recording per fault type and diameter, the only honest test is (b)-style "
    "(an unseen size), where it cannot be learnt; on time blocks it would only re-identify the recording.\n\n"
    "Augmentation (apps/industrial/signals.augment_window, one numpy generator seeded from torch's per-epoch seed): "
    "speed factor uniform in 1 +- stretch (a span of 2048 x factor samples read into 2048), random start, random smooth "
    "+-eq_db EQ, white noise at noise_snr_db on half the windows; windows class-balanced. Gain needs no augmentation: "
    "the encoder standardises every window and the spectrum branch is centred in log."
)


def cross_validate_recordings(recordings, encoder_config, config: VibrationTrainConfig, log=print, device: str = "cpu") -> dict:
    """Hold out every fault recording of one diameter; normal is split by time blocks (one recording)."""
    from core.metrics import classification_metrics

    diameters = sorted({r.diameter_mil for r in recordings if r.label != 0})
    all_y, all_p = [], []
    for d in diameters:
        held_out = [r for r in recordings if r.label != 0 and r.diameter_mil == d]
        kept = [r for r in recordings if not (r.label != 0 and r.diameter_mil == d)]
        if len({r.label for r in kept}) < len(FAULT_CLASSES):
            log(f"cv: skip {d} mil (a fault type would have no training recording)")
            continue
        # Model selection on time blocks of the kept recordings only: the held-out ones stay unseen.
        train_blocks, val_w, val_y = split_blocks(kept, config.val_fraction)
        model, _ = fit_vibration(train_blocks, val_w, val_y, encoder_config, config, log=lambda *_: None, device=device)
        test_w = np.concatenate([frame(r.signal) for r in held_out])
        test_y = np.concatenate([np.full(len(frame(r.signal)), r.label) for r in held_out])
        probs = predict_windows(model, test_w)
        acc = float((probs.argmax(1) == test_y).mean())
        log(f"cv held-out {d} mil ({len(held_out)} recordings): fault-type accuracy {acc:.4f} on {len(test_y)} windows")
        all_y.append(test_y), all_p.append(probs)
    y, p = np.concatenate(all_y), np.concatenate(all_p)
    m = classification_metrics(y, p)
    return {"cv_unseen_recording_accuracy": float(m["accuracy"]), "cv_unseen_recording_macro_f1": float(m["macro_f1"]), "cv_windows": float(len(y))}


def simulated_load_metrics(model, recordings, val_fraction: float = 0.25, rpms=SIMULATED_RPMS) -> dict:
    """Proxy (c): the validation time blocks as if the shaft ran at each of ``rpms`` (signals.change_speed).

    Simulates the speed change of a load change only (fault frequencies and resonances move together,
    amplitudes and transmission stay 0 HP's); the real 1-3 HP recordings are not in the data.
    """
    from core.metrics import classification_metrics

    out, ys, ps = {}, [], []
    for rpm in rpms:
        windows, labels = [], []
        for r in recordings:
            _, va = time_blocks(len(r.signal), val_fraction)
            w = frame(change_speed(r.signal[va], rpm, r.rpm or NOMINAL_RPM))
            windows.append(w), labels.append(np.full(len(w), r.label))
        y, p = np.concatenate(labels), predict_windows(model, np.concatenate(windows))
        out[f"simload_{rpm}rpm_accuracy"] = float((p.argmax(1) == y).mean())
        ys.append(y), ps.append(p)
    m = classification_metrics(np.concatenate(ys), np.concatenate(ps), labels=list(range(len(FAULT_CLASSES))))
    out.update({"simload_accuracy": float(m["accuracy"]), "simload_macro_f1": float(m["macro_f1"]),
                "simload_windows": float(sum(len(y) for y in ys))})
    return out
