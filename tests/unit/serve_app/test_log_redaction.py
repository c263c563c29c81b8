"""Process-wide log redaction: whatever logger and handler, card numbers and keys do not come out."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from serve_app.log_redaction import install_record_redaction

PAN = "4111111111111111"
KEY = "k3y-" + "s" * 20


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A plain handler on a plain logger, as Ray sets them up in a worker (not ours, not JSON)."""
    factory = logging.getLogRecordFactory()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s %(card)s"))
    log = logging.getLogger("ray.serve.fake_replica")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield stream
    log.removeHandler(handler)
    logging.setLogRecordFactory(factory)


def test_messages_arguments_and_extras_are_masked(captured: io.StringIO) -> None:
    install_record_redaction([KEY])
    log = logging.getLogger("ray.serve.fake_replica")
    log.warning("transaction %s was sent again (key %s)", PAN, KEY, extra={"card": PAN})
    text = captured.getvalue()
    assert PAN not in text
    assert KEY not in text
    assert "****1111" in text  # the last four stay, so a line can still be matched to a complaint


def test_a_logger_created_after_installation_is_masked_too(captured: io.StringIO) -> None:
    install_record_redaction()
    stream = io.StringIO()
    late = logging.getLogger("serve_app.created_later")
    handler = logging.StreamHandler(stream)
    late.addHandler(handler)
    late.propagate = False
    try:
        late.warning("id %s", "4000 1234 5678 9010")
    finally:
        late.removeHandler(handler)
    assert "4000 1234 5678 9010" not in stream.getvalue()
    assert "****9010" in stream.getvalue()


def test_installing_twice_keeps_one_filter_per_handler_and_all_secrets(captured: io.StringIO) -> None:
    install_record_redaction(["first-secret-value"])
    install_record_redaction(["second-secret-value"])
    log = logging.getLogger("ray.serve.fake_replica")
    (handler,) = [h for h in log.handlers if getattr(h, "stream", None) is captured]
    assert handler.filters == [f for f in handler.filters if type(f).__name__ == "RedactionFilter"]
    assert len(handler.filters) == 1, handler.filters
    log.error("%s and %s", "first-secret-value", "second-secret-value", extra={"card": "-"})
    assert "secret-value" not in captured.getvalue()
