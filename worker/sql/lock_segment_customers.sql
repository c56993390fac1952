-- Before replace_segment_members.sql, in the same transaction: lock the customers whose membership of the
-- segment the diff may change (its members as the mirror holds them, and as observed), in ID order like the
-- upsert, so the diff's own snapshot starts after every concurrent write to them has committed or waits for it.
-- $1 merchant_id, $2 segment_id, $3 text[] member customer ids as observed.
SELECT c.id
FROM square.customers c
WHERE c.merchant_id = $1
  AND (c.id = ANY ($3::text[])
       OR c.id IN (SELECT m.customer_id FROM square.customer_segment_members m
                   WHERE m.merchant_id = $1 AND m.segment_id = $2))
ORDER BY c.id
FOR UPDATE OF c;
