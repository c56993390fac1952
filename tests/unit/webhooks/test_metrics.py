"""Metric names and labels are a contract with the Grafana dashboard; label values stay bounded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from webhooks.metrics import INVALID_TYPE, WebhookMetrics, event_type_label

DOCUMENTED_NAMES = {
    "square_mirror_webhook_requests_total",
    "square_mirror_webhook_request_seconds",
    "square_mirror_webhook_enqueue_failures_total",
    "square_mirror_webhook_enqueue_batch_size",
    "square_mirror_webhook_enqueue_seconds",
    "square_mirror_webhook_requests_in_flight",
}


def test_exactly_the_documented_metric_names_are_exported() -> None:
    metrics = WebhookMetrics()
    metrics.observe_request("enqueued", "customer.created", 0.002)
    metrics.enqueue_failures.labels("customer.created", "timeout").inc()
    metrics.enqueue_batch_size.observe(3)
    metrics.enqueue_seconds.observe(0.001)
    text = metrics.render().decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    base = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum").removesuffix("_created")
            for n in names}
    assert base == DOCUMENTED_NAMES | {"square_mirror_webhook_enqueue_failures"}  # its _created series


def test_each_app_has_its_own_registry() -> None:
    first, second = WebhookMetrics(), WebhookMetrics(CollectorRegistry())
    first.observe_request("enqueued", "customer.created", 0.001)
    assert first.registry.get_sample_value(
        "square_mirror_webhook_requests_total", {"outcome": "enqueued", "event_type": "customer.created"}
    ) == 1.0
    assert second.registry.get_sample_value(
        "square_mirror_webhook_requests_total", {"outcome": "enqueued", "event_type": "customer.created"}
    ) is None


def test_repeated_observations_accumulate() -> None:
    metrics = WebhookMetrics()
    for _ in range(3):
        metrics.observe_request("duplicate", "customer.updated", 0.004)
    labels = {"outcome": "duplicate", "event_type": "customer.updated"}
    assert metrics.registry.get_sample_value("square_mirror_webhook_requests_total", labels) == 3.0
    assert metrics.registry.get_sample_value("square_mirror_webhook_request_seconds_count", labels) == 3.0


def test_event_type_labels_are_bounded() -> None:
    assert event_type_label("customer.created") == "customer.created"
    assert event_type_label("customer.custom_attribute.owned.updated") == "customer.custom_attribute.owned.updated"
    for hostile in ("x" * 81, "Customer.Created", "a b", "évènement", "", None, 42, ["customer.created"]):
        assert event_type_label(hostile) == INVALID_TYPE


def test_request_samples_equal_prometheus_clients_own_counter_and_histogram() -> None:
    from prometheus_client import Counter, Histogram

    from webhooks.metrics import LATENCY_BUCKETS

    reference = CollectorRegistry()
    counter = Counter("square_mirror_webhook_requests", "", ["outcome", "event_type"], registry=reference)
    histogram = Histogram("square_mirror_webhook_request_seconds", "", ["outcome", "event_type"],
                          buckets=LATENCY_BUCKETS, registry=reference)
    metrics = WebhookMetrics()
    # Every bound exactly (Prometheus's le is "less than or equal"), just above it, zero and past the last one.
    observations = [0.0, *LATENCY_BUCKETS, *(b * 1.0001 for b in LATENCY_BUCKETS), 60.0]
    for n, seconds in enumerate(observations):
        labels = ("enqueued", "customer.updated") if n % 3 else ("unauthorized", "unknown")
        metrics.observe_request(*labels, seconds)
        counter.labels(*labels).inc()
        histogram.labels(*labels).observe(seconds)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect()
            if family.name in ("square_mirror_webhook_requests", "square_mirror_webhook_request_seconds")
            for s in family.samples
            if not s.name.endswith("_created")
        }

    ours, theirs = samples(metrics.registry), samples(reference)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert abs(ours[key] - value) < 1e-9, key
