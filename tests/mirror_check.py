"""Test helpers around the convergence check (square_mirror.convergence.mirror_diff, shared with the demo).

Usage in a test::

    diffs = await mirror_diff(db_pool, await emu.truth(), merchant_id)
    assert not diffs, "\\n".join(diffs[:20])

or simply ``await assert_mirror_matches(db_pool, emu)``.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from square_mirror.convergence import PUBLIC_FIELDS, mirror_diff

__all__ = ["PUBLIC_FIELDS", "assert_mirror_matches", "emulator_client", "mirror_diff", "square_call"]


async def assert_mirror_matches(pool: asyncpg.Pool, emulator: Any, merchant_id: str | None = None,
                                **kw: Any) -> None:
    """Raise AssertionError listing (up to 20) differences between the mirror and ``emulator.truth()``."""
    mid = merchant_id or emulator.merchant_id
    truth = await emulator.truth(mid)
    diffs = await mirror_diff(pool, truth, mid, **kw)
    assert not diffs, f"{len(diffs)} differences:\n" + "\n".join(diffs[:20])


# -- helpers for tests that sync from the emulator ----------------------------------------------------------

def emulator_client(emulator: Any, *, token: str | None = None, attempts: int = 4, deadline: float = 20.0,
                    application_token: str | None = None) -> Any:
    """The project's SquareClient aimed at an emulator handle, with fast retries for tests."""
    from square_mirror.constants import DEFAULT_SQUARE_VERSION
    from square_mirror.settings import Secret
    from square_mirror.square_api import RetryPolicy, SquareClient
    from square_mirror.tokens import TokenSource

    return SquareClient(base_url=emulator.base_url, version=DEFAULT_SQUARE_VERSION,
                        tokens=TokenSource(single=Secret(token or emulator.token),
                                           application=Secret(application_token) if application_token else None),
                        retry=RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=0.2, deadline=deadline))


async def square_call(emulator: Any, method: str, path: str, body: Any = None) -> Any:
    """One Square API call to the emulator as the default seller (changes made this way fire webhooks only to
    subscriptions, so tests without one model lost deliveries)."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.request(
        method, emulator.base_url + path, json=body, headers={"Authorization": f"Bearer {emulator.token}"}
    ) as resp:
        return await resp.json(content_type=None)
