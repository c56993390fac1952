-- The reconcile lanes' and the backfill's reads (worker/reconcile/lanes.py, worker/backfill/phases.py).

-- name: listable_members --
-- Stored members of one group or segment a search answer can speak for: live and not hidden
-- (square.customer_is_hidden, the absence rule). $1 merchant_id, $2 group or segment ID.
SELECT m.customer_id FROM square.{members} m JOIN square.customers c
    ON c.merchant_id = m.merchant_id AND c.id = m.customer_id AND c.deleted_at IS NULL
    AND NOT square.customer_is_hidden(c.given_name, c.family_name, c.company_name, c.email_address,
                                      c.phone_number, c.listed_at)
WHERE m.merchant_id = $1 AND m.{member_key} = $2

-- name: missing_from_search --
-- Webhook events of the window that SearchEvents did not return. $1 merchant_id, $2 text[] event types,
-- $3 window start, $4 window end, $5 text[] event IDs the search returned.
SELECT count(*) FROM square.webhook_events
WHERE merchant_id = $1 AND source = 'webhook' AND type = ANY ($2::text[])
  AND created_at >= $3 AND created_at < $4 AND NOT (event_id = ANY ($5::text[]))

-- name: unobserved_live_customers --
-- The backfill's inference: live customers the listing did not observe, in ID pages. $1 merchant_id,
-- $2 listing started at, $3 after this ID, $4 limit.
SELECT id FROM square.customers WHERE merchant_id = $1 AND deleted_at IS NULL AND observed_at < $2
    AND id > $3 ORDER BY id LIMIT $4


-- name: lane_costs --
-- The measured cost of each known seller's last succeeded run of each of these kinds: its counts and seconds.
-- $1 text[] kinds.
SELECT m.merchant_id, k.kind, r.counts, r.seconds
FROM square.merchants m
CROSS JOIN unnest($1::text[]) AS k (kind)
CROSS JOIN LATERAL (
    SELECT r.counts, extract(epoch FROM r.finished_at - r.started_at)::double precision AS seconds
    FROM square.sync_runs r
    WHERE r.merchant_id = m.merchant_id AND r.kind = k.kind AND r.status = 'succeeded' AND r.finished_at IS NOT NULL
    ORDER BY r.started_at DESC LIMIT 1
) AS r

-- name: record_lane_budgets --
-- Each seller's lane budget this minute (worker/reconcile/scheduler.py), one row per seller; returns the sellers
-- whose affordability changed (a seller seen for the first time: when it cannot afford its lanes).
-- $1 text[] merchant_id, $2 float8[] share_rps, $3 float8[] available_rps, $4 float8[] need_rps, $5 bool[]
-- affordable, $6 text[] too slow lanes, $7 text[] deferred lanes, $8 text[] lane costs (each a JSON text: arrays
-- of arrays cannot be ragged).
WITH input AS (
    SELECT merchant_id, share_rps, available_rps, need_rps, affordable, too_slow::jsonb AS too_slow,
           deferred::jsonb AS deferred, costs::jsonb AS costs
    FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[], $5::bool[], $6::text[], $7::text[], $8::text[])
        AS i (merchant_id, share_rps, available_rps, need_rps, affordable, too_slow, deferred, costs)
), previous AS (
    SELECT b.merchant_id, b.affordable FROM square.lane_budgets b JOIN input USING (merchant_id)
), upserted AS (
    INSERT INTO square.lane_budgets AS b (merchant_id, planned_at, share_rps, available_rps, need_rps, affordable,
                                          too_slow_lanes, deferred_lanes, lane_costs)
    SELECT merchant_id, now(), share_rps, available_rps, need_rps, affordable,
           ARRAY(SELECT jsonb_array_elements_text(too_slow)), ARRAY(SELECT jsonb_array_elements_text(deferred)), costs
    FROM input
    ON CONFLICT (merchant_id) DO UPDATE SET planned_at = excluded.planned_at, share_rps = excluded.share_rps,
        available_rps = excluded.available_rps, need_rps = excluded.need_rps, affordable = excluded.affordable,
        too_slow_lanes = excluded.too_slow_lanes, deferred_lanes = excluded.deferred_lanes,
        lane_costs = excluded.lane_costs
    RETURNING b.merchant_id, b.affordable
)
SELECT u.merchant_id FROM upserted u LEFT JOIN previous p USING (merchant_id)
WHERE u.affordable IS DISTINCT FROM COALESCE(p.affordable, true)

-- name: lane_budget_ratios --
-- Each known seller's lane need over its share, for the gauge (a share of 0 or NULL: unlimited, no ratio).
SELECT b.merchant_id, b.need_rps / b.share_rps AS ratio FROM square.lane_budgets b
JOIN square.merchants m USING (merchant_id) WHERE b.share_rps > 0
