"""The receiver's HTTP handlers: the webhook endpoint, health, readiness and metrics.

The webhook handler checks in the cheapest-first, least-revealing order: size (413), signature (401, the
same answer for a missing and a wrong one, and nothing of the body is parsed before it), content type (415),
JSON and envelope (400), then the enqueue (200 only once Redis acknowledged, else 503). Every request ends in
exactly one metric update and one log line, written in one place.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from redis.asyncio import Redis

from square_mirror.constants import QUEUED_EVENT_TYPES
from square_mirror.jobs import InvalidEnvelope, build_event_job
from square_mirror.logs import get_logger, log_line, utc_timestamp
from webhooks import metrics as m
from webhooks.enqueue import BatchEnqueuer, QueueUnavailable
from webhooks.signature import SIGNATURE_HEADER, verify_signature

_log = get_logger("webhooks")

_STATUS: Final = {
    m.ENQUEUED: 200,
    m.DUPLICATE: 200,
    m.IGNORED: 200,
    m.BAD_REQUEST: 400,
    m.UNAUTHORIZED: 401,
    m.TOO_LARGE: 413,
    m.TIMEOUT: 408,
    m.UNSUPPORTED_MEDIA_TYPE: 415,
    m.ERROR: 500,
    m.UNAVAILABLE: 503,
}
# Fixed bodies: a refusal says what class of problem it was and nothing more.
_BODY: Final = {
    m.ENQUEUED: b'{"status":"queued"}',
    m.DUPLICATE: b'{"status":"duplicate"}',
    m.IGNORED: b'{"status":"ignored"}',
    m.BAD_REQUEST: b'{"error":"bad request"}',
    m.UNAUTHORIZED: b'{"error":"unauthorized"}',
    m.TOO_LARGE: b'{"error":"payload too large"}',
    m.TIMEOUT: b'{"error":"request body not received in time"}',
    m.UNSUPPORTED_MEDIA_TYPE: b'{"error":"content type must be application/json"}',
    m.ERROR: b'{"error":"internal error"}',
    m.UNAVAILABLE: b'{"error":"queue unavailable, retry later"}',
}


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """What the webhook handler needs besides Redis, resolved once when the app is built."""

    signature_keys: tuple[str, ...]
    notification_url: str
    max_body_bytes: int
    redis_timeout: float
    body_timeout: float


@dataclass(slots=True)
class _Verdict:
    outcome: str
    event_type: str = m.UNKNOWN_TYPE
    event_id: str | None = None
    merchant_id: str | None = None
    reason: str | None = None


class Views:
    """The handlers, bound to one app's config, enqueuer, Redis client and metrics."""

    def __init__(
        self, config: ReceiverConfig, enqueuer: BatchEnqueuer, redis: Redis, metrics: m.WebhookMetrics
    ) -> None:
        self.config = config
        self.enqueuer = enqueuer
        self.redis = redis
        self.metrics = metrics

    async def webhook(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        self.metrics.in_flight_count += 1
        try:
            verdict = await self._handle(request)
        except Exception as exc:
            verdict = _Verdict(m.ERROR, reason=type(exc).__name__)
            _log.exception("webhook_handler_failed")
        finally:
            self.metrics.in_flight_count -= 1
        elapsed = time.perf_counter() - started
        self.metrics.observe_request(verdict.outcome, verdict.event_type, elapsed)
        status = _STATUS[verdict.outcome]
        fields: dict[str, Any] = {
            "outcome": verdict.outcome,
            "status": status,
            "event_id": verdict.event_id,
            "type": verdict.event_type,
            "merchant_id": verdict.merchant_id,
            "latency_ms": round(elapsed * 1000, 2),
        }
        # Optional fields only when present: every logged field goes through the redactor, which is not free.
        if verdict.reason is not None:
            fields["reason"] = verdict.reason
        retry_number = _retry_number(request)
        if retry_number is not None:
            fields["retry_number"] = retry_number
        log_line("info" if status < 400 else "warning", "webhook", fields)
        return web.Response(status=status, body=_BODY[verdict.outcome], content_type="application/json")

    async def _handle(self, request: web.Request) -> _Verdict:
        received_at = utc_timestamp(time.time_ns(), digits=3)
        max_body_bytes = self.config.max_body_bytes
        try:
            # A body that arrived with the head (Square's case) is taken as it lies in the buffer: no timer, no
            # copy, none of read()'s loop (so request.read() after this handler would return b""). Empty means
            # no body yet, none at all, or one a middleware read already (read() returns that one). Otherwise
            # the body is bounded in size, by its Content-Length before anything is read and by the app's
            # client_max_size while it streams in (chunked), and in time: a client that trickles it (slow
            # loris) is answered 408 instead of holding a handler forever.
            raw = request.content.read_nowait() if request.content.is_eof() else b""
            if not raw:
                length = request.content_length
                if length is not None and length > max_body_bytes:
                    return _Verdict(m.TOO_LARGE)
                async with asyncio.timeout(self.config.body_timeout):
                    raw = await request.read()
            if len(raw) > max_body_bytes:
                return _Verdict(m.TOO_LARGE)
        except TimeoutError:
            return _Verdict(m.TIMEOUT, reason="body timeout")
        except web.HTTPRequestEntityTooLarge:
            return _Verdict(m.TOO_LARGE)
        except (OSError, HttpProcessingError):  # the client went away or sent a broken body
            return _Verdict(m.BAD_REQUEST, reason="body not received")
        if not verify_signature(
            self.config.signature_keys, self.config.notification_url, raw, request.headers.get(SIGNATURE_HEADER)
        ):
            return _Verdict(m.UNAUTHORIZED)
        # Square sends exactly this header; anything else (parameters, odd case) goes through aiohttp's parser.
        if request.headers.get("Content-Type") != "application/json" and request.content_type != "application/json":
            return _Verdict(m.UNSUPPORTED_MEDIA_TYPE)
        try:
            envelope: Any = orjson.loads(raw)  # also refuses bytes that are not UTF-8
        except orjson.JSONDecodeError:
            return _Verdict(m.BAD_REQUEST, reason="invalid JSON")
        if not isinstance(envelope, dict):
            return _Verdict(m.BAD_REQUEST, reason="body is not a JSON object")
        verdict = _Verdict(
            m.BAD_REQUEST,
            event_type=m.event_type_label(envelope.get("type")),
            event_id=_short_str(envelope.get("event_id")),
            merchant_id=_short_str(envelope.get("merchant_id")),
        )
        try:
            payload = build_event_job(envelope, received_at=received_at)
        except InvalidEnvelope as exc:
            verdict.reason = str(exc)
            return verdict
        if payload["type"] not in QUEUED_EVENT_TYPES:
            verdict.outcome = m.IGNORED
            return verdict
        try:
            queued = await self.enqueuer.enqueue(payload["event_id"], payload)
        except QueueUnavailable as exc:
            self.metrics.enqueue_failures.labels(verdict.event_type, exc.reason).inc()
            verdict.outcome, verdict.reason = m.UNAVAILABLE, exc.reason
            return verdict
        verdict.outcome = m.ENQUEUED if queued else m.DUPLICATE
        return verdict

    async def healthz(self, _request: web.Request) -> web.Response:
        """Alive: the process answers HTTP. Says nothing about Redis, so a Redis outage never restarts it."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        """Ready: Redis answers a PING within the enqueue timeout, so events can be queued right now."""
        try:
            async with asyncio.timeout(self.config.redis_timeout):
                await self.redis.ping()
        except Exception:
            return web.json_response({"status": "unavailable", "redis": "unreachable"}, status=503)
        return web.json_response({"status": "ready", "redis": "ok"})

    async def metrics_view(self, _request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = self.metrics.content_type
        return response


def _retry_number(request: web.Request) -> int | None:
    """Square's ``square-retry-number`` header as a number (an untrusted header never reaches a log verbatim)."""
    value = request.headers.get("square-retry-number")
    if value is None:  # a first delivery
        return None
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 6 else None


def _short_str(value: object) -> str | None:
    """An identifier fit for a log line (already validated by build_event_job when it matters)."""
    if isinstance(value, str) and len(value) <= 256:
        return value
    return None
