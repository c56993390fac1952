"""`square-mirror sellers ...` end to end: real Postgres, real Redis, a scripted Square over HTTP.

Every command's happy path and its clear errors; the purge leaves no row of the seller in any table (the table list
read from the catalog) and keeps the other seller's; a key rotation survives dropping the old key; and no token,
refresh token or client secret appears in any output.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from square_mirror.cli import build_parser
from square_mirror.credentials.cipher import TokenCipher, new_key
from square_mirror.credentials.oauth_state import check_state
from square_mirror.credentials.store import CredentialStore, Grant
from square_mirror.settings import Secret, SettingsError
from tests.integration.sellers.seed import rows_per_table, seed_seller
from tests.scripted_square import ScriptedSquare, json_reply

MERCHANT = "MLQW2MYBY81PZ"
OTHER = "OTHER0MERCHANT"
ACCESS = "EAAl3ikZIe18J-access-token-never-shown"
REFRESH = "EQAAl0OcByu3IYJ-refresh-token-never-shown"
NEW_REFRESH = "EQAAnext-single-use-refresh-token-never-shown"
SECRET = "sq0csp-client-secret-never-shown"
APP_ID = "sq0idp-mirror-app"
NEVER_SHOWN = (ACCESS, REFRESH, NEW_REFRESH, SECRET)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run one command in this event loop as ``square-mirror`` would; (exit code, stdout + stderr)."""
    args = build_parser(argv[0]).parse_args(list(argv))
    try:
        code = int(await importlib.import_module(args._module).run(args) or 0)
    except SettingsError as exc:
        print(f"square-mirror: error: {exc}", file=sys.stderr)
        code = 2
    captured = capsys.readouterr()
    output = captured.out + captured.err
    for secret in NEVER_SHOWN:
        assert secret not in output
    return code, output


@pytest.fixture
def key() -> str:
    return new_key()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_dsn: str, key: str, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("REDIS_URL", "SQUARE_ACCESS_TOKEN", "SQUARE_TOKENS_FILE", "SQUARE_MERCHANT_ID",
                 "SQUARE_APPLICATION_ACCESS_TOKEN", "SQUARE_OAUTH_REDIRECT_URL", "SQUARE_WEBHOOK_NOTIFICATION_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", db_dsn)
    monkeypatch.setenv("SQUARE_APPLICATION_ID", APP_ID)
    monkeypatch.setenv("SQUARE_APPLICATION_SECRET", SECRET)
    monkeypatch.setenv("SQUARE_MIRROR_ENCRYPTION_KEYS", key)
    return monkeypatch


@pytest.fixture
def refresh_file(tmp_path: Path) -> Path:
    path = tmp_path / "refresh-token"
    path.write_text(REFRESH + "\n")
    return path


def token_answer(merchant_id: str = MERCHANT, **extra: Any) -> dict[str, Any]:
    return {"access_token": ACCESS, "token_type": "bearer", "expires_at": "2031-04-03T18:31:06Z",
            "merchant_id": merchant_id, "refresh_token": REFRESH, "short_lived": False, **extra}


# -- connect-url ----------------------------------------------------------------------------------------------

async def test_connect_url_asks_for_the_mirrors_scopes_with_a_signed_state_on_the_configured_host(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], key: str) -> None:
    env.setenv("SQUARE_BASE_URL", "http://127.0.0.1:8089")
    env.setenv("SQUARE_OAUTH_REDIRECT_URL", "https://mirror.example/square/oauth")
    code, output = await cli(capsys, "sellers", "connect-url")
    assert code == 0
    url = urlsplit(output.splitlines()[0])
    assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:8089", "/oauth2/authorize")
    assert "scope=CUSTOMERS_READ+MERCHANT_PROFILE_READ" in url.query
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert params["client_id"] == APP_ID
    assert params["session"] == "False"
    assert params["redirect_uri"] == "https://mirror.example/square/oauth"
    assert check_state((Secret(key),), params["state"])


