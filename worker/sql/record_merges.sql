-- Merge lineage: each merged-away ID points at the profile it became.
-- Square states lineage only in webhook event_context.merge; a RetrieveCustomer redirect ('retrieve') names the
-- END of a merge chain (A -> C -> E answers E for A), so a stated lineage replaces an inferred one, and
-- otherwise the first statement wins.
-- $1 merchant_id, $2 text[] from_customer_ids, $3 to_customer_id, $4 merged_at, $5 source, $6 event_id.
-- Returns the from IDs whose lineage was written (new, or corrected by a stated lineage).
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
WHERE m.source = 'retrieve' AND EXCLUDED.source = 'webhook' AND m.to_customer_id <> EXCLUDED.to_customer_id
RETURNING from_customer_id;
