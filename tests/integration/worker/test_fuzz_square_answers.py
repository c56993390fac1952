"""A misbehaving Square, fuzzed against the worker's event job and the backfill.

A real HTTP proxy stands in front of the emulator and answers one endpoint badly (truncated JSON, a wrong
content type, an HTML error page, a 200 carrying ``errors``, a page above the size limit, or a well-formed 200
whose customers have the wrong shape), forwarding everything else. Every bad answer embeds customers whose IDs
and fields carry a ``CORRUPT`` marker, so a bad answer that reached the database is visible. For every example:
the run or event ends with a clear error in ``sync_runs`` / ``webhook_events`` and in the log, and no row anywhere
holds the marker.

Hypothesis drives the examples synchronously; each example runs on one long-lived asyncio runner that owns
the emulator, the proxy, the database pool and the worker context (fixtures of an async test would live on a
loop hypothesis cannot re-enter).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.testing import run_emulator
from square_mirror.db import create_pool
from square_mirror.jobs import build_event_job
from square_mirror.logs import configure_logging
from square_mirror.square_api import MAX_RESPONSE_BYTES, RetryPolicy
from tests.integration.worker.support import job_ctx, worker_ctx, worker_settings
from tests.mirror_check import emulator_client
from worker import runs
from worker.backfill import backfill
from worker.context import WorkerContext
from worker.events.process import process_event
from worker.sync import SyncContext

MARK = "CORRUPT"
ENDPOINTS: dict[str, tuple[str, re.Pattern[str]]] = {
    "ListCustomers": ("GET", re.compile(r"^/v2/customers$")),
    "SearchCustomers": ("POST", re.compile(r"^/v2/customers/search$")),
    "ListCustomerGroups": ("GET", re.compile(r"^/v2/customers/groups$")),
    "ListCustomerSegments": ("GET", re.compile(r"^/v2/customers/segments$")),
    "BulkRetrieveCustomers": ("POST", re.compile(r"^/v2/customers/bulk-retrieve$")),
    "RetrieveCustomer": ("GET", re.compile(r"^/v2/customers/(?!groups$|segments$|search$|bulk-)[^/]+$")),
    # Both ways the worker fetches profiles (a failed batch is retried ID by ID with RetrieveCustomer).
    "AnyRetrieve": ("*", re.compile(r"^/v2/customers/(?!groups$|segments$|search$)[^/]+$")),
}


def corrupt_customer(n: int, **fields: Any) -> dict[str, Any]:
    doc = {"id": f"{MARK}{n:04d}", "version": 1, "given_name": MARK, "created_at": "2024-01-01T00:00:00Z",
           "updated_at": "2024-01-01T00:00:00Z"}
    doc.update(fields)
    return doc


def good_looking_page() -> bytes:
    customers = [corrupt_customer(n) for n in range(3)]
    return orjson.dumps({"customers": customers, "customer": customers[0], "groups": [{"id": MARK, "name": MARK}],
                         "segments": [{"id": MARK, "name": MARK}],
                         "responses": {MARK: {"customer": customers[0]}}})


_HUGE = b'{"customers": [' + b" " * (MAX_RESPONSE_BYTES + 1024) + b"]}"


# Field -> a value of the wrong type (each carries the marker where it can).
BAD_FIELDS: list[tuple[str, Any]] = [
    ("version", "seven"), ("version", 1.5), ("version", True), ("created_at", "yesterday"),
    ("updated_at", 20240101), ("given_name", {"text": MARK}), ("family_name", [MARK]), ("email_address", 7),
    ("group_ids", MARK), ("group_ids", [MARK, 7]), ("address", MARK), ("preferences", {"email_unsubscribed": MARK}),
    ("id", None), ("id", 42),
]
# Page key of each targeted endpoint, and what a wrong page looks like besides wrong items.
PAGE_KEY = {"ListCustomers": "customers", "SearchCustomers": "customers", "ListCustomerGroups": "groups",
            "ListCustomerSegments": "segments"}
WRONG_PAGES: list[Any] = [MARK, [MARK, 7, None], {"id": MARK}, [{"id": MARK, "name": {"x": MARK}}],
                          [{"id": 5, "name": MARK}], [{"id": MARK, "name": MARK, "created_at": "yesterday"}]]


@dataclass(frozen=True)
class BadAnswer:
    """How the proxy answers the targeted endpoint. ``bad_field`` (wrong shape): a well-formed 200 whose
    customers have the requested IDs but one field of the wrong type; ``wrong_page``: a page whose list is
    wrong."""

    kind: str
    status: int
    body: bytes
    content_type: str | None
    chunked: bool = False
    bad_field: tuple[str, Any] | None = None
    wrong_page: Any = None

    def respond(self, target: str, request_path: str, request_body: bytes) -> web.StreamResponse:
        body = self.body
        if self.bad_field is not None or self.wrong_page is not None:
            body = orjson.dumps(self._shaped(target, request_path, request_body))
        headers = {"Content-Type": self.content_type} if self.content_type else {}
        response = web.Response(status=self.status, body=body, headers=headers)
        if self.chunked:
            response.enable_chunked_encoding()
        if self.content_type is None:
            response.content_type = "application/octet-stream"
        return response

    def _shaped(self, target: str, path: str, request_body: bytes) -> dict[str, Any]:
        if self.wrong_page is not None:
            return {PAGE_KEY.get(target, "customers"): self.wrong_page}
        assert self.bad_field is not None
        field_name, value = self.bad_field

        def bad(cid: str) -> dict[str, Any]:
            return corrupt_customer(0, **{"id": cid, field_name: value})

        if target == "BulkRetrieveCustomers" or path.endswith("/bulk-retrieve"):
            ids = orjson.loads(request_body)["customer_ids"]
            return {"responses": {cid: {"customer": bad(cid)} for cid in ids}}
        if target in ("RetrieveCustomer", "AnyRetrieve"):
            return {"customer": bad(path.rsplit("/", 1)[1])}
        if target in ("ListCustomerGroups", "ListCustomerSegments"):
            if field_name not in ("id", "created_at", "updated_at"):  # not a group field: break the name instead
                field_name, value = "name", {"text": MARK}
            return {PAGE_KEY[target]: [{"id": MARK, "name": MARK, field_name: value}]}
        return {"customers": [bad(f"{MARK}{n}") for n in range(3)]}

    def __repr__(self) -> str:
        extra = f", bad_field={self.bad_field}" if self.bad_field else ""
        extra += f", wrong_page={self.wrong_page!r}" if self.wrong_page is not None else ""
        return f"BadAnswer({self.kind}, {self.status}, {self.body[:60]!r}, {self.content_type}{extra})"


@st.composite
def bad_answers(draw: st.DrawFn) -> BadAnswer:
    kind = draw(st.sampled_from(["truncated JSON", "wrong content type", "HTML error page", "200 with errors",
                                 "huge page", "wrong shape", "wrong page"]))
    if kind == "truncated JSON":
        page = good_looking_page()
        return BadAnswer(kind, 200, page[:draw(st.integers(0, len(page) - 1))], "application/json")
    if kind == "wrong content type":
        ctype = draw(st.sampled_from(["text/html", "text/plain", None, "application/xml"]))
        return BadAnswer(kind, 200, good_looking_page(), ctype)
    if kind == "HTML error page":
        status = draw(st.sampled_from([200, 400, 500, 502, 503]))
        return BadAnswer(kind, status, f"<html><body><h1>{status} {MARK}</h1></body></html>".encode(),
                         "text/html; charset=utf-8")
    if kind == "200 with errors":
        doc = orjson.loads(good_looking_page())
        doc["errors"] = [{"category": "API_ERROR", "code": draw(st.sampled_from(
            ["INTERNAL_SERVER_ERROR", "BAD_REQUEST", MARK])), "detail": MARK}]
        return BadAnswer(kind, 200, orjson.dumps(doc), "application/json")
    if kind == "huge page":
        return BadAnswer(kind, 200, _HUGE, "application/json", chunked=draw(st.booleans()))
    if kind == "wrong page":
        return BadAnswer(kind, 200, b"", "application/json", wrong_page=draw(st.sampled_from(WRONG_PAGES)))
    return BadAnswer(kind, 200, b"", "application/json", bad_field=draw(st.sampled_from(BAD_FIELDS)))


class MisbehavingSquare:
    """A real HTTP server in front of the emulator: the targeted endpoint gets the bad answer, the rest is
    forwarded."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.target: str | None = None
        self.answer: BadAnswer | None = None
        self.bad_answers_sent = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=2**24)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def close(self) -> None:
        assert self._session is not None and self._runner is not None
        await self._session.close()
        await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.target is not None and self.answer is not None:
            method, path = ENDPOINTS[self.target]
            if method in (request.method, "*") and path.match(request.path):
                self.bad_answers_sent += 1
                return self.answer.respond(self.target, request.path, body)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "square-version",
                                                                              "content-type", "accept")}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                         headers=headers) as upstream:
            payload = await upstream.read()
            return web.Response(status=upstream.status, body=payload,
                                headers={"Content-Type": upstream.headers.get("Content-Type", "application/json")})


