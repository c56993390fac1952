-- Sync runs (square.sync_runs) and lane watermarks (square.sync_state): worker/runs.py.

-- name: start_run --
-- A new run, running; returns its run_id. $1 merchant_id, $2 kind, $3 jsonb checkpoint.
INSERT INTO square.sync_runs (merchant_id, kind, checkpoint) VALUES ($1, $2, $3::jsonb) RETURNING run_id

-- name: flush_run --
-- A running run's counts and checkpoint, with a heartbeat. $1 merchant_id, $2 run_id, $3 counts, $4 checkpoint.
UPDATE square.sync_runs SET counts = $3::jsonb, checkpoint = $4::jsonb, heartbeat_at = now()
WHERE merchant_id = $1 AND run_id = $2

-- name: finish_run --
-- Close a run. $1 merchant_id, $2 run_id, $3 final status, $4 counts, $5 checkpoint, $6 error.
UPDATE square.sync_runs SET status = $3, finished_at = now(), heartbeat_at = now(),
    counts = $4::jsonb, checkpoint = $5::jsonb, error = $6
WHERE merchant_id = $1 AND run_id = $2

-- name: try_run_lock --
-- Take the (merchant, kind) run lock if free (session-level). $1 lock key.
SELECT pg_try_advisory_lock(hashtextextended($1, 0))

-- name: release_run_lock --
-- Release the (merchant, kind) run lock. $1 lock key.
SELECT pg_advisory_unlock(hashtextextended($1, 0))

-- name: interrupt_dead_runs --
-- Runs still running once the lock is ours belong to dead processes. $1 merchant_id, $2 kind.
UPDATE square.sync_runs SET status = 'interrupted', finished_at = now(),
    error = COALESCE(error, 'process ended without finishing the run')
WHERE merchant_id = $1 AND kind = $2 AND status = 'running' RETURNING run_id

-- name: newest_ended_run --
-- The newest run of a kind that is not running. $1 merchant_id, $2 kind.
SELECT run_id, status, checkpoint FROM square.sync_runs WHERE merchant_id = $1 AND kind = $2
    AND status <> 'running' ORDER BY run_id DESC LIMIT 1

-- name: last_run --
-- The newest run of a kind, whatever its status. $1 merchant_id, $2 kind.
SELECT * FROM square.sync_runs WHERE merchant_id = $1 AND kind = $2 ORDER BY run_id DESC LIMIT 1

-- name: last_succeeded_run --
-- The newest succeeded run of any of these kinds. $1 merchant_id, $2 text[] kinds.
SELECT started_at, checkpoint FROM square.sync_runs WHERE merchant_id = $1 AND kind = ANY ($2::text[])
    AND status = 'succeeded' ORDER BY run_id DESC LIMIT 1

-- name: get_watermark --
-- A lane's watermark. $1 merchant_id, $2 lane.
SELECT watermark FROM square.sync_state WHERE merchant_id = $1 AND lane = $2

-- name: set_watermark --
-- Move a lane's watermark forward (never backwards), merging its state. $1 merchant_id, $2 lane, $3 watermark,
-- $4 jsonb state.
INSERT INTO square.sync_state AS s (merchant_id, lane, watermark, state, updated_at)
VALUES ($1, $2, $3, $4::jsonb, now())
ON CONFLICT (merchant_id, lane) DO UPDATE SET
    watermark = GREATEST(s.watermark, EXCLUDED.watermark),
    state = s.state || EXCLUDED.state,
    updated_at = now()
