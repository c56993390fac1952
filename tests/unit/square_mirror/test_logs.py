from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator, Sequence

import pytest

from square_mirror.logs import (
    LOG_FLUSH_LINES,
    LOG_FLUSH_SECONDS,
    bound_context,
    configure_logging,
    get_logger,
    log_line,
    utc_timestamp,
)
from square_mirror.redaction import REDACTED

CUSTOMER = {
    "id": "CUST1",
    "given_name": "Amelia",
    "family_name": "Earhart",
    "email_address": "amelia.earhart@example.com",
    "phone_number": "+12065551212",
    "address": {"address_line_1": "500 Electric Ave", "locality": "New York"},
    "note": "likes window seats",
    "birthday": "1897-07-24",
    "version": 3,
}
PII_VALUES = ("Amelia", "Earhart", "amelia.earhart@example.com", "+12065551212", "500 Electric Ave",
              "window seats", "1897-07-24")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Logging at DEBUG to an in-memory stream, with two secrets to scrub; the default is restored after."""
    stream = io.StringIO()
    configure_logging("DEBUG", secrets=["EAAA-very-secret-token", "sig-key-123456"], stream=stream)
    yield stream
    configure_logging("INFO")


MemoryLog = Callable[..., io.StringIO]


@pytest.fixture
def memory_log() -> Iterator[MemoryLog]:
    """Configures logging to a fresh in-memory stream (``level``, ``secrets``); the default is restored after."""

    def configure(level: str = "INFO", secrets: Sequence[str] = ()) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(level, secrets=secrets, stream=stream)
        return stream

    yield configure
    configure_logging("INFO")


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_pii_fields_are_redacted_at_any_depth(log_stream: io.StringIO) -> None:
    get_logger().info("fetched", response={"customer": CUSTOMER}, customers=[CUSTOMER], **CUSTOMER)
    output = log_stream.getvalue()
    for value in PII_VALUES:
        assert value not in output
    line = _lines(log_stream)[0]
    assert line["id"] == "CUST1" and line["version"] == 3
    assert line["given_name"] == REDACTED


def test_secrets_and_emails_are_scrubbed_from_free_text(log_stream: io.StringIO) -> None:
    get_logger().warning(
        "call failed with header Authorization: Bearer EAAA-very-secret-token for bob@example.org",
        detail="key sig-key-123456 rejected",
        dsn_hint="postgresql://app:pw123456@db/mirror",
    )
    output = log_stream.getvalue()
    assert "call failed" in output and REDACTED in output  # the line was written, redacted
    for leaked in ("EAAA-very-secret-token", "bob@example.org", "sig-key-123456", "pw123456"):
        assert leaked not in output
    assert "call failed with header Authorization" in output and REDACTED in output  # written, and scrubbed


def test_context_is_bound_and_lines_are_json(log_stream: io.StringIO) -> None:
    with bound_context(merchant_id="M1", customer_id="C1", event_id="E1"):
        get_logger().info("applied", outcome="applied")
    get_logger().info("after")
    first, second = _lines(log_stream)
    assert (first["merchant_id"], first["customer_id"], first["event_id"]) == ("M1", "C1", "E1")
    assert first["level"] == "info" and "timestamp" in first
    assert "merchant_id" not in second


def test_standard_library_logging_goes_through_the_redactor(log_stream: io.StringIO) -> None:
    import logging

    logging.getLogger("some.library").error("request to %s failed", "carol@example.net")
    output = log_stream.getvalue()
    assert "carol@example.net" not in output and "request to" in output


def test_log_line_writes_the_line_structlog_writes(log_stream: io.StringIO) -> None:
    fields = {"outcome": "enqueued", "status": 200, "event_id": "E1", "detail": "from bob@example.org",
              "email_address": "x@y.io", "latency_ms": 1.25, "nothing": None}
    with bound_context(merchant_id="M1"):
        get_logger().warning("webhook", **fields)
        log_line("warning", "webhook", dict(fields))
    via_structlog, direct = _lines(log_stream)
    assert direct.pop("timestamp") and via_structlog.pop("timestamp")
    assert direct == via_structlog
    assert direct["merchant_id"] == "M1" and direct["email_address"] == REDACTED
    assert "bob@example.org" not in log_stream.getvalue()


def test_log_line_honours_the_configured_level(memory_log: MemoryLog) -> None:
    stream = memory_log("WARNING")
    log_line("info", "webhook", {"outcome": "enqueued"})
    log_line("warning", "webhook", {"outcome": "unauthorized"})
    assert [line["outcome"] for line in _lines(stream)] == ["unauthorized"]


async def test_log_line_inside_an_event_loop_writes_lines_together_shortly_after_in_order(
    memory_log: MemoryLog,
) -> None:
    stream = memory_log()
    for n in range(3):
        log_line("info", "webhook", {"n": n})
    await asyncio.sleep(0)
    assert stream.getvalue() == ""  # one write for many lines, not one per line or per loop iteration
    await asyncio.sleep(LOG_FLUSH_SECONDS * 2)
    assert [line["n"] for line in _lines(stream)] == [0, 1, 2]


async def test_a_full_log_buffer_is_written_at_once(memory_log: MemoryLog) -> None:
    stream = memory_log()
    for n in range(LOG_FLUSH_LINES):
        log_line("info", "webhook", {"n": n})
    assert len(_lines(stream)) == LOG_FLUSH_LINES  # bounded memory, whatever the rate


async def test_other_lines_keep_their_place_after_waiting_log_line_lines(memory_log: MemoryLog) -> None:
    stream = memory_log()
    log_line("info", "webhook", {"n": 1})
    get_logger().info("stopping")  # written at once, so the waiting line goes first
    assert [line["event"] for line in _lines(stream)] == ["webhook", "stopping"]


def test_lines_left_waiting_by_an_ended_event_loop_go_out_with_the_next_loops_lines(memory_log: MemoryLog) -> None:
    stream = memory_log()

    async def log_and_leave(n: int) -> None:
        log_line("info", "webhook", {"n": n})  # the loop ends before its flush is due

    async def log_and_wait(n: int) -> None:
        log_line("info", "webhook", {"n": n})
        await asyncio.sleep(LOG_FLUSH_SECONDS * 3)

    asyncio.run(log_and_leave(1))
    asyncio.run(log_and_wait(2))  # e.g. a command that runs one loop after another
    assert [line["n"] for line in _lines(stream)] == [1, 2]
    log_line("info", "webhook", {"n": 3})  # outside any loop: written at once
    assert [line["n"] for line in _lines(stream)] == [1, 2, 3]


def test_a_string_logged_before_it_was_registered_as_a_secret_is_scrubbed_after(log_stream: io.StringIO) -> None:
    log_line("info", "webhook", {"merchant_id": "later-secret-value"})  # clean then
    configure_logging("DEBUG", secrets=["later-secret-value"], stream=log_stream)
    log_line("info", "webhook", {"merchant_id": "later-secret-value"})
    assert [line["merchant_id"] for line in _lines(log_stream)] == ["later-secret-value", REDACTED]


async def test_a_waiting_line_keeps_the_time_it_was_made_and_a_line_that_cannot_render_sinks_no_other(
    memory_log: MemoryLog,
) -> None:
    import datetime
    import time

    stream = memory_log()
    before_us = time.time_ns() // 1000
    log_line("info", "webhook", {"n": 1})
    after_us = time.time_ns() // 1000  # before the flush, which is due LOG_FLUSH_SECONDS later at the earliest
    log_line("info", "webhook", {"n": 2 ** 70})  # orjson refuses integers past 64 bits
    log_line("info", "webhook", {"n": 3, "email_address": "bob@example.org"})
    await asyncio.sleep(LOG_FLUSH_SECONDS * 3)
    first, second, third = _lines(stream)
    stamped = datetime.datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00"))
    stamped_us = (stamped - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)) // datetime.timedelta(microseconds=1)
    assert before_us <= stamped_us <= after_us  # the time it was made, not when it was written
    assert (second["event"], second["logged_event"], second["level"]) == ("log_line_not_rendered", "webhook", "error")
    assert third["n"] == 3 and third["email_address"] == REDACTED


def test_a_value_that_logs_while_its_line_renders_does_not_deadlock_the_sink(memory_log: MemoryLog) -> None:
    import threading

    stream = memory_log()

    class Loud:
        def __str__(self) -> str:
            get_logger().info("rendering_logged")
            return "loud"

    async def log_it() -> None:
        log_line("info", "webhook", {"detail": Loud()})
        await asyncio.sleep(LOG_FLUSH_SECONDS * 3)

    thread = threading.Thread(target=asyncio.run, args=(log_it(),), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert sorted(line["event"] for line in _lines(stream)) == ["rendering_logged", "webhook"]


async def test_waiting_lines_are_redacted_against_the_secrets_they_were_logged_under(memory_log: MemoryLog) -> None:
    stream = memory_log(secrets=["rotated-away-secret"])
    log_line("info", "webhook", {"note_to_self": "token rotated-away-secret"})
    configure_logging("INFO", secrets=[], stream=stream)  # before the line's flush was due
    await asyncio.sleep(LOG_FLUSH_SECONDS * 3)
    assert "rotated-away-secret" not in stream.getvalue()
    assert _lines(stream)[0]["note_to_self"] == f"token {REDACTED}"


def test_utc_timestamp_is_iso_utc_with_the_decimals_asked_for_across_seconds() -> None:
    import datetime
    import time

    second = 1_704_164_645  # 2024-01-02T03:04:05Z
    assert utc_timestamp(second * 10**9 + 678_901_234) == "2024-01-02T03:04:05.678901Z"
    assert utc_timestamp(second * 10**9 + 678_901_234, digits=3) == "2024-01-02T03:04:05.678Z"
    assert utc_timestamp((second + 1) * 10**9 + 5_000_000, digits=3) == "2024-01-02T03:04:06.005Z"  # the next second
    assert utc_timestamp(second * 10**9) == "2024-01-02T03:04:05.000000Z"  # back again
    now = time.time_ns()
    expected = datetime.datetime.fromtimestamp(now // 1000 / 1e6, datetime.UTC).isoformat(timespec="microseconds")
    assert utc_timestamp(now) == expected.replace("+00:00", "Z")


def test_custom_attribute_values_are_redacted_wherever_they_are_logged(log_stream: io.StringIO) -> None:
    from square_mirror.jobs import build_event_job
    from tests.factories import custom_attribute, custom_attribute_event

    secrets = ("Allergic to peanuts", "+14155550123", "1 Private Lane")
    attributes = [custom_attribute(key="note", value=secrets[0]), custom_attribute(key="mobile", value=secrets[1]),
                  custom_attribute(key="home", value={"address_line_1": secrets[2], "locality": "Oakland"})]
    for attribute in attributes:
        payload = build_event_job(custom_attribute_event(attribute, customer_id="CUST1"))
        get_logger().info("job", payload=payload, **payload)
        get_logger().info("listed", custom_attributes=[attribute], custom_attribute=attribute)
    output = log_stream.getvalue()
    assert "CUST1" in output  # the lines were written
    for value in secrets:
        assert value not in output
