"""API keys mapped to roles. Off when no keys are configured (local use); when keys exist every
route guarded by ``require_role`` needs ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.
``admin`` passes every check. Keys are never logged; audit records carry a short key hash."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request, WebSocket
from starlette.requests import HTTPConnection

from core.serving.errors import ApiError
from core.serving.settings import ROLES


@dataclass(frozen=True)
class Principal:
    role: str | None  # None when auth is off
    key_id: str | None  # first 12 hex of sha256(key); safe to store
    authenticated: bool


def _presented_key(request: HTTPConnection) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def resolve_principal(request: HTTPConnection, keys: dict[str, str], presented: str | None = None) -> Principal:
    """Who sent ``request``: its header key (or ``presented``) looked up in ``keys``; 401 without a valid one."""
    if not keys:
        return Principal(role=None, key_id=None, authenticated=False)
    presented = presented or _presented_key(request)
    if presented is None:
        raise ApiError(
            401, "unauthorized", "an API key is required: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # a key sent in a WebSocket message is any JSON string, lone surrogates ("\ud800") included, which
    # str.encode refuses: "surrogatepass" gives them bytes that match no configured key
    presented_bytes = presented.encode("utf-8", "surrogatepass")
    role = None
    for key, key_role in keys.items():  # compare every key in constant time; no early exit
        if hmac.compare_digest(key.encode(), presented_bytes):
            role = key_role
    if role is None:
        raise ApiError(401, "unauthorized", "the API key is not recognised", headers={"WWW-Authenticate": "Bearer"})
    return Principal(role=role, key_id=hashlib.sha256(presented_bytes).hexdigest()[:12], authenticated=True)


def _check_roles(roles: tuple[str, ...]) -> None:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; roles are {ROLES}")


def _authorize(principal: Principal, roles: tuple[str, ...]) -> Principal:
    if principal.authenticated and roles and principal.role != "admin" and principal.role not in roles:
        allowed = ", ".join(roles) + ("" if "admin" in roles else " (or admin)")
        raise ApiError(403, "forbidden", f"role {principal.role!r} may not do this; allowed roles: {allowed}")
    return principal


def _app_keys(conn: HTTPConnection) -> dict[str, str]:
    settings = getattr(conn.app.state, "settings", None)
    return dict(getattr(settings, "api_keys", {}) or {})


def require_role(*roles: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: ``principal: Annotated[Principal, Depends(require_role("line"))]``.

    With no roles given any valid key passes. Keys come from ``request.app.state.settings.api_keys``.
    """
    _check_roles(roles)

    async def dependency(request: Request) -> Principal:
        principal = _authorize(resolve_principal(request, _app_keys(request)), roles)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_role_{'_'.join(roles) or 'any'}"
    return dependency


def subject_hash(value: str, key: bytes) -> str:
    """A stable reference to a person or study for audit records (never the raw ID): HMAC-SHA256 under
    the installation's secret ``key`` (``audit_key``). A public salt would not do: study UIDs and
    caller numbers are known to many, and hashing each of them would find its records."""
    if not key:
        raise ValueError("subject_hash needs a secret key (audit_key(settings))")
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def audit_key(settings) -> bytes:
    """The secret behind ``subject_hash``: the ``audit_key`` setting when set (replicas sharing one
    database must share it), else 32 random bytes created once in ``settings.audit_key_file`` (mode
    0600) and read from there afterwards, so that one study keeps one reference across restarts."""
    if settings.audit_key is not None:
        return settings.audit_key.get_secret_value().encode()
    return _key_file(Path(settings.audit_key_file).expanduser().resolve())


@functools.lru_cache(maxsize=8)
def _key_file(path: Path) -> bytes:
    """The installation's audit key, made on first use. Written whole under another name and hard-linked
    into place: two workers starting together both make one, the first link wins and the second reads it,
    never a file still being written (a reader of a half-written key failed the call after the model ran)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(draft, path)
            except FileExistsError:  # another worker's key is in place: use it
                pass
        finally:
            draft.unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) < 32:
        raise RuntimeError(f"the audit key file {path} holds {len(key)} bytes; 32 are needed")
    return key


async def authorize_websocket(websocket: WebSocket, *roles: str, timeout_s: float = 10.0) -> Principal | None:
    """The principal of an accepted WebSocket, or None once it has been refused (an ``error`` message,
    then close 1008). Keys are checked as for HTTP routes. Browsers cannot set headers on a WebSocket,
    so without an ``X-API-Key`` / ``Authorization`` header the first message may carry the key,
    ``{"type": "auth", "key": "..."}``, within ``timeout_s`` (never in the URL: access logs keep URLs)."""
    import asyncio
    import json

    _check_roles(roles)
    keys = _app_keys(websocket)
    presented = None
    if keys and _presented_key(websocket) is None:
        from starlette.websockets import WebSocketDisconnect

        try:
            message = await asyncio.wait_for(websocket.receive_text(), timeout_s)
        except WebSocketDisconnect:
            return None
        except (TimeoutError, KeyError, RuntimeError):
            message = ""
        try:
            body = json.loads(message)
            if body.get("type") == "auth" and isinstance(body.get("key"), str) and body["key"].strip():
                presented = body["key"].strip()
        except (ValueError, AttributeError, RecursionError):  # "[[[[...": nested past the decoder's limit
            pass  # no usable key: refused below, like a request without one
    try:
        return _authorize(resolve_principal(websocket, keys, presented), roles)
    except ApiError as exc:
        hint = ' (from a browser: make the first message {"type": "auth", "key": "<key>"})' if exc.status_code == 401 else ""
        await websocket.send_json({"type": "error", "code": exc.code, "message": exc.message + hint})
        await websocket.close(code=1008, reason=exc.code)  # "unauthorized" / "forbidden": short, ASCII, no user data
        return None
