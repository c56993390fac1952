"""Which merchants the mirror syncs when none is named: the one rule for ``--all`` and the cron lanes.

Every merchant in configuration (the tokens file, or SQUARE_MERCHANT_ID for SQUARE_ACCESS_TOKEN), every
merchant the mirror already knows (``square.merchants``), every OAuth seller whose token may be used
(``square_private.seller_credentials``, even before ``square.merchants`` lists it), and, with only
SQUARE_ACCESS_TOKEN, the token's own merchant (GET /v2/merchants/me, asked once per context). Not an OAuth seller
whose access was revoked or removed, unless the tokens file gives it a token of its own.
"""

from __future__ import annotations

from square_mirror.settings import SettingsError
from worker.context import WorkerContext
from worker.queries import queries


async def known_merchants(context: WorkerContext) -> list[str]:
    known = set(context.client.tokens.merchants())
    known.update(r["merchant_id"] for r in await context.pool.fetch(queries.get("known_merchants")))
    settings = context.settings
    if settings.square_access_token is not None and not settings.square_merchant_id:
        known.add(await _own_merchant(context, settings.square_access_token.reveal()))
    return sorted(known)


async def _own_merchant(context: WorkerContext, token: str) -> str:
    cache = context.own_merchants
    if token not in cache:
        cache[token] = await context.client.retrieve_own_merchant_id(token)
    return cache[token]


async def resolve_merchants(context: WorkerContext, merchant: str | None) -> list[str]:
    """``--merchant ID``, else :func:`known_merchants`; none at all is a configuration error."""
    if merchant:
        return [merchant]
    known = await known_merchants(context)
    if not known:
        raise SettingsError("no merchant to sync: set SQUARE_ACCESS_TOKEN, SQUARE_TOKENS_FILE or pass --merchant")
    return known
