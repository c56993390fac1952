-- Groups or segments that Square no longer lists: tombstone them and drop their memberships, also from the
-- customers' group_ids / segment_ids arrays. $1 merchant_id, $2 text[] ids, $3 deleted_at.
WITH gone AS (
    UPDATE square.{table} SET deleted_at = $3, synced_at = now()
    WHERE merchant_id = $1 AND id = ANY ($2::text[]) AND deleted_at IS NULL
    RETURNING id
), dropped AS (
    DELETE FROM square.{members} m USING gone
    WHERE m.merchant_id = $1 AND m.{member_key} = gone.id
), arrays AS (
    UPDATE square.customers c
    SET {array_column} = ARRAY(SELECT x FROM unnest(c.{array_column}) AS x WHERE x <> ALL (SELECT id FROM gone))
    WHERE c.merchant_id = $1 AND c.{array_column} && ARRAY(SELECT id FROM gone)
)
SELECT id FROM gone;
