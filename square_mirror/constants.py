"""Names shared by the receiver and the worker: Redis keys, queue names, job names and IDs, pinned defaults.

They live here, and only here, so the two sides can never disagree about where a job is queued or what it is
called (tests/test_architecture.py keeps job names and job-ID schemes out of every other module).
"""

from typing import Final

DEFAULT_SQUARE_BASE_URL: Final = "https://connect.squareup.com"
# The API version the bundled OpenAPI spec describes; bump it together with the spec and the tests.
DEFAULT_SQUARE_VERSION: Final = "2025-08-20"

CUSTOMER_EVENT_TYPES: Final = frozenset({"customer.created", "customer.updated", "customer.deleted"})
# Every custom-attribute event Square sends for customers, the deprecated variants included (customer.custom_attribute
# .updated/.deleted = .owned.*, .public.* = .visible.*; the same for definitions): each carries the changed object.
CUSTOM_ATTRIBUTE_EVENT_TYPES: Final = frozenset(
    f"customer.custom_attribute.{scope}{change}"
    for scope in ("owned.", "visible.", "", "public.") for change in ("updated", "deleted")
)
CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES: Final = frozenset(
    f"customer.custom_attribute_definition.{scope}{change}"
    for scope in ("owned.", "visible.", "", "public.") for change in ("created", "updated", "deleted")
)
# What the receiver queues and the events lane replays.
SYNCED_EVENT_TYPES: Final = (
    CUSTOMER_EVENT_TYPES | CUSTOM_ATTRIBUTE_EVENT_TYPES | CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES
)
# A seller (or the app, or Square) revoked every token the app held for a seller: one event per revoked token.
OAUTH_REVOKED_EVENT: Final = "oauth.authorization.revoked"
# What the receiver queues: the synced events and the OAuth revocation (not replayed by the events lane: it is
# the application's event, not a seller's).
QUEUED_EVENT_TYPES: Final = SYNCED_EVENT_TYPES | frozenset({OAUTH_REVOKED_EVENT})

# arq. Three queues, so an operator may run event workers apart from lane and backfill workers
# (`square-mirror worker --queues ...`): a seller's backfill or a slow lane never waits in front of events.
QUEUE_NAME: Final = "square-mirror:queue"  # events (the receiver's jobs, replayed events, OAuth connections)
LANES_QUEUE: Final = "square-mirror:lanes"  # reconcile lane jobs and the cron entries
BACKFILL_QUEUE: Final = "square-mirror:backfill"  # backfill jobs
QUEUES: Final = {"events": QUEUE_NAME, "lanes": LANES_QUEUE, "backfill": BACKFILL_QUEUE}
PROCESS_EVENT_JOB: Final = "process_event"
RECONCILE_LANE_JOB: Final = "reconcile_lane_job"
BACKFILL_JOB: Final = "backfill_job"
JOB_PAYLOAD_VERSION: Final = 1
# A seller came back from Square's authorize page: the receiver queues the code (sealed) for the worker to exchange.
CONNECT_SELLER_JOB: Final = "connect_seller"
CONNECT_JOB_PAYLOAD_VERSION: Final = 1
# A process_event job's ID is the event ID: a duplicate delivery while the job is queued collapses into it.


# The reconcile lanes and each one's target interval in seconds: how often its cron schedule starts a pass for every
# seller (worker/reconcile/jobs.py; tests/unit/worker/test_freshness.py checks the schedules against it). A lane's
# staleness bound is judged against it (square.sync_freshness in schema.sql repeats these figures, checked by
# tests/integration/worker/test_freshness.py; status --strict: STALENESS_LIMIT_FACTOR times the target).
LANE_TARGET_SECONDS: Final = {
    "incremental": 60,
    "segments": 300,
    "groups": 300,
    "events": 300,
    "custom_attributes": 300,
    "sweep": 86_400,
}
# The lanes a succeeded backfill or sweep also completes: it re-reads every customer (their group and segment
# memberships included), the group and segment definitions, the hidden profiles by ID and every custom attribute,
# and infers deletions and merges. Not the events lane: no full listing reads Square's Events API.
FULL_PASS_LANES: Final = ("incremental", "segments", "groups", "custom_attributes", "sweep")


