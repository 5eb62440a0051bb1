"""CT ingestion: accepted formats give the same volume; every refusal is an IngestError with a reason."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from apps.medical.ingest import IngestError, IngestLimits, ingest_bytes, ingest_path, read_dicom_series
from apps.medical.render.writers import write_dicom_series, write_nifti
from tests.apps.medical.data.conftest import phantom_volume

SPACING = (2.5, 1.5, 1.5)  # (dz, dy, dx)
ORIGIN = (-30.0, -30.0, -100.0)


@pytest.fixture(scope="module")
def volume():
    return phantom_volume()


@pytest.fixture(scope="module")
def series(tmp_path_factory, volume) -> Path:
    folder = tmp_path_factory.mktemp("series") / "ct"
    return write_dicom_series(folder, volume, SPACING, ORIGIN, patient_id="P1", study_key="s1")


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_series_folder_zip_and_nifti_agree(series, volume, tmp_path):
    v = ingest_path(series)
    assert v.source_format == "dicom-series" and v.shape == (40, 40, 24)
    assert np.allclose(v.spacing, (1.5, 1.5, 2.5))
    assert np.array_equal(v.data, np.transpose(volume, (2, 1, 0)).astype(np.float32))
    z = ingest_bytes(_zip({f"a/{p.name}": p.read_bytes() for p in series.glob("*.dcm")}), "study.zip")
    assert np.array_equal(z.data, v.data) and np.allclose(z.affine_ras, v.affine_ras)
    n = ingest_path(write_nifti(tmp_path / "v.nii.gz", volume, SPACING, ORIGIN))
    assert np.array_equal(n.data, v.data) and np.allclose(n.affine_ras, v.affine_ras, atol=1e-4)
    raw = ingest_bytes((tmp_path / "v.nii.gz").read_bytes(), "v.nii.gz")
    assert np.array_equal(raw.data, v.data)


def test_missing_slice_is_named(series):
    files = sorted(series.glob("*.dcm"))
    with pytest.raises(IngestError, match="missing slices") as err:
        read_dicom_series(files[:10] + files[11:])
    assert err.value.code == "missing_slices" and err.value.status_code == 422


def test_inconsistent_spacing(series, tmp_path):
    import pydicom

    folder = tmp_path / "uneven"
    folder.mkdir()
    for i, f in enumerate(sorted(series.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        if i >= 12:
            ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                                       float(ds.ImagePositionPatient[2]) + 0.7 * (i - 11)]
        ds.save_as(folder / f.name)
    with pytest.raises(IngestError, match="inconsistent slice spacing"):
        ingest_path(folder)


def test_non_ct_modality_is_refused(series, tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    with pytest.raises(IngestError, match="modality is MR") as err:
        ingest_path(Path(get_testdata_file("MR_small.dcm", download=False)))
    assert err.value.code == "not_ct"
    folder = tmp_path / "mr"
    folder.mkdir()
    for f in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(folder / f.name)
    with pytest.raises(IngestError, match="only CT"):
        ingest_path(folder)


def test_nifti_that_is_not_hu_is_refused(tmp_path, volume):
    mri_like = (volume.astype(float) + 1024) / 8  # 0..~140, no air at -1000
    path = write_nifti(tmp_path / "mr.nii.gz", mri_like.astype(np.int16), SPACING, ORIGIN)
    with pytest.raises(IngestError, match="Hounsfield"):
        ingest_path(path)


def test_absurd_sizes_and_single_slices(series, tmp_path, volume):
    from pydicom.data import get_testdata_file

    with pytest.raises(IngestError, match="larger than") as err:
        ingest_path(series, IngestLimits(max_voxels=10_000))
    assert err.value.status_code == 413
    with pytest.raises(IngestError, match="single CT slice"):
        ingest_path(Path(get_testdata_file("CT_small.dcm", download=False)))
    path = write_nifti(tmp_path / "thin.nii.gz", volume, (0.01, 1.5, 1.5), ORIGIN)
    with pytest.raises(IngestError, match="slice spacing"):
        ingest_path(path)


def test_multiframe_dicom(volume, tmp_path, series):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    first = pydicom.dcmread(sorted(series.glob("*.dcm"))[0])
    ds = first.copy()
    ds.NumberOfFrames = volume.shape[0]
    ds.PixelData = np.ascontiguousarray(volume.astype("<i2")).tobytes()
    shared = Dataset()
    pm, po = Dataset(), Dataset()
    pm.PixelSpacing, pm.SliceThickness = [1.5, 1.5], 2.5
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([pm]), Sequence([po])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in reversed(range(volume.shape[0])):  # frames stored head-first: the reader must sort them
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + 2.5 * k]
        item.PlanePositionSequence = Sequence([pos])
        frames.append(item)
    ds.PixelData = np.ascontiguousarray(volume[::-1].astype("<i2")).tobytes()
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(tmp_path / "mf.dcm")
    v = ingest_path(tmp_path / "mf.dcm")
    ref = ingest_path(series)
    assert v.source_format == "dicom-multiframe"
    assert np.array_equal(v.data, ref.data) and np.allclose(v.affine_ras, ref.affine_ras)


def test_unsafe_or_unknown_uploads():
    with pytest.raises(IngestError) as err:
        ingest_bytes(_zip({"../../evil.dcm": b"x" * 10}), "evil.zip")
    assert err.value.status_code in (400, 422)
    with pytest.raises(IngestError) as err:
        ingest_bytes(b"GIF89a" + b"\0" * 400, "x.gif")
    assert err.value.status_code == 415 and "Accepted" in err.value.message
    with pytest.raises(IngestError, match="no DICOM"):
        ingest_bytes(_zip({"readme.txt": b"hello"}), "notes.zip")
    bomb = _zip({"big.dcm": b"\0" * (5 * 1024 * 1024)})
    with pytest.raises(IngestError) as err:
        ingest_bytes(bomb, "bomb.zip", limits=IngestLimits(max_archive_bytes=1024 * 1024))
    assert err.value.status_code == 413


def test_ingest_upload_contract(series, tmp_path):
    """The service's entry point: bytes + sniffed kind -> PHI-free NIfTI path and the study UID."""
    import nibabel as nib

    from apps.medical.ingest import ingest_upload

    data = _zip({p.name: p.read_bytes() for p in series.glob("*.dcm")})
    path, uid = ingest_upload(data, "zip", tmp_path)
    assert path.exists() and nib.load(str(path)).shape == (40, 40, 24) and uid
    import gzip

    assert b"P1" not in gzip.decompress(path.read_bytes())[:352]  # no patient ID in the stored header
    with pytest.raises(IngestError) as err:
        ingest_upload(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "png", tmp_path)
    assert err.value.status_code == 415


