"""Serving engine shared by the three apps (FastAPI factory, dynamic batching, uploads, roles,
persistence, metrics). See core/serving/README.md for the contract and a minimal app.

Names are resolved lazily so ``from core.serving import AppSettings`` (used by app settings
modules) does not import FastAPI, SQLAlchemy or prometheus.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AppSettings": "core.serving.settings",
    "ROLES": "core.serving.settings",
    "ApiError": "core.serving.errors",
    "error_body": "core.serving.errors",
    "create_service_app": "core.serving.app",
    "get_batcher": "core.serving.app",
    "get_store": "core.serving.app",
    "get_app_settings": "core.serving.app",
    "get_request_id": "core.serving.app",
    "get_period": "core.serving.app",
    "stored_result": "core.serving.app",
    "period_rows": "core.serving.app",
    "csv_export": "core.serving.app",
    "SUMMARY_MAX_ROWS": "core.serving.app",
    "DynamicBatcher": "core.serving.batching",
    "ModelRunner": "core.serving.batching",
    "BatcherStats": "core.serving.batching",
    "read_upload": "core.serving.uploads",
    "require_form_body": "core.serving.uploads",
    "form_body_required": "core.serving.uploads",
    "sniff_kind": "core.serving.uploads",
    "plain_text": "core.serving.uploads",
    "safe_unzip": "core.serving.uploads",
    "temporary_directory": "core.serving.uploads",
    "KINDS": "core.serving.uploads",
    "ResultStore": "core.serving.store",
    "csv_lines": "core.serving.store",
    "erase_result": "core.serving.retention",
    "remove_unstored": "core.serving.retention",
    "start_job": "core.serving.jobs",
    "job_status": "core.serving.jobs",
    "job_response": "core.serving.jobs",
    "wants_async": "core.serving.jobs",
    "require_role": "core.serving.auth",
    "authorize_websocket": "core.serving.auth",
    "page_router": "core.serving.web",
    "Principal": "core.serving.auth",
    "subject_hash": "core.serving.auth",
    "write_durably": "core.serving.artefacts",
    "audit_key": "core.serving.auth",
    "WorkGate": "core.serving.gate",
}

__all__ = [
    "ApiError",
    "AppSettings",
    "BatcherStats",
    "DynamicBatcher",
    "KINDS",
    "ModelRunner",
    "Principal",
    "ROLES",
    "SUMMARY_MAX_ROWS",
    "ResultStore",
    "WorkGate",
    "authorize_websocket",
    "create_service_app",
    "csv_export",
    "csv_lines",
    "erase_result",
    "remove_unstored",
    "error_body",
    "get_app_settings",
    "get_batcher",
    "get_period",
    "period_rows",
    "get_request_id",
    "get_store",
    "job_response",
    "job_status",
    "page_router",
    "read_upload",
    "require_form_body",
    "form_body_required",
    "require_role",
    "safe_unzip",
    "sniff_kind",
    "plain_text",
    "start_job",
    "stored_result",
    "subject_hash",
    "write_durably",
    "audit_key",
    "temporary_directory",
    "wants_async",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'core.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
