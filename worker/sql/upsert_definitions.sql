-- Groups or segments (the table is chosen by the caller from a fixed list). No version exists for them, so
-- Square's updated_at orders writes; a deleted definition is never resurrected.
-- $1 merchant_id, $2 jsonb array of CustomerGroup / CustomerSegment objects.
INSERT INTO square.{table} AS t (merchant_id, id, name, created_at, updated_at, raw, synced_at)
SELECT $1, d->>'id', d->>'name', (d->>'created_at')::timestamptz, (d->>'updated_at')::timestamptz, d, now()
FROM jsonb_array_elements($2::jsonb) AS d
ORDER BY d->>'id'
ON CONFLICT (merchant_id, id) DO UPDATE SET
    name = EXCLUDED.name,
    created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at,
    raw = EXCLUDED.raw,
    synced_at = EXCLUDED.synced_at
WHERE t.deleted_at IS NULL
  AND (t.updated_at IS NULL OR EXCLUDED.updated_at IS NULL OR EXCLUDED.updated_at >= t.updated_at)
RETURNING t.id;
