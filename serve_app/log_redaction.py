"""Redaction of every log record a Serve replica writes: card numbers and keys never reach a log file.

A replica's log handlers belong to Ray (the worker's stderr, Serve's replica log), not to us, and a
transaction id that looks like a card number reaches them through ordinary warnings. So redaction is
installed on the process itself, once, from each deployment's constructor: the LogRecord factory masks the
message as it is created, and every handler present gets serve_app.logging_setup's RedactionFilter, which
also covers `extra=` fields and tracebacks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from serve_app.logging_setup import RedactionFilter, Redactor

_lock = threading.Lock()
_state: dict[str, Any] = {"redactor": None}
_MARK = "_fraud_redacting_factory"


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return [handler for lg in loggers for handler in lg.handlers]


def install_record_redaction(secrets: Iterable[str] = ()) -> None:
    """Idempotent: a second call adds its secrets and filters handlers created since the first."""
    with _lock:
        known = _state["redactor"].secrets if _state["redactor"] is not None else []
        redactor = Redactor([*known, *secrets])
        _state["redactor"] = redactor
        previous = logging.getLogRecordFactory()
        if not getattr(previous, _MARK, False):

            def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                current: Redactor = _state["redactor"]
                # Formatted now, with its arguments, then the arguments dropped: that is where ids hide.
                record.msg = current.text(record.getMessage())
                record.args = None
                return record

            setattr(redacting_factory, _MARK, True)
            logging.setLogRecordFactory(redacting_factory)
        for handler in _all_handlers():
            for old in [f for f in handler.filters if isinstance(f, RedactionFilter)]:
                handler.removeFilter(old)
            handler.addFilter(RedactionFilter(redactor))
