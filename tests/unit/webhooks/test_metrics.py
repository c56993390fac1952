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
    assert base == DOCUMENTED_NAMES | {"square_mirror_webhook_requests", "square_mirror_webhook_enqueue_failures"}


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
