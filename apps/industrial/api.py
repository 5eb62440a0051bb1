"""Factory QC API: ``POST /v1/inspect`` (one board) and ``POST /v1/inspect/batch`` (many boards); the stored
results through ``GET /v1/inspections`` (newest first; one board's, one decision's), ``GET /v1/inspections/{id}``
and ``GET /v1/inspections:summary`` (a period in numbers: decisions, pass rate, defect Pareto, machine states);
``GET /v1/inspections.csv`` gives the same period one row per board;
``DELETE /v1/inspections/{id}`` (admin) erases one (``retention_days`` does it by age).

Mounted under the gateway's ``/industrial``. Inputs are checked (a multipart form, type, magic bytes, size,
decodable content, sample rate, finite samples) before queuing; a call waits for the model as long as its
boards' pixels need (``inspection_timeout_s``); results are stored before they are returned.
A batch call checks every board's input before any is queued (one bad file refuses the call, naming the
board); a board the model then fails on (a full queue, a timeout) is reported in ``errors`` beside the
stored results of the others, so a line resends only that board.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from apps.industrial.settings import IndustrialSettings, get_settings
from core.serving import (
    SUMMARY_MAX_ROWS,
    ApiError,
    DynamicBatcher,
    Principal,
    ResultStore,
    create_service_app,
    csv_export,
    erase_result,
    form_body_required,
    get_batcher,
    get_period,
    get_request_id,
    get_store,
    period_rows,
    read_upload,
    require_role,
    stored_result,
)

log = logging.getLogger("triptych.industrial")
APP = "industrial"

IMAGE_KINDS = {"png", "jpeg", "bmp", "tiff"}
VIBRATION_KINDS = {"csv", "npy", "wav"}

router = APIRouter(prefix="/v1", tags=["inspection"])


class Defect(BaseModel):
    class_: str = Field(alias="class")
    confidence: float
    box_px: list[float]
    size_mm: float
    template_difference: float | None = None
    refuted_by_template: bool | None = None
    below_min_size: bool | None = Field(None, description=(
        "smaller than the line's acceptable size for its class (settings min_defect_mm / min_defect_mm_by_class): "
        "listed, but it does not fail the board"))

    model_config = {"populate_by_name": True}


class MachineState(BaseModel):
    label: str
    probabilities: dict[str, float]


class Inspection(BaseModel):
    id: str
    defects: list[Defect]
    machine_state: MachineState | None
    decision: str = Field(description="pass / fail / review")
    defect_probability: float | None = Field(description=(
        "P(board defective) under the decision rule: the Bayesian or learned fusion's posterior; under the image "
        "rule (or without a fusion bundle) 1.0 or 0.0 from the image's threshold; null for a board with vibration "
        "only under the image rule"))
    modality_weights: dict[str, float]
    template_refuted: int
    detector_input: str | None = Field(None, description="image+template (template-aware detector) or image; null without image")
    model_version: str
    timings_ms: dict[str, float]
    board: int | None = Field(None, description="batch calls: the board's index in the call (images[i])")
    board_id: str | None = Field(None, description="the board's serial or traceability code, as sent")
    created_at: str | None = Field(None, description="when the result was stored (UTC, ISO 8601); set when read back")


class BoardError(BaseModel):
    board: int = Field(description="the board's index in the call (images[i])")
    code: str
    message: str


class BatchInspection(BaseModel):
    results: list[Inspection] = Field(description="the boards inspected (and stored), in the order sent")
    errors: list[BoardError] = Field(default_factory=list, description=(
        "boards the model could not inspect (e.g. its queue was full): nothing was stored for them; send them again"))


class InspectionList(BaseModel):
    results: list[Inspection] = Field(description="stored inspections, newest first")


class DefectClassCount(BaseModel):
    class_: str = Field(alias="class")
    defects: int = Field(description="defects of this class (those the board's template refuted left out)")
    boards: int = Field(description="boards with at least one")
    cumulative_share: float = Field(description="share of all defects in this class and the more frequent ones (the Pareto line)")

    model_config = {"populate_by_name": True}


class InspectionSummary(BaseModel):
    since: str = Field(description="start of the period (UTC, ISO 8601), included")
    until: str = Field(description="end of the period (UTC, ISO 8601), excluded")
    inspections: int = Field(description="stored inspections in the period (single and batch calls)")
    boards_imaged: int = Field(description="those with a board image (the rest: vibration only)")
    decisions: dict[str, int] = Field(description="inspections per decision: pass / fail / review")
    pass_rate: float | None = Field(description="share of inspections decided pass (a board inspected twice counts twice); null without any")
    defect_classes: list[DefectClassCount] = Field(description="defect classes, most frequent first (a Pareto chart's bars)")
    refuted_by_template: int = Field(description="detections the board's template refuted (listed on each board, counted nowhere else)")
    machine_states: dict[str, int] = Field(description="inspections per machine state (those with vibration), most frequent first")
    complete: bool = Field(description=f"false when the period holds more than {SUMMARY_MAX_ROWS:,} inspections: "
                                       "the summary then covers the newest of them only")


# A board's serial as lines print them (letters, digits, - _ . / : # and spaces): stored and shown,
# so nothing that could be markup, a control character or a whole document.
BOARD_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:/#-]{0,63}")


def _refuse(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


def _check_sample_rate(sample_rate: float | None) -> None:
    # once per call, before any file is read: also without a vibration file (a line's misconfigured rate shows
    # at once), and with a batch's rate named once rather than as board 0's fault
    from apps.industrial.service import check_sample_rate

    try:
        check_sample_rate(sample_rate)
    except ValueError as exc:
        raise _refuse("invalid_input", str(exc)) from None


def inspection_timeout_s(settings: IndustrialSettings, items: list) -> float:
    """How long boards may wait for the model: the short-request timeout plus the work they bring, per board and
    per megapixel of image and template (a 4096 px board with its template takes ten times a 640 px one's and
    more). A batch call's boards share model calls, so each of them waits for the work of all."""
    megapixels = sum(a.size for item in items for a in (item.image, item.template) if a is not None) / 1e6
    return settings.request_timeout_s + settings.seconds_per_board * len(items) + settings.seconds_per_megapixel * megapixels


