"""Structured JSON logs that can never carry customer PII or secrets.

Every line, whoever wrote it (structlog, the standard library, :func:`log_line`), goes through the redactor of
square_mirror/redaction.py before it is rendered. Context (merchant_id, customer_id, event_id) is bound with
contextvars per request or job.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, Final, TextIO, cast

import orjson
import structlog

from square_mirror.redaction import redact_processor, register_secrets, scrub_text

_add_timestamp: Final = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "INFO", *, secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """JSON lines on stdout; the redactor sees every field a caller or the context supplied before rendering.

    The level and timestamp are added after the redactor: they are produced here, never by a caller, so
    scrubbing them would only cost time on every line.
    """
    global _sink
    if _sink is not None:
        _sink.flush()  # the lines waiting in the current sink go out first, redacted with the secrets they met
    register_secrets(secrets)
    level_no = getattr(logging, level.upper(), logging.INFO)
    if _sink is None:
        atexit.register(_flush_at_exit)
    _sink = _Sink(stream or sys.stdout, level_no)
    ordered = _SinkFile(_sink)  # other lines go out at once, after the log_line lines waiting before them
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            redact_processor,
            structlog.processors.add_log_level,
            _add_timestamp,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, ordered)),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library (aiohttp, arq) go through the same redactor.
    handler = logging.StreamHandler(ordered)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact_processor,
                structlog.processors.JSONRenderer(serializer=_orjson_dumps),
            ],
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                _add_timestamp,
                structlog.stdlib.add_logger_name,
                structlog.processors.format_exc_info,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_no)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


LOG_FLUSH_SECONDS: Final = 0.02  # how long a log_line line may wait to be written with others
LOG_FLUSH_LINES: Final = 512  # ... or how many lines


# A log_line line waiting to be rendered: level, fields (event and context included), time.time_ns() of the call.
_Entry = tuple[str, dict[str, Any], int]


def _render(level: str, fields: dict[str, Any], time_ns: int) -> str:
    """A log_line line as structlog renders it: redacted, then level and timestamp added, as one JSON line."""
    timestamp = utc_timestamp(time_ns)
    try:
        redact_processor(None, level, fields)
        fields["level"] = level
        fields["timestamp"] = timestamp
        return orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()
    except Exception as exc:  # e.g. an integer orjson cannot write: the line says so instead of failing its caller
        failed = {"event": "log_line_not_rendered", "logged_event": scrub_text(str(fields.get("event"))),
                  "error": type(exc).__name__, "level": "error", "timestamp": timestamp}
        return orjson.dumps(failed, option=orjson.OPT_APPEND_NEWLINE).decode()


class _Sink:
    """Where configure_logging sends lines, and from which level, for :func:`log_line`.

    Inside an event loop, a log_line line waits up to ``LOG_FLUSH_SECONDS`` and goes out with the others of that
    time (at once when ``LOG_FLUSH_LINES`` are waiting): a write and flush per line, and still one per loop
    iteration, were the largest single cost of the receiver's log line (a system call per request or two under
    load). It also waits unrendered (:data:`_Entry`): the lines of a batch are redacted and serialised in one
    loop, which cost the receiver 5-9% less throughput than rendering each at its call between requests
    (docs/performance.md); its timestamp is still the time of the call. Outside a loop, lines from structlog and
    the standard library (:class:`_SinkFile`) and :meth:`flush` at exit are written at once, after the lines
    waiting before them.
    """

    __slots__ = ("level", "lock", "pending", "scheduled", "stream")

    def __init__(self, stream: TextIO, level: int) -> None:
        self.stream = stream
        self.level = level
        self.lock = threading.RLock()  # other threads log too; rendering may log itself (a value's __str__)
        self.pending: list[str | _Entry] = []
        self.scheduled: asyncio.AbstractEventLoop | None = None  # the loop that will flush what is pending

    def write(self, line: str | _Entry) -> None:
        with self.lock:
            self.pending.append(line)
            if len(self.pending) >= LOG_FLUSH_LINES:
                self._write_pending()
            elif self.scheduled is None or not self.scheduled.is_running():
                # Looked up only when no flush is due: asyncio.get_running_loop() makes a getpid system call.
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    self._write_pending()
                    return
                self.scheduled = loop
                loop.call_later(LOG_FLUSH_SECONDS, self.flush)

    def write_now(self, text: str) -> None:
        with self.lock:
            self.pending.append(text)
            self._write_pending()

    def flush(self) -> None:
        with self.lock:
            self._write_pending()

    def _write_pending(self) -> None:
        self.scheduled = None
        if self.pending:
            batch, self.pending = self.pending, []
            text = "".join([line if type(line) is str else _render(*line) for line in batch])
            self.stream.write(text)
            self.stream.flush()


class _SinkFile:
    """The stream structlog and the standard library write to: their lines keep their place among log_line's."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def write(self, text: str) -> int:
        self._sink.write_now(text)
        return len(text)

    def flush(self) -> None:
        """Nothing to do: write_now has flushed the stream."""


_sink: _Sink | None = None


def _flush_at_exit() -> None:
    if _sink is not None:
        with contextlib.suppress(ValueError, OSError):  # the stream may be closed already (pytest's capture)
            _sink.flush()


_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


_second: tuple[int, str] = (-1, "")  # the last second utc_timestamp formatted, and its text


def utc_timestamp(time_ns: int, *, digits: int = 6) -> str:
    """``time_ns`` (``time.time_ns()``) as ISO 8601 UTC with ``digits`` decimals: ``2024-01-02T03:04:05.678901Z``.

    The format of log_line's timestamps (structlog's, with the decimals always written) and, with 3 digits, of a
    job's ``received_at``. The part up to the second is formatted once per second: formatting both per request
    cost the receiver 6-10% of its CPU per request (docs/performance.md).
    """
    global _second
    seconds, fraction = divmod(time_ns, 1_000_000_000)
    if _second[0] != seconds:
        _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{_second[1]}.{fraction // 10 ** (9 - digits):0{digits}d}Z"


def log_line(level: str, event: str, fields: dict[str, Any]) -> None:
    """Write the line ``get_logger().<level>(event, **fields)`` would write then, with the same processors, at
    less cost.

    For a hot path: the receiver writes one line per request, and structlog's generic pipeline made that line
    a fifth of the receiver's CPU per request. The line is the same (context variables merged, the same
    redactor, level, ISO timestamp, orjson) and goes to the same stream under the same level filter, rendered and
    written with the other lines of the next few milliseconds (see :class:`_Sink`). ``fields`` is consumed: it is
    rendered then, so neither it nor its values may change after the call. Before configure_logging has run, the
    line goes through structlog as usual.
    """
    sink = _sink
    if sink is None:
        getattr(structlog.get_logger(), level)(event, **fields)
        return
    if _LEVELS[level] < sink.level:
        return
    fields["event"] = event
    context = structlog.contextvars.get_contextvars()
    if context:
        for key, value in context.items():
            fields.setdefault(key, value)
    sink.write((level, fields, time.time_ns()))


bind_context = structlog.contextvars.bind_contextvars
clear_context = structlog.contextvars.clear_contextvars
bound_context = structlog.contextvars.bound_contextvars
