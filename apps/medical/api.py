"""HTTP API of the radiology app (mounted under ``/medical``): routers and schemas only.

- ``POST /v1/studies:analyze``: a CT and/or report -> the analysis, stored before it is returned.
- ``GET /v1/studies/{id}``: a stored analysis (the read is audited); ``GET /v1/studies``: the worklist,
  newest first, summarised (``band=``: one risk band's).
- ``GET /v1/studies/{id}/structured-report.dcm``: the analysis as a DICOM Structured Report (audited).
- ``GET /v1/heatmaps/{artefact_id}/...``: the heat-map PNGs and their DICOM Secondary Capture.
- ``DELETE /v1/studies/{id}`` (admin): erase an analysis and its heat maps (``retention_days`` does it by age).
- ``GET /v1/audit``: the audit trail (admin only).
- ``GET /ui/``: the radiologist's page.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from apps.medical.settings import MedicalSettings, get_settings
from core.serving import (
    ApiError,
    DynamicBatcher,
    Principal,
    ResultStore,
    WorkGate,
    audit_key,
    create_service_app,
    erase_result,
    get_batcher,
    get_request_id,
    get_store,
    plain_text,
    read_upload,
    remove_unstored,
    require_form_body,
    require_role,
    sniff_kind,
    stored_result,
    subject_hash,
)

APP = "medical"
CT_KINDS = {"nifti", "dicom", "zip"}
MAX_REPORT_CHARS = 20_000
Band = Literal["low", "intermediate", "high"]  # service.RISK_BANDS' names (a test keeps them equal)
AuditAction = Literal["studies:analyze", "studies:read", "studies:list", "studies:structured-report",
                      "heatmaps:secondary-capture", "results:erase"]


class RiskBand(BaseModel):
    band: str = Field(description="low / intermediate / high")
    meaning: str
    note: str = Field(description="How the band is defined; it is not a Lung-RADS category")


# The voxel frame every position and heat-map slice refers to: the study re-oriented to RAS, not the
# uploaded file's own index order (a DICOM column index runs the other way along x).
VOXEL_FRAME = ("(z, y, x) voxels of the study re-oriented to RAS (candidate models: at the scan's own spacing; the "
               "whole-volume model: its resized input): z axial slices feet -> head (the heat-map slice number), "
               "y front -> back, x patient's left -> right (heat-map images are mirrored to radiological view: "
               "the patient's right on the image's left)")


POSITION = ("DICOM patient coordinates (x, y, z) in mm, LPS: x towards the patient's left, y towards the back, z "
            "towards the head; what a viewer shows under the cursor, z its Slice Location (null when unknown)")


class Location(BaseModel):
    voxel_zyx: list[int] = Field(description=VOXEL_FRAME)
    relative_zyx: list[float]
    description: str
    position_mm: list[float] | None = Field(None, description=POSITION)
    candidate_diameter_mm: float | None = Field(None, description="Estimated diameter of that candidate (mm); "
                                                                  "candidate models only")


class Finding(BaseModel):
    voxel_zyx: list[int] = Field(description="Candidate centre, " + VOXEL_FRAME)
    position_mm: list[float] | None = Field(None, description="Candidate centre, " + POSITION)
    diameter_mm: float = Field(description="Estimated diameter (mm)")
    influence: float = Field(description="Its share of the decision relative to the most influential candidate (0-1): "
                                         "the drop of the malignancy logit when it is masked out")
    nodule_probability: float | None = Field(None, description="Detector's probability that a nodule is centred here "
                                                               "(uncalibrated; detector models only)")
    malignancy_score: float | None = Field(None, description="Detector's own malignancy score for it (uncalibrated; "
                                                             "the study probability above is the calibrated answer)")


class Inputs(BaseModel):
    """What the study was sent with: without them a missing location cannot tell "no CT" from "a CT with
    no nodule candidate"."""

    ct: bool = Field(description="a CT was analysed")
    report: bool = Field(description="a report was analysed")


