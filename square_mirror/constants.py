"""Names shared by the receiver and the worker: Redis keys, queue names, job names, pinned defaults.

They live here, and only here, so the two sides can never disagree about where a job is queued.
"""

from typing import Final

DEFAULT_SQUARE_BASE_URL: Final = "https://connect.squareup.com"
# The API version the bundled OpenAPI spec describes; bump it together with the spec and the tests.
DEFAULT_SQUARE_VERSION: Final = "2025-08-20"

CUSTOMER_EVENT_TYPES: Final = frozenset({"customer.created", "customer.updated", "customer.deleted"})

# arq
QUEUE_NAME: Final = "square-mirror:queue"
PROCESS_EVENT_JOB: Final = "process_event"
RECONCILE_LANE_JOB: Final = "reconcile_lane_job"
JOB_PAYLOAD_VERSION: Final = 1

# Redis key prefixes (everything the project writes to Redis starts with this)
REDIS_PREFIX: Final = "square-mirror:"
RATE_LIMIT_KEY: Final = REDIS_PREFIX + "ratelimit:"  # + merchant_id
UNAUTHORIZED_KEY: Final = REDIS_PREFIX + "unauthorized:"  # + merchant_id
HEALTH_KEY: Final = REDIS_PREFIX + "health:"  # + process name
