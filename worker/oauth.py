"""OAuth sellers coming and going: the ``connect_seller`` job, and ``oauth.authorization.revoked`` events.

Connecting (the receiver queued the redirect's code and state, webhooks/oauth.py):

1. The state is checked again (signature and expiry: a job that waited past it connects nothing) and accepted once
   (``square_private.oauth_states``), in one transaction with the exchange and the stored grant: the state is used
   if and only if its grant is stored, or Square refused the code. A replayed redirect finds the state used and
   ends there.
2. The code is exchanged (ObtainToken, ``authorization_code``, with the client ID and secret and the redirect URL).
   A code works once, so a job is retried (arq ``Retry``, the state's use rolled back) only when Square did not
   answer (429, 5xx, a timeout, a lost connection) or Postgres failed; a refused code (400/401/404) or an answer
   without a token is logged, without the code, and ends the job. A crash between Square's answer and the commit
   loses that grant (the code is spent): the retry is refused, and the seller connects again.
3. The seller is recorded (``square.merchants``: ``status`` and ``--all`` see it, and its token works again if it
   was marked unauthorized), every process of this worker takes its token now (others within
   ``worker.sellers.RELOAD_SECONDS``), and its backfill is queued with the backfill's own job ID. The backfill
   enables the seller's events first (square_mirror.searchable_events), so nothing else needs queueing.

Revocation (:func:`record_revocation`, from the event job): the seller's credentials become ``revoked`` (several
events come per seller, one per token: the first changes the row, the others are ``stale``), its token leaves
this process at once and the others at their next reload, and ``square.merchants`` marks it unauthorized (what
``status`` shows). From then on nothing runs for it (``TokenSource.withdrawn``): the cron lanes and ``--all`` skip it
(worker/merchants.py), a lane or backfill already running fails its next Square call as unauthorized and is not
retried, and its event jobs end ``ignored`` (worker/events/process.py). A revocation for a seller the mirror holds
no OAuth grant for (unknown, or one with a personal token from SQUARE_TOKENS_FILE) is recorded in the inbox and
ignored.
"""

from __future__ import annotations

from typing import Any

from arq import Retry
from redis import exceptions as redis_exceptions

from square_mirror.constants import BACKFILL_JOB, backfill_job_id, queue_for
from square_mirror.credentials.oauth_state import check_state, state_expiry
from square_mirror.credentials.store import Grant, use_state
from square_mirror.errors import SquareError
from square_mirror.jobs import ConnectJob, EventJob, InvalidEnvelope, read_connect_job
from square_mirror.logs import bound_context, get_logger
from square_mirror.retry import event_retry_delay, is_outage, transient_reason
from square_mirror.timefmt import from_epoch, parse_time
from worker import store
from worker.context import WorkerContext, job_try, worker_context
from worker.outcome import Outcome
from worker.sellers import SellerCredentials

log = get_logger(__name__)

CONNECTED, REPLAYED, EXPIRED, REFUSED, FAILED = "connected", "replayed", "expired", "refused", "failed"
CONNECT_TRIES = 5  # tries of a connect job while Square or Postgres is away (the code lasts five minutes anyway)


