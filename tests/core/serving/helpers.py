"""Small real runners and apps for the serving tests (no model files needed)."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.testclient import TestClient
from pydantic import BaseModel, FiniteFloat

from core.serving import (
    AppSettings,
    DynamicBatcher,
    Principal,
    ResultStore,
    create_service_app,
    get_batcher,
    get_request_id,
    get_store,
    read_upload,
    require_role,
    safe_unzip,
    temporary_directory,
)


class DoubleRunner:
    """Doubles numbers; negative numbers fail (per item); records every batch it sees."""

    name = "double"
    version = "1.2.3"
    sha256 = "ab" * 32

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None, raise_on: Any = None) -> None:
        self.delay_s = delay_s
        self.gate = gate
        self.raise_on = raise_on
        self.batches: list[list[Any]] = []
        self.seen: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def predict_batch(self, items: list[Any]) -> list[Any]:
        with self.lock:
            self.batches.append(list(items))
            self.seen.update(repr(i) for i in items)
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.raise_on is not None and self.raise_on in items:
            raise RuntimeError("whole batch failed")
        return [ValueError(f"negative input {x}") if x < 0 else x * 2 for x in items]


class Number(BaseModel):
    x: FiniteFloat  # plain float would let 1e400 (inf) and NaN through


router = APIRouter()


@router.post("/double")
async def double(
    body: Number,
    request: Request,
    batcher: Annotated[DynamicBatcher, Depends(get_batcher("double"))],
    store: Annotated[ResultStore, Depends(get_store)],
    request_id: Annotated[str, Depends(get_request_id)],
) -> dict[str, Any]:
    y = await batcher.submit(body.x)
    result_id = await store.asave_result("test", "double", request_id, {"x": body.x, "y": y})
    return {"id": result_id, "y": y}


@router.post("/line-only")
async def line_only(who: Annotated[Principal, Depends(require_role("line"))]) -> dict[str, Any]:
    return {"role": who.role, "authenticated": who.authenticated}


@router.post("/clinical")
async def clinical(who: Annotated[Principal, Depends(require_role("radiologist", "agent"))]) -> dict[str, Any]:
    return {"role": who.role}


@router.post("/image")
async def image(request: Request, file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    data = await read_upload(file, accept={"png", "jpeg"}, max_bytes=request.app.state.settings.max_upload_bytes)
    return {"bytes": len(data)}


@router.post("/archive")
async def archive(request: Request, file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    data = await read_upload(file, accept={"zip"}, max_bytes=request.app.state.settings.max_upload_bytes)
    with temporary_directory() as tmp:
        files = safe_unzip(data, tmp, max_files=10, max_total_bytes=1_000_000)
        names = sorted(str(p.relative_to(tmp)) for p in files)
    return {"files": names}


@router.post("/parse-form")
async def parse_form(request: Request) -> dict[str, Any]:
    # an app validating a JSON form field itself: pydantic's ValidationError is a ValueError
    form = await request.form()
    return {"x": Number.model_validate_json(str(form.get("meta", "{}"))).x}


@router.get("/bug")
async def bug() -> dict[str, Any]:
    raise RuntimeError("a real bug")


def make_settings(tmp_path: Path, **overrides: Any) -> AppSettings:
    return AppSettings(database_url=f"sqlite:///{tmp_path / 'serving.db'}", artefact_dir=tmp_path / "art", **overrides)


def make_app(tmp_path: Path, runner: DoubleRunner | None = None, load_runners=None, page: Path | None = None,
             **overrides: Any):
    runner = runner or DoubleRunner()
    loader = load_runners if load_runners is not None else (lambda: {"double": runner})
    return create_service_app(name="test", settings=make_settings(tmp_path, **overrides), routers=[router],
                              load_runners=loader, page=page)


def wait_ready(client: TestClient, path: str = "/ready", timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(path)
        if response.status_code == 200:
            return response.json()
        time.sleep(0.02)
    raise AssertionError(f"{path} not ready: {response.json()}")
