"""Acoustic features for voice emotion: pitch, energy, spectral and prosodic statistics (librosa).

One fixed-length vector per utterance (``FEATURE_DIM`` floats), computed from 16 kHz mono audio.
The seed names pitch and energy; the spectral/cepstral statistics carry most of what separates
acted emotions across speakers (voice quality, articulation effort), so both are here.
librosa is imported lazily: this module is imported by the service and the CLI.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
N_MFCC = 40
N_MELS = 64
HOP = 160  # 10 ms
N_FFT = 512
FMIN, FMAX = 60.0, 500.0


def _stats(x: np.ndarray) -> list[float]:
    """mean, std, p10, p50, p90 of a 1-D series (zeros for an empty one)."""
    if x.size == 0:
        return [0.0] * 5
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return [float(x.mean()), float(x.std()), float(p10), float(p50), float(p90)]


def _slope(x: np.ndarray) -> float:
    if x.size < 3:
        return 0.0
    t = np.linspace(0.0, 1.0, x.size)
    return float(np.polyfit(t, x, 1)[0])


def prepare_utterance(audio: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """16 kHz mono float32, silence at both ends trimmed, peak-normalised: what every voice feature reads.

    Raises ValueError for audio shorter than 0.1 s, without signal or not finite, so callers can answer 4xx.
    """
    import librosa

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError("expected mono audio (1-D array)")
    if sr != SAMPLE_RATE:
        audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLE_RATE)
    if audio.size < SAMPLE_RATE // 10 or not np.all(np.isfinite(audio)) or not np.any(np.abs(audio) > 1e-5):
        raise ValueError("audio is too short or silent for emotion analysis (need >= 0.1 s of signal)")
    trimmed, _ = librosa.effects.trim(audio, top_db=35, frame_length=N_FFT, hop_length=HOP)
    if trimmed.size >= SAMPLE_RATE // 10:
        audio = trimmed
    # Loudness is informative (anger vs sadness) but recording gain is not: normalise the peak and
    # keep the level distribution (rms percentiles relative to the peak) as features.
    return (audio / (np.abs(audio).max() + 1e-8)).astype(np.float32)


def acoustic_features(audio: np.ndarray, sr: int = SAMPLE_RATE, prepared: bool = False) -> np.ndarray:
    """(FEATURE_DIM,) float32 statistics of one utterance (``prepare_utterance`` first unless ``prepared``).

    Raises ValueError for audio shorter than 0.1 s or without signal, so callers can answer 4xx.
    """
    import librosa

    audio = audio if prepared else prepare_utterance(audio, sr)
    sr = SAMPLE_RATE

    stft = np.abs(librosa.stft(audio, n_fft=N_FFT, hop_length=HOP)) ** 2
    mel = librosa.feature.melspectrogram(S=stft, sr=sr, n_mels=N_MELS, fmax=8000)
    log_mel = librosa.power_to_db(mel + 1e-10)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=N_MFCC)
    width = 9 if mfcc.shape[1] >= 9 else (mfcc.shape[1] // 2) * 2 + 1
    if width >= 3:
        d1 = librosa.feature.delta(mfcc, width=width)
        d2 = librosa.feature.delta(mfcc, order=2, width=width)
    else:
        d1 = np.zeros_like(mfcc)
        d2 = np.zeros_like(mfcc)
    rms = librosa.feature.rms(S=np.sqrt(stft), frame_length=N_FFT)[0]
    rms_db = 20 * np.log10(rms + 1e-6)
    zcr = librosa.feature.zero_crossing_rate(audio, frame_length=N_FFT, hop_length=HOP)[0]
    centroid = librosa.feature.spectral_centroid(S=np.sqrt(stft), sr=sr)[0]
    bandwidth = librosa.feature.spectral_bandwidth(S=np.sqrt(stft), sr=sr)[0]
    rolloff = librosa.feature.spectral_rolloff(S=np.sqrt(stft), sr=sr)[0]
    flatness = librosa.feature.spectral_flatness(S=np.sqrt(stft))[0]
    contrast = librosa.feature.spectral_contrast(S=np.sqrt(stft), sr=sr, n_bands=6, fmin=100.0)
    f0 = librosa.yin(audio, fmin=FMIN, fmax=FMAX, sr=sr, frame_length=1024, hop_length=HOP)

    n = min(f0.size, rms_db.size)
    f0, frame_db = f0[:n], rms_db[:n]
    # yin always answers; keep frames that are loud enough and not pinned at the search bounds.
    voiced = (frame_db > frame_db.max() - 30) & (f0 > FMIN * 1.05) & (f0 < FMAX * 0.95)
    f0v = f0[voiced]
    semitones = 12 * np.log2(f0v / 100.0) if f0v.size else f0v
    jitter = np.abs(np.diff(semitones)) if semitones.size > 1 else np.zeros(0)
    active_db = rms_db[rms_db > rms_db.max() - 40]

    feats: list[float] = []
    for block in (mfcc, d1, d2):
        feats += block.mean(axis=1).tolist() + block.std(axis=1).tolist()
    feats += log_mel.mean(axis=1).tolist() + log_mel.std(axis=1).tolist()
    feats += contrast.mean(axis=1).tolist() + contrast.std(axis=1).tolist()
    for series in (np.log(centroid + 1), np.log(bandwidth + 1), np.log(rolloff + 1),
                   np.log(flatness + 1e-8), zcr):
        feats += _stats(series)
    # Prosody: pitch level/range/movement (semitones re 100 Hz), energy level/dynamics, voicing.
    feats += _stats(semitones) + [float(np.ptp(semitones)) if semitones.size else 0.0, _slope(semitones)]
    feats += _stats(jitter)
    feats += _stats(active_db) + [float(np.ptp(active_db)) if active_db.size else 0.0, _slope(active_db)]
    d_db = np.abs(np.diff(rms_db))
    feats += _stats(d_db)
    feats += [float(voiced.mean()), float(audio.size / sr)]
    # Voiced-segment rate (syllable-like onsets per second) as a speaking-rate proxy.
    onsets = np.flatnonzero(np.diff(voiced.astype(np.int8)) == 1)
    feats += [float(onsets.size / max(audio.size / sr, 1e-3))]
    out = np.nan_to_num(np.asarray(feats, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return out


FEATURE_DIM = 3 * 2 * N_MFCC + 2 * N_MELS + 2 * 7 + 5 * 5 + (5 + 2) + 5 + (5 + 2) + 5 + 3