async def connect_seller(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """arq job ``constants.CONNECT_SELLER_JOB``: one OAuth redirect's code, exchanged and stored (module doc)."""
    wc = worker_context(ctx)
    sellers = wc.sellers
    settings = wc.settings
    if sellers is None or not settings.square_application_id or settings.square_application_secret is None:
        log.error("connect_not_configured", reason="SQUARE_MIRROR_ENCRYPTION_KEYS, SQUARE_APPLICATION_ID and "
                                                   "SQUARE_APPLICATION_SECRET are needed to connect sellers")
        return {"status": FAILED}
    try:
        job = read_connect_job(payload, sellers.store.cipher)
    except InvalidEnvelope as exc:
        log.error("connect_payload_invalid", error=str(exc))
        return {"status": FAILED}
    if not check_state(settings.encryption_keys, job.state.reveal()):
        log.warning("connect_state_expired")  # the job waited past the state's expiry (or the key was dropped)
        return {"status": EXPIRED}
    attempt = job_try(ctx)
    try:
        grant = await _exchange(wc, sellers, job)
    except SquareError as exc:
        if is_outage(exc) and attempt < CONNECT_TRIES:
            _retry(exc, attempt)
        log.warning("connect_code_refused", error=str(exc), job_try=attempt)
        return {"status": REFUSED}
    except Exception as exc:
        if transient_reason(exc) is not None and attempt < CONNECT_TRIES:
            _retry(exc, attempt)
        raise
    if grant is None:
        log.warning("connect_state_replayed")
        return {"status": REPLAYED}
    with bound_context(merchant_id=grant.merchant_id):
        return await _connected(wc, sellers, grant)


def _retry(exc: Exception, attempt: int) -> None:
    log.info("connect_retry", reason=transient_reason(exc), error_type=type(exc).__name__, job_try=attempt)
    raise Retry(defer=event_retry_delay(attempt, 60.0)) from None


async def _exchange(wc: WorkerContext, sellers: SellerCredentials, job: ConnectJob) -> Grant | None:
    """Accept the state once and exchange the code, in one transaction with the stored grant; None for a replay.
    A refused code raises with the state's use committed (the state is spent); anything else rolls it back."""
    settings = wc.settings
    assert settings.square_application_secret is not None
    body = {"client_id": settings.square_application_id, "client_secret": settings.square_application_secret.reveal(),
            "grant_type": "authorization_code", "code": job.code.reveal(),
            "redirect_uri": settings.square_oauth_redirect_url}
    state = job.state.reveal()
    refused: SquareError | None = None
    grant: Grant | None = None
    async with wc.pool.acquire() as conn, conn.transaction():
        if not await use_state(conn, state, from_epoch(state_expiry(state))):
            return None
        try:
            answer = await wc.client.obtain_token({k: v for k, v in body.items() if v is not None})
        except SquareError as exc:
            if is_outage(exc):
                raise  # Square did not answer: the state's use rolls back, the job is retried
            refused = exc  # Square answered no: the state stays used (committed), the job ends
        else:
            grant = Grant.from_response(answer)
            await sellers.store.save_grant(grant, conn=conn)
    if refused is not None:
        raise refused
    return grant


async def _connected(wc: WorkerContext, sellers: SellerCredentials, grant: Grant) -> dict[str, Any]:
    merchant_id = grant.merchant_id
    await store.ensure_merchant(wc.pool, merchant_id)
    await wc.hooks.mark_authorized(merchant_id)  # a seller connecting again: its unauthorized mark goes
    await store.set_merchant_auth(wc.pool, merchant_id, ok=True)
    await sellers.reload()
    queued = await _queue_backfill(wc, merchant_id)
    log.info("seller_connected", refresh_kind=grant.refresh_kind, expires_at=str(grant.access_token_expires_at),
             backfill_queued=queued)
    return {"status": CONNECTED, "merchant_id": merchant_id, "backfill_queued": queued}


async def _queue_backfill(wc: WorkerContext, merchant_id: str) -> bool:
    """The seller's backfill (resuming an unfinished one, else a complete listing), under the backfill's job ID; a
    Redis hiccup leaves it to the next connect or an operator (the seller is connected either way)."""
    if wc.arq_redis is None:
        return False
    try:
        job = await wc.arq_redis.enqueue_job(BACKFILL_JOB, merchant_id, False, _job_id=backfill_job_id(merchant_id),
                                             _queue_name=queue_for(BACKFILL_JOB))
    except (OSError, redis_exceptions.RedisError) as exc:
        log.warning("backfill_not_queued", error_type=type(exc).__name__)
        return False
    return job is not None


async def record_revocation(wc: WorkerContext, job: EventJob) -> Outcome:
    """An ``oauth.authorization.revoked`` event: ``applied`` when it revoked the seller, ``stale`` when the seller
    was already revoked or removed (or connected again since), ``ignored`` without an OAuth grant for it."""
    merchant_id = job.merchant_id
    revoked_at, revoker = job.revocation
    if wc.sellers is None:
        log.info("revocation_ignored", reason="no OAuth sellers (SQUARE_MIRROR_ENCRYPTION_KEYS unset)")
        return Outcome.IGNORED
    why = f"authorization revoked by {revoker or 'unknown'} at {revoked_at or job.created_at or 'unknown time'}"
    changed = await wc.sellers.store.revoke(merchant_id, why, parse_time(revoked_at) or parse_time(job.created_at))
    await wc.sellers.reload()  # also for a repeat: this process may not have reloaded since another one revoked it
    if not changed:
        known = await wc.sellers.store.status(merchant_id) is not None
        log.info("revocation_repeated" if known else "revocation_for_unknown_seller", revoker_type=revoker)
        return Outcome.STALE if known else Outcome.IGNORED
    await wc.hooks.mark_unauthorized(merchant_id, why)
    await wc.sellers.observe()
    log.warning("seller_revoked", revoker_type=revoker, revoked_at=revoked_at)
    return Outcome.APPLIED


def withdrawn(wc: WorkerContext, merchant_id: str) -> bool:
    """An OAuth seller whose access was revoked or removed (as of this process's last reload): nothing runs for it."""
    return wc.client.tokens.withdrawn(merchant_id)


async def withdrawn_now(wc: WorkerContext, merchant_id: str) -> bool:
    """:func:`withdrawn`, after reloading the sellers (Square just refused a token: another process may have
    recorded the revocation since this one last reloaded)."""
    if withdrawn(wc, merchant_id) or wc.sellers is None:
        return withdrawn(wc, merchant_id)
    try:
        await wc.sellers.reload()
    except Exception as exc:  # Postgres away: the caller treats the seller as it would any unauthorized one
        log.warning("seller_tokens_reload_failed", error=type(exc).__name__)
    return withdrawn(wc, merchant_id)