class AnalyzeResponse(BaseModel):
    id: str = Field(description="Result id in the result store")
    probability: float = Field(description="Calibrated probability that the nodule is malignant")
    risk: RiskBand
    location: Location | None = Field(None, description="Heat-map peak; None without a CT, and for a CT in which "
                                                        "no nodule candidate was found (inputs.ct tells which)")
    inputs: Inputs = Field(description="What was analysed: a CT, a report, or both")
    findings: list[Finding] = Field(default_factory=list, description="The nodule candidates that moved the decision, "
                                                                      "most influential first (at most 3; candidate models)")
    heatmaps: list[str] = Field(description="URLs of PNG slices with the explanation overlay (Grad-CAM for the whole-volume model; candidate occlusion for the shipped candidate model)")
    heatmap_z_mm: list[float] | None = Field(None, description=(
        "each heat-map slice's z in DICOM patient coordinates (mm; a viewer's Slice Location), in the order of heatmaps"))
    secondary_capture: str | None = Field(None, description="URL of the same slices as DICOM Secondary Capture "
                                          "instances (zip); add ?study_uid=<the CT's Study Instance UID> to file them "
                                          "with the study in a PACS. Downloading again gives the same instance UIDs")
    structured_report: str | None = Field(None, description=(
        "URL of this result as a DICOM Structured Report (Enhanced SR, .dcm): probability, risk band, location, "
        "candidates with their diameters, modality weights, the disclaimer; add ?study_uid=<the CT's Study "
        "Instance UID> to file it with the study. Downloading again gives the same instance UID"))
    source_study_uid: str | None = Field(None, description=(
        "The uploaded DICOM's Study Instance UID, in this answer only (never stored, logged or given back by "
        "GET /v1/studies/{id}): this answer's secondary_capture and structured_report links already carry it, so "
        "their downloads file with the study in a PACS. Null for NIfTI and report-only analyses"))
    modality_weights: dict[str, float] = Field(description="The fusion gate's weights of the joint representation (sum to 1)")
    modality_evidence: dict[str, float] | None = Field(
        None, description="Log-odds each modality added on its own to the calibrated logit (0 when absent; models "
                          "with per-modality evidence, e.g. the shipped one): positive = towards malignant")
    answered_by: Literal["fusion", "ct_only", "report_only"] = Field(
        "fusion", description="The model that answered: fusion (CT and report), or the dedicated CT-only / report-only "
                              "model a study sent with one input gets when the service has one (else fusion, the "
                              "other input absent)")
    model_version: str = Field(description="that model's version")
    model_sha256: str
    disclaimer: str


class StudySummary(BaseModel):
    """One stored analysis in the radiologist's worklist: nothing in it names the patient or the study."""

    id: str
    created_at: str | None = Field(description="when the result was stored (UTC, ISO 8601)")
    probability: float
    band: Band
    ct: bool = Field(description="a CT was analysed")
    report: bool = Field(description="a report was analysed")
    findings: int = Field(description="how many nodule candidates moved the decision")
    model_version: str


class StudyList(BaseModel):
    results: list[StudySummary] = Field(description="stored analyses, newest first")


class AuditRecord(BaseModel):
    id: int
    created_at: str
    action: str
    role: str | None = Field(description="the caller's role (null with API keys off)")
    subject_hash: str | None = Field(description="the study's keyed hash (the same study: the same hash), never its UID")
    model_version: str | None
    outcome: dict[str, Any]
    key_id: str | None = Field(None, description="which API key acted: 12 hex of its sha256, never the key (null with "
                               "API keys off, and in records from before session 25)")


class AuditList(BaseModel):
    records: list[AuditRecord] = Field(description="audit records, newest first")


router = APIRouter(tags=["medical"])

# A download filed with the analysed study in a PACS: the study's UID, which the service never keeps
StudyUid = Annotated[str | None, Query(max_length=64, description=(
    "Study Instance UID of the analysed CT, so a PACS files the download with it; the service does not keep it. "
    "Without it the download forms a study of its own."))]


def _check_study_uid(study_uid: str | None) -> None:
    from apps.medical.secondary_capture import valid_uid

    if study_uid is not None and not valid_uid(study_uid):
        raise ApiError(422, "invalid_study_uid", "study_uid must be a DICOM UID: numbers separated by dots "
                                                 "(no leading zeros), at most 64 characters")


def _response(result_id: str, payload: dict[str, Any], prefix: str) -> AnalyzeResponse:
    """The analyze response of a stored payload: the same answer whether just analysed or read back."""
    fields = {k: v for k, v in payload.items() if k in AnalyzeResponse.model_fields
              and k not in ("id", "structured_report", "inputs")}
    return AnalyzeResponse(id=result_id, structured_report=f"{prefix}/v1/studies/{result_id}/structured-report.dcm",
                           inputs=_inputs(payload), **fields)


