-- Memberships of customers tombstone_customers.sql just marked, next in the same transaction: a statement of
-- its own so that it sees memberships a concurrent writer committed while the tombstone waited for its row
-- lock (see replace_memberships.sql). $1 merchant_id, $2 text[] customer ids.
WITH drop_groups AS (
    DELETE FROM square.customer_group_members WHERE merchant_id = $1 AND customer_id = ANY ($2::text[])
)
DELETE FROM square.customer_segment_members WHERE merchant_id = $1 AND customer_id = ANY ($2::text[]);
