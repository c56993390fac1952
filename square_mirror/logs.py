"""Structured JSON logs that can never carry customer PII or secrets.

Redaction is a structlog processor, so it applies to every line whoever wrote it: keys that name PII or
secrets are masked at any depth, and string values are scrubbed of e-mail addresses, bearer tokens and the
configured secret values. Context (merchant_id, customer_id, event_id) is bound with contextvars per request
or job.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final, TextIO, cast

import orjson
import structlog

REDACTED: Final = "[REDACTED]"

PII_KEYS: Final = frozenset(
    {
        "given_name", "family_name", "nickname", "company_name", "email_address", "email", "phone_number",
        "phone", "address", "address_line_1", "address_line_2", "address_line_3", "locality", "sublocality",
        "postal_code", "first_name", "last_name", "note", "birthday", "tax_ids", "eu_vat", "name_on_card",
    }
)
SECRET_KEYS: Final = frozenset(
    {
        "token", "access_token", "authorization", "signature_key", "signature_keys", "password", "secret",
        "x-square-hmacsha256-signature", "signature", "database_url", "redis_url", "dsn", "cookie",
    }
)
_EMAIL_RE: Final = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_BEARER_RE: Final = re.compile(r"(?i)bearer\s+[\w.~+/=-]+")
_URL_PASSWORD_RE: Final = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@")

_secret_values: tuple[str, ...] = ()


def register_secrets(values: Iterable[str]) -> None:
    """Secret values (tokens, signature keys, URLs with passwords) scrubbed from any logged string."""
    global _secret_values
    _secret_values = tuple(sorted({v for v in values if len(v) >= 6}, key=len, reverse=True))
    _scrubbed.clear()


_scrubbed: dict[str, str] = {}  # short strings already scrubbed: log lines repeat outcomes, types, merchants
_SCRUB_MEMO_MAX_LEN: Final = 128
_SCRUB_MEMO_SIZE: Final = 4096


def _scrub_text(text: str) -> str:
    """:func:`_scrub`, remembered for short strings (bounded: emptied when full, e.g. by unique event IDs)."""
    known = _scrubbed.get(text)
    return known if known is not None else _scrub_and_remember(text)


def _scrub_and_remember(text: str) -> str:
    clean = _scrub(text)
    if len(text) <= _SCRUB_MEMO_MAX_LEN:
        if len(_scrubbed) >= _SCRUB_MEMO_SIZE:
            _scrubbed.clear()
        _scrubbed[text] = clean
    return clean


def _scrub(text: str) -> str:
    # Cheap substring tests first: nearly every logged string has no "@" and no "bearer", and the regexes
    # would otherwise dominate the cost of a log line on the receiver's hot path.
    for secret in _secret_values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "@" in text:
        if "://" in text:
            text = _URL_PASSWORD_RE.sub(r"\g<scheme>\g<user>:" + REDACTED + "@", text)
        text = _EMAIL_RE.sub(REDACTED, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER_RE.sub("Bearer " + REDACTED, text)
    return text


_masked_keys: dict[str, bool] = {}
_PLAIN_TYPES: Final = frozenset({int, float, bool, type(None)})


def _is_masked_key(key: str) -> bool:
    """Whether a key names PII or a secret; remembered per key, since log lines reuse a handful of keys."""
    masked = _masked_keys.get(key)
    if masked is None:
        lowered = key.lower()
        masked = lowered in PII_KEYS or lowered in SECRET_KEYS
        if len(_masked_keys) < 10_000:  # bounded: keys of logged payloads could be anything
            _masked_keys[key] = masked
    return masked


def redact(value: Any, *, depth: int = 0) -> Any:
    """Mask PII and secrets in any JSON-like value, nested containers included."""
    if depth > 20:
        return REDACTED
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return value
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if _is_masked_key(name):
                out[name] = REDACTED if item is not None else None
            else:
                out[name] = redact(item, depth=depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item, depth=depth + 1) for item in value]
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return value


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Numbers, booleans and None (most fields of a line) cost one set lookup; replacing values while iterating
    # is safe, since no key is added or removed.
    masked_keys, scrubbed = _masked_keys, _scrubbed  # _is_masked_key's and _scrub_text's memos, inlined
    for key, value in event_dict.items():
        masked = masked_keys.get(key)
        if masked is None:
            masked = _is_masked_key(key)
        if masked:
            event_dict[key] = REDACTED
        elif type(value) is str:
            clean = scrubbed.get(value)
            event_dict[key] = clean if clean is not None else _scrub_and_remember(value)
        elif type(value) in _PLAIN_TYPES:
            continue
        elif key == "exception":
            event_dict[key] = _scrub_text(str(value))
        else:
            event_dict[key] = redact(value)
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "INFO", *, secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """JSON lines on stdout; the redactor sees every field a caller or the context supplied before rendering.

    The level and timestamp are added after the redactor: they are produced here, never by a caller, so
    scrubbing them would only cost time on every line.
    """
    global _sink
    if _sink is not None:
        _sink.flush()  # the lines waiting in the current sink go out first, in their place
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
            structlog.processors.TimeStamper(fmt="iso", utc=True),
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
                structlog.processors.TimeStamper(fmt="iso", utc=True),
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


def _render(level: str, fields: dict[str, Any]) -> str:
    """A log_line line as structlog renders it: redacted, then level and timestamp added, as one JSON line."""
    time_ns = time.time_ns()
    try:
        redact_processor(None, level, fields)
        fields["level"] = level
        fields["timestamp"] = _utc_timestamp(time_ns)
        return orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()
    except Exception as exc:  # e.g. an integer orjson cannot write: the line says so instead of failing its caller
        return orjson.dumps(
            {"event": "log_line_not_rendered", "logged_event": _scrub_text(str(fields.get("event"))),
             "error": type(exc).__name__, "level": "error", "timestamp": _utc_timestamp(time_ns)},
            option=orjson.OPT_APPEND_NEWLINE,
        ).decode()


class _Sink:
    """Where configure_logging sends lines, and from which level, for :func:`log_line`.

    Inside an event loop, a log_line line waits up to ``LOG_FLUSH_SECONDS`` and goes out with the others of that
    time (at once when ``LOG_FLUSH_LINES`` are waiting): a write and flush per line, and still one per loop
    iteration, were the largest single cost of the receiver's log line (a system call per request or two under
    load). Outside a loop, lines from structlog and the standard library (:class:`_SinkFile`) and :meth:`flush`
    at exit are written at once, after the lines waiting before them.
    """

    __slots__ = ("level", "lock", "pending", "scheduled", "stream")

    def __init__(self, stream: TextIO, level: int) -> None:
        self.stream = stream
        self.level = level
        self.lock = threading.Lock()  # the standard library's lines may come from other threads
        self.pending: list[str] = []
        self.scheduled: asyncio.AbstractEventLoop | None = None  # the loop that will flush what is pending

    def write(self, line: str) -> None:
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
            text, self.pending = "".join(self.pending), []
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


_second: tuple[int, str] = (-1, "")


def _utc_timestamp(time_ns: int) -> str:
    """``time_ns`` as structlog's ISO UTC timestamp (microseconds, ``Z``); the part up to the second formatted
    once per second."""
    global _second
    seconds, micros = divmod(time_ns // 1000, 1_000_000)
    if _second[0] != seconds:
        _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{_second[1]}.{micros:06d}Z"


def log_line(level: str, event: str, fields: dict[str, Any]) -> None:
    """Write the line ``get_logger().<level>(event, **fields)`` would write then, with the same processors, at
    less cost.

    For a hot path: the receiver writes one line per request, and structlog's generic pipeline made that line
    a fifth of the receiver's CPU per request. The line is the same (context variables merged, the same
    redactor, level, ISO timestamp, orjson) and goes to the same stream under the same level filter, written
    with the other lines of the next few milliseconds (see :class:`_Sink`). ``fields`` is consumed (the line is
    rendered into it). Before configure_logging has run, the line goes through structlog as usual.
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
    sink.write(_render(level, fields))


bind_context = structlog.contextvars.bind_contextvars
clear_context = structlog.contextvars.clear_contextvars
bound_context = structlog.contextvars.bound_contextvars
