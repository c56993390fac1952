"""Sellers' OAuth credentials in ``square_private.seller_credentials``: tokens in and out, always through the
cipher, so a token is never written or read in the clear. SQL: ``square_mirror/sql/credentials.sql``.

Times a refresh decision reads (connected, refreshed, next try) are the process's clock (``timefmt.utcnow``),
not the database's, so a test can move them along with the emulator's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from square_mirror.credentials.cipher import TokenCipher
from square_mirror.credentials.oauth_state import state_hash
from square_mirror.queries import queries
from square_mirror.settings import Secret
from square_mirror.timefmt import parse_time, utcnow

ACTIVE, REFRESH_FAILED, REAUTHORIZE, REVOKED, REMOVED = "active", "refresh_failed", "reauthorize", "revoked", "removed"
CODE, PKCE = "code", "pkce"
# A plain connection, one borrowed from a pool, or the pool itself.
Conn = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool


@dataclass(frozen=True, repr=False)
class Grant:
    """What ObtainToken answered: the tokens stay Secrets, so no repr or log line can show them."""

    merchant_id: str
    access_token: Secret
    access_token_expires_at: datetime | None
    refresh_token: Secret | None
    refresh_token_expires_at: datetime | None = None
    scopes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Grant(merchant_id={self.merchant_id!r}, expires_at={self.access_token_expires_at!r})"

    @classmethod
    def from_response(cls, body: dict[str, Any], scopes: tuple[str, ...] = ()) -> Grant:
        """ObtainToken's answer; ``refresh_token_expires_at`` is set only for PKCE (single-use refresh tokens)."""
        refresh = body.get("refresh_token")
        return cls(merchant_id=str(body["merchant_id"]), access_token=Secret(str(body["access_token"])),
                   access_token_expires_at=parse_time(body.get("expires_at")),
                   refresh_token=Secret(str(refresh)) if refresh else None,
                   refresh_token_expires_at=parse_time(body.get("refresh_token_expires_at")), scopes=scopes)

    @property
    def refresh_kind(self) -> str:
        return PKCE if self.refresh_token_expires_at is not None else CODE


class CredentialStore:
    def __init__(self, pool: asyncpg.Pool, cipher: TokenCipher) -> None:
        self.pool = pool
        self.cipher = cipher

    def _seal(self, token: Secret | None) -> str | None:
        return self.cipher.encrypt(token.reveal()) if token is not None else None

    async def save_grant(self, grant: Grant, *, kind: str | None = None, conn: Conn | None = None) -> None:
        """Store a fresh grant (``conn``: inside the caller's transaction); the seller is active again."""
        await (conn or self.pool).execute(queries.get("save_grant"), grant.merchant_id, kind or grant.refresh_kind,
                                self._seal(grant.access_token), grant.access_token_expires_at,
                                self._seal(grant.refresh_token), grant.refresh_token_expires_at, list(grant.scopes),
                                utcnow())

    async def usable_tokens(self) -> dict[str, Secret]:
        """merchant ID -> its current access token, for every seller the mirror may call Square for."""
        rows = await self.pool.fetch(queries.get("usable_credentials"))
        return {r["merchant_id"]: Secret(self.cipher.decrypt(r["access_token"])) for r in rows}

    async def due_for_refresh(self, age: timedelta) -> list[str]:
        return [r["merchant_id"] for r in await self.pool.fetch(queries.get("due_for_refresh"), age, utcnow())]

    async def refresh_token(self, conn: Conn, merchant_id: str) -> tuple[str, Secret | None, str] | None:
        """(refresh kind, refresh token, status) of a seller, or None when unknown."""
        row = await conn.fetchrow(queries.get("credential_for_refresh"), merchant_id)
        if row is None:
            return None
        token = Secret(self.cipher.decrypt(row["refresh_token"])) if row["refresh_token"] else None
        return row["refresh_kind"], token, row["status"]

    async def begin_refresh(self, conn: Conn, merchant_id: str) -> None:
        await conn.execute(queries.get("begin_refresh"), merchant_id, utcnow())

    async def save_refresh(self, conn: Conn, grant: Grant, previous_refresh: Secret | None) -> None:
        """Square's answer to a refresh, stored before anything else happens. The code flow returns the same refresh
        token (kept if Square omits it); PKCE returns the next single-use one."""
        refresh = grant.refresh_token or previous_refresh
        await conn.execute(queries.get("save_refresh"), grant.merchant_id, self._seal(grant.access_token),
                           grant.access_token_expires_at, self._seal(refresh), grant.refresh_token_expires_at,
                           utcnow())

    async def refresh_failed(self, conn: Conn, merchant_id: str, error: str, *, permanent: bool,
                             retry_in: timedelta) -> None:
        await conn.execute(queries.get("refresh_failed"), merchant_id, error[:300],
                           REAUTHORIZE if permanent else REFRESH_FAILED, retry_in, utcnow())

    async def revoke(self, merchant_id: str, why: str, revoked_at: datetime | None) -> bool:
        """Mark a seller revoked (its token leaves every process at their next reload); False when there is nothing
        to mark: an unknown seller, one already revoked or removed, or one connected again after ``revoked_at``
        (a late revocation event must not revoke the new grant)."""
        return await self.pool.fetchval(queries.get("revoke_seller"), merchant_id, why[:300], revoked_at) is not None

    async def status(self, merchant_id: str) -> str | None:
        """A seller's status, or None when the mirror holds no OAuth grant for it."""
        status: str | None = await self.pool.fetchval(queries.get("seller_status"), merchant_id)
        return status

    async def withdrawn(self) -> set[str]:
        """The sellers whose OAuth access is gone: revoked (by the seller, the app or Square) or removed."""
        return {r["merchant_id"] for r in await self.pool.fetch(queries.get("withdrawn_sellers"))}

    async def listing(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(queries.get("list_credentials"))]

    async def reencrypt(self) -> int:
        """Every stored token encrypted again with the first key (key rotation); returns the sellers done."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(queries.get("all_encrypted_tokens"))
            for row in rows:
                refresh = self.cipher.rotate(row["refresh_token"]) if row["refresh_token"] else None
                await conn.execute(queries.get("reencrypt_tokens"), row["merchant_id"],
                                   self.cipher.rotate(row["access_token"]), refresh)
        return len(rows)


async def use_state(pool: Conn, state: str, expires_at: datetime) -> bool:
    """Accept a signed state once (the OAuth redirect's CSRF check ends here): False for a replay. ``pool`` may be a
    connection in a transaction: a rolled-back use leaves the state usable."""
    return await pool.fetchval(queries.get("use_oauth_state"), state_hash(state), expires_at) is not None


async def credential_rows(conn: Conn) -> list[asyncpg.Record]:
    """Every seller's credential metadata, no token (``sellers list``, ``sellers remove``)."""
    rows: list[asyncpg.Record] = await conn.fetch(queries.get("list_credentials"))
    return rows


async def set_status(conn: Conn, merchant_id: str, status: str, why: str | None = None) -> bool:
    """Set a seller's status (``removed`` by ``sellers remove``); False when it already had it."""
    return await conn.fetchval(queries.get("set_seller_status"), merchant_id, status, why) is not None
