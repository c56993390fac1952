"""`square-mirror sellers ...`: connect, add, list and remove sellers, and rotate the key that encrypts their tokens.

OAuth sellers' tokens live encrypted in ``square_private.seller_credentials`` (square_mirror/credentials/); the
sellers of ``SQUARE_TOKENS_FILE`` and ``SQUARE_ACCESS_TOKEN`` are listed beside them. No command here ever
prints a token, a refresh token or the client secret, and a refresh token is read from a file, never from argv.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from square_mirror.settings import Secret, Settings, SettingsError, load_tokens_file

HELP: Final = (
    "Sellers served through OAuth: print the authorize URL a seller opens to connect (connect-url), add a seller "
    "whose refresh token you hold (add), list every seller with its token and sync state (list), stop syncing one "
    "and optionally delete its rows (remove), make and rotate the key that encrypts their tokens (new-key, "
    "rotate-key)."
)
_MERCHANT_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _merchant_id(text: str) -> str:
    if not _MERCHANT_ID_RE.match(text):
        raise argparse.ArgumentTypeError(f"not a merchant ID: {text!r}")
    return text


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("connect-url", help="print the authorize URL a seller opens to connect the application",
                   description="Print Square's authorize URL for this application (SQUARE_APPLICATION_ID), asking "
                   "for CUSTOMERS_READ and MERCHANT_PROFILE_READ, with a fresh signed state (valid for an hour, used "
                   "once) and SQUARE_OAUTH_REDIRECT_URL as redirect_uri when set. The receiver's OAuth redirect "
                   "finishes the connection.")
    add = sub.add_parser("add", help="add a seller whose refresh token you already hold",
                         description="Add a seller whose application already did the OAuth dance: refresh its token "
                         "once (ObtainToken), check the answer is that merchant's, store the tokens encrypted, record "
                         "the seller and queue its backfill (with REDIS_URL).")
    add.add_argument("--merchant", required=True, type=_merchant_id, metavar="ID", help="the seller's merchant ID")
    add.add_argument("--refresh-token-file", required=True, type=Path, metavar="F",
                     help="a file holding the refresh token (never passed on the command line)")
    add.add_argument("--pkce", action="store_true",
                     help="a PKCE grant (single-use refresh token, no client secret); default: the code flow")
    listing = sub.add_parser("list", help="every seller: kind, token status and expiry, last refresh, sync and lag",
                             description="Every seller (OAuth, SQUARE_TOKENS_FILE, SQUARE_ACCESS_TOKEN, and any the "
                             "mirror holds rows of): status, token expiry, last refresh, last error, last succeeded "
                             "backfill or lane run, and the time since its last processed webhook event.")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    remove = sub.add_parser("remove", help="stop syncing a seller; --purge also deletes every row of it",
                            description="Mark an OAuth seller removed: its token leaves the workers at their next "
                            "reload and its jobs and lanes stop. --purge also deletes every row of the seller from "
                            "every table of schemas square and square_private, history included, in batches.")
    remove.add_argument("--merchant", required=True, type=_merchant_id, metavar="ID", help="the seller's merchant ID")
    remove.add_argument("--purge", action="store_true", help="also delete every row of the seller")
    remove.add_argument("--batch-size", type=int, default=5000, metavar="N", help="rows per delete (default 5000)")
    remove.add_argument("--revoke", action="store_true",
                        help="first revoke the application's access at Square (RevokeToken), so the seller's "
                        "webhooks stop too")
    remove.add_argument("--force", action="store_true",
                        help="purge even when the mirror does not know the merchant or it is still configured")
    refresh = sub.add_parser("refresh", help="refresh OAuth tokens now (the worker does it hourly)",
                             description="Refresh the tokens the hourly job would (older than TOKEN_REFRESH_AGE_DAYS), "
                             "or one seller's at once with --merchant. Exit status 1 when a refresh failed.")
    refresh.add_argument("--merchant", type=_merchant_id, metavar="ID", help="refresh this seller's token now")
    sub.add_parser("new-key", help="print a fresh encryption key for SQUARE_MIRROR_ENCRYPTION_KEYS",
                   description="Print a fresh Fernet key. Put it first in SQUARE_MIRROR_ENCRYPTION_KEYS, then run "
                   "rotate-key.")
    sub.add_parser("rotate-key", help="re-encrypt every stored token with the first configured key",
                   description="Re-encrypt every stored token with the first key of SQUARE_MIRROR_ENCRYPTION_KEYS "
                   "(every configured key decrypts). Afterwards the other keys may be dropped.")


async def run(args: argparse.Namespace) -> int:
    from square_mirror.credentials.cipher import CipherUnavailable

    actions: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[int]]] = {
        "connect-url": connect_url, "add": add_seller, "list": list_sellers, "remove": remove_seller,
        "new-key": print_new_key, "rotate-key": rotate_key, "refresh": refresh_tokens,
    }
    settings = Settings.from_env()
    try:
        return await actions[args.action](settings, args)
    except CipherUnavailable as exc:
        raise SettingsError(str(exc)) from None


# -- connect-url, new-key, rotate-key ----------------------------------------------------------------------------

def _require_keys(settings: Settings) -> None:
    if not settings.encryption_keys:
        raise SettingsError("SQUARE_MIRROR_ENCRYPTION_KEYS is not set: it encrypts sellers' tokens and signs the "
                            "OAuth state (square-mirror sellers new-key makes a key)")


def _require_application_id(settings: Settings) -> str:
    if not settings.square_application_id:
        raise SettingsError("SQUARE_APPLICATION_ID is not set (the application's ID, sq0idp-...)")
    return settings.square_application_id


async def connect_url(settings: Settings, _args: argparse.Namespace) -> int:
    from square_mirror.credentials.oauth_state import LIFETIME_SECONDS, new_state
    from square_mirror.square_api import authorize_url

    application_id = _require_application_id(settings)
    _require_keys(settings)
    state = new_state(settings.encryption_keys)
    print(authorize_url(settings.square_base_url, application_id, state, settings.square_oauth_redirect_url))
    where = settings.square_oauth_redirect_url or "the redirect URL registered with the application"
    print(f"Valid for {LIFETIME_SECONDS // 60} minutes and for one connection; Square sends the seller back to "
          f"{where}.", file=sys.stderr)
    return 0


async def print_new_key(_settings: Settings, _args: argparse.Namespace) -> int:
    from square_mirror.credentials.cipher import new_key

    print(new_key())
    return 0


async def rotate_key(settings: Settings, _args: argparse.Namespace) -> int:
    from square_mirror.credentials.cipher import TokenCipher
    from square_mirror.credentials.store import CredentialStore
    from square_mirror.db import create_pool

    _require_keys(settings)
    cipher = TokenCipher(settings.encryption_keys)
    pool = await create_pool(settings.require_database_url(), min_size=1, max_size=2)
    try:
        done = await CredentialStore(pool, cipher).reencrypt()
    finally:
        await pool.close()
    print(f"re-encrypted the tokens of {done} seller(s) with the first key of SQUARE_MIRROR_ENCRYPTION_KEYS; the "
          "other keys may now be removed from it")
    return 0


async def refresh_tokens(settings: Settings, args: argparse.Namespace) -> int:
    from worker.context import open_context

    _require_keys(settings)
    async with open_context(settings) as wc:
        assert wc.sellers is not None  # the keys are set
        if args.merchant:
            results = [await wc.sellers.refresher.refresh(args.merchant)]
        else:
            results = await wc.sellers.refresh_due()
    for result in results:
        print(f"{result.merchant_id}: {result.outcome}" + (f" ({result.status}: {result.error})"
                                                          if result.outcome == "failed" else ""))
    if not results:
        print("no token is due for a refresh")
    return 1 if any(r.outcome == "failed" for r in results) else 0


# -- add ---------------------------------------------------------------------------------------------------------

def _read_refresh_token(path: Path) -> Secret:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"--refresh-token-file {str(path)!r} cannot be read: {type(exc).__name__}") from None
    if not value:
        raise SettingsError(f"--refresh-token-file {str(path)!r} is empty")
    if any(c.isspace() for c in value):
        raise SettingsError(f"--refresh-token-file {str(path)!r} holds more than one token (white space inside)")
    return Secret(value)


def _refresh_body(settings: Settings, refresh: Secret, pkce: bool) -> dict[str, str]:
    body = {"client_id": _require_application_id(settings), "grant_type": "refresh_token",
            "refresh_token": refresh.reveal()}
    if not pkce:
        if settings.square_application_secret is None:
            raise SettingsError("SQUARE_APPLICATION_SECRET is not set: the code flow's refresh needs the client "
                                "secret (a PKCE grant: --pkce)")
        body["client_secret"] = settings.square_application_secret.reveal()
    return body


async def add_seller(settings: Settings, args: argparse.Namespace) -> int:
    from square_mirror.credentials.cipher import TokenCipher
    from square_mirror.credentials.store import CODE, PKCE, CredentialStore, Grant
    from square_mirror.errors import SquareError
    from worker import store
    from worker.context import open_context

    refresh = _read_refresh_token(args.refresh_token_file)
    body = _refresh_body(settings, refresh, args.pkce)
    _require_keys(settings)
    settings.require_database_url()
    async with open_context(settings, concurrency=1, enqueue=True) as context:
        try:
            answer = await context.client.obtain_token(body)
        except SquareError as exc:
            print(f"square-mirror: error: Square refused the refresh ({exc}); the seller must connect again "
                  "(square-mirror sellers connect-url)", file=sys.stderr)
            return 1
        grant = Grant.from_response(answer)
        if grant.merchant_id != args.merchant:
            spent = " The file's PKCE refresh token is spent now: the seller must connect again." if args.pkce else ""
            print(f"square-mirror: error: the refresh token belongs to merchant {grant.merchant_id}, not "
                  f"{args.merchant}; nothing stored.{spent}", file=sys.stderr)
            return 1
        if grant.refresh_token is None:  # the code flow's refresh token is reusable: keep the one given
            grant = replace(grant, refresh_token=refresh)
        credentials = CredentialStore(context.pool, TokenCipher(settings.encryption_keys))
        kind = PKCE if args.pkce else CODE
        await credentials.save_grant(grant, kind=kind)  # first: a PKCE refresh token is single-use
        scopes = await _scopes(context.client, grant.access_token)
        if scopes:
            await credentials.save_grant(replace(grant, scopes=tuple(scopes)), kind=kind)
        await store.ensure_merchant(context.pool, args.merchant)
        print(f"added seller {args.merchant} ({kind} flow), access token valid until "
              f"{_when(grant.access_token_expires_at)}")
        _warn_scopes(scopes)
        return await _queue_backfill(context.arq_redis, args.merchant)


async def _scopes(client: Any, token: Secret) -> list[str] | None:
    """The grant's scopes (RetrieveTokenStatus), or None when Square did not say."""
    from square_mirror.errors import SquareError

    try:
        status = await client.retrieve_token_status(token.reveal())
    except SquareError:
        return None
    scopes = status.get("scopes")
    return [str(s) for s in scopes] if isinstance(scopes, list) else None


