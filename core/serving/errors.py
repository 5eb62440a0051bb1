"""One error body for every app: ``{"error": {"code", "message", "detail"}}``.

Raise :class:`ApiError` anywhere in a request (route, dependency, batcher, upload check);
``install_error_handlers`` turns it, FastAPI's validation errors and Starlette's HTTP errors into
that shape. Validation details never echo the submitted values (they may hold PII/PHI).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("triptych.serving")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An error a client can act on; becomes a JSON response with this status and body."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.detail)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def code_for_status(status: int) -> str:
    return _CODES.get(status, "error")


def _clean_validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # keep where and why, drop what was sent ("input"/"ctx" may hold the client's data)
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")} for e in errors]


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = _clean_validation_errors(list(exc.errors()))
    where = ", ".join(".".join(str(p) for p in d["loc"]) + ": " + d["msg"] for d in detail[:5])
    return JSONResponse(
        error_body("invalid_request", f"request does not match the schema ({where})", detail), status_code=422
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else code_for_status(exc.status_code).replace("_", " ")
    return JSONResponse(
        error_body(code_for_status(exc.status_code), message),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None) or {},
    )


async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
    # models and decoders raise ValueError on input they cannot use: that is the client's input
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):  # str() of these quotes the input values; keep only where/why
        detail = _clean_validation_errors(list(exc.errors()))
        where = ", ".join(".".join(str(p) for p in d["loc"]) + ": " + d["msg"] for d in detail[:5])
        return JSONResponse(error_body("invalid_input", f"input does not match the schema ({where})", detail), status_code=422)
    return JSONResponse(error_body("invalid_input", str(exc)[:500] or "invalid input"), status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ValueError, _value_error)  # type: ignore[arg-type]
