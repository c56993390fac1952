-- Version 4: customer_merges.source gets its one vocabulary (worker.store.MergeSource). Rows made before it that
-- say anything else keep the constraint NOT VALID (new rows are checked all the same). Runs before schema.sql,
-- in the same transaction, only for a database at a version before 4.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'customer_merges_source_check'
                   AND conrelid = 'square.customer_merges'::regclass) THEN
        ALTER TABLE square.customer_merges ADD CONSTRAINT customer_merges_source_check
            CHECK (source IN ('webhook', 'events_api', 'retrieve')) NOT VALID;
        BEGIN
            ALTER TABLE square.customer_merges VALIDATE CONSTRAINT customer_merges_source_check;
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE 'customer_merges_source_check left NOT VALID: older rows name another source';
        END;
    END IF;
EXCEPTION WHEN duplicate_object THEN
    NULL;  -- added concurrently by another migration
END
$$;
