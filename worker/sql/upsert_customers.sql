-- Version-guarded upsert of full customer snapshots, with their group and segment membership, in one statement.
-- $1 merchant_id, $2 jsonb array of Square Customer objects (one per id), $3 observed_at (when fetched).
-- The guard is square.customer_snapshot_wins (schema.sql): tombstones are final, older snapshots lose.
WITH input AS (
    SELECT c
    FROM jsonb_array_elements($2::jsonb) AS c
    ORDER BY c->>'id'  -- a stable lock order, so concurrent batches cannot deadlock
), up AS (
    INSERT INTO square.customers AS t (
        merchant_id, id, version, created_at, updated_at, given_name, family_name, nickname, company_name,
        email_address, phone_number, birthday, reference_id, note, creation_source, email_unsubscribed,
        address, tax_ids, group_ids, segment_ids, raw, observed_at, synced_at)
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
           c, $3, now()
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
        synced_at = EXCLUDED.synced_at
    WHERE square.customer_snapshot_wins(t.deleted_at, t.version, t.observed_at, EXCLUDED.version, EXCLUDED.observed_at)
    -- xmax = 0 on a freshly inserted row; an updated row carries our lock (ON CONFLICT DO UPDATE), so xmax <> 0.
    RETURNING t.id, t.group_ids, t.segment_ids, t.xmax <> 0 AS updated
), updated AS (
    -- The IDs of rows that existed before (updated, not inserted) as one array: an index condition on
    -- (merchant_id, customer_id) for the deletes below, so they touch this batch's memberships only. A freshly
    -- inserted row has no memberships to drop (memberships are only ever written for existing customer rows,
    -- and customer rows are never deleted), so a batch of new customers (a backfill into an empty mirror)
    -- skips the deletes entirely: the cardinality test is a one-time filter evaluated before any scan. Without
    -- it, the deletes scanned the membership tables with a 500-element ANY filter while their statistics still
    -- said "empty", about a quarter of the backfill's Postgres CPU. For the same reason a new row's memberships
    -- are inserted without ON CONFLICT, which saves its unique pre-check (about 5% of a backfill's Postgres CPU).
    SELECT ARRAY(SELECT id FROM up WHERE updated) AS ids
), drop_groups AS (
    DELETE FROM square.customer_group_members m
    USING up
    WHERE (SELECT cardinality(ids) FROM updated) > 0
      AND m.merchant_id = $1 AND m.customer_id = ANY ((SELECT ids FROM updated)::text[])
      AND up.updated AND m.customer_id = up.id AND NOT (m.group_id = ANY (up.group_ids))
), add_groups AS (
    INSERT INTO square.customer_group_members (merchant_id, group_id, customer_id, since)
    SELECT $1, g, up.id, $3 FROM up, unnest(up.group_ids) AS g WHERE up.updated
    ON CONFLICT DO NOTHING
), add_groups_new AS (
    INSERT INTO square.customer_group_members (merchant_id, group_id, customer_id, since)
    SELECT $1, g, up.id, $3 FROM up, unnest(up.group_ids) AS g WHERE NOT up.updated
), drop_segments AS (
    DELETE FROM square.customer_segment_members m
    USING up
    WHERE (SELECT cardinality(ids) FROM updated) > 0
      AND m.merchant_id = $1 AND m.customer_id = ANY ((SELECT ids FROM updated)::text[])
      AND up.updated AND m.customer_id = up.id AND NOT (m.segment_id = ANY (up.segment_ids))
), add_segments AS (
    INSERT INTO square.customer_segment_members (merchant_id, segment_id, customer_id, since)
    SELECT $1, s, up.id, $3 FROM up, unnest(up.segment_ids) AS s WHERE up.updated
    ON CONFLICT DO NOTHING
), add_segments_new AS (
    INSERT INTO square.customer_segment_members (merchant_id, segment_id, customer_id, since)
    SELECT $1, s, up.id, $3 FROM up, unnest(up.segment_ids) AS s WHERE NOT up.updated
)
SELECT id FROM up;
