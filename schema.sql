-- square-mirror analytics schema: the contract analysts query.
-- Re-applicable: running it twice is a no-op (square-mirror migrate). Every primary key starts with
-- merchant_id, so one database can mirror many sellers.

CREATE SCHEMA IF NOT EXISTS square;

CREATE TABLE IF NOT EXISTS square.schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per seller the mirror has seen; auth_status flips to 'unauthorized' on a 401/403 from Square.
CREATE TABLE IF NOT EXISTS square.merchants (
    merchant_id      text PRIMARY KEY,
    auth_status      text NOT NULL DEFAULT 'ok' CHECK (auth_status IN ('ok', 'unauthorized')),
    auth_error       text,
    auth_changed_at  timestamptz,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Live customers and tombstones. A deleted or merged-away customer keeps its row with deleted_at set
-- (and merged_into for merges); customers_current hides them.
-- version/updated_at/created_at are Square's; observed_at is when the mirror fetched this state from Square
-- (segment membership changes without a version bump, so equal versions are ordered by observed_at);
-- synced_at is when the row was last written.
CREATE TABLE IF NOT EXISTS square.customers (
    merchant_id         text NOT NULL,
    id                  text NOT NULL,
    version             bigint NOT NULL DEFAULT 0,
    created_at          timestamptz,
    updated_at          timestamptz,
    given_name          text,
    family_name         text,
    nickname            text,
    company_name        text,
    email_address       text,
    phone_number        text,
    birthday            text,          -- YYYY-MM-DD as Square returns it; 0000-MM-DD when the year is unknown
    reference_id        text,
    note                text,
    creation_source     text,
    email_unsubscribed  boolean,
    address             jsonb,
    tax_ids             jsonb,
    group_ids           text[] NOT NULL DEFAULT '{}',
    segment_ids         text[] NOT NULL DEFAULT '{}',
    raw                 jsonb,
    deleted_at          timestamptz,
    merged_into         text,
    observed_at         timestamptz NOT NULL DEFAULT now(),
    synced_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, id)
);
CREATE INDEX IF NOT EXISTS customers_email_idx ON square.customers (merchant_id, lower(email_address));
CREATE INDEX IF NOT EXISTS customers_phone_idx ON square.customers (merchant_id, phone_number);
CREATE INDEX IF NOT EXISTS customers_reference_idx ON square.customers (merchant_id, reference_id);
CREATE INDEX IF NOT EXISTS customers_updated_idx ON square.customers (merchant_id, updated_at);
CREATE INDEX IF NOT EXISTS customers_live_idx ON square.customers (merchant_id) WHERE deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS square.customer_groups (
    merchant_id  text NOT NULL,
    id           text NOT NULL,
    name         text,
    created_at   timestamptz,
    updated_at   timestamptz,
    raw          jsonb,
    deleted_at   timestamptz,
    synced_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, id)
);

CREATE TABLE IF NOT EXISTS square.customer_segments (
    merchant_id  text NOT NULL,
    id           text NOT NULL,
    name         text,
    created_at   timestamptz,
    updated_at   timestamptz,
    raw          jsonb,
    deleted_at   timestamptz,
    synced_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, id)
);

-- Current membership of live customers, rewritten from group_ids / segment_ids in the same transaction as
-- the customer row. since = when the mirror first saw this membership.
CREATE TABLE IF NOT EXISTS square.customer_group_members (
    merchant_id  text NOT NULL,
    group_id     text NOT NULL,
    customer_id  text NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, group_id, customer_id)
);
CREATE INDEX IF NOT EXISTS customer_group_members_customer_idx
    ON square.customer_group_members (merchant_id, customer_id);

CREATE TABLE IF NOT EXISTS square.customer_segment_members (
    merchant_id  text NOT NULL,
    segment_id   text NOT NULL,
    customer_id  text NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, segment_id, customer_id)
);
CREATE INDEX IF NOT EXISTS customer_segment_members_customer_idx
    ON square.customer_segment_members (merchant_id, customer_id);

-- Merge lineage: each merged-away ID points at the profile it became. source says how the mirror learned it:
-- 'webhook' (event_context.merge), 'retrieve' (RetrieveCustomer answered with another ID) or 'backfill'.
CREATE TABLE IF NOT EXISTS square.customer_merges (
    merchant_id       text NOT NULL,
    from_customer_id  text NOT NULL,
    to_customer_id    text NOT NULL,
    merged_at         timestamptz,
    source            text NOT NULL DEFAULT 'webhook',
    event_id          text,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, from_customer_id)
);
CREATE INDEX IF NOT EXISTS customer_merges_to_idx ON square.customer_merges (merchant_id, to_customer_id);

