"""Audio in and out: any WAV/FLAC/OGG/MP3, any rate, mono or stereo -> float32 16 kHz per channel.

Two-channel call recordings keep their channels apart (agent and caller are transcribed
separately); callers that want one stream use :meth:`Audio.mono`. Every failure is an
:class:`AudioError` whose message says what was wrong and what is accepted, so the API can
turn it into a 4xx without guessing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TARGET_RATE = 16_000
ACCEPTED_FORMATS = ("wav", "flac", "ogg", "mp3")
MIN_RATE, MAX_RATE = 4_000, 384_000  # Hz: below, speech is not there to hear; above, no recorder writes it
ACCEPTED_TEXT = ("WAV, FLAC, OGG (Vorbis/Opus) or MP3 audio, mono or stereo, at any sample rate from "
                 f"{MIN_RATE // 1000} to {MAX_RATE // 1000} kHz")


class AudioError(ValueError):
    """Audio that cannot be used. ``code``: not_audio | empty | corrupt | too_long | too_short | too_many_channels |
    bad_sample_rate."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Audio:
    """Decoded audio: ``samples`` (C, N) float32 in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int
    source_format: str
    source_rate: int
    truncated_from_s: float | None = None  # the length the file's header declares, when less was there
    understated_from_s: float | None = None  # the length a WAV's header declares, when more followed (all decoded)

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[1] / float(self.sample_rate)

    def channel(self, index: int) -> np.ndarray:
        return self.samples[index]

    def mono(self) -> np.ndarray:
        """Channels averaged, (N,) float32."""
        return self.samples.mean(axis=0).astype(np.float32)


def sniff_audio_format(data: bytes) -> str | None:
    """The container from its magic bytes: 'wav', 'flac', 'ogg', 'mp3' or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    # ID3 tag, or an MPEG audio frame sync (11 set bits) with layer bits != 00
    if data[:3] == b"ID3" or (len(data) >= 2 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0 and (data[1] & 0x06)):
        return "mp3"
    return None


def load_audio(
    source: bytes | str | Path,
    *,
    target_rate: int = TARGET_RATE,
    max_seconds: float = 600.0,
    max_channels: int = 2,
    min_seconds: float = 0.0,
) -> Audio:
    """Decode ``source`` (bytes or a path) and resample every channel to ``target_rate``.

    Raises :class:`AudioError` for data that is not audio, empty, corrupt, longer than
    ``max_seconds``, shorter than ``min_seconds`` or with more than ``max_channels`` channels.
    """
    import soundfile as sf

    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    if not data:
        raise AudioError("empty", f"The audio is empty (0 bytes). Accepted: {ACCEPTED_TEXT}.")
    fmt = sniff_audio_format(data)
    if fmt is None:
        raise AudioError("not_audio", f"This is not audio we can read. Accepted: {ACCEPTED_TEXT}.")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile says only "Error opening": the header is unreadable
        raise AudioError("corrupt", f"The {fmt.upper()} file is corrupt or truncated ({exc}).") from exc
    understated = None
    if fmt == "wav" and (whole := _with_true_data_size(data, info)) is not None:
        understated = _declared_seconds(data, fmt, info)
        data, info = whole, sf.info(io.BytesIO(whole))
    if info.channels > max_channels:
        raise AudioError(
            "too_many_channels", f"{info.channels} channels; at most {max_channels} (mono, or stereo agent/caller)."
        )
    check_rate(info.samplerate)
    _check_header_duration(info, max_seconds)
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (N, C)
    except Exception as exc:
        raise AudioError("corrupt", f"The {fmt.upper()} data could not be decoded ({exc}).") from exc
    if samples.shape[0] == 0:
        raise AudioError("empty", f"The {fmt.upper()} file holds no samples. Accepted: {ACCEPTED_TEXT}.")
    if not np.all(np.isfinite(samples)):
        raise AudioError("corrupt", f"The {fmt.upper()} file holds non-finite samples.")
    if samples.shape[0] / rate > max_seconds:
        raise AudioError("too_long", f"The audio lasts {samples.shape[0] / rate:.0f} s; the limit is {max_seconds:.0f} s.")
    _check_not_too_short(samples.shape[0] / rate, min_seconds)
    peak = float(np.abs(samples).max())
    if peak > 1.0:  # float files may exceed full scale (1e30 was seen): scaled back, channels kept in proportion
        samples = samples / np.float32(peak)
    out = resample(np.ascontiguousarray(samples.T), rate, target_rate)
    declared = _declared_seconds(data, fmt, info)
    truncated = declared if declared is not None and declared - samples.shape[0] / rate > 0.05 else None
    return Audio(samples=out, sample_rate=target_rate, source_format=fmt, source_rate=int(rate), truncated_from_s=truncated,
                 understated_from_s=understated)


