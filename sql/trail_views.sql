-- trail_views.sql: reading the trail. The recent_activity view and recent(), the changes view
-- and history() (one row's story); redact(), the one change a stored row may get; and the
-- descriptions of the Rust functions that write the trail and wait for it (log_event(),
-- flush(); src/api). Runs after those functions exist.

CREATE VIEW activity_log.recent_activity AS
SELECT id, ts, committed_at, kind AS source, category, severity, status, sqlstate, db_user,
       actor, application_name, client_addr, command, schema_name, table_name, relations,
       query, rows, duration_ms, context, details
  FROM activity_log.events
 WHERE ts > now() - interval '24 hours' AND committed_at > now() - interval '24 hours';

COMMENT ON VIEW activity_log.recent_activity IS
    'The last 24 hours of the trail; filter with WHERE source / category / status / severity / ts.';

CREATE FUNCTION activity_log.recent(
    since    interval DEFAULT '1 hour',
    source   text DEFAULT NULL,
    category text DEFAULT NULL,
    status   text DEFAULT NULL,
    severity text DEFAULT NULL,
    max_rows integer DEFAULT 100)
RETURNS SETOF activity_log.recent_activity
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF since IS NULL OR since < interval '0' THEN
        RAISE EXCEPTION 'since must not be null or negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_rows IS NULL OR max_rows < 1 OR max_rows > 100000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 100000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF source IS NOT NULL AND source NOT IN ('change', 'statement', 'ddl', 'event', 'system') THEN
        RAISE EXCEPTION 'invalid source "%"', source USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Valid values are: change, statement, ddl, event, system.';
    END IF;
    IF status IS NOT NULL AND status NOT IN ('success', 'error', 'gap') THEN
        RAISE EXCEPTION 'invalid status "%"', status USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Valid values are: success, error, gap.';
    END IF;
    IF severity IS NOT NULL AND severity NOT IN (SELECT activity_log.severities()) THEN
        RAISE EXCEPTION 'invalid severity "%"', severity USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Valid values are: ' || (SELECT string_agg(s, ', ') FROM activity_log.severities() s) || '.';
    END IF;
    IF category IS NOT NULL AND category NOT IN (SELECT activity_log.categories()) THEN
        RAISE EXCEPTION 'invalid category "%"', category USING ERRCODE = 'invalid_parameter_value',
            HINT = 'See SELECT activity_log.categories().';
    END IF;
    RETURN QUERY
    SELECT e.id, e.ts, e.committed_at, e.kind, e.category, e.severity, e.status, e.sqlstate,
           e.db_user, e.actor, e.application_name, e.client_addr, e.command, e.schema_name,
           e.table_name, e.relations, e.query, e.rows, e.duration_ms, e.context, e.details
      FROM activity_log.events e
     WHERE e.ts > now() - since
       -- Implied (a record commits after it starts), and it is the partition key: only the
       -- partitions of the window are read.
       AND e.committed_at > now() - since
       AND (recent.source IS NULL OR e.kind = recent.source)
       AND (recent.category IS NULL OR e.category = recent.category)
       AND (recent.status IS NULL OR e.status = recent.status)
       AND (recent.severity IS NULL OR e.severity = recent.severity)
     ORDER BY e.id DESC
     LIMIT max_rows;
END
$$;

COMMENT ON FUNCTION activity_log.recent(interval, text, text, text, text, integer) IS
    'Newest records first, filtered by age, source (kind), category, status and severity.';

CREATE VIEW activity_log.changes AS
SELECT id, ts, committed_at, command AS op, schema_name, table_name, table_oid, row_key,
       old_row, new_row, changed_columns, db_user, actor, context, xid, query, details
  FROM activity_log.events
 WHERE kind = 'change';

COMMENT ON VIEW activity_log.changes IS
    'Row changes of tracked tables in trail order: applying them in id order reproduces the tables.';

CREATE FUNCTION activity_log.history(relation regclass, key jsonb)
RETURNS SETOF activity_log.changes
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- Planned once per session: a custom plan of each query looks at every day partition, and
-- planning them cost more than running them (the key and oids are index conditions either way).
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    key_columns text[];
    rel_schema  text;
    rel_name    text;
    oids        oid[];
    before      timestamptz;
BEGIN
    IF relation IS NULL OR key IS NULL THEN
        RAISE EXCEPTION 'relation and key must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF jsonb_typeof(key) <> 'object' THEN
        RAISE EXCEPTION 'key must be a JSON object of key columns, for example {"id": 42}'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT n.nspname, c.relname INTO rel_schema, rel_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = relation;
    -- The table's trail rows carry its oid, which stays through a rename but not through a
    -- dump and restore (nor a DROP and CREATE): the restored table gets a new one, and its
    -- changes from before the restore carry the old. So the story also takes the rows of any
    -- other oid in the trail that were recorded under this table's present schema and name.
    -- The trail's oids are read by skipping through events_table_idx (one descent per oid and
    -- partition), not by reading the trail; and only in the day partitions (UTC days, as
    -- _maintain_partitions makes them) up to the day after the table's first change under
    -- its own oid: the rows of its earlier oids were recorded before that (a restore loads
    -- them before the restored table changes; a dropped table changed before its successor
    -- existed). A table tracked from the start of the trail costs a partition or two.
    SELECT date_trunc('day', e.committed_at, 'UTC') + interval '2 days' INTO before
      FROM activity_log.events e WHERE e.table_oid = relation::oid ORDER BY e.id LIMIT 1;
    before := coalesce(before, 'infinity');
    WITH RECURSIVE seen(table_oid) AS (
        (SELECT e.table_oid FROM activity_log.events e
          WHERE e.table_oid IS NOT NULL AND e.committed_at < before ORDER BY e.table_oid LIMIT 1)
        UNION ALL
        SELECT (SELECT e.table_oid FROM activity_log.events e
                 WHERE e.table_oid > s.table_oid AND e.committed_at < before ORDER BY e.table_oid LIMIT 1)
          FROM seen s WHERE s.table_oid IS NOT NULL
    )
    -- An oid that names a relation now is another table's (one renamed away, say), not an
    -- earlier one of this table.
    SELECT array_agg(s.table_oid) INTO oids
      FROM seen s
     WHERE s.table_oid IS NOT NULL AND s.table_oid <> relation::oid
       AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = s.table_oid);
    oids := relation::oid || coalesce(oids, '{}');
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attname), '{}') INTO key_columns
      FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = relation AND i.indisprimary;
    IF key_columns <> '{}' AND key_columns = (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(key) k) THEN
        -- The whole primary key: indexed. A change of the key continues the story under the
        -- new key (the writer notes it as details->'new_key').
        RETURN QUERY
        SELECT * FROM activity_log.changes c
         WHERE c.table_oid = ANY (oids)
           AND (c.table_oid = relation::oid OR (c.schema_name = rel_schema AND c.table_name = rel_name))
           AND ((jsonb_hash_extended(c.row_key, 0) = jsonb_hash_extended(key, 0) AND c.row_key = key)
                OR (c.details ? 'new_key' AND c.details->'new_key' = key))
         ORDER BY c.id;
    ELSE
        -- Part of a key, or a table without one: every change whose image contains key.
        RETURN QUERY
        SELECT * FROM activity_log.changes c
         WHERE c.table_oid = ANY (oids)
           AND (c.table_oid = relation::oid OR (c.schema_name = rel_schema AND c.table_name = rel_name))
           AND (c.row_key = key OR c.new_row @> key OR c.old_row @> key)
         ORDER BY c.id;
    END IF;
