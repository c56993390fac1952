"""Prometheus metrics of the receiver, in a registry per app so tests and several apps never collide.

Every name starts with ``square_mirror_webhook_``; the Grafana dashboard is built on exactly these names, so
renaming one is a breaking change.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Outcomes of a webhook request (the `outcome` label), with the HTTP status each one answers.
ENQUEUED: Final = "enqueued"  # 200, a new job is in the queue
DUPLICATE: Final = "duplicate"  # 200, a job with this event ID is already queued, running or kept
IGNORED: Final = "ignored"  # 200, an event type the mirror does not process
UNAUTHORIZED: Final = "unauthorized"  # 401, missing or wrong signature
BAD_REQUEST: Final = "bad_request"  # 400, invalid JSON or a missing event_id / type / merchant_id
TOO_LARGE: Final = "too_large"  # 413, body above WEBHOOK_MAX_BODY_BYTES
TIMEOUT: Final = "timeout"  # 408, the body did not arrive within the body timeout (a slow or stalled client)
UNSUPPORTED_MEDIA_TYPE: Final = "unsupported_media_type"  # 415, not application/json
UNAVAILABLE: Final = "unavailable"  # 503, Redis did not acknowledge the enqueue in time
ERROR: Final = "error"  # 500, a bug

# `event_type` label when no trustworthy type is known (the request was refused before parsing).
UNKNOWN_TYPE: Final = "unknown"
INVALID_TYPE: Final = "invalid"
_TYPE_RE: Final = re.compile(r"^[a-z0-9_.]{1,80}$")

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


_labels: dict[str, str] = {}


def event_type_label(value: object) -> str:
    """A bounded label value: Square's event types are short dotted names; anything else is one bucket."""
    if not isinstance(value, str):
        return INVALID_TYPE
    label = _labels.get(value)
    if label is None:
        label = value if _TYPE_RE.match(value) else INVALID_TYPE
        if len(_labels) < 1000:  # remembered for the few real types; a flood of junk types is not cached
            _labels[value] = label
    return label


class RequestMetrics(Collector):
    """``square_mirror_webhook_requests_total`` and ``square_mirror_webhook_request_seconds``, per outcome and
    event type, kept as plain numbers and turned into samples only when scraped.

    Why not prometheus_client's Counter and Histogram: these two are updated on every request, and their
    ``inc`` and ``observe`` (a lock each, a bucket search in Python, validity checks) cost the receiver about
    3 us per request, several percent of its CPU. The samples are the same for every duration a clock gives
    (Prometheus's ``le`` is "less than or equal", as ``bisect_left`` finds it; a NaN would land in the first
    bucket, where prometheus_client counts it nowhere), without the optional ``_created`` series. Updates are not
    thread-safe: the receiver updates and renders them on its one event loop.
    """

    def __init__(self) -> None:
        # Per (outcome, event_type): one count per bucket of LATENCY_BUCKETS, one for +Inf, then the sum.
        self._series: dict[tuple[str, str], list[float]] = {}
        # The ``le`` values prometheus_client's own Histogram writes.
        self._bucket_labels = [floatToGoString(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]

    def observe(self, outcome: str, event_type: str, seconds: float) -> None:
        series = self._series.get((outcome, event_type))
        if series is None:
            series = self._series[(outcome, event_type)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        series[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "square_mirror_webhook_requests", "Webhook requests by outcome and event type.",
            labels=["outcome", "event_type"],
        )
        latency = HistogramMetricFamily(
            "square_mirror_webhook_request_seconds",
            "Time from the start of the handler to the response, by outcome and event type.",
            labels=["outcome", "event_type"],
        )
        for labels, series in list(self._series.items()):
            buckets: list[tuple[str, float]] = []
            total = 0.0
            for label, count in zip(self._bucket_labels, series[:-1], strict=True):
                total += count
                buckets.append((label, total))
            requests.add_metric(labels, total)
            latency.add_metric(labels, buckets, series[-1])
        yield requests
        yield latency


class WebhookMetrics:
    """The receiver's metrics; ``render()`` is what ``GET /metrics`` serves."""

    content_type: Final = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = RequestMetrics()
        self.registry.register(self.requests)
        self.enqueue_failures = Counter(
            "square_mirror_webhook_enqueue_failures",
            "Events answered 503 because Redis did not acknowledge the enqueue, by event type and reason.",
            ["event_type", "reason"],
            registry=self.registry,
        )
        self.enqueue_batch_size = Histogram(
            "square_mirror_webhook_enqueue_batch_size",
            "Events written to Redis in one round trip (concurrent requests share a batch).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.enqueue_seconds = Histogram(
            "square_mirror_webhook_enqueue_seconds",
            "Redis round trip of one enqueue batch, failures included.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.oauth_redirects = Counter(
            "square_mirror_webhook_oauth_redirects",
            "Sellers sent back by Square's authorize page (the OAuth redirect), by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        # A plain counter read at scrape time: a Gauge's inc/dec take a lock each, twice per request.
        self.in_flight_count = 0
        self.in_flight = Gauge(
            "square_mirror_webhook_requests_in_flight",
            "Webhook requests being handled right now.",
            registry=self.registry,
        )
        self.in_flight.set_function(lambda: self.in_flight_count)

    def observe_request(self, outcome: str, event_type: str, seconds: float) -> None:
        self.requests.observe(outcome, event_type, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
