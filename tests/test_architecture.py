"""Each rule has one home, and this test keeps it there.

In the spirit of httpx's ``tests/test_exported_members.py``: the source tree is read (AST, SQL with comments
stripped) and every rule of the README's "Where each rule lives" table that can drift into a second module is
checked to live in exactly one. A second home fails here, naming both.

The shipped packages are ``square_mirror``, ``webhooks`` and ``worker``; the emulator plays Square (it produces
``INVALID_CURSOR``, it has its own clock) and the tests and benchmarks may do anything.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from square_mirror import constants
from square_mirror.queries import queries as shared_queries
from worker.outcome import Outcome
from worker.queries import queries as worker_queries
from worker.reconcile.jobs import ARQ_CRON_JOBS, ARQ_FUNCTIONS
from worker.store import MergeSource

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("square_mirror", "webhooks", "worker")
# Owned by other work in progress (logging; the receiver's clock); named here so the exceptions are visible.
NOT_YET = {"square_mirror/logs.py"}
RECEIVER_CLOCK = "webhooks/views.py"  # its per-second timestamp cache, on the receiver's hot path


def _modules(*packages: str) -> Iterator[tuple[str, ast.Module]]:
    for package in packages or SHIPPED:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in NOT_YET:
                yield rel, ast.parse(path.read_text(encoding="utf-8"), rel)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (they may mention anything)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _strings(tree: ast.Module) -> Iterator[str]:
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.value


def _homes(predicate: object, *packages: str) -> list[str]:
    assert callable(predicate)
    return sorted({rel for rel, tree in _modules(*packages) for node in ast.walk(tree) if predicate(node)})


def _defines(kind: type[ast.AST], name: str) -> object:
    return lambda node: isinstance(node, kind) and getattr(node, "name", None) == name


def _sql(path: Path) -> str:
    return _without_comments(path.read_text(encoding="utf-8"))


def _without_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


# -- one definition each ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "home"), [
    ("Outcome", "worker/outcome.py"),
    ("MergeSource", "worker/store.py"),
    ("WorkerContext", "worker/context.py"),
    ("AuthHooks", "worker/context.py"),
    ("MicroBatcher", "worker/events/batching.py"),
    ("RetryPolicy", "square_mirror/retry.py"),
    ("Pages", "square_mirror/pagination.py"),
    ("Membership", "worker/reconcile/lanes.py"),
    ("SquareError", "square_mirror/errors.py"),
])
def test_each_class_is_defined_once(name: str, home: str) -> None:
    assert _homes(_defines(ast.ClassDef, name)) == [home]


@pytest.mark.parametrize(("name", "home"), [
    # time: now, formats, parsing
    ("utcnow", "square_mirror/timefmt.py"),
    ("rfc3339", "square_mirror/timefmt.py"),
    ("rfc3339_ms", "square_mirror/timefmt.py"),
    ("iso", "square_mirror/timefmt.py"),
    ("parse_time", "square_mirror/timefmt.py"),
    # which merchants --all and the cron lanes mean
    ("known_merchants", "worker/merchants.py"),
    ("resolve_merchants", "worker/merchants.py"),
    # the context, built once
    ("build_context", "worker/context.py"),
    ("worker_context", "worker/context.py"),
    # retries and transients
    ("transient_reason", "square_mirror/retry.py"),
    ("is_shared_failure", "square_mirror/retry.py"),
    ("event_retry_delay", "square_mirror/retry.py"),
    # the run lifecycle and its status
    ("recorded", "worker/runs.py"),
    ("status_for", "worker/runs.py"),
    # the event gate, the merge rule, what a fetched profile means
    ("event_is_stale", "worker/events/rules.py"),
    ("apply_merge", "worker/store.py"),
    ("apply_profiles", "worker/sync.py"),
])
def test_each_rule_function_is_defined_once(name: str, home: str) -> None:
    functions = _homes(lambda n: isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name)
    assert functions == [home]


# -- the rules' words stay in their homes ------------------------------------------------------------------

def test_an_expired_cursor_is_recognised_in_one_module() -> None:
    assert _homes(lambda n: isinstance(n, ast.Constant) and n.value == "INVALID_CURSOR") == [
        "square_mirror/pagination.py"]


def test_time_is_read_and_formatted_in_one_module() -> None:
    calls = {"now", "isoformat", "fromisoformat", "fromtimestamp", "strftime", "strptime"}
    homes = _homes(lambda n: isinstance(n, ast.Attribute) and n.attr in calls)
    assert [home for home in homes if home != RECEIVER_CLOCK] == ["square_mirror/timefmt.py"]


def test_job_names_are_written_in_constants_only() -> None:
    names = {constants.PROCESS_EVENT_JOB, constants.RECONCILE_LANE_JOB, constants.BACKFILL_JOB,
             constants.CONNECT_SELLER_JOB}
    homes = sorted({rel for rel, tree in _modules() for s in _strings(tree) if s in names})
    assert homes == ["square_mirror/constants.py"]
    # arq names a job by its function, and the cron entries come from constants.cron_job_name
    assert {f.__name__ for f in ARQ_FUNCTIONS} == {constants.RECONCILE_LANE_JOB, constants.BACKFILL_JOB}
    assert {job.name for job in ARQ_CRON_JOBS} == {constants.cron_job_name(lane) for lane in
                                                   ("incremental", "segments", "groups", "events", "custom_attributes",
                                                    "sweep")}


def test_job_ids_come_from_constants() -> None:
    """Every enqueue names its function by a constant and takes its job ID from constants (or the event ID)."""
    bad = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "enqueue_job":
                if node.args and isinstance(node.args[0], ast.Constant):
                    bad.append(f"{rel}:{node.lineno} names its job with a literal")
                for keyword in node.keywords:
                    if keyword.arg == "_job_id" and isinstance(keyword.value, ast.Constant | ast.JoinedStr):
                        bad.append(f"{rel}:{node.lineno} builds its job ID in place")
    job_id_literal = re.compile(r"^(reconcile|backfill|connect):|:continued:")
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and rel != "square_mirror/constants.py":
                head = node.values[0]
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
                if isinstance(head, ast.Constant) and job_id_literal.search(text) and text.count(":") > 1:
                    bad.append(f"{rel}:{node.lineno} writes a job-ID scheme")
    assert bad == []


def test_transient_errors_are_classified_in_one_module() -> None:
    transient = {"DeadlockDetectedError", "SerializationError", "LockNotAvailableError", "TooManyConnectionsError",
                 "CannotConnectNowError", "AdminShutdownError", "ConnectionDoesNotExistError",
                 "InternalClientError", "QueryCanceledError"}
    assert _homes(lambda n: isinstance(n, ast.Attribute) and n.attr in transient) == ["square_mirror/retry.py"]
    square = {"SquareRateLimited", "SquareUnavailable", "SquareBadResponse"}

    def tuple_of_transients(node: ast.AST) -> bool:
        return isinstance(node, ast.Tuple) and len({e.id for e in node.elts if isinstance(e, ast.Name)} & square) > 1

    assert _homes(tuple_of_transients) == ["square_mirror/retry.py"]
    # jittered backoff: retry.py is the only module that draws random delays
    assert _homes(lambda n: isinstance(n, ast.Attribute) and n.attr == "uniform") == ["square_mirror/retry.py"]


def test_the_staleness_rule_guards_the_upsert_only() -> None:
    """square.customer_snapshot_wins (schema.sql) is called by the upsert's guard and by nothing else."""
    files = sorted(p.relative_to(ROOT).as_posix() for package in SHIPPED for p in (ROOT / package).rglob("*.sql")
                   if "customer_snapshot_wins" in _sql(p))
    assert files == ["worker/sql/upsert_customers.sql"]
    named = sorted(name for loader in (shared_queries, worker_queries) for name in loader.names()
                   if "customer_snapshot_wins" in _without_comments(loader.query(name).text))
    assert named == ["upsert_customers"]
    in_python = sorted({rel for rel, tree in _modules() if any("customer_snapshot_wins" in s for s in _strings(tree))})
    assert in_python == []  # docstrings may name it


