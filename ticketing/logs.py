"""Logging for every role: ``--log-format text|json``, request ids, secrets scrubbed.

JSON lines carry ``time`` (UTC, ISO 8601), ``level``, ``role``, ``node``, ``logger``,
``event`` (the message), ``request_id`` when a front/API request is being served,
and ``fields`` (what a caller passed as ``extra={"fields": {...}}``).

Secrets never reach a log line: :class:`Redactor` runs on every record of the
handler :func:`setup_logging` installs. It masks admission/session tokens in query
strings (``token=``), bearer credentials, the session and visitor cookies, JSON
``"password"`` values, and any exact secret registered with :func:`add_secret`
(the operator token). The code should not log those in the first place; this is
the net under it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

__all__ = [
    "LOG_FORMATS",
    "REQUEST_ID",
    "JsonFormatter",
    "Redactor",
    "add_secret",
    "setup_logging",
]

LOG_FORMATS = ("text", "json")

# The id of the front/API request being served in this task (set by the front's middleware).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

MASK = "[redacted]"
_PATTERNS = [
    # token=... in a URL or query string (admission tokens ride in the shard URL).
    (re.compile(r"(token=)[^&\s\"']+", re.I), r"\1" + MASK),
    (re.compile(r"(Bearer\s+)[^\s\"',]+", re.I), r"\1" + MASK),
    (re.compile(r"(ticketing_(?:session|visitor)=)[^;\s\"',]+", re.I), r"\1" + MASK),
    (re.compile(r"(\"?password\"?\s*[:=]\s*\"?)[^\"\s,}]+", re.I), r"\1" + MASK),
]
_secrets: set[str] = set()

# Libraries whose DEBUG lines carry data, not events: aiosqlite logs every query with
# its parameters (visitor ids, session ids). They log at INFO at most.
QUIET = {"aiosqlite": logging.INFO}

# LogRecord attributes that are not caller fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def add_secret(value: str | None) -> None:
    """Mask this exact string wherever it would appear in a log line (8+ characters)."""
    if value and len(value) >= 8:
        _secrets.add(value)


def scrub(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return text


class Redactor(logging.Filter):
    """Formats each record's message once, scrubbed, so no handler sees the raw one."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = scrub(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: scrub(v) if isinstance(v, str) else v for k, v in fields.items()}
        return True


class _Context(logging.Filter):
    """Adds role, node and the current request id to every record."""

    def __init__(self, role: str, node: str) -> None:
        super().__init__()
        self.role, self.node = role, node

    def filter(self, record: logging.LogRecord) -> bool:
        record.role, record.node = self.role, self.node
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "role": getattr(record, "role", None),
            "node": getattr(record, "node", None),
            "logger": record.name,
            "event": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        fields = getattr(record, "fields", None)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        extra.pop("role", None), extra.pop("node", None), extra.pop("request_id", None)
        extra.pop("fields", None)
        if isinstance(fields, dict):
            extra.update(fields)
        if extra:
            out["fields"] = extra
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Today's text lines, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(role)s/%(node)s %(name)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        rid = getattr(record, "request_id", None)
        return f"{line} request_id={rid}" if rid else line


def setup_logging(
    fmt: str = "text",
    *,
    level: int = logging.WARNING,
    role: str = "-",
    node: str = "-",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install one handler on the root logger for this process; returns it."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_Context(role, node))
    handler.addFilter(Redactor())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, floor in QUIET.items():
        logging.getLogger(name).setLevel(max(level, floor))
    return handler
