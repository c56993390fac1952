"""Chaos run, large configuration: the mirror must end equal to Square's truth whatever was killed meanwhile.

Usage: PYTHONPATH=. python bench/chaos.py [--seed N] [--sellers 20] [--customers 50] [--duration 180]
                                          [--scheduler budget|cron] [--trigger-scheduler] [--max-rps 20]
                                          [--db-pool-size 6]
                                          [--workers 2] [--worker-kills 8] [--receiver-kills 2] [--redis-restarts 2]
                                          [--pg-terminations 6] [--database-url postgresql://...] [--keep-logs]

By default 20 sellers whose lanes only the budget scheduler (``LANE_SCHEDULER=budget``) queues after the faults,
each when the scheduler's own cron entry comes due (``--trigger-scheduler``: its job is queued at once instead, as
the CI test does); ``--scheduler cron --sellers 3 --customers 200`` is the earlier configuration, whose passes
``square-mirror reconcile`` starts.

The run itself (processes, faults, mutation stream, check) is ``tests/chaos/harness.py``, shared with the CI-size
test ``tests/chaos/test_chaos.py``, so both judge convergence the same way. This script creates a fresh database on
``--database-url`` (default: the local Postgres), runs the chaos, prints the figures and drops the database.
Exit status 0 only when there is no mismatch, no unaccounted 2xx-acknowledged webhook and no leak in the logs.
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

# bench/ holds emulator.py, which would shadow the emulator package when this file runs as a script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse
import asyncio
import random
import time
import uuid

import asyncpg

from square_mirror.constants import LANE_SCHEDULER_BUDGET, LANE_SCHEDULERS
from square_mirror.db import migrate
from tests.chaos.harness import ChaosConfig, ChaosRun
from tests.services import with_database


async def _main(args: argparse.Namespace) -> int:
    name = f"sqm_chaos_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(args.database_url, name)
        budget = args.scheduler == LANE_SCHEDULER_BUDGET
        max_rps = args.max_rps if args.max_rps is not None else 20.0 if budget else 0.0
        await migrate(dsn)
        config = ChaosConfig(
            database_url=dsn, seed=args.seed, sellers=args.sellers, customers=args.customers,
            duration=args.duration, mutation_concurrency=args.mutators, workers=args.workers,
            worker_kills=args.worker_kills, receiver_kills=args.receiver_kills, redis_restarts=args.redis_restarts,
            pg_terminations=args.pg_terminations, converge_timeout=args.converge_timeout, keep_logs=args.keep_logs,
            scheduler=args.scheduler, wait_for_cron=not args.trigger_scheduler, max_requests_per_second=max_rps,
            worker_db_pool_size=args.db_pool_size or 6)
        started = time.monotonic()
        report = await ChaosRun(config).run()
        print()
        print(report.render())
        print(f"wall time: {time.monotonic() - started:.1f} s")
        return 0 if report.ok else 1
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1, 10**6))
    parser.add_argument("--sellers", type=int, default=20)
    parser.add_argument("--customers", type=int, default=50, help="seeded per seller")
    parser.add_argument("--scheduler", choices=LANE_SCHEDULERS, default=LANE_SCHEDULER_BUDGET,
                        help="the workers' LANE_SCHEDULER: who starts the passes after the faults")
    parser.add_argument("--trigger-scheduler", action="store_true",
                        help="budget: queue the scheduler's job at once instead of waiting for its cron entry")
    parser.add_argument("--max-rps", type=float, default=None,
                        help="SQUARE_MAX_REQUESTS_PER_SECOND per seller (0: unlimited, no lane budget; default: 20 "
                             "with the budget scheduler, 0 with cron)")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of mutations under faults")
    parser.add_argument("--mutators", type=int, default=4, help="concurrent mutation streams")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-kills", type=int, default=8)
    parser.add_argument("--receiver-kills", type=int, default=2)
    parser.add_argument("--redis-restarts", type=int, default=2)
    parser.add_argument("--pg-terminations", type=int, default=6)
    parser.add_argument("--db-pool-size", type=int, default=None,
                        help="WORKER_DB_POOL_SIZE (default 6: small, so many runs at once show that a run's lock "
                             "holds no pooled connection)")
    parser.add_argument("--converge-timeout", type=float, default=300.0)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL")
                        or "postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN (a database is created)")
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's log and print where")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
