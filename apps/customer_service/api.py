"""HTTP API of the contact centre (mounted under ``/customer-service`` by the gateway).

- ``POST /v1/calls:analyze``: multipart form with ``audio`` (WAV/FLAC/OGG/MP3) and/or ``text``,
  optional ``output_mode`` (text|voice; else the User-Agent decides) -> the analysis, persisted
  before it is returned.
- ``GET /v1/results/{id}``: a stored analysis; ``GET /v1/results``: the newest calls, summarised;
  ``GET /v1/results:summary``: a period's calls in numbers (escalations and why, intents, emotions, redactions);
  ``GET /v1/results.csv``: the same period one row per call (labels and counts, no transcript);
  ``DELETE /v1/results/{id}`` (admin): erase a call and its redacted audio (``retention_days`` does it by age).
- WebSocket ``/v1/stream``: the speech side's streaming recogniser (partial/final hypotheses), each final read
  as the call goes on (emotion, acts, intent, the call so far and its escalation: ``live.LiveCall``).
- ``GET /ui/``: a web page for contact-centre staff over the two (upload or type a call and see the
  analysis; live transcription from the microphone).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from apps.customer_service.settings import CustomerServiceSettings, get_settings
from core.serving import (
    SUMMARY_MAX_ROWS,
    ApiError,
    DynamicBatcher,
    Principal,
    ResultStore,
    create_service_app,
    csv_export,
    erase_result,
    get_batcher,
    get_period,
    get_request_id,
    get_store,
    job_response,
    period_rows,
    read_upload,
    remove_unstored,
    require_form_body,
    require_role,
    start_job,
    stored_result,
    wants_async,
)

log = logging.getLogger("triptych.customer_service")
APP = "customer-service"
AUDIO_KINDS = {"wav", "flac", "ogg", "mp3"}


class CallRunner:
    """ModelRunner over the engine: one call per item (a bad item fails alone)."""

    name = "calls"

    def __init__(self, engine) -> None:
        self.engine = engine
        versions = engine.versions()
        self.version = ",".join(f"{k}={v}" for k, v in versions.items())
        self.sha256 = engine.sha256()

    def predict_batch(self, items: list) -> list:
        out: list[Any] = []
        for item in items:
            try:
                out.append(self.engine.analyze(item))
            except Exception as exc:  # per-item: InputError stays as is, anything else is reported as such
                out.append(exc)
        return out


# ---- response schema (documentation + validation of what we send) ----

class Redaction(BaseModel):
    type: str
    start: int = Field(description=(
        "character offset into the UNREDACTED transcript (never returned): each channel's words, then the "
        "typed text (trimmed), joined by single spaces, those without words left out"))
    end: int
    start_s: float | None = None
    end_s: float | None = None
    speaker: str


class Transcript(BaseModel):
    text: str = Field(description="redacted transcript ([CARD], [IBAN], ... in place of PII), the words as recognised")
    normalised: str = Field(description=(
        "the redacted transcript in written form: spoken numbers, amounts and dates as digits and symbols "
        "(\"twelve pounds fifty on the third of march\" -> \"£12.50 on 3 March\"), placeholders kept, nothing "
        "redacted written back; typed text as typed. Display only: redaction offsets and times refer to text"))
    redactions: list[Redaction]
    duration_s: float


class IntentChoice(BaseModel):
    label: str
    confidence: float


class Segment(BaseModel):
    speaker: Literal["caller", "agent"]
    start: float | None
    end: float | None
    text: str
    normalised: str | None = Field(default=None, description="text in written form (see transcript.normalised)")
    asr_confidence: float
    emotion: str | None
    contact_centre: dict[str, float] | None
    ekman: dict[str, float] | None
    modality_weights: dict[str, float]
    voice: dict[str, float] | None = None
    text_emotion: dict[str, float] | None = None
    acts: list[str] | None = Field(default=None, description=(
        "the caller turn's dialogue acts: request, greet, thank, end_call, affirm, deny, acknowledge, dont_know, "
        "handoff (asks for a person); none for an answer such as a name or a date"))
    intent: IntentChoice | None = Field(default=None, description="a request turn's own intent")


class CallEmotion(BaseModel):
    label: str
    probabilities: dict[str, float]


class Intent(IntentChoice):
    top: list[IntentChoice]


class RequestedIntent(IntentChoice):
    """One thing the caller asked for: a request utterance's intent (confidence at least the escalation rules'
    request_min_confidence, or later_request_min_confidence for a request turn after the call's first), its best
    confidence over the utterances that asked it."""

    segments: list[int] = Field(description="indices into segments of the turns that asked it")


class Escalation(BaseModel):
    escalate: bool
    reasons: list[str]


class Reply(BaseModel):
    mode: Literal["text", "voice"]
    text: str
    audio_wav_base64: str | None = None
    voice_unavailable: str | None = None


class RedactedAudio(BaseModel):
    """The call's audio with every redacted word silenced (``redact_audio``): the recording a bank may keep."""

    url: str = Field(description="GET it (role agent): a 16-bit PCM WAV, one channel per speaker")
    sample_rate: int
    channels: int
    seconds: float
    silenced_s: float = Field(description="seconds of speech silenced (the most in one channel)")


