"""Structured JSON logs: one object per line, request metadata only (never bodies, never PII/PHI)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import traceback

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
            entry["traceback"] = traceback_without_messages(record.exc_info)
        return json.dumps(entry, default=str)


def traceback_without_messages(exc_info) -> str:
    """A traceback with where and which exception, never the exceptions' messages: a message may quote what
    was being handled (SQLAlchemy's the row it could not write, a parser's the text it choked on)."""
    lines: list[str] = []
    chained = traceback.TracebackException(*exc_info, capture_locals=False)
    chain = []
    while chained is not None and len(chain) < 16:
        chain.append(chained)
        chained = chained.__cause__ or (None if chained.__suppress_context__ else chained.__context__)
    for depth, exc in enumerate(reversed(chain)):
        if depth:
            lines.append("\nThe above exception led to the next one:\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(exc.stack.format())
        name = getattr(exc, "exc_type_str", None) or f"{exc.exc_type.__module__}.{exc.exc_type.__qualname__}"
        lines.append(f"{name} (message withheld)\n")
    return "".join(lines)


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
