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
                               artefact_dir=tmp_path / "art", api_keys={"rad": "radiologist", "ag": "agent", "adm": "admin"},
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


# ---- reading stored studies back, the worklist, the audit trail -------------------------------------

RAD, ADMIN = {"X-API-Key": "rad"}, {"X-API-Key": "adm"}


def _analysed(client, toy_studies=None, report=REPORT) -> dict:
    files = {"ct": ("s.nii.gz", _ct(toy_studies), "application/gzip")} if toy_studies else None
    r = client.post("/v1/studies:analyze", files=files, data={"report": report} if report else None, headers=RAD)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_stored_study_reads_back_as_analysed_and_the_read_is_audited(client, toy_studies):
    store = client.app.state.store
    for studies in (toy_studies, None):  # with a CT; a report alone
        body = _analysed(client, studies)
        r = client.get(f"/v1/studies/{body['id']}", headers=RAD)
        assert r.status_code == 200, r.text
        assert r.json() == body
        analysed = store.list_audit("medical", action="studies:analyze")[0]
        read = store.list_audit("medical", action="studies:read")[0]
        assert analysed["outcome"]["result_id"] == read["outcome"]["result_id"] == body["id"]
        assert read["role"] == "radiologist" and read["model_version"] == body["model_version"]
        assert read["subject_hash"] and read["subject_hash"] == analysed["subject_hash"]  # the same study
    assert len(store.list_audit("medical", action="studies:read")) == 2
    assert client.get(f"/v1/studies/{body['id']}", headers={"X-API-Key": "ag"}).status_code == 403


def test_unknown_ids_and_other_apps_results_are_404(client):
    store = client.app.state.store
    inspection = store.save_result("industrial", "inspect", "r1", {"decision": "pass"})
    other_kind = store.save_result("medical", "something-else", "r2", {"probability": 0.5})
    for result_id in ("0" * 32, inspection, other_kind, "not-an-id"):
        r = client.get(f"/v1/studies/{result_id}", headers=RAD)
        assert r.status_code == 404, (result_id, r.text)
        assert r.json()["error"]["code"] == "not_found" and result_id in r.json()["error"]["message"]
    assert store.list_audit("medical", action="studies:read") == []  # nothing was read
    assert client.get("/v1/studies/" + "0" * 32).status_code == 401


def test_worklist_is_newest_first_limited_and_filtered_by_band_before_the_limit(client, toy_studies):
    from apps.medical.api import Band
    from apps.medical.service import RISK_BANDS

    assert set(Band.__args__) == {name for _, name, _ in RISK_BANDS}  # the query's choices are the bands made
    store = client.app.state.store
    with_ct, report_only = _analysed(client, toy_studies), _analysed(client)
    # the tiny model puts every study in one band: store one of each band so that the filter has work to do
    made = {with_ct["id"]: with_ct["risk"]["band"], report_only["id"]: report_only["risk"]["band"]}
    for band in ("low", "intermediate", "high"):
        payload = store.get_result(report_only["id"])["payload"]
        made[store.save_result("medical", "study", None, {**payload, "risk": {**payload["risk"], "band": band}})] = band
    store.save_result("industrial", "inspect", None, {"risk": {"band": "low"}})  # not a study
    newest_first = list(made)[::-1]

    rows = client.get("/v1/studies", headers=RAD).json()["results"]
    assert [row["id"] for row in rows] == newest_first
    assert [row["id"] for row in client.get("/v1/studies", params={"limit": 2}, headers=RAD).json()["results"]] == newest_first[:2]
    summary = {row["id"]: row for row in rows}
    assert summary[with_ct["id"]] | {"created_at": None} == {
        "id": with_ct["id"], "created_at": None, "probability": with_ct["probability"], "band": with_ct["risk"]["band"],
        "ct": True, "report": True, "findings": len(with_ct["findings"]), "model_version": with_ct["model_version"]}
    assert summary[report_only["id"]]["ct"] is False and summary[report_only["id"]]["report"] is True
    assert summary[with_ct["id"]]["created_at"] == store.get_result(with_ct["id"])["created_at"]
    for band in ("low", "intermediate", "high"):
        expected = [i for i in newest_first if made[i] == band]
        got = client.get("/v1/studies", params={"band": band}, headers=RAD).json()["results"]
        assert [row["id"] for row in got] == expected and {row["band"] for row in got} == {band}
        # the newest of the band even when newer studies of other bands exist: filtered before the limit
        got = client.get("/v1/studies", params={"band": band, "limit": 1}, headers=RAD).json()["results"]
        assert [row["id"] for row in got] == expected[:1]
    assert "studies:read" not in {a["action"] for a in store.list_audit("medical")}  # a summary names no study


