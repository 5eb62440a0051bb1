"""Vibration robustness pieces: speed augmentation, the simulated load shift, other-load file names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.industrial.signals import MAX_STRETCH, MODEL_RATE, WINDOW, augment_window, change_speed


def _peak_hz(x: np.ndarray, rate: int = MODEL_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.fft.rfftfreq(8 * len(x), 1.0 / rate)[spectrum.argmax()])


def _tone(hz: float, seconds: float = 1.0, rate: int = MODEL_RATE) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate).astype(np.float32)


def test_augment_window_is_deterministic_for_a_seed():
    x = np.random.default_rng(0).standard_normal(12_000).astype(np.float32)
    a, fa = augment_window(x, np.random.default_rng(7), stretch=0.06, eq_db=6.0)
    b, fb = augment_window(x, np.random.default_rng(7), stretch=0.06, eq_db=6.0)
    c, _ = augment_window(x, np.random.default_rng(8), stretch=0.06, eq_db=6.0)
    assert a.shape == (WINDOW,) and a.dtype == np.float32
    assert fa == fb and np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_speed_factor_stays_in_bounds_and_scales_frequency():
    x = _tone(500.0)
    rng = np.random.default_rng(0)
    factors = []
    for _ in range(40):
        w, f = augment_window(x, rng, stretch=0.05, eq_db=0.0, noise_snr_db=None)
        factors.append(f)
        # Reading `factor` times as many samples into the window: the tone is `factor` times higher.
        assert _peak_hz(w) == pytest.approx(500.0 * f, rel=0.01)
    assert 0.95 <= min(factors) and max(factors) <= 1.05 and max(factors) - min(factors) > 0.05
    with pytest.raises(ValueError):
        augment_window(x, rng, stretch=MAX_STRETCH + 0.01)
    with pytest.raises(ValueError):
        augment_window(x[: WINDOW], rng, stretch=0.05)  # too short for a stretched span


def test_block_windows_preserve_labels():
    from apps.industrial.train import BlockWindows, VibrationTrainConfig

    tones = {0: 300.0, 1: 900.0, 2: 2_000.0, 3: 4_000.0}
    blocks = [(_tone(hz), label) for label, hz in tones.items()]
    config = VibrationTrainConfig(windows_per_epoch=16, stretch=0.06, eq_db=12.0, noise_snr_db=25.0)
    data = BlockWindows(blocks, config)
    torch.manual_seed(0)
    for i in range(len(data)):
        window, label = data[i]
        assert label == i % 4  # class-balanced by index
        assert _peak_hz(window.numpy()) == pytest.approx(tones[label], rel=0.07)
    torch.manual_seed(0)
    again = [data[i][0] for i in range(4)]
    torch.manual_seed(0)
    assert all(torch.equal(a, data[i][0]) for i, a in enumerate(again))


@pytest.mark.parametrize("rpm", [1772, 1750, 1730])
def test_change_speed_scales_every_frequency(rpm):
    y = change_speed(_tone(1_000.0), rpm, 1797)
    assert len(y) == pytest.approx(MODEL_RATE * 1797 / rpm, abs=2)
    assert _peak_hz(y[2_000:-2_000]) == pytest.approx(1_000.0 * rpm / 1797, rel=0.002)


@pytest.mark.parametrize(
    "name, label, rpm, rate, mil",
    [
        ("1772_IR_7_DE12.npz", 2, 1772, 12_000, 7),
        ("1750_OR@6_21_DE12.npz", 3, 1750, 12_000, 21),
        ("1730_B_28_DE12.npz", 1, 1730, 12_000, 28),
        ("1772_Normal.npz", 0, 1772, 48_000, 0),  # CWRU normal baselines are 48 kHz at every load
        ("1730_Normal_DE12.npz", 0, 1730, 12_000, 0),  # an explicit rate wins
        ("IR_14_DE12.npz", 2, 0, 12_000, 14),  # no rpm prefix: unknown speed
    ],
)
def test_other_load_file_names(name, label, rpm, rate, mil):
    from apps.industrial.data import parse_cwru_name

    assert parse_cwru_name(name) == {"label": label, "rpm": rpm, "rate": rate, "mil": mil}


def test_bad_file_name_is_refused():
    from apps.industrial.data import parse_cwru_name

    with pytest.raises(ValueError):
        parse_cwru_name("1772_XX_7_DE12.npz")


def test_eval_reads_other_load_recordings(tiny_bundles, tmp_path):
    from apps.industrial.evaluate import evaluate_cwru
    from tests.apps.industrial.conftest import vibration_signal

    (tmp_path / "1 HP").mkdir()
    np.savez(tmp_path / "1 HP" / "1772_Normal.npz", DE=vibration_signal(48_000, 0.2)[:, None].astype(np.float64))
    np.savez(tmp_path / "1 HP" / "1772_IR_7_DE12.npz", DE=vibration_signal(12_000, 0.4, 160.0)[:, None].astype(np.float64))
    np.savez(tmp_path / "1730_OR@6_21_DE12.npz", DE=vibration_signal(12_000, 0.4, 105.0, seed=1)[:, None].astype(np.float64))
    m = evaluate_cwru(tiny_bundles / "vibration", tmp_path)
    # 0.2 s at 48 kHz -> 2,400 samples at 12 kHz -> 1 window; 4,800 samples at 12 kHz -> 2 windows each
    assert m["n_windows"] == 5 and m["n_recordings"] == 3
    assert {"accuracy_1772rpm", "accuracy_1730rpm", "accuracy", "macro_f1"} <= set(m)
    assert 0.0 <= m["accuracy"] <= 1.0


def test_spectrum_encoder_tokens_and_level_invariance():
    from apps.industrial.encoders import VibrationEncoderConfig
    from apps.industrial.model import VibrationClassifier
    from core.encoders import create_encoder
    from tests.apps.industrial.conftest import vibration_signal

    config = VibrationEncoderConfig.from_name("tiny_spectrum")
    encoder = create_encoder("vibration", "envelope_spectrum_conv_lstm", **config.to_dict()).eval()
    x = torch.from_numpy(np.stack([vibration_signal(seconds=WINDOW / MODEL_RATE, impact_hz=107.0, seed=s) for s in range(2)]))
    out = encoder(x)
    assert out.tokens.shape == (2, WINDOW // 2**config.conv_layers, config.dim)
    assert torch.allclose(out.tokens, encoder(7.5 * x).tokens, atol=1e-4)  # gain cannot matter
    assert encoder.spectrum is not None
    # Same token shape as the plain encoder: the fusion model reads either.
    plain = VibrationClassifier(VibrationEncoderConfig.from_name("tiny")).encoder.eval()
    assert plain(x).tokens.shape == out.tokens.shape