END
$$;

COMMENT ON FUNCTION activity_log.history(regclass, jsonb) IS
    'One row''s story, oldest first, across a dump and restore (the table''s earlier oids, by its schema and name). With the whole primary key: an index lookup that follows key changes; otherwise every change whose image contains key.';

-- redact removes values from one trail row for good (a password typed into a statement, a
-- secret in a row image): `columns` names columns of the trail (query, details, old_row,
-- new_row, row_key, context, jwt_claims, actor, application_name). The row must verify
-- first; each value becomes '<REDACTED>' (text) or "<REDACTED>" (jsonb);
-- activity_log.redactions keeps the SHA-256 of each removed value, as the chain takes it, and
-- the redaction is itself recorded in the trail (a system record REDACT, staged inside this
-- transaction) with those digests: verify() recomputes the row's link from them, so the
-- chain still proves every other value of the row. SECURITY DEFINER: only the extension's
-- owner writes the trail.
CREATE FUNCTION activity_log.redact(id bigint, columns text[], reason text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    allowed CONSTANT text[] := '{query,details,old_row,new_row,row_key,context,jwt_claims,actor,application_name}';
    col       text;
    checked   record;
    originals jsonb;
BEGIN
    IF id IS NULL OR columns IS NULL OR reason IS NULL THEN
        RAISE EXCEPTION 'id, columns and reason must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF btrim(reason) = '' THEN
        RAISE EXCEPTION 'reason must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Say why the values are removed; the trail keeps the reason.';
    END IF;
    IF cardinality(columns) = 0 OR array_ndims(columns) > 1 OR array_position(columns, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'columns must list the columns to empty, for example ''{query}'''
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH col IN ARRAY columns LOOP
        IF NOT col = ANY (allowed) THEN
            RAISE EXCEPTION 'cannot redact "%"', col USING ERRCODE = 'invalid_parameter_value',
                HINT = format('Redact one of %s.', array_to_string(allowed, ', '));
        END IF;
    END LOOP;
    IF cardinality(columns) <> (SELECT count(DISTINCT c) FROM unnest(columns) c) THEN
        RAISE EXCEPTION 'columns must not name a column twice' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM 1 FROM activity_log.events e WHERE e.id = redact.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'trail row % does not exist', id USING ERRCODE = 'no_data_found';
    END IF;
    IF EXISTS (SELECT 1 FROM activity_log.redactions r WHERE r.id = redact.id) THEN
        RAISE EXCEPTION 'trail row % was redacted already', id USING ERRCODE = 'unique_violation',
            HINT = 'See activity_log.redactions: a row is redacted once, with every value to remove.';
    END IF;
    SELECT * INTO checked FROM activity_log.verify(id, id);
    IF NOT checked.intact THEN
        RAISE EXCEPTION 'trail row % does not verify: %', id, checked.problem USING ERRCODE = 'data_corrupted',
            HINT = 'redact() keeps the chain proving the rest of the row, so it only redacts a row the chain still proves.';
    END IF;
    originals := activity_log._column_digests(id, columns);
    FOREACH col IN ARRAY columns LOOP
        EXECUTE format('UPDATE activity_log.events SET %I = %L WHERE id = $1 AND %1$I IS NOT NULL', col,
                       CASE WHEN col IN ('query', 'actor', 'application_name') THEN '<REDACTED>' ELSE '"<REDACTED>"' END)
            USING id;
    END LOOP;
    INSERT INTO activity_log.redactions (id, columns, originals, reason)
    VALUES (id, columns, originals, reason);
END
$$;

COMMENT ON FUNCTION activity_log.redact(bigint, text[], text) IS
    'Empties columns of one trail row for good; the redaction is recorded, and verify() keeps proving the rest of the row.';

-- log_event() and flush() are Rust functions (src/api); their descriptions live here.
COMMENT ON FUNCTION activity_log.log_event(text, jsonb, text, text, text, text) IS
    'Records an application event (action, details, entity, category, severity) in the current transaction.';
COMMENT ON FUNCTION activity_log.flush(interval) IS
    'Waits until every record published before the call is in activity_log.events; false on timeout.';
