-- square-mirror analytics schema: the contract analysts query.
-- Re-applicable: running it twice is a no-op (square-mirror migrate). Every primary key starts with
-- merchant_id, so one database can mirror many sellers. This file is the current schema; what an older
-- database needs first (renames, new columns, data moves) is in migrations/, which migrate runs before it.

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
    updated_at       timestamptz NOT NULL DEFAULT now(),
    events_searchable_since  timestamptz,
    events_enabled_at        timestamptz,
    events_error             text
);
-- Square's Events API finds only events that occurred while events were enabled (all are disabled by default,
-- and a disabled period stays unsearchable after re-enabling). events_searchable_since: when the current enabled
-- period began, as far as the mirror knows (set by its first successful EnableEvents, reset when the events lane
-- finds events missing); events_enabled_at: the last successful EnableEvents; events_error: why the Events API
-- last refused this seller (it takes personal access tokens only), NULL once it answers again.

-- Live customers and tombstones. A deleted or merged-away customer keeps its row with deleted_at set
-- (and merged_into for merges); customers_current hides them. A tombstone's deleted_at is the time Square stated
-- (the customer.deleted event's created_at; for a merged-away customer its merge's merged_at), or, until an event
-- says it, when the mirror observed the delete; its version is the one Square gave the deleted profile once the
-- event arrives (worker/sql/tombstone_customers.sql), so it does not depend on the delivery order.
-- version/updated_at/created_at are Square's; observed_at is when the mirror fetched this state from Square
-- (segment membership changes without a version bump, so equal versions are ordered by observed_at);
-- synced_at is when the row was last written; listed_at is when a ListCustomers/SearchCustomers answer first
-- showed this profile (NULL: never), one half of the absence rule (square.customer_is_hidden).
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
    listed_at           timestamptz,
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
-- stated by the merge's events ('webhook', or 'events_api' replayed from SearchEvents; merged_at and event_id
-- are those of the earliest of them, whichever arrived first) or inferred ('retrieve': RetrieveCustomer answered
-- with another ID, merged_at when the mirror observed it) until a stated one replaces it (worker/sql/record_merges.sql).
CREATE TABLE IF NOT EXISTS square.customer_merges (
    merchant_id       text NOT NULL,
    from_customer_id  text NOT NULL,
    to_customer_id    text NOT NULL,
    merged_at         timestamptz,
    source            text NOT NULL DEFAULT 'webhook'
                      CONSTRAINT customer_merges_source_check CHECK (source IN ('webhook', 'events_api', 'retrieve')),
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

-- The budget scheduler's view of each seller (LANE_SCHEDULER=budget, worker/reconcile/scheduler.py), as of its last
-- minute: the lanes' share of the seller's rate (NULL: unlimited), what events and backfills left of it, what the
-- lanes need to run at their targets (their measured costs per target interval), whether that fits, the lanes whose
-- pass lasts longer than their target, the due lanes left for a later minute, and each lane's measured cost.
CREATE TABLE IF NOT EXISTS square.lane_budgets (
    merchant_id     text PRIMARY KEY,
    planned_at      timestamptz NOT NULL,
    share_rps       double precision,
    available_rps   double precision,
    need_rps        double precision NOT NULL,
    affordable      boolean NOT NULL,
    too_slow_lanes  text[] NOT NULL DEFAULT '{}',
    deferred_lanes  text[] NOT NULL DEFAULT '{}',
    lane_costs      jsonb NOT NULL DEFAULT '{}'
);

-- Staleness bounds, one row per known seller and reconcile lane (docs/explanation/reconciliation.md#staleness-bounds).
-- complete_as_of: when the last complete pass of the lane began; everything the lane heals that happened before it
-- is in the mirror, so now() - complete_as_of bounds how old that data can be. NULL: never complete. A pass is a
-- succeeded run of the lane's kind, or of a backfill or sweep for the lanes a full listing covers (all but events;
-- square_mirror/constants.py FULL_PASS_LANES); a pass continued over several runs (time slices, retries: each names
-- the run it resumed in checkpoint.resumed_from) began when the first of them did. Failed, partial and interrupted
-- runs complete nothing. target_seconds is the lane's schedule (square_mirror/constants.py LANE_TARGET_SECONDS).
CREATE OR REPLACE VIEW square.sync_freshness AS
WITH RECURSIVE lanes (lane, target_seconds) AS (
    VALUES ('incremental', 60), ('segments', 300), ('groups', 300), ('events', 300), ('custom_attributes', 300),
           ('sweep', 86400)
), covers (lane, kind) AS (
    SELECT lane, CASE lane WHEN 'sweep' THEN 'sweep' ELSE 'reconcile:' || lane END FROM lanes
    UNION
    SELECT lane, full_pass.kind FROM lanes CROSS JOIN (VALUES ('backfill'), ('sweep')) AS full_pass (kind)
    WHERE lane <> 'events'
), latest AS (  -- the newest succeeded run of each (seller, kind): passes of one kind never overlap (one lock)
    SELECT m.merchant_id, k.kind, r.run_id
    FROM square.merchants m
    CROSS JOIN (SELECT DISTINCT kind FROM covers) AS k
    CROSS JOIN LATERAL (
        SELECT r.run_id FROM square.sync_runs r
        WHERE r.merchant_id = m.merchant_id AND r.kind = k.kind AND r.status = 'succeeded'
        ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1
    ) AS r
), chain (merchant_id, kind, run_id, link, started_at) AS (  -- that run and the unfinished runs it continued
    SELECT l.merchant_id, l.kind, l.run_id, r.run_id, r.started_at
    FROM latest l JOIN square.sync_runs r ON r.merchant_id = l.merchant_id AND r.run_id = l.run_id
    UNION ALL
    SELECT ch.merchant_id, ch.kind, ch.run_id, p.run_id, p.started_at
    FROM chain ch
    JOIN square.sync_runs c ON c.merchant_id = ch.merchant_id AND c.run_id = ch.link
    JOIN square.sync_runs p ON p.merchant_id = ch.merchant_id
        AND p.run_id = CASE WHEN jsonb_typeof(c.checkpoint -> 'resumed_from') = 'number'
                            THEN (c.checkpoint ->> 'resumed_from')::bigint END
    WHERE p.kind = ch.kind AND p.status <> 'succeeded' AND p.run_id < ch.link
), passes AS (
    SELECT merchant_id, kind, run_id, min(started_at) AS complete_as_of FROM chain GROUP BY merchant_id, kind, run_id
)
-- DISTINCT ON over a join, not a lateral subquery per seller and lane: the lateral scanned every pass for each of
-- them (a second at 1,000 sellers, read every minute by the budget scheduler and at each scrape)
SELECT DISTINCT ON (m.merchant_id, l.lane) m.merchant_id, l.lane, p.complete_as_of,
       extract(epoch FROM now() - p.complete_as_of)::double precision AS staleness_seconds,
       l.target_seconds, p.kind AS completed_by_kind, p.run_id AS completed_by_run_id
FROM square.merchants m
CROSS JOIN lanes l
LEFT JOIN (passes p JOIN covers c ON c.kind = p.kind) ON p.merchant_id = m.merchant_id AND c.lane = l.lane
ORDER BY m.merchant_id, l.lane, p.complete_as_of DESC NULLS LAST, p.run_id DESC;

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

-- The absence rule, in one place: may "absent from a ListCustomers/SearchCustomers answer" be read as news about
-- this customer (not in that segment or group, deleted, unchanged)? Not when it is hidden. Square never lists a
-- profile with none of given_name, family_name, company_name, email_address and phone_number (instant
-- profiles), whatever the filter, yet RetrieveCustomer and BulkRetrieveCustomers return it with its groups and
-- segments. A profile no list ever showed the mirror (listed_at NULL) is treated the same way, so a stored state
-- older than Square's listing never decides. Hidden profiles are read by ID instead (the segments and groups
-- lanes refresh them; the sweep checks every unlisted row by ID).
CREATE OR REPLACE FUNCTION square.customer_is_hidden(
    given_name text, family_name text, company_name text, email_address text, phone_number text,
    listed_at timestamptz
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT listed_at IS NULL
        OR coalesce(given_name, '') || coalesce(family_name, '') || coalesce(company_name, '')
           || coalesce(email_address, '') || coalesce(phone_number, '') = ''
$$;
CREATE INDEX IF NOT EXISTS customers_hidden_idx ON square.customers (merchant_id, observed_at)
    WHERE deleted_at IS NULL
      AND square.customer_is_hidden(given_name, family_name, company_name, email_address, phone_number, listed_at);

-- Customer custom attributes: the seller's own fields ----------------------------------------------------------
-- Keys are stored as Square returns them to this application: a definition the application owns has its simple
-- key (favorite-drink), another application's visible one its qualified key (sq0idp-...:favorite-drink), and a
-- field the seller made in the Dashboard square:<uuid>. A deleted definition or value keeps its row with
-- deleted_at set (the views hide it), so a late event of the state it ended cannot bring it back.
-- version/created_at/updated_at are Square's; synced_at is when the mirror last learned this state.
CREATE TABLE IF NOT EXISTS square.customer_custom_attribute_definitions (
    merchant_id  text NOT NULL,
    key          text NOT NULL,
    name         text,
    description  text,
    schema       jsonb,
    visibility   text,
    version      bigint NOT NULL DEFAULT 0,
    created_at   timestamptz,
    updated_at   timestamptz,
    deleted_at   timestamptz,
    synced_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, key)
);

