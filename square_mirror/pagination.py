"""Cursor-paged Square listings, and what an expired cursor means. The one home of the cursor-restart rule.

Square's cursors expire (``INVALID_CURSOR``). A listing whose cursor expired starts over without a cursor:
from the beginning for the small lists (groups, segments, events of one window), or narrowed by the caller to
where it got (a ``created_at`` position) for the long ones. :class:`Pages` hands out the pages and restarts;
the caller only says how its query is narrowed on a restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from square_mirror.errors import SquareInvalidRequest
from square_mirror.timefmt import utcnow

INVALID_CURSOR: Final = "INVALID_CURSOR"
Page = dict[str, Any]
FetchPage = Callable[[str | None], Awaitable[Page]]


def cursor_expired(exc: SquareInvalidRequest) -> bool:
    return INVALID_CURSOR in exc.codes


class Pages:
    """The pages of one cursor-paged listing: ``fetch(cursor)`` asks Square for the page at ``cursor``.

    :meth:`next` returns the next page, or None when the cursor had expired: the listing then starts over
    without a cursor, and the caller (who may first narrow its query) calls :meth:`next` again.
    ``max_restarts`` bounds the restarts of one listing (None: any number); past it the error is raised.
    ``requested_at`` is when the last page was asked for: what it says is at least that fresh.
    """

    def __init__(self, fetch: FetchPage, *, max_restarts: int | None = None) -> None:
        self._fetch = fetch
        self.max_restarts = max_restarts
        self.cursor: str | None = None
        self.restarts = 0
        self.done = False
        self.requested_at = utcnow()

    async def next(self) -> Page | None:
        self.requested_at = utcnow()
        try:
            page = await self._fetch(self.cursor)
        except SquareInvalidRequest as exc:
            if self.cursor and cursor_expired(exc) and (self.max_restarts is None
                                                        or self.restarts < self.max_restarts):
                self.restarts += 1
                self.restart()
                return None
            raise
        self.cursor = page.get("cursor") or None
        self.done = self.cursor is None
        return page

    def restart(self) -> None:
        """Start over without a cursor (an expired one, or a query the caller narrowed)."""
        self.cursor = None
        self.done = False