@dataclass
class World:
    runner: asyncio.Runner
    proxy: MisbehavingSquare
    pool: asyncpg.Pool
    merchant_id: str
    customer_ids: list[str]
    events: list[dict[str, Any]]
    worker: WorkerContext
    sync: SyncContext
    log: io.StringIO

    def log_lines(self) -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in self.log.getvalue().splitlines() if line.startswith("{")]
        self.log.seek(0)
        self.log.truncate()
        return lines


async def _corrupt_rows(pool: asyncpg.Pool) -> list[str]:
    found = []
    for table in ("customers", "customer_groups", "customer_segments", "customer_group_members",
                  "customer_segment_members", "customer_merges"):
        n = await pool.fetchval(f"SELECT count(*) FROM square.{table} t WHERE t::text LIKE '%{MARK}%'")  # noqa: S608
        if n:
            found.append(f"{table}: {n}")
    return found


@pytest.fixture
def world(db_dsn: str, redis_url: str) -> Iterator[World]:
    log = io.StringIO()
    configure_logging("INFO", stream=log)
    runner = asyncio.Runner()
    stack = contextlib.AsyncExitStack()

    async def setup() -> World:
        emu = await stack.enter_async_context(run_emulator())
        state = emu.emulator.merchants[emu.merchant_id]
        ids = [state.create_customer({"given_name": f"F{n}"})[0].id for n in range(12)]
        for cid in ids:
            state.update_customer(cid, {"family_name": "Fuzz"}, None, clear_null=True)
        proxy = MisbehavingSquare(emu.base_url)
        await proxy.start()
        stack.push_async_callback(proxy.close)
        pool = await create_pool(db_dsn, min_size=1, max_size=6)
        stack.push_async_callback(pool.close)
        settings = worker_settings(proxy.url, emu.token, redis_url, worker_max_tries=1)
        ctx = await stack.enter_async_context(worker_ctx(pool, redis_url, settings))
        ctx.client.retry = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05, deadline=5.0)
        client = emulator_client(replace_base(emu, proxy.url), attempts=2, deadline=5.0)
        stack.push_async_callback(client.close)
        events = [event for _ts, event in state.events.entries]
        return World(runner, proxy, pool, emu.merchant_id, ids, events, ctx, SyncContext(pool, client), log)

    try:
        yield runner.run(setup())
    finally:
        runner.run(stack.aclose())
        runner.close()
        configure_logging("INFO")


