"""Prometheus metrics of the sync worker (served by the worker process, worker/app.py).

Names start with ``square_mirror_worker_``; the Square client's own ``square_mirror_square_*`` metrics live in
square_mirror/metrics.py and are served by the same endpoint (one process-wide registry).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

EVENTS: Final = Counter(
    "square_mirror_worker_events_total",
    "Events processed, by event type and outcome (applied, stale, duplicate, deleted, merged, ignored, failed, "
    "unauthorized)",
    ["type", "outcome"],
)
JOB_SECONDS: Final = Histogram(
    "square_mirror_worker_job_seconds",
    "Run time of one process_event job (each try counts)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENT_LAG_SECONDS: Final = Histogram(
    "square_mirror_worker_event_lag_seconds",
    "From the event's receipt (or enqueue) to its rows committed in the mirror",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
FETCH_BATCH_SIZE: Final = Histogram(
    "square_mirror_worker_fetch_batch_size",
    "Customer IDs per coalesced fetch (one BulkRetrieveCustomers, or one RetrieveCustomer for a single ID)",
    buckets=(1, 2, 5, 10, 20, 50, 100),
)
FETCHES: Final = Counter(
    "square_mirror_worker_fetches_total",
    "Coalesced fetches by result (ok, error)",
    ["result"],
)
RETRIES: Final = Counter(
    "square_mirror_worker_retries_total",
    "process_event tries deferred with arq Retry, by reason (unavailable, rate_limited, bad_response, database, "
    "timeout, unauthorized)",
    ["reason"],
)
QUEUE_DEPTH: Final = Gauge(
    "square_mirror_worker_queue_depth", "Jobs in the arq queue (due and deferred), sampled at each scrape"
)
JOBS_RUNNING: Final = Gauge("square_mirror_worker_jobs_running", "process_event jobs running in this process")
MERCHANT_UNAUTHORIZED: Final = Gauge(
    "square_mirror_worker_merchant_unauthorized",
    "1 while Square rejects the merchant's token (401/403 or no token), else 0",
    ["merchant_id"],
)

SYNC_RUNS: Final = Counter(
    "square_mirror_sync_runs_total",
    "Backfill and reconcile runs finished, by kind and final status (succeeded, partial, failed, interrupted)",
    ["kind", "status"],
)
LANE_STALENESS: Final = Gauge(
    "square_mirror_lane_staleness_seconds",
    "Upper bound on how old a lane's data can be for a seller: seconds since its last complete pass began "
    "(square.sync_freshness); +Inf while it never completed. Read from Postgres at each scrape",
    ["merchant_id", "lane"],
)
LANES_DEFERRED: Final = Counter(
    "square_mirror_lanes_deferred_total",
    "Due lanes the budget scheduler (LANE_SCHEDULER=budget) left for a later minute because the measured cost of "
    "their last pass did not fit what the seller's lane budget had left over the window",
    ["lane"],
)
LANE_BUDGET_RATIO: Final = Gauge(
    "square_mirror_lane_budget_ratio",
    "What a seller's lanes need to run at their targets over its lane share (square.lane_budgets, read from "
    "Postgres at each scrape): above 1 it cannot afford them (LANE_SCHEDULER=budget)",
    ["merchant_id"],
)
