-- Customer custom attributes and their definitions: worker/attribute_store.py. Every write is guarded by
-- square.custom_attribute_state_wins (schema.sql), so webhook jobs, backfill pages and reconcile lanes can write
-- in any order and any number of times.

-- name: upsert_custom_attributes --
-- Values (live states, or the last state of a deleted value with deleted = true) where they win the staleness
-- rule; returns the (customer_id, key) pairs written. $1 merchant_id, $2 jsonb array of objects with
-- customer_id, key, value, version, visibility, created_at, updated_at, deleted, deleted_at; one per pair.
WITH input AS (
    SELECT a
    FROM jsonb_array_elements($2::jsonb) AS a
    ORDER BY a->>'customer_id', a->>'key'  -- a stable lock order, so concurrent batches cannot deadlock
), up AS (
    INSERT INTO square.customer_custom_attributes AS t (
        merchant_id, customer_id, key, value, version, visibility, created_at, updated_at, deleted_at, synced_at)
    SELECT $1, a->>'customer_id', a->>'key', a->'value', COALESCE((a->>'version')::bigint, 0), a->>'visibility',
           (a->>'created_at')::timestamptz, (a->>'updated_at')::timestamptz,
           CASE WHEN (a->>'deleted')::boolean THEN COALESCE((a->>'deleted_at')::timestamptz, now()) END, now()
    FROM input
    ON CONFLICT (merchant_id, customer_id, key) DO UPDATE SET
        value = EXCLUDED.value,
        version = EXCLUDED.version,
        visibility = EXCLUDED.visibility,
        created_at = EXCLUDED.created_at,
        updated_at = EXCLUDED.updated_at,
        deleted_at = EXCLUDED.deleted_at,
        synced_at = EXCLUDED.synced_at
    WHERE square.custom_attribute_state_wins(
        t.created_at, t.version, t.deleted_at, t.synced_at,
        EXCLUDED.created_at, EXCLUDED.version, EXCLUDED.updated_at, EXCLUDED.deleted_at IS NOT NULL, now())
    RETURNING t.customer_id, t.key
)
SELECT customer_id, key FROM up

-- name: end_custom_attributes --
-- An observed absence: the live values of these customers that a complete read no longer showed (every value
-- when the customer is gone) end at $5, unless the mirror learned them after it looked ($6). $1 merchant_id,
-- $2 text[] customer_ids, $3/$4 parallel text[]: the (customer_id, key) pairs still there, $5 deleted_at,
-- $6 observed_at. Returns the (customer_id, key) pairs ended.
WITH kept AS (
    SELECT customer_id, key FROM unnest($3::text[], $4::text[]) AS k(customer_id, key)
), ended AS (
    UPDATE square.customer_custom_attributes t
    SET deleted_at = $5, synced_at = now()
    WHERE t.merchant_id = $1 AND t.customer_id = ANY($2::text[]) AND t.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM kept k WHERE k.customer_id = t.customer_id AND k.key = t.key)
      AND square.custom_attribute_state_wins(t.created_at, t.version, t.deleted_at, t.synced_at,
                                             NULL, NULL, NULL, true, $6)
    RETURNING t.customer_id, t.key
)
SELECT customer_id, key FROM ended

-- name: end_custom_attributes_of_keys --
-- A definition ended: Square deletes its values on every profile. $1 merchant_id, $2 text[] keys,
-- $3 observed_at. Returns the number of values ended.
WITH ended AS (
    UPDATE square.customer_custom_attributes t
    SET deleted_at = $3, synced_at = now()
    WHERE t.merchant_id = $1 AND t.key = ANY($2::text[]) AND t.deleted_at IS NULL
      AND square.custom_attribute_state_wins(t.created_at, t.version, t.deleted_at, t.synced_at,
                                             NULL, NULL, NULL, true, $3)
    RETURNING 1
)
SELECT count(*) FROM ended

-- name: upsert_custom_attribute_definitions --
-- Definitions (live, or the last state of a deleted one with deleted = true) where they win the staleness rule;
-- returns the keys written, with whether each is now deleted. $1 merchant_id, $2 jsonb array of objects with
-- key, name, description, schema, visibility, version, created_at, updated_at, deleted, deleted_at.
WITH input AS (
    SELECT d FROM jsonb_array_elements($2::jsonb) AS d ORDER BY d->>'key'
), up AS (
    INSERT INTO square.customer_custom_attribute_definitions AS t (
        merchant_id, key, name, description, schema, visibility, version, created_at, updated_at, deleted_at,
        synced_at)
    SELECT $1, d->>'key', d->>'name', d->>'description', NULLIF(d->'schema', 'null'::jsonb), d->>'visibility',
           COALESCE((d->>'version')::bigint, 0), (d->>'created_at')::timestamptz, (d->>'updated_at')::timestamptz,
           CASE WHEN (d->>'deleted')::boolean THEN COALESCE((d->>'deleted_at')::timestamptz, now()) END, now()
    FROM input
    ON CONFLICT (merchant_id, key) DO UPDATE SET
        name = EXCLUDED.name,
        description = EXCLUDED.description,
        schema = EXCLUDED.schema,
        visibility = EXCLUDED.visibility,
        version = EXCLUDED.version,
        created_at = EXCLUDED.created_at,
        updated_at = EXCLUDED.updated_at,
        deleted_at = EXCLUDED.deleted_at,
        synced_at = EXCLUDED.synced_at
    WHERE square.custom_attribute_state_wins(
        t.created_at, t.version, t.deleted_at, t.synced_at,
        EXCLUDED.created_at, EXCLUDED.version, EXCLUDED.updated_at, EXCLUDED.deleted_at IS NOT NULL, now())
    RETURNING t.key, t.visibility, t.deleted_at IS NOT NULL AS deleted
), visible AS (
    -- A value's visibility is a copy of its definition's: follow a change at once.
    UPDATE square.customer_custom_attributes a SET visibility = up.visibility
    FROM up
    WHERE a.merchant_id = $1 AND a.key = up.key AND NOT up.deleted AND a.deleted_at IS NULL
      AND a.visibility IS DISTINCT FROM up.visibility
)
SELECT key, deleted FROM up

-- name: end_custom_attribute_definitions --
-- A complete listing no longer shows these live definitions: they end at $3 (unless learned after the listing
-- began). $1 merchant_id, $2 text[] keys listed, $3 observed_at. Returns the keys ended.
WITH ended AS (
    UPDATE square.customer_custom_attribute_definitions t
    SET deleted_at = $3, synced_at = now()
    WHERE t.merchant_id = $1 AND t.deleted_at IS NULL AND NOT (t.key = ANY($2::text[]))
      AND square.custom_attribute_state_wins(t.created_at, t.version, t.deleted_at, t.synced_at,
                                             NULL, NULL, NULL, true, $3)
    RETURNING t.key
)
SELECT key FROM ended

-- name: custom_attribute_holders --
-- Every customer holding a live value, by ID, whatever the mirror knows of the customer (a backfill reads by ID
-- those its searches did not find). $1 merchant_id.
SELECT DISTINCT customer_id
FROM square.customer_custom_attributes
WHERE merchant_id = $1 AND deleted_at IS NULL
ORDER BY customer_id

-- name: known_custom_attribute_keys --
-- Which of these keys name a definition the mirror holds (live or not). $1 merchant_id, $2 text[] keys.
SELECT key FROM square.customer_custom_attribute_definitions WHERE merchant_id = $1 AND key = ANY($2::text[])