async def test_connect_url_gives_a_fresh_state_each_time(env: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    first = (await cli(capsys, "sellers", "connect-url"))[1].splitlines()[0]
    second = (await cli(capsys, "sellers", "connect-url"))[1].splitlines()[0]
    assert first != second
    assert "redirect_uri" not in first


@pytest.mark.parametrize(("unset", "named"), [("SQUARE_APPLICATION_ID", "SQUARE_APPLICATION_ID is not set"),
                                              ("SQUARE_MIRROR_ENCRYPTION_KEYS",
                                               "SQUARE_MIRROR_ENCRYPTION_KEYS is not set")])
async def test_connect_url_names_the_missing_setting(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                     unset: str, named: str) -> None:
    env.delenv(unset)
    code, output = await cli(capsys, "sellers", "connect-url")
    assert code == 2
    assert named in output


# -- add ------------------------------------------------------------------------------------------------------

async def test_add_refreshes_once_stores_the_grant_encrypted_records_the_seller_and_queues_its_backfill(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        refresh_file: Path, db_dsn: str, redis_url: str, key: str) -> None:
    fake, base_url = square
    env.setenv("SQUARE_BASE_URL", base_url)
    env.setenv("REDIS_URL", redis_url)
    fake.script = [json_reply(token_answer()),
                   json_reply({"scopes": ["CUSTOMERS_READ", "MERCHANT_PROFILE_READ"], "merchant_id": MERCHANT,
                               "client_id": APP_ID, "expires_at": "2031-04-03T18:31:06Z"})]
    code, output = await cli(capsys, "sellers", "add", "--merchant", MERCHANT, "--refresh-token-file",
                             str(refresh_file))
    assert code == 0, output
    assert "backfill of MLQW2MYBY81PZ queued" in output
    obtain = fake.requests[0]
    assert obtain["path"] == "/oauth2/token"
    assert obtain["body"] == {"client_id": APP_ID, "client_secret": SECRET, "grant_type": "refresh_token",
                              "refresh_token": REFRESH}
    assert fake.requests[1]["path"] == "/oauth2/token/status"
    conn = await asyncpg.connect(db_dsn)
    try:
        row = await conn.fetchrow("SELECT * FROM square_private.seller_credentials WHERE merchant_id = $1", MERCHANT)
        assert await conn.fetchval("SELECT count(*) FROM square.merchants WHERE merchant_id = $1", MERCHANT) == 1
    finally:
        await conn.close()
    assert row["status"] == "active" and row["refresh_kind"] == "code"
    assert list(row["scopes"]) == ["CUSTOMERS_READ", "MERCHANT_PROFILE_READ"]
    assert ACCESS not in row["access_token"] and REFRESH not in row["refresh_token"]
    cipher = TokenCipher((Secret(key),))
    assert (cipher.decrypt(row["access_token"]), cipher.decrypt(row["refresh_token"])) == (ACCESS, REFRESH)
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.exists(f"arq:job:backfill:{MERCHANT}")
    finally:
        await client.aclose()


async def test_add_of_a_pkce_grant_sends_no_client_secret_and_keeps_the_next_refresh_token(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        refresh_file: Path, db_dsn: str, key: str) -> None:
    fake, base_url = square
    env.setenv("SQUARE_BASE_URL", base_url)
    env.delenv("SQUARE_APPLICATION_SECRET")
    fake.script = [json_reply(token_answer(refresh_token=NEW_REFRESH,
                                           refresh_token_expires_at="2031-07-01T00:00:00Z")),
                   json_reply({"scopes": ["CUSTOMERS_READ"]})]
    code, output = await cli(capsys, "sellers", "add", "--merchant", MERCHANT, "--refresh-token-file",
                             str(refresh_file), "--pkce")
    assert code == 0, output
    assert "client_secret" not in fake.requests[0]["body"]
    assert "REDIS_URL is not set: run square-mirror backfill --merchant MLQW2MYBY81PZ" in output
    assert "lacks MERCHANT_PROFILE_READ" in output
    conn = await asyncpg.connect(db_dsn)
    try:
        row = await conn.fetchrow("SELECT * FROM square_private.seller_credentials WHERE merchant_id = $1", MERCHANT)
    finally:
        await conn.close()
    assert row["refresh_kind"] == "pkce"
    assert TokenCipher((Secret(key),)).decrypt(row["refresh_token"]) == NEW_REFRESH


async def test_add_refuses_a_refresh_token_of_another_merchant_and_stores_nothing(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        refresh_file: Path, db_dsn: str) -> None:
    fake, base_url = square
    env.setenv("SQUARE_BASE_URL", base_url)
    fake.script = [json_reply(token_answer(merchant_id=OTHER))]
    code, output = await cli(capsys, "sellers", "add", "--merchant", MERCHANT, "--refresh-token-file",
                             str(refresh_file))
    assert code == 1
    assert f"belongs to merchant {OTHER}, not {MERCHANT}; nothing stored" in output
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM square_private.seller_credentials") == 0
        assert await conn.fetchval("SELECT count(*) FROM square.merchants") == 0
    finally:
        await conn.close()


async def test_add_reports_a_refused_refresh_token_without_showing_it(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        refresh_file: Path) -> None:
    fake, base_url = square
    env.setenv("SQUARE_BASE_URL", base_url)
    fake.script = [json_reply({"errors": [{"code": "BAD_REQUEST", "category": "INVALID_REQUEST_ERROR",
                                           "detail": "invalid refresh token"}]}, status=400)]
    code, output = await cli(capsys, "sellers", "add", "--merchant", MERCHANT, "--refresh-token-file",
                             str(refresh_file))
    assert code == 1
    assert "Square refused the refresh (ObtainToken: 400 BAD_REQUEST)" in output


async def test_add_names_what_is_missing_before_calling_square(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], square: tuple[ScriptedSquare, str],
        refresh_file: Path, tmp_path: Path) -> None:
    fake, base_url = square
    env.setenv("SQUARE_BASE_URL", base_url)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in (await cli(capsys, "sellers", "add", "--merchant", MERCHANT, "--refresh-token-file",
                                    str(empty)))[1]
    assert "cannot be read" in (await cli(capsys, "sellers", "add", "--merchant", MERCHANT, "--refresh-token-file",
                                          str(tmp_path / "absent")))[1]
    env.delenv("SQUARE_APPLICATION_SECRET")
    code, output = await cli(capsys, "sellers", "add", "--merchant", MERCHANT, "--refresh-token-file",
                             str(refresh_file))
    assert code == 2
    assert "SQUARE_APPLICATION_SECRET is not set" in output
    assert fake.requests == []