def _check_not_too_short(seconds: float, min_seconds: float) -> None:
    if seconds < min_seconds:
        raise AudioError("too_short", f"The audio lasts {seconds:.3f} s; a call needs at least {min_seconds:g} s. "
                                      f"Accepted: {ACCEPTED_TEXT}.")


_SAMPLE_BYTES = {"PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8, "ULAW": 1, "ALAW": 1}


def _wav_data_chunk(data: bytes) -> tuple[int, int] | None:
    """(offset of the first audio byte, declared size) of a WAV's data chunk, walking the chunks in order
    (the four letters "data" may also stand inside another chunk); None when there is none."""
    at = 12
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4:at + 8], "little")
        if data[at:at + 4] == b"data":
            return at + 8, size
        at += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


def _only_chunks_from(data: bytes, at: int) -> bool:
    """Whether ``data[at:]`` reads as whole RIFF chunks (an id of four printable characters and a size that
    fits), as the metadata a recorder writes after the audio does; samples do not."""
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4:at + 8], "little")
        if not all(32 <= b < 127 for b in data[at:at + 4]) or at + 8 + size > len(data):
            return False
        at += 8 + size + (size & 1)
    return True


def _with_true_data_size(data: bytes, info) -> bytes | None:
    """A copy of a WAV whose data chunk declares fewer bytes than follow it (more than 50 ms of audio more,
    and no chunk after the declared end), with the size of what follows written in; None for any other.
    libsndfile trusts the declared size: a 2 s recording declaring 10 bytes was read as 5 samples, an
    empty analysis with no warning. Decoding what is there, with a warning, serves a contact centre better
    than a refusal: the call is analysed whole, and nobody has to repair a file from a recorder they do not
    control to learn what was said."""
    found = _wav_data_chunk(data)
    block = info.channels * _SAMPLE_BYTES.get(info.subtype, 0)
    if found is None or block == 0 or info.samplerate <= 0:
        return None
    start, declared = found
    if declared in (0, 0xFFFFFFFF) or _only_chunks_from(data, start + declared + (declared & 1)):
        return None  # size unknown (libsndfile reads to the end), or what follows is metadata
    present = (len(data) - start) // block * block
    if (present - declared) / block / info.samplerate <= 0.05:
        return None
    whole = bytearray(data)
    whole[start - 4:start] = present.to_bytes(4, "little")
    whole[4:8] = (len(data) - 8).to_bytes(4, "little")
    return bytes(whole)


def _as_recorded(data: bytes) -> bytes:
    """``data`` with a WAV's understated data size corrected (see :func:`_with_true_data_size`), for the checks
    that read the header alone."""
    import soundfile as sf

    if sniff_audio_format(data) != "wav":
        return data
    try:
        return _with_true_data_size(data, sf.info(io.BytesIO(data))) or data
    except Exception:  # noqa: BLE001 - an unreadable header is load_audio's to explain
        return data


def _declared_seconds(data: bytes, fmt: str, info) -> float | None:
    """How long the file says it is: a WAV's data chunk size (libsndfile reports what is there, not what
    was declared), a FLAC's stream info (libsndfile reports that one). None when the file does not say
    (a WAV written while recording may declare 0 or 0xFFFFFFFF bytes)."""
    if fmt == "flac":
        return info.frames / info.samplerate if info.frames > 0 else None
    if fmt != "wav":
        return None
    found = _wav_data_chunk(data)
    block = info.channels * _SAMPLE_BYTES.get(info.subtype, 0)
    if found is None or block == 0:
        return None
    size = found[1]
    if size in (0, 0xFFFFFFFF):
        return None
    return size / block / info.samplerate


def _check_header_duration(info, max_seconds: float) -> None:
    # mp3 frame counts are estimates until decoded; load_audio checks them again after decoding
    if info.frames > 0 and info.samplerate > 0 and info.frames / info.samplerate > max_seconds * 1.05:
        raise AudioError("too_long", f"The audio lasts {info.frames / info.samplerate:.0f} s; the limit is {max_seconds:.0f} s.")