def test_worklist_refuses_unknown_bands_and_limits_with_what_is_accepted(client):
    r = client.get("/v1/studies", params={"band": "medium"}, headers=RAD)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "band" in message and all(f"'{b}'" in message for b in ("low", "intermediate", "high"))
    for limit in (0, 501):
        assert client.get("/v1/studies", params={"limit": limit}, headers=RAD).status_code == 422
    assert client.get("/v1/studies", headers={"X-API-Key": "ag"}).status_code == 403
    assert client.get("/v1/studies").status_code == 401


def test_audit_trail_is_for_admins_newest_first_and_filtered_by_action(client, toy_studies):
    body = _analysed(client, toy_studies)
    client.get(f"/v1/studies/{body['id']}", headers=RAD)
    for url in body["heatmaps"]:  # heat-map PNGs are not audited one by one
        assert client.get(url, headers=RAD).status_code == 200
    assert client.get(body["secondary_capture"], params={"study_uid": "1.2.826.0.1.3680043.2.1125.1"},
                      headers=RAD).status_code == 200
    assert client.get("/v1/audit", headers=RAD).status_code == 403  # admin passes every check; not the other way
    assert client.get("/v1/audit", headers={"X-API-Key": "ag"}).status_code == 403
    assert client.get("/v1/audit").status_code == 401
    r = client.get("/v1/audit", headers=ADMIN)
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert [a["action"] for a in records] == ["heatmaps:secondary-capture", "studies:read", "studies:analyze"]
    assert [a["id"] for a in records] == sorted((a["id"] for a in records), reverse=True)
    capture, _, analysed = records
    assert capture["role"] == "radiologist" and capture["subject_hash"] == analysed["subject_hash"]
    assert capture["outcome"] == {"result_id": body["id"], "instances": len(body["heatmaps"]), "filed_with_study": True}
    assert "1.2.826.0.1.3680043.2.1125.1" not in r.text  # the UID the archive was filed under is not kept
    only = client.get("/v1/audit", params={"action": "studies:read", "limit": 5}, headers=ADMIN).json()["records"]
    assert [a["action"] for a in only] == ["studies:read"]
    assert client.get("/v1/audit", params={"limit": 1}, headers=ADMIN).json()["records"] == records[:1]
    r = client.get("/v1/audit", params={"action": "delete"}, headers=ADMIN)
    assert r.status_code == 422 and "'studies:read'" in r.json()["error"]["message"]


