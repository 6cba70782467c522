-- tracking.sql: which tables' rows are captured. track() and untrack(), who may change that
-- (row-level security on tracked_tables), what the capture reads (_tracked()), and keeping
-- tracked_tables in step with DDL: renamed excluded columns, dropped tables (an event
-- trigger), and the trigger function of a COPY FROM into a tracked table.

-- The capture's view of tracked_tables: every partition maps to its tracked root, with the
-- root's primary-key columns. SECURITY DEFINER: the capture runs as whoever writes.
CREATE FUNCTION activity_log._tracked(
    OUT relid oid, OUT root oid, OUT key_columns text[], OUT exclude_columns text[],
    OUT has_foreign_partition boolean, OUT durable boolean)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off  -- pg_partition_tree's row estimate would otherwise JIT-compile this (~150 ms)
AS $$
    SELECT p.relid::oid, t.relid::oid,
           coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                       FROM pg_index i
                       CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                      WHERE i.indrelid = t.relid AND i.indisprimary), '{}'),
           t.exclude_columns,
           EXISTS (SELECT 1 FROM pg_partition_tree(t.relid) x JOIN pg_class c ON c.oid = x.relid
                    WHERE c.relkind = 'f'),
           t.durability = 'sync'
      FROM activity_log.tracked_tables t
     CROSS JOIN LATERAL (SELECT t.relid
                         UNION
                         SELECT pt.relid FROM pg_partition_tree(t.relid) pt) p
$$;

-- Who may change what is tracked: the table's owner (or a member of the owning role, or a
-- superuser), as for CREATE TRIGGER on it. Rows of tracked_tables follow the same rule,
-- whoever writes them and however (track(), or DML by a member of activity_log_admin).
ALTER TABLE activity_log.tracked_tables ENABLE ROW LEVEL SECURITY;
CREATE POLICY tracked_tables_read ON activity_log.tracked_tables FOR SELECT USING (true);
CREATE POLICY tracked_tables_track ON activity_log.tracked_tables FOR INSERT
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE')
                AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = relid) IN ('r', 'p'));
CREATE POLICY tracked_tables_change ON activity_log.tracked_tables FOR UPDATE
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'));
CREATE POLICY tracked_tables_untrack ON activity_log.tracked_tables FOR DELETE
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'));