def _warn_scopes(scopes: list[str] | None) -> None:
    from square_mirror.square_api import OAUTH_SCOPES

    if scopes is None:
        print("warning: Square did not say the grant's scopes (RetrieveTokenStatus); not checked", file=sys.stderr)
        return
    missing = [s for s in OAUTH_SCOPES if s not in scopes]
    if missing:
        print(f"warning: the grant lacks {', '.join(missing)}: the mirror cannot read this seller's customers until "
              "the seller connects again through square-mirror sellers connect-url", file=sys.stderr)


async def _queue_backfill(arq_redis: Any, merchant_id: str) -> int:
    from square_mirror.constants import BACKFILL_JOB, backfill_job_id, queue_for

    if arq_redis is None:
        print(f"REDIS_URL is not set: run square-mirror backfill --merchant {merchant_id} to copy its customers")
        return 0
    job = await arq_redis.enqueue_job(BACKFILL_JOB, merchant_id, False, _job_id=backfill_job_id(merchant_id),
                                      _queue_name=queue_for(BACKFILL_JOB))
    print(f"backfill of {merchant_id} {'queued' if job is not None else 'already queued or running'}")
    return 0


# -- list --------------------------------------------------------------------------------------------------------

def _configured(settings: Settings) -> dict[str, str]:
    """merchant ID -> how configuration names it (tokens_file, access_token)."""
    configured: dict[str, str] = {}
    if settings.square_merchant_id and settings.square_access_token is not None:
        configured[settings.square_merchant_id] = "access_token"
    if settings.square_tokens_file is not None:
        configured.update(dict.fromkeys(load_tokens_file(settings.square_tokens_file), "tokens_file"))
    return configured


