import io
import logging
import time
import zipfile
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from apps.medical.api import create_app
from apps.medical.service import RISK_BANDS, risk_band
from apps.medical.settings import MedicalSettings

REPORT = "Jane Roe, 67-year-old former smoker, 40 pack-years. A 14 mm nodule in the right upper lobe."


@pytest.fixture()
def client(tiny_bundle, tiny_bert_dir, tmp_path):
    settings = MedicalSettings(bundle_dir=tiny_bundle[0], bert_path=str(tiny_bert_dir), database_url=f"sqlite:///{tmp_path}/t.db",
                               artefact_dir=tmp_path / "art", api_keys={"rad": "radiologist", "ag": "agent"},
                               audit_key_file=tmp_path / "audit.key")
    with TestClient(create_app(settings)) as c:
        for _ in range(200):
            if c.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        yield c


def _ct(toy_studies):
    return (toy_studies / "volumes" / "LIDC-IDRI-0002-s0.nii.gz").read_bytes()


def test_analyze_returns_everything_and_audits(client, toy_studies, caplog):
    caplog.set_level(logging.DEBUG)
    r = client.post("/v1/studies:analyze", files={"ct": ("s.nii.gz", _ct(toy_studies), "application/gzip")},
                    data={"report": REPORT}, headers={"X-API-Key": "rad"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0 <= body["probability"] <= 1 and body["risk"]["band"] in {b[1] for b in RISK_BANDS}
    assert "not a clinical Lung-RADS" in body["risk"]["note"] and "Not a medical device" in body["disclaimer"]
    assert set(body["modality_weights"]) == {"ct", "report"} and body["location"]["voxel_zyx"]
    assert len(body["heatmaps"]) == 3 and r.headers["x-model-version"] == body["model_version"]
    png = client.get(body["heatmaps"][0], headers={"X-API-Key": "rad"})
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    folder = body["heatmaps"][0].rsplit("/", 1)[0]
    assert body["secondary_capture"] == f"{folder}/secondary-capture.zip"
    sc = client.get(body["secondary_capture"], params={"study_uid": "1.2.826.0.1.3680043.2.1125.1"},
                    headers={"X-API-Key": "rad"})
    assert sc.status_code == 200 and sc.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(sc.content)) as archive:
        first = pydicom.dcmread(io.BytesIO(archive.read(sorted(archive.namelist())[0])))
        assert len(archive.namelist()) == len(body["heatmaps"])
    assert first.StudyInstanceUID == "1.2.826.0.1.3680043.2.1125.1" and first.Modality == "OT"
    assert client.get(f"{folder}/secondary-capture.zip", params={"study_uid": "1.02"},
                      headers={"X-API-Key": "rad"}).status_code == 422
    assert client.get(f"{folder}/secondary-capture.zip", headers={"X-API-Key": "ag"}).status_code == 403
    assert client.get("/v1/heatmaps/" + "0" * 32 + "/secondary-capture.zip", headers={"X-API-Key": "rad"}).status_code == 404
    assert "1.2.826.0.1.3680043.2.1125.1" not in str(client.app.state.store.list_audit("medical"))
    store = client.app.state.store
    assert store.get_result(body["id"])["payload"]["probability"] == body["probability"]
    audit = store.list_audit("medical")[0]
    assert audit["role"] == "radiologist" and audit["model_version"] == body["model_version"]
    assert audit["subject_hash"] and audit["outcome"]["result_id"] == body["id"]
    import hashlib

    from core.serving import subject_hash

    study_key = hashlib.sha256(_ct(toy_studies)).hexdigest()  # a NIfTI has no study UID: its bytes name it
    key = (client.app.state.settings.audit_key_file).read_bytes()
    assert audit["subject_hash"] == subject_hash(study_key, key)  # keyed by the installation's secret
    logged = " ".join(rec.getMessage() + str(rec.__dict__) for rec in caplog.records)
    assert "Jane Roe" not in logged and "pack-years" not in logged  # PHI never logged
    assert "Jane Roe" not in str(store.get_result(body["id"]))


def test_either_modality_may_be_missing(client, toy_studies):
    h = {"X-API-Key": "rad"}
    only_report = client.post("/v1/studies:analyze", data={"report": REPORT}, headers=h).json()
    assert only_report["modality_weights"]["ct"] == 0 and only_report["heatmaps"] == [] and only_report["secondary_capture"] is None
    only_ct = client.post("/v1/studies:analyze", files={"ct": ("s.nii.gz", _ct(toy_studies), "application/gzip")}, headers=h).json()
    assert only_ct["modality_weights"]["report"] == 0 and only_ct["heatmaps"]


def test_bad_inputs_are_4xx_with_what_is_accepted(client):
    h = {"X-API-Key": "rad"}
    r = client.post("/v1/studies:analyze", files={"ct": ("a.png", b"\x89PNG\r\n\x1a\n" + b"0" * 64, "image/png")}, headers=h)
    assert r.status_code == 415 and "nifti" in r.json()["error"]["message"]
    r = client.post("/v1/studies:analyze", files={"ct": ("a.nii", b"hello" * 50, "application/octet-stream")}, headers=h)
    assert r.status_code == 415
    header_only = bytearray(352)
    header_only[0:4] = (348).to_bytes(4, "little")
    header_only[344:348] = b"n+1\x00"
    r = client.post("/v1/studies:analyze", files={"ct": ("a.nii", bytes(header_only), "application/octet-stream")}, headers=h)
    assert 400 <= r.status_code < 500
    assert client.post("/v1/studies:analyze", headers=h).status_code == 422
    assert client.post("/v1/studies:analyze", data={"report": "x" * 20001}, headers=h).status_code == 413


def test_roles_and_artefact_paths(client):
    assert client.post("/v1/studies:analyze", data={"report": REPORT}).status_code == 401
    assert client.post("/v1/studies:analyze", data={"report": REPORT}, headers={"X-API-Key": "ag"}).status_code == 403
    h = {"X-API-Key": "rad"}
    assert client.get("/v1/heatmaps/" + "0" * 32 + "/slice_1.png", headers=h).status_code == 404
    assert client.get("/v1/heatmaps/..%2F..%2Fetc/passwd", headers=h).status_code == 404


def test_risk_bands_partition_probabilities():
    assert risk_band(0.0)["band"] == "low" and risk_band(0.0999)["band"] == "low"
    assert risk_band(0.1)["band"] == "intermediate" and risk_band(0.69)["band"] == "intermediate"
    assert risk_band(0.7)["band"] == "high" and risk_band(1.0)["band"] == "high"


def test_dicom_uploads_go_through_ingestion_checks(client):
    """Real pydicom test files: an MR image is refused as non-CT, a single CT slice as too few slices."""
    from pydicom.data import get_testdata_file

    h = {"X-API-Key": "rad"}
    for name in ("MR_small.dcm", "CT_small.dcm"):
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip(f"pydicom test file {name} not installed")
        r = client.post("/v1/studies:analyze", files={"ct": (name, Path(path).read_bytes(), "application/dicom")}, headers=h)
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"]["message"]


def test_dicom_with_a_tiff_preamble_is_read_as_dicom(client):
    """pydicom's CT_small.dcm / MR_small.dcm carry a TIFF header in their 128-byte preamble (PS3.10
    allows it). They must reach the DICOM checks (named refusals) and a multi-frame CT must be read,
    not be refused as 'looks like tiff'."""
    from pydicom.data import get_testdata_file

    h = {"X-API-Key": "rad"}
    paths = {name: get_testdata_file(name, download=False) for name in ("CT_small.dcm", "MR_small.dcm")}
    if None in paths.values():
        pytest.skip("pydicom test files not installed")
    codes = {}
    for name, path in paths.items():
        r = client.post("/v1/studies:analyze", files={"ct": (name, Path(path).read_bytes(), "application/dicom")}, headers=h)
        codes[name] = r.json()["error"]["code"]
    assert codes == {"CT_small.dcm": "too_few_slices", "MR_small.dcm": "not_ct"}
    ds = pydicom.dcmread(paths["CT_small.dcm"])  # keeps its TIFF preamble when saved
    ds.NumberOfFrames, ds.SpacingBetweenSlices = 10, 2.5
    ds.PixelData = ds.PixelData * 10
    out = io.BytesIO()
    ds.save_as(out)
    assert out.getvalue()[:4] == b"II*\x00"
    r = client.post("/v1/studies:analyze", files={"ct": ("mf.dcm", out.getvalue(), "application/dicom")}, headers=h)
    assert r.status_code == 200, r.text
    tiff = b"II*\x00" + bytes(200)
    r = client.post("/v1/studies:analyze", files={"ct": ("a.tif", tiff, "application/octet-stream")}, headers=h)
    assert r.status_code == 415 and "dicom, nifti, zip" in r.json()["error"]["message"]
    r = client.post("/v1/studies:analyze", files={"ct": ("a.nii", b"", "application/octet-stream")}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["detail"]["accepted"] == ["dicom", "nifti", "zip"]


def test_deflated_dicom_upload_is_refused_without_inflating_it(client):
    """Ingestion refuses deflated DICOM from its meta group, but the upload must not be inflated
    before that either: pydicom inflates the whole dataset in memory (here 100 kB -> 96 MB)."""
    import tracemalloc
    import zlib

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, "1.2.3"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    write_file_meta_info(head, meta)
    size = 96 * 1024 * 1024  # one private OB element of zeros
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(b"\x09\x00\x10\x10OB\x00\x00" + size.to_bytes(4, "little")) + deflate.compress(bytes(size))
    upload = bytes(128) + b"DICM" + head.getvalue() + body + deflate.flush()
    tracemalloc.start()
    try:
        r = client.post("/v1/studies:analyze", files={"ct": ("d.dcm", upload, "application/dicom")},
                        headers={"X-API-Key": "rad"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_transfer_syntax"
    assert peak < 32 * 1024 * 1024, f"{peak / 2**20:.0f} MB allocated for a {len(upload)} byte upload"


def test_secondary_capture_download_is_repeatable(client, toy_studies):
    """The integrator's retry sends the same instances again; new UIDs would file a second series."""
    h = {"X-API-Key": "rad"}
    body = client.post("/v1/studies:analyze", files={"ct": ("s.nii.gz", _ct(toy_studies), "application/gzip")},
                       headers=h).json()
    uids = []
    for _ in range(2):
        sc = client.get(body["secondary_capture"], params={"study_uid": "1.2.826.0.1.3680043.2.1125.1"}, headers=h)
        with zipfile.ZipFile(io.BytesIO(sc.content)) as archive:
            uids.append([pydicom.dcmread(io.BytesIO(archive.read(n))).SOPInstanceUID for n in sorted(archive.namelist())])
    assert uids[0] == uids[1] and len(set(uids[0])) == len(body["heatmaps"])


def test_malformed_dicom_headers_are_4xx_not_500(client, tmp_path, monkeypatch):
    """A series whose Rows holds two values used to reach int() and answer 500; a reader failing in a way
    ingestion does not foresee (here: an unknown VR) is still the upload's fault, a 4xx naming what is accepted."""
    from apps.medical import ingest
    from apps.medical.render.writers import write_dicom_series
    from tests.apps.medical.data.conftest import phantom_volume

    series = write_dicom_series(tmp_path / "ct", phantom_volume(), (2.5, 1.5, 1.5), (-30.0, -30.0, -100.0),
                                patient_id="P1", study_key="s1")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for f in sorted(series.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            ds.Rows = [40, 40]
            out = io.BytesIO()
            ds.save_as(out)
            archive.writestr(f.name, out.getvalue())
    h = {"X-API-Key": "rad"}
    r = client.post("/v1/studies:analyze", files={"ct": ("s.zip", buf.getvalue(), "application/zip")}, headers=h)
    assert r.status_code == 422, r.text
    assert "Rows" in r.json()["error"]["message"]

    def unforeseen(*args, **kwargs):
        raise NotImplementedError("Unknown Value Representation in tag (0028,0010)")

    monkeypatch.setattr(ingest, "ingest_upload", unforeseen)
    r = client.post("/v1/studies:analyze", files={"ct": ("s.zip", buf.getvalue(), "application/zip")}, headers=h)
    assert r.status_code == 422, r.text
    assert "NIfTI" in r.json()["error"]["message"]


def test_ct_uploads_beyond_the_decode_slots_get_a_503(client, toy_studies):
    from core.serving import WorkGate

    upload = {"ct": ("s.nii.gz", _ct(toy_studies), "application/gzip")}
    assert client.post("/v1/studies:analyze", files=upload, headers={"X-API-Key": "rad"}).status_code == 200
    gate = client.app.state.ct_gate
    assert (gate.slots, gate.queue) == (2, 8)  # MedicalSettings' ct_decode_slots / ct_decode_queue
    client.app.state.ct_gate = gate = WorkGate("CT uploads being decoded", slots=1, queue=0)
    held = gate.slot()
    client.portal.call(held.__aenter__)  # another upload is being decoded
    try:
        r = client.post("/v1/studies:analyze", files=upload, headers={"X-API-Key": "rad"})
        assert r.status_code == 503 and r.headers["Retry-After"] == "5" and r.json()["error"]["code"] == "busy"
        # a report alone decodes no CT and is still served
        assert client.post("/v1/studies:analyze", data={"report": REPORT}, headers={"X-API-Key": "rad"}).status_code == 200
    finally:
        client.portal.call(held.__aexit__, None, None, None)
    assert client.post("/v1/studies:analyze", files=upload, headers={"X-API-Key": "rad"}).status_code == 200