# LANE_SCHEDULER: the lanes' fixed cron entries (cron, the default) or one cron entry that queues each seller's due
# lanes within its request budget (budget: worker/reconcile/scheduler.py).
LANE_SCHEDULER_CRON: Final = "cron"
LANE_SCHEDULER_BUDGET: Final = "budget"
LANE_SCHEDULERS: Final = (LANE_SCHEDULER_CRON, LANE_SCHEDULER_BUDGET)
SCHEDULE_LANES_CRON: Final = "schedule_lanes"  # the budget scheduler's cron entry (every minute)
# The budget scheduler spreads each seller's lane jobs over this many seconds, by a fixed offset per seller.
LANE_SPREAD_SECONDS: Final = 60
# A lane is due when its staleness at its job's start will be at least its target less this (worker/reconcile/
# scheduler.py): without it, a pass that began a second late would make the lane wait one more minute.
LANE_DUE_SLACK_SECONDS: Final = 10
# The budget scheduler weighs what a seller's requests went to over this window (at least twice the 5-minute lanes'
# target, at most what Redis keeps: USAGE_MINUTES).
LANE_BUDGET_WINDOW_SECONDS: Final = 900

REFRESH_TOKENS_CRON: Final = "refresh_tokens"  # the cron entry that refreshes OAuth sellers' tokens


def queue_for(function: str) -> str:
    """The queue a job is enqueued on: backfills, lanes, and everything else (events) each on its own."""
    return {BACKFILL_JOB: BACKFILL_QUEUE, RECONCILE_LANE_JOB: LANES_QUEUE}.get(function, QUEUE_NAME)


def cron_job_name(lane: str) -> str:
    """The cron entry that fans a reconcile lane out to every merchant."""
    return f"reconcile_{lane}"


def reconcile_job_id(lane: str, merchant_id: str) -> str:
    """One lane of one merchant: arq refuses a second job with this ID while one is queued or running."""
    return f"reconcile:{lane}:{merchant_id}"


def backfill_job_id(merchant_id: str) -> str:
    return f"backfill:{merchant_id}"


def connect_job_id(state_hash: str) -> str:
    """One OAuth redirect (its state's SHA-256): a replayed redirect collapses into the job already queued."""
    return f"connect:{state_hash}"


def continuation_job_id(job_id: str, continues: str) -> str:
    """The job that continues ``continues`` (a job ID) after its time slice ran out."""
    return f"{job_id}:continued:{continues}"


# Redis key prefixes (everything the project writes to Redis starts with this)
REDIS_PREFIX: Final = "square-mirror:"
RATE_LIMIT_KEY: Final = REDIS_PREFIX + "ratelimit:"  # + merchant_id
USAGE_KEY: Final = REDIS_PREFIX + "usage:"  # + merchant_id: requests per minute and class (square_mirror/ratelimit.py)
# The share of a seller's burst (SQUARE_REQUEST_BURST) a backfill leaves to the seller's events
# (square_mirror/ratelimit.py): its event lag stays low while its backfill runs.
BACKFILL_EVENT_RESERVE: Final = 0.2
# The share of a seller's rate its event fetches' batches may start at (worker/events/coalescer.py): beyond it a
# busy seller's events wait for fuller batches instead of taking the whole budget.
EVENT_FETCH_SHARE: Final = 0.5
USAGE_MINUTES: Final = 16  # how many minutes of it Redis keeps: the budget scheduler's window and one more
UNAUTHORIZED_KEY: Final = REDIS_PREFIX + "unauthorized:"  # + merchant_id
HEALTH_KEY: Final = REDIS_PREFIX + "health:"  # + process name
WORKER_HEALTH_KEY: Final = HEALTH_KEY + "worker"
