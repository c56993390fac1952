-- Customers a SearchCustomers answer named (segment or group members) are listed: set listed_at once.
-- Only rows not yet marked are touched, so a pass over unchanged members writes nothing.
-- $1 merchant_id, $2 text[] customer ids, $3 when the answer was requested.
UPDATE square.customers
SET listed_at = $3
WHERE merchant_id = $1 AND id = ANY ($2::text[]) AND listed_at IS NULL AND deleted_at IS NULL;
