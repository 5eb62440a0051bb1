"""Structured JSON logs: one object per line, request metadata only (never bodies, never PII/PHI)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class WithoutQueryStrings(logging.Filter):
    """Drops the query string of any path among a record's arguments: uvicorn logs every WebSocket handshake
    as '"WebSocket /v1/stream?..." [accepted]' on uvicorn.error, and a client may put anything there (a key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(a.split("?", 1)[0] if isinstance(a, str) and a.startswith("/") else a for a in record.args)
        return True


def configure_logging(level: str = "info") -> None:
    """Route triptych and uvicorn logs through the JSON formatter (call once, from the entry point)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("triptych", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
        logger.filters[:] = [WithoutQueryStrings()]
    # uvicorn's access log prints full paths with query strings; ours logs route templates instead
    logging.getLogger("uvicorn.access").disabled = True
