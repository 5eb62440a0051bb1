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
MAX_ABS = 1e30  # the models compute in float32 (max ~3.4e38): larger values overflow into NaN
NOMINAL_RPM = 1_797  # CWRU 0 HP shaft speed, the only load in the training data
MAX_STRETCH = 0.15  # speed-augmentation bound: beyond it the augmented speeds are not a bearing rig's loads


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
    peak = float(np.max(np.abs(signal)))
    if peak > MAX_ABS:
        raise ValueError(f"the vibration signal reaches {peak:.3g}; values must lie within ±{MAX_ABS:g} (any unit)")
    needed = int(np.ceil(WINDOW * rate / MODEL_RATE))
    if signal.size < needed:
        raise ValueError(f"the vibration signal has {signal.size} samples; at {rate:g} Hz at least {needed} are needed ({WINDOW} at {MODEL_RATE} Hz)")
    if float(np.std(signal)) == 0.0:
        raise ValueError("the vibration signal is constant (a disconnected sensor?)")


def change_speed(signal: np.ndarray, rpm: float, nominal_rpm: float = NOMINAL_RPM) -> np.ndarray:
    """A recording at ``nominal_rpm`` as if the shaft ran at ``rpm``: every periodicity scales by rpm/nominal.

    Resampling by nominal/rpm and reading the result at the original rate stretches time, so fault
    frequencies AND the housing resonances move together; a real load change moves only the former
    (and changes amplitudes). It is a proxy for the speed part of a load change, nothing more.
    """
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(float(nominal_rpm) / float(rpm)).limit_denominator(4_000)
    out = resample_poly(np.asarray(signal, np.float64).reshape(-1), ratio.numerator, ratio.denominator)
    return out.astype(np.float32)


def augment_window(
    signal: np.ndarray,
    rng: np.random.Generator,
    stretch: float = 0.06,
    eq_db: float = 0.0,
    noise_snr_db: float = 25.0,
    noise_prob: float = 0.5,
    size: int = WINDOW,
) -> tuple[np.ndarray, float]:
    """One random training window from ``signal`` -> (window (size,), speed factor); all draws from ``rng``.

    - speed: a span of ``size * factor`` samples, factor uniform in [1 - stretch, 1 + stretch], is read
      into ``size`` samples (linear interpolation), i.e. the shaft runs ``factor`` times as fast; a load
      change slows CWRU's shaft by 1-4 %.
    - random start (time shift), so no window grid is memorised.
    - eq_db: a random smooth spectral tilt/EQ (8 knots, +-eq_db) standing in for another transfer path.
    - additive white noise at ``noise_snr_db`` on a ``noise_prob`` share of windows.
    The label is untouched by construction: every step keeps the fault's impact train.
    Gain is not randomised here: the encoder standardises every window, so gain cannot matter.
    """
    if not 0.0 <= stretch <= MAX_STRETCH:
        raise ValueError(f"stretch {stretch} outside 0..{MAX_STRETCH}")
    longest = int(np.ceil(size * (1.0 + stretch))) + 2
    if len(signal) < longest:
        raise ValueError(f"signal of {len(signal)} samples is shorter than the longest stretched span ({longest})")
    factor = 1.0 + float(rng.uniform(-stretch, stretch))
    span = int(np.ceil(size * factor))
    start = int(rng.integers(0, len(signal) - span - 1))
    chunk = np.asarray(signal[start : start + span + 1], np.float64)
    window = np.interp(np.linspace(0.0, span * (size - 1) / size, size), np.arange(len(chunk)), chunk)
    if eq_db > 0:
        spectrum = np.fft.rfft(window)
        knots = rng.uniform(-eq_db, eq_db, 8)
        gain_db = np.interp(np.linspace(0, 7, len(spectrum)), np.arange(8), knots)
        window = np.fft.irfft(spectrum * 10 ** (gain_db / 20), n=size)
    if noise_snr_db is not None and rng.random() < noise_prob:
        window = window + window.std() / (10 ** (noise_snr_db / 20)) * rng.standard_normal(size)
    return window.astype(np.float32), factor
