"""`square-mirror webhooks subscribe` / `check`, and the sections `status` adds: real Postgres, a scripted Square.

The check reports each kind of mismatch (the URL's first differing byte, missing and extra event types, the API
version, disabled) and passes only when everything matches; without the application's token it is off.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from square_mirror.constants import DEFAULT_SQUARE_VERSION
from square_mirror.webhook_subscription import SUBSCRIBED_EVENT_TYPES
from tests.integration.sellers.test_sellers_cli import cli
from tests.scripted_square import ScriptedSquare, json_reply

APP_TOKEN = "EAAA-application-personal-access-token"
SIGNATURE_KEY = "signature-key-shown-once-0123456789"
URL = "https://mirror.example/square/webhooks"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_dsn: str, square: tuple[ScriptedSquare, str]) -> pytest.MonkeyPatch:
    for name in ("REDIS_URL", "SQUARE_ACCESS_TOKEN", "SQUARE_TOKENS_FILE", "SQUARE_MERCHANT_ID",
                 "SQUARE_MIRROR_ENCRYPTION_KEYS", "SQUARE_WEBHOOK_SIGNATURE_KEY", "SQUARE_VERSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", db_dsn)
    monkeypatch.setenv("SQUARE_BASE_URL", square[1])
    monkeypatch.setenv("SQUARE_APPLICATION_ACCESS_TOKEN", APP_TOKEN)
    monkeypatch.setenv("SQUARE_WEBHOOK_NOTIFICATION_URL", URL)
    return monkeypatch


def subscription(**changes: Any) -> dict[str, Any]:
    return {"id": "wbhk_1", "name": "square-mirror", "enabled": True, "event_types": list(SUBSCRIBED_EVENT_TYPES),
            "notification_url": URL, "api_version": DEFAULT_SQUARE_VERSION,
            "created_at": "2022-01-10 23:29:48 +0000 UTC", **changes}


# -- subscribe ------------------------------------------------------------------------------------------------

async def test_subscribe_creates_the_subscription_with_the_application_token_and_writes_the_key_0600(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        tmp_path: Path) -> None:
    fake, _ = square
    fake.script = [json_reply({"subscription": subscription(signature_key=SIGNATURE_KEY)})]
    key_file = tmp_path / "signature-key"
    code, output = await cli(capsys, "webhooks", "subscribe", "--url", URL, "--signature-key-file", str(key_file))
    assert code == 0, output
    assert SIGNATURE_KEY not in output and APP_TOKEN not in output
    assert f"SQUARE_WEBHOOK_SIGNATURE_KEY_FILE={key_file}" in output
    assert key_file.read_text().strip() == SIGNATURE_KEY
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    sent = fake.requests[0]
    assert (sent["path"], sent["headers"]["Authorization"]) == ("/v2/webhooks/subscriptions", f"Bearer {APP_TOKEN}")
    body = sent["body"]["subscription"]
    assert body["notification_url"] == URL and body["api_version"] == DEFAULT_SQUARE_VERSION
    assert set(body["event_types"]) == {
        "customer.created", "customer.updated", "customer.deleted", "customer.custom_attribute.visible.updated",
        "customer.custom_attribute.visible.deleted", "customer.custom_attribute_definition.visible.created",
        "customer.custom_attribute_definition.visible.updated", "customer.custom_attribute_definition.visible.deleted",
        "oauth.authorization.revoked"}
    assert sent["body"]["idempotency_key"]


async def test_the_key_file_subscribe_writes_is_what_the_receiver_reads(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        tmp_path: Path) -> None:
    from square_mirror.settings import Settings

    fake, _ = square
    fake.script = [json_reply({"subscription": subscription(signature_key=SIGNATURE_KEY)})]
    key_file = tmp_path / "signature-key"
    assert (await cli(capsys, "webhooks", "subscribe", "--url", URL, "--signature-key-file", str(key_file)))[0] == 0
    settings = Settings.from_env({"SQUARE_WEBHOOK_SIGNATURE_KEY_FILE": str(key_file)})
    assert [k.reveal() for k in settings.webhook_signature_keys] == [SIGNATURE_KEY]


async def test_subscribe_without_a_file_prints_the_key_once_and_names_the_variable(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str]) -> None:
    fake, _ = square
    fake.script = [json_reply({"subscription": subscription(signature_key=SIGNATURE_KEY)})]
    code, output = await cli(capsys, "webhooks", "subscribe", "--url", URL, "--name", "mirror-prod")
    assert code == 0
    assert output.count(SIGNATURE_KEY) == 1
    assert "SQUARE_WEBHOOK_SIGNATURE_KEY" in output
    assert fake.requests[0]["body"]["subscription"]["name"] == "mirror-prod"


async def test_subscribe_refuses_to_overwrite_a_key_file_and_needs_the_application_token(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        tmp_path: Path) -> None:
    existing = tmp_path / "old-key"
    existing.write_text("old")
    code, output = await cli(capsys, "webhooks", "subscribe", "--url", URL, "--signature-key-file", str(existing))
    assert (code, "exists already" in output) == (2, True)
    env.delenv("SQUARE_APPLICATION_ACCESS_TOKEN")
    code, output = await cli(capsys, "webhooks", "subscribe", "--url", URL)
    assert (code, "SQUARE_APPLICATION_ACCESS_TOKEN is not set" in output) == (2, True)
    assert square[0].requests == []


# -- check ----------------------------------------------------------------------------------------------------

async def test_check_passes_when_the_live_subscription_matches(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str]) -> None:
    fake, _ = square
    fake.script = [json_reply({"subscriptions": [subscription(id="wbhk_other", notification_url="https://x.test/"),
                                                 subscription()]})]
    code, output = await cli(capsys, "webhooks", "check")
    assert code == 0, output
    assert "wbhk_1: matches the configuration" in output
    assert fake.requests[0]["query"]["include_disabled"] == "true"


async def test_check_names_the_first_byte_where_the_url_differs(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str]) -> None:
    fake, _ = square
    fake.script = [json_reply({"subscriptions": [subscription(notification_url=URL + "/")]})]
    code, output = await cli(capsys, "webhooks", "check", "--json")
    assert code == 1
    result = json.loads(output)
    assert result["status"] == "mismatch"
    assert result["mismatches"] == [f"notification URL differs at byte {len(URL) + 1}: the configuration has the end, "
                                    f"the subscription '/' (configured {URL!r}, subscribed {URL + '/'!r})"]


@pytest.mark.parametrize(("changes", "expected"), [
    ({"notification_url": URL.replace("mirror", "mirr0r")},
     "notification URL differs at byte 13: the configuration has 'o', the subscription '0'"),
    ({"event_types": [t for t in SUBSCRIBED_EVENT_TYPES if t != "oauth.authorization.revoked"]},
     "event types missing: oauth.authorization.revoked"),
    ({"event_types": [*SUBSCRIBED_EVENT_TYPES, "payment.created"]}, "event types not needed: payment.created"),
    ({"api_version": "2024-01-18"}, "API version is '2024-01-18', the mirror pins"),
    ({"enabled": False}, "the subscription is disabled"),
])
async def test_check_reports_each_kind_of_mismatch(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        changes: dict[str, Any], expected: str) -> None:
    square[0].script = [json_reply({"subscriptions": [subscription(**changes)]})]
    code, output = await cli(capsys, "webhooks", "check")
    assert code == 1
    assert expected in output


async def test_check_without_any_subscription_says_to_subscribe(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str]) -> None:
    square[0].script = [json_reply({})]
    code, output = await cli(capsys, "webhooks", "check")
    assert code == 1
    assert "no webhook subscription (square-mirror webhooks subscribe)" in output


async def test_check_is_off_without_the_application_token(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str]) -> None:
    env.delenv("SQUARE_APPLICATION_ACCESS_TOKEN")
    code, output = await cli(capsys, "webhooks", "check")
    assert code == 2
    assert "check: off (SQUARE_APPLICATION_ACCESS_TOKEN is not set" in output
    assert square[0].requests == []


# -- status ---------------------------------------------------------------------------------------------------

async def test_status_includes_the_subscription_check_and_the_oauth_sellers_that_need_attention(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute(
            "INSERT INTO square_private.seller_credentials (merchant_id, access_token, status, last_error) VALUES "
            "('M_OK', 'x', 'active', NULL), ('M_REAUTH', 'x', 'reauthorize', 'ObtainToken: 400 BAD_REQUEST'), "
            "('M_REVOKED', 'x', 'revoked', 'revoked by the seller'), ('M_GONE', 'x', 'removed', NULL)")
    finally:
        await conn.close()
    square[0].script = [json_reply({"subscriptions": [subscription(enabled=False)]})]
    code, output = await cli(capsys, "status", "--json")
    assert code == 1
    report = json.loads(output)
    assert report["webhook_subscription"]["status"] == "mismatch"
    assert report["sellers"]["counts"] == {"active": 1, "reauthorize": 1, "removed": 1, "revoked": 1}
    assert [s["merchant_id"] for s in report["sellers"]["attention"]] == ["M_REAUTH", "M_REVOKED"]
    problems = "\n".join(report["problems"])
    assert "M_REAUTH: Square refused its refresh token" in problems and "M_REVOKED: access revoked" in problems
    assert "webhook subscription: the subscription is disabled" in problems
    square[0].script = [json_reply({"subscriptions": [subscription()]})]
    code, human = await cli(capsys, "status")
    assert "OAuth sellers: 1 active, 1 reauthorize, 1 removed, 1 revoked" in human
    assert "M_REAUTH: reauthorize since" in human
    assert "webhook subscription wbhk_1: matches the configuration" in human


async def test_status_says_the_check_is_off_without_the_application_token(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_dsn: str) -> None:
    env.delenv("SQUARE_APPLICATION_ACCESS_TOKEN")
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("INSERT INTO square_private.seller_credentials (merchant_id, access_token) "
                           "VALUES ('M_OK', 'x')")
    finally:
        await conn.close()
    code, output = await cli(capsys, "status")
    assert code == 0, output
    assert "webhook subscription check: off (SQUARE_APPLICATION_ACCESS_TOKEN is not set" in output
    assert "the events replay lane is off for OAuth sellers" in output