-- _may_change_tracking refuses, with the error PostgreSQL gives for CREATE TRIGGER, a caller
-- who does not own the table; then locks it against DROP and ALTER until the transaction
-- ends, and makes sure it still exists.
CREATE FUNCTION activity_log._may_change_tracking(relation regclass, verb text)
RETURNS pg_class
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c pg_class;
BEGIN
    IF relation IS NULL THEN
        RAISE EXCEPTION 'relation must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO c FROM pg_class WHERE oid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', relation::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF c.relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace, 'pg_toast'::regnamespace)
       OR relation::oid < 16384 THEN
        RAISE EXCEPTION 'cannot % system catalog "%"', verb, relation USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT pg_has_role(c.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', c.relname USING ERRCODE = 'insufficient_privilege',
            HINT = format('Only the owner of a table (or a superuser) may %s it, as for CREATE TRIGGER on it.', verb);
    END IF;
    IF c.relkind IN ('r', 'p') THEN  -- what else there is, track() refuses
        EXECUTE format('LOCK TABLE ONLY %s IN SHARE UPDATE EXCLUSIVE MODE', relation);
    END IF;
    SELECT * INTO c FROM pg_class WHERE oid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', relation::oid USING ERRCODE = 'undefined_table',
            DETAIL = 'It was dropped meanwhile.';
    END IF;
    RETURN c;
END
$$;

-- track starts capturing a table's rows; validation errors name the problem and the fix.
-- What it changes is itself recorded: tracked_tables is captured like a tracked table, and
-- the writer stores its changes as system records (TRACK, RETRACK, UNTRACK).
CREATE FUNCTION activity_log.track(relation regclass, exclude_columns text[] DEFAULT '{}',
                                   durability text DEFAULT 'async')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c       pg_class;
    missing text;
    old     activity_log.tracked_tables;
    keys    text[];
    target  regclass;
    sub     name;
BEGIN
    IF exclude_columns IS NULL THEN
        RAISE EXCEPTION 'exclude_columns must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass ''{}'' to capture every column.';
    END IF;
    IF array_ndims(exclude_columns) > 1 THEN
        RAISE EXCEPTION 'exclude_columns must be a one-dimensional array of column names'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(exclude_columns, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'exclude_columns must not contain NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'List the names of the columns to leave out of the row images.';
    END IF;
    SELECT string_agg(quote_ident(d.x), ', ') INTO missing
      FROM (SELECT x FROM unnest(exclude_columns) x GROUP BY x HAVING count(*) > 1) d;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'column % is listed more than once in exclude_columns', missing
            USING ERRCODE = 'duplicate_column';
    END IF;
    IF durability IS NULL OR durability NOT IN ('async', 'sync') THEN
        RAISE EXCEPTION 'durability must be ''async'' or ''sync'', not %', coalesce(quote_literal(durability), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
            HINT = '''sync'' writes the records inside the transaction, so that they survive any crash the transaction survives.';
    END IF;
    c := activity_log._may_change_tracking(relation, 'track');
    IF c.relnamespace = 'activity_log'::regnamespace THEN
        RAISE EXCEPTION 'cannot track activity_log''s own table "%"', relation USING ERRCODE = 'wrong_object_type';
    END IF;
    IF c.relpersistence = 't' THEN
        RAISE EXCEPTION 'cannot track temporary table "%"', relation USING ERRCODE = 'wrong_object_type',
            HINT = 'Temporary tables are private to their session and not audited.';
    END IF;
    IF c.relkind = 'f' THEN
        RAISE EXCEPTION 'cannot track foreign table "%"', relation USING ERRCODE = 'wrong_object_type',
            HINT = 'Changes of a foreign table happen on the remote server; audit them there.';
    END IF;
    IF c.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', relation USING ERRCODE = 'wrong_object_type',
            HINT = 'Only ordinary and partitioned tables can be tracked; track the tables behind a view.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
                WHERE i.inhparent = relation AND p.relkind = 'f') THEN
        RAISE EXCEPTION 'cannot track "%": it has foreign partitions', relation USING ERRCODE = 'wrong_object_type';
    END IF;
    -- Logical replication applies rows without the executor hooks row capture works through
    -- (capture/replication.rs): a subscription target's rows cannot be captured.
    SELECT p.relid, s.subname INTO target, sub
      FROM (SELECT relation AS relid UNION SELECT t.relid FROM pg_partition_tree(relation) t) p
      JOIN pg_subscription_rel r ON r.srrelid = p.relid
      JOIN pg_subscription s ON s.oid = r.srsubid
     ORDER BY p.relid <> relation, s.subname, p.relid::oid
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot track "%": %', relation,
              CASE WHEN target = relation THEN format('it is a target of subscription "%s"', sub)
                   ELSE format('its partition "%s" is a target of subscription "%s"', target, sub) END
            USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Rows applied by logical replication cannot be captured; audit the table on the publisher.';
    END IF;
    SELECT string_agg(quote_ident(x), ', ') INTO missing
      FROM unnest(exclude_columns) x
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = relation AND a.attname = x AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'column % of "%" does not exist', missing, relation USING ERRCODE = 'undefined_column';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO keys
      FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = relation AND i.indisprimary AND a.attname = ANY (exclude_columns);
    IF keys IS NOT NULL THEN
        RAISE EXCEPTION 'cannot exclude primary-key column % of "%"', array_to_string(keys, ', '), relation
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Changes name their row by its primary key (row_key, history()); exclude other columns.';
    END IF;
    SELECT * INTO old FROM activity_log.tracked_tables t WHERE t.relid = relation;
    IF FOUND THEN
        IF old.exclude_columns = exclude_columns AND old.durability = durability THEN
            RAISE NOTICE '"%" is already tracked that way', relation;
            RETURN;
        END IF;
        IF old.exclude_columns <> exclude_columns THEN
            RAISE NOTICE 'excluded columns of "%" change from % to %', relation, old.exclude_columns, exclude_columns;
        END IF;
        IF old.durability <> durability THEN
            RAISE NOTICE 'durability of "%" changes from % to %', relation, old.durability, durability;
        END IF;
        UPDATE activity_log.tracked_tables t
           SET exclude_columns = track.exclude_columns, durability = track.durability
         WHERE t.relid = relation;
    ELSE
        INSERT INTO activity_log.tracked_tables (relid, exclude_columns, durability)
        VALUES (relation, exclude_columns, durability);
    END IF;
    PERFORM activity_log._tracking_changed();
END
$$;

COMMENT ON FUNCTION activity_log.track(regclass, text[], text) IS
    'Starts capturing the rows of a table (old and new images), leaving out exclude_columns; durability ''sync'' stores the records inside the transaction. Only the table''s owner may.';

CREATE FUNCTION activity_log.untrack(relation regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM activity_log._may_change_tracking(relation, 'untrack');
    DELETE FROM activity_log.tracked_tables WHERE relid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation "%" is not tracked', relation USING ERRCODE = 'undefined_object',
            HINT = 'See SELECT * FROM activity_log.tracked_tables.';
    END IF;
    PERFORM activity_log._tracking_changed();
END
$$;

COMMENT ON FUNCTION activity_log.untrack(regclass) IS 'Stops capturing the rows of a table; its trail stays. Only the table''s owner may.';

-- Follows ALTER TABLE … RENAME COLUMN of an excluded column, so that the column stays
-- excluded. Called by the utility hook only, with the extension owner's rights; not
-- executable by PUBLIC (it would let anybody move a stale exclusion onto another column).
CREATE FUNCTION activity_log._rename_excluded(relation oid, old_name text, new_name text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    -- Only a rename that happened: the old name is gone and the new one exists.
    UPDATE activity_log.tracked_tables
       SET exclude_columns = array_replace(exclude_columns, old_name, new_name)
     WHERE relid = relation::regclass
       AND NOT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = relation AND attname = old_name AND NOT attisdropped)
       AND EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = relation AND attname = new_name AND NOT attisdropped)
$$;

-- A dropped table is no longer tracked, nor being migrated (its trigger backup goes with it:
-- there is nothing to restore the triggers on); its trail stays.
-- SECURITY DEFINER: event triggers run as whoever drops something.
CREATE FUNCTION activity_log._untrack_dropped() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM activity_log.migration m
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objid = m.relid::oid AND d.objsubid = 0;
    DELETE FROM activity_log.tracked_tables t
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objid = t.relid::oid
       AND d.objsubid = 0;  -- a dropped column is not a dropped table
    IF FOUND THEN
        PERFORM activity_log._tracking_changed();
    END IF;
END
$$;

CREATE EVENT TRIGGER activity_log_untrack_dropped ON sql_drop
    EXECUTE FUNCTION activity_log._untrack_dropped();

-- The function of the synthetic triggers a COPY FROM into a tracked table finds in the relation
-- cache (capture/copy_from.rs): the trigger manager calls a trigger's function by its oid. It
-- refuses to run for any other trigger, and only the extension's owner may attach it to one
-- (EXECUTE is revoked from PUBLIC in grants.sql, as for every internal function).
CREATE FUNCTION activity_log._capture_rows() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'al_capture_rows';
COMMENT ON FUNCTION activity_log._capture_rows() IS
    'Internal: records the rows of a COPY FROM into a tracked table; runs only as activity_log''s own synthetic trigger.';
