"""OAuth sellers in a running process: their tokens loaded from Postgres into the client's TokenSource, refreshed
by a cron job (once across the fleet) and at once on ``ACCESS_TOKEN_EXPIRED``.

Every process reloads the tokens every :data:`RELOAD_SECONDS` (so one process's refresh reaches the others) and
right after a refresh of its own. Without encryption keys there are no OAuth sellers: the tokens file and
``SQUARE_ACCESS_TOKEN`` work as they always did.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any, Final

import asyncpg

from square_mirror.credentials.cipher import TokenCipher
from square_mirror.credentials.refresh import FAILED, Refresher, RefreshResult
from square_mirror.credentials.store import CredentialStore
from square_mirror.logs import get_logger
from square_mirror.metrics import SELLERS
from square_mirror.retry import token_refresh_pause
from square_mirror.settings import Settings
from square_mirror.square_api import SquareClient

log = get_logger(__name__)

RELOAD_SECONDS: Final = 15.0
STATUSES: Final = ("active", "refresh_failed", "reauthorize", "revoked", "removed")


class SellerCredentials:
    def __init__(self, pool: asyncpg.Pool, client: SquareClient, settings: Settings) -> None:
        self.client = client
        self.store = CredentialStore(pool, TokenCipher(settings.encryption_keys))
        self.refresher = Refresher(self.store, client, settings.square_application_id,
                                   settings.square_application_secret, on_refreshed=self.reload)
        self.refresh_age = timedelta(days=settings.token_refresh_age_days)
        self._task: asyncio.Task[None] | None = None

    async def reload(self) -> None:
        """The tokens of every usable seller, and who is revoked or removed (no token, no work for them)."""
        tokens = await self.store.usable_tokens()
        self.client.tokens.set_oauth(tokens, await self.store.withdrawn())

    async def start(self, *, catch_up: bool = False) -> None:
        """Load the tokens now, then keep them current; the client refreshes a token Square says expired.
        ``catch_up`` (a worker process): refresh at once the tokens that came due while no worker ran, rather than
        at the next hourly run (the advisory lock keeps workers started together from refreshing a seller twice)."""
        await self.reload()
        self.client.on_token_expired = self.refresh_expired
        self._task = asyncio.create_task(self._keep_current(catch_up))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _keep_current(self, catch_up: bool) -> None:
        if catch_up:
            try:
                await self.refresh_due()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("token_catch_up_failed", error=type(exc).__name__)
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            try:
                await self.reload()
            except (OSError, asyncpg.PostgresError) as exc:  # Postgres away: keep the tokens held
                log.warning("seller_tokens_reload_failed", error=type(exc).__name__)

    async def refresh_expired(self, merchant_id: str) -> None:
        """Square answered ACCESS_TOKEN_EXPIRED: refresh now (or take the token another process just got)."""
        result = await self.refresher.refresh(merchant_id)
        if result.outcome != "refreshed":
            await self.reload()

    async def refresh_due(self) -> list[RefreshResult]:
        """Refresh every token older than the configured age, one seller at a time; a failure stays that seller's."""
        results = []
        for merchant_id in await self.store.due_for_refresh(self.refresh_age):
            try:
                results.append(await self.refresher.refresh(merchant_id))
            except (OSError, asyncpg.PostgresError) as exc:
                results.append(RefreshResult(merchant_id, FAILED, error=type(exc).__name__))
        await self.observe()
        return results

    async def observe(self) -> None:
        counts = dict.fromkeys(STATUSES, 0)
        for row in await self.store.listing():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        for status, count in counts.items():
            SELLERS.labels(status).set(count)


async def refresh_tokens(ctx: dict[str, Any]) -> dict[str, Any]:
    """arq cron job (``unique``: one run across the fleet per schedule): refresh every token due, after a random
    pause so that deployments started together do not all ask Square in the same second."""
    from worker.context import worker_context

    wc = worker_context(ctx)
    if wc.sellers is None:
        return {"sellers": 0}
    await asyncio.sleep(token_refresh_pause())
    results = await wc.sellers.refresh_due()
    return {"refreshed": sum(r.outcome == "refreshed" for r in results),
            "failed": [r.merchant_id for r in results if r.outcome == FAILED]}