class CallAnalysis(BaseModel):
    id: str
    transcript: Transcript
    segments: list[Segment]
    emotion: CallEmotion | None
    intent: Intent | None = Field(description="the call's intent: the mean over its request turns")
    requests: list[RequestedIntent] = Field(default_factory=list, description="the caller's distinct requests, in call order")
    escalation: Escalation
    reply: Reply
    model_versions: dict[str, str]
    timings_ms: dict[str, float]
    redacted_audio: RedactedAudio | None = None
    warnings: list[str] = Field(default_factory=list, description="what to know about the input (a recording cut short)")


class CallAccepted(BaseModel):
    """A call taken as a background job (``Prefer: respond-async``): poll ``result_url``."""

    id: str
    status: Literal["running"]
    result_url: str


router = APIRouter(prefix="/v1", tags=["customer-service"])


def call_timeout_s(settings: CustomerServiceSettings, audio_channel_seconds: float | None, text: str | None) -> float | None:
    """How long a call may take: the short-request timeout plus the work its audio (per second of each channel)
    and its typed text (per 1,000 characters and per sentence or line) bring. None (the batcher's default) for
    neither."""
    from apps.customer_service.service import text_segments

    extra = 0.0
    if audio_channel_seconds is not None:
        extra += settings.seconds_per_audio_second * audio_channel_seconds
    if text and text.strip():
        extra += settings.seconds_per_thousand_text_chars * len(text) / 1000
        extra += settings.seconds_per_text_segment * len(text_segments(text))
    return settings.request_timeout_s + extra if extra else None


def _stored(result: dict) -> dict:
    """What is persisted of a result: the synthesised WAV is large and re-creatable, so only its hash."""
    stored = dict(result)
    wav = stored["reply"].get("audio_wav_base64")
    if wav:
        stored["reply"] = {**stored["reply"], "audio_wav_base64": None,
                           "audio_sha256": hashlib.sha256(wav.encode()).hexdigest()}
    return stored


def _with_audio_link(result: dict, root: str) -> dict:
    """The engine's redacted-audio artefact (its id) as the URL a client fetches it from."""
    audio = result.get("redacted_audio")
    if not audio:
        return result
    from apps.customer_service.service import REDACTED_AUDIO_NAME

    audio = {k: v for k, v in audio.items() if k != "artefact_id"}
    return {**result, "redacted_audio": {**audio, "url": f"{root}/v1/audio/{result['redacted_audio']['artefact_id']}/{REDACTED_AUDIO_NAME}"}}


@router.post("/calls:analyze", response_model=CallAnalysis, summary="Analyse a call (audio and/or text)",
             responses={202: {"model": CallAccepted, "description": "taken as a background job (Prefer: respond-async)"}})
