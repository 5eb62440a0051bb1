"""Settings every app inherits; each app subclasses with its own env prefix.

Example::

    class IndustrialSettings(AppSettings):
        model_config = SettingsConfigDict(env_prefix="TRIPTYCH_INDUSTRIAL_")
        bundle_dir: Path = Path(__file__).parent / "weights"

    @lru_cache
    def get_settings() -> IndustrialSettings:
        return IndustrialSettings()

Dict fields come from the environment as JSON, e.g.
``TRIPTYCH_INDUSTRIAL_API_KEYS='{"k3y": "line", "adm1n": "admin"}'``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.offline import state_dir

ROLES = ("agent", "radiologist", "line", "admin")


def _default_database_url() -> str:
    return f"sqlite:///{state_dir() / 'triptych.db'}"


class AppSettings(BaseSettings):
    """Serving knobs shared by every app (per-app values via that app's env prefix)."""

    model_config = SettingsConfigDict(env_prefix="TRIPTYCH_", extra="ignore")

    # uploads: the per-endpoint cap; requests whose body is larger than this plus form overhead are
    # refused before they are spooled to disk
    max_upload_bytes: int = 50 * 1024 * 1024
    # api key -> role (agent, radiologist, line, admin); empty = auth off (local use)
    api_keys: dict[str, str] = Field(default_factory=dict)
    # SQLAlchemy URL; SQLite (WAL) under the state dir unless set, e.g. postgresql+psycopg://...
    database_url: str = Field(default_factory=_default_database_url)
    # how long a write waits for another writer's lock (SQLite) before the request answers 503 storage_unavailable
    database_busy_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # dynamic batching (max_batch=1 turns batching off)
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 1024
    request_timeout_s: float = 30.0
    # where generated artefacts (heat maps, synthesised audio) are written
    artefact_dir: Path = Field(default_factory=lambda: state_dir() / "artefacts")
    # secret of the keyed hashes that stand for patients and studies in audit records (auth.subject_hash);
    # unset: a random key made once in audit_key_file. Replicas sharing one database must share it.
    audit_key: SecretStr | None = None
    audit_key_file: Path = Field(default_factory=lambda: state_dir() / "audit.key")
    # results (and their files) older than this many days are erased, checked every retention_check_s;
    # unset: kept until an admin erases them (core.serving.retention). Audit records are always kept.
    retention_days: float | None = None
    retention_check_s: float = 3600.0

    @field_validator("api_keys")
    @classmethod
    def _known_roles(cls, value: dict[str, str]) -> dict[str, str]:
        for role in value.values():
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        return value

    @field_validator("retention_days", "retention_check_s")
    @classmethod
    def _positive_period(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError("must be > 0 (leave retention_days unset to keep results)")
        return value

    @field_validator("max_batch", "max_queue")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value
