-- The webhook events inbox (square.webhook_events): worker/events/inbox.py.

-- name: finish_event --
-- Mark an event processed; the first run to finish wins. $1 merchant_id, $2 event_id, $3 outcome, $4 error.
UPDATE square.webhook_events SET processed_at = now(), outcome = $3, error = $4
WHERE merchant_id = $1 AND event_id = $2 AND processed_at IS NULL

-- name: note_event_pending --
-- Keep an unfinished run's reason without finishing it. $1 merchant_id, $2 event_id, $3 outcome, $4 error.
UPDATE square.webhook_events SET outcome = $3, error = $4
WHERE merchant_id = $1 AND event_id = $2 AND processed_at IS NULL

-- name: record_events --
-- Write each event on first sight (or count another run of it), with its customer as the mirror holds it.
-- $1..$9 parallel arrays: merchant_id, event_id, type, customer_id, version, created_at, received_at, source,
-- payload (json text).
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[],
                         $7::timestamptz[], $8::text[], $9::text[])
        AS t(merchant_id, event_id, type, customer_id, version, created_at, received_at, source, payload)
), ins AS (
    INSERT INTO square.webhook_events AS e
        (merchant_id, event_id, type, customer_id, version, created_at, received_at, attempts, source, payload)
    SELECT merchant_id, event_id, type, customer_id, version, created_at, COALESCE(received_at, now()), 1, source,
           payload::jsonb
    FROM input
    ORDER BY merchant_id, event_id
    ON CONFLICT (merchant_id, event_id) DO UPDATE SET attempts = e.attempts + 1
    RETURNING e.merchant_id, e.event_id, e.processed_at IS NOT NULL AS processed, e.outcome, e.attempts
)
SELECT ins.*, c.id IS NOT NULL AS known, c.version AS stored_version, c.deleted_at IS NOT NULL AS stored_deleted,
       c.merged_into AS stored_merged_into
FROM ins
JOIN input i ON i.merchant_id = ins.merchant_id AND i.event_id = ins.event_id
LEFT JOIN square.customers c ON c.merchant_id = i.merchant_id AND c.id = i.customer_id

-- name: finish_events --
-- finish_event for many events. $1..$4 parallel arrays: merchant_id, event_id, outcome, error.
UPDATE square.webhook_events e SET processed_at = now(), outcome = u.outcome, error = u.error
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(merchant_id, event_id, outcome, error)
WHERE e.merchant_id = u.merchant_id AND e.event_id = u.event_id AND e.processed_at IS NULL

-- name: failed_events --
-- Events whose outcome is failed, oldest first. $1 merchant_id or NULL, $2 text[] event ids or NULL, $3 limit.
SELECT merchant_id, event_id, payload FROM square.webhook_events
WHERE outcome = 'failed' AND payload IS NOT NULL
  AND ($1::text IS NULL OR merchant_id = $1)
  AND ($2::text[] IS NULL OR event_id = ANY ($2::text[]))
ORDER BY received_at, event_id
LIMIT $3

-- name: unfinished_events --
-- Events never finished, received over $1 seconds ago, oldest first. $2 merchant_id or NULL, $3 limit.
SELECT merchant_id, event_id, payload FROM square.webhook_events
WHERE processed_at IS NULL AND payload IS NOT NULL
  AND received_at < now() - make_interval(secs => $1)
  AND ($2::text IS NULL OR merchant_id = $2)
ORDER BY received_at, event_id
LIMIT $3

-- name: reopen_event --
-- Clear a failed event's finish so its re-enqueued job processes it. $1 merchant_id, $2 event_id.
UPDATE square.webhook_events SET processed_at = NULL, outcome = NULL
WHERE merchant_id = $1 AND event_id = $2 AND outcome = 'failed'
