"""One error body for every app: ``{"error": {"code", "message", "detail"}}``.

Raise :class:`ApiError` anywhere in a request (route, dependency, batcher, upload check);
``install_error_handlers`` turns it, FastAPI's validation errors and Starlette's HTTP errors into
that shape. Validation details never echo the submitted values (they may hold PII/PHI).

A form whose text field is over Starlette's part limit (1 MB: a multipart part without a filename,
or an urlencoded field) is a 413 that names the limit and what to do instead: the app's own text
limit where it gave one (``app.state.text_limit_hint``), else sending the content as a file.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

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


# Starlette's words when a form field outgrows the parser's max_part_size (raised from request.form()
# as HTTPException(400) with the MultiPartException as its context)
_FORM_PART_TOO_LARGE = re.compile(r"^(?:Part|Field) exceeded maximum size of (\d+)KB\.$")


def _form_error(request: Request, exc: StarletteHTTPException) -> ApiError | None:
    """The error for a form Starlette could not parse, or None when ``exc`` is not one: a text field over
    the part limit is 413 (it was a bare 400 "Part exceeded maximum size of 1024KB."), saying the limit
    and how to send long input; any other malformed form stays 400, its reason named."""
    if exc.status_code != 400 or not isinstance(exc.__context__, MultiPartException):
        return None
    reason = str(exc.detail)
    too_large = _FORM_PART_TOO_LARGE.match(reason)
    if too_large is None:
        return ApiError(400, "bad_request", f"The form could not be read: {reason}")
    limit_kb = int(too_large.group(1))
    hint = getattr(request.app.state, "text_limit_hint", None) or (
        "send larger content as a file (a multipart part with a filename)")
    return ApiError(413, "too_large", f"A form field is over {limit_kb} KB, the most a text field may hold; {hint}.",
                    {"max_field_bytes": limit_kb * 1024})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    form_error = _form_error(request, exc)
    if form_error is not None:
        return form_error.response()
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
