"""`square-mirror status`: is the mirror healthy, per merchant, at a glance (and as a probe or cron check)."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from square_mirror.constants import QUEUE_NAME
from square_mirror.db import DatabaseUnavailable, connect
from square_mirror.freshness import Bound, read_bounds
from square_mirror.queries import queries
from square_mirror.settings import Settings
from square_mirror.timefmt import iso, utcnow

HELP = (
    "Per merchant: last event processed and its lag, failed events, last backfill and reconcile runs, token "
    "status; plus queue depth, the OAuth sellers by status (and each one that needs attention) and the webhook "
    "subscription check (with SQUARE_APPLICATION_ACCESS_TOKEN). Exits 1 when unhealthy (unauthorized merchant, "
    "failed last run, queue older than --max-queue-age, an OAuth seller to re-authorize or revoked, a webhook "
    "subscription that does not match the configuration; with --strict also failed events and a lane's staleness "
    "bound over STALENESS_LIMIT_FACTOR times its target interval), 2 when Postgres or Redis cannot be reached. "
    "Each seller's staleness bounds (how old each lane's data can be at most) are shown either way."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--max-queue-age", type=float, default=300.0,
                        help="seconds the oldest queued event may wait before status is unhealthy (default 300)")
    parser.add_argument("--strict", action="store_true",
                        help="failed events (see redrive) and a lane's staleness bound over STALENESS_LIMIT_FACTOR "
                             "times its target interval (a lane never completed for a seller known longer than that) "
                             "also make it unhealthy")


def _iso(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


async def collect(settings: Settings, max_queue_age: float, strict: bool,
                  at: datetime | None = None) -> tuple[dict[str, Any], int]:
    """The report and the exit code; staleness bounds as of ``at`` (default: the database's now)."""
    problems: list[str] = []
    report: dict[str, Any] = {"checked_at": iso(utcnow()), "merchants": {}, "queue": None}
    try:
        conn = await connect(settings.require_database_url())
    except DatabaseUnavailable as exc:
        return {"error": str(exc)}, 2
    try:
        merchant_rows = await conn.fetch(queries.get("merchant_status"))
        run_rows = await conn.fetch(queries.get("latest_runs"))
        bounds = await read_bounds(conn, at)
        budget_rows = await conn.fetch(queries.get("lane_budget_status"))
        report["sellers"] = await _sellers(conn, settings, problems)
    finally:
        await conn.close()
    report["webhook_subscription"] = await _webhook_subscription(settings, problems)
    for row in merchant_rows:
        entry = {
            "auth_status": row["auth_status"] or "ok",
            "auth_error": row["auth_error"],
            "last_event_processed_at": _iso(row["last_processed_at"]),
            "last_event_lag_seconds": round(float(row["last_lag_seconds"]), 3)
            if row["last_lag_seconds"] is not None else None,
            "failed_events": row["failed_events"],
            "live_customers": row["live_customers"],
            "events": {"searchable_since": _iso(row["events_searchable_since"]),
                       "enabled_at": _iso(row["events_enabled_at"]), "error": row["events_error"]},
            "runs": {},
        }
        if entry["auth_status"] == "unauthorized":
            problems.append(f"{row['merchant_id']}: unauthorized ({row['auth_error'] or 'token rejected'})")
        if strict and row["failed_events"]:
            problems.append(f"{row['merchant_id']}: {row['failed_events']} failed events (square-mirror redrive)")
        report["merchants"][row["merchant_id"]] = entry
    for run in run_rows:
        entry = report["merchants"].setdefault(run["merchant_id"], {"runs": {}})
        entry["runs"][run["kind"]] = {
            "run_id": run["run_id"], "status": run["status"], "started_at": _iso(run["started_at"]),
            "finished_at": _iso(run["finished_at"]), "counts": run["counts"], "error": run["error"],
        }
        if run["kind"] == "reconcile:events" and (run["counts"] or {}).get("events_refused"):
            continue  # the Events API refused the token: said in the events line, the other lanes heal the mirror
        if run["status"] in ("failed", "partial", "interrupted"):
            problems.append(f"{run['merchant_id']}: last {run['kind']} run {run['status']}")
    refused = {r["merchant_id"] for r in run_rows
               if r["kind"] == "reconcile:events" and (r["counts"] or {}).get("events_refused")}
    _freshness(report, bounds, settings.staleness_limit_factor, problems if strict else None, refused)
    report["lane_budgets"] = _lane_budgets(report, budget_rows)
    if settings.redis_url is not None:
        redis: Redis = Redis.from_url(settings.redis_url.reveal(), socket_timeout=3, socket_connect_timeout=3)
        try:
            depth = await redis.zcard(QUEUE_NAME)
            oldest = await redis.zrange(QUEUE_NAME, 0, 0, withscores=True)
        except (OSError, ConnectionError, TimeoutError) as exc:
            report["queue"] = {"error": f"Redis unreachable: {type(exc).__name__}"}
            report["healthy"] = False
            report["problems"] = [*problems, "Redis unreachable"]
            return report, 2
        finally:
            await redis.aclose()
        age = max(0.0, time.time() - oldest[0][1] / 1000) if oldest else 0.0
        report["queue"] = {"depth": depth, "oldest_age_seconds": round(age, 3)}
        if age > max_queue_age:
            problems.append(f"queue: oldest event waited {age:.0f} s (> {max_queue_age:.0f} s)")
    report["healthy"] = not problems
    report["problems"] = problems
    return report, 0 if not problems else 1


def _freshness(report: dict[str, Any], bounds: list[Bound], factor: float, problems: list[str] | None,
               refused: set[str]) -> None:
    """Each seller's staleness bounds in its entry; with ``problems`` (--strict), each one over its limit there.
    The events lane of a seller whose token the Events API refuses is exempt (said in its events line)."""
    for bound in bounds:
        limit = bound.limit_seconds(factor)
        exceeds = bound.exceeds(factor)
        entry = report["merchants"].setdefault(bound.merchant_id, {"runs": {}})
        entry.setdefault("freshness", {})[bound.lane] = {
            "complete_as_of": _iso(bound.complete_as_of),
            "staleness_seconds": None if bound.staleness_seconds is None else round(bound.staleness_seconds, 3),
            "target_seconds": bound.target_seconds, "limit_seconds": limit, "exceeds_limit": exceeds,
        }
        if problems is None or not exceeds or (bound.lane == "events" and bound.merchant_id in refused):
            continue
        if bound.staleness_seconds is None:
            problems.append(f"{bound.merchant_id}: lane {bound.lane} never completed in the "
                            f"{bound.known_for_seconds:.0f} s the seller is known (limit {limit:.0f} s)")
        else:
            problems.append(f"{bound.merchant_id}: lane {bound.lane} staleness bound {bound.staleness_seconds:.0f} s "
                            f"(limit {limit:.0f} s, {factor:g} x its {bound.target_seconds} s target)")


async def _sellers(conn: Any, settings: Settings, problems: list[str]) -> dict[str, Any]:
    """OAuth sellers: how many per status, and each one an operator must act on."""
    counts = {r["status"]: r["sellers"] for r in await conn.fetch(queries.get("seller_status_counts"))}
    attention = [{"merchant_id": r["merchant_id"], "status": r["status"], "last_error": r["last_error"],
                  "since": _iso(r["status_changed_at"]), "failed_refreshes": r["refresh_failures"],
                  "next_refresh_at": _iso(r["next_refresh_at"]),
                  "token_expires_at": _iso(r["access_token_expires_at"])}
                 for r in await conn.fetch(queries.get("sellers_needing_attention"))]
    from square_mirror.credentials.store import REAUTHORIZE, REMOVED, REVOKED

    for seller in attention:
        if seller["status"] == REAUTHORIZE:
            problems.append(f"{seller['merchant_id']}: Square refused its refresh token; the seller must connect "
                            f"again before {seller['token_expires_at']} (square-mirror sellers connect-url)")
        elif seller["status"] == REVOKED:
            problems.append(f"{seller['merchant_id']}: access revoked; connect it again, or square-mirror sellers "
                            "remove it")
    oauth = sum(counts.values()) - counts.get(REMOVED, 0)
    events_off = None
    if oauth and settings.square_application_access_token is None:
        events_off = ("SQUARE_APPLICATION_ACCESS_TOKEN is not set: the events replay lane is off for OAuth sellers "
                      "(the Events API refuses OAuth tokens)")
    return {"counts": counts, "attention": attention, "events_lane_off": events_off}


async def _webhook_subscription(settings: Settings, problems: list[str]) -> dict[str, Any]:
    from square_mirror.retry import RetryPolicy
    from square_mirror.square_api import SquareClient
    from square_mirror.webhook_subscription import MISMATCH, check

    async with SquareClient.from_settings(settings, timeout=min(5.0, settings.square_timeout_seconds),
                                          retry=RetryPolicy(attempts=1)) as client:
        result = await check(settings, client)
    if result.status == MISMATCH:
        problems.extend(f"webhook subscription: {m}" for m in result.mismatches)
    return result.as_json()


def _lane_budgets(report: dict[str, Any], rows: list[Any]) -> dict[str, Any]:
    """Each seller's lane budget in its entry (LANE_SCHEDULER=budget), and the sellers that cannot afford their
    lanes at the configured share, listed: their lanes run less often than their targets."""
    unaffordable = []
    for row in rows:
        budget = {"planned_at": _iso(row["planned_at"]), "share_rps": row["share_rps"],
                  "available_rps": row["available_rps"], "need_rps": row["need_rps"], "affordable": row["affordable"],
                  "too_slow_lanes": list(row["too_slow_lanes"]), "deferred_lanes": list(row["deferred_lanes"])}
        report["merchants"].setdefault(row["merchant_id"], {"runs": {}})["lane_budget"] = budget
        if not row["affordable"]:
            unaffordable.append({"merchant_id": row["merchant_id"], "need_rps": row["need_rps"],
                                 "share_rps": row["share_rps"], "too_slow_lanes": list(row["too_slow_lanes"])})
    return {"sellers": len(rows), "unaffordable": unaffordable}


def render(report: dict[str, Any]) -> str:
    lines = [f"square-mirror status: {'healthy' if report.get('healthy') else 'UNHEALTHY'}"]
    queue = report.get("queue")
    if queue:
        lines.append(f"  queue: {queue}")
    lines.extend(_seller_lines(report.get("sellers") or {}))
    lines.extend(_subscription_lines(report.get("webhook_subscription") or {}))
    lines.extend(_budget_lines(report.get("lane_budgets") or {}))
    for merchant_id, entry in report.get("merchants", {}).items():
        lines.append(f"  {merchant_id}: auth {entry.get('auth_status', 'ok')}, {entry.get('live_customers', 0)} live "
                     f"customers, {entry.get('failed_events', 0)} failed events, last event "
                     f"{entry.get('last_event_processed_at') or 'never'} (lag {entry.get('last_event_lag_seconds')} s)")
        lines.extend(_events_lines(entry))
        lines.extend(_freshness_lines(entry))
        for kind, run in entry.get("runs", {}).items():
            lines.append(f"    {kind}: {run['status']} (run {run['run_id']}, started {run['started_at']})")
    for problem in report.get("problems", []):
        lines.append(f"  problem: {problem}")
    return "\n".join(lines)


def _seller_lines(sellers: dict[str, Any]) -> list[str]:
    counts = sellers.get("counts") or {}
    if not counts:
        return []
    lines = ["  OAuth sellers: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))]
    for seller in sellers.get("attention") or []:
        lines.append(f"    {seller['merchant_id']}: {seller['status']} since {seller['since']}"
                     + (f" ({seller['last_error']})" if seller["last_error"] else ""))
    if sellers.get("events_lane_off"):
        lines.append(f"    {sellers['events_lane_off']}")
    return lines


def _budget_lines(budgets: dict[str, Any]) -> list[str]:
    if not budgets.get("sellers"):
        return []
    unaffordable = budgets["unaffordable"]
    lines = [f"  lane budgets: {budgets['sellers'] - len(unaffordable)} of {budgets['sellers']} sellers afford their "
             "lanes at their targets"]
    for seller in unaffordable:
        slow = f"; passes longer than the target: {', '.join(seller['too_slow_lanes'])}" if seller["too_slow_lanes"] \
            else ""
        lines.append(f"    {seller['merchant_id']}: cannot afford its lanes (needs {seller['need_rps']:.2f} req/s, "
                     f"share {seller['share_rps'] or 0:.2f} req/s{slow}); they run less often than their targets")
    return lines


def _subscription_lines(result: dict[str, Any]) -> list[str]:
    if not result:
        return []
    status = result.get("status")
    if status in ("off", "error"):
        return [f"  webhook subscription check: {status} ({result.get('reason')})"]
    if status == "match":
        return [f"  webhook subscription {result.get('subscription_id')}: matches the configuration"]
    return [f"  webhook subscription {result.get('subscription_id') or '(none)'}: does not match the configuration "
            "(square-mirror webhooks check)"]


def _events_lines(entry: dict[str, Any]) -> list[str]:
    """Whether the events replay can work for this seller, and how far back it can reach."""
    events = entry.get("events") or {}
    if events.get("error"):
        return [f"    events replay: off ({events['error']})"]
    since = events.get("searchable_since")
    if since is None:
        return ["    events replay: events not enabled yet (the next events pass enables them)"]
    lines = [f"    events replay: searchable since {since}"]
    counts = (entry.get("runs", {}).get("reconcile:events") or {}).get("counts") or {}
    if counts.get("unsearchable_seconds"):
        lines.append(f"    events replay: its last window reached {counts['unsearchable_seconds']} s before {since}; "
                     "events from then can never be replayed (webhooks and the other lanes covered them)")
    if counts.get("events_missing_from_search"):
        lines.append(f"    events replay: {counts['events_missing_from_search']} delivered events were not "
                     "searchable (events had been disabled); enabled again")
    return lines


def _freshness_lines(entry: dict[str, Any]) -> list[str]:
    """One line: each lane's staleness bound (since its last complete pass began), and which are over the limit."""
    lanes = entry.get("freshness") or {}
    if not lanes:
        return []
    parts = []
    for lane, bound in lanes.items():
        seconds = bound["staleness_seconds"]
        text = f"{lane} never" if seconds is None else f"{lane} {seconds:.0f} s"
        parts.append(text + (f" (over {bound['limit_seconds']:.0f} s)" if bound["exceeds_limit"] else ""))
    return ["    staleness bounds: " + ", ".join(parts)]


async def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    report, code = await collect(settings, args.max_queue_age, args.strict)
    if args.json:
        print(orjson.dumps(report, default=str).decode())
    elif "error" in report:
        print(f"square-mirror status: {report['error']}")
    else:
        print(render(report))
    return code