def test_localizer_is_ignored_and_tilt_refused(series, tmp_path):
    import shutil

    import pydicom

    folder = tmp_path / "with_scout"
    shutil.copytree(series, folder)
    scout = pydicom.dcmread(next(series.glob("*.dcm")))
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.SOPInstanceUID = "1.2.3.999"
    scout.save_as(folder / "scout.dcm")
    assert ingest_path(folder).shape == (40, 40, 24)
    tilted = tmp_path / "tilted"
    tilted.mkdir()
    for i, f in enumerate(sorted(series.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 0.8 * i, ipp[2]]  # 0.8 mm per slice: ~18 degrees
        ds.save_as(tilted / f.name)
    with pytest.raises(IngestError, match="gantry tilt"):
        ingest_path(tilted)


def _legacy_multiframe(series, volume):
    """The series as one legacy multi-frame file: first slice's header, every frame's pixels, even spacing."""
    import pydicom

    files = sorted(series.glob("*.dcm"))
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = len(files)
    ds.SpacingBetweenSlices = 2.5
    ds.PixelData = np.stack([pydicom.dcmread(f).pixel_array for f in files]).astype("<i2").tobytes()
    return ds


def _dump(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_malformed_header_values_are_refused_not_crashed(series, volume, tmp_path):
    """Hostile headers (several values where one number belongs, text, empty sequences, an unknown VR)
    are an IngestError naming the tag, never a TypeError/IndexError/NotImplementedError (HTTP 500)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from apps.medical.ingest import ingest_upload

    base = _legacy_multiframe(series, volume)
    assert ingest_bytes(_dump(base), "mf.dcm").source_format == "dicom-multiframe"
    cases = {}
    for name, value in (("NumberOfFrames", [24, 24]), ("Rows", [40, 40]), ("RescaleSlope", [1, 2]),
                        ("SpacingBetweenSlices", [2.5, 2.5])):
        ds = base.copy()
        setattr(ds, name, value)
        cases[f"multi-valued {name}"] = _dump(ds)
    ds = base.copy()
    ds.NumberOfFrames = 987654
    cases["text NumberOfFrames"] = _dump(ds).replace(b"987654", b"abc   ")
    ds = base.copy()
    ds.SharedFunctionalGroupsSequence = Sequence([])
    cases["empty shared groups"] = _dump(ds)
    ds, shared = base.copy(), Dataset()
    shared.PixelValueTransformationSequence = Sequence([])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    cases["empty rescale sequence"] = _dump(ds)
    # Rows (0028,0010) with an unknown VR: pydicom raises only when the value is first read
    cases["unknown VR"] = _dump(base).replace(b"\x28\x00\x10\x00US", b"\x28\x00\x10\x00\x55\x00", 1)
    for label, data in cases.items():
        with pytest.raises(IngestError) as err:
            ingest_upload(data, "dicom", tmp_path)
        assert 400 <= err.value.status_code < 500, label
        assert "abc" not in err.value.message, label  # the header's content is not echoed
    for name, value in (("Rows", [40, 40]), ("RescaleSlope", [1, 1]), ("SliceThickness", [2.5, 2.5])):
        files = {}
        for f in sorted(series.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            setattr(ds, name, value)
            files[f.name] = _dump(ds)
        with pytest.raises(IngestError, match=name) as err:
            ingest_upload(_zip(files), "zip", tmp_path)
        assert err.value.status_code == 422


def test_gzip_nifti_bomb_is_refused_before_reading(tmp_path):
    """A 30 KB .nii.gz declaring 256^3 voxels of one value (1000:1) used to be inflated and analysed in full
    (at 512x512x1200: a 600 KB upload, 107 s and gigabytes); now it is a 413 from the header alone."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((256, 256, 256))
    header.set_data_dtype(np.int16)
    header.set_zooms((1.0, 1.0, 1.0))
    buf = io.BytesIO()
    header.write_to(buf)
    data = gzip.compress(buf.getvalue() + b"\0" * 4 + b"\0" * (256 ** 3 * 2), compresslevel=1)
    assert len(data) < 256 ** 3 * 2 / 200
    with pytest.raises(IngestError, match="decompression-bomb guard") as err:
        ingest_bytes(data, "bomb.nii.gz")
    assert err.value.status_code == 413


def test_deflated_dicom_is_refused_before_inflating(series, volume, tmp_path):
    """pydicom inflates a deflated dataset whole before reading a tag: a 0.5 MB upload became 1 GB of
    memory (a 200 MB one, the upload limit, would take the process down). Refused from the meta group."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from apps.medical.ingest import ingest_upload

    ds = _legacy_multiframe(series, volume)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with pytest.raises(IngestError, match="deflated") as err:
        ingest_upload(_dump(ds), "dicom", tmp_path)
    assert err.value.status_code == 415 and err.value.code == "unsupported_transfer_syntax"


def test_nifti_without_a_voxel_size_is_refused(volume):
    """No sform and a zero pixdim: nibabel silently assumes 1 mm voxels, and every size the model
    reads (nodule diameters, the resampling) would be wrong; the upload must be refused."""
    import nibabel as nib

    data = nib.Nifti1Image(np.transpose(volume, (2, 1, 0)), np.diag([1.5, 1.5, 2.5, 1.0])).to_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(data), check=False)  # nibabel fixes pixdim on save
    header["sform_code"], header["qform_code"] = 0, 0
    header["pixdim"][1:4] = [0.0, 1.5, 2.5]
    with pytest.raises(IngestError, match="voxel size") as err:
        ingest_bytes(header.binaryblock + data[348:], "v.nii")
    assert err.value.code == "bad_geometry"


def test_degenerate_orientation_is_named(series, tmp_path):
    """ImageOrientationPatient of zeros (or two parallel vectors) has no slice normal; the refusal must
    say so, not report 'duplicate slices'."""
    import pydicom

    folder = tmp_path / "flat"
    folder.mkdir()
    for f in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
        ds.save_as(folder / f.name)
    with pytest.raises(IngestError, match="ImageOrientationPatient") as err:
        ingest_path(folder)
    assert err.value.code == "bad_geometry"


def test_volume_of_air_alone_is_refused(tmp_path):
    """An empty scan (no body in the field of view: every voxel air) passed the HU check and came back
    with a probability and 'nodule candidates'; it is not a chest CT."""
    air = np.random.default_rng(0).normal(-1000, 15, (24, 40, 40))
    air[3, 4, 5] = 1200  # a speck is still not a body
    path = write_nifti(tmp_path / "air.nii", air.astype(np.int16), SPACING, ORIGIN)
    with pytest.raises(IngestError, match="no body") as err:
        ingest_path(path)
    assert err.value.code == "not_ct"


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "JPEGLSLossless", "RLELossless"])
def test_compressed_series_as_pacs_export_them_read_like_the_uncompressed_one(series, tmp_path, syntax):
    """PACS exports are often compressed: JPEG 2000 (pylibjpeg-openjpeg) and JPEG-LS (pyjpegls) are
    decoded by the plugins installed with the package, RLE by pydicom itself; lossless, so the HU match."""
    import pydicom
    import pydicom.uid

    folder = tmp_path / syntax
    folder.mkdir()
    for path in series.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.compress(getattr(pydicom.uid, syntax))
        ds.save_as(folder / path.name, enforce_file_format=True)
    compressed = ingest_path(folder)
    assert np.array_equal(compressed.data, ingest_path(series).data)


def test_jpeg_plugin_decodes_a_jpeg_dicom():
    """JPEG (baseline to lossless, the commonest PACS compression) is pylibjpeg-libjpeg's: no encoder is
    at hand offline, so its wiring is checked on pydicom's own JPEG test file."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert ds.file_meta.TransferSyntaxUID.is_compressed and ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)


def test_the_series_the_renderer_writes_passes_the_dicom_validator(series, dicom_errors):
    # viewers and PACS refuse CT images without their type 1 attributes (ImageType was missing)
    for name in ("IM0001.dcm", sorted(p.name for p in series.iterdir())[-1]):
        assert dicom_errors((series / name).read_bytes()) == [], name
