-- The shared code's statements (square_mirror/*): the migration, searchable events, status, the convergence check.
-- In an installed wheel this folder also holds schema.sql and migrations/ (pyproject.toml): those are run whole
-- by square_mirror/db.py, not named queries.

-- name: migrate_lock --
-- Serialise concurrent migrate runs (session-level). $1 lock key.
SELECT pg_advisory_lock($1)

-- name: migrate_unlock --
-- Release the migrate lock. $1 lock key.
SELECT pg_advisory_unlock($1)

-- name: schema_exists --
-- Whether the database has the schema at all.
SELECT to_regclass('square.schema_version') IS NOT NULL

-- name: schema_version --
-- The schema version in place.
SELECT max(version) FROM square.schema_version

-- name: describe_schema --
-- Every table and view of schema square with its columns, for `migrate --print`.
SELECT c.relname, CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END AS kind,
       array_agg(a.attname ORDER BY a.attnum) AS columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'square' AND c.relkind IN ('r', 'v')
GROUP BY c.relname, c.relkind
ORDER BY kind, c.relname

-- name: publication_status --
-- The publication square_mirror (schema.sql, docs/how-to/stream-changes.md): whether it exists, how many tables of
-- schema square it publishes, and the ones it leaves out. pg_publication_tables expands FOR TABLES IN SCHEMA too.
SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'square_mirror') AS present,
       count(t.tablename) AS published,
       coalesce(array_agg(c.relname ORDER BY c.relname) FILTER (WHERE t.tablename IS NULL), '{}') AS missing
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_publication_tables t
       ON t.pubname = 'square_mirror' AND t.schemaname = n.nspname AND t.tablename = c.relname
WHERE n.nspname = 'square' AND c.relkind IN ('r', 'p')

-- name: record_events_enabled --
-- EnableEvents succeeded: the searchable period starts now unless it had started already and is not restarted.
-- $1 merchant_id, $2 now, $3 restarted. Returns events_searchable_since.
INSERT INTO square.merchants AS m (merchant_id, events_enabled_at, events_searchable_since, events_error)
VALUES ($1, $2, $2, NULL)
ON CONFLICT (merchant_id) DO UPDATE SET
    events_enabled_at = EXCLUDED.events_enabled_at,
    events_searchable_since = CASE WHEN $3 OR m.events_searchable_since IS NULL THEN EXCLUDED.events_enabled_at
                                   ELSE m.events_searchable_since END,
    events_error = NULL,
    updated_at = now()
RETURNING events_searchable_since

-- name: record_events_refusal --
-- The Events API refused the merchant's token: keep why. $1 merchant_id, $2 error.
INSERT INTO square.merchants AS m (merchant_id, events_error) VALUES ($1, $2)
ON CONFLICT (merchant_id) DO UPDATE SET events_error = EXCLUDED.events_error, updated_at = now()
WHERE m.events_error IS DISTINCT FROM EXCLUDED.events_error

-- name: events_settled --
-- Whether nothing but the events lane need try EnableEvents for the merchant: enabled before, or refused (a
-- token the Events API refuses is refused again until the configuration changes). $1 merchant_id.
SELECT events_enabled_at IS NOT NULL OR events_error IS NOT NULL FROM square.merchants WHERE merchant_id = $1

-- name: merchant_status --
-- One row per known merchant for `status`: auth, events, the newest processed event and its lag, counts.
WITH known AS (
    SELECT merchant_id FROM square.merchants
    UNION SELECT DISTINCT merchant_id FROM square.sync_runs
    UNION SELECT DISTINCT merchant_id FROM square.webhook_events
)
SELECT k.merchant_id,
       m.auth_status, m.auth_error, m.auth_changed_at,
       m.events_searchable_since, m.events_enabled_at, m.events_error,
       e.last_processed_at, e.last_event_created_at, e.last_lag_seconds,
       (SELECT count(*) FROM square.webhook_events f WHERE f.merchant_id = k.merchant_id AND f.outcome = 'failed')
           AS failed_events,
       (SELECT count(*) FROM square.customers c WHERE c.merchant_id = k.merchant_id AND c.deleted_at IS NULL)
           AS live_customers
FROM known k
LEFT JOIN square.merchants m ON m.merchant_id = k.merchant_id
LEFT JOIN LATERAL (
    SELECT w.processed_at AS last_processed_at, w.created_at AS last_event_created_at,
           extract(epoch FROM (w.processed_at - coalesce(w.created_at, w.received_at))) AS last_lag_seconds
    FROM square.webhook_events w
    WHERE w.merchant_id = k.merchant_id AND w.processed_at IS NOT NULL
    ORDER BY w.processed_at DESC
    LIMIT 1
) e ON true
ORDER BY k.merchant_id

