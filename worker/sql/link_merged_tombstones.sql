-- Merged-away tombstones follow their stated lineage, which record_merges.sql just wrote or confirmed in the same
-- transaction: merged_into = to_customer_id (a redirect may have named the end of a merge chain instead) and
-- deleted_at = merged_at (a customer merged away was deleted by its merge: one time for every source, the
-- earliest any of the merge's events states, instead of the time of whichever event or redirect came first).
-- The rows are already locked by tombstone_customers.sql, in ID order.
-- $1 merchant_id, $2 text[] from_customer_ids. Returns the IDs changed.
UPDATE square.customers c
SET merged_into = m.to_customer_id, deleted_at = m.merged_at, synced_at = now()
FROM square.customer_merges m
WHERE m.merchant_id = $1 AND m.from_customer_id = ANY ($2::text[]) AND m.source IN ('webhook', 'events_api')
  AND m.merged_at IS NOT NULL
  AND c.merchant_id = m.merchant_id AND c.id = m.from_customer_id AND c.deleted_at IS NOT NULL
  AND (c.merged_into IS DISTINCT FROM m.to_customer_id OR c.deleted_at <> m.merged_at)
RETURNING c.id;