async def analyze_call(
    request: Request,
    batcher: Annotated[DynamicBatcher, Depends(get_batcher("calls"))],
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("agent"))],
    request_id: Annotated[str, Depends(get_request_id)],
    audio: Annotated[UploadFile | None, File(description="WAV, FLAC, OGG or MP3; mono, or stereo agent/caller")] = None,
    text: Annotated[str | None, Form(description="typed text (chat) instead of or besides audio")] = None,
    output_mode: Annotated[Literal["text", "voice"] | None, Form(description="reply as text or voice; default from the User-Agent")] = None,
    redact_audio: Annotated[bool, Form(description=(
        "also return the audio with every redacted word silenced (card numbers, security codes and expiry dates, "
        "IBANs, accounts, phones, e-mails, dates of birth, PINs, passcodes and passwords, National Insurance and "
        "Social Security numbers), pauses between them included: redacted_audio.url"))] = False,
    user_agent: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header(description=(
        "'respond-async' (RFC 7240): answer 202 at once and analyse in the background; poll "
        "GET /v1/results/{id} (for long recordings: a ten-minute call takes minutes)"))] = None,
) -> CallAnalysis | JSONResponse:
    from apps.customer_service.service import CallRequest, InputError, check_request

    settings: CustomerServiceSettings = request.app.state.settings
    require_form_body(request.headers.get("content-type"), "an 'audio' file (WAV, FLAC, OGG or MP3) and/or a "
                      "'text' field (application/x-www-form-urlencoded works for text alone)")
    data, seconds = None, None
    if audio is not None:
        from apps.customer_service.speech.audio import channel_seconds

        data = await read_upload(audio, accept=AUDIO_KINDS, max_bytes=settings.max_upload_bytes)
        seconds = channel_seconds(data)
    timeout_s = call_timeout_s(settings, seconds, text)
    if data is None and not (text or "").strip():
        raise ApiError(422, "no_input", "Send an 'audio' file (WAV, FLAC, OGG or MP3) and/or a non-empty 'text' field.")
    call = CallRequest(audio=data, text=text, output_mode=output_mode, user_agent=user_agent, redact_audio=redact_audio)
    root = request.scope.get("root_path", "")
    try:  # what needs no model is refused now, not after a background job was acknowledged
        check_request(call, settings)
    except InputError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None

    async def analyse() -> dict:
        try:
            result = await batcher.submit(call, timeout_s=timeout_s)
        except InputError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return _with_audio_link(result, root)

    if wants_async(prefer):
        if batcher.queue_depth >= batcher.max_queue:  # refuse now rather than acknowledge a job bound to fail
            retry = batcher.retry_after_s()
            raise ApiError(503, "overloaded", f"{batcher.queue_depth} calls are queued; retry in {retry} s",
                           headers={"Retry-After": str(retry)})
        # the job's record is committed before the 202; a voice reply is kept whole (no other way to fetch it)
        job_id = await start_job(store, APP, "call", request_id, who.role, analyse,
                                 on_unstored=functools.partial(remove_unstored, request.app.state.artefacts))
        url = f"{root}/v1/results/{job_id}"
        return JSONResponse(CallAccepted(id=job_id, status="running", result_url=url).model_dump(), status_code=202,
                            headers={"Location": url, "Preference-Applied": "respond-async"})
    result = await analyse()
    try:
        result_id = await store.asave_result(APP, "call", request_id, _stored(result), role=who.role)  # before answering
    except Exception:
        remove_unstored(request.app.state.artefacts, _stored(result))  # its redacted recording
        raise
    return CallAnalysis(id=result_id, **result)


class CallSummary(BaseModel):
    """One stored call in the list a contact-centre lead works from (the transcript is the redacted one)."""

    id: str
    created_at: str | None
    status: Literal["done", "running", "failed", "interrupted"]
    escalate: bool | None
    reasons: list[str]
    intent: str | None
    emotion: str | None
    duration_s: float | None
    source: Literal["upload", "stream"] = Field(description="upload: sent to /v1/calls:analyze; stream: read live "
                                                            "over the WebSocket and stored at its end")
    preview: str = Field(description="the start of the redacted transcript, in written form where the call has "
                                     "it (a failed job: why it failed)")


