"""Upload checks: magic bytes for every kind, size/type/content refusals, zip bombs and traversal."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi import UploadFile
from fastapi.testclient import TestClient

from core.serving import ApiError, plain_text, read_upload, safe_unzip, sniff_kind, temporary_directory
from tests.core.serving.helpers import make_app


def _image(fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def _audio(fmt: str) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    tone = np.sin(np.linspace(0, 200, 8000)).astype("float32") * 0.1
    soundfile.write(buffer, tone, 8000, format=fmt)
    return buffer.getvalue()


def _nifti(tmp_path: Path, name: str) -> bytes:
    import nibabel

    path = tmp_path / name
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4)), str(path))
    return path.read_bytes()


def _dicom(tmp_path: Path) -> bytes:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros((2, 2), dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_sniff_every_kind(tmp_path):
    samples = {
        "png": _image("PNG"),
        "jpeg": _image("JPEG"),
        "bmp": _image("BMP"),
        "tiff": _image("TIFF"),
        "wav": _audio("WAV"),
        "flac": _audio("FLAC"),
        "ogg": _audio("OGG"),
        "zip": _zip({"a.txt": b"hello"}),
        "dicom": _dicom(tmp_path),
        "npy": _npy(np.arange(6, dtype=np.float32)),
        "csv": b"a,b,c\n1,2,3\n4,5,6\n",
        "text": "Le patient présente une toux.\n".encode(),
        "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 64,
    }
    assert sniff_kind(b"\xff\xfb\x90\x64" + b"\x00" * 400) == "mp3"  # a bare MPEG-1 layer III frame
    assert sniff_kind("Hello".encode("utf-16")) != "mp3"  # FF FE byte-order mark is not a frame
    samples["nifti"] = _nifti(tmp_path, "v.nii")
    for kind, data in samples.items():
        assert sniff_kind(data) == kind, kind
    assert sniff_kind(_nifti(tmp_path, "v.nii.gz")) == "nifti"
    assert sniff_kind(gzip.compress(b"not a nifti" * 100)) is None
    assert sniff_kind(b"") is None
    assert sniff_kind(b"\x00\x01\x02\xfe\xff" * 20) is None


def _read(data, accept, max_bytes=1_000_000, content_type=None):
    class Upload:  # the UploadFile surface read_upload uses
        filename = "scan.bin"

        def __init__(self):
            self.content_type = content_type
            self._buffer = io.BytesIO(data)

        async def read(self, size=-1):
            return self._buffer.read(size)

    return asyncio.run(read_upload(Upload(), accept=accept, max_bytes=max_bytes))


def test_read_upload_accepts_valid_and_returns_bytes(tmp_path):
    png = _image("PNG")
    assert _read(png, {"png", "jpeg"}, content_type="image/png") == png
    assert _read(png, {"png"}, content_type="application/octet-stream") == png
    wav = _audio("WAV")
    assert _read(wav, {"wav", "flac"}) == wav
    assert asyncio.run(read_upload(b"x,y\n1,2\n", accept={"text"}, max_bytes=100)) == b"x,y\n1,2\n"


def test_read_upload_refusals_name_what_is_accepted():
    png = _image("PNG")
    with pytest.raises(ApiError) as too_big:
        _read(png, {"png"}, max_bytes=len(png) - 1)
    assert too_big.value.status_code == 413 and str(len(png) - 1) in too_big.value.message

    with pytest.raises(ApiError) as wrong_magic:
        _read(b"GIF89a" + b"\x00" * 50, {"png", "jpeg"})
    assert wrong_magic.value.status_code == 415 and "jpeg, png" in wrong_magic.value.message

    with pytest.raises(ApiError) as disguised:  # a WAV renamed to .png is still a WAV
        _read(_audio("WAV"), {"png"}, content_type="image/png")
    assert disguised.value.status_code == 415 and disguised.value.detail["detected"] == "wav"

    with pytest.raises(ApiError) as declared:
        _read(png, {"png"}, content_type="application/pdf")
    assert declared.value.status_code == 415 and "png" in declared.value.message

    with pytest.raises(ApiError) as empty:
        _read(b"", {"png"})
    assert empty.value.status_code == 422 and empty.value.code == "empty_upload"


def test_read_upload_checks_content_not_just_magic():
    truncated = _image("PNG")[:40]  # valid signature, broken image
    with pytest.raises(ApiError) as corrupt:
        _read(truncated, {"png"})
    assert corrupt.value.status_code == 422 and corrupt.value.code == "corrupt_upload"

    with pytest.raises(ApiError) as pickled:  # object arrays would unpickle client data
        _read(_npy(np.array([{"a": 1}], dtype=object)), {"npy"})
    assert pickled.value.status_code == 422

    assert _read(_npy(np.ones((2, 3))), {"npy"})


def test_safe_unzip_extracts_normal_archive(tmp_path):
    data = _zip({"study/a.dcm": b"1" * 100, "study/sub/b.txt": b"2" * 10})
    files = safe_unzip(data, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["study/a.dcm", "study/sub/b.txt"]
    assert (tmp_path / "out/study/a.dcm").read_bytes() == b"1" * 100


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "..\\evil.txt", "C:/evil.txt"])
def test_safe_unzip_refuses_path_traversal(tmp_path, name):
    data = _zip({"ok.txt": b"fine", name: b"pwned"})
    dest = tmp_path / "deep" / "out"
    with pytest.raises(ApiError) as refused:
        safe_unzip(data, dest)
    assert refused.value.status_code == 422 and refused.value.code == "unsafe_archive"
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert not (dest / "ok.txt").exists()  # partial extraction removed


def test_safe_unzip_refuses_symlink_entries(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(ApiError) as refused:
        safe_unzip(buffer.getvalue(), tmp_path / "out")
    assert "link" in refused.value.message


def test_safe_unzip_refuses_zip_bomb(tmp_path):
    bomb = _zip({"zeros.bin": b"\x00" * (20 * 1024 * 1024)})  # ~20 KB on the wire
    assert len(bomb) < 100_000
    with pytest.raises(ApiError) as ratio:
        safe_unzip(bomb, tmp_path / "a")
    assert ratio.value.status_code == 413 and "zip bomb" in ratio.value.message
    with pytest.raises(ApiError) as total:
        safe_unzip(_zip({"big.bin": os.urandom(50_000)}), tmp_path / "b", max_total_bytes=10_000)
    assert total.value.status_code == 413
    with pytest.raises(ApiError) as count:
        safe_unzip(_zip({f"f{i}.txt": b"x" for i in range(20)}), tmp_path / "c", max_files=10)
    assert count.value.status_code == 413 and "20 files" in count.value.message
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_safe_unzip_refuses_garbage(tmp_path):
    with pytest.raises(ApiError) as refused:
        safe_unzip(b"PK\x03\x04garbage", tmp_path)
    assert refused.value.status_code == 422


def test_temporary_directory_removed_even_on_error():
    with pytest.raises(RuntimeError), temporary_directory() as tmp:
        (tmp / "f").write_bytes(b"x")
        kept = tmp
        raise RuntimeError("boom")
    assert not kept.exists()


def test_upload_endpoints_over_http(tmp_path, monkeypatch):
    import tempfile

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    app = make_app(tmp_path, max_upload_bytes=3 * 1024 * 1024)
    with TestClient(app) as client:
        png = _image("PNG")
        ok = client.post("/image", files={"file": ("a.png", png, "image/png")})
        assert ok.status_code == 200 and ok.json() == {"bytes": len(png)}

        wrong = client.post("/image", files={"file": ("a.png", _audio("WAV"), "image/png")})
        assert wrong.status_code == 415
        assert wrong.json()["error"]["code"] == "unsupported_media_type"
        assert "jpeg, png" in wrong.json()["error"]["message"]

        # bigger than the 1 MB spool threshold, so Starlette writes it to disk; then refused
        big = os.urandom(2 * 1024 * 1024)
        refused = client.post("/image", files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + big, "image/png")})
        assert refused.status_code == 422

        too_big = client.post("/image", files={"file": ("huge.png", b"\x89PNG\r\n\x1a\n" + os.urandom(5 * 1024 * 1024), "image/png")})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"

        listed = client.post("/archive", files={"file": ("s.zip", _zip({"a/b.txt": b"hi", "c.txt": b"yo"}), "application/zip")})
        assert listed.status_code == 200 and listed.json() == {"files": ["a/b.txt", "c.txt"]}
        evil = client.post("/archive", files={"file": ("s.zip", _zip({"../../x.txt": b"hi"}), "application/zip")})
        assert evil.status_code == 422 and evil.json()["error"]["code"] == "unsafe_archive"
        bomb = client.post("/archive", files={"file": ("b.zip", _zip({"z": b"\x00" * 5_000_000}), "application/zip")})
        assert bomb.status_code == 413

        missing = client.post("/image")
        assert missing.status_code == 422 and missing.json()["error"]["code"] == "invalid_request"
    assert list(spool.iterdir()) == []  # every temporary file and folder is gone


def test_corrupt_image_reason_survives_ultralytics_patch():
    # ultralytics wraps PIL's Image.open and re-raises decode failures as ModuleNotFoundError.
    import torch  # noqa: F401  (ultralytics after torch)
    import ultralytics  # noqa: F401

    with pytest.raises(ApiError) as corrupt:
        asyncio.run(read_upload(b"\x89PNG\r\n\x1a\nxxxx", accept={"png"}, max_bytes=1_000))
    assert corrupt.value.status_code == 422
    assert "truncated or corrupt" in corrupt.value.message and "ModuleNotFound" not in corrupt.value.message


def test_a_dicom_preamble_holding_another_formats_header_is_still_dicom(tmp_path):
    data = _dicom(tmp_path)
    tiff_preamble = b"II*\x00" + data[4:]  # PS3.10 leaves the preamble free; pydicom's CT_small.dcm has a TIFF one
    assert sniff_kind(tiff_preamble) == "dicom"
    assert _read(tiff_preamble, {"dicom"}) == tiff_preamble


def test_a_deflated_dicom_is_not_inflated_by_the_content_check(tmp_path, monkeypatch):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(_dicom(tmp_path)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    deflated = buffer.getvalue()
    reads = []
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: reads.append(a))
    assert _read(deflated, {"dicom"}) == deflated  # the meta group checked; the dataset left to the app
    assert reads == []
    assert _read(_dicom(tmp_path), {"dicom"}) and len(reads) == 1  # any other transfer syntax is read


def test_a_body_that_is_not_a_form_is_415_naming_what_to_send():
    from fastapi import Depends, FastAPI

    from core.serving import form_body_required, require_form_body
    from core.serving.errors import install_error_handlers

    for content_type in (None, "", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"):
        require_form_body(content_type, "a 'text' field")
    with pytest.raises(ApiError) as refused:
        require_form_body("application/json", "a 'text' field")
    assert refused.value.status_code == 415 and "multipart/form-data with a 'text' field" in str(refused.value)
    for content_type in (None, "application/x-www-form-urlencoded"):  # neither can carry a file
        with pytest.raises(ApiError):
            require_form_body(content_type, "an 'image' file", multipart_only=True)

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/files", dependencies=[Depends(form_body_required("an 'image' file", multipart_only=True))])
    async def files(image: UploadFile) -> dict:  # a required field: the dependency must answer first
        return {"name": image.filename}

    with TestClient(app) as client:
        r = client.post("/files", json={"image": "x"})
        assert r.status_code == 415 and "an 'image' file" in r.json()["error"]["message"]
        assert client.post("/files", files={"image": ("a.png", b"x", "image/png")}).json() == {"name": "a.png"}


@pytest.mark.parametrize("given, kept", [
    ("card\x00number\x07\tok\r\n", "card number \tok"),
    ("\u202eevil\u202c text \u2067x\u2069", "evil text x"),
    ("\u05e9\u05dc\u05d5\u05dd\u200f ok", "\u05e9\u05dc\u05d5\u05dd\u200f ok"),  # marks stay: they only hint
    ("\x1b[31m", "[31m"),
])
def test_plain_text_drops_controls_and_bidi_overrides(given, kept):
    assert plain_text(given) == kept
