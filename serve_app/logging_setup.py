"""Structured JSON logs carrying a per-request id, with card numbers, credentials and API keys redacted."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("fraud_request_id", default=None)

# 13-19 digits, optionally grouped by single spaces or dashes ("4111 1111 1111 1111"), not part of a longer
# digit run. Luhn is deliberately not checked: a mistyped card number is still card data.
_PAN = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
# user:password@ in URLs (redis://:pw@host, postgresql://user:pw@db) - the password goes, the rest stays.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@")
# "api_key=abc", "X-API-Key: abc", "Authorization: Bearer abc", "password=..." inside free text.
_INLINE_SECRET = re.compile(
    r"(?i)(?P<name>x-api-key|api[_-]?keys?|admin[_-]?keys?|authorization|passw(?:or)?d|secret|token)"
    r"(?P<sep>\"?\s*[:=]\s*\"?)(?:bearer\s+)?[^\s\",;&]+"
)
# Field (extra / dict key) names whose values are never logged, whatever they contain.
_SECRET_FIELD = re.compile(r"(?i)(api[_-]?keys?|admin[_-]?keys?|authorization|passw|secret|token|credential)")

REDACTED = "[REDACTED]"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_HANDLER_MARK = "_fraud_json_handler"


def _mask_pan(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    # PCI DSS allows showing the last four; they help match a log line to a customer complaint.
    return f"[PAN ****{digits[-4:]}]"


class Redactor:
    """Masks card numbers, URL passwords, inline credentials and any of the given secret values in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first so that a key that contains another key is removed whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, REDACTED)
        value = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
        value = _INLINE_SECRET.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", value)
        return _PAN.sub(_mask_pan, value)

    def value(self, value: Any, field_name: str = "") -> Any:
        """Redact a field value of any JSON-ish shape; values of secret-named fields are dropped whole."""
        if field_name and _SECRET_FIELD.search(field_name):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return value
        if isinstance(value, int):
            # A card number stored as an integer is still a card number.
            as_text = str(value)
            redacted = self.text(as_text)
            return value if redacted == as_text else redacted
        if isinstance(value, Mapping):
            return {str(k): self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return self.text(str(value))


class RedactionFilter(logging.Filter):
    """Rewrites each record in place (message, extra fields, traceback) so no handler sees the raw values."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        # Bound now, in the logging thread, so a queue handler formatting later still has it.
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get()
        # Format once with the args, then drop them: the args are exactly where card numbers hide.
        record.msg = self.redactor.text(record.getMessage())
        record.args = None
        for name in [k for k in record.__dict__ if k not in _RECORD_ATTRS]:
            setattr(record, name, self.redactor.value(record.__dict__[name], name))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
            # The traceback now lives only in its redacted text form.
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS and name not in entry:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(
    level: int | str = "INFO", secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.Handler:
    """Send the root logger's records as redacted JSON lines to `stream` (stderr); safe to call again.

    Like `logging.basicConfig(force=True)`, it replaces every handler on the root logger: a handler left
    there would print records unredacted. `secrets` are literal values (API keys, passwords) masked
    wherever they appear. Returns the handler.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if getattr(handler, _HANDLER_MARK, False):
            handler.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    # On the handler, not the logger: handler filters also see records propagated from child loggers.
    handler.addFilter(RedactionFilter(Redactor(secrets)))
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def new_request_id() -> str:
    return uuid.uuid4().hex


_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


def clean_request_id(candidate: str | None) -> str:
    """A client's X-Request-ID if it is a sane token, else a fresh id (so headers cannot inject log text)."""
    if candidate and _VALID_REQUEST_ID.match(candidate) and not _PAN.search(candidate):
        return candidate
    return new_request_id()


@contextmanager
def request_context(request_id: str | None = None) -> Iterator[str]:
    """Bind a request id to every log line emitted inside the block (and in tasks it spawns)."""
    rid = clean_request_id(request_id)
    token = request_id_var.set(rid)
    try:
        yield rid
    finally:
        request_id_var.reset(token)
