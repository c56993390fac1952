"""The receiver's OAuth redirect over real HTTP against the real Redis: one connect job per approved redirect, the
same refusal for every bad state, nothing queued for a denial, and no secret in any log line or page."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import aiohttp
import orjson
import pytest

from square_mirror.constants import CONNECT_SELLER_JOB, OAUTH_REVOKED_EVENT, PROCESS_EVENT_JOB, connect_job_id
from square_mirror.credentials.cipher import TokenCipher, new_key
from square_mirror.credentials.oauth_state import new_state, state_hash
from square_mirror.jobs import read_connect_job, read_event_job
from square_mirror.logs import configure_logging
from square_mirror.settings import Secret, Settings
from tests.factories import signed_headers
from tests.integration.webhooks.support import Receiver, queued_jobs, running_receiver, settings_for
from webhooks.app import METRICS_KEY

KEYS = (Secret(new_key()),)
CALLBACK = "/square/oauth/callback"
CODE = "sq0cgb-AUTHORIZATION-CODE-1234"
APP_SECRET = "sq0csp-the-application-secret"
REVOKED = ('{"created_at": "2020-08-14T15:51:04.246373287Z", "data": {"id": "415641cf-eba2-4dfa-88cc-c4be1301fdc6", '
           '"object": {"revocation": {"revoked_at": "2020-08-14T15:51:00.246373287Z", "revoker_type": "MERCHANT"}}, '
           '"type": "revocation"}, "event_id": "e1d6ae37-5aa9-45a5-b525-b12caf819fdb", "merchant_id": "J9Z30SF99NPFJ",'
           ' "type": "oauth.authorization.revoked"}')


def oauth_settings(redis_url: str, **overrides: object) -> Settings:
    base = replace(settings_for(redis_url), square_application_id="sq0idp-app", encryption_keys=KEYS,
                   square_application_secret=Secret(APP_SECRET),
                   square_oauth_redirect_url="https://mirror.example.com" + CALLBACK)
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line, DEBUG included, in memory; complete once the block ends (reconfiguring writes what waits)."""
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    try:
        yield stream
    finally:
        configure_logging("INFO")


