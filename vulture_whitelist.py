"""Names vulture (./dev lint) reports as unused that are used all the same: by a framework, or only by tests."""

# ruff: noqa: B018
from square_mirror import constants, db, logs, queries, square_api
from webhooks import resp, signature
from worker import app, runs

# Framework callbacks: asyncio calls a Protocol's methods, arq calls its Worker's.
resp._Protocol.connection_made
resp._Protocol.data_received
resp._Protocol.connection_lost
app.RedisTolerantWorker.start_jobs
app.RedisTolerantWorker.finish_job

# Used by the tests only.
db.SCHEMA_VERSION
square_api.SquareClient.list_customers  # the client's ListCustomers (the backfill lists with SearchCustomers)
square_api.SquareClient.requests_made  # the process-wide count of requests (a run counts its own: ratelimit.spending)
runs.last_run
app.build_worker  # one worker with every job function: the tests and the benchmark's baseline
queries.Query.description  # tests/integration/worker/test_queries.py: every query states what it does
signature.compute_signature
constants.FULL_PASS_LANES  # the lanes square.sync_freshness lets a backfill or sweep complete (its tests check)

# square_mirror/logs.py belongs to the logging rework (the review lists both as dead; that work removes them).
logs.bind_context
logs.clear_context
