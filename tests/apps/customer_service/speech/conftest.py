"""Shared fixtures for the speech tests: decoders are built once per session (about 2 s each)."""

from __future__ import annotations

import numpy as np
import pytest

from apps.customer_service.speech import tts


def speak(text: str, *, rate: int | None = None) -> np.ndarray:
    """``text`` spoken by espeak-ng (en-us+klatt) as 16 kHz float32; skips when espeak-ng is missing."""
    if not tts.available():
        pytest.skip("espeak-ng not installed (make install-system)")
    from apps.customer_service.speech.audio import load_audio, resample

    x = load_audio(tts.synthesize(text, voice="en-us+klatt")).mono()
    if rate is not None:  # simulate a narrow-band source: down to `rate` and back up
        x = resample(resample(x, 16_000, rate), rate, 16_000)
    return x


@pytest.fixture(scope="session")
def bank_recognizer():
    from apps.customer_service.speech.sphinx import SphinxConfig, SphinxRecognizer

    return SphinxRecognizer(SphinxConfig(lm="bank"))


@pytest.fixture(scope="session")
def grammar_recognizer():
    """Digit modes decoded by the JSGF grammars (the learned digit model switched off)."""
    from apps.customer_service.speech.sphinx import SphinxConfig, SphinxRecognizer

    return SphinxRecognizer(SphinxConfig(lm="bank", digit_model=False))


@pytest.fixture(scope="session")
def stream_pool():
    from apps.customer_service.speech.streaming import DecoderPool

    pool = DecoderPool(size=1)
    pool.release(pool.acquire())
    return pool
