"""TTS: espeak-ng to WAV bytes; a clear error when it is missing or the text is unusable."""

from __future__ import annotations

import pytest

from apps.customer_service.speech import tts
from apps.customer_service.speech.audio import load_audio


@pytest.mark.skipif(not tts.available(), reason="espeak-ng not installed (make install-system)")
def test_synthesize_gives_a_readable_wav():
    wav = tts.synthesize("Your new card is on its way.")
    audio = load_audio(wav)
    assert audio.source_format == "wav" and 1.0 < audio.duration_s < 5.0
    assert float(abs(audio.mono()).max()) > 0.05


@pytest.mark.skipif(not tts.available(), reason="espeak-ng not installed")
def test_bad_text_and_voice():
    with pytest.raises(tts.TTSError, match="empty"):
        tts.synthesize("   ")
    with pytest.raises(tts.TTSError, match="at most"):
        tts.synthesize("a" * (tts.MAX_CHARS + 1))
    assert load_audio(tts.synthesize("-v --help")).duration_s > 0.2  # text, never options


def test_missing_espeak_is_reported(monkeypatch):
    monkeypatch.setattr(tts, "espeak_binary", lambda: None)
    assert not tts.available()
    with pytest.raises(tts.TTSUnavailable, match="espeak-ng is not installed"):
        tts.synthesize("hello")