def _board_id(value: str | None, label: str = "") -> str | None:
    if value is None or value == "":
        return None
    if not BOARD_ID_PATTERN.fullmatch(value):
        raise _refuse("invalid_board_id", f"{label}board_id must be 1-64 characters: letters, digits, spaces and - _ . / : #, "
                                          "starting with a letter or digit")
    return value


async def _decode_board(
    settings: IndustrialSettings,
    image: UploadFile | None,
    template: UploadFile | None,
    vibration: UploadFile | None,
    sample_rate: float | None,
    label: str = "",
):
    from apps.industrial.service import InspectionItem, decode_image, decode_vibration, vibration_windows

    start = time.perf_counter()
    gray = tmpl = windows = None
    if image is None and vibration is None:
        raise _refuse("missing_input", f"{label}send an image (PNG/JPEG/BMP/TIFF), a vibration file (CSV/NPY/WAV), or both")
    # decoding runs in a worker thread: a 50 MB CSV takes seconds to parse, and on the event loop it
    # would stall every request of every app behind the gateway meanwhile
    try:
        if image is not None:
            data = await read_upload(image, accept=IMAGE_KINDS, max_bytes=settings.max_upload_bytes)
            gray = await asyncio.to_thread(decode_image, data, settings.min_image_side, settings.max_image_side)
        if template is not None:
            if gray is None:
                raise ValueError("a template needs the tested image too")
            data = await read_upload(template, accept=IMAGE_KINDS, max_bytes=settings.max_upload_bytes)
            tmpl = await asyncio.to_thread(decode_image, data, settings.min_image_side, settings.max_image_side)
            if tmpl.shape != gray.shape:
                raise ValueError(f"template is {tmpl.shape[1]}x{tmpl.shape[0]} px but the image is {gray.shape[1]}x{gray.shape[0]}; they must be aligned and equal in size")
        if vibration is not None:
            data = await read_upload(vibration, accept=VIBRATION_KINDS, max_bytes=settings.max_upload_bytes)
            from core.serving import sniff_kind

            signal, rate = await asyncio.to_thread(decode_vibration, data, sniff_kind(data), sample_rate)
            windows = await asyncio.to_thread(vibration_windows, signal, rate)
    except ValueError as exc:
        raise _refuse("invalid_input", f"{label}{exc}") from None
    return InspectionItem(gray, tmpl, windows, timings={"decode_ms": round((time.perf_counter() - start) * 1000, 2)})


def _inspection_payload(result: dict, version: str, board_id: str | None, board: int | None) -> dict:
    """An inspection as stored and answered (less the id the store gives it): which models decided, on which board."""
    return {**result, "model_version": version, "board_id": board_id, "board": board}


async def _finish(result, request_id: str, store: ResultStore, who: Principal, version: str, kind: str,
                  board_id: str | None = None, board: int | None = None) -> Inspection:
    if isinstance(result, Exception):
        raise result
    payload = _inspection_payload(result, version, board_id, board)
    result_id = await store.asave_result(APP, kind, request_id, payload, role=who.role)
    return Inspection(id=result_id, **payload)


