"""Unit tests of the JSON log format, request ids and redaction of card numbers and credentials."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.logging_setup import (
    REDACTED,
    Redactor,
    clean_request_id,
    configure_logging,
    request_context,
    request_id_var,
)

CARD = "4111111111111111"
API_KEY = "k3y-0f-the-c0mpany-Zq9"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """configure_logging into a buffer; the root logger's handlers and level are restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("DEBUG", secrets=[API_KEY], stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_line_with_the_request_id(log_stream: io.StringIO) -> None:
    log = logging.getLogger("serve_app.test")
    with request_context("req-42") as rid:
        log.info("scored %d transactions", 3, extra={"batch_size": 3})
    log.warning("outside")
    inside, outside = _lines(log_stream)
    assert rid == "req-42"
    assert inside["message"] == "scored 3 transactions"
    assert inside["request_id"] == "req-42"
    assert inside["batch_size"] == 3
    assert inside["level"] == "INFO"
    assert inside["logger"] == "serve_app.test"
    assert inside["ts"].endswith("+00:00")
    assert outside["request_id"] is None
    assert request_id_var.get() is None


def test_card_number_in_message_args_and_extra_fields_is_masked(log_stream: io.StringIO) -> None:
    log = logging.getLogger("serve_app.test")
    log.info(f"payment with card {CARD} refused")
    log.info("payment with card %s", "4111 1111 1111 1111")
    log.info("payload", extra={"card": CARD, "as_int": int(CARD), "nested": {"pan": [f"x{CARD}y"]}})
    text = log_stream.getvalue()
    assert CARD not in text
    assert "4111 1111 1111 1111" not in text
    first, second, third = _lines(log_stream)
    assert first["message"] == "payment with card [PAN ****1111] refused"
    assert second["message"] == "payment with card [PAN ****1111]"
    assert third["card"] == "[PAN ****1111]"
    assert third["as_int"] == "[PAN ****1111]"
    assert third["nested"] == {"pan": ["x[PAN ****1111]y"]}


def test_a_card_number_in_a_traceback_is_masked(log_stream: io.StringIO) -> None:
    log = logging.getLogger("serve_app.test")
    try:
        raise ValueError(f"bad card {CARD}")
    except ValueError:
        log.exception("scoring failed")
    (line,) = _lines(log_stream)
    assert "ValueError: bad card [PAN ****1111]" in line["exception"]
    assert CARD not in log_stream.getvalue()


def test_keys_and_passwords_are_never_logged(log_stream: io.StringIO) -> None:
    log = logging.getLogger("serve_app.test")
    log.info("request headers", extra={"headers": {"X-API-Key": "abc123", "accept": "json"}})
    log.info("auth failed for key %s", API_KEY)
    log.info("connecting to redis://:s3cret@redis:6380/0 with api_key=zzz9")
    log.info("settings", extra={"api_keys": "a,b", "admin_key": "c"})
    text = log_stream.getvalue()
    for secret in ("abc123", API_KEY, "s3cret", "zzz9"):
        assert secret not in text, secret
    headers, auth, url, fields = _lines(log_stream)
    assert headers["headers"] == {"X-API-Key": REDACTED, "accept": "json"}
    assert auth["message"] == f"auth failed for key {REDACTED}"
    assert f"redis://:{REDACTED}@redis:6380/0" in url["message"]
    assert fields["api_keys"] == REDACTED
    assert fields["admin_key"] == REDACTED


@pytest.mark.parametrize(
    "text",
    ["amount 123456789012 EUR", "run 123456789012345678901 of a 21-digit id", "ts 2026-01-31T23:15:00Z"],
)
def test_other_numbers_are_left_alone(text: str) -> None:
    assert Redactor().text(text) == text


@settings(max_examples=200, deadline=None)
@given(
    digits=st.text(alphabet="0123456789", min_size=13, max_size=19),
    prefix=st.text(alphabet="abc :=-_/", max_size=8),
    suffix=st.text(alphabet="abc :=-_/", max_size=8),
)
def test_no_13_to_19_digit_run_survives(digits: str, prefix: str, suffix: str) -> None:
    redacted = Redactor().text(f"{prefix}{digits}{suffix}")
    assert digits not in redacted
    assert f"[PAN ****{digits[-4:]}]" in redacted


def test_configuring_twice_keeps_one_handler(log_stream: io.StringIO) -> None:
    root = logging.getLogger()
    second = io.StringIO()
    configure_logging("INFO", stream=second)
    assert len(root.handlers) == 1
    logging.getLogger("serve_app.test").debug("dropped at INFO")
    logging.getLogger("serve_app.test").info("kept")
    assert [line["message"] for line in _lines(second)] == ["kept"]
    assert log_stream.getvalue() == ""


def test_request_ids_do_not_leak_between_concurrent_tasks(log_stream: io.StringIO) -> None:
    log = logging.getLogger("serve_app.test")

    async def handle(rid: str) -> None:
        with request_context(rid):
            for step in range(3):
                await asyncio.sleep(0)  # interleave the two tasks
                log.info("step %d", step, extra={"expected": rid})

    async def main() -> None:
        await asyncio.gather(handle("req-a"), handle("req-b"))

    asyncio.run(main())
    lines = [line for line in _lines(log_stream) if line["logger"] == "serve_app.test"]
    assert len(lines) == 6
    assert {line["request_id"] for line in lines} == {"req-a", "req-b"}
    assert all(line["request_id"] == line["expected"] for line in lines)


@pytest.mark.parametrize("hostile", ["abc\ndef", "x" * 200, f"id-{CARD}", "", None, "a b"])
def test_unsafe_client_request_ids_are_replaced(hostile: str | None) -> None:
    rid = clean_request_id(hostile)
    assert rid != hostile
    assert len(rid) == 32


def test_a_sane_client_request_id_is_kept() -> None:
    assert clean_request_id("client-7f3a:01") == "client-7f3a:01"


def test_handlers_installed_before_are_replaced_so_nothing_logs_unredacted(log_stream: io.StringIO) -> None:
    plain = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(plain))
    configure_logging("INFO", stream=log_stream)
    logging.getLogger("serve_app.test").info("card %s", CARD)
    assert plain.getvalue() == ""
    assert _lines(log_stream)[0]["message"] == "card [PAN ****1111]"