def call_summary(row: dict) -> CallSummary:
    from apps.customer_service.summary import source_of
    from core.serving.jobs import job_status

    payload = row["payload"] or {}
    status = job_status(payload) or "done"  # a synchronous call is stored once it is done
    done = status == "done"
    transcript = payload.get("transcript") or {}
    text = transcript.get("normalised", transcript.get("text", "")) if done else ""
    if status == "failed":
        text = (payload.get("error") or {}).get("message", "")
    return CallSummary(
        id=row["id"], created_at=row["created_at"], status=status,
        escalate=payload["escalation"]["escalate"] if done else None,
        reasons=payload["escalation"]["reasons"] if done else [],
        intent=(payload.get("intent") or {}).get("label") if done else None,
        emotion=(payload.get("emotion") or {}).get("label") if done else None,
        duration_s=(payload.get("transcript") or {}).get("duration_s") if done else None,
        source=source_of(payload),
        preview=text[:160] + ("…" if len(text) > 160 else ""),
    )


@router.get("/results", summary="Recent calls, newest first, summarised (escalated=true: the flagged ones among them)")
async def list_calls(
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("agent"))],
    limit: Annotated[int, Query(ge=1, le=500, description="how many of the newest calls")] = 50,
    escalated: Annotated[bool, Query(description="only the calls flagged for escalation")] = False,
) -> dict[str, list[CallSummary]]:
    rows = await store.alist_results(APP, kind="call", limit=limit)
    calls = [call_summary(row) for row in rows]
    return {"results": [c for c in calls if c.escalate] if escalated else calls}


class IntentCount(BaseModel):
    intent: str
    calls: int
    share: float = Field(description="of the finished calls")


class CallsSummary(BaseModel):
    """A period's calls in numbers: what a contact-centre lead reads at the end of a day."""

    since: str = Field(description="start of the period (UTC, ISO 8601), included")
    until: str = Field(description="end of the period (UTC, ISO 8601), excluded")
    calls: int = Field(description="calls stored in the period (synchronous calls and background jobs)")
    statuses: dict[str, int] = Field(description="done / running / failed / interrupted (background jobs)")
    escalated: int = Field(description="finished calls flagged for escalation")
    escalation_rate: float | None = Field(description="escalated / finished calls; null without any")
    escalation_reasons: dict[str, int] = Field(description="flagged calls per rule that fired (a call may count under several)")
    top_intents: list[IntentCount] = Field(description="the most frequent intents, most first (at most 10)")
    caller_emotions: dict[str, int] = Field(description="finished calls per caller emotion over the call (contact-centre view)")
    audio_calls: int = Field(description="finished calls with audio")
    live_calls: int = Field(description="finished calls read live over the WebSocket (the rest were uploaded or typed)")
    audio_minutes: float
    mean_call_seconds: float | None
    redactions: dict[str, int] = Field(description="PII redacted per type (card, cvv, credential, ...): counts, never values")
    complete: bool = Field(description=f"false when the period holds more than {SUMMARY_MAX_ROWS:,} calls: the "
                                       "summary then covers the newest of them only")


@router.get("/results:summary", response_model=CallsSummary,
            summary="A period's calls in numbers: escalations and why, top intents, caller emotions, redactions")
async def summarise_calls(
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("agent"))],
    period: Annotated[tuple[dt.datetime, dt.datetime], Depends(get_period)],
) -> CallsSummary:
    from apps.customer_service.summary import FIELDS, summarise

    rows, complete = await period_rows(store, APP, "call", FIELDS, period)
    return CallsSummary(since=period[0].isoformat(), until=period[1].isoformat(), complete=complete, **summarise(rows))


@router.get("/results.csv", response_class=StreamingResponse,
            summary="A period's calls as CSV, one row per call, oldest first: labels and counts, no transcript",
            responses={200: {"content": {"text/csv": {}}}})
async def export_calls(
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("agent"))],
    period: Annotated[tuple[dt.datetime, dt.datetime], Depends(get_period)],
) -> Response:
    from apps.customer_service.summary import EXPORT_FIELDS, export_rows

    return await csv_export(store, APP, "call", EXPORT_FIELDS, period, export_rows, "calls")


