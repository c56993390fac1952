"""process_event against the emulator and real Postgres/Redis: one test per rule of the worker issue."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import asyncpg
import pytest
from arq.worker import Retry

from square_mirror.timefmt import parse_time
from tests.factories import event_job
from tests.integration.worker.support import harness


async def test_created_event_is_fetched_applied_and_a_replay_is_a_duplicate(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        rec, _ = h.state.create_customer({"given_name": "Ada", "email_address": "ada@example.test"})
        [payload] = h.payloads()
        assert await h.run(payload) == "applied"
        row = await h.customer(rec.id)
        assert row is not None and row["version"] == 0 and row["deleted_at"] is None
        calls = h.api_calls
        assert await h.run(payload) == "duplicate"
        assert h.api_calls == calls
        event = await h.outcome(payload["event_id"])
        assert event is not None
        assert (event["outcome"], event["attempts"]) == ("applied", 2)  # the duplicate did not overwrite it
        stored = await db_pool.fetchval("SELECT payload FROM square.webhook_events")
        assert "Ada" not in str(stored) and "ada@" not in str(stored)  # the inbox holds no PII


async def test_stale_gate_answers_older_events_without_an_api_call(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        rec, _ = h.state.create_customer({"given_name": "A"})
        for n in range(3):
            h.state.update_customer(rec.id, {"family_name": f"F{n}"}, None, clear_null=True)
        payloads = h.payloads()
        assert [p["version"] for p in payloads] == [0, 1, 2, 3]
        assert await h.run(payloads[2]) == "applied"  # fetches the current profile, version 3
        calls = h.api_calls
        for payload in (payloads[0], payloads[1], payloads[3]):
            assert await h.run(payload) == "stale"
        assert h.api_calls == calls
        assert (await h.customer(rec.id))["version"] == 3  # type: ignore[index]


async def test_delete_tombstones_and_no_late_event_resurrects_it(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        group = h.state.create_group("VIP", None)
        rec, _ = h.state.create_customer({"given_name": "A"})
        h.state.set_group(rec.id, group["id"], True)
        created, grouped = h.payloads()
        assert await h.run(grouped) == "applied"
        assert await db_pool.fetchval("SELECT count(*) FROM square.customer_group_members") == 1
        assert await db_pool.fetchval("SELECT name FROM square.customer_groups") == "VIP"  # definition fetched
        h.state.delete_customer(rec.id, None)
        deleted = h.payloads()[-1]
        calls = h.api_calls
        assert await h.run(deleted) == "deleted"
        assert await h.run(created) == "stale"
        assert h.api_calls == calls  # neither the delete nor the late create asked Square
        row = await h.customer(rec.id)
        assert row is not None and row["deleted_at"] is not None and row["merged_into"] is None
        assert await db_pool.fetchval("SELECT count(*) FROM square.customer_group_members") == 0
        assert await db_pool.fetchval("SELECT count(*) FROM square.customers_current") == 0


async def test_update_of_a_customer_deleted_meanwhile_tombstones_it(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        rec, _ = h.state.create_customer({"given_name": "A"})
        h.state.delete_customer(rec.id, None)
        created, _deleted = h.payloads()
        assert await h.run(created) == "deleted"  # the fetch got 404: tombstone
        assert (await h.customer(rec.id))["deleted_at"] is not None  # type: ignore[index]


@pytest.mark.parametrize("deleted_first", [True, False])
async def test_a_tombstone_ends_with_the_version_square_gave_the_deleted_profile_in_any_order(
    db_pool: asyncpg.Pool, redis_url: str, deleted_first: bool
) -> None:
    async with harness(db_pool, redis_url) as h:
        rec, _ = h.state.create_customer({"given_name": "A"})
        h.state.update_customer(rec.id, {"family_name": "B"}, None, clear_null=True)
        h.state.delete_customer(rec.id, None)
        created, _updated, deleted = h.payloads()
        assert deleted["version"] == 1  # the job envelope carries the version of the deleted profile
        if deleted_first:
            assert [await h.run(deleted), await h.run(created)] == ["deleted", "stale"]
        else:  # the create's fetch meets a 404: a tombstone that knows no version yet
            assert [await h.run(created), await h.run(deleted)] == ["deleted", "deleted"]
        row = await h.customer(rec.id)
        assert row is not None and row["deleted_at"] is not None and row["version"] == 1


@pytest.mark.parametrize(("updates", "deleted_first"), [(0, True), (0, False), (1, True), (1, False)])
async def test_a_plain_delete_is_dated_by_its_event_whatever_the_mirror_observed_first(
    db_pool: asyncpg.Pool, redis_url: str, updates: int, deleted_first: bool
) -> None:
    async with harness(db_pool, redis_url) as h:
        rec, _ = h.state.create_customer({"given_name": "A"})
        for n in range(updates):
            h.state.update_customer(rec.id, {"family_name": f"F{n}"}, None, clear_null=True)
        h.state.delete_customer(rec.id, None)
        *changes, deleted = h.payloads()
        # Changes first: their fetch meets a 404, so the mirror observes the delete before its event arrives.
        for payload in [deleted, *changes] if deleted_first else [*changes, deleted]:
            await h.run(payload)
        row = await h.customer(rec.id)
        assert row is not None
        assert (row["deleted_at"], row["version"]) == (parse_time(deleted["created_at"]), updates)


async def test_the_history_of_a_deleted_customer_ends_when_square_says_it_was_deleted(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        rec, _ = h.state.create_customer({"given_name": "A"})
        [created] = h.payloads()
        assert await h.run(created) == "applied"  # the mirror holds version 0 live
        h.state.update_customer(rec.id, {"family_name": "B"}, None, clear_null=True)
        h.state.delete_customer(rec.id, None)
        _, updated, deleted = h.payloads()
        assert await h.run(updated) == "deleted"  # the fetch meets a 404: version 0 ends when that was observed
        assert await h.run(deleted) == "deleted"  # ... until Square's own time of the delete arrives
        stated = parse_time(deleted["created_at"])
        row = await h.customer(rec.id)
        assert row is not None and (row["deleted_at"], row["version"]) == (stated, 1)
        closed = await db_pool.fetch("SELECT version, valid_to, closed_reason FROM square.customer_versions_closed")
        assert [tuple(r) for r in closed] == [(0, stated, "deleted")]


@pytest.mark.parametrize("order", ["redirect_first", "created_first", "deleted_first"])
async def test_a_merge_leaves_the_same_lineage_and_tombstones_in_every_delivery_order(
    db_pool: asyncpg.Pool, redis_url: str, order: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        a, _ = h.state.create_customer({"given_name": "A"})
        b, _ = h.state.create_customer({"given_name": "B"})
        h.state.update_customer(a.id, {"family_name": "F"}, None, clear_null=True)
        changes = h.payloads()  # A created, B created, A updated (A's last version is 1)
        target = h.state.merge([a.id, b.id])
        merge_events = h.payloads()[len(changes):]  # the target's created, then each source's deleted
        if order == "redirect_first":  # A's fetch is redirected to the target: the merge as observed
            sequence = [changes[0], *merge_events, *changes[1:]]
        elif order == "created_first":
            sequence = [*merge_events, *changes]
        else:
            sequence = [*reversed(merge_events), *changes]
        for payload in sequence:
            await h.run(payload)
        # Each of the three events states the lineage; the row names the earliest (ties: the least event ID).
        merged_at, event_id = min((parse_time(p["created_at"]), p["event_id"]) for p in merge_events)
        lineage = await db_pool.fetch("SELECT from_customer_id, to_customer_id, merged_at, source, event_id"
                                      " FROM square.customer_merges ORDER BY 1")
        assert [tuple(r) for r in lineage] == sorted(
            (cid, target.id, merged_at, "webhook", event_id) for cid in (a.id, b.id))
        rows = {r["id"]: r for r in await db_pool.fetch("SELECT * FROM square.customers")}
        for cid, version in ((a.id, 1), (b.id, 0)):  # a merged-away customer was deleted when it was merged
            assert (rows[cid]["deleted_at"], rows[cid]["merged_into"], rows[cid]["version"]) == (
                merged_at, target.id, version)


@pytest.mark.parametrize("order", ["created_first", "deleted_first", "shuffled"])
async def test_merge_events_record_lineage_tombstone_sources_and_sync_the_target(
    db_pool: asyncpg.Pool, redis_url: str, order: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        a, _ = h.state.create_customer({"given_name": "A"})
        b, _ = h.state.create_customer({"given_name": "B"})
        first = h.payloads()
        for payload in first:
            assert await h.run(payload) == "applied"
        target = h.state.merge([a.id, b.id])
        merge_events = h.payloads()[len(first):]
        assert [p["type"] for p in merge_events] == ["customer.created", "customer.deleted", "customer.deleted"]
        if order == "deleted_first":
            merge_events.reverse()
        elif order == "shuffled":
            random.Random(7).shuffle(merge_events)
        outcomes = [await h.run(p) for p in merge_events]
        assert outcomes == ["merged"] * 3
        rows = {r["id"]: r for r in await db_pool.fetch("SELECT * FROM square.customers")}
        assert rows[a.id]["merged_into"] == target.id and rows[a.id]["deleted_at"] is not None
        assert rows[b.id]["merged_into"] == target.id
        assert rows[target.id]["deleted_at"] is None
        lineage = await db_pool.fetch("SELECT from_customer_id, to_customer_id, source FROM square.customer_merges")
        assert {(r["from_customer_id"], r["to_customer_id"], r["source"]) for r in lineage} == {
            (a.id, target.id, "webhook"), (b.id, target.id, "webhook")}
        resolved = await db_pool.fetchval(
            "SELECT current_customer_id FROM square.customer_id_resolution WHERE customer_id = $1", a.id)
        assert resolved == target.id


async def test_merge_learned_from_a_redirect_before_the_merge_events(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        a, _ = h.state.create_customer({"given_name": "A"})
        b, _ = h.state.create_customer({"given_name": "B"})
        c, _ = h.state.create_customer({"given_name": "C"})
        created = h.payloads()
        target = h.state.merge([a.id, b.id])
        # Creates of A and C processed together (one bulk call): A is NOT_FOUND in bulk, confirmed by
        # RetrieveCustomer, which redirects to the merge target.
        outcomes = await asyncio.gather(h.run(created[0]), h.run(created[2]))
        assert outcomes == ["merged", "applied"]
        row = await h.customer(a.id)
        assert row is not None and row["merged_into"] == target.id
        assert (await h.customer(target.id))["deleted_at"] is None  # type: ignore[index]
        assert await db_pool.fetchval(
            "SELECT source FROM square.customer_merges WHERE from_customer_id = $1", a.id) == "retrieve"
        for payload in h.payloads()[3:]:  # the merge events themselves: lineage already there, target synced
            assert await h.run(payload) == "merged"
        assert await db_pool.fetchval("SELECT count(*) FROM square.customer_merges") == 2
        del c


async def test_concurrent_events_are_coalesced_into_bulk_calls(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url, worker_fetch_window_ms=30.0) as h:  # a window wide enough for CI
        ids = []
        for n in range(30):
            rec, _ = h.state.create_customer({"given_name": f"C{n}"})
            ids.append(rec.id)
        for cid in ids:
            for n in range(3):
                h.state.update_customer(cid, {"family_name": f"F{n}"}, None, clear_null=True)
        payloads = h.payloads()
        assert len(payloads) == 120
        outcomes = await asyncio.gather(*(h.run(p) for p in payloads))
        assert set(outcomes) <= {"applied", "stale"}
        assert h.api_calls <= 12, h.api_calls  # a naive worker makes 120 calls, one per event
        versions = {r["id"]: r["version"] for r in await db_pool.fetch("SELECT id, version FROM square.customers")}
        assert versions == {cid: 3 for cid in ids}


async def test_a_job_run_twice_concurrently_writes_once(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        h.state.create_customer({"given_name": "A"})
        [payload] = h.payloads()
        outcomes = sorted(await asyncio.gather(h.run(payload), h.run(payload)))
        assert outcomes in (["applied", "applied"], ["applied", "duplicate"])
        event = await h.outcome(payload["event_id"])
        assert event is not None and event["outcome"] == "applied"
        assert h.api_calls == 1


async def test_other_event_types_are_ignored(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        payload = event_job(merchant_id=h.merchant_id, event_type="gift_card.customer_linked",
                            event_id="evt-gc-1", data={"id": "x", "object": {}})
        assert await h.run(payload) == "ignored"
        assert h.api_calls == 0


async def test_invalid_payload_fails_without_raising(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        assert await h.run({"v": 999, "merchant_id": "M"}) == "failed"


async def test_transient_errors_retry_then_fail_on_the_last_try_and_redrive_recovers(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    from arq.connections import create_pool

    from square_mirror.queue import deserialize_job, redis_settings, serialize_job
    from square_mirror.square_api import RetryPolicy
    from worker.commands.redrive import redrive

    async with harness(db_pool, redis_url) as h:
        h.context.client.retry = RetryPolicy(attempts=1)
        rec, _ = h.state.create_customer({"given_name": "A"})
        [payload] = h.payloads()
        await h.emu.set_faults(error_503_rate=1.0)
        with pytest.raises(Retry):
            await h.run(payload, job_try=1)
        event = await h.outcome(payload["event_id"])
        assert event is not None and event["processed_at"] is None and "503" in event["error"]
        assert await h.run(payload, job_try=5) == "failed"  # worker_max_tries=5: the last try
        event = await h.outcome(payload["event_id"])
        assert event is not None and event["outcome"] == "failed" and event["processed_at"] is not None
        await h.emu.set_faults(error_503_rate=0.0)
        arq_redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                      job_deserializer=deserialize_job)
        try:
            assert await redrive(db_pool, arq_redis) == (1, 0)
            assert await arq_redis.zcard("square-mirror:queue") == 1
            job = await arq_redis.get(f"arq:job:{payload['event_id']}")
            assert job is not None
        finally:
            await arq_redis.aclose()
        assert await h.run(payload) == "applied"
        assert (await h.customer(rec.id)) is not None


async def test_unauthorized_merchant_is_marked_deferred_and_recovers(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        rec, _ = h.state.create_customer({"given_name": "A"})
        [payload] = h.payloads()
        h.state.revoked = True
        with pytest.raises(Retry) as raised:
            await h.run(payload)
        assert (raised.value.defer_score or 0) >= 60_000  # a long deferral, not a terminal failure
        auth = await db_pool.fetchrow("SELECT auth_status, auth_error FROM square.merchants")
        assert auth is not None and auth["auth_status"] == "unauthorized"
        event = await h.outcome(payload["event_id"])
        assert event is not None and event["outcome"] == "unauthorized" and event["processed_at"] is None
        h.state.revoked = False
        assert await h.run(payload, job_try=2) == "applied"
        assert await db_pool.fetchval("SELECT auth_status FROM square.merchants") == "ok"
        del rec


async def test_redrive_finds_events_whose_job_was_lost(db_pool: asyncpg.Pool, redis_url: str) -> None:
    from arq.connections import create_pool

    from square_mirror.jobs import read_event_job
    from square_mirror.queue import deserialize_job, redis_settings, serialize_job
    from worker.commands.redrive import redrive
    from worker.events import inbox

    async with harness(db_pool, redis_url) as h:
        h.state.create_customer({"given_name": "A"})
        [payload] = h.payloads()
        job = read_event_job(payload)
        await inbox.record_many(db_pool, {(job.merchant_id, job.event_id): (job, payload)})  # a run that crashed
        await db_pool.execute("UPDATE square.webhook_events SET received_at = now() - interval '1 hour'")
        arq_redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                      job_deserializer=deserialize_job)
        try:
            assert await redrive(db_pool, arq_redis, failed=False, unfinished_older_than=600) == (1, 0)
            assert await redrive(db_pool, arq_redis, failed=False, unfinished_older_than=600) == (0, 1)  # queued
            assert await redrive(db_pool, arq_redis, failed=False, unfinished_older_than=7200) == (0, 0)
        finally:
            await arq_redis.aclose()
        assert await h.run(payload) == "applied"


async def test_a_poison_event_fails_alone_not_its_whole_inbox_batch(db_pool: asyncpg.Pool, redis_url: str) -> None:
    async with harness(db_pool, redis_url) as h:
        h.state.create_customer({"given_name": "A"})
        [good] = h.payloads()
        poison = event_job(merchant_id=h.merchant_id, event_id="evt-nul", customer_id="BAD\x00ID", version=1)
        outcomes = await asyncio.gather(h.run(good), h.run(poison))
        assert outcomes == ["applied", "failed"]


async def test_a_redirect_through_a_merge_chain_is_corrected_by_the_webhook_lineage(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        a, _ = h.state.create_customer({"given_name": "A"})
        b, _ = h.state.create_customer({"given_name": "B"})
        d, _ = h.state.create_customer({"given_name": "D"})
        c = h.state.merge([a.id, b.id])  # A, B -> C
        e = h.state.merge([c.id, d.id])  # C, D -> E
        payloads = h.payloads()
        # A's create, processed before any merge event: RetrieveCustomer(A) answers with E (the chain's end).
        assert await h.run(payloads[0]) == "merged"
        assert await db_pool.fetchval(
            "SELECT to_customer_id FROM square.customer_merges WHERE from_customer_id = $1", a.id) == e.id
        for payload in payloads[1:]:
            await h.run(payload)
        truth = await h.emu.truth()
        merges = {(r["from_customer_id"], r["to_customer_id"]) for r in await db_pool.fetch(
            "SELECT from_customer_id, to_customer_id FROM square.customer_merges")}
        assert merges == {(m["from_customer_id"], m["to_customer_id"]) for m in truth["merges"]}
        tombs = {r["id"]: r["merged_into"] for r in await db_pool.fetch(
            "SELECT id, merged_into FROM square.customers WHERE deleted_at IS NOT NULL")}
        assert tombs == {cid: t["merged_into"] for cid, t in truth["tombstones"].items()}
        assert await db_pool.fetchval(
            "SELECT current_customer_id FROM square.customer_id_resolution WHERE customer_id = $1", a.id) == e.id


async def test_metrics_count_events_by_type_and_outcome_and_fetch_batches(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    async with harness(db_pool, redis_url) as h:
        h.state.create_customer({"given_name": "A"})
        [payload] = h.payloads()
        payload["received_at"] = "2026-01-01T00:00:00.123456789Z"  # as the receiver stamps it
        applied = value("square_mirror_worker_events_total", type="customer.created", outcome="applied")
        duplicate = value("square_mirror_worker_events_total", type="customer.created", outcome="duplicate")
        batches = value("square_mirror_worker_fetch_batch_size_count")
        lags = value("square_mirror_worker_event_lag_seconds_count")
        await h.run(payload)
        await h.run(payload)
        assert value("square_mirror_worker_events_total", type="customer.created", outcome="applied") == applied + 1
        assert value("square_mirror_worker_events_total", type="customer.created",
                     outcome="duplicate") == duplicate + 1
        assert value("square_mirror_worker_fetch_batch_size_count") == batches + 1
        assert value("square_mirror_worker_event_lag_seconds_count") == lags + 1
        assert value("square_mirror_square_requests_total", endpoint="RetrieveCustomer", status="200") >= 1


async def test_the_merchant_row_is_written_once_per_worker_not_once_per_job(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with harness(db_pool, redis_url) as h:
        h.state.create_customer({"given_name": "A"})
        [payload] = h.payloads()
        assert await h.run(payload) == "applied"  # run with a fresh ctx, as arq runs every job
        assert h.context.ensured_merchants == {payload["merchant_id"]}


async def test_a_seller_whose_events_were_never_enabled_gets_its_events_pass_queued_once(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    from arq import create_pool

    from square_mirror.constants import LANES_QUEUE, RECONCILE_LANE_JOB
    from square_mirror.queue import deserialize_job, redis_settings, serialize_job

    arq_redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                  job_deserializer=deserialize_job)
    try:
        async with harness(db_pool, redis_url) as h:
            h.context = replace(h.context, arq_redis=arq_redis)  # what arq hands a running worker's jobs
            for name in ("A", "B"):
                h.state.create_customer({"given_name": name})
            outcomes = [await h.run(p) for p in h.payloads()]
            assert outcomes == ["applied", "applied"]
            jobs = await arq_redis.queued_jobs(queue_name=LANES_QUEUE)
            assert [(j.function, tuple(j.args), j.job_id) for j in jobs] == [
                (RECONCILE_LANE_JOB, ("events", h.merchant_id), f"reconcile:events:{h.merchant_id}")]
    finally:
        await arq_redis.aclose()