-- One row per (customer, key). value is Square's JSON as stored: a string for text, email, phone, number
-- (Square sends numbers as decimal strings) and date; true/false; an Address object; for a selection the
-- option UUIDs (customer_custom_attributes_typed resolves them to names). visibility copies the definition's.
CREATE TABLE IF NOT EXISTS square.customer_custom_attributes (
    merchant_id  text NOT NULL,
    customer_id  text NOT NULL,
    key          text NOT NULL,
    value        jsonb,
    version      bigint NOT NULL DEFAULT 0,
    visibility   text,
    created_at   timestamptz,
    updated_at   timestamptz,
    deleted_at   timestamptz,
    synced_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, customer_id, key)
);
CREATE INDEX IF NOT EXISTS customer_custom_attributes_key_idx
    ON square.customer_custom_attributes (merchant_id, key) WHERE deleted_at IS NULL;

-- The staleness rule of custom attributes and their definitions, in one place: may a new state replace the stored
-- one? Versions start again at 1 when a key is deleted and made again, so a state of a later generation (a later
-- created_at) wins whatever its version; within one generation the higher version wins, and a delete event (which
-- carries the last state) wins at an equal version. Nothing of a generation comes back once it is deleted. A
-- state with no version of its own (new_version NULL) is an observed absence at new_observed_at (a listing that no
-- longer shows it, its customer deleted or merged away, its definition deleted): it ends only a state the mirror
-- learned before it looked.
CREATE OR REPLACE FUNCTION square.custom_attribute_state_wins(
    stored_created_at timestamptz, stored_version bigint, stored_deleted_at timestamptz, stored_synced_at timestamptz,
    new_created_at timestamptz, new_version bigint, new_updated_at timestamptz, new_deleted boolean,
    new_observed_at timestamptz
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN new_version IS NULL THEN stored_deleted_at IS NULL AND stored_synced_at < new_observed_at
        WHEN stored_created_at IS NOT NULL AND new_created_at IS NOT NULL AND new_created_at <> stored_created_at
            THEN new_created_at > stored_created_at
        WHEN stored_deleted_at IS NOT NULL THEN
            CASE WHEN new_deleted THEN new_version > stored_version
                 WHEN stored_created_at IS NULL OR new_created_at IS NULL THEN new_updated_at > stored_deleted_at
                 ELSE false END
        WHEN new_deleted THEN new_version >= stored_version
        ELSE new_version > stored_version
    END
$$;

-- A definition's data type, from its schema: Square's common types are a $ref to
-- .../common.json#squareup.common.<Type>; a selection is an inline array schema whose items list the option
-- UUIDs (items.enum) and their names (items.names, by position).
CREATE OR REPLACE FUNCTION square.custom_attribute_type(p_schema jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_schema->>'type' = 'array' AND jsonb_typeof(p_schema->'items'->'enum') = 'array' THEN 'selection'
        ELSE CASE substring(p_schema->>'$ref' FROM '#squareup\.common\.([A-Za-z]+)$')
            WHEN 'String' THEN 'text'
            WHEN 'Email' THEN 'email'
            WHEN 'PhoneNumber' THEN 'phone'
            WHEN 'Number' THEN 'number'
            WHEN 'Boolean' THEN 'boolean'
            WHEN 'Date' THEN 'date'
            WHEN 'Address' THEN 'address'
            ELSE 'unknown' END
    END
$$;

-- A number value (a decimal string or a JSON number) as numeric; NULL when it is neither.
CREATE OR REPLACE FUNCTION square.custom_attribute_number(p_value jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(p_value) IN ('string', 'number')
                 AND (p_value #>> '{}') ~ '^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$'
                THEN (p_value #>> '{}')::numeric END
$$;

-- A date value (YYYY-MM-DD, or an RFC 3339 time whose date part is taken) as date; NULL when it is not one.
CREATE OR REPLACE FUNCTION square.custom_attribute_date(p_value jsonb) RETURNS date
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF jsonb_typeof(p_value) = 'string' AND (p_value #>> '{}') ~ '^\d{4}-\d{2}-\d{2}' THEN
        RETURN substring(p_value #>> '{}' FROM 1 FOR 10)::date;
    END IF;
    RETURN NULL;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
    RETURN NULL;
END
$$;

-- A selection value's option names, in the value's order (an option the definition no longer names keeps its
-- UUID). Names are read from the current definition, so a renamed option shows its new name.
CREATE OR REPLACE FUNCTION square.custom_attribute_selection_names(p_schema jsonb, p_value jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(p_value) = 'array' THEN ARRAY(
        SELECT coalesce(
            (SELECT p_schema->'items'->'names'->>(e.i - 1)::int
             FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof(p_schema->'items'->'enum') = 'array'
                                                 THEN p_schema->'items'->'enum' ELSE '[]'::jsonb END)
                  WITH ORDINALITY AS e(option_id, i)
             WHERE e.option_id = v.option_id LIMIT 1),
            v.option_id)
        FROM jsonb_array_elements_text(p_value) WITH ORDINALITY AS v(option_id, ord)
        ORDER BY v.ord) END
$$;

-- A value as analysts read it in customers_current.custom_attributes: numbers as JSON numbers, a selection as its
-- option name (a list of names when the definition allows more than one), everything else as Square stores it.
CREATE OR REPLACE FUNCTION square.custom_attribute_json(p_schema jsonb, p_value jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE square.custom_attribute_type(p_schema)
        WHEN 'number' THEN coalesce(to_jsonb(square.custom_attribute_number(p_value)), p_value)
        WHEN 'selection' THEN
            CASE WHEN (p_schema->>'maxItems') = '1' AND jsonb_typeof(p_value) = 'array'
                          AND jsonb_array_length(p_value) <= 1
                 THEN to_jsonb((square.custom_attribute_selection_names(p_schema, p_value))[1])
                 ELSE coalesce(to_jsonb(square.custom_attribute_selection_names(p_schema, p_value)), p_value) END
        ELSE p_value
    END
$$;


-- Views for analysts ---------------------------------------------------------------------------------

CREATE OR REPLACE VIEW square.customers_current AS
SELECT merchant_id, id, version, created_at, updated_at, given_name, family_name, nickname, company_name,
       email_address, phone_number, birthday, reference_id, note, creation_source, email_unsubscribed,
       address, tax_ids, group_ids, segment_ids, raw, observed_at, synced_at,
       coalesce((SELECT jsonb_object_agg(coalesce(d.name, a.key), square.custom_attribute_json(d.schema, a.value)
                                         ORDER BY a.key)
                 FROM square.customer_custom_attributes a
                 LEFT JOIN square.customer_custom_attribute_definitions d
                        ON d.merchant_id = a.merchant_id AND d.key = a.key AND d.deleted_at IS NULL
                 WHERE a.merchant_id = c.merchant_id AND a.customer_id = c.id AND a.deleted_at IS NULL),
                '{}'::jsonb) AS custom_attributes
FROM square.customers c
WHERE deleted_at IS NULL;

-- Where a merged-away ID leads: the end of its merge chain, if that profile is live (NULL when the chain
-- ends in a plain delete), and the number of hops. Walks customer_merges by primary key.
CREATE OR REPLACE FUNCTION square.follow_merges(p_merchant_id text, p_customer_id text)
RETURNS TABLE (current_customer_id text, merge_depth integer)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE chain AS (
        SELECT p_customer_id AS cursor_id, 0 AS depth
        UNION ALL
        SELECT m.to_customer_id, c.depth + 1
        FROM chain c
        JOIN square.customer_merges m ON m.merchant_id = p_merchant_id AND m.from_customer_id = c.cursor_id
        WHERE c.depth < 64
    ), last AS (
        SELECT cursor_id, depth FROM chain ORDER BY depth DESC LIMIT 1
    )
    SELECT CASE WHEN cu.id IS NOT NULL AND cu.deleted_at IS NULL THEN l.cursor_id END, l.depth
    FROM last l
    LEFT JOIN square.customers cu ON cu.merchant_id = p_merchant_id AND cu.id = l.cursor_id
$$;

-- The live profile an ID stands for today, given its own row's deleted_at / merged_into: itself when live,
-- the end of its merge chain when merged away (NULL when that chain ends in a plain delete), NULL when deleted.
-- Only merged-away IDs walk the chain, so as-of queries over many customers stay cheap.
CREATE OR REPLACE FUNCTION square.current_customer_id(
    p_merchant_id text, p_customer_id text, p_deleted_at timestamptz, p_merged_into text
) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN p_deleted_at IS NULL THEN p_customer_id
        WHEN p_merged_into IS NULL THEN NULL
        ELSE (SELECT f.current_customer_id FROM square.follow_merges(p_merchant_id, p_customer_id) f)
    END
$$;

-- Every customer ID the mirror knows (live, deleted, or merged away: merged-away IDs always keep a tombstone
-- row) and the live profile it resolves to through merge chains of any length. current_customer_id is NULL
-- when the chain ends in a plain delete.
CREATE OR REPLACE VIEW square.customer_id_resolution AS
SELECT c.merchant_id, c.id AS customer_id,
       CASE WHEN c.deleted_at IS NULL THEN c.id ELSE f.current_customer_id END AS current_customer_id,
       coalesce(f.merge_depth, 0) AS merge_depth
FROM square.customers c
LEFT JOIN LATERAL (
    SELECT r.current_customer_id, r.merge_depth
    FROM square.follow_merges(c.merchant_id, c.id) r
    WHERE c.merged_into IS NOT NULL
) f ON true;

CREATE OR REPLACE VIEW square.customer_group_memberships AS
SELECT m.merchant_id, m.group_id, g.name AS group_name, m.customer_id, m.since
FROM square.customer_group_members m
LEFT JOIN square.customer_groups g ON g.merchant_id = m.merchant_id AND g.id = m.group_id;

CREATE OR REPLACE VIEW square.customer_segment_memberships AS
SELECT m.merchant_id, m.segment_id, s.name AS segment_name, m.customer_id, m.since
FROM square.customer_segment_members m
LEFT JOIN square.customer_segments s ON s.merchant_id = m.merchant_id AND s.id = m.segment_id;

-- Live custom attribute values typed by their definition's schema: one typed column is set per row, by data_type
-- (text, email, phone: text_value; number: number_value; boolean: boolean_value; date: date_value; address:
-- address_value; selection: selection_names, the option names in the value's order). value keeps Square's JSON.
CREATE OR REPLACE VIEW square.customer_custom_attributes_typed AS
SELECT a.merchant_id, a.customer_id, a.key, d.name, square.custom_attribute_type(d.schema) AS data_type,
       a.value,
       CASE WHEN square.custom_attribute_type(d.schema) IN ('text', 'email', 'phone')
                 AND jsonb_typeof(a.value) = 'string' THEN a.value #>> '{}' END AS text_value,
       CASE WHEN square.custom_attribute_type(d.schema) = 'number'
            THEN square.custom_attribute_number(a.value) END AS number_value,
       CASE WHEN square.custom_attribute_type(d.schema) = 'boolean' AND jsonb_typeof(a.value) = 'boolean'
            THEN (a.value #>> '{}')::boolean END AS boolean_value,
       CASE WHEN square.custom_attribute_type(d.schema) = 'date'
            THEN square.custom_attribute_date(a.value) END AS date_value,
       CASE WHEN square.custom_attribute_type(d.schema) = 'address' AND jsonb_typeof(a.value) = 'object'
            THEN a.value END AS address_value,
       CASE WHEN square.custom_attribute_type(d.schema) = 'selection'
            THEN square.custom_attribute_selection_names(d.schema, a.value) END AS selection_names,
       a.version, a.visibility, a.created_at, a.updated_at, a.synced_at
FROM square.customer_custom_attributes a
LEFT JOIN square.customer_custom_attribute_definitions d
       ON d.merchant_id = a.merchant_id AND d.key = a.key AND d.deleted_at IS NULL
WHERE a.deleted_at IS NULL;


-- History (every observed profile state and membership change) -------------------------------------------
-- The current-state tables are the open end of history: a live customers row is its customer's current
-- version, a members row its open membership period. Only what a write ends is stored apart, by statement-level
-- triggers in the same transaction as the write: the superseded, deleted or merged-away version, the membership
-- that ended. So every writer (webhook jobs, backfill, reconcile lanes) gets history without knowing about it;
-- a write that changes nothing (duplicate, replay, stale event, unchanged backfill page) adds no row; and a
-- first write (a backfill into an empty mirror) stores everything once, not twice.
-- customer_versions and the membership histories are views over both halves; analysts query those.
-- valid_from is Square's updated_at for the version, or the time the mirror observed the state when Square's
-- time is unknown; valid_to is the next state's valid_from, or the deletion time. Membership joined_at /
-- left_at are observation times (see the README).
-- SET square_mirror.history = 'off' in a session stops storing ended states for that session (benchmarks).

-- Superseded, deleted and merged-away customer states: [valid_from, valid_to), valid_to never NULL.
CREATE TABLE IF NOT EXISTS square.customer_versions_closed (
    merchant_id         text NOT NULL,
    customer_id         text NOT NULL,
    history_id          bigint GENERATED ALWAYS AS IDENTITY,
    version             bigint NOT NULL,
    valid_from          timestamptz NOT NULL,
    valid_to            timestamptz NOT NULL,
    created_at          timestamptz,
    updated_at          timestamptz,
    given_name          text,
    family_name         text,
    nickname            text,
    company_name        text,
    email_address       text,
    phone_number        text,
    birthday            text,
    reference_id        text,
    note                text,
    creation_source     text,
    email_unsubscribed  boolean,
    address             jsonb,
    tax_ids             jsonb,
    group_ids           text[] NOT NULL DEFAULT '{}',
    raw                 jsonb,
    observed_at         timestamptz NOT NULL,
    closed_reason       text CHECK (closed_reason IN ('superseded', 'deleted', 'merged')),
    PRIMARY KEY (merchant_id, customer_id, history_id)
);
CREATE INDEX IF NOT EXISTS customer_versions_asof_idx
    ON square.customer_versions_closed (merchant_id, valid_from, valid_to);

-- Ended membership periods: [joined_at, left_at).
CREATE TABLE IF NOT EXISTS square.customer_group_membership_closed (
    merchant_id  text NOT NULL,
    group_id     text NOT NULL,
    customer_id  text NOT NULL,
    history_id   bigint GENERATED ALWAYS AS IDENTITY,
    joined_at    timestamptz NOT NULL,
    left_at      timestamptz NOT NULL,
    PRIMARY KEY (merchant_id, group_id, customer_id, history_id)
);
CREATE INDEX IF NOT EXISTS group_membership_history_asof_idx
    ON square.customer_group_membership_closed (merchant_id, joined_at, left_at);

CREATE TABLE IF NOT EXISTS square.customer_segment_membership_closed (
    merchant_id  text NOT NULL,
    segment_id   text NOT NULL,
    customer_id  text NOT NULL,
    history_id   bigint GENERATED ALWAYS AS IDENTITY,
    joined_at    timestamptz NOT NULL,
    left_at      timestamptz NOT NULL,
    PRIMARY KEY (merchant_id, segment_id, customer_id, history_id)
);
CREATE INDEX IF NOT EXISTS segment_membership_history_asof_idx
    ON square.customer_segment_membership_closed (merchant_id, joined_at, left_at);

-- Every state and period, ended or open. The open halves carry history_id NULL (they are not stored apart).
CREATE OR REPLACE VIEW square.customer_versions AS
SELECT merchant_id, customer_id, history_id, version, valid_from, valid_to, created_at, updated_at, given_name,
       family_name, nickname, company_name, email_address, phone_number, birthday, reference_id, note,
       creation_source, email_unsubscribed, address, tax_ids, group_ids, raw, observed_at, closed_reason
FROM square.customer_versions_closed
UNION ALL
SELECT merchant_id, id, NULL::bigint, version, coalesce(updated_at, observed_at), NULL::timestamptz, created_at,
       updated_at, given_name, family_name, nickname, company_name, email_address, phone_number, birthday,
       reference_id, note, creation_source, email_unsubscribed, address, tax_ids, group_ids, raw, observed_at,
       NULL::text
FROM square.customers
WHERE deleted_at IS NULL;

CREATE OR REPLACE VIEW square.customer_group_membership_history AS
SELECT merchant_id, group_id, customer_id, history_id, joined_at, left_at
FROM square.customer_group_membership_closed
UNION ALL
SELECT merchant_id, group_id, customer_id, NULL::bigint, since, NULL::timestamptz
FROM square.customer_group_members;

CREATE OR REPLACE VIEW square.customer_segment_membership_history AS
SELECT merchant_id, segment_id, customer_id, history_id, joined_at, left_at
FROM square.customer_segment_membership_closed
UNION ALL
SELECT merchant_id, segment_id, customer_id, NULL::bigint, since, NULL::timestamptz
FROM square.customer_segment_members;

CREATE OR REPLACE FUNCTION square.history_enabled() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('square_mirror.history', true), 'on') <> 'off'
$$;

-- Updated customer rows: store the old state when the profile changed or the customer was deleted or merged
-- away. Segment membership has its own history, so segment_ids and the mirror's own timestamps do not end a
-- version.
CREATE OR REPLACE FUNCTION square.customer_history_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN
    IF NOT square.history_enabled() THEN
        RETURN NULL;
    END IF;
    INSERT INTO square.customer_versions_closed (
        merchant_id, customer_id, version, valid_from, valid_to, created_at, updated_at, given_name, family_name,
        nickname, company_name, email_address, phone_number, birthday, reference_id, note, creation_source,
        email_unsubscribed, address, tax_ids, group_ids, raw, observed_at, closed_reason)
    SELECT o.merchant_id, o.id, o.version, coalesce(o.updated_at, o.observed_at),
           greatest(coalesce(o.updated_at, o.observed_at), coalesce(n.deleted_at, n.updated_at, n.observed_at)),
           o.created_at, o.updated_at, o.given_name, o.family_name, o.nickname, o.company_name, o.email_address,
           o.phone_number, o.birthday, o.reference_id, o.note, o.creation_source, o.email_unsubscribed, o.address,
           o.tax_ids, o.group_ids, o.raw, o.observed_at,
           CASE WHEN n.merged_into IS NOT NULL THEN 'merged'
                WHEN n.deleted_at IS NOT NULL THEN 'deleted'
                ELSE 'superseded' END
    FROM new_rows n
    JOIN old_rows o ON o.merchant_id = n.merchant_id AND o.id = n.id
    WHERE o.deleted_at IS NULL
      AND (n.deleted_at IS NOT NULL
           OR (o.version, o.created_at, o.updated_at, o.given_name, o.family_name, o.nickname, o.company_name,
               o.email_address, o.phone_number, o.birthday, o.reference_id, o.note, o.creation_source,
               o.email_unsubscribed, o.address, o.tax_ids, o.group_ids)
              IS DISTINCT FROM
              (n.version, n.created_at, n.updated_at, n.given_name, n.family_name, n.nickname, n.company_name,
               n.email_address, n.phone_number, n.birthday, n.reference_id, n.note, n.creation_source,
               n.email_unsubscribed, n.address, n.tax_ids, n.group_ids));
    -- A tombstone that learns more about its delete (rare): a plain delete later learned to be a merge, or a
    -- deletion time the mirror observed replaced by the time Square stated (worker/sql/tombstone_customers.sql,
    -- worker.store.apply_merge). The state the delete ended says the same, so history does not depend on
    -- which the mirror learned first. Row by row on purpose: each is an exact primary-key probe, whatever the
    -- planner's statistics on the transition tables say.
    FOR c IN
        SELECT n.merchant_id, n.id, n.merged_into IS NOT NULL AS merged, n.deleted_at
        FROM new_rows n
        JOIN old_rows o ON o.merchant_id = n.merchant_id AND o.id = n.id
        WHERE o.deleted_at IS NOT NULL AND n.deleted_at IS NOT NULL
          AND ((o.merged_into IS NULL AND n.merged_into IS NOT NULL) OR o.deleted_at <> n.deleted_at)
    LOOP
        UPDATE square.customer_versions_closed
        SET closed_reason = CASE WHEN c.merged THEN 'merged' ELSE closed_reason END,
            valid_to = greatest(valid_from, c.deleted_at)
        WHERE merchant_id = c.merchant_id AND customer_id = c.id AND closed_reason IN ('deleted', 'merged');
    END LOOP;
    RETURN NULL;
END
$$;

-- Deleted memberships: store the period that ended.
CREATE OR REPLACE FUNCTION square.membership_history_on_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT square.history_enabled() THEN
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'customer_group_members' THEN
        INSERT INTO square.customer_group_membership_closed (merchant_id, group_id, customer_id, joined_at, left_at)
        SELECT merchant_id, group_id, customer_id, since, greatest(since, now()) FROM old_rows;
    ELSE
        INSERT INTO square.customer_segment_membership_closed (merchant_id, segment_id, customer_id, joined_at,
                                                               left_at)
        SELECT merchant_id, segment_id, customer_id, since, greatest(since, now()) FROM old_rows;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS customer_history_update ON square.customers;
CREATE TRIGGER customer_history_update AFTER UPDATE ON square.customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION square.customer_history_on_update();
DROP TRIGGER IF EXISTS group_membership_history_delete ON square.customer_group_members;
CREATE TRIGGER group_membership_history_delete AFTER DELETE ON square.customer_group_members
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION square.membership_history_on_delete();
DROP TRIGGER IF EXISTS segment_membership_history_delete ON square.customer_segment_members;
CREATE TRIGGER segment_membership_history_delete AFTER DELETE ON square.customer_segment_members
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION square.membership_history_on_delete();

-- Ended custom attribute values: the state a write superseded (a new value or version) or a delete ended
-- (the value deleted, its definition deleted, its customer deleted or merged away), kept by the same kind of
-- statement-level trigger as customer versions. valid_from is Square's updated_at of the state (the time the mirror
-- learned it when Square's is unknown); valid_to the next state's valid_from, or the deletion time.
CREATE TABLE IF NOT EXISTS square.customer_custom_attribute_versions_closed (
    merchant_id    text NOT NULL,
    customer_id    text NOT NULL,
    key            text NOT NULL,
    history_id     bigint GENERATED ALWAYS AS IDENTITY,
    value          jsonb,
    version        bigint NOT NULL,
    visibility     text,
    created_at     timestamptz,
    updated_at     timestamptz,
    valid_from     timestamptz NOT NULL,
    valid_to       timestamptz NOT NULL,
    closed_reason  text CHECK (closed_reason IN ('superseded', 'deleted')),
    PRIMARY KEY (merchant_id, customer_id, key, history_id)
);
CREATE INDEX IF NOT EXISTS custom_attribute_versions_asof_idx
    ON square.customer_custom_attribute_versions_closed (merchant_id, valid_from, valid_to);

CREATE OR REPLACE VIEW square.customer_custom_attribute_versions AS
SELECT merchant_id, customer_id, key, history_id, value, version, visibility, created_at, updated_at, valid_from,
       valid_to, closed_reason
FROM square.customer_custom_attribute_versions_closed
UNION ALL
SELECT merchant_id, customer_id, key, NULL::bigint, value, version, visibility, created_at, updated_at,
       coalesce(updated_at, synced_at), NULL::timestamptz, NULL::text
FROM square.customer_custom_attributes
WHERE deleted_at IS NULL;

CREATE OR REPLACE FUNCTION square.custom_attribute_history_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT square.history_enabled() THEN
        RETURN NULL;
    END IF;
    INSERT INTO square.customer_custom_attribute_versions_closed (
        merchant_id, customer_id, key, value, version, visibility, created_at, updated_at, valid_from, valid_to,
        closed_reason)
    SELECT o.merchant_id, o.customer_id, o.key, o.value, o.version, o.visibility, o.created_at, o.updated_at,
           coalesce(o.updated_at, o.synced_at),
           greatest(coalesce(o.updated_at, o.synced_at), coalesce(n.deleted_at, n.updated_at, n.synced_at)),
           CASE WHEN n.deleted_at IS NOT NULL THEN 'deleted' ELSE 'superseded' END
    FROM new_rows n
    JOIN old_rows o ON o.merchant_id = n.merchant_id AND o.customer_id = n.customer_id AND o.key = n.key
    WHERE o.deleted_at IS NULL
      AND (n.deleted_at IS NOT NULL
           OR (o.value, o.version, o.created_at) IS DISTINCT FROM (n.value, n.version, n.created_at));
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS custom_attribute_history_update ON square.customer_custom_attributes;
CREATE TRIGGER custom_attribute_history_update AFTER UPDATE ON square.customer_custom_attributes
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION square.custom_attribute_history_on_update();

-- As-of queries: the ended states valid at p_at, and the current ones that had begun by then. Each row
-- carries current_customer_id, so an old (merged-away) ID finds its successor.
CREATE OR REPLACE FUNCTION square.customers_as_of(p_merchant_id text, p_at timestamptz)
RETURNS TABLE (merchant_id text, customer_id text, version bigint, valid_from timestamptz,
               valid_to timestamptz, given_name text, family_name text, nickname text, company_name text,
               email_address text, phone_number text, birthday text, reference_id text, note text,
               creation_source text, email_unsubscribed boolean, address jsonb, tax_ids jsonb, group_ids text[],
               current_customer_id text)
LANGUAGE sql STABLE AS $$
    SELECT v.merchant_id, v.customer_id, v.version, v.valid_from, v.valid_to, v.given_name, v.family_name,
           v.nickname, v.company_name, v.email_address, v.phone_number, v.birthday, v.reference_id, v.note,
           v.creation_source, v.email_unsubscribed, v.address, v.tax_ids, v.group_ids,
           square.current_customer_id(v.merchant_id, v.customer_id, cu.deleted_at, cu.merged_into)
    FROM square.customer_versions_closed v
    LEFT JOIN square.customers cu ON cu.merchant_id = v.merchant_id AND cu.id = v.customer_id
    WHERE v.merchant_id = p_merchant_id AND v.valid_from <= p_at AND v.valid_to > p_at
    UNION ALL
    SELECT c.merchant_id, c.id, c.version, coalesce(c.updated_at, c.observed_at), NULL, c.given_name,
           c.family_name, c.nickname, c.company_name, c.email_address, c.phone_number, c.birthday, c.reference_id,
           c.note, c.creation_source, c.email_unsubscribed, c.address, c.tax_ids, c.group_ids, c.id
    FROM square.customers c
    WHERE c.merchant_id = p_merchant_id AND c.deleted_at IS NULL AND coalesce(c.updated_at, c.observed_at) <= p_at
$$;

CREATE OR REPLACE FUNCTION square.group_members_as_of(p_merchant_id text, p_at timestamptz)
RETURNS TABLE (merchant_id text, group_id text, group_name text, customer_id text, joined_at timestamptz,
               left_at timestamptz, current_customer_id text)
LANGUAGE sql STABLE AS $$
    SELECT h.merchant_id, h.group_id, g.name, h.customer_id, h.joined_at, h.left_at,
           square.current_customer_id(h.merchant_id, h.customer_id, cu.deleted_at, cu.merged_into)
    FROM square.customer_group_membership_history h
    LEFT JOIN square.customer_groups g ON g.merchant_id = h.merchant_id AND g.id = h.group_id
    LEFT JOIN square.customers cu ON cu.merchant_id = h.merchant_id AND cu.id = h.customer_id
    WHERE h.merchant_id = p_merchant_id AND h.joined_at <= p_at AND (h.left_at IS NULL OR h.left_at > p_at)
$$;

CREATE OR REPLACE FUNCTION square.segment_members_as_of(p_merchant_id text, p_at timestamptz)
RETURNS TABLE (merchant_id text, segment_id text, segment_name text, customer_id text, joined_at timestamptz,
               left_at timestamptz, current_customer_id text)
LANGUAGE sql STABLE AS $$
    SELECT h.merchant_id, h.segment_id, s.name, h.customer_id, h.joined_at, h.left_at,
           square.current_customer_id(h.merchant_id, h.customer_id, cu.deleted_at, cu.merged_into)
    FROM square.customer_segment_membership_history h
    LEFT JOIN square.customer_segments s ON s.merchant_id = h.merchant_id AND s.id = h.segment_id
    LEFT JOIN square.customers cu ON cu.merchant_id = h.merchant_id AND cu.id = h.customer_id
    WHERE h.merchant_id = p_merchant_id AND h.joined_at <= p_at AND (h.left_at IS NULL OR h.left_at > p_at)
$$;

-- Custom attribute values as of p_at: the ended states valid then and the current ones that had begun, named by
-- their definition (as it is now), each with the live profile its customer ID stands for today.
CREATE OR REPLACE FUNCTION square.customer_custom_attributes_as_of(p_merchant_id text, p_at timestamptz)
RETURNS TABLE (merchant_id text, customer_id text, key text, name text, value jsonb, version bigint,
               valid_from timestamptz, valid_to timestamptz, current_customer_id text)
LANGUAGE sql STABLE AS $$
    SELECT v.merchant_id, v.customer_id, v.key, d.name, v.value, v.version, v.valid_from, v.valid_to,
           square.current_customer_id(v.merchant_id, v.customer_id, cu.deleted_at, cu.merged_into)
    FROM square.customer_custom_attribute_versions v
    LEFT JOIN square.customer_custom_attribute_definitions d ON d.merchant_id = v.merchant_id AND d.key = v.key
    LEFT JOIN square.customers cu ON cu.merchant_id = v.merchant_id AND cu.id = v.customer_id
    WHERE v.merchant_id = p_merchant_id AND v.valid_from <= p_at AND (v.valid_to IS NULL OR v.valid_to > p_at)
$$;

-- Daily size series: members at the end of each day (UTC) since the first observed membership.
CREATE OR REPLACE VIEW square.group_sizes_daily AS
SELECT h.merchant_id, h.group_id, g.name AS group_name, d.day::date AS day, count(*) AS members
FROM square.customer_group_membership_history h
CROSS JOIN LATERAL generate_series(date_trunc('day', h.joined_at AT TIME ZONE 'UTC'),
                                   date_trunc('day', coalesce(h.left_at, now()) AT TIME ZONE 'UTC'),
                                   interval '1 day') AS d(day)
LEFT JOIN square.customer_groups g ON g.merchant_id = h.merchant_id AND g.id = h.group_id
WHERE h.joined_at <= ((d.day + interval '1 day') AT TIME ZONE 'UTC')
  AND (h.left_at IS NULL OR h.left_at > ((d.day + interval '1 day') AT TIME ZONE 'UTC'))
GROUP BY h.merchant_id, h.group_id, g.name, d.day;

CREATE OR REPLACE VIEW square.segment_sizes_daily AS
SELECT h.merchant_id, h.segment_id, s.name AS segment_name, d.day::date AS day, count(*) AS members
FROM square.customer_segment_membership_history h
CROSS JOIN LATERAL generate_series(date_trunc('day', h.joined_at AT TIME ZONE 'UTC'),
                                   date_trunc('day', coalesce(h.left_at, now()) AT TIME ZONE 'UTC'),
                                   interval '1 day') AS d(day)
LEFT JOIN square.customer_segments s ON s.merchant_id = h.merchant_id AND s.id = h.segment_id
WHERE h.joined_at <= ((d.day + interval '1 day') AT TIME ZONE 'UTC')
  AND (h.left_at IS NULL OR h.left_at > ((d.day + interval '1 day') AT TIME ZONE 'UTC'))
GROUP BY h.merchant_id, h.segment_id, s.name, d.day;

-- Sellers' credentials: kept in a schema of their own that the analytics role is never granted -----------------
-- (square_mirror_reader reads schema square only). Tokens are encrypted at rest (square_mirror/credentials), so
-- even a database dump holds no usable token without the encryption key.
CREATE SCHEMA IF NOT EXISTS square_private;
REVOKE ALL ON SCHEMA square_private FROM PUBLIC;

-- One row per OAuth seller. refresh_kind: 'code' (the code flow's reusable refresh token) or 'pkce' (single use:
-- each refresh returns the next one, stored before the new access token is used). status: 'active';
-- 'refresh_failed' (the last refresh failed, retried with backoff from next_refresh_at, the current access token
-- still used until it expires); 'reauthorize' (Square refused the refresh token for good: the seller must connect
-- again); 'revoked' (the seller or the application revoked access: nothing runs for it); 'removed'
-- (square-mirror sellers remove). refresh_started_at: a refresh in flight (see docs/explanation/sellers.md).
CREATE TABLE IF NOT EXISTS square_private.seller_credentials (
    merchant_id               text PRIMARY KEY,
    refresh_kind              text NOT NULL DEFAULT 'code' CHECK (refresh_kind IN ('code', 'pkce')),
    access_token              text NOT NULL,
    access_token_expires_at   timestamptz,
    refresh_token             text,
    refresh_token_expires_at  timestamptz,
    scopes                    text[] NOT NULL DEFAULT '{}',
    status                    text NOT NULL DEFAULT 'active'
                              CHECK (status IN ('active', 'refresh_failed', 'reauthorize', 'revoked', 'removed')),
    connected_at              timestamptz NOT NULL DEFAULT now(),
    refreshed_at              timestamptz,
    refresh_started_at        timestamptz,
    refresh_failures          integer NOT NULL DEFAULT 0,
    next_refresh_at           timestamptz,
    last_error                text,
    status_changed_at         timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);

-- The OAuth redirect's state values (CSRF) already used: a state is signed and expires
-- (square_mirror/credentials/oauth_state.py); its first use is recorded here, hashed, so a replay connects nothing.
CREATE TABLE IF NOT EXISTS square_private.oauth_states (
    state_hash  text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

-- One batch of `square-mirror sellers remove --purge`: delete up to p_limit rows of a seller from one table (the
-- caller lists the tables from the catalog; format's %I quotes them). Rows are picked by (tableoid, ctid), so a batch
-- is one short statement and no lock is held between batches.
CREATE OR REPLACE FUNCTION square_private.purge_seller_batch(p_schema text, p_table text, p_merchant_id text,
                                                             p_limit integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    deleted bigint;
BEGIN
    EXECUTE format(
        'WITH doomed AS (SELECT tableoid, ctid FROM %I.%I WHERE merchant_id = $1 LIMIT $2), '
        'gone AS (DELETE FROM %I.%I t USING doomed d '
        'WHERE t.tableoid = d.tableoid AND t.ctid = d.ctid AND t.merchant_id = $1 RETURNING 1) '
        'SELECT count(*) FROM gone', p_schema, p_table, p_schema, p_table)
    INTO deleted USING p_merchant_id, p_limit;
    RETURN deleted;
END
$$;
REVOKE ALL ON FUNCTION square_private.purge_seller_batch(text, text, text, integer) FROM PUBLIC;

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

-- The mirror as a source for others: a logical-replication publication of every table of schema square (never
-- square_private), for Debezium or any other pgoutput consumer (docs/how-to/stream-changes.md). Created when the
-- migrating user may: FOR TABLES IN SCHEMA (Postgres 15+, superuser), which takes in tables added later by
-- itself; otherwise FOR TABLE each table (owner of the tables with CREATE on the database), which every migrate
-- sets again, so a new table joins it. Never fails migrate: without the privilege it only says so. Streaming
-- needs wal_level = logical too; the publication itself does not (it costs nothing until a slot reads it).
-- Every table has a primary key, its default replica identity, so updates and deletes carry their keys.
DO $$
DECLARE
    by_schema boolean := current_setting('server_version_num')::int >= 150000
                         AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
    table_list text;
BEGIN
    IF by_schema THEN
        IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'square_mirror') THEN
            CREATE PUBLICATION square_mirror FOR TABLES IN SCHEMA square;
        ELSE
            ALTER PUBLICATION square_mirror SET TABLES IN SCHEMA square;
        END IF;
        RETURN;
    END IF;
    SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ' ORDER BY c.relname) INTO table_list
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'square' AND c.relkind IN ('r', 'p');
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'square_mirror') THEN
        EXECUTE 'CREATE PUBLICATION square_mirror FOR TABLE ' || table_list;
    ELSE
        EXECUTE 'ALTER PUBLICATION square_mirror SET TABLE ' || table_list;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'publication square_mirror not created or updated: the migrating user may not (%)', SQLERRM;
    WHEN duplicate_object THEN
        NULL;  -- created concurrently by another migration
END
$$;

INSERT INTO square.schema_version (version) VALUES (1), (2), (3), (4), (5), (6), (7), (8) ON CONFLICT (version) DO NOTHING;
