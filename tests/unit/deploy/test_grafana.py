"""The Grafana dashboard is built on exactly the metric names the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "square-mirror.json"
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "avg", "clamp_min", "le",
                "without", "count", "irate"}


def _exported_names() -> set[str]:
    import square_mirror.metrics  # noqa: F401
    import worker.metrics
    import worker.runs  # noqa: F401
    from square_mirror.settings import Settings
    from webhooks.app import create_app

    registry = CollectorRegistry()
    create_app(Settings.from_env({"SQUARE_WEBHOOK_SIGNATURE_KEY": "k" * 8,
                                  "SQUARE_WEBHOOK_NOTIFICATION_URL": "https://example.com/h",
                                  "REDIS_URL": "redis://127.0.0.1:6379/0"}), registry=registry)
    names: set[str] = set()
    for source in (REGISTRY, registry):
        for family in source.collect():
            for sample in family.samples:
                names.add(sample.name)
            names.add(family.name)
            if family.type == "histogram":
                names.update({family.name + suffix for suffix in ("_bucket", "_sum", "_count")})
            if family.type == "counter":
                names.add(family.name + "_total")
    return {n for n in names if n.startswith("square_mirror_")}


def _expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_expression_names_an_exported_metric() -> None:
    exported = _exported_names()
    expressions = _expressions()
    assert expressions
    for expr in expressions:
        without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]|by \([^)]*\)", " ", expr)
        metrics = {w for w in re.findall(r"[a-z_][a-z0-9_]*", without_labels) if w.startswith("square_mirror_")}
        assert metrics, f"no metric in {expr!r}"
        assert metrics <= exported, f"{sorted(metrics - exported)} not exported (in {expr!r})"


def test_the_dashboard_covers_the_metrics_operators_need() -> None:
    joined = " ".join(_expressions())
    for needed in ("square_mirror_webhook_requests_total", "square_mirror_worker_events_total",
                   "square_mirror_worker_event_lag_seconds_bucket", "square_mirror_worker_queue_depth",
                   "square_mirror_square_requests_total", "square_mirror_square_rate_limited_total",
                   "square_mirror_rate_limit_wait_seconds_total", "square_mirror_sync_runs_total",
                   "square_mirror_lane_staleness_seconds"):
        assert needed in joined
