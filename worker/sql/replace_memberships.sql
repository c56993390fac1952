-- Group and segment membership of the customers upsert_customers.sql just wrote, next in the same transaction.
-- A statement of its own on purpose: it starts after the upsert holds those customers' row locks, so its
-- snapshot holds every membership that a writer holding them before had committed. Inside the upsert's own
-- statement, the snapshot predates the lock wait, and a concurrent writer's memberships (a backfill page and a
-- webhook fetch of the same customer) survived the replace.
-- $1 merchant_id; $2 text[] IDs of the rows that existed before (updated, not inserted).
-- (customer_id, group_id) pairs: ($3, $4) of those rows, ($5, $6) of new rows; (customer_id, segment_id) pairs:
-- ($7, $8) and ($9, $10) likewise; $11 observed_at (the memberships' since).
-- A new row has no memberships to drop (memberships are only ever written for existing customer rows, and
-- customer rows are never deleted), so its are inserted without ON CONFLICT, which saves the unique pre-check
-- (about 5% of a backfill's Postgres CPU), and a batch of new customers skips the deletes entirely: the
-- cardinality test is a one-time filter evaluated before any scan (without it, the deletes scanned the
-- membership tables while their statistics still said "empty").
WITH drop_groups AS (
    DELETE FROM square.customer_group_members m
    WHERE cardinality($2::text[]) > 0 AND m.merchant_id = $1 AND m.customer_id = ANY ($2::text[])
      AND (m.customer_id, m.group_id) NOT IN (SELECT * FROM unnest($3::text[], $4::text[]))
), add_groups AS (
    INSERT INTO square.customer_group_members (merchant_id, group_id, customer_id, since)
    SELECT $1, k.group_id, k.customer_id, $11 FROM unnest($3::text[], $4::text[]) AS k(customer_id, group_id)
    ON CONFLICT DO NOTHING
), add_groups_new AS (
    INSERT INTO square.customer_group_members (merchant_id, group_id, customer_id, since)
    SELECT $1, k.group_id, k.customer_id, $11 FROM unnest($5::text[], $6::text[]) AS k(customer_id, group_id)
), drop_segments AS (
    DELETE FROM square.customer_segment_members m
    WHERE cardinality($2::text[]) > 0 AND m.merchant_id = $1 AND m.customer_id = ANY ($2::text[])
      AND (m.customer_id, m.segment_id) NOT IN (SELECT * FROM unnest($7::text[], $8::text[]))
), add_segments AS (
    INSERT INTO square.customer_segment_members (merchant_id, segment_id, customer_id, since)
    SELECT $1, k.segment_id, k.customer_id, $11 FROM unnest($7::text[], $8::text[]) AS k(customer_id, segment_id)
    ON CONFLICT DO NOTHING
)
INSERT INTO square.customer_segment_members (merchant_id, segment_id, customer_id, since)
SELECT $1, k.segment_id, k.customer_id, $11 FROM unnest($9::text[], $10::text[]) AS k(customer_id, segment_id);
