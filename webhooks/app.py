"""The receiver's aiohttp application factory.

Configuration is resolved when the app is built (a missing signature key or Redis URL fails at start-up, not
at the first delivery); the Redis client and the enqueuer live for the app's lifetime and are closed after the
server has finished its in-flight requests, so a graceful shutdown never drops an acknowledged event.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from square_mirror.constants import QUEUE_NAME
from square_mirror.settings import Settings
from webhooks.enqueue import MAX_IN_FLIGHT, BatchEnqueuer, redis_client
from webhooks.metrics import WebhookMetrics
from webhooks.oauth import OAuthRedirect, oauth_config
from webhooks.views import ReceiverConfig, Views

DEFAULT_REDIS_TIMEOUT: Final = 2.0  # seconds; a hung Redis still gives a 503 long before Square's 10 s
# Square gives up on a delivery after 10 s, so a body still arriving after that is not Square's: answer 408.
DEFAULT_BODY_TIMEOUT: Final = 10.0
# A connection that has not sent a complete request head (or sits idle) this long is closed by aiohttp: the
# slow-loris defence for headers, which arrive before any handler runs. Square opens a connection to deliver.
CONNECTION_IDLE_TIMEOUT: Final = 15.0

VIEWS_KEY: Final = web.AppKey("views", Views)
METRICS_KEY: Final = web.AppKey("metrics", WebhookMetrics)


def create_app(
    settings: Settings,
    *,
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    registry: CollectorRegistry | None = None,
    queue_name: str = QUEUE_NAME,
    max_batch: int = 256,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> web.Application:
    """The receiver: ``POST settings.webhook_path``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, and, when
    OAuth is configured, ``GET`` the path of ``SQUARE_OAUTH_REDIRECT_URL`` (webhooks/oauth.py)."""
    keys, notification_url = settings.require_webhook_config()
    redis_url = settings.require_redis_url()
    config = ReceiverConfig(
        signature_keys=tuple(k.reveal() for k in keys),
        notification_url=notification_url,
        max_body_bytes=settings.webhook_max_body_bytes,
        redis_timeout=redis_timeout,
        body_timeout=body_timeout,
    )
    metrics = WebhookMetrics(registry)
    # Nothing connects here: the client connects on first use, so the receiver starts (and answers 503 and
    # /readyz 503) while Redis is down, and recovers by itself when it is back.
    redis = redis_client(redis_url, redis_timeout)
    enqueuer = BatchEnqueuer(
        redis,
        queue_name=queue_name,
        timeout=redis_timeout,
        max_batch=max_batch,
        max_in_flight=max_in_flight,
        metrics=metrics,
    )
    views = Views(config, enqueuer, redis, metrics)
    oauth = oauth_config(settings)

    async def close_queue(_app: web.Application) -> None:
        # on_cleanup runs after the server finished its in-flight requests (AppRunner.cleanup).
        await enqueuer.close()
        await redis.aclose()

    app = web.Application(client_max_size=settings.webhook_max_body_bytes)
    app[METRICS_KEY] = metrics
    app[VIEWS_KEY] = views
    app.on_cleanup.append(close_queue)
    app.router.add_post(settings.webhook_path, views.webhook)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.metrics_view)
    if oauth is not None:
        app.router.add_get(oauth.path, OAuthRedirect(oauth, enqueuer, metrics).callback)
    return app