@pytest.fixture
async def receiver(redis_url: str) -> AsyncIterator[Receiver]:
    async with running_receiver(oauth_settings(redis_url)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def redirect(http: aiohttp.ClientSession, receiver: Receiver, **query: str) -> tuple[int, str]:
    async with http.get(receiver.base + CALLBACK, params=query, allow_redirects=False) as response:
        assert response.content_type == "text/html"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        return response.status, await response.text()


async def test_an_approved_redirect_queues_one_connect_job_with_the_code_sealed(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    state = new_state(KEYS)
    status, page = await redirect(http, receiver, code=CODE, response_type="code", state=state)
    assert status == 200 and "connected" in page and "Syncing starts in a moment" in page
    [job] = await queued_jobs(redis_url)
    assert (job.function, job.job_id) == (CONNECT_SELLER_JOB, connect_job_id(state_hash(state)))
    [payload] = job.args
    raw = orjson.dumps(payload).decode()
    assert CODE not in raw and state not in raw
    opened = read_connect_job(payload, TokenCipher(KEYS))
    assert (opened.code.reveal(), opened.state.reveal()) == (CODE, state)


async def test_a_replayed_redirect_collapses_into_the_job_already_queued(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    state = new_state(KEYS)
    first = await redirect(http, receiver, code=CODE, response_type="code", state=state)
    again = await redirect(http, receiver, code=CODE, response_type="code", state=state)
    assert first == again and first[0] == 200
    assert len(await queued_jobs(redis_url)) == 1
    rendered = receiver.app[METRICS_KEY].render().decode()
    assert 'square_mirror_webhook_oauth_redirects_total{outcome="connecting"} 1.0' in rendered
    assert 'square_mirror_webhook_oauth_redirects_total{outcome="duplicate"} 1.0' in rendered


def _bad_states() -> dict[str, dict[str, str]]:
    good = new_state(KEYS)
    nonce, expires, mac = good.split(".")
    return {
        "missing": {"code": CODE},
        "empty": {"code": CODE, "state": ""},
        "malformed": {"code": CODE, "state": "not-a-state"},
        "expired": {"code": CODE, "state": new_state(KEYS, lifetime=-1)},
        "foreign": {"code": CODE, "state": new_state((Secret(new_key()),))},
        "tampered expiry": {"code": CODE, "state": f"{nonce}.{int(expires) + 3600}.{mac}"},
        "tampered mac": {"code": CODE, "state": f"{nonce}.{expires}.{mac[:-2]}AA"},
        "no code": {"state": good},
        "bad code": {"code": "two words", "state": good},
    }


async def test_every_bad_state_or_code_gets_the_same_400_and_queues_nothing(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    answers = {name: await redirect(http, receiver, **query) for name, query in _bad_states().items()}
    assert {status for status, _page in answers.values()} == {400}
    assert len({page for _status, page in answers.values()}) == 1  # nothing says which check failed
    assert await queued_jobs(redis_url) == []


async def test_a_seller_who_declines_sees_a_plain_page_and_nothing_is_queued(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    status, page = await redirect(http, receiver, error="access_denied", error_description="user_denied",
                                  state=new_state(KEYS))
    assert status == 200 and "declined" in page
    status, page = await redirect(http, receiver, error="<script>", state=new_state(KEYS))
    assert status == 400 and "<script>" not in page
    assert await queued_jobs(redis_url) == []


async def test_the_redirect_is_not_served_without_the_whole_oauth_configuration(
    redis_url: str, http: aiohttp.ClientSession
) -> None:
    for missing in ({"square_application_secret": None}, {"encryption_keys": ()}, {"square_application_id": None},
                    {"square_oauth_redirect_url": None}):
        async with running_receiver(oauth_settings(redis_url, **missing)) as receiver, \
                http.get(receiver.base + CALLBACK, params={"code": CODE, "state": new_state(KEYS)}) as response:
            assert response.status == 404, missing
    assert await queued_jobs(redis_url) == []


async def test_the_redirect_path_follows_the_configured_redirect_url(
    redis_url: str, http: aiohttp.ClientSession
) -> None:
    settings = oauth_settings(redis_url, square_oauth_redirect_url="https://m.example.com/oauth/square?x=1")
    async with running_receiver(settings) as receiver, \
            http.get(receiver.base + "/oauth/square", params={"code": CODE, "state": new_state(KEYS)}) as response:
        assert response.status == 200
    assert len(await queued_jobs(redis_url)) == 1


async def test_a_signed_revocation_webhook_is_queued_as_an_event_job(
    receiver: Receiver, http: aiohttp.ClientSession, redis_url: str
) -> None:
    body = REVOKED.encode()
    async with http.post(receiver.url, data=body, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 401  # unsigned: refused like any webhook
    async with http.post(receiver.url, data=body, headers=signed_headers(body)) as response:
        assert (response.status, json.loads(await response.text())) == (200, {"status": "queued"})
    [job] = await queued_jobs(redis_url)
    assert (job.function, job.job_id) == (PROCESS_EVENT_JOB, "e1d6ae37-5aa9-45a5-b525-b12caf819fdb")
    event = read_event_job(job.args[0])
    assert (event.type, event.merchant_id) == (OAUTH_REVOKED_EVENT, "J9Z30SF99NPFJ")
    assert event.revocation == ("2020-08-14T15:51:00.246373287Z", "MERCHANT")


async def test_no_code_state_or_mac_reaches_a_log_line(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    state = new_state(KEYS)
    with captured_logs() as log_stream:
        await redirect(http, receiver, code=CODE, response_type="code", state=state)
        await redirect(http, receiver, code=CODE, response_type="code", state=state)
        for query in _bad_states().values():
            await redirect(http, receiver, **query)
    output = log_stream.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    outcomes = [line["outcome"] for line in lines if line.get("event") == "oauth_redirect"]
    assert outcomes[:2] == ["connecting", "duplicate"] and set(outcomes[2:]) == {"bad_request"}
    secrets = [CODE, state, state.split(".")[2], APP_SECRET, KEYS[0].reveal()]
    secrets += [q["state"].split(".")[-1] for q in _bad_states().values() if q.get("state", "").count(".") == 2]
    assert not [s for s in secrets if s in output]
