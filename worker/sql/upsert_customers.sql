-- Version-guarded upsert of full customer snapshots; returns the rows written, with their group and segment IDs,
-- for replace_memberships.sql, which runs next in the same transaction (see worker.store.upsert_customers).
-- $1 merchant_id, $2 jsonb array of Square Customer objects (one per id), $3 observed_at (when fetched),
-- $4 listed: whether they came from a ListCustomers/SearchCustomers answer (sets listed_at once, see
-- square.customer_is_hidden).
-- The guard is square.customer_snapshot_wins (schema.sql): tombstones are final, older snapshots lose.
WITH input AS (
    SELECT c
    FROM jsonb_array_elements($2::jsonb) AS c
    ORDER BY c->>'id'  -- a stable lock order, so concurrent batches cannot deadlock
), up AS (
    INSERT INTO square.customers AS t (
        merchant_id, id, version, created_at, updated_at, given_name, family_name, nickname, company_name,
        email_address, phone_number, birthday, reference_id, note, creation_source, email_unsubscribed,
        address, tax_ids, group_ids, segment_ids, raw, observed_at, synced_at, listed_at)
    SELECT $1, c->>'id', COALESCE((c->>'version')::bigint, 0),
           (c->>'created_at')::timestamptz, (c->>'updated_at')::timestamptz,
           c->>'given_name', c->>'family_name', c->>'nickname', c->>'company_name',
           c->>'email_address', c->>'phone_number', c->>'birthday', c->>'reference_id', c->>'note',
           c->>'creation_source', (c->'preferences'->>'email_unsubscribed')::boolean,
           NULLIF(c->'address', 'null'::jsonb), NULLIF(c->'tax_ids', 'null'::jsonb),
           ARRAY(SELECT jsonb_array_elements_text(
               CASE WHEN jsonb_typeof(c->'group_ids') = 'array' THEN c->'group_ids' ELSE '[]'::jsonb END)),
           ARRAY(SELECT jsonb_array_elements_text(
               CASE WHEN jsonb_typeof(c->'segment_ids') = 'array' THEN c->'segment_ids' ELSE '[]'::jsonb END)),
           c, $3, now(), CASE WHEN $4::boolean THEN $3::timestamptz END
    FROM input
    ON CONFLICT (merchant_id, id) DO UPDATE SET
        version = EXCLUDED.version,
        created_at = EXCLUDED.created_at,
        updated_at = EXCLUDED.updated_at,
        given_name = EXCLUDED.given_name,
        family_name = EXCLUDED.family_name,
        nickname = EXCLUDED.nickname,
        company_name = EXCLUDED.company_name,
        email_address = EXCLUDED.email_address,
        phone_number = EXCLUDED.phone_number,
        birthday = EXCLUDED.birthday,
        reference_id = EXCLUDED.reference_id,
        note = EXCLUDED.note,
        creation_source = EXCLUDED.creation_source,
        email_unsubscribed = EXCLUDED.email_unsubscribed,
        address = EXCLUDED.address,
        tax_ids = EXCLUDED.tax_ids,
        group_ids = EXCLUDED.group_ids,
        segment_ids = EXCLUDED.segment_ids,
        raw = EXCLUDED.raw,
        observed_at = EXCLUDED.observed_at,
        synced_at = EXCLUDED.synced_at,
        listed_at = COALESCE(t.listed_at, EXCLUDED.listed_at)
    WHERE square.customer_snapshot_wins(t.deleted_at, t.version, t.observed_at, EXCLUDED.version, EXCLUDED.observed_at)
    -- xmax = 0 on a freshly inserted row; an updated row carries our lock (ON CONFLICT DO UPDATE), so xmax <> 0.
    RETURNING t.id, t.group_ids, t.segment_ids, t.xmax <> 0 AS updated
)
SELECT id, group_ids, segment_ids, updated FROM up;