def check_duration(data: bytes, max_seconds: float, min_seconds: float = 0.0) -> None:
    """Raise AudioError("too_long" / "too_short") when the header alone says the audio is longer than
    ``max_seconds`` or shorter than ``min_seconds`` (an unreadable header, an absurd rate, or an MP3, whose
    length is an estimate until decoded, pass: decoding will say what is wrong with it)."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(_as_recorded(data)))
    except Exception:  # noqa: BLE001 - an unreadable header is load_audio's to explain
        return
    if MIN_RATE <= info.samplerate <= MAX_RATE:
        _check_header_duration(info, max_seconds)
        if info.frames > 0 and sniff_audio_format(data) != "mp3":
            _check_not_too_short(info.frames / info.samplerate, min_seconds)


def check_rate(rate: float) -> None:
    # a header's rate of 1 Hz made 100 samples "100 s" of audio, resampled to 1.6 M samples of noise
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError("bad_sample_rate", f"The audio's sample rate is {rate:g} Hz. Accepted: {ACCEPTED_TEXT}.")


def channel_seconds(data: bytes) -> float | None:
    """Seconds x channels of audio from the header alone (what the ASR will have to decode), or
    None when the header cannot be read (decoding will say why)."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(_as_recorded(data)))
    except Exception:  # noqa: BLE001 - an unreadable header is load_audio's to explain
        return None
    if info.frames <= 0 or not MIN_RATE <= info.samplerate <= MAX_RATE:
        return None
    return info.frames / info.samplerate * info.channels


def _phone_line(x: np.ndarray, rate: int, phone_rate: int, codec=None) -> np.ndarray:
    """``x`` down to ``phone_rate`` (polyphase filtering like the corpus loaders: nothing above
    phone_rate / 2), through ``codec`` at that rate when given, and back to ``rate``."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate, phone_rate)
    down = resample_poly(np.asarray(x, np.float32), phone_rate // g, rate // g)
    if codec is not None:
        down = codec(down)
    return resample_poly(down, rate // g, phone_rate // g)[: len(x)].astype(np.float32)


def telephone_band(x: np.ndarray, rate: int = TARGET_RATE, phone_rate: int = 8_000) -> np.ndarray:
    """``x`` as a narrow-band telephone line delivers it: down to ``phone_rate`` and back (nothing
    above 4 kHz)."""
    return _phone_line(x, rate, phone_rate)


def _mu_law_8bit(y: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """8-bit mu-law companding and back, the clip's peak at full scale (a line with automatic gain)."""
    peak = max(float(np.abs(y).max()), 1e-9)
    y = np.clip(y / peak, -1.0, 1.0)
    code = np.round((np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu) + 1.0) * 127.5)  # 256 levels
    z = code / 127.5 - 1.0
    return np.sign(z) * np.expm1(np.abs(z) * np.log1p(mu)) / mu * peak


def g711_line(x: np.ndarray, rate: int = TARGET_RATE, phone_rate: int = 8_000) -> np.ndarray:
    """``x`` through a G.711 mu-law phone line: the telephone band plus 8-bit mu-law companding."""
    return _phone_line(x, rate, phone_rate, _mu_law_8bit)


# What the voice-emotion training and its card can put clips through (``extract_feature_block(line=...)``).
PHONE_LINES = {"telephone": telephone_band, "g711": g711_line}


def resample(samples: np.ndarray, rate: int, target_rate: int = TARGET_RATE) -> np.ndarray:
    """(C, N) or (N,) float32 from ``rate`` to ``target_rate`` (soxr, high quality)."""
    samples = np.asarray(samples, dtype=np.float32)
    if rate == target_rate:
        return samples
    import librosa

    return librosa.resample(samples, orig_sr=rate, target_sr=target_rate, res_type="soxr_hq", axis=-1).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> bytes:
    """float [-1, 1] (N,) -> little-endian 16-bit PCM bytes (clipped)."""
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (x * 32767.0).round().astype("<i2").tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes -> float32 (N,) in [-1, 1]. An odd trailing byte is an error."""
    if len(data) % 2:
        raise AudioError("corrupt", "16-bit PCM needs an even number of bytes.")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def to_wav_bytes(samples: np.ndarray, sample_rate: int = TARGET_RATE) -> bytes:
    """(N,) or (C, N) float audio -> a 16-bit PCM WAV file in memory."""
    import soundfile as sf

    x = np.asarray(samples, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, x.T if x.ndim == 2 else x, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
