-- Version 2: history stores only ended states; the current-state tables are the open end of history.
-- Schema 1 stored open rows in the history tables too: keep their closed rows, drop the open ones (the
-- current-state tables hold them), and let schema.sql's views take the old names. Runs before schema.sql, in
-- the same transaction, only for a database at version 1.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('customer_versions', 'customer_versions_closed', 'valid_to', 'customer_versions_open_idx'),
        ('customer_group_membership_history', 'customer_group_membership_closed', 'left_at',
         'group_membership_history_open_idx'),
        ('customer_segment_membership_history', 'customer_segment_membership_closed', 'left_at',
         'segment_membership_history_open_idx')
    ) AS v (old_name, new_name, end_column, open_index)
    LOOP
        IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'square' AND c.relname = t.old_name AND c.relkind = 'r') THEN
            EXECUTE format('DELETE FROM square.%I WHERE %I IS NULL', t.old_name, t.end_column);
            EXECUTE format('ALTER TABLE square.%I RENAME TO %I', t.old_name, t.new_name);
            EXECUTE format('ALTER TABLE square.%I RENAME CONSTRAINT %I TO %I', t.new_name, t.old_name || '_pkey',
                           t.new_name || '_pkey');
            EXECUTE format('ALTER TABLE square.%I ALTER COLUMN %I SET NOT NULL', t.new_name, t.end_column);
            EXECUTE format('DROP INDEX IF EXISTS square.%I', t.open_index);
        END IF;
    END LOOP;
END
$$;
DROP TRIGGER IF EXISTS customer_history_insert ON square.customers;
DROP TRIGGER IF EXISTS group_membership_history_insert ON square.customer_group_members;
DROP TRIGGER IF EXISTS segment_membership_history_insert ON square.customer_segment_members;
DROP FUNCTION IF EXISTS square.customer_history_on_insert();
DROP FUNCTION IF EXISTS square.membership_history_on_insert();
