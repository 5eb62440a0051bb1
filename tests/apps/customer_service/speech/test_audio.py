"""Audio in: every accepted container, any rate, mono/stereo -> 16 kHz per channel; clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from apps.customer_service.speech.audio import (
    AudioError,
    channel_seconds,
    check_duration,
    from_pcm16,
    load_audio,
    sniff_audio_format,
    to_pcm16,
    to_wav_bytes,
)


def _encode(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _sine(rate: int, seconds: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
@pytest.mark.parametrize("rate", [8_000, 44_100])
def test_formats_and_rates_become_16k(fmt, subtype, rate):
    data = _encode(_sine(rate), rate, fmt, subtype)
    audio = load_audio(data)
    assert audio.source_format == fmt.lower() and audio.source_rate == rate
    assert audio.sample_rate == 16_000 and audio.channels == 1
    assert audio.duration_s == pytest.approx(0.5, abs=0.06)  # mp3 adds encoder padding
    # the tone survives resampling: its spectral peak stays at 440 Hz
    spec = np.abs(np.fft.rfft(audio.mono()))
    assert np.fft.rfftfreq(audio.samples.shape[1], 1 / 16_000)[spec.argmax()] == pytest.approx(440, abs=5)


def test_stereo_keeps_agent_and_caller_apart():
    left, right = _sine(22_050, freq=300), _sine(22_050, freq=1200)
    audio = load_audio(_encode(np.stack([left, right], axis=1), 22_050, "WAV", "PCM_16"))
    assert audio.channels == 2
    for ch, freq in ((0, 300), (1, 1200)):
        spec = np.abs(np.fft.rfft(audio.channel(ch)))
        assert np.fft.rfftfreq(len(audio.channel(ch)), 1 / 16_000)[spec.argmax()] == pytest.approx(freq, abs=5)
    assert audio.mono().shape == (audio.samples.shape[1],)


@pytest.mark.parametrize("peak", [4.0, 1e30])
def test_float_audio_beyond_full_scale_is_scaled_back(peak):
    left, right = _sine(16_000), 0.5 * _sine(16_000)
    data = _encode(np.stack([left, right], axis=1) * np.float32(peak / 0.5), 16_000, "WAV", "FLOAT")
    with np.errstate(all="raise"):
        audio = load_audio(data)
        energy = (audio.samples.astype(np.float64) ** 2).mean(axis=1)
    assert np.abs(audio.samples).max() == pytest.approx(1.0, abs=0.02)
    assert energy[0] / energy[1] == pytest.approx(4.0, rel=0.01)  # the channels keep their levels


def test_paths_work(tmp_path):
    path = tmp_path / "a.flac"
    path.write_bytes(_encode(_sine(16_000), 16_000, "FLAC", "PCM_16"))
    assert load_audio(path).duration_s == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("data,code", [
    (b"", "empty"),
    (b"hello, this is a text file", "not_audio"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not_audio"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 10, "corrupt"),
])
def test_bad_inputs_say_what_is_wrong(data, code):
    with pytest.raises(AudioError) as err:
        load_audio(data)
    assert err.value.code == code
    assert "WAV" in err.value.message or code in ("corrupt",)


def test_empty_wav_and_too_long_and_too_many_channels():
    with pytest.raises(AudioError) as err:
        load_audio(_encode(np.zeros(0, dtype=np.float32), 16_000, "WAV", "PCM_16"))
    assert err.value.code in ("empty", "corrupt")
    with pytest.raises(AudioError) as err:
        load_audio(_encode(_sine(8_000, seconds=3.0), 8_000, "WAV", "PCM_16"), max_seconds=2.0)
    assert err.value.code == "too_long" and "limit is 2 s" in err.value.message
    with pytest.raises(AudioError) as err:
        load_audio(_encode(np.zeros((800, 3), dtype=np.float32), 8_000, "WAV", "PCM_16"))
    assert err.value.code == "too_many_channels"


@pytest.mark.parametrize("rate", [1, 2_000, 400_000])
def test_absurd_sample_rates_are_refused_before_resampling(rate):
    """A 1 Hz header made 100 samples '100 s' of audio (1.6 M samples after resampling, a 504)."""
    with pytest.raises(AudioError) as err:
        load_audio(_encode(np.zeros(100, dtype=np.float32), rate, "WAV", "PCM_16"))
    assert err.value.code == "bad_sample_rate" and f"{rate} Hz" in err.value.message and "4 to 384 kHz" in err.value.message


def test_channel_seconds_from_the_header():
    assert channel_seconds(_encode(np.zeros((16_000, 2), np.float32), 8_000, "WAV", "PCM_16")) == pytest.approx(4.0)
    assert channel_seconds(_encode(_sine(44_100, seconds=1.5), 44_100, "FLAC", "PCM_16")) == pytest.approx(1.5)
    assert channel_seconds(b"not audio") is None
    assert channel_seconds(_encode(np.zeros(100, np.float32), 1, "WAV", "PCM_16")) is None


def test_truncated_flac_is_corrupt():
    data = _encode(_sine(16_000, seconds=1.0), 16_000, "FLAC", "PCM_16")
    with pytest.raises(AudioError) as err:
        load_audio(data[:60])
    assert err.value.code in ("corrupt", "empty")


def test_sniff_and_pcm_round_trip():
    assert sniff_audio_format(_encode(_sine(8000), 8000, "WAV", "PCM_16")) == "wav"
    assert sniff_audio_format(b"ID3\x04rest") == "mp3"
    assert sniff_audio_format(b"%PDF-1.4") is None
    x = _sine(16_000)
    assert np.allclose(from_pcm16(to_pcm16(x)), x, atol=1e-4)
    with pytest.raises(AudioError):
        from_pcm16(b"\x00\x01\x02")
    wav = to_wav_bytes(np.stack([x, x]), 16_000)
    assert load_audio(wav).channels == 2


def test_a_wav_cut_short_says_how_long_it_was_meant_to_be():
    from apps.customer_service.speech.audio import load_audio

    buffer = io.BytesIO()
    sf.write(buffer, np.full(16000 * 4, 0.1, np.float32), 16000, format="WAV", subtype="PCM_16")
    whole = buffer.getvalue()
    assert load_audio(whole).truncated_from_s is None
    cut = load_audio(whole[: len(whole) // 4])
    assert cut.truncated_from_s == pytest.approx(4.0) and cut.duration_s == pytest.approx(1.0, abs=0.01)
    at = whole.find(b"data")
    streamed = whole[: at + 4] + b"\xff\xff\xff\xff" + whole[at + 8 :]  # written while recording: size unknown
    assert load_audio(streamed[: len(whole) // 2]).truncated_from_s is None


def _with_data_size(wav: bytes, size: int) -> bytes:
    at = wav.find(b"data")
    return wav[:at + 4] + size.to_bytes(4, "little") + wav[at + 8:]


def test_a_wav_whose_header_understates_its_data_is_decoded_whole():
    """libsndfile trusts the declared size: 2 s of audio declared as 10 bytes were read as 5 samples."""
    whole = _encode(_sine(16_000, seconds=2.0), 16_000, "WAV", "PCM_16")
    lying = _with_data_size(whole, 10)
    audio = load_audio(lying)
    assert audio.duration_s == pytest.approx(2.0, abs=1e-3)
    assert audio.understated_from_s == pytest.approx(5 / 16_000) and audio.truncated_from_s is None
    assert np.allclose(audio.samples, load_audio(whole).samples)
    assert channel_seconds(lying) == pytest.approx(2.0, abs=1e-3)  # what the time budget counts
    with pytest.raises(AudioError) as err:  # the length limit sees the real length too
        check_duration(_with_data_size(_encode(_sine(8_000, seconds=3.0), 8_000, "WAV", "PCM_16"), 10), 2.0)
    assert err.value.code == "too_long"
    assert load_audio(whole).understated_from_s is None


def test_metadata_after_the_audio_is_no_understated_size():
    """A LIST chunk written after the data chunk is metadata, not samples the header left out."""
    whole = _encode(_sine(16_000, seconds=1.0), 16_000, "WAV", "PCM_16")
    info = b"INFOISFT" + (14).to_bytes(4, "little") + b"a recorder 1.0"
    tagged = whole + b"LIST" + len(info).to_bytes(4, "little") + info
    tagged = tagged[:4] + (len(tagged) - 8).to_bytes(4, "little") + tagged[8:]
    audio = load_audio(tagged)
    assert audio.understated_from_s is None and audio.duration_s == pytest.approx(1.0, abs=1e-3)


def test_audio_shorter_than_the_minimum_says_the_minimum():
    one_sample = _encode(_sine(16_000)[:1], 16_000, "WAV", "PCM_16")
    for check in (lambda: load_audio(one_sample, min_seconds=0.25), lambda: check_duration(one_sample, 600.0, 0.25)):
        with pytest.raises(AudioError) as err:
            check()
        assert err.value.code == "too_short" and "at least 0.25 s" in err.value.message
    assert load_audio(one_sample).duration_s == pytest.approx(1 / 16_000)  # no minimum unless asked
    assert load_audio(_encode(_sine(16_000, seconds=0.3), 16_000, "WAV", "PCM_16"), min_seconds=0.25)