@dataclass
class _BaseUrl:
    base_url: str
    token: str


def replace_base(emu: Any, url: str) -> _BaseUrl:
    return _BaseUrl(url, emu.token)


FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def test_backfill_against_a_misbehaving_square_fails_clearly_and_writes_no_bad_row(world: World) -> None:
    outcomes: dict[str, int] = {}

    @FUZZ
    @given(target=st.sampled_from(["SearchCustomers", "ListCustomerGroups", "ListCustomerSegments",
                                   "BulkRetrieveCustomers"]), answer=bad_answers())
    def backfill_survives(target: str, answer: BadAnswer) -> None:
        world.proxy.target, world.proxy.answer = target, answer
        sent_before = world.proxy.bad_answers_sent
        run = world.runner.run(backfill(world.sync, world.merchant_id, full=True, concurrency=2))
        world.proxy.target = None
        lines = world.log_lines()
        assert world.runner.run(_corrupt_rows(world.pool)) == [], (target, answer)
        if world.proxy.bad_answers_sent == sent_before:
            return  # this backfill never called the targeted endpoint
        outcomes[run.status] = outcomes.get(run.status, 0) + 1
        assert run.status in (runs.FAILED, runs.PARTIAL), (target, answer, run.status)
        row = world.runner.run(runs.last_run(world.pool, world.merchant_id, "backfill"))
        assert row is not None and row["status"] == run.status and row["error"], (target, answer)
        assert row["error"].startswith("Square") and target in row["error"], (target, answer, row["error"])
        failed = [line for line in lines if line.get("event") == "run_failed"]
        assert failed and failed[-1]["error_type"].startswith("Square"), (target, answer, failed)

    backfill_survives()
    print(f"backfill runs that met a bad answer, by status: {outcomes}")
    assert sum(outcomes.values()) >= 50, outcomes
    # Square behaves again: the same backfill now succeeds and the mirror is whole.
    assert world.runner.run(backfill(world.sync, world.merchant_id, full=True)).status == runs.SUCCEEDED
    assert world.runner.run(world.pool.fetchval("SELECT count(*) FROM square.customers_current")) == len(
        world.customer_ids)


