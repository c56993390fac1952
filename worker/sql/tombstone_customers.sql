-- Tombstone customers (plain delete, or merged away when $4 is set); drop_memberships.sql follows.
-- A tombstone row is written even for an ID the mirror never saw, so a late create cannot resurrect it.
-- The mirror learns of a delete from the customer.deleted event, or first observes it (a 404, a redirect, a
-- backfill's inference). Whichever comes first, the tombstone must end the same:
-- - version: the highest known. The event states the version Square gave the deleted profile; an observation
--   knows only the last version the mirror held, or 0.
-- - deleted_at: the time Square stated ($6: this is the customer's own customer.deleted, dated by its created_at)
--   replaces a time the mirror observed; an observed time never replaces one already there. A customer merged
--   away by a stated merge is dated by that merge instead (customer_merges.merged_at, kept by
--   worker.store.apply_merge), so a stated plain delete leaves its time alone.
-- - merged_into: set when first learned; apply_merge corrects it from a stated lineage.
-- $1 merchant_id, $2 text[] ids, $3 deleted_at, $4 merged_into (NULL for a plain delete), $5 last version or NULL,
-- $6 whether $3 is the time Square stated for the delete of these customers.
WITH marked AS (
    INSERT INTO square.customers AS c (merchant_id, id, version, deleted_at, merged_into, observed_at, synced_at)
    SELECT $1, x, COALESCE($5::bigint, 0), $3, $4, now(), now()
    FROM unnest($2::text[]) AS x
    ORDER BY x
    ON CONFLICT (merchant_id, id) DO UPDATE SET
        deleted_at = CASE
            WHEN c.deleted_at IS NULL THEN EXCLUDED.deleted_at
            WHEN $6::boolean AND NOT EXISTS (
                SELECT 1 FROM square.customer_merges m
                WHERE m.merchant_id = c.merchant_id AND m.from_customer_id = c.id
                  AND m.source IN ('webhook', 'events_api')) THEN EXCLUDED.deleted_at
            ELSE c.deleted_at END,
        merged_into = COALESCE(c.merged_into, EXCLUDED.merged_into),
        version = GREATEST(c.version, COALESCE($5::bigint, c.version)),
        synced_at = now()
    WHERE c.deleted_at IS NULL OR (c.merged_into IS NULL AND EXCLUDED.merged_into IS NOT NULL)
       OR c.version < $5::bigint
       OR ($6::boolean AND c.deleted_at IS DISTINCT FROM EXCLUDED.deleted_at AND NOT EXISTS (
               SELECT 1 FROM square.customer_merges m
               WHERE m.merchant_id = c.merchant_id AND m.from_customer_id = c.id
                 AND m.source IN ('webhook', 'events_api')))
    RETURNING c.id
)
SELECT id FROM marked;