def _inputs(payload: dict[str, Any]) -> dict[str, bool]:
    # results stored before the inputs were kept with them: an absent modality has no fusion weight
    return payload.get("inputs") or {m: payload["modality_weights"].get(m, 0) > 0 for m in ("ct", "report")}


def _summary(row: dict[str, Any]) -> StudySummary:
    payload = row["payload"]
    inputs = _inputs(payload)
    return StudySummary(id=row["id"], created_at=row["created_at"], probability=payload["probability"],
                        band=payload["risk"]["band"], ct=inputs["ct"], report=inputs["report"],
                        findings=len(payload.get("findings") or []), model_version=payload["model_version"])


def _runner(request: Request):
    runner = request.app.state.runners.get("fusion")
    if runner is None:
        raise ApiError(503, "not_ready", "the radiology model is still loading; retry shortly", headers={"Retry-After": "2"})
    return runner


@router.post("/v1/studies:analyze", response_model=AnalyzeResponse, summary="CT study + report -> malignancy probability")
async def analyze(
    request: Request,
    batcher: Annotated[DynamicBatcher, Depends(get_batcher("fusion"))],
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("radiologist"))],
    request_id: Annotated[str, Depends(get_request_id)],
    ct: Annotated[UploadFile | None, File(description="CT: NIfTI (.nii/.nii.gz), a DICOM file or a zipped DICOM series")] = None,
    report: Annotated[str | None, Form(description="Report / EMR text (plain text)")] = None,
) -> AnalyzeResponse:
    from apps.medical.service import CTInputError, ReportInputError, StudyInput, volume_from_upload

    settings: MedicalSettings = request.app.state.settings
    require_form_body(request.headers.get("content-type"), "a 'ct' file (NIfTI, a DICOM file or a zipped DICOM "
                      "series) and/or a 'report' text field")
    runner = _runner(request)
    if report is not None:
        if len(report) > MAX_REPORT_CHARS:
            raise ApiError(413, "too_large", f"report text is longer than {MAX_REPORT_CHARS} characters")
        if "\x00" in report:
            raise ApiError(422, "invalid_report", "report must be plain text")
        report = plain_text(report) or None
    if ct is None and report is None:
        raise ApiError(422, "missing_input", "send a CT upload (field 'ct'), report text (field 'report'), or both")
    volume, study_key = None, None
    if ct is not None:
        data = await read_upload(ct, accept=CT_KINDS, max_bytes=settings.max_upload_bytes)
        try:
            async with request.app.state.ct_gate.slot():
                volume, study_key = await asyncio.to_thread(volume_from_upload, data, sniff_kind(data) or "", runner.load_ct)
        except CTInputError as exc:
            raise ApiError(exc.status_code, exc.code, str(exc), {"accepted": sorted(CT_KINDS)}) from None
    try:
        result: dict[str, Any] = await batcher.submit(StudyInput(volume=volume, report=report))
    except ReportInputError as exc:
        raise ApiError(exc.status_code, exc.code, str(exc)) from None
    except CTInputError as exc:
        raise ApiError(422, "invalid_input", str(exc)) from None
    prefix = request.scope.get("root_path", "")
    links = [f"{prefix}/v1/heatmaps/{result['artefact_id']}/{name}" for name in result["heatmaps"]]
    capture = f"{prefix}/v1/heatmaps/{result['artefact_id']}/secondary-capture.zip" if links else None
    subject = subject_hash(study_key or f"report-only:{request_id}", audit_key(settings))
    inputs = {"ct": volume is not None, "report": report is not None}
    # the subject's keyed hash is kept so that reading the result back is audited under the same subject
    payload = {k: v for k, v in result.items() if k not in ("heatmaps",)} | {
        "heatmaps": links, "secondary_capture": capture, "inputs": inputs, "subject_hash": subject}
    record = {"action": "studies:analyze", "subject_hash": subject, "model_version": result["model_version"],
              "key_id": who.key_id, "outcome": {"probability": result["probability"], "band": result["risk"]["band"], **inputs}}
    try:  # the analysis and its audit record commit together
        result_id = await store.asave_result(APP, "study", request_id, payload, role=who.role, audit=record)
    except Exception:
        remove_unstored(request.app.state.artefacts, payload)  # its heat maps
        raise
    answer = _response(result_id, payload, prefix)
    # The study UID goes back to whoever sent it, in this answer only: the download links file with the
    # study (a NIfTI's key is the sha256 of its bytes, no UID)
    from apps.medical.secondary_capture import valid_uid

    if study_key and valid_uid(study_key):
        query = "?" + urlencode({"study_uid": study_key})
        answer.source_study_uid = study_key
        answer.structured_report += query
        if answer.secondary_capture:
            answer.secondary_capture += query
    return answer


