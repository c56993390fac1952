-- The `square-mirror sellers` commands and the sellers part of `status` (worker/commands/sellers.py,
-- worker/purge.py, square_mirror/commands/status.py). No token is ever selected here.

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

-- name: seller_status_counts --
-- OAuth sellers per status, for `status`.
SELECT status, count(*) AS sellers FROM square_private.seller_credentials GROUP BY status ORDER BY status

-- name: sellers_needing_attention --
-- OAuth sellers an operator must act on: refresh failing, refresh token refused (connect again), access revoked.
SELECT merchant_id, status, last_error, status_changed_at, refresh_failures, next_refresh_at,
       access_token_expires_at
FROM square_private.seller_credentials
WHERE status IN ('refresh_failed', 'reauthorize', 'revoked')
ORDER BY merchant_id

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

-- name: create_purge_batch --
-- A function of this session only (pg_temp): delete up to $4 rows of merchant $3 from table $1.$2 and count
-- them. The table comes from seller_tables; format's %I quotes it. Rows are picked by (tableoid, ctid), so a
-- batch is one short statement and no lock is held between batches.
CREATE OR REPLACE FUNCTION pg_temp.purge_seller_batch(p_schema text, p_table text, p_merchant_id text,
                                                      p_limit integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    deleted bigint;
BEGIN
    EXECUTE format(
        'WITH doomed AS (SELECT tableoid, ctid FROM %I.%I WHERE merchant_id = $1 LIMIT $2), '
        'gone AS (DELETE FROM %I.%I t USING doomed d '
        'WHERE t.tableoid = d.tableoid AND t.ctid = d.ctid AND t.merchant_id = $1 RETURNING 1) '
        'SELECT count(*) FROM gone', p_schema, p_table, p_schema, p_table)
    INTO deleted USING p_merchant_id, p_limit;
    RETURN deleted;
END
$$

-- name: purge_seller_batch --
-- One batch of a purge (create_purge_batch first, on the same connection). $1 schema, $2 table, $3 merchant_id,
-- $4 rows at most. Returns the rows deleted.
SELECT pg_temp.purge_seller_batch($1, $2, $3, $4)