def _when(value: Any) -> Any:
    from square_mirror.timefmt import iso

    return iso(value) if isinstance(value, datetime) else value


async def seller_rows(conn: Any, settings: Settings) -> list[dict[str, Any]]:
    """One entry per seller, without any token."""
    from square_mirror.credentials.store import credential_rows
    from worker.queries import queries

    configured = _configured(settings)
    credentials = {r["merchant_id"]: r for r in await credential_rows(conn)}
    entries = []
    for row in await conn.fetch(queries.get("seller_sync_state"), sorted(configured)):
        mid = row["merchant_id"]
        kinds = [k for k in ("oauth",) if mid in credentials] + ([configured[mid]] if mid in configured else [])
        cred = credentials.get(mid)
        entry: dict[str, Any] = {
            "merchant_id": mid, "kind": "+".join(kinds) or "mirror_only",
            "status": cred["status"] if cred else ("configured" if mid in configured else "unconfigured"),
            "token_expires_at": _when(cred["access_token_expires_at"]) if cred else None,
            "last_refresh_at": _when(cred["refreshed_at"]) if cred else None,
            "refresh_failures": cred["refresh_failures"] if cred else None,
            "last_error": cred["last_error"] if cred else None,
            "last_sync_at": _when(row["last_sync_at"]), "last_sync_kind": row["last_sync_kind"],
            "last_event_at": _when(row["last_event_at"]),
            "lag_seconds": round(float(row["lag_seconds"]), 1) if row["lag_seconds"] is not None else None,
        }
        entries.append(entry)
    return entries


