"""Synthetic digit speakers: extra speaker variety for the digit recogniser.

FSDD has four (dev) speakers; leave-one-speaker-out trains on three. espeak-ng (offline, installed
by the Makefile for the voice replies) says the ten digit words in many voices: its English
dialects x voice variants (male, female, klatt, croak, ...) x pitch x pitch range x speed. Each
combination is one synthetic "speaker". They are formant-synthesised, so they teach the network
what varies between speakers (formant positions, pitch, rate, dialect vowels), not real
recording conditions; they are only ever training data, never scored.

Where Debian's ``flite`` and ``festival`` (+ ``festvox-kallpc16k``, ``festvox-kdlpc16k``,
``festvox-us-slt-hts``) are installed, :func:`corpus_voices` adds their voices: diphone,
clustergen and HTS voices built from real recordings of seven speakers (US, Scottish; male and
female), each at several pitch targets, speaking rates and pitch shifts (sox). Those engines are
needed only to build the training pack, never by the service.

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


@dataclass(frozen=True)
class CorpusVoice:
    """A flite or festival voice built from one real speaker's recordings, at a pitch target
    (flite's ``int_f0_target_mean``, Hz; 0 = the voice's own), a duration stretch and a pitch
    shift in cents (sox ``pitch``: duration kept, formants move with it)."""

    engine: str  # "flite" | "festival"
    voice: str
    f0: int = 0
    stretch: float = 1.0
    cents: int = 0

    @property
    def name(self) -> str:
        return f"tts:{self.engine}:{self.voice}:f{self.f0}:d{self.stretch:g}:c{self.cents:+d}"

    def wav(self, text: str, workdir: Path) -> bytes:
        out = workdir / "say.wav"
        if self.engine == "flite":
            cmd = ["flite", "-voice", self.voice, "-t", text, "-o", str(out), "--setf",
                   f"duration_stretch={self.stretch}"]
            if self.f0:
                cmd += ["--setf", f"int_f0_target_mean={self.f0}"]
            res = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
        else:
            scheme = f"(voice_{self.voice}) (Parameter.set 'Duration_Stretch {self.stretch})"
            res = subprocess.run(["text2wave", "-eval", scheme, "-o", str(out)], input=text.encode(),
                                 capture_output=True, timeout=30, check=False)
        if res.returncode != 0 or not out.exists():
            raise RuntimeError(f"{self.engine} failed for {self.name}: {res.stderr.decode(errors='replace')[:200]}")
        if self.cents:
            shifted = workdir / "shifted.wav"
            subprocess.run(["sox", str(out), str(shifted), "pitch", str(self.cents)], check=True,
                           capture_output=True, timeout=30)
            out = shifted
        return out.read_bytes()


# Debian voices from real speakers (flite: kal16 diphone, awb / rms / slt clustergen; festival: kal /
# ked diphone, slt HTS). flite's kal is kal16 at 8 kHz: left out as a duplicate.
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")


def corpus_voices(seed: int = 0, per_voice: int = 12) -> list[CorpusVoice]:
    """``per_voice`` random (pitch target, stretch, shift) settings of every installed flite /
    festival voice; none where the engine is missing."""
    rng = np.random.default_rng(seed)
    engines = []
    if shutil.which("flite"):
        engines += [("flite", v) for v in FLITE_VOICES]
    if shutil.which("text2wave") and shutil.which("sox"):
        engines += [("festival", v) for v in FESTIVAL_VOICES if festival_has(v)]
    out: dict[str, CorpusVoice] = {}
    for engine, voice in engines:
        named: dict[str, CorpusVoice] = {}
        while len(named) < per_voice:
            v = CorpusVoice(engine, voice, int(rng.choice([0, 90, 105, 120, 140])) if engine == "flite" else 0,
                            float(rng.choice([0.85, 1.0, 1.15, 1.3])), int(rng.choice([-300, -150, 0, 0, 150, 300])))
            named.setdefault(v.name, v)
        out.update(named)
    return list(out.values())


def festival_has(voice: str) -> bool:
    return any(Path("/usr/share/festival/voices").glob(f"*/{voice}"))


def synthesize(n_voices: int = 200, seed: int = 0, digits: tuple[int, ...] = tuple(range(10)),
               corpus_per_voice: int = 0):
    """``(waves 8 kHz trimmed, labels, speakers, names)`` for ``n_voices`` espeak-ng voices x
    ``digits``, plus ``corpus_per_voice`` settings of each installed flite / festival voice."""
    import tempfile

    from apps.customer_service.speech.audio import load_audio
    from apps.customer_service.speech.digits import DIGIT_WORDS, speech_span, to_8k

    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    voices: list = list(sample_voices(n_voices, seed))
    if corpus_per_voice:
        extra = corpus_voices(seed, corpus_per_voice)
        if not extra:
            raise RuntimeError("no flite / festival voice installed (apt-get install flite festival "
                               "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)")
        voices += extra
    waves, ys, spk, names = [], [], [], []
    tmp = tempfile.TemporaryDirectory()
    for voice in voices:
        for d in digits:
            wav = espeak_wav(voice, DIGIT_WORDS[d], binary) if isinstance(voice, SynthVoice) else \
                voice.wav(DIGIT_WORDS[d], Path(tmp.name))
            x = to_8k(load_audio(wav).mono())
            s, e = speech_span(x)
            if e - s < 0.1 * 8000:
                continue
            waves.append(x[s:e])
            ys.append(d)
            spk.append(voice.name)
            names.append(f"{d}_{voice.name}.wav")
    tmp.cleanup()
    return waves, np.array(ys), np.array(spk), names


def pack_synthetic(out: Path, n_voices: int = 200, seed: int = 0, corpus_per_voice: int = 0) -> None:
    waves, y, spk, names = synthesize(n_voices, seed, corpus_per_voice=corpus_per_voice)
    lens = np.array([len(w) for w in waves])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, pcm=(np.concatenate(waves) * 32767).round().clip(-32768, 32767).astype(np.int16),
                        lengths=lens, y=y, speakers=spk, names=np.array(names))
    print(f"{len(waves)} synthetic clips from {len(set(spk.tolist()))} voices, {lens.sum() / 8000:.0f} s -> {out}")