# Statements built from identifiers (a table name per loop turn) cannot be named queries; EXAMPLE_SQL is text
# the demo prints for people to paste.
INLINE_SQL = {"square_mirror/commands/prune_history.py", "square_mirror/commands/demo.py"}
_STATEMENT = re.compile(r"^\s*(SELECT|INSERT\s+INTO|UPDATE|DELETE\s+FROM|WITH)\s+\S")


def test_sql_lives_in_sql_files() -> None:
    """Statements are named queries in .sql files (square_mirror.queries loads them), not Python strings."""
    homes = sorted({rel for rel, tree in _modules() for s in _strings(tree) if _STATEMENT.match(s)})
    assert homes == sorted(INLINE_SQL)


def test_runs_start_and_end_in_one_place() -> None:
    for name in ("start_run", "exclusive"):
        callers = _homes(lambda n, name=name: isinstance(n, ast.Call) and (
            getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name))
        assert callers == ["worker/runs.py"], name


def test_the_context_is_built_in_one_place() -> None:
    def builds(node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and (getattr(node.func, "id", None) == "WorkerContext" or (
            isinstance(node.func, ast.Attribute) and node.func.attr == "from_settings"
            and getattr(node.func.value, "id", None) == "SquareClient"))

    assert _homes(builds, "worker") == ["worker/context.py"]
    # and arq's job dict is read through the accessors only
    def reads_ctx(node: ast.AST) -> bool:
        return (isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "ctx") or (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and getattr(node.func.value, "id", None) == "ctx")

    assert _homes(reads_ctx, "worker") == ["worker/app.py", "worker/context.py"]


def test_job_payloads_are_read_through_square_mirror_jobs() -> None:
    """The worker reads a job payload as an EventJob (read_event_job), never by its keys."""
    def reads_payload(node: ast.AST) -> bool:
        by_key = isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
        merge_keys = ("event_context", "merge", "from_customer_ids", "to_customer_id")
        return by_key and (getattr(node.value, "id", None) == "payload" or node.slice.value in merge_keys)

    assert _homes(reads_payload, "worker") == []


def test_one_batcher_times_the_batches() -> None:
    assert _homes(lambda n: isinstance(n, ast.Attribute) and n.attr == "call_later", "worker") == [
        "worker/events/batching.py"]


# -- the vocabularies match the schema's CHECK constraints ------------------------------------------------

def _check_values(pattern: str) -> set[str]:
    schema = _sql(ROOT / "schema.sql")
    match = re.search(pattern, schema, re.S)
    assert match is not None, pattern
    return set(re.findall(r"'([a-z_]+)'", match.group(1)))


def test_outcomes_match_the_inbox_check() -> None:
    assert {o.value for o in Outcome} == _check_values(r"outcome\s+text CHECK \(outcome IN \(([^)]*)\)")


def test_merge_sources_match_the_check_and_the_stated_lineage_rule() -> None:
    check = _check_values(r"customer_merges_source_check\s+CHECK \(source IN \(([^)]*)\)")
    assert {s.value for s in MergeSource} == check
    stated = {s.value for s in MergeSource if s.stated}
    for name in ("record_merges", "tombstone_customers"):
        lists = re.findall(r"source (?:NOT )?IN \(([^)]*)\)", _without_comments(worker_queries.get(name)))
        assert lists, name
        assert all(set(re.findall(r"'([a-z_]+)'", found)) == stated for found in lists), name
