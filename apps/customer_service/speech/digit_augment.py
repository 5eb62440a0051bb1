"""Synthetic digit speakers from espeak-ng: extra speaker variety for the digit recogniser.

FSDD has four (dev) speakers; leave-one-speaker-out trains on three. espeak-ng (offline, installed
by the Makefile for the voice replies) says the ten digit words in many voices: its English
dialects x voice variants (male, female, klatt, croak, ...) x pitch x pitch range x speed. Each
combination is one synthetic "speaker". They are formant-synthesised, so they teach the network
what varies between speakers (formant positions, pitch, rate, dialect vowels), not real
recording conditions; they are only ever training data, never scored.

Clips go through exactly the path of the real ones (``load_audio`` -> 16 kHz -> 8 kHz, trimmed by
``speech_span``) and are packed like ``digits.pack`` (same npz keys; speaker ``tts:<voice>``).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# English dialects espeak-ng ships (no MBROLA needed)
LANGUAGES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
             "en-us-nyc")
# voice variants: mostly male (the callers of FSDD are), some female and odd ones for range
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "klatt4", "croak", "Andy", "Denis", "Gene", "Mr_Serious", "norbert", "grandpa", "Michael",
            "Alex", "Ed", "John", "Lee", "Mike", "Paul", "Rob", "Quincy", "travis", "victor", "Storm")


@dataclass(frozen=True)
class SynthVoice:
    language: str
    variant: str
    pitch: int  # espeak -p, 0-99
    speed: int  # words per minute (espeak -s)
    amplitude: int = 100

    @property
    def name(self) -> str:
        return f"tts:{self.language}+{self.variant}:p{self.pitch}:s{self.speed}"

    def args(self) -> list[str]:
        return ["-v", f"{self.language}+{self.variant}", "-p", str(self.pitch), "-s", str(self.speed),
                "-a", str(self.amplitude)]


# kept out of training: the tests' "unseen synthetic voice" (tests/.../speech/conftest.py speak())
HELD_OUT = {("en-us", "klatt")}


def sample_voices(n: int, seed: int = 0) -> list[SynthVoice]:
    """``n`` distinct random voices (dialect x variant x pitch x speed), none of ``HELD_OUT``."""
    rng = np.random.default_rng(seed)
    out: dict[str, SynthVoice] = {}
    while len(out) < n:
        v = SynthVoice(LANGUAGES[rng.integers(len(LANGUAGES))], VARIANTS[rng.integers(len(VARIANTS))],
                       int(rng.integers(15, 80)), int(rng.integers(110, 220)))
        if (v.language, v.variant) not in HELD_OUT:
            out.setdefault(v.name, v)
    return list(out.values())


def espeak_wav(voice: SynthVoice, text: str, binary: str = "espeak-ng") -> bytes:
    """WAV bytes of ``text`` in ``voice`` (espeak-ng --stdout; 22.05 kHz mono)."""
    res = subprocess.run([binary, *voice.args(), "--stdout", text], capture_output=True, timeout=30, check=False)
    if res.returncode != 0 or len(res.stdout) < 100:
        raise RuntimeError(f"espeak-ng failed for {voice.name}: {res.stderr.decode(errors='replace')[:200]}")
    return res.stdout


def synthesize(n_voices: int = 200, seed: int = 0, digits: tuple[int, ...] = tuple(range(10))):
    """``(waves 8 kHz trimmed, labels, speakers, names)`` for ``n_voices`` voices x ``digits``."""
    from apps.customer_service.speech.audio import load_audio
    from apps.customer_service.speech.digits import DIGIT_WORDS, speech_span, to_8k

    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    waves, ys, spk, names = [], [], [], []
    for voice in sample_voices(n_voices, seed):
        for d in digits:
            x = to_8k(load_audio(espeak_wav(voice, DIGIT_WORDS[d], binary)).mono())
            s, e = speech_span(x)
            if e - s < 0.1 * 8000:
                continue
            waves.append(x[s:e])
            ys.append(d)
            spk.append(voice.name)
            names.append(f"{d}_{voice.name}.wav")
    return waves, np.array(ys), np.array(spk), names


def pack_synthetic(out: Path, n_voices: int = 200, seed: int = 0) -> None:
    waves, y, spk, names = synthesize(n_voices, seed)
    lens = np.array([len(w) for w in waves])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, pcm=(np.concatenate(waves) * 32767).round().clip(-32768, 32767).astype(np.int16),
                        lengths=lens, y=y, speakers=spk, names=np.array(names))
    print(f"{len(waves)} synthetic clips from {len(set(spk.tolist()))} voices, {lens.sum() / 8000:.0f} s -> {out}")