@router.get("/v1/studies", response_model=StudyList, summary="Stored analyses, newest first, summarised "
            "(band: one risk band's)")
async def list_studies(
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("radiologist"))],
    limit: Annotated[int, Query(ge=1, le=500, description="at most this many, the newest")] = 50,
    band: Annotated[Band | None, Query(description="only this risk band's analyses")] = None,
) -> StudyList:
    where = {("risk", "band"): band} if band else None
    rows = await store.alist_results(APP, kind="study", limit=limit, payload_equals=where)
    # the worklist shows every listed study's probability: a read of each, audited as one record
    await store.aaudit(APP, "studies:list", who.role, None, None,
                       {"result_ids": [row["id"] for row in rows], "band": band}, key_id=who.key_id)
    return StudyList(results=[_summary(row) for row in rows])


@router.get("/v1/studies/{result_id}", response_model=AnalyzeResponse, summary="A stored analysis (the read is audited)")
async def get_study(
    request: Request,
    result_id: str,
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("radiologist"))],
) -> AnalyzeResponse:
    row = await _stored_study(store, result_id)
    payload = row["payload"]
    # who opened a patient's result belongs in the audit trail as much as who produced it
    await store.aaudit(APP, "studies:read", who.role, payload.get("subject_hash"), payload.get("model_version"),
                       {"result_id": row["id"]}, key_id=who.key_id)
    return _response(row["id"], payload, request.scope.get("root_path", ""))


async def _stored_study(store: ResultStore, result_id: str) -> dict[str, Any]:
    return await stored_result(store, APP, result_id, f"no stored study analysis {result_id!r}; GET /v1/studies lists them",
                               kind="study")


@router.get("/v1/studies/{result_id}/structured-report.dcm",
            summary="A stored analysis as a DICOM Structured Report (Enhanced SR), filed under the given study",
            response_class=Response, responses={200: {"content": {"application/dicom": {}}}})
async def study_structured_report(
    request: Request,
    result_id: str,
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("radiologist"))],
    study_uid: StudyUid = None,
) -> Response:
    from apps.medical.structured_report import structured_report_for

    row = await _stored_study(store, result_id)
    _check_study_uid(study_uid)
    payload = row["payload"]
    result = _response(row["id"], payload, request.scope.get("root_path", "")).model_dump()
    data, _ = await asyncio.to_thread(structured_report_for, result, study_uid, row["id"])
    # the report leaves the service (into a PACS): audited under its analysis' subject; the UID is not kept
    await store.aaudit(APP, "studies:structured-report", who.role, payload.get("subject_hash"), payload.get("model_version"),
                       {"result_id": row["id"], "filed_with_study": study_uid is not None}, key_id=who.key_id)
    return Response(data, media_type="application/dicom",
                    headers={"Content-Disposition": f'attachment; filename="report-{row["id"]}.dcm"'})


@router.delete("/v1/studies/{result_id}", status_code=204,
               summary="Erase a stored analysis and its heat maps (admin; the erasure is audited)")
async def erase_study(
    request: Request,
    result_id: str,
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("admin"))],
) -> Response:
    row = await _stored_study(store, result_id)
    await asyncio.to_thread(erase_result, store, APP, row, request.app.state.artefacts, reason="request", role=who.role,
                            key_id=who.key_id)
    return Response(status_code=204)


@router.get("/v1/audit", response_model=AuditList, summary="The audit trail, newest first (admin only)")
async def list_audit(
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("admin"))],
    limit: Annotated[int, Query(ge=1, le=500, description="at most this many, the newest")] = 100,
    action: Annotated[AuditAction | None, Query(description="only this action's records")] = None,
) -> AuditList:
    records = await store.alist_audit(APP, limit=limit, action=action)
    return AuditList(records=[AuditRecord(**{k: v for k, v in r.items() if k != "app"}) for r in records])


