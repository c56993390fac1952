-- The segments lane's diff: the complete member list of one segment as observed at $4 by SearchCustomers.
-- lock_segment_customers.sql runs first in the same transaction (a fresh snapshot after the row locks).
-- Only customers whose stored state is older than the observation are touched, so a fresher fetch always wins;
-- their segment_ids arrays and observed_at move with the membership (segment changes bump no version).
-- Hidden customers keep their memberships: a search cannot show them, so their absence says nothing
-- (square.customer_is_hidden, the absence rule); the lane reads them by ID instead.
-- $1 merchant_id, $2 segment_id, $3 text[] member customer ids, $4 observed_at.
WITH want AS (
    SELECT DISTINCT unnest($3::text[]) AS customer_id
), removed AS (
    DELETE FROM square.customer_segment_members m
    USING square.customers c
    WHERE m.merchant_id = $1 AND m.segment_id = $2
      AND c.merchant_id = m.merchant_id AND c.id = m.customer_id AND c.observed_at < $4
      AND NOT square.customer_is_hidden(c.given_name, c.family_name, c.company_name, c.email_address,
                                        c.phone_number, c.listed_at)
      AND m.customer_id NOT IN (SELECT customer_id FROM want)
    RETURNING m.customer_id
), added AS (
    INSERT INTO square.customer_segment_members (merchant_id, segment_id, customer_id, since)
    SELECT $1, $2, c.id, $4
    FROM want w
    JOIN square.customers c ON c.merchant_id = $1 AND c.id = w.customer_id
    WHERE c.deleted_at IS NULL AND c.observed_at < $4
    ON CONFLICT DO NOTHING
    RETURNING customer_id
), arrays_removed AS (
    UPDATE square.customers c
    SET segment_ids = array_remove(c.segment_ids, $2), observed_at = $4
    FROM removed r
    WHERE c.merchant_id = $1 AND c.id = r.customer_id
), arrays_added AS (
    UPDATE square.customers c
    SET segment_ids = array_append(c.segment_ids, $2), observed_at = $4
    FROM added a
    WHERE c.merchant_id = $1 AND c.id = a.customer_id AND NOT ($2 = ANY (c.segment_ids))
)
SELECT
    (SELECT count(*) FROM removed) AS removed,
    (SELECT count(*) FROM added) AS added,
    ARRAY(SELECT w.customer_id FROM want w
          WHERE NOT EXISTS (SELECT 1 FROM square.customers c WHERE c.merchant_id = $1 AND c.id = w.customer_id))
        AS unknown;
