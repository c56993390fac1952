-- The write model's short statements (worker/store.py); its long ones have a file each (upsert_customers.sql...).

-- name: definition_ids --
-- Every group or segment ID the mirror holds, tombstones included. $1 merchant_id.
SELECT id FROM square.{table} WHERE merchant_id = $1

-- name: stored_customers --
-- The stored version, tombstone and merge target of these customers. $1 merchant_id, $2 text[] customer ids.
SELECT id, version, deleted_at IS NOT NULL AS deleted, merged_into FROM square.customers
WHERE merchant_id = $1 AND id = ANY ($2::text[])

-- name: set_merchant_auth --
-- Whether the merchant's token works; auth_changed_at moves only with the status. $1 merchant_id, $2 status,
-- $3 error.
INSERT INTO square.merchants AS m (merchant_id, auth_status, auth_error, auth_changed_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (merchant_id) DO UPDATE SET
    auth_status = EXCLUDED.auth_status,
    auth_error = EXCLUDED.auth_error,
    auth_changed_at = CASE WHEN m.auth_status = EXCLUDED.auth_status THEN m.auth_changed_at ELSE now() END,
    updated_at = now()
WHERE m.auth_status IS DISTINCT FROM EXCLUDED.auth_status OR m.auth_error IS DISTINCT FROM EXCLUDED.auth_error

-- name: ensure_merchant --
-- Record the merchant if new. $1 merchant_id.
INSERT INTO square.merchants (merchant_id) VALUES ($1) ON CONFLICT (merchant_id) DO NOTHING

-- name: known_merchants --
-- Every merchant the mirror knows (worker/merchants.py), except OAuth sellers whose access was revoked or removed,
-- and every OAuth seller whose token may be used, recorded in square.merchants yet or not.
SELECT m.merchant_id FROM square.merchants m
WHERE NOT EXISTS (SELECT 1 FROM square_private.seller_credentials c
                  WHERE c.merchant_id = m.merchant_id AND c.status IN ('revoked', 'removed'))
UNION
SELECT merchant_id FROM square_private.seller_credentials WHERE status IN ('active', 'refresh_failed', 'reauthorize')