-- The inbox: idempotency authority and audit trail of every event the worker saw (webhook or Events API).
-- payload is the small PII-free job envelope, not Square's full body.
CREATE TABLE IF NOT EXISTS square.webhook_events (
    merchant_id   text NOT NULL,
    event_id      text NOT NULL,
    type          text NOT NULL,
    customer_id   text,
    version       bigint,
    created_at    timestamptz,
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz,
    outcome       text CHECK (outcome IN ('applied', 'stale', 'duplicate', 'deleted', 'merged', 'ignored',
                                          'failed', 'unauthorized')),
    error         text,
    attempts      integer NOT NULL DEFAULT 0,
    source        text NOT NULL DEFAULT 'webhook',
    payload       jsonb,
    PRIMARY KEY (merchant_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_events_customer_idx ON square.webhook_events (merchant_id, customer_id);
CREATE INDEX IF NOT EXISTS webhook_events_failed_idx ON square.webhook_events (merchant_id)
    WHERE outcome = 'failed';
CREATE INDEX IF NOT EXISTS webhook_events_created_idx ON square.webhook_events (merchant_id, created_at);

-- Backfill and reconciliation runs. status: running, succeeded, partial, failed, interrupted.
CREATE TABLE IF NOT EXISTS square.sync_runs (
    merchant_id  text NOT NULL,
    run_id       bigint GENERATED ALWAYS AS IDENTITY,
    kind         text NOT NULL,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    counts       jsonb NOT NULL DEFAULT '{}',
    checkpoint   jsonb NOT NULL DEFAULT '{}',
    error        text,
    PRIMARY KEY (merchant_id, run_id)
);
CREATE INDEX IF NOT EXISTS sync_runs_kind_idx ON square.sync_runs (merchant_id, kind, started_at DESC);

-- Watermarks and resumable state per reconcile lane.
CREATE TABLE IF NOT EXISTS square.sync_state (
    merchant_id  text NOT NULL,
    lane         text NOT NULL,
    watermark    timestamptz,
    state        jsonb NOT NULL DEFAULT '{}',
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, lane)
);

-- The staleness rule, in one place: may a customer snapshot observed at new_observed replace the stored row?
-- A tombstone is final; a higher version wins; an equal version wins only when observed later (segment
-- membership changes without a version bump). The upsert's ON CONFLICT guard calls exactly this.
CREATE OR REPLACE FUNCTION square.customer_snapshot_wins(
    stored_deleted_at timestamptz, stored_version bigint, stored_observed_at timestamptz,
    new_version bigint, new_observed_at timestamptz
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT stored_deleted_at IS NULL
       AND (new_version > stored_version
            OR (new_version = stored_version AND new_observed_at > stored_observed_at))
$$;

-- Views for analysts ---------------------------------------------------------------------------------

CREATE OR REPLACE VIEW square.customers_current AS
SELECT merchant_id, id, version, created_at, updated_at, given_name, family_name, nickname, company_name,
       email_address, phone_number, birthday, reference_id, note, creation_source, email_unsubscribed,
       address, tax_ids, group_ids, segment_ids, raw, observed_at, synced_at
FROM square.customers
WHERE deleted_at IS NULL;

-- Every customer ID the mirror knows (live, tombstoned or only named in a merge) and the live profile it
-- resolves to through merge chains of any length. current_customer_id is NULL when the chain ends in a
-- plain delete.
CREATE OR REPLACE VIEW square.customer_id_resolution AS
WITH RECURSIVE ids AS (
    SELECT merchant_id, id AS customer_id FROM square.customers
    UNION
    SELECT merchant_id, from_customer_id FROM square.customer_merges
), chain AS (
    SELECT i.merchant_id, i.customer_id, i.customer_id AS cursor_id, 0 AS depth
    FROM ids i
    UNION ALL
    SELECT c.merchant_id, c.customer_id, m.to_customer_id, c.depth + 1
    FROM chain c
    JOIN square.customer_merges m
      ON m.merchant_id = c.merchant_id AND m.from_customer_id = c.cursor_id
    WHERE c.depth < 64
), ends AS (
    SELECT DISTINCT ON (merchant_id, customer_id) merchant_id, customer_id, cursor_id, depth
    FROM chain
    ORDER BY merchant_id, customer_id, depth DESC
)
SELECT e.merchant_id, e.customer_id,
       CASE WHEN c.deleted_at IS NULL AND c.id IS NOT NULL THEN e.cursor_id END AS current_customer_id,
       e.depth AS merge_depth
FROM ends e
LEFT JOIN square.customers c ON c.merchant_id = e.merchant_id AND c.id = e.cursor_id;

CREATE OR REPLACE VIEW square.customer_group_memberships AS
SELECT m.merchant_id, m.group_id, g.name AS group_name, m.customer_id, m.since
FROM square.customer_group_members m
LEFT JOIN square.customer_groups g ON g.merchant_id = m.merchant_id AND g.id = m.group_id;

CREATE OR REPLACE VIEW square.customer_segment_memberships AS
SELECT m.merchant_id, m.segment_id, s.name AS segment_name, m.customer_id, m.since
FROM square.customer_segment_members m
LEFT JOIN square.customer_segments s ON s.merchant_id = m.merchant_id AND s.id = m.segment_id;

-- Read-only role for analytics tools, created when the migrating user may create roles.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'square_mirror_reader') THEN
        CREATE ROLE square_mirror_reader NOLOGIN;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'square_mirror_reader not created: the migrating user may not create roles';
    WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created concurrently by another migration
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'square_mirror_reader') THEN
        GRANT USAGE ON SCHEMA square TO square_mirror_reader;
        GRANT SELECT ON ALL TABLES IN SCHEMA square TO square_mirror_reader;
        ALTER DEFAULT PRIVILEGES IN SCHEMA square GRANT SELECT ON TABLES TO square_mirror_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'grants to square_mirror_reader skipped: insufficient privilege';
END
$$;

INSERT INTO square.schema_version (version) VALUES (1) ON CONFLICT (version) DO NOTHING;
