-- Live customers that lists and searches cannot show (square.customer_is_hidden), not observed since $2:
-- the segments and groups lanes read them by ID. The predicate matches customers_hidden_idx exactly.
-- $1 merchant_id, $2 observed before.
SELECT id
FROM square.customers
WHERE merchant_id = $1 AND observed_at < $2
  AND deleted_at IS NULL
  AND square.customer_is_hidden(given_name, family_name, company_name, email_address, phone_number, listed_at)
ORDER BY id;
