-- Sellers' OAuth credentials (square_private.seller_credentials, square_private.oauth_states):
-- square_mirror/credentials/store.py. Tokens arrive here already encrypted.

-- name: save_grant --
-- A seller connected (or added) with a fresh grant: tokens stored, status active, failures forgotten.
-- $1 merchant_id, $2 refresh_kind, $3 access_token (encrypted), $4 access_token_expires_at, $5 refresh_token
-- (encrypted), $6 refresh_token_expires_at, $7 text[] scopes, $8 now (the process's clock: timefmt.utcnow).
INSERT INTO square_private.seller_credentials AS c (
    merchant_id, refresh_kind, access_token, access_token_expires_at, refresh_token, refresh_token_expires_at,
    scopes, status, connected_at, refreshed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $8)
ON CONFLICT (merchant_id) DO UPDATE SET
    refresh_kind = EXCLUDED.refresh_kind,
    access_token = EXCLUDED.access_token,
    access_token_expires_at = EXCLUDED.access_token_expires_at,
    refresh_token = EXCLUDED.refresh_token,
    refresh_token_expires_at = EXCLUDED.refresh_token_expires_at,
    scopes = EXCLUDED.scopes,
    status = 'active',
    connected_at = $8,
    refreshed_at = $8,
    refresh_started_at = NULL,
    refresh_failures = 0,
    next_refresh_at = NULL,
    last_error = NULL,
    status_changed_at = CASE WHEN c.status = 'active' THEN c.status_changed_at ELSE now() END,
    updated_at = now()

-- name: usable_credentials --
-- The access tokens the mirror may use: every seller not revoked or removed (a seller whose refresh failed keeps
-- its current token until it expires).
SELECT merchant_id, access_token, access_token_expires_at
FROM square_private.seller_credentials
WHERE status IN ('active', 'refresh_failed', 'reauthorize')

-- name: due_for_refresh --
-- Sellers whose token is older than $1 (or expires within it), and whose backoff has passed (a seller whose
-- refresh token Square refused is tried again with backoff, in case it was a passing refusal). $2 now.
SELECT merchant_id
FROM square_private.seller_credentials
WHERE status IN ('active', 'refresh_failed', 'reauthorize') AND refresh_token IS NOT NULL
  AND (coalesce(refreshed_at, connected_at) <= $2::timestamptz - $1::interval
       OR access_token_expires_at <= $2::timestamptz + $1::interval)
  AND (next_refresh_at IS NULL OR next_refresh_at <= $2::timestamptz)
ORDER BY coalesce(refreshed_at, connected_at)

-- name: credential_for_refresh --
-- One seller's row, to refresh it (the caller holds the seller's advisory lock). $1 merchant_id.
SELECT merchant_id, refresh_kind, refresh_token, refreshed_at, status, refresh_started_at
FROM square_private.seller_credentials WHERE merchant_id = $1

-- name: begin_refresh --
-- A refresh is about to be sent (committed first, so a crash in flight is known afterwards). $1 merchant_id,
-- $2 now.
UPDATE square_private.seller_credentials SET refresh_started_at = $2, updated_at = now() WHERE merchant_id = $1

-- name: save_refresh --
-- Square answered a refresh: the new tokens, at once. $1 merchant_id, $2 access_token (encrypted),
-- $3 access_token_expires_at, $4 refresh_token (encrypted), $5 refresh_token_expires_at, $6 now.
UPDATE square_private.seller_credentials SET
    access_token = $2, access_token_expires_at = $3, refresh_token = $4, refresh_token_expires_at = $5,
    status = 'active', refreshed_at = $6, refresh_started_at = NULL, refresh_failures = 0, next_refresh_at = NULL,
    last_error = NULL, status_changed_at = CASE WHEN status = 'active' THEN status_changed_at ELSE now() END,
    updated_at = now()
WHERE merchant_id = $1

-- name: refresh_failed --
-- A refresh failed: $3 the status ('refresh_failed': retried after $4; 'reauthorize': for good), $2 the error.
-- $1 merchant_id, $5 now.
UPDATE square_private.seller_credentials SET
    status = $3, last_error = $2, refresh_failures = refresh_failures + 1, refresh_started_at = NULL,
    next_refresh_at = $5::timestamptz + $4::interval,
    status_changed_at = CASE WHEN status = $3 THEN status_changed_at ELSE now() END, updated_at = now()
WHERE merchant_id = $1 AND status IN ('active', 'refresh_failed', 'reauthorize')

-- name: set_seller_status --
-- Revoked or removed: $2 the status, $3 why. $1 merchant_id. Returns whether the row changed.
UPDATE square_private.seller_credentials SET status = $2, last_error = $3, status_changed_at = now(),
    updated_at = now()
WHERE merchant_id = $1 AND status <> $2
RETURNING merchant_id

-- name: revoke_seller --
-- Square said the seller's authorization was revoked ($2 why, $3 revoked_at or NULL). Several events come per
-- seller: only the first changes the row. A removed seller stays removed, and a grant obtained after the
-- revocation (the seller connected again) is left alone. $1 merchant_id. Returns a row when the seller changed.
UPDATE square_private.seller_credentials SET status = 'revoked', last_error = $2, status_changed_at = now(),
    refresh_started_at = NULL, next_refresh_at = NULL, updated_at = now()
WHERE merchant_id = $1 AND status NOT IN ('revoked', 'removed')
  AND ($3::timestamptz IS NULL OR connected_at <= $3::timestamptz)
RETURNING merchant_id

-- name: seller_status --
-- $1 merchant_id.
SELECT status FROM square_private.seller_credentials WHERE merchant_id = $1

-- name: withdrawn_sellers --
-- Sellers whose OAuth access is gone (revoked or removed): no token, no lane, no event job for them.
SELECT merchant_id FROM square_private.seller_credentials WHERE status IN ('revoked', 'removed')

-- name: list_credentials --
-- Every seller's credential metadata (no token). 
SELECT merchant_id, refresh_kind, access_token_expires_at, refresh_token_expires_at, scopes, status, connected_at,
       refreshed_at, refresh_started_at, refresh_failures, next_refresh_at, last_error, status_changed_at
FROM square_private.seller_credentials ORDER BY merchant_id

-- name: all_encrypted_tokens --
-- Every stored token, to re-encrypt them with the first key.
SELECT merchant_id, access_token, refresh_token FROM square_private.seller_credentials FOR UPDATE

-- name: reencrypt_tokens --
-- $1 merchant_id, $2 access_token, $3 refresh_token (both encrypted with the first key).
UPDATE square_private.seller_credentials SET access_token = $2, refresh_token = $3, updated_at = now()
WHERE merchant_id = $1

-- name: use_oauth_state --
-- Accept a (signed, unexpired) state once: the first use records it, a replay finds it. $1 state_hash,
-- $2 expires_at. Returns a row when accepted.
INSERT INTO square_private.oauth_states (state_hash, expires_at, used_at) VALUES ($1, $2, now())
ON CONFLICT (state_hash) DO NOTHING
RETURNING state_hash

-- name: lock_seller_refresh --
-- One refresh per seller across every process: try the seller's advisory lock without waiting.
-- $1 namespace, $2 merchant_id.
SELECT pg_try_advisory_lock($1, hashtext($2))

-- name: unlock_seller_refresh --
-- $1 namespace, $2 merchant_id.
SELECT pg_advisory_unlock($1, hashtext($2))

-- name: refresh_failures --
-- How many refreshes of a seller failed in a row. $1 merchant_id.
SELECT refresh_failures FROM square_private.seller_credentials WHERE merchant_id = $1