# artefact ids known to be stored studies': a page's slices cost one lookup (nothing indexes a payload's
# artefact_id). Safe to remember: an erasure removes the files first, so an erased study's slices are 404 anyway.
STORED_HEATMAPS_KEPT = 4096


async def _study_of_heatmaps(store: ResultStore, artefact_id: str) -> dict[str, Any]:
    """The stored study whose heat maps ``artefact_id`` names, else a 404: heat maps of no stored study
    (erased, or never stored: its process died first) do not leave the service, as PNGs or as DICOM."""
    rows = await store.alist_results(APP, kind="study", limit=1, payload_equals={"artefact_id": artefact_id})
    if not rows:
        raise ApiError(404, "not_found", "no stored study has these heat-map images")
    return rows[0]


@router.get("/v1/heatmaps/{artefact_id}/secondary-capture.zip",
            summary="The heat-map slices as DICOM Secondary Capture instances (zip), filed under the given study",
            response_class=Response, responses={200: {"content": {"application/zip": {}}}})
async def heatmap_secondary_capture(
    request: Request,
    artefact_id: str,
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("radiologist"))],
    study_uid: StudyUid = None,
) -> Response:
    from apps.medical.secondary_capture import heatmaps_to_secondary_capture_zip

    runner = _runner(request)
    slices = runner.artefact_slices(artefact_id)
    if not slices:
        raise ApiError(404, "not_found", "no heat-map images for this id")
    _check_study_uid(study_uid)
    row = await _study_of_heatmaps(store, artefact_id)
    payload = row["payload"]
    version = payload.get("model_version") or runner.version  # the model that drew these heat maps
    data, _ = await asyncio.to_thread(heatmaps_to_secondary_capture_zip, slices, study_uid, version, artefact_id)
    # the archive leaves the service (into a PACS): audited under its analysis' subject; the UID is not kept
    await store.aaudit(APP, "heatmaps:secondary-capture", who.role, payload.get("subject_hash"), version,
                       {"result_id": row["id"], "instances": len(slices),
                        "filed_with_study": study_uid is not None}, key_id=who.key_id)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="heatmaps-{artefact_id}.zip"'})


@router.get("/v1/heatmaps/{artefact_id}/{name}", summary="A heat-map slice PNG", response_class=FileResponse)
async def heatmap(
    request: Request,
    artefact_id: str,
    name: str,
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("radiologist"))],
) -> FileResponse:
    path = _runner(request).artefact_path(artefact_id, name)
    if path is None:
        raise ApiError(404, "not_found", "no such heat-map image")
    known: OrderedDict[str, None] = request.app.state.stored_heatmaps
    if artefact_id in known:
        known.move_to_end(artefact_id)
    else:  # as the Secondary Capture: only a stored study's
        await _study_of_heatmaps(store, artefact_id)
        known[artefact_id] = None
        while len(known) > STORED_HEATMAPS_KEPT:
            known.popitem(last=False)
    return FileResponse(path, media_type="image/png")


def create_app(settings: MedicalSettings | None = None):
    from pathlib import Path

    from apps.medical.ingest import withhold_header_values_from_logs

    settings = settings or get_settings()
    withhold_header_values_from_logs()

    from apps.medical.service import study_artefact_folder

    # what a stored analysis owns on disk, erased with it; folders no stored analysis names are swept
    artefacts = study_artefact_folder(settings.artefact_dir)

    def load_runners():
        from apps.medical.service import MedicalRunner

        return {"fusion": MedicalRunner(settings.bundle_dir, settings.artefact_dir, settings.bert_path,
                                        settings.heatmap_slices, settings.torch_threads, settings.min_lung_ml,
                                        settings.ct_only_bundle_dir, settings.report_only_bundle_dir)}

    app = create_service_app(
        name="medical",
        settings=settings,
        routers=[router],
        page=Path(__file__).parent / "web",  # GET /ui/: the page for radiologists
        load_runners=load_runners,
        artefacts=artefacts,
        description="Chest CT + report -> calibrated malignancy probability, heat maps, modality weights. "
        "Research prototype, not a medical device.",
    )
    app.state.stored_heatmaps = OrderedDict()  # artefact ids of stored studies, newest use last
    app.state.ct_gate = WorkGate("CT uploads being decoded", settings.ct_decode_slots, settings.ct_decode_queue)
    return app
