"""Upload checks: size, declared type, magic bytes, decodable content; safe zip extraction.

Every refusal is a 4xx :class:`ApiError` whose message says what is accepted. Nothing here writes
a temporary file except :func:`safe_unzip` (into a folder the caller owns; use
:func:`temporary_directory` so it is always removed).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import Request

from core.serving.errors import ApiError

KINDS = ("png", "jpeg", "bmp", "tiff", "wav", "flac", "ogg", "mp3", "zip", "dicom", "nifti", "npy", "csv", "text")

# declared content types we believe for each kind; generic types are always let through to sniffing
_MIME = {
    "png": {"image/png"},
    "jpeg": {"image/jpeg", "image/jpg", "image/pjpeg"},
    "bmp": {"image/bmp", "image/x-bmp", "image/x-ms-bmp"},
    "tiff": {"image/tiff", "image/tif"},
    "wav": {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"},
    "flac": {"audio/flac", "audio/x-flac"},
    "ogg": {"audio/ogg", "application/ogg", "audio/vorbis", "audio/opus"},
    "mp3": {"audio/mpeg", "audio/mp3"},
    "zip": {"application/zip", "application/x-zip-compressed", "application/x-zip"},
    "dicom": {"application/dicom", "application/dicom+binary"},
    "nifti": {"application/x-nifti", "application/gzip", "application/x-gzip", "image/nifti"},
    "npy": {"application/x-npy", "application/npy"},
    # Windows browsers label .csv files with Excel's type
    "csv": {"text/csv", "application/csv", "text/x-csv", "application/x-csv", "text/plain", "application/vnd.ms-excel"},
    "text": {"text/plain", "text/markdown", "text/csv"},
}
_GENERIC_MIME = {"", "application/octet-stream", "binary/octet-stream", "application/unknown"}
_CHUNK = 1024 * 1024


def _nifti_header(head: bytes) -> bool:
    if len(head) >= 348:
        for order in ("little", "big"):
            if int.from_bytes(head[:4], order) == 348 and head[344:347] in (b"n+1", b"ni1"):
                return True
    if len(head) >= 12:
        for order in ("little", "big"):
            if int.from_bytes(head[:4], order) == 540 and head[4:7] in (b"n+2", b"ni2"):
                return True
    return False


def _mp3_frame(data: bytes) -> bool:
    # MPEG audio layer III frame header: 11 sync bits, a real version, layer III, a valid bitrate and
    # sample rate. Requiring all of them keeps e.g. a UTF-16 byte-order mark (FF FE) from passing.
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return False
    version, layer = (data[1] >> 3) & 3, (data[1] >> 1) & 3
    bitrate, rate = data[2] >> 4, (data[2] >> 2) & 3
    return version != 1 and layer == 1 and bitrate not in (0, 15) and rate != 3


def _gunzip_head(data: bytes, size: int = 544) -> bytes:
    # only the first few hundred bytes: sniffing must never inflate a whole (possibly hostile) stream
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], size)
    except zlib.error:
        return b""


def _text_kind(data: bytes) -> str | None:
    sample = data[:65536]
    if b"\x00" in sample:
        return None
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:  # a multi-byte character cut at the sample's end is fine
            return None
        text = sample[: exc.start].decode("utf-8")
    lines = [line for line in text.splitlines()[:20] if line.strip()]
    if len(data) > len(sample) and lines:
        lines = lines[:-1]  # the last sampled line may be cut
    for delimiter in (",", ";", "\t"):
        counts = {line.count(delimiter) for line in lines}
        if len(lines) >= 2 and len(counts) == 1 and counts.pop() > 0:
            return "csv"
    return "text"


def sniff_kind(data: bytes) -> str | None:
    """The file kind from its first bytes (magic numbers), or None when unrecognised."""
    # First: a DICOM file's 128-byte preamble is free for other formats' headers (PS3.10 7.1; a TIFF one
    # makes the file readable as both, as pydicom's CT_small.dcm is), and its marker after it decides.
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM") and len(data) >= 26 and int.from_bytes(data[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if data.startswith(b"RIFF") and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(b"fLaC"):
        return "flac"
    if data.startswith(b"OggS"):
        return "ogg"
    if data.startswith(b"ID3") or _mp3_frame(data):
        return "mp3"
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if _nifti_header(data[:544]):
        return "nifti"
    if data.startswith(b"\x1f\x8b") and _nifti_header(_gunzip_head(data)):
        return "nifti"
    if data:
        return _text_kind(data)
    return None


def _accepted(kind: str | None, accept: set[str]) -> bool:
    if kind in accept:
        return True
    # a CSV is text, and a one-column CSV sniffs as text
    return (kind == "csv" and "text" in accept) or (kind == "text" and "csv" in accept)


DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def _dicom_transfer_syntax(data: bytes) -> str | None:
    """The Transfer Syntax UID of a DICOM file's meta group (always explicit VR little endian), read from
    the bytes: pydicom's own meta reader takes file paths only."""
    at = data.find(b"\x02\x00\x10\x00UI", 132, 132 + 8192)
    if at < 0:
        return None
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    return data[at + 8 : at + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace")


def _check_content(kind: str, data: bytes) -> None:
    """Decode enough of the file to know it is what its magic bytes claim (raises ValueError)."""
    if kind in ("png", "jpeg", "bmp", "tiff"):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:  # raises DecompressionBombError on absurd sizes
                image.verify()
        except Image.DecompressionBombError:
            raise
        except Exception as exc:
            # ultralytics patches Image.open and turns a plain decode failure into a
            # ModuleNotFoundError (pi_heif); report the decode failure itself.
            raise ValueError("image data is truncated or corrupt") from exc
    elif kind in ("wav", "flac", "ogg", "mp3"):
        import soundfile

        info = soundfile.info(io.BytesIO(data))
        if info.frames <= 0:
            raise ValueError("audio has no samples")
    elif kind == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.infolist()
    elif kind == "npy":
        import numpy as np

        # allow_pickle=False: an object array would unpickle client data
        np.load(io.BytesIO(data), allow_pickle=False)
    elif kind == "dicom":
        import pydicom

        if _dicom_transfer_syntax(data) == DEFLATED_DICOM:
            return  # reading on would inflate the whole dataset in memory (100 kB -> 200 MB): the app decides
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    elif kind in ("csv", "text"):
        data.decode("utf-8")


# C0 controls other than tab, newline and carriage return, and DEL: they carry no words, and some databases
# refuse NUL in JSON
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Unicode's bidirectional embeddings, overrides and isolates (U+202A-202E, U+2066-2069): stored and shown
# again, they make a transcript or a report read differently from what its bytes say ("Trojan Source")
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def plain_text(text: str) -> str:
    """A text field as the services read and store it: control characters become spaces, bidirectional
    embedding / override / isolate characters go (the marks U+200E / U+200F stay), ends are stripped."""
    return _BIDI_CONTROLS.sub("", _CONTROL_CHARS.sub(" ", text)).strip()


FORM_BODY_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def require_form_body(content_type: str | None, fields: str, *, multipart_only: bool = False) -> None:
    """Refuse (415) a body that is not a form: FastAPI reads a JSON body or raw file bytes as a form with
    no fields, and "missing field" would then mislead. ``fields`` says what the form should hold;
    ``multipart_only`` for forms that must carry files (a URL-encoded body or none at all cannot)."""
    body_type = (content_type or "").split(";")[0].strip().lower()
    accepted = body_type == "multipart/form-data" if multipart_only else body_type in ("", *FORM_BODY_TYPES)
    if not accepted:
        sent = f"The body is {body_type}" if body_type else "The request has no Content-Type"
        raise ApiError(415, "unsupported_media_type", f"{sent}; send multipart/form-data with {fields}.")


def form_body_required(fields: str, *, multipart_only: bool = False):
    """``require_form_body`` as a route dependency: it runs before FastAPI checks the fields, so a missing
    required file field does not answer first."""

    async def check(request: Request) -> None:
        require_form_body(request.headers.get("content-type"), fields, multipart_only=multipart_only)

    return check


async def read_upload(
    file: Any,
    *,
    accept: set[str] | frozenset[str] | tuple[str, ...],
    max_bytes: int,
    verify: bool = True,
) -> bytes:
    """Read an UploadFile (or bytes) into memory after checking size, type, magic bytes and content.

    Raises ApiError 413 (too large), 415 (wrong kind) or 422 (empty / undecodable), each naming
    what is accepted. Returns the bytes; the sniffed kind is ``sniff_kind(result)``.
    """
    accept = set(accept)
    unknown = accept - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; known: {KINDS}")
    accepted = ", ".join(sorted(accept))
    name = getattr(file, "filename", None) or "upload"
    if isinstance(file, (bytes, bytearray)):
        data = bytes(file)
        if len(data) > max_bytes:
            raise _too_large(len(data), max_bytes)
    else:
        declared = (getattr(file, "content_type", None) or "").split(";")[0].strip().lower()
        allowed = set().union(*(_MIME[k] for k in accept)) | _GENERIC_MIME
        if declared and declared not in allowed:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"{name}: content type {declared!r} is not accepted; accepted kinds: {accepted}",
                {"accepted": sorted(accept), "declared": declared},
            )
        declared_size = getattr(file, "size", None)
        if isinstance(declared_size, int) and declared_size > max_bytes:
            raise _too_large(declared_size, max_bytes)
        chunks, total = [], 0
        while True:
            chunk = await file.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(total, max_bytes, at_least=True)
            chunks.append(chunk)
        data = b"".join(chunks)
    if not data:
        raise ApiError(422, "empty_upload", f"{name} is empty; accepted kinds: {accepted}", {"accepted": sorted(accept)})
    kind = sniff_kind(data)
    if not _accepted(kind, accept):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{name} looks like {kind or 'an unknown format'}; accepted kinds: {accepted}",
            {"accepted": sorted(accept), "detected": kind},
        )
    if verify:
        try:
            _check_content(kind, data)  # type: ignore[arg-type]
        except Exception as exc:  # any decoder failure is the upload's fault, never a 500
            raise ApiError(
                422,
                "corrupt_upload",
                f"{name} starts like {kind} but could not be decoded ({_reason(exc)}); accepted kinds: {accepted}",
                {"accepted": sorted(accept), "detected": kind},
            ) from None
    return data