# -- list -----------------------------------------------------------------------------------------------------

async def _store_grant(dsn: str, key: str, merchant_id: str, status: str = "active") -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        store = CredentialStore(pool, TokenCipher((Secret(key),)))
        await store.save_grant(Grant.from_response(token_answer(merchant_id)))
        if status != "active":
            await pool.execute("UPDATE square_private.seller_credentials SET status = $2, last_error = 'refused' "
                               "WHERE merchant_id = $1", merchant_id, status)
    finally:
        await pool.close()


async def test_list_shows_oauth_and_tokens_file_sellers_with_status_expiry_sync_and_lag_but_no_token(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_dsn: str, key: str, tmp_path: Path) -> None:
    await _store_grant(db_dsn, key, MERCHANT)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({OTHER: "EAAA-file-token-never-shown"}))
    env.setenv("SQUARE_TOKENS_FILE", str(tokens))
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("INSERT INTO square.sync_runs (merchant_id, kind, status, finished_at) VALUES "
                           "($1, 'backfill', 'succeeded', now() - interval '1 hour'), "
                           "($1, 'reconcile:incremental', 'failed', now())", MERCHANT)
        await conn.execute("INSERT INTO square.webhook_events (merchant_id, event_id, type, processed_at) "
                           "VALUES ($1, 'e1', 'customer.updated', now() - interval '90 seconds')", MERCHANT)
    finally:
        await conn.close()
    code, output = await cli(capsys, "sellers", "list", "--json")
    assert code == 0
    assert "EAAA-file-token-never-shown" not in output
    sellers = {s["merchant_id"]: s for s in json.loads(output)}
    assert set(sellers) == {MERCHANT, OTHER}
    oauth = sellers[MERCHANT]
    assert (oauth["kind"], oauth["status"], oauth["last_sync_kind"]) == ("oauth", "active", "backfill")
    assert oauth["token_expires_at"].startswith("2031-04-03T18:31:06")
    assert oauth["last_refresh_at"] is not None
    assert 85 <= oauth["lag_seconds"] < 600
    assert (sellers[OTHER]["kind"], sellers[OTHER]["status"], sellers[OTHER]["last_sync_at"]) == (
        "tokens_file", "configured", None)
    code, human = await cli(capsys, "sellers", "list")
    assert code == 0
    assert f"{MERCHANT}  oauth  active" in human and f"{OTHER}  tokens_file  configured" in human


# -- remove ---------------------------------------------------------------------------------------------------

async def test_remove_marks_the_seller_removed_so_its_token_is_no_longer_used(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_dsn: str, key: str) -> None:
    await _store_grant(db_dsn, key, MERCHANT)
    await _store_grant(db_dsn, key, OTHER)
    code, output = await cli(capsys, "sellers", "remove", "--merchant", MERCHANT)
    assert code == 0
    assert "removed" in output and "--purge deletes them" in output
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        assert set(await CredentialStore(pool, TokenCipher((Secret(key),))).usable_tokens()) == {OTHER}
        assert await pool.fetchval("SELECT status FROM square_private.seller_credentials WHERE merchant_id = $1",
                                   MERCHANT) == "removed"
    finally:
        await pool.close()


