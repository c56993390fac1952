-- Version 3 adds merchants.events_* (searchable events) and customers.listed_at (the absence rule,
-- square.customer_is_hidden). Rows written before it were
-- listed by the backfill that wrote them unless they hold no public field, so they start as listed: otherwise
-- every segments pass would read the whole directory by ID until the next sweep. Runs before schema.sql, in the
-- same transaction, only for a database at a version before 3.
ALTER TABLE square.merchants ADD COLUMN IF NOT EXISTS events_searchable_since timestamptz;
ALTER TABLE square.merchants ADD COLUMN IF NOT EXISTS events_enabled_at timestamptz;
ALTER TABLE square.merchants ADD COLUMN IF NOT EXISTS events_error text;
ALTER TABLE square.customers ADD COLUMN IF NOT EXISTS listed_at timestamptz;
UPDATE square.customers SET listed_at = observed_at
WHERE listed_at IS NULL AND deleted_at IS NULL
  AND coalesce(given_name, '') || coalesce(family_name, '') || coalesce(company_name, '')
      || coalesce(email_address, '') || coalesce(phone_number, '') <> '';
