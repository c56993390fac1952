-- The sellers part of `status` (square_mirror/commands/status.py). No token is ever selected here.

-- name: seller_status_counts --
-- OAuth sellers per status, for `status`.
SELECT status, count(*) AS sellers FROM square_private.seller_credentials GROUP BY status ORDER BY status

-- name: sellers_needing_attention --
-- OAuth sellers an operator must act on: refresh failing, refresh token refused (connect again), access revoked.
SELECT merchant_id, status, last_error, status_changed_at, refresh_failures, next_refresh_at,
       access_token_expires_at
FROM square_private.seller_credentials
WHERE status IN ('refresh_failed', 'reauthorize', 'revoked')
ORDER BY merchant_id