-- name: latest_runs --
-- The newest run of each (merchant, kind), for `status`.
SELECT DISTINCT ON (merchant_id, kind) merchant_id, kind, run_id, status, started_at, finished_at, counts, error
FROM square.sync_runs
ORDER BY merchant_id, kind, started_at DESC

-- name: mirror_customers --
-- Every customer row of a merchant, tombstones included (the convergence check). $1 merchant_id.
SELECT * FROM square.customers WHERE merchant_id = $1

-- name: mirror_merges --
-- The merge lineage of a merchant (the convergence check). $1 merchant_id.
SELECT from_customer_id, to_customer_id FROM square.customer_merges WHERE merchant_id = $1

-- name: mirror_definitions --
-- Every group or segment of a merchant, tombstones included (the convergence check). $1 merchant_id.
SELECT id, name, deleted_at FROM square.{table} WHERE merchant_id = $1

-- name: mirror_memberships --
-- Every (group or segment, customer) membership of a merchant (the convergence check). $1 merchant_id.
SELECT {member_key} AS d, customer_id FROM square.{members} WHERE merchant_id = $1

-- name: mirror_custom_attribute_definitions --
-- The live custom attribute definitions of a merchant (the convergence check). $1 merchant_id.
SELECT key, name, schema, visibility, version FROM square.customer_custom_attribute_definitions
WHERE merchant_id = $1 AND deleted_at IS NULL

-- name: mirror_custom_attributes --
-- The live custom attribute values of a merchant's live customers (the convergence check). $1 merchant_id.
SELECT a.customer_id, a.key, a.value, a.version, a.visibility
FROM square.customer_custom_attributes a
JOIN square.customers c ON c.merchant_id = a.merchant_id AND c.id = a.customer_id AND c.deleted_at IS NULL
WHERE a.merchant_id = $1 AND a.deleted_at IS NULL

-- name: demo_outcomes --
-- The demo's summary: events by type and outcome. $1 merchant_id.
SELECT type, outcome, count(*) AS n FROM square.webhook_events WHERE merchant_id = $1 GROUP BY 1, 2 ORDER BY 1, 2

-- name: demo_custom_attributes --
-- The demo's summary: live custom attribute values by name and data type. $1 merchant_id.
SELECT coalesce(name, key) AS name, data_type, count(*) AS n
FROM square.customer_custom_attributes_typed WHERE merchant_id = $1 GROUP BY 1, 2 ORDER BY 1, 2

-- name: demo_custom_attribute_story --
-- The demo's summary: every state of one customer's value of one key, oldest first. $1 merchant_id,
-- $2 customer_id, $3 key.
SELECT version, value #>> '{}' AS value, valid_from, valid_to, closed_reason
FROM square.customer_custom_attribute_versions
WHERE merchant_id = $1 AND customer_id = $2 AND key = $3
ORDER BY valid_from, version

-- name: demo_lag --
-- The demo's summary: receipt-to-row lag of webhook deliveries, p50 and p99 in seconds. $1 merchant_id.
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50, percentile_cont(0.99) WITHIN GROUP (ORDER BY s) AS p99
FROM (SELECT extract(epoch FROM processed_at - received_at) AS s
      FROM square.webhook_events WHERE merchant_id = $1 AND processed_at IS NOT NULL AND source = 'webhook') x

-- name: lane_freshness --
-- Each seller's staleness bound per lane (square.sync_freshness) as of $1 (NULL: now), and how long it has been known.
SELECT f.merchant_id, f.lane, f.complete_as_of, f.target_seconds,
       extract(epoch FROM coalesce($1::timestamptz, now()) - f.complete_as_of)::double precision AS staleness_seconds,
       extract(epoch FROM coalesce($1::timestamptz, now()) - m.first_seen_at)::double precision AS known_for_seconds
FROM square.sync_freshness f
JOIN square.merchants m ON m.merchant_id = f.merchant_id
ORDER BY f.merchant_id, f.lane

-- name: lane_budget_status --
-- Each known seller's lane budget as the budget scheduler last planned it (square.lane_budgets); status reads it.
SELECT b.merchant_id, b.planned_at, b.share_rps, b.available_rps, b.need_rps, b.affordable, b.too_slow_lanes,
       b.deferred_lanes
FROM square.lane_budgets b JOIN square.merchants m USING (merchant_id) ORDER BY b.merchant_id
