"""The sellers and webhook subscription commands against the emulator's OAuth and Webhook Subscriptions API:
the authorize URL works there, a held refresh token (code flow and PKCE) becomes a stored seller, and a
subscription made by `webhooks subscribe` passes `webhooks check`."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from yarl import URL

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator
from square_mirror.credentials.cipher import TokenCipher, new_key
from square_mirror.credentials.oauth_state import check_state
from square_mirror.settings import Secret
from tests.integration.sellers.test_sellers_cli import cli

APP_TOKEN = "emulator-application-token"
REDIRECT = "https://mirror.example/oauth/callback"
NOTIFY = "https://mirror.example/square/webhooks"


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=19, application_token=APP_TOKEN)) as handle:
        yield handle


@pytest.fixture
def key() -> str:
    return new_key()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_dsn: str, emu: EmulatorHandle, key: str) -> pytest.MonkeyPatch:
    for name in ("REDIS_URL", "SQUARE_ACCESS_TOKEN", "SQUARE_TOKENS_FILE", "SQUARE_MERCHANT_ID",
                 "SQUARE_WEBHOOK_SIGNATURE_KEY", "SQUARE_VERSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", db_dsn)
    monkeypatch.setenv("SQUARE_BASE_URL", emu.base_url)
    monkeypatch.setenv("SQUARE_APPLICATION_ID", emu.emulator.application_id)
    monkeypatch.setenv("SQUARE_APPLICATION_SECRET", emu.emulator.application_secret)
    monkeypatch.setenv("SQUARE_APPLICATION_ACCESS_TOKEN", APP_TOKEN)
    monkeypatch.setenv("SQUARE_MIRROR_ENCRYPTION_KEYS", key)
    monkeypatch.setenv("SQUARE_OAUTH_REDIRECT_URL", REDIRECT)
    monkeypatch.setenv("SQUARE_WEBHOOK_NOTIFICATION_URL", NOTIFY)
    return monkeypatch


async def test_the_printed_authorize_url_connects_a_seller_on_the_emulator_and_returns_the_state(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], emu: EmulatorHandle, key: str) -> None:
    code, output = await cli(capsys, "sellers", "connect-url")
    assert code == 0
    url = output.splitlines()[0]
    assert url.startswith(emu.base_url + "/oauth2/authorize?")
    async with emu._session.get(url + "&emulator_merchant_id=MLCONNECT01", allow_redirects=False) as response:
        assert response.status == 302
        location = URL(response.headers["Location"])
    assert str(location.with_query(None)) == REDIRECT
    sent_state = parse_qs(urlsplit(url).query)["state"][0]
    assert location.query["state"] == sent_state and check_state((Secret(key),), sent_state)
    status, grant = await emu.obtain_token(grant_type="authorization_code", code=location.query["code"],
                                           client_secret=emu.emulator.application_secret, redirect_uri=REDIRECT)
    assert status == 200 and grant["merchant_id"] == "MLCONNECT01"


async def test_add_turns_a_held_code_flow_refresh_token_into_a_stored_seller_with_its_scopes(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], emu: EmulatorHandle, db_dsn: str,
        tmp_path: Path) -> None:
    grant = await emu.connect_seller("MLADDED0001")
    token_file = tmp_path / "refresh"
    token_file.write_text(grant["refresh_token"])
    code, output = await cli(capsys, "sellers", "add", "--merchant", "MLADDED0001", "--refresh-token-file",
                             str(token_file))
    assert code == 0, output
    assert grant["refresh_token"] not in output and grant["access_token"] not in output
    conn = await asyncpg.connect(db_dsn)
    try:
        row = await conn.fetchrow("SELECT status, refresh_kind, scopes FROM square_private.seller_credentials "
                                  "WHERE merchant_id = 'MLADDED0001'")
    finally:
        await conn.close()
    assert (row["status"], row["refresh_kind"]) == ("active", "code")
    assert set(row["scopes"]) == {"CUSTOMERS_READ", "MERCHANT_PROFILE_READ"}
    code, listing = await cli(capsys, "sellers", "list", "--json")
    (seller,) = json.loads(listing)
    assert (seller["merchant_id"], seller["kind"], seller["status"]) == ("MLADDED0001", "oauth", "active")
    assert seller["token_expires_at"] is not None


async def test_add_with_pkce_stores_the_next_single_use_refresh_token(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], emu: EmulatorHandle, db_dsn: str, key: str,
        tmp_path: Path) -> None:
    verifier = "a-code-verifier-of-enough-length-0123456789-abcdefghij"
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = await emu.authorize("MLPKCE00001", code_challenge=challenge, redirect_uri=REDIRECT)
    status, grant = await emu.obtain_token(grant_type="authorization_code", code=query["code"],
                                           code_verifier=verifier, redirect_uri=REDIRECT)
    assert status == 200, grant
    token_file = tmp_path / "refresh"
    token_file.write_text(grant["refresh_token"])
    env.delenv("SQUARE_APPLICATION_SECRET")
    code, output = await cli(capsys, "sellers", "add", "--merchant", "MLPKCE00001", "--refresh-token-file",
                             str(token_file), "--pkce")
    assert code == 0, output
    conn = await asyncpg.connect(db_dsn)
    try:
        stored = await conn.fetchval("SELECT refresh_token FROM square_private.seller_credentials "
                                     "WHERE merchant_id = 'MLPKCE00001'")
    finally:
        await conn.close()
    next_token = TokenCipher((Secret(key),)).decrypt(stored)
    assert next_token != grant["refresh_token"]
    spent, _ = await emu.obtain_token(grant_type="refresh_token", refresh_token=grant["refresh_token"])
    assert spent != 200  # the file's token is spent: only the stored one works now
    works, _ = await emu.obtain_token(grant_type="refresh_token", refresh_token=next_token)
    assert works == 200


async def test_a_subscription_made_by_subscribe_passes_check_and_a_changed_url_does_not(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], emu: EmulatorHandle, tmp_path: Path) -> None:
    key_file = tmp_path / "signature-key"
    code, output = await cli(capsys, "webhooks", "subscribe", "--url", NOTIFY, "--signature-key-file", str(key_file))
    assert code == 0, output
    assert key_file.read_text().strip()
    code, output = await cli(capsys, "webhooks", "check")
    assert code == 0, output
    env.setenv("SQUARE_WEBHOOK_NOTIFICATION_URL", NOTIFY + "/")
    code, output = await cli(capsys, "webhooks", "check")
    assert code == 1
    assert f"notification URL differs at byte {len(NOTIFY) + 1}" in output


async def test_remove_with_revoke_revokes_the_applications_access_at_square_then_stops_syncing(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], emu: EmulatorHandle, db_dsn: str,
        tmp_path: Path) -> None:
    grant = await emu.connect_seller("MLREVOKE001")
    token_file = tmp_path / "refresh"
    token_file.write_text(grant["refresh_token"])
    code, _ = await cli(capsys, "sellers", "add", "--merchant", "MLREVOKE001", "--refresh-token-file", str(token_file))
    assert code == 0
    code, output = await cli(capsys, "sellers", "remove", "--merchant", "MLREVOKE001", "--revoke")
    assert code == 0 and "revoked at Square" in output
    assert grant["refresh_token"] not in output and grant["access_token"] not in output
    status, answer = await emu.obtain_token(grant_type="refresh_token", refresh_token=grant["refresh_token"],
                                            client_secret=emu.emulator.application_secret)
    assert status == 401, answer  # the authorization is gone at Square
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT status FROM square_private.seller_credentials") == "removed"
    finally:
        await conn.close()
