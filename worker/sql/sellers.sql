-- The `square-mirror sellers` commands (worker/commands/sellers.py, worker/purge.py). No token is ever selected
-- here.

-- name: seller_sync_state --
-- Per seller (the merchants $1 named by configuration, those the mirror knows, every OAuth seller): its latest
-- succeeded backfill or lane run, and when its last webhook event was processed.
WITH known AS (
    SELECT unnest($1::text[]) AS merchant_id
    UNION SELECT merchant_id FROM square.merchants
    UNION SELECT merchant_id FROM square_private.seller_credentials
)
SELECT k.merchant_id, r.kind AS last_sync_kind, r.finished_at AS last_sync_at, e.last_event_at,
       extract(epoch FROM now() - e.last_event_at) AS lag_seconds
FROM known k
LEFT JOIN LATERAL (
    SELECT s.kind, s.finished_at FROM square.sync_runs s
    WHERE s.merchant_id = k.merchant_id AND s.status = 'succeeded'
    ORDER BY s.finished_at DESC NULLS LAST LIMIT 1
) r ON true
LEFT JOIN LATERAL (
    SELECT max(w.processed_at) AS last_event_at FROM square.webhook_events w WHERE w.merchant_id = k.merchant_id
) e ON true
ORDER BY k.merchant_id

-- name: seller_is_known --
-- Whether the mirror knows this merchant (its row in square.merchants, or OAuth credentials). $1 merchant_id.
SELECT EXISTS (SELECT 1 FROM square.merchants WHERE merchant_id = $1)
    OR EXISTS (SELECT 1 FROM square_private.seller_credentials WHERE merchant_id = $1)

-- name: seller_tables --
-- Every table of schemas square and square_private with a merchant_id column, read from the catalog so that a
-- table added later is purged too. Partitions are left out: deleting through their parent reaches them.
SELECT n.nspname AS schema_name, c.relname AS table_name
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'merchant_id' AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname IN ('square', 'square_private') AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY n.nspname, c.relname

-- name: purge_seller_batch --
-- One batch of a purge: up to $4 rows of merchant $3 from table $1.$2 (square_private.purge_seller_batch in
-- schema.sql). Returns the rows deleted.
SELECT square_private.purge_seller_batch($1, $2, $3, $4)
