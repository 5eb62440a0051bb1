"""Voice replies: espeak-ng (a Debian package, installed by the Makefile) to WAV bytes.

Robotic but real and offline. ``en-us+klatt`` voices are the ones the embedded recogniser
understands best, which matters when our own replies are fed back for round-trip tests.
"""

from __future__ import annotations

import shutil
import subprocess

MAX_CHARS = 5_000


class TTSUnavailable(RuntimeError):
    """espeak-ng is not installed (``apt-get install espeak-ng``)."""


class TTSError(ValueError):
    """The text cannot be spoken (empty, too long) or espeak-ng failed on it."""


def espeak_binary() -> str | None:
    return shutil.which("espeak-ng") or shutil.which("espeak")


def available() -> bool:
    return espeak_binary() is not None


def synthesize(text: str, *, voice: str = "en-gb", speed_wpm: int = 160, pitch: int = 50, timeout_s: float = 30.0) -> bytes:
    """``text`` spoken by espeak-ng as a 16-bit mono WAV file (22.05 kHz), in memory.

    Raises :class:`TTSUnavailable` when espeak-ng is absent and :class:`TTSError` for empty or
    over-long text or a voice espeak-ng does not know.
    """
    binary = espeak_binary()
    if binary is None:
        raise TTSUnavailable("Voice output is unavailable: espeak-ng is not installed (apt-get install espeak-ng).")
    text = " ".join(str(text).split())
    if not text:
        raise TTSError("Nothing to say: the reply text is empty.")
    if len(text) > MAX_CHARS:
        raise TTSError(f"The reply is {len(text)} characters; voice output takes at most {MAX_CHARS}.")
    if not (80 <= speed_wpm <= 450) or not (0 <= pitch <= 99):
        raise TTSError("speed_wpm must be 80-450 and pitch 0-99.")
    # text on stdin, never argv: a reply starting with "-" must not become an option
    proc = subprocess.run(
        [binary, "-v", voice, "-s", str(speed_wpm), "-p", str(pitch), "--stdout"],
        input=text.encode("utf-8"), capture_output=True, timeout=timeout_s, check=False,
    )
    if proc.returncode != 0 or proc.stdout[:4] != b"RIFF":
        raise TTSError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return _fix_wav_sizes(proc.stdout)


def _fix_wav_sizes(wav: bytes) -> bytes:
    """espeak-ng writing to a pipe cannot seek back, so it leaves 0xFFFFFFFF sizes in the header."""
    import struct

    if len(wav) < 44 or wav[12:16] != b"fmt ":
        return wav
    fmt_len = struct.unpack("<I", wav[16:20])[0]
    pos = 20 + fmt_len
    if wav[pos:pos + 4] != b"data":
        return wav
    data_len = len(wav) - (pos + 8)
    return wav[:4] + struct.pack("<I", len(wav) - 8) + wav[8:pos + 4] + struct.pack("<I", data_len) + wav[pos + 8:]
