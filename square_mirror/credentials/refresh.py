"""Refreshing sellers' OAuth tokens: one refresh per seller at a time across every process, never a lost token.

Square's access tokens last 30 days and Square asks apps to refresh every 7 days or less; the mirror refreshes a
token once it is older than ``TOKEN_REFRESH_AGE_DAYS``, and at once when Square answers ``ACCESS_TOKEN_EXPIRED``.

One refresh at a time per seller: a Postgres advisory lock, taken without waiting (another process refreshing
the same seller means this one has nothing to do), and the row is read again under it.

Never lose a token. A code-flow refresh token is reusable, so a refresh that fails midway costs nothing. A PKCE
refresh token is single-use: once Square has answered, the old one is spent. So the answer is written to Postgres
before anything else happens (the new refresh token is stored before the new access token is ever used), and a
marker (``refresh_started_at``) is committed before the request is sent. The window between Square's answer and
that commit (a crash, a kill, a lost connection to Postgres) cannot be closed by the mirror; if it is hit, the next
refresh presents the spent token, Square refuses it, and the seller is marked ``reauthorize``. The seller still syncs
meanwhile: the access token in use stays valid until it expires, which is at least three weeks away when tokens are
refreshed at seven days, so the operator has that long to have the seller connect again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from square_mirror.credentials.store import (
    ACTIVE,
    CODE,
    REAUTHORIZE,
    REFRESH_FAILED,
    Conn,
    CredentialStore,
    Grant,
)
from square_mirror.errors import SquareError, SquareInvalidRequest, SquareNotFound, SquareUnauthorized
from square_mirror.logs import get_logger
from square_mirror.metrics import TOKEN_REFRESHES
from square_mirror.queries import queries
from square_mirror.retry import jittered
from square_mirror.settings import Secret
from square_mirror.square_api import SquareClient

log = get_logger(__name__)

# pg_try_advisory_lock(namespace, hashtext(merchant_id)): one refresh per seller across every process.
REFRESH_LOCK_NAMESPACE: Final = 0x52_46_53_48
RETRY_BASE: Final = timedelta(minutes=5)
RETRY_CAP: Final = timedelta(hours=12)
REFRESHED, SKIPPED, FAILED = "refreshed", "skipped", "failed"


@dataclass(frozen=True)
class RefreshResult:
    merchant_id: str
    outcome: str  # refreshed, skipped (another process has it, or nothing to refresh), failed
    status: str | None = None  # the seller's status after a failure: refresh_failed or reauthorize
    error: str | None = None


def retry_delay(failures: int) -> timedelta:
    """Exponential backoff with full jitter, from five minutes up to twelve hours."""
    ceiling = min(RETRY_CAP, RETRY_BASE * (2 ** min(failures, 12)))
    return timedelta(seconds=jittered(RETRY_BASE.total_seconds(), ceiling.total_seconds()))


class Refresher:
    def __init__(self, store: CredentialStore, client: SquareClient, application_id: str | None,
                 application_secret: Secret | None,
                 on_refreshed: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.client = client
        self.application_id = application_id
        self.application_secret = application_secret
        self.on_refreshed = on_refreshed

    async def refresh(self, merchant_id: str) -> RefreshResult:
        async with self.store.pool.acquire() as conn:
            if not await conn.fetchval(queries.get("lock_seller_refresh"), REFRESH_LOCK_NAMESPACE, merchant_id):
                return RefreshResult(merchant_id, SKIPPED)
            try:
                result = await self._refresh_locked(conn, merchant_id)
            finally:
                await conn.fetchval(queries.get("unlock_seller_refresh"), REFRESH_LOCK_NAMESPACE, merchant_id)
        TOKEN_REFRESHES.labels(result.outcome).inc()
        if result.outcome == REFRESHED and self.on_refreshed is not None:
            await self.on_refreshed()
        return result

    async def _refresh_locked(self, conn: Conn, merchant_id: str) -> RefreshResult:
        held = await self.store.refresh_token(conn, merchant_id)
        if held is None or held[1] is None or held[2] not in (ACTIVE, REFRESH_FAILED, REAUTHORIZE):
            return RefreshResult(merchant_id, SKIPPED)
        kind, refresh_token, _status = held
        assert refresh_token is not None
        body = {"client_id": self.application_id or "", "grant_type": "refresh_token",
                "refresh_token": refresh_token.reveal()}
        if kind == CODE:
            if self.application_secret is None:
                return await self._failed(conn, merchant_id, "SQUARE_APPLICATION_SECRET is not set", permanent=False)
            body["client_secret"] = self.application_secret.reveal()
        await self.store.begin_refresh(conn, merchant_id)
        try:
            answer = await self.client.obtain_token(body)
        except (SquareInvalidRequest, SquareUnauthorized, SquareNotFound) as exc:
            # Square refused this refresh token: it will not work again (revoked, spent, or expired).
            return await self._failed(conn, merchant_id, str(exc), permanent=True)
        except SquareError as exc:  # 429, 5xx, timeouts: the token is still good, try again later
            return await self._failed(conn, merchant_id, str(exc), permanent=False)
        grant = Grant.from_response(answer)
        if grant.merchant_id != merchant_id:
            return await self._failed(conn, merchant_id, "ObtainToken answered for another merchant", permanent=True)
        await self.store.save_refresh(conn, grant, refresh_token)  # before anything else: a PKCE token is spent now
        log.info("token_refreshed", merchant_id=merchant_id, refresh_kind=kind,
                 expires_at=str(grant.access_token_expires_at))
        return RefreshResult(merchant_id, REFRESHED)

    async def _failed(self, conn: Conn, merchant_id: str, error: str, *,
                      permanent: bool) -> RefreshResult:
        failures = int(await conn.fetchval(queries.get("refresh_failures"), merchant_id) or 0)
        await self.store.refresh_failed(conn, merchant_id, error, permanent=permanent,
                                        retry_in=retry_delay(failures))
        status = REAUTHORIZE if permanent else REFRESH_FAILED
        log.warning("token_refresh_failed", merchant_id=merchant_id, status=status, error=error)
        return RefreshResult(merchant_id, FAILED, status, error)