SINGLE_FORM = ("an 'image' file (PNG, JPEG, BMP or TIFF) and/or a 'vibration' file (CSV, NPY or WAV); optionally a "
               "'template' file, a 'sample_rate' field (Hz) and a 'board_id' field")
BATCH_FORM = ("one 'images' file per board (PNG, JPEG, BMP or TIFF); optionally as many 'templates' and 'vibrations' "
              "(CSV, NPY or WAV) files and 'board_ids' fields, in the same order, and a 'sample_rate' field (Hz)")


@router.post("/inspect", response_model=Inspection, response_model_by_alias=True,
             dependencies=[Depends(form_body_required(SINGLE_FORM, multipart_only=True))])
async def inspect(
    request: Request,
    batcher: Annotated[DynamicBatcher, Depends(get_batcher("inspect"))],
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("line"))],
    request_id: Annotated[str, Depends(get_request_id)],
    image: Annotated[UploadFile | None, File(description="board image: PNG, JPEG, BMP or TIFF")] = None,
    template: Annotated[UploadFile | None, File(description=(
        "optional defect-free template of the same board, of the image's size and aligned to it within a few "
        "pixels (shifts up to 4 px are registered automatically): a template-aware "
        "detector takes it as input (image, template, |difference|; without one it runs on the image alone, "
        "with its own decision threshold), and every reported defect is checked against it"))] = None,
    vibration: Annotated[UploadFile | None, File(description="optional vibration: CSV (first column), NPY (1-D) or WAV")] = None,
    sample_rate: Annotated[float | None, Form(description="vibration sample rate in Hz (WAV: read from the file)")] = None,
    board_id: Annotated[str | None, Form(description=(
        "optional: the board's serial or traceability code (1-64 letters, digits, spaces, - _ . / : #), stored "
        "with the result"))] = None,
) -> Inspection:
    """Inspect one board: defects (class, confidence, box, size in mm), machine state, one decision."""
    settings: IndustrialSettings = request.app.state.settings
    board_id = _board_id(board_id)
    _check_sample_rate(sample_rate)
    item = await _decode_board(settings, image, template, vibration, sample_rate)
    result = await batcher.submit(item, timeout_s=inspection_timeout_s(settings, [item]))
    return await _finish(result, request_id, store, who, batcher.runner.version, "inspect", board_id)


@router.post("/inspect/batch", response_model=BatchInspection, response_model_by_alias=True,
             dependencies=[Depends(form_body_required(BATCH_FORM, multipart_only=True))])
