"""The OAuth redirect: where Square sends a seller's browser back from its authorize page.

Approval comes back as ``?code=...&response_type=code&state=...``, denial as ``?error=access_denied&...``
(FACTS-2 §B.5). The handler:

- answers a denial (any ``error``) with a plain page and queues nothing; ``access_denied`` says the seller declined;
- checks the ``state`` (CSRF) with :func:`square_mirror.credentials.oauth_state.check_state`: signed by a configured
  key and not expired, in constant time and without any database. A missing, malformed, expired or foreign-signed
  state, or a missing code, gets one generic 400 page that says nothing about which it was;
- queues ONE ``connect_seller`` job (:data:`~square_mirror.constants.CONNECT_SELLER_JOB`) whose ID is the state's
  hash, so a redirect replayed while its job waits or runs collapses into it (the worker then accepts each state
  once, in Postgres, which stops a replay after the job ended). The code and the state are sealed in the payload
  (:func:`square_mirror.jobs.build_connect_job`), and the job expires from Redis after
  :data:`CONNECT_JOB_EXPIRES_MS` (a code works for five minutes: a job not run by then cannot succeed);
- answers with a short page: connected, syncing starts in a moment.

The receiver talks to Redis only: never to Square, never to Postgres. No log line, metric or page carries the
code, the state or its MAC (the log says the outcome only), and the pages forbid caching and referrers, since the
URL that reached them holds the code.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from square_mirror.constants import CONNECT_SELLER_JOB, connect_job_id
from square_mirror.credentials.cipher import TokenCipher
from square_mirror.credentials.oauth_state import check_state, state_hash
from square_mirror.jobs import build_connect_job, valid_code
from square_mirror.logs import get_logger, log_line, utc_timestamp
from square_mirror.settings import Secret, Settings
from webhooks.enqueue import BatchEnqueuer, QueueUnavailable
from webhooks.metrics import WebhookMetrics

_log = get_logger("webhooks")

CONNECT_JOB_EXPIRES_MS: Final = 15 * 60 * 1000

# Outcomes of a redirect (the metric's `outcome` label and the log line's).
CONNECTING: Final = "connecting"  # 200, a connect job is queued
DUPLICATE: Final = "duplicate"  # 200, this redirect's job is already queued or running (a reload, a replay)
DECLINED: Final = "declined"  # 200, the seller declined (error=access_denied)
SQUARE_ERROR: Final = "square_error"  # 400, Square sent another error
BAD_REQUEST: Final = "bad_request"  # 400, the state or the code is missing, malformed, expired or not ours
UNAVAILABLE: Final = "unavailable"  # 503, Redis did not acknowledge the job
ERROR: Final = "error"  # 500, a bug

_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>{text}</p></body></html>
"""
_CONNECTED = ("Connected", "Your Square account is connected. Syncing starts in a moment; you can close this page.")
_PAGES: Final = {
    CONNECTING: (200, *_CONNECTED),
    DUPLICATE: (200, *_CONNECTED),
    DECLINED: (200, "Not connected", "You declined to connect your Square account. Nothing was shared."),
    SQUARE_ERROR: (400, "Not connected", "Square did not complete the connection. Please start again."),
    BAD_REQUEST: (400, "Link not valid", "This link is not valid or has expired. Please start again from the "
                                        "connect link you were given."),
    UNAVAILABLE: (503, "Try again", "The connection could not be completed right now. Please reload this page in "
                                    "a moment."),
    ERROR: (500, "Try again", "Something went wrong. Please start again from the connect link you were given."),
}
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the URL holds the code
    "Content-Security-Policy": "default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
_ERROR_RE: Final = re.compile(r"^[a-z_]{1,40}$")


@dataclass(frozen=True, repr=False)
class OAuthConfig:
    path: str
    state_keys: tuple[Secret, ...]
    cipher: TokenCipher

    def __repr__(self) -> str:
        return f"OAuthConfig(path={self.path!r})"


def oauth_config(settings: Settings) -> OAuthConfig | None:
    """What the redirect needs, or None when OAuth is not configured (the route is then not served): the
    application ID and secret (the worker exchanges the code with them), the encryption keys (states are signed
    with them, codes sealed) and the redirect URL, whose path is the route."""
    needed = {"SQUARE_APPLICATION_ID": settings.square_application_id,
              "SQUARE_APPLICATION_SECRET": settings.square_application_secret,
              "SQUARE_MIRROR_ENCRYPTION_KEYS": settings.encryption_keys,
              "SQUARE_OAUTH_REDIRECT_URL": settings.square_oauth_redirect_url}
    missing = sorted(name for name, value in needed.items() if not value)
    if missing:
        if settings.square_oauth_redirect_url:
            _log.warning("oauth_redirect_not_served", missing=missing)
        return None
    assert settings.square_oauth_redirect_url is not None
    path = urlsplit(settings.square_oauth_redirect_url).path or "/"
    return OAuthConfig(path, settings.encryption_keys, TokenCipher(settings.encryption_keys))


class OAuthRedirect:
    """The redirect handler, bound to one app's config, enqueuer and metrics."""

    def __init__(self, config: OAuthConfig, enqueuer: BatchEnqueuer, metrics: WebhookMetrics) -> None:
        self.config = config
        self.enqueuer = enqueuer
        self.metrics = metrics

    async def callback(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        try:
            outcome = await self._handle(request, fields)
        except Exception as exc:
            outcome = ERROR
            _log.error("oauth_redirect_failed", error=type(exc).__name__)
        status, title, text = _PAGES[outcome]
        self.metrics.oauth_redirects.labels(outcome).inc()
        fields.update(outcome=outcome, status=status, latency_ms=round((time.perf_counter() - started) * 1000, 2))
        log_line("info" if status < 500 else "warning", "oauth_redirect", fields)
        return web.Response(status=status, text=_PAGE.format(title=title, text=text), content_type="text/html",
                            charset="utf-8", headers=_HEADERS)

    async def _handle(self, request: web.Request, fields: dict[str, Any]) -> str:
        query = request.query
        error = query.get("error")
        if error is not None:
            fields["error"] = error if _ERROR_RE.match(error) else "invalid"
            return DECLINED if error == "access_denied" else SQUARE_ERROR
        state = query.get("state")
        code = query.get("code")
        if not check_state(self.config.state_keys, state) or not valid_code(code):
            return BAD_REQUEST
        assert state is not None and code is not None
        received_at = utc_timestamp(time.time_ns(), digits=3)
        payload = build_connect_job(code, state, self.config.cipher, received_at=received_at)
        try:
            queued = await self.enqueuer.enqueue_one(connect_job_id(state_hash(state)), CONNECT_SELLER_JOB, payload,
                                                     expires_ms=CONNECT_JOB_EXPIRES_MS)
        except QueueUnavailable as exc:
            fields["reason"] = exc.reason
            return UNAVAILABLE
        return CONNECTING if queued else DUPLICATE
