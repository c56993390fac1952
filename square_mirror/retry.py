"""What is transient, and how each kind of work tries again. The one home of both rules.

Transient means: trying the same thing later can succeed, because nothing about the request itself is wrong.

- **Square** (:mod:`square_mirror.errors`): 429 (:class:`SquareRateLimited`), 5xx / timeouts / connection
  failures (:class:`SquareUnavailable`) and answers that are not what Square documents
  (:class:`SquareBadResponse`). The client retries them within one call (:class:`RetryPolicy`: full jitter,
  never sooner than Retry-After); past its budget they reach the caller. 401/403 are never retried: they are
  the merchant's state, not a transient (:mod:`square_mirror.square_api` reports them).
- **Postgres** (:data:`DATABASE_TRANSIENT`): deadlocks, serialization failures, lock timeouts, a server that is
  starting, shutting down or full, a connection lost mid-statement, a cancelled statement, and OS errors.
- **Redis** (:func:`redis_transient`): connection errors and timeouts.
- **Our own deadline** (``TimeoutError``).

How work tries again:

- one Square call: :class:`RetryPolicy` (inside the client);
- an event job: :func:`event_retry_delay` (exponential backoff with jitter, capped, never sooner than
  Retry-After) for a transient, :func:`unauthorized_delay` for a rejected token;
- a reconcile lane job: :func:`lane_retry_delay` while tries remain (:data:`LANE_TRIES`);
- a backfill job: :data:`BACKFILL_RETRY_DELAY_SECONDS` while tries remain (:data:`BACKFILL_TRIES`);
- a run (backfill, lane) ended by a rate limit or an outage is resumable: :func:`is_outage`
  (see ``worker.runs.status_for``).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Final

import asyncpg

from square_mirror.errors import SquareBadResponse, SquareRateLimited, SquareUnauthorized, SquareUnavailable

# Retried by the client within one call.
SQUARE_RETRIED: Final = (SquareRateLimited, SquareUnavailable, SquareBadResponse)
DATABASE_TRANSIENT: Final = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    # A connection terminated mid-statement can leave asyncpg's protocol in a state it reports as this
    # ("cannot switch to state 15; another operation is in progress"): a retry on another connection works.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.QueryCanceledError,
    OSError,
)

RETRY_BASE_SECONDS: Final = 1.0
LANE_TRIES: Final = 3
BACKFILL_TRIES: Final = 5
BACKFILL_RETRY_DELAY_SECONDS: Final = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one Square call inside the client."""

    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 20.0
    deadline: float = 60.0  # total seconds one call may spend, retries included

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


def redis_transient() -> tuple[type[BaseException], ...]:
    """Redis connection errors and timeouts. Read from redis only once something loaded it: a process that never
    talks to Redis (a backfill without REDIS_URL) never meets them, and skips the import (~0.1 CPU s, 2 MB)."""
    exceptions = sys.modules.get("redis.exceptions")
    if exceptions is None:
        return ()
    return (exceptions.ConnectionError, exceptions.TimeoutError)


def transient_reason(exc: BaseException) -> str | None:
    """Why ``exc`` is transient (the label of the retry metric), or None when it is not."""
    if isinstance(exc, SquareRateLimited):
        return "rate_limited"
    if isinstance(exc, SquareUnavailable):
        return "unavailable"
    if isinstance(exc, SquareBadResponse):
        return "bad_response"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (*DATABASE_TRANSIENT, *redis_transient())):
        return "database"
    return None


def is_shared_failure(exc: BaseException) -> bool:
    """Does ``exc`` concern every item of a batch alike (Square or Postgres unavailable, the token rejected)?

    Then the batch fails as a whole; anything else may be about one item, and the batch is split.
    """
    return isinstance(exc, SquareUnauthorized) or (
        not isinstance(exc, SquareBadResponse) and transient_reason(exc) is not None)


def is_outage(exc: BaseException) -> bool:
    """A rate limit or an outage of Square: a run it ended can resume later from its checkpoint."""
    return isinstance(exc, SquareRateLimited | SquareUnavailable)


def event_retry_delay(job_try: int, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter (1 s, 2 s, 4 s ... up to ``cap``), never sooner than Retry-After."""
    delay: float = min(cap, RETRY_BASE_SECONDS * float(2 ** min(30, max(0, job_try - 1)))) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def unauthorized_delay(seconds: float) -> float:
    """How long an unauthorized merchant's event job waits: ``WORKER_UNAUTHORIZED_RETRY_SECONDS`` +-20%."""
    return seconds * random.uniform(0.8, 1.2)


def jittered(low: float, high: float) -> float:
    """A random delay in [low, high]: token refresh backoff (square_mirror/credentials/refresh.py) and the refresh
    cron's pause (worker/sellers.py)."""
    return random.uniform(low, high)


def lane_retry_delay(job_try: int) -> float:
    """A lane run that ended ``partial`` or ``failed`` tries again after 30 s, 60 s, ..."""
    return 30.0 * job_try
