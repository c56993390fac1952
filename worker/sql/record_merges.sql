-- Merge lineage: each merged-away ID points at the profile it became. The first statement of a lineage wins.
-- $1 merchant_id, $2 text[] from_customer_ids, $3 to_customer_id, $4 merged_at, $5 source, $6 event_id.
INSERT INTO square.customer_merges (merchant_id, from_customer_id, to_customer_id, merged_at, source, event_id)
SELECT $1, f, $3, $4, $5, $6
FROM unnest($2::text[]) AS f
WHERE f <> $3
ORDER BY f
ON CONFLICT (merchant_id, from_customer_id) DO NOTHING
RETURNING from_customer_id;