async def test_remove_of_a_seller_that_is_not_oauth_says_where_it_is_configured(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({OTHER: "EAAA-file-token"}))
    env.setenv("SQUARE_TOKENS_FILE", str(tokens))
    code, output = await cli(capsys, "sellers", "remove", "--merchant", OTHER)
    assert code == 1
    assert "remove it from SQUARE_TOKENS_FILE" in output
    code, output = await cli(capsys, "sellers", "remove", "--merchant", OTHER, "--purge")
    assert code == 1
    assert "does not know merchant" in output


async def test_purge_leaves_no_row_of_the_seller_in_any_table_and_keeps_the_other_sellers_rows(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_dsn: str) -> None:
    from worker.purge import seller_tables

    conn = await asyncpg.connect(db_dsn)
    try:
        tables = await seller_tables(conn)
        await seed_seller(conn, MERCHANT)
        await seed_seller(conn, OTHER)
        before = await rows_per_table(conn, MERCHANT, tables)
        others_before = await rows_per_table(conn, OTHER, tables)
    finally:
        await conn.close()
    assert {"square.customers", "square.customer_versions_closed", "square.webhook_events", "square.sync_runs",
            "square.customer_custom_attributes", "square_private.seller_credentials"} <= set(tables)
    unseeded = [table for table, count in before.items() if count == 0]
    assert unseeded == [], "a table holds sellers' rows but tests/integration/sellers/seed.py does not seed it"
    code, output = await cli(capsys, "sellers", "remove", "--merchant", MERCHANT, "--purge", "--batch-size", "1")
    assert code == 0, output
    assert "square.customers: 2 row(s) removed" in output
    assert f"{MERCHANT}: purged" in output
    conn = await asyncpg.connect(db_dsn)
    try:
        after = await rows_per_table(conn, MERCHANT, tables)
        others_after = await rows_per_table(conn, OTHER, tables)
    finally:
        await conn.close()
    assert {table: count for table, count in after.items() if count} == {}
    assert others_after == others_before


async def test_purge_refuses_a_seller_still_configured_unless_forced(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_dsn: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await seed_seller(conn, OTHER)
    finally:
        await conn.close()
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({OTHER: "EAAA-file-token"}))
    env.setenv("SQUARE_TOKENS_FILE", str(tokens))
    code, output = await cli(capsys, "sellers", "remove", "--merchant", OTHER, "--purge")
    assert code == 1
    assert "still configured in SQUARE_TOKENS_FILE" in output
    code, output = await cli(capsys, "sellers", "remove", "--merchant", OTHER, "--purge", "--force")
    assert code == 0
    assert f"{OTHER}: purged" in output


# -- keys -----------------------------------------------------------------------------------------------------

async def test_new_key_prints_a_fresh_fernet_key(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    first = (await cli(capsys, "sellers", "new-key"))[1].strip()
    second = (await cli(capsys, "sellers", "new-key"))[1].strip()
    assert first != second
    TokenCipher((Secret(first),)).decrypt(TokenCipher((Secret(first),)).encrypt("x"))


async def test_rotate_key_then_dropping_the_old_key_still_opens_every_token(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_dsn: str, key: str) -> None:
    await _store_grant(db_dsn, key, MERCHANT)
    await _store_grant(db_dsn, key, OTHER)
    fresh = new_key()
    env.setenv("SQUARE_MIRROR_ENCRYPTION_KEYS", f"{fresh},{key}")
    code, output = await cli(capsys, "sellers", "rotate-key")
    assert code == 0
    assert "re-encrypted the tokens of 2 seller(s)" in output
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        tokens = await CredentialStore(pool, TokenCipher((Secret(fresh),))).usable_tokens()
    finally:
        await pool.close()
    assert {m: t.reveal() for m, t in tokens.items()} == {MERCHANT: ACCESS, OTHER: ACCESS}


async def test_rotate_key_with_a_key_that_opens_nothing_says_so(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_dsn: str, key: str) -> None:
    await _store_grant(db_dsn, key, MERCHANT)
    env.setenv("SQUARE_MIRROR_ENCRYPTION_KEYS", new_key())
    code, output = await cli(capsys, "sellers", "rotate-key")
    assert code == 2
    assert "does not open with any configured encryption key" in output
