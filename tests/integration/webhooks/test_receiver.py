"""The receiver over real HTTP against the real Redis: what is queued, what is refused, and how."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from square_mirror.constants import CUSTOMER_EVENT_TYPES, PROCESS_EVENT_JOB, SYNCED_EVENT_TYPES
from square_mirror.jobs import build_event_job
from square_mirror.logs import configure_logging
from tests.factories import custom_attribute, custom_attribute_event, signed_headers, webhook_body
from tests.integration.webhooks.support import (
    CUSTOMER_CREATED,
    CUSTOMER_DELETED,
    CUSTOMER_UPDATED,
    KEY,
    OTHER_KEY,
    PATH,
    PII_STRINGS,
    SPEC_EXAMPLES,
    Receiver,
    merge_events,
    queued_jobs,
    running_receiver,
    settings_for,
)
from webhooks.app import METRICS_KEY


@pytest.fixture
async def receiver(redis_url: str) -> AsyncIterator[Receiver]:
    async with running_receiver(settings_for(redis_url, max_body=4096)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, receiver: Receiver, body: bytes, headers: dict[str, str]
) -> tuple[int, str]:
    async with http.post(receiver.url, data=body, headers=headers) as response:
        return response.status, await response.text()


def _without_received_at(payload: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in payload.items() if k != "received_at"}


@pytest.mark.parametrize("body", SPEC_EXAMPLES, ids=["created", "updated", "deleted"])
async def test_square_spec_examples_are_queued_as_one_job_each(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str, body: str
) -> None:
    status, text = await post(http, receiver, body.encode(), signed_headers(body.encode()))
    assert (status, json.loads(text)) == (200, {"status": "queued"})
    [job] = await queued_jobs(redis_url)
    envelope = json.loads(body)
    assert job.job_id == envelope["event_id"]
    assert job.function == PROCESS_EVENT_JOB
    assert job.kwargs == {}
    [payload] = job.args
    assert _without_received_at(payload) == _without_received_at(build_event_job(envelope))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", payload["received_at"])  # RFC 3339 UTC, ms
    assert not any(pii in orjson.dumps(payload).decode() for pii in PII_STRINGS)


async def test_payload_carries_what_the_worker_needs(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    await post(http, receiver, CUSTOMER_DELETED.encode(), signed_headers(CUSTOMER_DELETED.encode()))
    [job] = await queued_jobs(redis_url)
    payload = job.args[0]
    assert payload["merchant_id"] == "G7MMEBVW021Q4"
    assert payload["type"] == "customer.deleted"
    assert payload["event_id"] == "8e84fec8-f04b-46f0-b66d-dbb8b59590fa"
    assert payload["created_at"] == "2022-11-09T21:26:50Z"
    assert payload["customer_id"] == "QPTXM8PQNX3Q726ZYHPMNP46XC"
    assert payload["version"] == 3
    assert payload["deleted"] is True


async def test_merge_events_keep_their_event_context(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    for body in merge_events():
        assert (await post(http, receiver, body, signed_headers(body)))[0] == 200
    jobs = await queued_jobs(redis_url)
    assert len(jobs) == 3
    for job in jobs:
        assert job.args[0]["event_context"] == {
            "merge": {"from_customer_ids": ["MERGEFROMA", "MERGEFROMB"], "to_customer_id": "MERGEINTOC"}
        }


async def test_a_redelivery_while_queued_is_a_200_and_a_no_op(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    body = CUSTOMER_UPDATED.encode()
    first = await post(http, receiver, body, signed_headers(body))
    retry_headers = {**signed_headers(body), "square-retry-number": "1", "square-retry-reason": "http_timeout"}
    again = await post(http, receiver, body, retry_headers)
    assert first == (200, '{"status":"queued"}')
    assert again == (200, '{"status":"duplicate"}')
    assert len(await queued_jobs(redis_url)) == 1


async def test_concurrent_deliveries_with_duplicates_land_exactly_once_each(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    bodies = [webhook_body(n) for n in range(60)] * 3
    results = await asyncio.gather(*(post(http, receiver, b, signed_headers(b)) for b in bodies))
    assert {status for status, _ in results} == {200}
    assert sum('"queued"' in text for _, text in results) == 60
    jobs = await queued_jobs(redis_url)
    assert sorted(j.job_id for j in jobs) == sorted(f"evt-{n:08d}" for n in range(60))


async def test_other_event_types_get_200_and_are_not_queued(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    test_notification = (
        b'{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":"ac3ac95b-f97d-458c",'
        b'"created_at":"2022-07-13T20:30:59Z","data":{"type":"webhooks","id":"bc368e64"}}'
    )
    gift_card = webhook_body(merchant_id="M1", event_type="gift_card.customer_linked", event_id="gc-1",
                             data={"id": "gc", "object": {}})
    for body in (test_notification, gift_card):
        assert await post(http, receiver, body, signed_headers(body)) == (200, '{"status":"ignored"}')
    assert await queued_jobs(redis_url) == []
    metrics = await (await http.get(receiver.base + "/metrics")).text()
    assert 'square_mirror_webhook_requests_total{event_type="webhooks.test_notification",outcome="ignored"} 1.0' in (
        metrics
    )


@pytest.mark.parametrize("event_type", sorted(SYNCED_EVENT_TYPES - CUSTOMER_EVENT_TYPES))
async def test_every_custom_attribute_and_definition_event_is_queued_with_its_object(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str, event_type: str
) -> None:
    attribute = custom_attribute(key="sq0idp-app:drink", value="Flat white", version=4)
    value_event = event_type.startswith("customer.custom_attribute.")
    body = orjson.dumps(custom_attribute_event(attribute, customer_id="C1" if value_event else None,
                                               event_type=event_type, merchant_id="M1", event_id="ca-1"))
    assert await post(http, receiver, body, signed_headers(body)) == (200, '{"status":"queued"}')
    [job] = await queued_jobs(redis_url)
    [payload] = job.args
    assert payload["type"] == event_type and payload["version"] == 4
    assert payload["object"]["key"] == "sq0idp-app:drink"
    assert payload["customer_id"] == ("C1" if value_event else None)


async def test_missing_or_wrong_signature_is_401_with_one_answer_and_never_queued(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    body = CUSTOMER_CREATED.encode()
    good = signed_headers(body)
    cases = [
        {"Content-Type": "application/json"},  # missing
        {**good, "x-square-hmacsha256-signature": "AAAA" + good["x-square-hmacsha256-signature"][4:]},
        signed_headers(body, key="not-the-key"),
        signed_headers(body, url="https://emulator.local/square/webhooks/"),
        {**good, "x-square-hmacsha256-signature": ""},
    ]
    answers = {await post(http, receiver, body, headers) for headers in cases}
    tampered_body = body.replace(b'"version": 0', b'"version": 9')
    answers.add(await post(http, receiver, tampered_body, good))
    assert answers == {(401, '{"error":"unauthorized"}')}
    assert await queued_jobs(redis_url) == []


async def test_rotated_keys_are_all_accepted(redis_url: str, http: aiohttp.ClientSession) -> None:
    async with running_receiver(settings_for(redis_url, keys=(KEY, OTHER_KEY))) as receiver:
        old, new = webhook_body(1), webhook_body(2)
        assert (await post(http, receiver, old, signed_headers(old, key=KEY)))[0] == 200
        assert (await post(http, receiver, new, signed_headers(new, key=OTHER_KEY)))[0] == 200
    assert len(await queued_jobs(redis_url)) == 2


@pytest.mark.parametrize(
    "body",
    [
        b'{"merchant_id":"M","type":"customer.created",',  # truncated JSON
        b"[1, 2, 3]",  # not an object
        b'"customer.created"',
        b'{"merchant_id":"M","type":"customer.created","event_id":"e\xff\xfe","data":{"id":"C"}}',  # not UTF-8
        b'{"type":"customer.created","event_id":"e1","data":{"id":"C"}}',  # no merchant_id
        b'{"merchant_id":"M","event_id":"e1","data":{"id":"C"}}',  # no type
        b'{"merchant_id":"M","type":"customer.created","data":{"id":"C"}}',  # no event_id
        b'{"merchant_id":"","type":"customer.created","event_id":"e1","data":{"id":"C"}}',  # empty merchant_id
        b'{"merchant_id":"M","type":"customer.created","event_id":"e1"}',  # no customer id
        b'{"merchant_id":"M","type":"customer.created","event_id":42,"data":{"id":"C"}}',  # event_id not a string
        b"[" * 2000,  # nesting deeper than the parser allows
    ],
    ids=["truncated", "array", "string", "non-utf8", "no-merchant", "no-type", "no-event-id", "empty-merchant",
         "no-customer-id", "numeric-event-id", "deep-nesting"],
)
async def test_signed_but_malformed_bodies_are_400_and_not_queued(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str, body: bytes
) -> None:
    assert await post(http, receiver, body, signed_headers(body)) == (400, '{"error":"bad request"}')
    assert await queued_jobs(redis_url) == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type_is_415_and_not_queued(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str, content_type: str | None
) -> None:
    body = CUSTOMER_UPDATED.encode()
    headers = signed_headers(body)
    del headers["Content-Type"]
    if content_type:
        headers["Content-Type"] = content_type
    # aiohttp's client adds application/octet-stream to a bytes body without a content type.
    status, _ = await post(http, receiver, body, headers)
    assert status == 415
    assert await queued_jobs(redis_url) == []


async def test_json_with_a_charset_parameter_is_accepted(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    body = CUSTOMER_UPDATED.encode()
    headers = {**signed_headers(body), "Content-Type": "application/json; charset=utf-8"}
    assert (await post(http, receiver, body, headers))[0] == 200


async def test_oversize_bodies_are_413_whether_declared_or_chunked(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    big = orjson.dumps({**orjson.loads(webhook_body(1)), "padding": "x" * 5000})
    assert (await post(http, receiver, big, signed_headers(big)))[0] == 413

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    async with http.post(receiver.url, data=chunks(), headers=signed_headers(big)) as response:
        assert response.status == 413
    assert await queued_jobs(redis_url) == []
    # The receiver still works afterwards.
    small = webhook_body(2)
    assert (await post(http, receiver, small, signed_headers(small)))[0] == 200


async def test_an_oversize_chunked_body_that_arrived_whole_is_413(receiver: Receiver, redis_url: str) -> None:
    big = orjson.dumps({**orjson.loads(webhook_body(1)), "padding": "x" * 5000})
    head = "".join(f"{name}: {value}\r\n" for name, value in signed_headers(big).items())
    request = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Transfer-Encoding: chunked\r\n\r\n"
               f"{len(big):x}\r\n").encode() + big + b"\r\n0\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
    writer.write(request)  # in one piece: the whole body is buffered before the handler runs
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"413"
    assert await queued_jobs(redis_url) == []


async def test_a_body_a_middleware_read_first_is_still_verified_and_queued(
    redis_url: str, http: aiohttp.ClientSession
) -> None:
    from aiohttp import web

    from square_mirror.embedded import free_port
    from webhooks.app import create_app

    @web.middleware
    async def reads_body(request: web.Request, handler: Any) -> web.StreamResponse:
        await request.read()
        return await handler(request)  # type: ignore[no-any-return]

    app = create_app(settings_for(redis_url))
    app.middlewares.append(reads_body)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        body = webhook_body(7)
        async with http.post(f"http://127.0.0.1:{port}{PATH}", data=body, headers=signed_headers(body)) as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()
    assert [job.job_id for job in await queued_jobs(redis_url)] == [orjson.loads(body)["event_id"]]


async def test_huge_headers_are_refused_and_the_receiver_keeps_serving(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    body = webhook_body(1)
    headers = {**signed_headers(body), "x-padding": "y" * 20_000}
    async with http.post(receiver.url, data=body, headers=headers) as response:
        assert response.status in (400, 431)
    many = {**signed_headers(body), **{f"x-h{i}": "z" * 100 for i in range(500)}}
    async with http.post(receiver.url, data=body, headers=many) as response:
        assert response.status in (400, 431)
    assert await queued_jobs(redis_url) == []
    assert (await post(http, receiver, body, signed_headers(body)))[0] == 200


async def test_raw_garbage_on_the_socket_does_not_hurt_the_receiver(receiver: Receiver, redis_url: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
    writer.write(b"\x00\xff\xfe GARBAGE \r\n\r\n")
    await writer.drain()
    response = await reader.read(100)
    assert response.split(b" ")[1] == b"400"
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read(100)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_health_readiness_and_metrics(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    async with http.get(receiver.base + "/healthz") as response:
        assert response.status == 200
    async with http.get(receiver.base + "/readyz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ready", "redis": "ok"})
    body = webhook_body(7)
    await post(http, receiver, body, signed_headers(body))
    await post(http, receiver, body, {"Content-Type": "application/json"})
    async with http.get(receiver.base + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert 'square_mirror_webhook_requests_total{event_type="customer.updated",outcome="enqueued"} 1.0' in text
    assert 'square_mirror_webhook_requests_total{event_type="unknown",outcome="unauthorized"} 1.0' in text
    assert "square_mirror_webhook_request_seconds_bucket" in text
    assert "square_mirror_webhook_enqueue_batch_size_count 1.0" in text
    assert "square_mirror_webhook_enqueue_seconds_count 1.0" in text
    assert "square_mirror_webhook_requests_in_flight 0.0" in text
    assert "square_mirror_webhook_enqueue_failures_total" in text


async def test_one_log_line_per_request_without_payload_pii_or_signature(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", secrets=[KEY], stream=stream)
    try:
        body = CUSTOMER_CREATED.encode()
        headers = {**signed_headers(body), "square-retry-number": "2"}
        await post(http, receiver, body, headers)
        await post(http, receiver, body, {"Content-Type": "application/json", "x-square-hmacsha256-signature": "x"})
    finally:
        configure_logging("INFO")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    webhook_lines = [line for line in lines if line.get("event") == "webhook"]
    assert len(webhook_lines) == 2
    accepted, refused = webhook_lines
    assert accepted["event_id"] == "e12b5591-e0b6-4967-810a-307c7efcb1a7"
    assert accepted["type"] == "customer.created"
    assert accepted["merchant_id"] == "G7MMEBVW021Q4"
    assert accepted["outcome"] == "enqueued"
    assert accepted["status"] == 200
    assert accepted["retry_number"] == 2
    assert isinstance(accepted["latency_ms"], float)
    assert refused["outcome"] == "unauthorized"
    assert refused["event_id"] is None
    raw = stream.getvalue()
    assert not any(pii in raw for pii in PII_STRINGS)
    assert headers["x-square-hmacsha256-signature"] not in raw
    assert KEY not in raw


async def test_a_client_that_disconnects_mid_body_is_counted_not_crashed(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    body = webhook_body(1)
    _reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in signed_headers(body).items())
    writer.write(f"POST /square/webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode())
    writer.write(body[:20])
    await writer.drain()
    # Disconnect once the handler is reading the body (a 0.1 s sleep hoped it was), then poll for its verdict.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while receiver.app[METRICS_KEY].in_flight_count < 1:
        assert loop.time() < deadline, "the request never reached the handler"
        await asyncio.sleep(0.01)
    writer.close()
    while True:
        text = await (await http.get(receiver.base + "/metrics")).text()
        if 'outcome="bad_request"' in text or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert 'square_mirror_webhook_requests_total{event_type="unknown",outcome="bad_request"} 1.0' in text
    assert 'outcome="error"' not in text
    assert await queued_jobs(redis_url) == []
    assert (await post(http, receiver, body, signed_headers(body)))[0] == 200