def test_event_jobs_against_a_misbehaving_square_fail_clearly_and_write_no_bad_row(world: World) -> None:
    counter = iter(range(10**6))
    failed_events: list[str] = []

    @FUZZ
    @given(target=st.sampled_from(["BulkRetrieveCustomers", "RetrieveCustomer", "AnyRetrieve"]), answer=bad_answers(),
           picks=st.lists(st.integers(0, 11), min_size=1, max_size=3, unique=True))
    def events_survive(target: str, answer: BadAnswer, picks: list[int]) -> None:
        world.proxy.target, world.proxy.answer = target, answer
        payloads = []
        for pick in picks:
            event = dict(world.events[-1 - pick])
            n = next(counter)
            event["event_id"] = f"fuzz-{n}"
            payload = build_event_job(event, received_at="2024-01-01T00:00:00.000Z")
            # A version the mirror cannot have yet (an earlier example may have stored the profile), so the event
            # is never answered from the mirror as stale: the worker must ask Square, and Square answers badly.
            payload["version"] = 10**6 + n
            payloads.append(payload)
        ctx = job_ctx(world.worker, world.worker.settings.worker_max_tries)
        ids = [p["customer_id"] for p in payloads]
        query = "SELECT id, version, raw FROM square.customers WHERE id = ANY($1::text[]) ORDER BY id"
        before = world.runner.run(world.pool.fetch(query, ids))
        sent_before = world.proxy.bad_answers_sent

        async def run_all() -> list[str]:  # concurrently, so that the coalescer may batch them (bulk retrieve)
            return list(await asyncio.gather(*(process_event(ctx, p) for p in payloads)))

        outcomes = world.runner.run(run_all())
        world.proxy.target = None
        lines = world.log_lines()
        assert world.runner.run(_corrupt_rows(world.pool)) == [], (target, answer)
        if world.proxy.bad_answers_sent == sent_before:
            return  # the coalescer did not call the targeted endpoint (e.g. one event: RetrieveCustomer)
        failed_ids = [p["event_id"] for p, outcome in zip(payloads, outcomes, strict=True) if outcome == "failed"]
        # With one endpoint misbehaving, IDs fetched through the other one (a lone ID goes through RetrieveCustomer,
        # a batch through BulkRetrieveCustomers, a failed batch is retried ID by ID) get good answers and apply.
        assert set(outcomes) <= ({"failed"} if target == "AnyRetrieve" else {"failed", "applied"}), (
            target, answer, outcomes)
        if len(failed_ids) == len(payloads):
            assert world.runner.run(world.pool.fetch(query, ids)) == before, "a bad answer changed a row"
        logged = {line.get("event_id"): line for line in lines if line.get("event") == "event_failed"}
        for event_id in failed_ids:
            row = world.runner.run(world.pool.fetchrow(
                "SELECT outcome, error FROM square.webhook_events WHERE event_id = $1", event_id))
            assert row["outcome"] == "failed" and row["error"], (target, answer, row)
            assert "Retrieve" in row["error"], row  # names the endpoint that answered badly
            failed_events.append(answer.kind)
        assert len([line for line in lines if line.get("event") == "event_failed"]) == len(failed_ids), lines[-3:]
        assert not logged or all(line.get("error") for line in logged.values())

    events_survive()
    print(f"events that met a bad answer and failed cleanly: {len(failed_events)}")
    assert len(failed_events) >= 50
