-- Tombstone customers (plain delete, or merged away when $4 is set); drop_memberships.sql follows.
-- A tombstone row is written even for an ID the mirror never saw, so a late create cannot resurrect it.
-- An existing tombstone only learns a merge target or a higher version (the one Square gave the deleted
-- profile), never a new deleted_at.
-- $1 merchant_id, $2 text[] ids, $3 deleted_at, $4 merged_into (NULL for a plain delete), $5 last version or NULL.
WITH marked AS (
    INSERT INTO square.customers AS c (merchant_id, id, version, deleted_at, merged_into, observed_at, synced_at)
    SELECT $1, x, COALESCE($5::bigint, 0), $3, $4, now(), now()
    FROM unnest($2::text[]) AS x
    ORDER BY x
    ON CONFLICT (merchant_id, id) DO UPDATE SET
        deleted_at = COALESCE(c.deleted_at, EXCLUDED.deleted_at),
        merged_into = COALESCE(c.merged_into, EXCLUDED.merged_into),
        version = GREATEST(c.version, COALESCE($5::bigint, c.version)),
        synced_at = now()
    WHERE c.deleted_at IS NULL OR (c.merged_into IS NULL AND EXCLUDED.merged_into IS NOT NULL)
       OR c.version < $5::bigint
    RETURNING c.id
)
SELECT id FROM marked;