async def inspect_batch(
    request: Request,
    batcher: Annotated[DynamicBatcher, Depends(get_batcher("inspect"))],
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("line"))],
    request_id: Annotated[str, Depends(get_request_id)],
    images: Annotated[list[UploadFile], File(description="one image per board")],
    templates: Annotated[list[UploadFile] | None, File(description="optional: one template per board (same size, aligned within 4 px), same order")] = None,
    vibrations: Annotated[list[UploadFile] | None, File(description="optional: one vibration file per board, same order")] = None,
    sample_rate: Annotated[float | None, Form(description="sample rate of every CSV/NPY vibration file, Hz")] = None,
    board_ids: Annotated[list[str] | None, Form(description="optional: one serial per board, same order (as board_id)")] = None,
) -> BatchInspection:
    """Inspect many boards in one call; board i pairs images[i] with templates[i] and vibrations[i] when given."""
    settings: IndustrialSettings = request.app.state.settings
    if len(images) > settings.max_batch_boards:
        raise _refuse("too_many_boards", f"{len(images)} boards sent; at most {settings.max_batch_boards} per batch call")
    if board_ids and len(board_ids) != len(images):
        raise _refuse("mismatched_batch", f"{len(images)} images but {len(board_ids)} board_ids; send one per board or none")
    ids = [_board_id(b, label=f"board {i}: ") for i, b in enumerate(board_ids)] if board_ids else [None] * len(images)
    if vibrations and len(vibrations) != len(images):
        raise _refuse("mismatched_batch", f"{len(images)} images but {len(vibrations)} vibration files; send one per board or none")
    if templates and len(templates) != len(images):
        raise _refuse("mismatched_batch", f"{len(images)} images but {len(templates)} templates; send one per board or none")
    _check_sample_rate(sample_rate)
    items = [
        await _decode_board(settings, img, templates[i] if templates else None, vibrations[i] if vibrations else None, sample_rate,
                            label=f"board {i}: ")
        for i, img in enumerate(images)
    ]
    timeout_s = inspection_timeout_s(settings, items)
    results = await asyncio.gather(*(batcher.submit(item, timeout_s=timeout_s) for item in items), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if len(failed) == len(results):
        raise failed[0]  # nothing to report beside it: the call fails as a single board would
    inspected, errors = [], []
    for i, r in enumerate(results):
        if isinstance(r, ApiError):
            errors.append(BoardError(board=i, code=r.code, message=r.message))
        elif isinstance(r, BaseException):
            log.error("batch board failed in the model", extra={"request_id": request_id, "board": i,
                                                                 "error": type(r).__name__})
            errors.append(BoardError(board=i, code="internal_error", message="the model failed on this board; nothing was stored"))
        else:
            inspected.append(_inspection_payload(r, batcher.runner.version, ids[i], i))
    # the boards are stored together or not at all: a line that re-sends a failed call must not count twice.
    # Each board's request id is the call's with its index, within the column's 64 characters.
    stored = await store.asave_results(APP, "inspect_batch", [(f"{request_id[:58]}-{p['board']}", p) for p in inspected],
                                       who.role)
    return BatchInspection(results=[Inspection(id=i, **p) for i, p in zip(stored, inspected, strict=True)], errors=errors)


def _stored(row: dict) -> Inspection:
    # rows stored before the model version and board id were kept with them
    payload = {"model_version": "not recorded", **row["payload"]}
    return Inspection(id=row["id"], created_at=row["created_at"], **payload)


@router.get("/inspections", response_model=InspectionList, response_model_by_alias=True,
            summary="Stored inspections, newest first: all, one board's (board_id), or one decision's")
async def list_inspections(
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("line"))],
    limit: Annotated[int, Query(ge=1, le=500, description="at most this many, the newest")] = 50,
    decision: Annotated[str | None, Query(pattern="^(pass|fail|review)$", description="only this decision")] = None,
    board_id: Annotated[str | None, Query(description="only this board's inspections (its serial, as sent)")] = None,
) -> InspectionList:
    where = {key: value for key, value in (("decision", decision), ("board_id", _board_id(board_id))) if value}
    rows = await store.alist_results(APP, kind=("inspect", "inspect_batch"), limit=limit, payload_equals=where)
    return InspectionList(results=[_stored(row) for row in rows])


@router.get("/inspections:summary", response_model=InspectionSummary, response_model_by_alias=True,
            summary="A period's inspections in numbers: decisions, pass rate, defect Pareto, machine states")
async def summarise_inspections(
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("line"))],
    period: Annotated[tuple[dt.datetime, dt.datetime], Depends(get_period)],
) -> InspectionSummary:
    from apps.industrial.summary import FIELDS, summarise

    rows, complete = await period_rows(store, APP, ("inspect", "inspect_batch"), FIELDS, period)
    return InspectionSummary(since=period[0].isoformat(), until=period[1].isoformat(), complete=complete, **summarise(rows))


@router.get("/inspections.csv", response_class=StreamingResponse,
            summary="A period's inspections as CSV, one row per board, oldest first (for spreadsheets and SPC tools)",
            responses={200: {"content": {"text/csv": {}}}})
async def export_inspections(
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("line"))],
    period: Annotated[tuple[dt.datetime, dt.datetime], Depends(get_period)],
) -> Response:
    from apps.industrial.summary import EXPORT_FIELDS, export_rows

    return await csv_export(store, APP, ("inspect", "inspect_batch"), EXPORT_FIELDS, period, export_rows, "inspections")


@router.get("/inspections/{result_id}", response_model=Inspection, response_model_by_alias=True,
            summary="One stored inspection")
async def get_inspection(
    result_id: str,
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("line"))],
) -> Inspection:
    row = await stored_result(store, APP, result_id, f"no inspection {result_id!r}")
    return _stored(row)


@router.delete("/inspections/{result_id}", status_code=204, summary="Erase one stored inspection (admin; audited)")
async def erase_inspection(
    result_id: str,
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("admin"))],
) -> Response:
    row = await stored_result(store, APP, result_id, f"no inspection {result_id!r}")
    await asyncio.to_thread(erase_result, store, APP, row, None, reason="request", role=who.role,
                            key_id=who.key_id)  # no files
    return Response(status_code=204)


def create_app(settings: IndustrialSettings | None = None):
    from pathlib import Path

    settings = settings or get_settings()

    def load_runners():
        from apps.industrial.service import load_runner

        return {"inspect": load_runner(settings)}

    return create_service_app(
        name="industrial",
        settings=settings,
        routers=[router],
        page=Path(__file__).parent / "web",  # GET /ui/: a page to review one board
        load_runners=load_runners,
        description="PCB defect detection + machine vibration state -> pass / fail / review per board.",
    )
