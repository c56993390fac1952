-- Merge lineage: each merged-away ID points at the profile it became.
-- Square states lineage only in event_context.merge, on the target's customer.created and on each source's
-- customer.deleted ('webhook', or 'events_api' when replayed from SearchEvents): all of one merge's events
-- state the same lineage, each with its own event ID and created_at. A RetrieveCustomer redirect ('retrieve')
-- only infers it, at a time the mirror observed, and names the END of a merge chain (A -> C -> E answers E for A).
-- So that every delivery order records the same row:
-- - a stated lineage replaces an inferred one, every column (to_customer_id, merged_at, source, event_id);
-- - between stated ones, the earliest event wins: the least (merged_at, event_id), a webhook before the same
--   event replayed from the Events API; so the row does not name whichever of the merge's events came first;
-- - an inferred lineage never replaces anything: the first observation stays until a stated one arrives.
-- worker.store.apply_merge then dates the merged-away tombstones by merged_at.
-- $1 merchant_id, $2 text[] from_customer_ids, $3 to_customer_id, $4 merged_at, $5 source, $6 event_id.
-- Returns the from IDs whose lineage was written (new, or replaced by a stated lineage).
INSERT INTO square.customer_merges AS m (merchant_id, from_customer_id, to_customer_id, merged_at, source, event_id)
SELECT $1, f, $3, $4, $5, $6
FROM unnest($2::text[]) AS f
WHERE f <> $3
ORDER BY f
ON CONFLICT (merchant_id, from_customer_id) DO UPDATE SET
    to_customer_id = EXCLUDED.to_customer_id,
    merged_at = EXCLUDED.merged_at,
    source = EXCLUDED.source,
    event_id = EXCLUDED.event_id,
    recorded_at = now()
WHERE EXCLUDED.source IN ('webhook', 'events_api')
  AND (m.source NOT IN ('webhook', 'events_api')
       OR (coalesce(EXCLUDED.merged_at, 'infinity'), coalesce(EXCLUDED.event_id, ''), EXCLUDED.source <> 'webhook')
          < (coalesce(m.merged_at, 'infinity'), coalesce(m.event_id, ''), m.source <> 'webhook'))
RETURNING from_customer_id;