def render_sellers(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no sellers (square-mirror sellers connect-url connects one)"
    lines = []
    for e in entries:
        lines.append(f"{e['merchant_id']}  {e['kind']}  {e['status']}")
        if "oauth" in e["kind"]:
            lines.append(f"    token expires {e['token_expires_at'] or 'unknown'}, last refresh "
                         f"{e['last_refresh_at'] or 'never'}" + (f", {e['refresh_failures']} failed refresh(es)"
                                                                 if e["refresh_failures"] else ""))
        if e["last_error"]:
            lines.append(f"    last error: {e['last_error']}")
        sync = f"{e['last_sync_at']} ({e['last_sync_kind']})" if e["last_sync_at"] else "never"
        lag = f"{e['lag_seconds']} s ago ({e['last_event_at']})" if e["last_event_at"] else "no event processed yet"
        lines.append(f"    last sync {sync}; last webhook event {lag}")
    return "\n".join(lines)


async def list_sellers(settings: Settings, args: argparse.Namespace) -> int:
    from square_mirror.db import connect

    conn = await connect(settings.require_database_url())
    try:
        entries = await seller_rows(conn, settings)
    finally:
        await conn.close()
    if args.json:
        import orjson

        print(orjson.dumps(entries).decode())
    else:
        print(render_sellers(entries))
    return 0


# -- remove ------------------------------------------------------------------------------------------------------

async def remove_seller(settings: Settings, args: argparse.Namespace) -> int:
    from square_mirror.credentials.store import REMOVED, credential_rows, set_status
    from square_mirror.db import connect

    if args.batch_size < 1:
        raise SettingsError("--batch-size must be at least 1")
    mid = args.merchant
    configured = _configured(settings).get(mid)
    conn = await connect(settings.require_database_url())
    try:
        is_oauth = mid in {r["merchant_id"] for r in await credential_rows(conn)}
        if args.purge:
            refusal = await _purge_refusal(conn, mid, configured, args.force)
            if refusal:
                print(f"square-mirror: error: {refusal}", file=sys.stderr)
                return 1
        if args.revoke:
            await _revoke(settings, mid)
        if is_oauth:
            await set_status(conn, mid, REMOVED, "square-mirror sellers remove")
            print(f"{mid}: removed: its token leaves the workers at their next reload (15 s) and its jobs and "
                  "lanes stop")
        elif not args.purge:
            return _not_oauth(mid, configured)
        if args.purge:
            await _purge(conn, mid, args.batch_size)
        elif is_oauth:
            print(f"its rows stay in the mirror: square-mirror sellers remove --merchant {mid} --purge deletes them")
    finally:
        await conn.close()
    return 0


async def _revoke(settings: Settings, merchant_id: str) -> None:
    """RevokeToken for every token of the seller (``Authorization: Client SECRET``): its webhooks stop, so nothing
    of it comes back after a purge."""
    from worker.context import open_context

    application_id = _require_application_id(settings)
    if settings.square_application_secret is None:
        raise SettingsError("SQUARE_APPLICATION_SECRET is not set: --revoke needs the application's client secret")
    async with open_context(settings) as wc:
        await wc.client.revoke_token(settings.square_application_secret.reveal(),
                                     {"client_id": application_id, "merchant_id": merchant_id})
    print(f"{merchant_id}: the application's access revoked at Square")


def _not_oauth(mid: str, configured: str | None) -> int:
    if configured == "tokens_file":
        print(f"square-mirror: error: {mid} is not an OAuth seller: remove it from SQUARE_TOKENS_FILE to stop "
              "syncing it (then --purge deletes its rows)", file=sys.stderr)
    elif configured == "access_token":
        print(f"square-mirror: error: {mid} is SQUARE_MERCHANT_ID's seller: unset SQUARE_ACCESS_TOKEN to stop "
              "syncing it", file=sys.stderr)
    else:
        print(f"square-mirror: error: {mid} is not an OAuth seller of this mirror", file=sys.stderr)
    return 1


async def _purge_refusal(conn: Any, mid: str, configured: str | None, force: bool) -> str | None:
    from worker.queries import queries

    if force:
        return None
    if not await conn.fetchval(queries.get("seller_is_known"), mid):
        return (f"the mirror does not know merchant {mid} (no row in square.merchants, no OAuth credentials): "
                "check the ID, or pass --force to purge its rows anyway")
    if configured:
        where = "SQUARE_TOKENS_FILE" if configured == "tokens_file" else "SQUARE_MERCHANT_ID"
        return (f"{mid} is still configured in {where}, so the workers would sync it again: remove it there first "
                "(or pass --force)")
    return None


async def _purge(conn: Any, mid: str, batch_size: int) -> None:
    from worker.purge import purge_seller

    removed = await purge_seller(conn, mid, batch_size=batch_size)
    for table, count in removed.items():
        print(f"{table}: {count} row(s) removed")
    print(f"{mid}: purged, {sum(removed.values())} row(s) in {sum(1 for c in removed.values() if c)} table(s)")
