"""Hostile input against the receiver while valid deliveries keep flowing.

The receiver runs on a real port in a thread of its own (its own event loop), so that hypothesis drives it
synchronously, example by example, with shrinking, while another thread delivers valid signed events the whole
time. Every hostile request must get a 4xx (never a 5xx), the process must keep serving, and afterwards the
queue must hold exactly the valid events, each once: nothing a bad request carried is ever enqueued.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import event, signed_headers
from tests.integration.webhooks.support import KEY, NOTIFICATION_URL, PATH, PrivateRedis, queued_jobs, settings_for
from webhooks.app import create_app

MAX_BODY = 4096
BODY_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.5


@dataclass
class ThreadedReceiver:
    """A receiver (``create_app``, served like ``webhooks.cli.serve``) on its own loop in a thread."""

    redis_url: str
    port: int = 0
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    app: web.Application | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "receiver did not start"

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.app = create_app(settings_for(self.redis_url, max_body=MAX_BODY), body_timeout=BODY_TIMEOUT)
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5, keepalive_timeout=IDLE_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        # Connections that never completed a request (slow loris) still have handler tasks: end them here.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def stop(self) -> None:
        assert self._stop is not None and self._thread is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        self.loop.close()

    def metric_outcomes(self) -> dict[str, float]:
        assert self.app is not None
        from webhooks.app import METRICS_KEY

        text = self.app[METRICS_KEY].render().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("square_mirror_webhook_requests_total{"):
                labels, value = line.rsplit(" ", 1)
                outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
                out[outcome] = out.get(outcome, 0.0) + float(value)
        return out


def envelope(event_id: str, n: int = 1) -> dict[str, Any]:
    return event(n, merchant_id="MLFUZZ", event_id=event_id)


@dataclass(frozen=True)
class Hostile:
    """One hostile request and the statuses it may get."""

    kind: str
    body: bytes
    headers: dict[str, str]
    allowed: frozenset[int]
    method: str = "POST"
    path: str = PATH
    chunked: bool = False


_counter = iter(range(10**9))


def _bad_id() -> str:
    return f"bad-{next(_counter)}"


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)


_WRONG_VALUES = st.sampled_from([None, 0, 1.5, True, [], {}, "", "   ", "x" * 300])


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> Hostile:
    """A signed, well-typed JSON request whose envelope misses or mistypes a field the job needs: 400."""
    doc = envelope(_bad_id())
    target = draw(st.sampled_from(["merchant_id", "type", "event_id", "data", "data.id"]))
    drop = draw(st.booleans())
    holder, key = (doc["data"], "id") if target == "data.id" else (doc, target)
    if drop:
        del holder[key]
    else:
        wrong = draw(_WRONG_VALUES if target != "data" else st.sampled_from([[], "data", 7, True]))
        holder[key] = wrong
    body = orjson.dumps(doc)
    return Hostile("malformed envelope", body, signed_headers(body), frozenset({400}))


@st.composite
def signed_garbage(draw: st.DrawFn) -> Hostile:
    """Correctly signed bytes that are not a JSON object (binary, broken JSON, other JSON values): 400."""
    body = draw(st.one_of(
        st.binary(min_size=0, max_size=512),
        st.builds(lambda v: json.dumps(v).encode(), _json_values().filter(lambda v: not isinstance(v, dict))),
        st.builds(lambda n: orjson.dumps(envelope(_bad_id()))[:n], st.integers(1, 60)),
        st.just(b"\xff\xfe{\x00}"),
    ))
    # An empty body never passes the signature check (verify_signature refuses it): 401, not 400.
    return Hostile("signed garbage", body, signed_headers(body), frozenset({400} if body else {401}))


@st.composite
def wrongly_signed(draw: st.DrawFn) -> Hostile:
    """A valid-looking event whose signature is missing, garbage, made with another key or URL, or for another
    body: 401, and the event must never be queued."""
    body = orjson.dumps(envelope(_bad_id()))
    how = draw(st.sampled_from(["missing", "garbage", "other key", "other url", "other body", "empty"]))
    headers = {"Content-Type": "application/json"}
    if how == "garbage":
        headers["x-square-hmacsha256-signature"] = draw(st.text(
            st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=88))
    elif how == "other key":
        headers.update(signed_headers(body, key=draw(st.text(min_size=1, max_size=20).filter(lambda k: k != KEY))))
    elif how == "other url":
        headers.update(signed_headers(body, url=NOTIFICATION_URL + draw(st.sampled_from(["/", "?x=1", "x"]))))
    elif how == "other body":
        headers.update(signed_headers(body + b" "))
    elif how == "empty":
        headers["x-square-hmacsha256-signature"] = ""
    return Hostile(f"wrongly signed ({how})", body, headers, frozenset({401}))


@st.composite
def wrong_content_type(draw: st.DrawFn) -> Hostile:
    body = orjson.dumps(envelope(_bad_id()))
    ctype = draw(st.sampled_from([None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx",
                                  "text/html; charset=utf-8", "multipart/form-data; boundary=x"]))
    return Hostile("wrong content type", body, signed_headers(body, content_type=ctype), frozenset({415}))


@st.composite
def oversize(draw: st.DrawFn) -> Hostile:
    """Bodies above the limit, declared or chunked, signed or not: 413 before anything is parsed."""
    size = draw(st.integers(MAX_BODY + 1, MAX_BODY * 4))
    doc = envelope(_bad_id())
    doc["padding"] = "p" * size
    body = orjson.dumps(doc)
    headers = signed_headers(body) if draw(st.booleans()) else {"Content-Type": "application/json"}
    return Hostile("oversize", body, headers, frozenset({413}), chunked=draw(st.booleans()))


@st.composite
def wrong_route(draw: st.DrawFn) -> Hostile:
    body = orjson.dumps(envelope(_bad_id()))
    method, path, allowed = draw(st.sampled_from([
        ("GET", PATH, {405}), ("PUT", PATH, {405}), ("DELETE", PATH, {405}), ("POST", PATH + "/x", {404}),
        ("POST", "/", {404}), ("POST", "/healthz", {405}),
    ]))
    return Hostile("wrong route", body, signed_headers(body), frozenset(allowed), method=method, path=path)


HOSTILE = st.one_of(mutated_envelopes(), signed_garbage(), wrongly_signed(), wrong_content_type(), oversize(),
                    wrong_route())


def send(port: int, method: str, path: str, body: bytes, headers: dict[str, str],
         chunked: bool = False) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        if chunked:
            conn.request(method, path, body=iter([body[i:i + 1000] for i in range(0, len(body), 1000)]),
                         headers=headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class ValidTraffic:
    """Valid signed deliveries sent back to back from a thread for as long as the fuzzing lasts.

    Only correctness is checked here (every valid delivery is answered 200 ``queued``); how fast they are answered
    is measured by bench/webhooks.py, not asserted by a test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: list[str] = []
        self.failures: list[tuple[str, int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> ValidTraffic:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def delivered(self) -> list[str]:
        with self._lock:
            return list(self.sent)

    def wait_for_more_than(self, count: int, timeout: float = 60.0) -> int:
        """Poll until more than ``count`` valid deliveries were answered; returns how many. The deadline only
        fails a receiver that stopped serving valid deliveries."""
        deadline = time.monotonic() + timeout
        while len(self.delivered()) <= count:
            assert not self.failures, self.failures[:3]
            assert time.monotonic() < deadline, f"no valid delivery answered in {timeout:.0f} s (after {count})"
            time.sleep(0.005)
        return len(self.delivered())

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            event_id = f"good-{n}"
            body = orjson.dumps(envelope(event_id, n))
            status, text = send(self.port, "POST", PATH, body, signed_headers(body))
            if status == 200 and orjson.loads(text) == {"status": "queued"}:
                with self._lock:
                    self.sent.append(event_id)
            else:
                self.failures.append((event_id, status, text))
            time.sleep(0.002)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A redis-server of the test's own: these assertions are about the exact queue contents, which a concurrent
    test session sharing a logical database of the shared Redis (and flushing it) would disturb."""
    server = PrivateRedis()
    server.start()
    yield server.url
    server.close()


@pytest.fixture
def receiver(redis_url: str) -> Iterator[ThreadedReceiver]:
    running = ThreadedReceiver(redis_url)
    running.start()
    yield running
    running.stop()


async def test_thousands_of_hostile_requests_get_4xx_and_only_valid_events_are_queued_once(
    receiver: ThreadedReceiver, redis_url: str
) -> None:
    seen: dict[str, int] = {}
    replays = 0
    # Every 100 hostile requests, the fuzzing waits until at least one more valid delivery was answered: valid
    # traffic provably flows during the whole fuzzing, whatever the threads' scheduling on a loaded machine
    # (counting "more than 50 valid events" after the fact assumed both threads advanced at similar rates).
    checkpoints = 0
    delivered_at_checkpoint = 0

    with ValidTraffic(receiver.port) as valid:

        @settings(max_examples=1500, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(hostile=HOSTILE)
        def hostile_requests_are_refused(hostile: Hostile) -> None:
            nonlocal checkpoints, delivered_at_checkpoint
            status, body = send(receiver.port, hostile.method, hostile.path, hostile.body, hostile.headers,
                                hostile.chunked)
            seen[hostile.kind] = seen.get(hostile.kind, 0) + 1
            assert status in hostile.allowed, (hostile.kind, status, body[:200])
            if sum(seen.values()) % 100 == 0:
                delivered_at_checkpoint = valid.wait_for_more_than(delivered_at_checkpoint)
                checkpoints += 1

        @settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(pick=st.integers(min_value=0))
        def replayed_deliveries_are_duplicates(pick: int) -> None:
            nonlocal replays
            done = valid.delivered()
            if not done:
                return
            event_id = done[pick % len(done)]
            n = int(event_id.split("-")[1])
            body = orjson.dumps(envelope(event_id, n))
            status, text = send(receiver.port, "POST", PATH, body, {**signed_headers(body), "square-retry-number": "1"})
            replays += 1
            assert (status, orjson.loads(text)) == (200, {"status": "duplicate"})

        # Blocking here is fine: the receiver and the valid traffic run on threads of their own.
        valid.wait_for_more_than(0)  # the replays need delivered events to replay
        hostile_requests_are_refused()
        replayed_deliveries_are_duplicates()

    assert valid.failures == []
    assert checkpoints >= 15 and len(valid.sent) >= checkpoints, "valid traffic must flow during the whole fuzzing"
    assert sum(seen.values()) >= 1500 and replays >= 250
    outcomes = receiver.metric_outcomes()
    assert outcomes.get("error", 0) == 0 and outcomes.get("unavailable", 0) == 0
    queued = [job.job_id for job in await queued_jobs(redis_url)]
    assert sorted(queued) == sorted(valid.sent), "exactly the valid events are queued, each once"
    print(f"hostile requests by kind: {seen}; replays {replays}; valid events queued {len(valid.sent)}")


NEVER_CLOSED = b"(the server neither answered nor closed the connection)"
SLOW_CLIENT_PATIENCE = 30.0  # seconds a slow client waits for the server's answer or close (the server's: ~1.5)


def _slow_client(port: int, chunks: list[bytes], pause: float, results: list[tuple[str, bytes]], name: str) -> None:
    """Sends ``chunks`` with ``pause`` seconds between them, then reads whatever the server answers until it
    closes the connection (``b""``); ``NEVER_CLOSED`` if it still held the connection open after
    ``SLOW_CLIENT_PATIENCE`` seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=SLOW_CLIENT_PATIENCE)
    try:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break
            time.sleep(pause)
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            answer = NEVER_CLOSED
        except OSError:  # reset: closed by the server
            answer = b""
        results.append((name, answer))
    finally:
        sock.close()


async def test_slow_loris_clients_are_timed_out_without_slowing_valid_deliveries(
    receiver: ThreadedReceiver, redis_url: str
) -> None:
    body = orjson.dumps(envelope("bad-slow-body"))
    signed = "".join(f"{name}: {value}\r\n" for name, value in signed_headers(body).items())
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\n{signed}Content-Length: {len(body)}\r\n\r\n".encode()
    results: list[tuple[str, bytes]] = []
    clients = []
    for i in range(20):
        # Half trickle the headers (never finishing them), half send headers then trickle a signed body.
        if i % 2:
            chunks, name = [head[j:j + 3] for j in range(0, 60, 3)], "slow headers"
        else:
            chunks, name = [head] + [body[j:j + 2] for j in range(0, 40, 2)], "slow body"
        thread = threading.Thread(target=_slow_client, args=(receiver.port, chunks, 0.25, results, name))
        thread.start()
        clients.append(thread)
    # Valid deliveries flow for the slow clients' whole life (at least 5 s of trickling each): all must succeed.
    with ValidTraffic(receiver.port) as valid:
        valid.wait_for_more_than(20)
        for thread in clients:
            thread.join(SLOW_CLIENT_PATIENCE + 30)
            assert not thread.is_alive()
    assert len(results) == 20
    for name, answer in results:
        # Timed out: a 408 for a trickled body; headers never completed get the connection closed (or a 4xx).
        # Never held open: a connection the server neither answers nor closes is the slow loris winning.
        assert answer == b"" or answer.startswith((b"HTTP/1.1 408", b"HTTP/1.1 4")), (name, answer[:100])
        assert not answer.startswith(b"HTTP/1.1 5")
    assert any(a.startswith(b"HTTP/1.1 408") for n, a in results if n == "slow body")
    assert valid.failures == [] and len(valid.sent) > 20
    queued = [job.job_id for job in await queued_jobs(redis_url)]
    assert sorted(queued) == sorted(valid.sent)