def _reason(exc: Exception) -> str:
    """A short, content-free reason: the decoder's message when it is ours, else its type."""
    return str(exc)[:120] if type(exc) is ValueError and str(exc) else type(exc).__name__


def _too_large(size: int, max_bytes: int, at_least: bool = False) -> ApiError:
    got = f"more than {max_bytes}" if at_least else str(size)
    return ApiError(
        413, "too_large", f"upload is {got} bytes; the limit is {max_bytes} bytes", {"max_bytes": max_bytes}
    )


@contextlib.contextmanager
def temporary_directory(prefix: str = "triptych-") -> Iterator[Path]:
    """A private temp folder that is removed however the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _safe_member_path(name: str) -> PurePosixPath:
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if (
        not normalised
        or normalised.startswith("/")
        or (len(normalised) > 1 and normalised[1] == ":")  # C:/...
        or any(part in ("..",) for part in path.parts)
        or "\x00" in normalised
    ):
        raise ApiError(422, "unsafe_archive", f"archive entry {name!r} points outside the archive; paths must be relative")
    return path


def safe_unzip(
    data: bytes,
    dest: Path | str,
    max_files: int = 2000,
    max_total_bytes: int = 1024 * 1024 * 1024,
    max_ratio: float = 200.0,
) -> list[Path]:
    """Extract a zip held in memory into ``dest``; refuse bombs, traversal, links and encryption.

    Declared sizes are checked first, then the bytes actually written are counted (headers can lie).
    On refusal everything already written under ``dest`` is removed. Returns the extracted files.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ApiError(422, "corrupt_upload", f"not a readable zip archive ({exc})") from None
    written: list[Path] = []
    try:
        with archive:
            members = archive.infolist()
            files = [m for m in members if not m.is_dir()]
            if len(files) > max_files:
                raise ApiError(413, "archive_too_large", f"archive has {len(files)} files; at most {max_files} are accepted")
            declared = sum(m.file_size for m in files)
            if declared > max_total_bytes:
                raise ApiError(
                    413, "archive_too_large", f"archive expands to {declared} bytes; at most {max_total_bytes} are accepted"
                )
            root = dest.resolve()
            total = 0
            for member in members:
                relative = _safe_member_path(member.filename)
                mode = member.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise ApiError(422, "unsafe_archive", f"archive entry {member.filename!r} is a symbolic link; links are not accepted")
                if member.flag_bits & 0x1:
                    raise ApiError(422, "unsafe_archive", "encrypted archive entries are not accepted")
                target = (dest / relative).resolve()
                if root not in target.parents and target != root:
                    raise ApiError(422, "unsafe_archive", f"archive entry {member.filename!r} points outside the archive")
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if member.compress_size and member.file_size / member.compress_size > max_ratio:
                    raise ApiError(
                        413, "archive_too_large",
                        f"archive entry {member.filename!r} compresses {member.file_size / member.compress_size:.0f}:1; "
                        f"at most {max_ratio:.0f}:1 is accepted (zip bomb guard)",
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                entry_total = 0
                with archive.open(member) as source, open(target, "wb") as sink:
                    written.append(target)
                    while chunk := source.read(_CHUNK):
                        entry_total += len(chunk)
                        total += len(chunk)
                        if total > max_total_bytes or entry_total > member.file_size:
                            raise ApiError(413, "archive_too_large", f"archive expands beyond {max_total_bytes} bytes or beyond its declared sizes")
                        sink.write(chunk)
    except ApiError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, RuntimeError) as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise ApiError(422, "corrupt_upload", f"zip archive could not be read ({type(exc).__name__})") from None
    return written