@router.delete("/results/{result_id}", status_code=204, summary="Erase a stored call and its redacted audio (admin)")
async def erase_call(
    result_id: str,
    request: Request,
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("admin"))],
) -> Response:
    """The right to erasure: the call's analysis and recording go; an audit record says when and by whom.
    A call still being analysed (a background job) is refused: erase it once it has finished."""
    from core.serving.jobs import job_status

    row = await stored_result(store, APP, result_id, f"no result {result_id!r}")
    if job_status(row["payload"] or {}) == "running":
        raise ApiError(409, "still_running", "the call is still being analysed; erase it once it has finished")
    await asyncio.to_thread(erase_result, store, APP, row, request.app.state.artefacts, reason="request", role=who.role,
                            key_id=who.key_id)
    return Response(status_code=204)


@router.get("/audio/{artefact_id}/redacted.wav", summary="A call's audio with its redacted words silenced",
            response_class=FileResponse)
async def get_redacted_audio(
    artefact_id: str,
    request: Request,
    who: Annotated[Principal, Depends(require_role("agent"))],
) -> FileResponse:
    from apps.customer_service.service import REDACTED_AUDIO_NAME, redacted_audio_path

    try:
        path = redacted_audio_path(request.app.state.settings, artefact_id)
    except KeyError:
        path = None
    if path is None or not path.is_file():
        raise ApiError(404, "not_found", f"no redacted audio {artefact_id!r}")
    return FileResponse(path, media_type="audio/wav", filename=REDACTED_AUDIO_NAME)


@router.get("/results/{result_id}", summary="A stored call analysis")
async def get_result(
    result_id: str,
    store: Annotated[ResultStore, Depends(get_store)],
    who: Annotated[Principal, Depends(require_role("agent"))],
) -> dict:
    """A stored analysis. A background job (``Prefer: respond-async``) answers 202 while it runs; then its
    payload's ``status`` is ``done`` (the analysis), ``failed`` (``error``: what the synchronous call would
    have answered) or ``interrupted`` (the service stopped before it finished: send the call again)."""
    row = await stored_result(store, APP, result_id, f"no result {result_id!r}")
    return job_response(row, what="call")


def live_call(app, *, role: str | None = None, store: bool = True):
    """A new live-call reader over the loaded engine (``/v1/stream?analyze=true``), or None while it loads.
    With ``store`` the finished call is saved as an analysed call is (kind "call", the streaming role)."""
    runner = app.state.runners.get("calls")
    if runner is None:
        return None
    from apps.customer_service.live import LiveCall

    save = functools.partial(app.state.store.save_result, APP, "call", None, role=role) if store else None
    return LiveCall(runner.engine, save=save)


def create_app(settings: CustomerServiceSettings | None = None):
    from pathlib import Path

    settings = settings or get_settings()
    routers = [router]
    try:
        from apps.customer_service.speech import create_stream_router

        routers.append(create_stream_router(live_call=live_call))
    except (ImportError, AttributeError) as exc:  # the speech side's router not installed: serve the rest
        log.warning("streaming router unavailable: %s", type(exc).__name__)

    from apps.customer_service.service import call_artefact_folder

    # what a stored call owns on disk, erased with it; folders no stored call names are swept
    artefacts = call_artefact_folder(settings)

    def load_runners():
        from apps.customer_service.service import CustomerServiceEngine

        return {"calls": CallRunner(CustomerServiceEngine.from_settings(settings))}

    return create_service_app(
        name=APP, settings=settings, routers=routers, load_runners=load_runners,
        description="Bank contact centre: redacted transcript, emotion over time, intent, escalation, reply.",
        page=Path(__file__).parent / "web",  # GET /ui/: the page for contact-centre staff
        # a text field over the form parser's 1 MB is refused by the engine: say the app's own limit there too
        text_limit_hint=f"'text' takes at most {settings.max_text_chars} characters (analyse a longer chat in parts)",
        artefacts=artefacts,
    )
