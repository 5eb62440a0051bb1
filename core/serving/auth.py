"""API keys mapped to roles. Off when no keys are configured (local use); when keys exist every
route guarded by ``require_role`` needs ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.
``admin`` passes every check. Keys are never logged; audit records carry a short key hash."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from core.serving.errors import ApiError
from core.serving.settings import ROLES


@dataclass(frozen=True)
class Principal:
    role: str | None  # None when auth is off
    key_id: str | None  # first 12 hex of sha256(key); safe to store
    authenticated: bool


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def resolve_principal(request: Request, keys: dict[str, str]) -> Principal:
    if not keys:
        return Principal(role=None, key_id=None, authenticated=False)
    presented = _presented_key(request)
    if presented is None:
        raise ApiError(
            401, "unauthorized", "an API key is required: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    role = None
    for key, key_role in keys.items():  # compare every key in constant time; no early exit
        if hmac.compare_digest(key.encode(), presented.encode()):
            role = key_role
    if role is None:
        raise ApiError(401, "unauthorized", "the API key is not recognised", headers={"WWW-Authenticate": "Bearer"})
    return Principal(role=role, key_id=hashlib.sha256(presented.encode()).hexdigest()[:12], authenticated=True)


def require_role(*roles: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: ``principal: Annotated[Principal, Depends(require_role("line"))]``.

    With no roles given any valid key passes. Keys come from ``request.app.state.settings.api_keys``.
    """
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; roles are {ROLES}")

    async def dependency(request: Request) -> Principal:
        settings = getattr(request.app.state, "settings", None)
        principal = resolve_principal(request, dict(getattr(settings, "api_keys", {}) or {}))
        if principal.authenticated and roles and principal.role != "admin" and principal.role not in roles:
            raise ApiError(
                403, "forbidden", f"role {principal.role!r} may not do this; allowed roles: {', '.join(roles)} (or admin)"
            )
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_role_{'_'.join(roles) or 'any'}"
    return dependency


def subject_hash(value: str, salt: str = "triptych") -> str:
    """A stable, non-reversible reference to a person or study for audit records (never the raw ID)."""
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()[:32]
