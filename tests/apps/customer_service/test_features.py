from __future__ import annotations

import numpy as np
import pytest

from apps.customer_service.features import FEATURE_DIM, acoustic_features
from tests.apps.customer_service.conftest import tone

# Index of the median pitch (semitones re 100 Hz) inside the feature vector: after MFCC/delta/delta2
# (240), log-mel (128), contrast (14) and five spectral series (25), the pitch block starts.
PITCH_MEDIAN = 240 + 128 + 14 + 25 + 3


def test_shape_and_finite():
    f = acoustic_features(tone(1.0))
    assert f.shape == (FEATURE_DIM,) and f.dtype == np.float32 and np.all(np.isfinite(f))


def test_pitch_statistics_follow_the_voice():
    low = acoustic_features(tone(1.0, f0=110))
    high = acoustic_features(tone(1.0, f0=220))
    # One octave = 12 semitones; yin on a clean harmonic tone should land within a semitone.
    assert abs((high[PITCH_MEDIAN] - low[PITCH_MEDIAN]) - 12.0) < 1.5


def test_other_sample_rates_are_resampled():
    x16 = acoustic_features(tone(1.0), sr=16000)
    t = np.arange(44100) / 44100
    x44 = acoustic_features(np.interp(t, np.arange(16000) / 16000, tone(1.0)).astype(np.float32), sr=44100)
    assert abs(x16[PITCH_MEDIAN] - x44[PITCH_MEDIAN]) < 1.0


@pytest.mark.parametrize("audio", [np.zeros(16000, np.float32), np.ones(100, np.float32) * 0.1])
def test_silent_or_short_audio_is_refused(audio):
    with pytest.raises(ValueError, match="too short or silent"):
        acoustic_features(audio)


def test_stereo_is_refused():
    with pytest.raises(ValueError, match="mono"):
        acoustic_features(np.zeros((2, 16000), np.float32))
