"""Prometheus metrics of the shared Square API client (process-wide default registry).

The receiver keeps its own metrics in webhooks/metrics.py and the worker in worker/metrics.py; the Grafana
dashboard in deploy/ is built on exactly these names.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

SQUARE_REQUESTS: Final = Counter(
    "square_mirror_square_requests_total",
    "Square API requests by endpoint and HTTP status (status 'error' for timeouts and connection failures)",
    ["endpoint", "status"],
)
SQUARE_REQUEST_SECONDS: Final = Histogram(
    "square_mirror_square_request_seconds",
    "Square API request latency by endpoint",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SQUARE_RATE_LIMITED: Final = Counter(
    "square_mirror_square_rate_limited_total", "429 RATE_LIMITED answers from Square", ["endpoint"]
)
RATE_LIMIT_WAIT_SECONDS: Final = Counter(
    "square_mirror_rate_limit_wait_seconds_total", "Seconds spent waiting for the shared per-seller request budget"
)
TOKEN_REFRESHES: Final = Counter(
    "square_mirror_token_refreshes_total",
    "OAuth token refreshes by outcome (refreshed, skipped: another process had it or nothing to do, failed)",
    ["outcome"],
)
SELLERS: Final = Gauge(
    "square_mirror_sellers",
    "OAuth sellers by credential status (active, refresh_failed, reauthorize, revoked, removed)",
    ["status"],
)
