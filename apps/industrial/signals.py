"""Vibration signal handling: resampling to the model's rate, windowing, time-block splits.

The model works at 12 kHz on windows of 2,048 samples (~0.17 s, several shaft turns at 1,797 rpm).
Other rates (CWRU's 48 kHz normal baseline, a line sensor's 25.6 kHz) are resampled with a
polyphase anti-aliasing filter first. Per-window normalisation and the envelope live in the encoder
(``encoders.VibrationEncoder``) so the service and training cannot drift apart.
"""

from __future__ import annotations

from math import gcd

import numpy as np

MODEL_RATE = 12_000
WINDOW = 2_048
MIN_RATE, MAX_RATE = 4_000, 200_000  # refuse absurd sample rates


def resample(signal: np.ndarray, rate: int, target: int = MODEL_RATE) -> np.ndarray:
    """Polyphase resampling (scipy) with its built-in anti-aliasing FIR; float32 out."""
    from scipy.signal import resample_poly

    signal = np.asarray(signal, np.float64).reshape(-1)
    if int(rate) == target:
        return signal.astype(np.float32)
    g = gcd(int(rate), int(target))
    return resample_poly(signal, target // g, int(rate) // g).astype(np.float32)


def frame(signal: np.ndarray, size: int = WINDOW, stride: int | None = None) -> np.ndarray:
    """(N, size) windows, start at 0, no padding; stride defaults to size (non-overlapping)."""
    stride = stride or size
    if len(signal) < size:
        return np.zeros((0, size), np.float32)
    count = 1 + (len(signal) - size) // stride
    index = np.arange(size)[None, :] + stride * np.arange(count)[:, None]
    return np.asarray(signal, np.float32)[index]


def time_blocks(length: int, val_fraction: float = 0.25, gap: int = WINDOW) -> tuple[slice, slice]:
    """Train = the first part of a recording, validation = its last part, a window-sized gap between.

    Windows are cut inside a block only, so no sample is on both sides (the classic CWRU leak is
    overlapping windows of one recording landing in train and test).
    """
    cut = int(length * (1.0 - val_fraction))
    return slice(0, max(cut - gap, 0)), slice(cut, length)


def validate_signal(signal: np.ndarray, rate: float) -> None:
    """Raise ValueError with a user-facing message for unusable vibration input."""
    if not np.isfinite(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"sample_rate {rate} Hz is outside the accepted {MIN_RATE}..{MAX_RATE} Hz")
    if signal.size == 0:
        raise ValueError("the vibration signal is empty")
    if not np.all(np.isfinite(signal)):
        raise ValueError("the vibration signal contains NaN or infinite values")
    needed = int(np.ceil(WINDOW * rate / MODEL_RATE))
    if signal.size < needed:
        raise ValueError(f"the vibration signal has {signal.size} samples; at {rate:g} Hz at least {needed} are needed ({WINDOW} at {MODEL_RATE} Hz)")
    if float(np.std(signal)) == 0.0:
        raise ValueError("the vibration signal is constant (a disconnected sensor?)")