def test_no_phi_in_stored_results_audit_records_or_logs(client, tmp_path, caplog):
    """A DICOM series whose headers name the patient, with a report that names them too: neither the
    name, the patient ID nor the study UID is stored, audited, logged or listed; the subject is its keyed hash."""
    from apps.medical.render.writers import write_dicom_series
    from core.serving import audit_key, subject_hash
    from tests.apps.medical.data.conftest import phantom_volume

    caplog.set_level(logging.DEBUG)
    series = write_dicom_series(tmp_path / "ct", phantom_volume(), (2.5, 1.5, 1.5), (-30.0, -30.0, -100.0),
                                patient_id="MRN-4471902", study_key="phi-study")
    buf, study_uid = io.BytesIO(), None
    with zipfile.ZipFile(buf, "w") as archive:
        for f in sorted(series.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            ds.PatientName, study_uid = "ROE^JANE", ds.StudyInstanceUID
            out = io.BytesIO()
            ds.save_as(out)
            archive.writestr(f.name, out.getvalue())
    r = client.post("/v1/studies:analyze", files={"ct": ("s.zip", buf.getvalue(), "application/zip")},
                    data={"report": REPORT}, headers=RAD)
    assert r.status_code == 200, r.text
    body = r.json()
    # the UID comes back to its sender, in this answer only, already in the download links
    assert body["source_study_uid"] == study_uid and body["structured_report"].endswith(f"?study_uid={study_uid}")
    sc = client.get(body["secondary_capture"], headers=RAD)
    with zipfile.ZipFile(io.BytesIO(sc.content)) as archive:  # filed with its study with no UID typed in
        assert pydicom.dcmread(io.BytesIO(archive.read(archive.namelist()[0]))).StudyInstanceUID == study_uid
    read_back = client.get(f"/v1/studies/{body['id']}", headers=RAD)
    assert read_back.status_code == 200 and read_back.json()["source_study_uid"] is None
    listed = client.get("/v1/studies", headers=RAD).text + read_back.text
    audit = client.get("/v1/audit", headers=ADMIN).json()["records"]
    store = client.app.state.store
    with store.engine.connect() as connection:  # every column of every row, not only what the API shows
        from sqlalchemy import text

        everything = str(connection.execute(text("SELECT * FROM results")).all()) + str(
            connection.execute(text("SELECT * FROM audit")).all())
    # the service's logs, not the test client's (httpx logs each URL it requests, query string included)
    logged = " ".join(rec.getMessage() + str(rec.__dict__) for rec in caplog.records if not rec.name.startswith("httpx"))
    assert "triptych.serving" in {rec.name for rec in caplog.records}
    for phi in ("Jane Roe", "ROE^JANE", "MRN-4471902", study_uid, "pack-years"):
        for where, haystack in (("database", everything), ("logs", logged), ("responses", listed)):
            assert phi not in haystack, (phi, where)
    expected = subject_hash(study_uid, audit_key(client.app.state.settings))
    per_study = [a for a in audit if a["action"] != "studies:list"]  # the worklist's record names result ids only
    assert {a["subject_hash"] for a in per_study} == {expected}  # analyse, archive, read: one study
    assert len(per_study) == 3 and len(audit) == 4


def _series_zip(tmp_path, **headers) -> bytes:
    """A small CT series (zipped) with the given header values written into every slice, valid or not."""
    from pydicom import config

    from apps.medical.render.writers import write_dicom_series
    from tests.apps.medical.data.conftest import phantom_volume

    series = write_dicom_series(tmp_path / "ct", phantom_volume(), (2.5, 1.5, 1.5), (-30.0, -30.0, -100.0),
                                patient_id="MRN-4471902", study_key="phi-study")
    buf = io.BytesIO()
    validation = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with zipfile.ZipFile(buf, "w") as archive:
            for f in sorted(series.glob("*.dcm")):
                ds = pydicom.dcmread(f)
                for name, value in headers.items():
                    setattr(ds, name, value)
                out = io.BytesIO()
                ds.save_as(out)
                archive.writestr(f.name, out.getvalue())
    finally:
        config.settings.writing_validation_mode = validation
    return buf.getvalue()


def test_a_malformed_header_value_is_not_quoted_in_logs_or_warnings(client, tmp_path, caplog, recwarn):
    """pydicom quotes an invalid value ("Invalid value for VR UI: '...'") in a log line and a warning."""
    caplog.set_level(logging.DEBUG)
    uid = "1.2.826.ROE.JANE.19450101"
    r = client.post("/v1/studies:analyze", files={"ct": ("s.zip", _series_zip(tmp_path, StudyInstanceUID=uid),
                                                         "application/zip")}, headers=RAD)
    assert r.status_code == 200, r.text
    logged = " ".join(rec.getMessage() for rec in caplog.records if not rec.name.startswith("httpx"))
    assert uid not in logged and not any(uid in str(w.message) for w in recwarn)


def test_a_modality_that_is_not_a_dicom_term_is_not_repeated_in_the_answer(client, tmp_path):
    for modality, shown in (("ROE^JANE", "not a DICOM modality term"), ("MR", "MR")):
        r = client.post("/v1/studies:analyze", files={"ct": ("s.zip", _series_zip(tmp_path / modality[:2], Modality=modality),
                                                             "application/zip")}, headers=RAD)
        assert r.status_code == 422 and r.json()["error"]["code"] == "not_ct"
        assert "ROE" not in r.text and f"modality is {shown}" in r.json()["error"]["message"]


def test_a_body_that_is_not_a_form_is_415_saying_what_to_send(client, toy_studies):
    for kwargs in ({"json": {"report": "x"}}, {"content": _ct(toy_studies), "headers": {"content-type": "application/gzip"}}):
        headers = {**RAD, **kwargs.pop("headers", {})}
        r = client.post("/v1/studies:analyze", headers=headers, **kwargs)
        assert r.status_code == 415, r.text
        assert "multipart/form-data" in r.json()["error"]["message"] and "'ct'" in r.json()["error"]["message"]


def test_a_stored_study_downloads_as_a_structured_report_filed_with_its_study(client, toy_studies, dicom_errors):
    body = _analysed(client, toy_studies)
    assert body["structured_report"] == f"/v1/studies/{body['id']}/structured-report.dcm"  # a NIfTI: no UID to file under
    assert body["source_study_uid"] is None
    assert client.get(f"/v1/studies/{body['id']}", headers=RAD).json()["structured_report"] == body["structured_report"]
    study_uid = "1.2.826.0.1.3680043.2.1125.7"
    r = client.get(body["structured_report"], params={"study_uid": study_uid}, headers=RAD)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom" and f"report-{body['id']}.dcm" in r.headers["content-disposition"]
    ds = pydicom.dcmread(io.BytesIO(r.content))
    assert ds.StudyInstanceUID == study_uid and ds.Modality == "SR" and ds.PatientName == ""
    probability = next(i for i in ds.ContentSequence if i.ValueType == "CONTAINER").ContentSequence[0]
    assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(100 * body["probability"], abs=0.05)
    assert "Jane Roe" not in r.content.decode("latin-1")  # the report's patient is not in it
    assert dicom_errors(r.content) == []
    again = pydicom.dcmread(io.BytesIO(client.get(body["structured_report"], params={"study_uid": study_uid},
                                                  headers=RAD).content))
    assert again.SOPInstanceUID == ds.SOPInstanceUID  # a PACS replaces it rather than filing it twice
    store = client.app.state.store
    audited = store.list_audit("medical", action="studies:structured-report")
    assert len(audited) == 2 and audited[0]["outcome"] == {"result_id": body["id"], "filed_with_study": True}
    assert audited[0]["subject_hash"] == store.list_audit("medical", action="studies:analyze")[0]["subject_hash"]
    assert study_uid not in str(store.list_audit("medical"))  # the UID it was filed under is not kept
    assert client.get(body["structured_report"], params={"study_uid": "1.02"}, headers=RAD).status_code == 422
    assert client.get(body["structured_report"], headers={"X-API-Key": "ag"}).status_code == 403
    assert client.get("/v1/studies/" + "0" * 32 + "/structured-report.dcm", headers=RAD).status_code == 404


def test_an_admin_erases_a_stored_study_with_its_heat_maps_and_the_erasure_is_audited(client, toy_studies):
    body = _analysed(client, toy_studies)
    folder = client.app.state.settings.artefact_dir / "medical" / body["heatmaps"][0].split("/")[3]
    assert folder.is_dir()
    assert client.delete(f"/v1/studies/{body['id']}", headers=RAD).status_code == 403  # admins only
    assert client.delete(f"/v1/studies/{body['id']}", headers=ADMIN).status_code == 204
    assert client.get(f"/v1/studies/{body['id']}", headers=RAD).status_code == 404
    assert client.get(body["heatmaps"][0], headers=RAD).status_code == 404 and not folder.exists()
    assert body["id"] not in {s["id"] for s in client.get("/v1/studies", headers=RAD).json()["results"]}
    records = client.get("/v1/audit", params={"action": "results:erase"}, headers=ADMIN).json()["records"]
    analysed = client.get("/v1/audit", params={"action": "studies:analyze"}, headers=ADMIN).json()["records"][0]
    assert records[0]["role"] == "admin" and records[0]["subject_hash"] == analysed["subject_hash"]
    assert records[0]["outcome"] == {"result_id": body["id"], "kind": "study", "reason": "request", "files": 1}
    assert client.delete(f"/v1/studies/{body['id']}", headers=ADMIN).status_code == 404


@pytest.mark.slow
def test_a_thin_report_alone_is_refused_with_what_it_lacks(tmp_path):
    """The shipped report-only model read "66-year-old woman." alone as 0.90: a number that looks like a reading."""
    settings = MedicalSettings(database_url=f"sqlite:///{tmp_path}/t.db", artefact_dir=tmp_path / "art",
                               audit_key_file=tmp_path / "audit.key")
    if settings.report_only_bundle_dir is None:
        pytest.skip("no shipped report-only bundle in this checkout")
    with TestClient(create_app(settings)) as c:
        for _ in range(600):
            if c.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        r = c.post("/v1/studies:analyze", data={"report": "CLINICAL HISTORY: 66-year-old woman."})
        assert r.status_code == 422 and r.json()["error"]["code"] == "insufficient_history", r.text
        assert "smoking status" in r.json()["error"]["message"] and "Send the CT" in r.json()["error"]["message"]
        whole = "CLINICAL HISTORY: 66-year-old woman, former smoker, 30 pack-years. FINDINGS: A nodule in the left lower lobe."
        r = c.post("/v1/studies:analyze", data={"report": whole})
        assert r.status_code == 200 and r.json()["answered_by"] == "report_only", r.text
        assert c.app.state.store.list_audit("medical", action="studies:analyze")  # only the answered one
        assert len(c.app.state.store.list_audit("medical", action="studies:analyze")) == 1


def test_an_analysis_the_database_cannot_take_is_a_503_and_leaves_no_heat_maps(client, toy_studies, monkeypatch):
    """Its heat maps used to stay on disk, served and beyond any erasure, and its audit record was a second
    commit that could fail after the study was stored."""
    from sqlalchemy.exc import OperationalError

    store = client.app.state.store
    heatmaps = client.app.state.settings.artefact_dir

    def full(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("database or disk is full"))

    monkeypatch.setattr(store, "save_results", full)
    r = client.post("/v1/studies:analyze", files={"ct": ("s.nii.gz", _ct(toy_studies), "application/gzip")},
                    data={"report": REPORT}, headers=RAD)
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
    assert not [p for p in heatmaps.rglob("*.png")]
    monkeypatch.undo()
    assert store.list_results("medical") == [] and store.list_audit("medical") == []
    assert _analysed(client, toy_studies)["heatmaps"] and [p for p in heatmaps.rglob("*.png")]  # stored: they stay


def test_heat_maps_of_no_stored_study_do_not_leave_as_dicom_and_the_worklist_is_audited(client, toy_studies):
    body = _analysed(client, toy_studies)
    client.app.state.store.delete_result(body["id"])  # as if its row were gone and its files not (a crash)
    assert client.get(body["secondary_capture"], headers=RAD).status_code == 404
    other = _analysed(client, toy_studies)
    listed = client.get("/v1/studies", params={"band": other["risk"]["band"]}, headers=RAD).json()["results"]
    record = client.app.state.store.list_audit("medical", action="studies:list")[0]
    assert record["outcome"] == {"result_ids": [s["id"] for s in listed], "band": other["risk"]["band"]}
    assert record["role"] == "radiologist" and other["id"] in record["outcome"]["result_ids"]


def test_audit_records_tell_two_radiologists_apart(tiny_bundle, tiny_bert_dir, tmp_path):
    settings = MedicalSettings(bundle_dir=tiny_bundle[0], bert_path=str(tiny_bert_dir), database_url=f"sqlite:///{tmp_path}/t.db",
                               artefact_dir=tmp_path / "art", api_keys={"rad-1": "radiologist", "rad-2": "radiologist",
                                                                        "adm": "admin"}, audit_key_file=tmp_path / "audit.key")
    with TestClient(create_app(settings)) as c:
        for _ in range(200):
            if c.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        body = c.post("/v1/studies:analyze", data={"report": REPORT}, headers={"X-API-Key": "rad-1"}).json()
        c.get(f"/v1/studies/{body['id']}", headers={"X-API-Key": "rad-2"})
        records = c.get("/v1/audit", headers=ADMIN).json()["records"]
    read, analysed = records
    assert read["role"] == analysed["role"] == "radiologist"
    assert read["key_id"] and analysed["key_id"] and read["key_id"] != analysed["key_id"]
    assert "rad-1" not in str(records) and "rad-2" not in str(records)


def test_heat_map_pngs_of_no_stored_study_are_not_served_and_their_folder_is_swept(client, toy_studies):
    """A process that died between drawing a study's heat maps and storing its row left them on disk, served
    as PNGs (the Secondary Capture of the same folder was refused) and beyond retention and erasure."""
    import os

    from core.serving.retention import sweep_orphans

    gone, kept = _analysed(client, toy_studies), _analysed(client, toy_studies)
    store = client.app.state.store
    store.delete_result(gone["id"])  # as if its row had never been stored
    r = client.get(gone["heatmaps"][0], headers=RAD)
    assert r.status_code == 404 and r.json()["error"]["message"] == "no stored study has these heat-map images"
    assert client.get(gone["heatmaps"][0], headers={"X-API-Key": "ag"}).status_code == 403  # radiologists' as before
    assert client.get(kept["heatmaps"][0], headers=RAD).status_code == 200
    root = client.app.state.settings.artefact_dir / "medical"
    folders = {body["id"]: root / body["heatmaps"][0].split("/")[3] for body in (gone, kept)}
    assert sweep_orphans(store, "medical", client.app.state.artefacts) == 0  # within the grace period: kept
    for folder in folders.values():
        for path in [*folder.iterdir(), folder]:
            os.utime(path, (time.time() - 7200,) * 2)
    assert sweep_orphans(store, "medical", client.app.state.artefacts) == 1
    assert not folders[gone["id"]].exists() and folders[kept["id"]].is_dir()
    assert client.get(kept["heatmaps"][0], headers=RAD).status_code == 200


def test_a_served_heat_map_is_refused_once_its_study_is_erased(client, toy_studies):
    """The PNG route remembers which studies are stored (one lookup per page of slices); an erasure must
    still end the serving of an image the route has already answered."""
    body = _analysed(client, toy_studies)
    assert all(client.get(link, headers=RAD).status_code == 200 for link in body["heatmaps"] * 2)
    assert client.delete(f"/v1/studies/{body['id']}", headers=ADMIN).status_code == 204
    assert all(client.get(link, headers=RAD).status_code == 404 for link in body["heatmaps"])
