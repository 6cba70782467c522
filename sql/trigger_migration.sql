-- trigger_migration.sql: moving a database from legacy audit triggers to activity_log, and back.
--
-- Owns migration_plan() (classifies every trigger), migrate_triggers() (phase 1: dual capture,
-- 2: disable, 3: drop), migration_status() (validates the dual-capture window),
-- rollback_migration() and their state: activity_log.migration and migration_backup.
-- Never touches a trigger it did not classify as audit, unless the caller names it; never a
-- business, constraint or internal trigger. The functions run as the caller (SECURITY
-- INVOKER): the DDL needs the caller's rights on the tables, as if typed by hand.
--
-- Locks: phases 1 and 2 and the rollback take SHARE ROW EXCLUSIVE on each table they move
-- (reads go on; writes wait for the few milliseconds of the phase, and the phase waits for
-- writes in flight). That is what makes the switch-over exact: every write either finished
-- before the phase (and is in the legacy trail only) or starts after it (and sees the new
-- state). Phase 3's DROP TRIGGER takes ACCESS EXCLUSIVE, as DROP TRIGGER always does.

-- One row per table being migrated.
CREATE TABLE activity_log.migration (
    relid          regclass PRIMARY KEY,
    phase          integer NOT NULL CHECK (phase BETWEEN 1 AND 3),
    -- The table was tracked before phase 1: rollback leaves it tracked.
    tracked_before boolean NOT NULL,
    -- The dual-capture window opens with the transactions committed after dual_start (taken
    -- holding the table lock) and closes at phase 2.
    dual_start     pg_snapshot NOT NULL,
    -- Every trail record of the window has an id above this (the trail's last id at phase 1).
    trail_from     bigint NOT NULL,
    -- Phase 2's comparison, kept as it was when the legacy triggers were switched off.
    validation     jsonb,
    forced         boolean NOT NULL DEFAULT false,
    phase1_at      timestamptz NOT NULL DEFAULT now(),
    phase2_at      timestamptz,
    phase3_at      timestamptz
);
COMMENT ON TABLE activity_log.migration IS
    'Tables being moved from legacy audit triggers to activity_log, and the phase each has reached.';

-- The backup: everything rollback_migration() needs to put a trigger back as it was.
CREATE TABLE activity_log.migration_backup (
    relid           regclass NOT NULL REFERENCES activity_log.migration ON DELETE CASCADE,
    trigger_name    name NOT NULL,
    definition      text NOT NULL,      -- pg_get_triggerdef(), schema-qualified
    enabled         "char" NOT NULL,    -- pg_trigger.tgenabled: O, D, R or A
    function        text NOT NULL,      -- regprocedure, as text: it survives a DROP FUNCTION
    function_source text NOT NULL,      -- pg_get_functiondef()
    -- Who kept this row, and the function's owner: rollback_migration() runs definition as the
    -- one and function_source as the other (see _run_as), never as whoever rolls back.
    kept_by         regrole NOT NULL DEFAULT current_user::regrole,
    function_owner  regrole NOT NULL DEFAULT current_user::regrole,
    verdict         text NOT NULL,
    audit_table     regclass,
    -- How to read this table's rows in audit_table (see _legacy_reader) and how many there
    -- were when phase 1 began.
    legacy_reader   jsonb NOT NULL,
    legacy_baseline jsonb,
    backed_up_at    timestamptz NOT NULL DEFAULT now(),
    dropped_at      timestamptz,
    PRIMARY KEY (relid, trigger_name)
);
COMMENT ON TABLE activity_log.migration_backup IS
    'Definitions, enabled state and function source of every trigger migrate_triggers() took over.';

SELECT pg_catalog.pg_extension_config_dump('activity_log.migration', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.migration_backup', '');

-- The migration's state follows the rule of tracked_tables (tracking.sql): only a table's owner
-- may write the rows of that table, each as itself (kept_by) and naming only a function owner
-- it may act as; its SQL is run later (by whoever rolls back) as those roles.
ALTER TABLE activity_log.migration ENABLE ROW LEVEL SECURITY;
ALTER TABLE activity_log.migration_backup ENABLE ROW LEVEL SECURITY;
CREATE POLICY migration_read ON activity_log.migration FOR SELECT USING (true);
CREATE POLICY migration_owner ON activity_log.migration FOR ALL
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'));
CREATE POLICY migration_backup_read ON activity_log.migration_backup FOR SELECT USING (true);
CREATE POLICY migration_backup_keep ON activity_log.migration_backup FOR INSERT
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE')
                AND kept_by = current_user::regrole AND pg_catalog.pg_has_role(function_owner, 'USAGE'));
CREATE POLICY migration_backup_change ON activity_log.migration_backup FOR UPDATE
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE')
                AND pg_catalog.pg_has_role(kept_by, 'USAGE') AND pg_catalog.pg_has_role(function_owner, 'USAGE'));
CREATE POLICY migration_backup_drop ON activity_log.migration_backup FOR DELETE
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'));

-- "AFTER INSERT OR UPDATE FOR EACH ROW", from pg_trigger.tgtype.
CREATE FUNCTION activity_log._trigger_fires(tgtype integer) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN tgtype & 2 <> 0 THEN 'BEFORE' WHEN tgtype & 64 <> 0 THEN 'INSTEAD OF' ELSE 'AFTER' END
           || ' '
           || array_to_string(ARRAY[CASE WHEN tgtype & 4 <> 0 THEN 'INSERT' END,
                                    CASE WHEN tgtype & 16 <> 0 THEN 'UPDATE' END,
                                    CASE WHEN tgtype & 8 <> 0 THEN 'DELETE' END,
                                    CASE WHEN tgtype & 32 <> 0 THEN 'TRUNCATE' END], ' OR ')
           || CASE WHEN tgtype & 1 <> 0 THEN ' FOR EACH ROW' ELSE ' FOR EACH STATEMENT' END
$$;

-- pg_trigger.tgenabled in the words of ALTER TABLE … ENABLE / DISABLE TRIGGER: enabled
-- (fires in ordinary sessions), disabled, replica only (fires only when
-- session_replication_role = replica, as logical replication applies changes), always.
CREATE FUNCTION activity_log._trigger_state(tgenabled "char") RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE tgenabled WHEN 'O' THEN 'enabled' WHEN 'D' THEN 'disabled'
                          WHEN 'R' THEN 'replica only' WHEN 'A' THEN 'always' END
$$;

-- The table an INSERT INTO in a trigger function means: a qualified name as written; else the
-- function's pinned search_path, the caller's (caller_search_path: this function's own is
-- pinned), the table's schema, the function's schema.
CREATE FUNCTION activity_log._resolve_table(name text, table_schema oid, function_schema oid,
                                            function_config text[], caller_search_path text)
RETURNS regclass
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    schema text;
    found  regclass;
BEGIN
    IF name ~ '^("[^"]+"|[^".]+)\.' THEN
        RETURN pg_catalog.to_regclass(name);
    END IF;
    FOR schema IN
        SELECT s FROM unnest(function_config) c,
                      unnest(pg_catalog.string_to_array(pg_catalog.regexp_replace(substr(c, 13), '\s', '', 'g'), ',')) s
         WHERE c LIKE 'search_path=%' AND s <> '"$user"'
    LOOP
        found := pg_catalog.to_regclass(schema || '.' || name);
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END LOOP;
    FOR schema IN
        SELECT CASE WHEN x.s IN ('"$user"', '$user') THEN quote_ident(session_user) ELSE x.s END
          FROM unnest(ARRAY['pg_temp'] || string_to_array(regexp_replace(caller_search_path, '\s', '', 'g'), ','))
               WITH ORDINALITY AS x(s, n)
         ORDER BY x.n
    LOOP
        found := to_regclass(schema || '.' || name);
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END LOOP;
    RETURN coalesce(pg_catalog.to_regclass(table_schema::regnamespace::text || '.' || name),
                    pg_catalog.to_regclass(function_schema::regnamespace::text || '.' || name));
END
$$;

-- A function's source without comments (the plan's patterns must not match a comment).
CREATE FUNCTION activity_log._source_text(src text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT regexp_replace(regexp_replace(src, '/\*.*?\*/', ' ', 'g'), '--[^\n]*', ' ', 'g') $$;

-- The tables a function body inserts into (INSERT INTO as written, also inside a format
-- string), in the order they appear, resolved like the trigger's own (see _resolve_table).
CREATE FUNCTION activity_log._insert_targets(src text, table_schema oid, function_schema oid,
                                             function_config text[], caller_search_path text)
RETURNS regclass[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(x.found ORDER BY x.first), '{}')
      FROM (SELECT r.found, min(m.n) AS first
              FROM regexp_matches(src,
                       'insert\s+into\s+((?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)', 'gi')
                   WITH ORDINALITY m(v, n),
                   LATERAL (SELECT activity_log._resolve_table(regexp_replace(m.v[1], '\s', '', 'g'), table_schema,
                                                               function_schema, function_config, caller_search_path) AS found) r
             WHERE r.found IS NOT NULL
             GROUP BY r.found) x
$$;

-- The helper functions a trigger function calls, and the ones they call (two levels): calls
-- written schema.function(…) to SQL or PL/pgSQL functions that are not trigger functions
-- (pgMemento's log_statement writes its logs through pgmemento.log_table_event(), which calls
-- pgmemento.log_transaction()). Read from pg_proc only: nothing is run.
CREATE FUNCTION activity_log._callees(fn oid) RETURNS oid[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found    oid[] := '{}';
    frontier oid[] := ARRAY[fn];
    next     oid[];
BEGIN
    FOR depth IN 1..2 LOOP
        SELECT coalesce(array_agg(DISTINCT p.oid), '{}') INTO next
          FROM pg_proc f,
               regexp_matches(activity_log._source_text(f.prosrc),
                   '(?:^|[^a-z0-9_$."])("[^"]+"|[a-z_][a-z0-9_$]*)\s*\.\s*("[^"]+"|[a-z_][a-z0-9_$]*)\s*\(', 'gi') m
          JOIN pg_namespace n ON n.nspname = CASE WHEN m[1] LIKE '"%' THEN replace(substr(m[1], 2, length(m[1]) - 2), '""', '"')
                                                  ELSE lower(m[1]) END
          JOIN pg_proc p ON p.pronamespace = n.oid
                        AND p.proname = CASE WHEN m[2] LIKE '"%' THEN replace(substr(m[2], 2, length(m[2]) - 2), '""', '"')
                                             ELSE lower(m[2]) END
          JOIN pg_language l ON l.oid = p.prolang
         WHERE f.oid = ANY (frontier)
           AND l.lanname IN ('sql', 'plpgsql') AND p.prorettype <> 'pg_catalog.trigger'::regtype
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'activity_log')
           AND p.oid <> fn AND NOT p.oid = ANY (found);
        EXIT WHEN next = '{}';
        found := found || next;
        frontier := next;
    END LOOP;
    RETURN found;
END
$$;

-- _readers names up to three functions that read tbl: SQL or PL/pgSQL functions that are not
-- trigger functions (nor in skip: the helpers of the trigger that writes it) and whose source
-- names the table other than to insert into it, delete from it, truncate or drop it (pgMemento's
-- restore functions reading pgmemento.row_log, an AS OF function reading a history table).
-- Only the catalog is read: no function is run.
CREATE FUNCTION activity_log._readers(tbl regclass, skip oid[]) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH t AS (
        SELECT c.relname::text AS relname,
               -- the name as a regular expression: a word, quoted or not, maybe schema-qualified
               '(("[^"]+"|[a-z_][a-z0-9_$]*)\s*\.\s*)?"?' || regexp_replace(c.relname, '([^a-zA-Z0-9_])', '\\\1', 'g') || '"?'
                   AS pattern
          FROM pg_class c WHERE c.oid = tbl)
    SELECT string_agg(r.fn, ', ' ORDER BY r.fn)
      FROM (SELECT p.oid::regprocedure::text AS fn
              FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
              JOIN pg_namespace n ON n.oid = p.pronamespace, t
             WHERE l.lanname IN ('sql', 'plpgsql') AND p.prorettype <> 'pg_catalog.trigger'::regtype
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'activity_log')
               AND NOT p.oid = ANY (skip)
               AND strpos(lower(p.prosrc), lower(t.relname)) > 0
               AND regexp_replace(activity_log._source_text(p.prosrc),
                                  '\m(insert\s+into|delete\s+from|truncate(\s+table)?(\s+only)?|drop\s+table(\s+if\s+exists)?)\s+'
                                  || t.pattern || '(?![a-z0-9_$])', ' ', 'gi')
                   ~* ('(?<![a-z0-9_$])' || regexp_replace(t.relname, '([^a-zA-Z0-9_])', '\\\1', 'g') || '(?![a-z0-9_$])')
             ORDER BY 1 LIMIT 3) r
$$;

-- _system_link says why two triggers of one table belong to one system, or NULL: the same
-- function, functions of the same extension, or trails that are the same table or reference
-- each other — by a foreign key, or by a column the other trail holds unique on its own
-- (pgMemento's row_log.event_key and table_event_log.event_key).
CREATE FUNCTION activity_log._system_link(a_fn oid, a_ext oid, a_writes oid[], b_fn oid, b_ext oid, b_writes oid[])
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(CASE
        WHEN a_fn = b_fn THEN format('the same function %s', a_fn::regproc)
        WHEN a_ext = b_ext THEN format('functions of extension %I', (SELECT extname FROM pg_extension WHERE oid = a_ext))
        WHEN a_writes && b_writes THEN format('both write %s', (SELECT min(x::regclass::text) FROM unnest(a_writes) x WHERE x = ANY (b_writes)))
        ELSE (SELECT min(format('%s references %s', c.conrelid::regclass, c.confrelid::regclass))
                FROM pg_constraint c
               WHERE c.contype = 'f'
                 AND ((c.conrelid = ANY (a_writes) AND c.confrelid = ANY (b_writes))
                      OR (c.conrelid = ANY (b_writes) AND c.confrelid = ANY (a_writes))))
    END,
    -- A column of one trail that is the whole of a unique index of the other (not its own key).
    (SELECT min(format('%s.%I refers to %s', ca.attrelid::regclass, ca.attname, i.indrelid::regclass))
      FROM pg_attribute ca
      JOIN pg_index i ON i.indisunique AND i.indnkeyatts = 1 AND i.indrelid <> ca.attrelid
      JOIN pg_attribute cb ON cb.attrelid = i.indrelid AND cb.attnum = i.indkey[0]
                          AND cb.attname = ca.attname AND cb.atttypid = ca.atttypid
     WHERE ca.attnum > 0 AND NOT ca.attisdropped
       AND ((ca.attrelid = ANY (a_writes) AND i.indrelid = ANY (b_writes))
            OR (ca.attrelid = ANY (b_writes) AND i.indrelid = ANY (a_writes)))
       AND NOT EXISTS (SELECT 1 FROM pg_index own
                        WHERE own.indrelid = ca.attrelid AND own.indisunique AND own.indnkeyatts = 1
                          AND own.indkey[0] = ca.attnum)))
$$;

-- migration_plan lists every trigger on a user table with a verdict: audit (copies the
-- changed row into another table: migrate_triggers() takes it over), business (anything
-- else: never touched) or uncertain (reported; migrated only when named). It reads each
-- trigger function's source for the shapes legacy audit triggers have. state is the
-- trigger's ALTER TABLE … ENABLE / DISABLE state: enabled, disabled, replica only, always.
CREATE FUNCTION activity_log._migration_plan(caller_search_path text,
    -- Only the row triggers of this table (how a TRUNCATE companion finds its row trigger).
    rows_of regclass,
    OUT relation regclass, OUT trigger_name name, OUT function regprocedure, OUT fires text,
    OUT verdict text, OUT confidence numeric, OUT style text, OUT audit_table regclass,
    OUT why text, OUT phase integer, OUT state text,
    -- The triggers of this table in one system with this one (itself included), or NULL: they
    -- have one verdict and migrate together (see _system_link).
    OUT system name[])
RETURNS SETOF record
LANGUAGE plpgsql STABLE
-- Pinned like every function here: an unqualified table name in a trigger function resolves
-- through caller_search_path (the caller's, as when the trigger fires; see migration_plan()).
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t          record;
    src        text;
    target     text;
    found      regclass;
    dynamic    boolean;
    guessed    boolean;
    whole_row  boolean;
    row_data   boolean;
    uses_op    boolean;
    generic    boolean;
    image      text;
    side       text[];
    score      numeric;
    own_table  regclass;
    companion  name;
    queue      text;
    plain      boolean;
    flat       text;
    named      boolean;
    callees    oid[];
    writes     regclass[];
    ext        oid;
    concerns   text[];      -- why a row copy is not taken over, though it has no side effect
    readers    text;
    acc        jsonb := '[]';
    e          jsonb;
    mem        jsonb[];
    pos        integer[];
    k          integer;
    label      integer[];
    links      text[];
    changed    boolean;
    comp       integer[];
    reasons    text;
    culprit    jsonb;
    kind       text;
    i          integer;
    l          integer;
BEGIN
    FOR t IN
        SELECT tg.oid, tg.tgrelid, tg.tgname, tg.tgfoid, tg.tgtype::integer AS tgtype, tg.tgenabled,
               tg.tgisinternal, tg.tgconstraint, tg.tgnewtable, tg.tgoldtable,
               c.relnamespace, c.relname, p.prosrc, p.pronamespace, p.proconfig, l.lanname,
               con.conname, con.contype
          FROM pg_catalog.pg_trigger tg
          JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
          JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid
          JOIN pg_catalog.pg_language l ON l.oid = p.prolang
          LEFT JOIN pg_catalog.pg_constraint con ON con.oid = tg.tgconstraint
         WHERE tg.tgparentid = 0  -- a partition's clone follows its parent's trigger
           AND (rows_of IS NULL OR (tg.tgrelid = rows_of AND tg.tgtype & 1 <> 0))
           AND c.relpersistence <> 't'
           AND c.relnamespace::regnamespace::text NOT IN ('information_schema', 'activity_log')
           AND c.relnamespace::regnamespace::text NOT LIKE 'pg\_%'
         ORDER BY c.relnamespace::regnamespace::text, c.relname, tg.tgname
    LOOP
        relation := t.tgrelid;
        trigger_name := t.tgname;
        function := t.tgfoid;
        fires := activity_log._trigger_fires(t.tgtype);
        state := activity_log._trigger_state(t.tgenabled);
        audit_table := NULL;
        writes := '{}';
        ext := NULL;
        SELECT m.phase INTO phase
          FROM activity_log.migration m JOIN activity_log.migration_backup b USING (relid)
         WHERE m.relid = t.tgrelid AND b.trigger_name = t.tgname;

        IF t.tgisinternal OR t.tgconstraint <> 0 THEN
            verdict := 'business';
            confidence := 1.00;
            style := CASE WHEN t.tgisinternal THEN 'internal' ELSE 'constraint' END;
            why := CASE WHEN t.contype = 'f' THEN format('enforces foreign key %I', t.conname)
                        WHEN t.tgisinternal THEN 'internal trigger of PostgreSQL'
                        ELSE format('constraint trigger of %I', t.conname) END;
            acc := acc || jsonb_build_object('relation', relation::oid, 'trigger_name', trigger_name, 'function', function::oid,
                    'fires', fires, 'verdict', verdict, 'confidence', confidence, 'style', style, 'audit_table', audit_table::oid,
                    'why', why, 'phase', phase, 'state', state, 'fn', t.tgfoid, 'ext', ext, 'writes', to_jsonb(writes::oid[]),
                    'member', false);
            CONTINUE;
        END IF;
        IF t.lanname NOT IN ('plpgsql', 'sql') THEN
            IF t.pronamespace = 'pg_catalog'::regnamespace THEN
                verdict := 'business';
                confidence := 0.95;
                style := 'built-in';
                why := format('built-in function %s', t.tgfoid::regproc);
            ELSE
                verdict := 'uncertain';
                confidence := 0.30;
                style := 'unreadable';
                why := format('%s function: its source cannot be read', t.lanname);
            END IF;
            acc := acc || jsonb_build_object('relation', relation::oid, 'trigger_name', trigger_name, 'function', function::oid,
                    'fires', fires, 'verdict', verdict, 'confidence', confidence, 'style', style, 'audit_table', audit_table::oid,
                    'why', why, 'phase', phase, 'state', state, 'fn', t.tgfoid, 'ext', ext, 'writes', to_jsonb(writes::oid[]),
                    'member', false);
            CONTINUE;
        END IF;

        -- The source without comments; the patterns below are case-insensitive.
        src := regexp_replace(regexp_replace(t.prosrc, '/\*.*?\*/', ' ', 'g'), '--[^\n]*', ' ', 'g');

        -- Effects that are not auditing: a trigger with any of them is never taken over.
        side := ARRAY[]::text[];
        -- NEW is written by assignment (NEW.col := …, NEW := …), by SELECT … INTO NEW[.col], or,
        -- in a BEFORE / INSTEAD OF row trigger, by returning anything but NEW, OLD or NULL
        -- (temporal_tables: RETURN jsonb_populate_record(NEW, …)).
        IF src ~* '(;|\mbegin|\mthen|\melse|\mloop)\s*new\s*(\.\s*("[^"]+"|\w+)\s*)?(\[[^]]*\]\s*)?:?='
           OR src ~* '(?<!insert)\s+into\s+(strict\s+)?new\M\s*(\.|,|;|\mfrom\M)'
           OR (t.tgtype & 1 <> 0 AND t.tgtype & (2 | 64) <> 0
               AND src ~* '\mreturn\s+(?!(new|old|null)\s*;|coalesce\s*\(\s*(new|old)\s*,\s*(new|old)\s*\)\s*;)[^;\s][^;]*;') THEN
            side := side || 'modifies NEW'::text;
        END IF;
        -- ELSE RAISE EXCEPTION 'unhandled case' guards a function against misuse; it validates
        -- nothing. Nor does a protocol guard: IF TG_WHEN <> 'AFTER' THEN RAISE EXCEPTION …
        -- END IF, a condition on TG_WHEN / TG_LEVEL / TG_OP alone (2ndQuadrant's audit-trigger).
        IF regexp_replace(regexp_replace(src, '\melse\s+raise\s+exception\s+''[^'']*''[^;]*;', ' ', 'gi'),
                          '\mif\s+(\s|[(),=<>!]|\mtg_(when|level|op)\M|''[^'']*''|\m(not|and|or|in|is|distinct|from)\M)+\mthen\s+'
                          || 'raise\s+exception\s+''[^'']*''[^;]*;\s*(return\s+null\s*;\s*)?end\s+if\s*;', ' ', 'gi')
           ~* '\mraise\s+((exception|sqlstate|using)\M|'')' THEN
            side := side || 'raises errors (validation)'::text;
        -- Only a row trigger skips rows: PostgreSQL ignores a statement trigger's return value.
        ELSIF t.tgtype & 2 <> 0 AND t.tgtype & 1 <> 0 AND src ~* '\mreturn\s+null\M' THEN
            side := side || 'skips rows (returns NULL before the change)'::text;
        END IF;
        IF src ~* '\mpg_notify\s*\(|\mnotify\s+\w' THEN
            side := side || 'sends notifications'::text;
        END IF;
        IF src ~* '\mupdate\s+\S+\s+(\S+\s+)?set\M|\mdelete\s+from\M' THEN
            side := side || 'updates or deletes other rows'::text;
        END IF;

        -- Where it inserts: the first named table that is not the trigger's own.
        FOR target IN
            SELECT m[1] FROM regexp_matches(src,
                'insert\s+into\s+((?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)', 'gi') m
        LOOP
            found := activity_log._resolve_table(regexp_replace(target, '\s', '', 'g'),
                                                 t.relnamespace, t.pronamespace, t.proconfig,
                                                 caller_search_path);
            IF found IS NOT NULL AND found <> t.tgrelid THEN
                audit_table := found;
                EXIT;
            END IF;
        END LOOP;
        -- Every table it writes, itself or through the helpers it calls (pgMemento's log_statement
        -- through pgmemento.log_table_event(), Hasura v2 through hdb_catalog.insert_event_log()).
        callees := activity_log._callees(t.tgfoid);
        writes := array_remove(activity_log._insert_targets(src, t.relnamespace, t.pronamespace, t.proconfig,
                                                            caller_search_path), t.tgrelid::regclass);
        SELECT writes || coalesce(array_agg(ww.tbl ORDER BY c.n, ww.n)
                                  FILTER (WHERE NOT ww.tbl = ANY (writes) AND ww.tbl <> t.tgrelid), '{}')
          INTO writes
          FROM unnest(callees) WITH ORDINALITY c(fn, n)
          JOIN pg_catalog.pg_proc p ON p.oid = c.fn,
               unnest(activity_log._insert_targets(activity_log._source_text(p.prosrc), t.relnamespace, p.pronamespace,
                                                   p.proconfig, caller_search_path)) WITH ORDINALITY ww(tbl, n);
        IF audit_table IS NULL AND NOT (src ~* '\mexecute\M' AND src ~* '''[^'']*insert\s+into') THEN
            audit_table := writes[1];
        END IF;

        -- EXECUTE format('INSERT INTO %I ...', TG_TABLE_NAME || '_audit'): try the usual names.
        dynamic := src ~* '\mexecute\M' AND src ~* '''[^'']*insert\s+into';
        guessed := false;
        IF audit_table IS NULL AND dynamic THEN
            SELECT r INTO audit_table
              FROM unnest(ARRAY[t.relnamespace::regnamespace::text || '.' || quote_ident(t.relname || '_audit'),
                                t.relnamespace::regnamespace::text || '.' || quote_ident(t.relname || '_history'),
                                t.relnamespace::regnamespace::text || '.' || quote_ident(t.relname || '_log'),
                                'audit.' || quote_ident(t.relname)]) WITH ORDINALITY n(name, ord),
                   LATERAL (SELECT pg_catalog.to_regclass(n.name) AS r) x
             WHERE x.r IS NOT NULL
             ORDER BY n.ord LIMIT 1;
            guessed := audit_table IS NOT NULL;
            IF guessed THEN
                writes := writes || audit_table;
            END IF;
        END IF;

        -- Who else reads what it writes: a trail that functions read (pgMemento's restore
        -- functions, an AS OF function over a history table) is not only for people, and would
        -- go stale after the migration.
        concerns := '{}';
        FOR found IN SELECT u.tbl FROM unnest(writes) u(tbl) LOOP
            readers := activity_log._readers(found, callees);
            IF readers IS NOT NULL THEN
                concerns := concerns || format('its table %s is read by %s', found, readers);
            END IF;
        END LOOP;
        -- A function of an extension: the extension's code may read what it writes. When every
        -- function of the extension is SQL or PL/pgSQL, the reads above saw all of it, and its
        -- triggers are judged as one system (supa_audit installed by CREATE EXTENSION).
        SELECT d.refobjid INTO ext
          FROM pg_catalog.pg_depend d
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = t.tgfoid
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e';
        IF ext IS NOT NULL AND EXISTS (
               SELECT 1 FROM pg_catalog.pg_depend d
                 JOIN pg_catalog.pg_proc p ON p.oid = d.objid
                 JOIN pg_catalog.pg_language l ON l.oid = p.prolang
                WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refobjid = ext
                  AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
                  AND l.lanname NOT IN ('sql', 'plpgsql')) THEN
            concerns := concerns || format('its function belongs to extension %I, whose functions in C could read what it writes unseen',
                                           (SELECT x.extname FROM pg_catalog.pg_extension x WHERE x.oid = ext));
        END IF;

        -- A delivery queue (Hasura's hdb_catalog.event_log): the table it writes has the columns
        -- a consumer keeps — delivered, tries, locked, next_retry_at … — that the trigger's own
        -- table does not have (a history table may copy a column of that name). Its rows are
        -- read and acted on by something else: the trigger is never taken over.
        queue := NULL;
        IF audit_table IS NOT NULL THEN
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO queue
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = audit_table AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attname IN ('delivered', 'delivered_at', 'tries', 'retries', 'retry_count', 'attempts',
                                 'next_retry_at', 'retry_at', 'locked', 'locked_at', 'locked_by', 'locked_until',
                                 'processed', 'processed_at', 'dispatched', 'dispatched_at', 'acked', 'acked_at',
                                 'consumed', 'consumed_at', 'published', 'published_at')
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute s
                                WHERE s.attrelid = t.tgrelid AND s.attname = a.attname AND NOT s.attisdropped);
        END IF;

        whole_row := src ~* '\m(to_jsonb|row_to_json|to_json|hstore|row)\s*\(\s*((coalesce|nullif)\s*\(\s*)?(new|old)\M'
                     OR src ~* '\m(new|old)\s*\.\s*\*'
                     OR src ~* '\musing\s+(\w+\s*,\s*)*(new|old)\M'
                     OR t.tgnewtable IS NOT NULL OR t.tgoldtable IS NOT NULL;
        row_data := whole_row OR src ~* '\m(new|old)\s*\.\s*("|[a-z_])';
        uses_op := src ~* '\mtg_op\M';
        generic := src ~* '\mtg_(table_name|relid|table_schema|relname)\M';
        image := CASE WHEN src ~* '\mhstore\s*\(\s*(new|old)\M' THEN 'hstore'
                      WHEN src ~* '\m(to_jsonb|row_to_json|to_json)\s*\(\s*((coalesce|nullif)\s*\(\s*)?(new|old)\M' THEN 'jsonb'
                      WHEN t.tgnewtable IS NOT NULL OR t.tgoldtable IS NOT NULL THEN 'transition table'
                      WHEN whole_row THEN 'row copy'
                      ELSE 'column list' END;

        -- A TRUNCATE companion (supa_audit's audit_t): a statement trigger on TRUNCATE alone
        -- that writes the operation into the trail of an audit row trigger of the same table.
        -- activity_log records TRUNCATE itself, so it migrates with that row trigger.
        companion := NULL;
        IF rows_of IS NULL AND t.tgtype & 1 = 0 AND t.tgtype & 32 <> 0 AND t.tgtype & (4 | 8 | 16) = 0
           AND audit_table IS NOT NULL AND NOT row_data AND side = '{}'
           AND src ~* '\mtg_op\M|''truncate''|''t''' THEN
            own_table := audit_table;
            SELECT p.trigger_name INTO companion
              FROM activity_log._migration_plan(caller_search_path, t.tgrelid) p
             WHERE p.verdict = 'audit' AND p.audit_table = own_table
             ORDER BY p.trigger_name LIMIT 1;
        END IF;

        -- A plain row logger: INSERT … VALUES (NEW.col, …), every column of the row, into a
        -- table no other code reads (no view, no function but trigger functions names it). Its
        -- body says what it is; the table's name is weak evidence then (django-pghistory's
        -- <app>_<model>event tables).
        flat := lower(regexp_replace(src, '\s|"', '', 'g'));
        named := audit_table IS NOT NULL
                 AND audit_table::text ~* '(audit|histor|\mlog|_log|logged|change|journal|version|trail)';
        plain := audit_table IS NOT NULL AND NOT guessed AND row_data AND side = '{}' AND queue IS NULL
                 AND src ~* 'insert\s+into\s+[^;]*?\mvalues\s*\([^;]*\m(new|old)\s*\.'
                 -- it copies the row: every column of the table, as NEW.col or OLD.col
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                  WHERE a.attrelid = t.tgrelid AND a.attnum > 0 AND NOT a.attisdropped
                                    AND strpos(flat, 'new.' || lower(a.attname)) = 0
                                    AND strpos(flat, 'old.' || lower(a.attname)) = 0)
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                   JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
                                  WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass
                                    AND d.refclassid = 'pg_catalog.pg_class'::regclass
                                    AND d.refobjid = audit_table AND r.ev_class <> audit_table)
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                                  WHERE p.prorettype <> 'pg_catalog.trigger'::regtype
                                    AND p.pronamespace <> 'pg_catalog'::regnamespace
                                    AND strpos(lower(p.prosrc),
                                               lower((SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = audit_table))) > 0);

        IF queue IS NOT NULL THEN
            verdict := 'business';
            confidence := 0.90;
            style := 'delivery queue';
            why := format('feeds a delivery queue: %s has %s columns, so something consumes its rows',
                          audit_table, queue);
        ELSIF companion IS NOT NULL THEN
            verdict := 'audit';
            confidence := 0.90;
            style := 'truncate companion';
            why := format('records TRUNCATE into %s, the trail of its row audit trigger %I: migrates with it',
                          audit_table, companion);
        ELSIF audit_table IS NOT NULL AND row_data THEN
            score := 0.55
                     + CASE WHEN named OR plain THEN 0.2 ELSE 0 END
                     + CASE WHEN whole_row THEN 0.1 ELSE 0 END
                     + CASE WHEN uses_op THEN 0.1 ELSE 0 END
                     + CASE WHEN t.tgtype & (2 | 64) = 0 THEN 0.05 ELSE 0 END
                     - CASE WHEN guessed THEN 0.1 ELSE 0 END;
            confidence := least(score, 0.99);
            style := CASE WHEN generic THEN 'generic ' ELSE 'per-table ' END || image || ' audit';
            why := format('copies the changed row (%s) into %s%s%s',
                          CASE image WHEN 'hstore' THEN 'hstore(NEW/OLD)' WHEN 'jsonb' THEN 'as jsonb'
                                     WHEN 'transition table' THEN 'from the transition table'
                                     WHEN 'row copy' THEN 'NEW.* / OLD.*' ELSE 'columns of NEW/OLD' END,
                          audit_table,
                          CASE WHEN uses_op THEN ' with the operation' ELSE '' END,
                          CASE WHEN guessed THEN ' (a dynamic INSERT; the table is guessed from its name)' ELSE '' END)
                   || CASE WHEN plain AND NOT named THEN ', a plain row logger (no other code reads that table)' ELSE '' END;
            IF side <> '{}' THEN
                verdict := 'uncertain';
                why := why || ', but also ' || array_to_string(side, ', ') || ': taking it over would lose that'
                       || CASE WHEN concerns <> '{}' THEN ', and ' || array_to_string(concerns, ', and ') ELSE '' END;
            ELSIF concerns <> '{}' THEN
                verdict := 'uncertain';
                why := why || ', but ' || array_to_string(concerns, ', and ') || ': taking it over would leave that stale';
            ELSIF confidence >= 0.75 THEN
                verdict := 'audit';
            ELSE
                verdict := 'uncertain';
                why := why || ', which does not look like an audit table';
            END IF;
        ELSIF dynamic AND side = '{}' THEN
            verdict := 'uncertain';
            confidence := 0.40;
            style := 'dynamic';
            -- why names the table audit_table holds, if any: the two never contradict each other.
            why := CASE WHEN audit_table IS NULL
                        THEN 'builds its INSERT at run time; the table it writes could not be determined'
                        WHEN guessed
                        THEN format('builds its INSERT at run time, probably into %s (guessed from its name); what it copies could not be determined', audit_table)
                        ELSE format('builds its INSERT into %s at run time; what it copies could not be determined', audit_table) END;
        ELSIF side <> '{}' THEN
            verdict := 'business';
            confidence := 0.90;
            style := array_to_string(side, ', ');
            why := initcap(left(style, 1)) || substr(style, 2)
                   || CASE WHEN audit_table IS NULL THEN '; does not copy the row elsewhere'
                           ELSE format('; writes %s, but not the changed row', audit_table) END;
        ELSE
            verdict := 'business';
            confidence := 0.70;
            style := 'other';
            why := CASE WHEN audit_table IS NULL THEN 'does not copy the changed row into another table'
                        ELSE format('writes %s, but not the changed row', audit_table) END;
        END IF;
        IF verdict = 'business' AND concerns <> '{}' THEN
            why := why || '; ' || array_to_string(concerns, '; ');
        END IF;
        acc := acc || jsonb_build_object('relation', relation::oid, 'trigger_name', trigger_name, 'function', function::oid,
                'fires', fires, 'verdict', verdict, 'confidence', confidence, 'style', style, 'audit_table', audit_table::oid,
                'why', why, 'phase', phase, 'state', state, 'fn', t.tgfoid, 'ext', ext, 'writes', to_jsonb(writes::oid[]),
                'member', true);
    END LOOP;

    -- Systems: the triggers of one table linked by _system_link (transitively) get one verdict
    -- and migrate together. A member that writes a trail of the system but not the row (a
    -- statement logger: pgMemento's log_statement) takes the system's verdict; one business
    -- for its own reasons makes them all business, one uncertain all uncertain.
    FOR found IN SELECT DISTINCT (x->>'relation')::oid::regclass FROM jsonb_array_elements(acc) x
                  WHERE (x->>'member')::boolean LOOP
        SELECT array_agg(q.v ORDER BY q.n), array_agg(q.n::integer ORDER BY q.n) INTO mem, pos
          FROM jsonb_array_elements(acc) WITH ORDINALITY q(v, n)
         WHERE (q.v->>'relation')::oid = found AND (q.v->>'member')::boolean;
        k := cardinality(mem);
        CONTINUE WHEN k < 2;
        links := array_fill(NULL::text, ARRAY[k * k]);
        label := ARRAY(SELECT generate_series(1, k));
        FOR i IN 1..k LOOP
            FOR j IN i + 1..k LOOP
                links[(i - 1) * k + j] := activity_log._system_link(
                    (mem[i]->>'fn')::oid, (mem[i]->>'ext')::oid, ARRAY(SELECT jsonb_array_elements_text(mem[i]->'writes')::oid),
                    (mem[j]->>'fn')::oid, (mem[j]->>'ext')::oid, ARRAY(SELECT jsonb_array_elements_text(mem[j]->'writes')::oid));
            END LOOP;
        END LOOP;
        LOOP
            changed := false;
            FOR i IN 1..k LOOP
                FOR j IN i + 1..k LOOP
                    IF links[(i - 1) * k + j] IS NOT NULL AND label[i] <> label[j] THEN
                        label[i] := least(label[i], label[j]);
                        label[j] := label[i];
                        changed := true;
                    END IF;
                END LOOP;
            END LOOP;
            EXIT WHEN NOT changed;
        END LOOP;
        FOR l IN SELECT DISTINCT u.v FROM unnest(label) u(v) LOOP
            comp := ARRAY(SELECT g.m FROM generate_series(1, k) g(m) WHERE label[g.m] = l);
            CONTINUE WHEN cardinality(comp) < 2
                       OR NOT EXISTS (SELECT 1 FROM unnest(comp) u(m) WHERE mem[u.m]->>'verdict' IN ('audit', 'uncertain'));
            SELECT string_agg(DISTINCT links[(a.m - 1) * k + b.m], '; ') INTO reasons
              FROM unnest(comp) a(m), unnest(comp) b(m) WHERE a.m < b.m;
            -- business for its own reasons (not only because it does not copy the row), else uncertain
            SELECT mem[u.m] INTO culprit FROM unnest(comp) u(m)
             WHERE mem[u.m]->>'verdict' = 'business' AND mem[u.m]->>'style' <> 'other' ORDER BY u.m LIMIT 1;
            kind := CASE WHEN culprit IS NOT NULL THEN 'business' END;
            IF culprit IS NULL THEN
                SELECT mem[u.m] INTO culprit FROM unnest(comp) u(m)
                 WHERE mem[u.m]->>'verdict' = 'uncertain' ORDER BY u.m LIMIT 1;
                kind := CASE WHEN culprit IS NOT NULL THEN 'uncertain' ELSE 'audit' END;
            END IF;
            FOREACH i IN ARRAY comp LOOP
                e := mem[i];
                e := e || jsonb_build_object(
                    'system', (SELECT jsonb_agg(mem[u.m]->>'trigger_name' ORDER BY mem[u.m]->>'trigger_name') FROM unnest(comp) u(m)),
                    'verdict', kind,
                    'confidence', CASE WHEN kind = 'audit' THEN (SELECT min((mem[u.m]->>'confidence')::numeric) FROM unnest(comp) u(m)
                                                                  WHERE mem[u.m]->>'verdict' = 'audit')
                                       ELSE (e->>'confidence')::numeric END,
                    'why', (e->>'why') || format('; one system with %s (%s): %s',
                        (SELECT string_agg(quote_ident(mem[u.m]->>'trigger_name'), ', ' ORDER BY mem[u.m]->>'trigger_name')
                           FROM unnest(comp) u(m) WHERE u.m <> i),
                        reasons,
                        CASE WHEN culprit IS NULL OR e->>'verdict' = kind THEN ''
                             ELSE format('%I is %s, so ', culprit->>'trigger_name', kind) END
                        || CASE kind WHEN 'audit' THEN 'they migrate together'
                                     WHEN 'uncertain' THEN 'they migrate together, when all of them are named'
                                     ELSE 'none of them migrates' END));
                acc := jsonb_set(acc, ARRAY[(pos[i] - 1)::text], e);
            END LOOP;
        END LOOP;
    END LOOP;

    FOR e IN SELECT x FROM jsonb_array_elements(acc) x LOOP
        relation := (e->>'relation')::oid::regclass;
        trigger_name := e->>'trigger_name';
        function := (e->>'function')::oid::regprocedure;
        fires := e->>'fires';
        verdict := e->>'verdict';
        confidence := (e->>'confidence')::numeric;
        style := e->>'style';
        audit_table := (e->>'audit_table')::oid::regclass;
        why := e->>'why';
        phase := (e->>'phase')::integer;
        state := e->>'state';
        system := ARRAY(SELECT jsonb_array_elements_text(e->'system'))::name[];
        IF system = '{}' THEN
            system := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- migration_plan hands the caller's search_path to _migration_plan, which pins its own: a
-- function planted in a schema of the caller's path (public.format(text, regclass) beats
-- pg_catalog's through an implicit cast) must not run with a superuser caller's rights.
CREATE FUNCTION activity_log.migration_plan(
    OUT relation regclass, OUT trigger_name name, OUT function regprocedure, OUT fires text,
    OUT verdict text, OUT confidence numeric, OUT style text, OUT audit_table regclass,
    OUT why text, OUT phase integer, OUT state text)
RETURNS SETOF record
LANGUAGE sql STABLE
AS $$ SELECT p.relation, p.trigger_name, p.function, p.fires, p.verdict, p.confidence, p.style, p.audit_table, p.why,
              p.phase, p.state
         FROM activity_log._migration_plan(pg_catalog.current_setting('search_path'), NULL) p $$;

COMMENT ON FUNCTION activity_log.migration_plan() IS
    'Every trigger on a user table: audit (migrate_triggers takes it over), business (never touched) or uncertain (named explicitly or left alone), with confidence, why, and its state (enabled, disabled, replica only, always).';

-- What the backup keeps of a trigger, schema-qualified whatever the caller's search_path.
CREATE FUNCTION activity_log._trigger_backup(rel regclass, name name,
    OUT definition text, OUT enabled "char", OUT function text, OUT function_source text,
    OUT function_owner regrole)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_get_triggerdef(t.oid), t.tgenabled, t.tgfoid::regprocedure::text, pg_get_functiondef(t.tgfoid),
           p.proowner::regrole
      FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = rel AND t.tgname = name
$$;

-- The table and, when partitioned, all its partitions: a trigger on a partitioned table
-- fires (and logs) under the partition that holds the row.
CREATE FUNCTION activity_log._table_and_partitions(source regclass) RETURNS SETOF oid
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT source::oid UNION SELECT relid::oid FROM pg_partition_tree(source) $$;

-- How to find a source table's rows in a legacy audit table, as SQL over alias "a":
-- "op" (I, U, D or T), "filter" (this table's rows) and "images" (jsonb row images), or a
-- "problem" when its rows cannot be told apart.
CREATE FUNCTION activity_log._legacy_reader(audit regclass, source regclass, dedicated boolean)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    source_columns text[];
    audit_columns  text[];
    op_column      text;
    oid_column     text;
    name_column    text;
    schema_column  text;
    filter         text;
    images         text[];
BEGIN
    SELECT array_agg(attname::text) INTO source_columns
      FROM pg_attribute WHERE attrelid = source AND attnum > 0 AND NOT attisdropped;
    SELECT array_agg(attname::text) INTO audit_columns
      FROM pg_attribute WHERE attrelid = audit AND attnum > 0 AND NOT attisdropped;
    -- The first of the usual names that is not a column copied from the source table.
    SELECT n.name INTO op_column
      FROM unnest(ARRAY['op', 'operation', 'action', 'tg_op', 'dml', 'dml_type', 'action_type',
                        'audit_action', 'change_type', 'operation_type', 'event_type', 'audit_op',
                        'kind', 'type']) WITH ORDINALITY n(name, ord)
     WHERE n.name = ANY (audit_columns) AND NOT n.name = ANY (source_columns)
     ORDER BY n.ord LIMIT 1;
    SELECT n.name INTO oid_column
      FROM unnest(ARRAY['table_oid', 'relid', 'rel_id', 'table_relid', 'tg_relid', 'reloid', 'table_id'])
           WITH ORDINALITY n(name, ord)
      JOIN pg_attribute a ON a.attrelid = audit AND a.attname = n.name AND NOT a.attisdropped
     WHERE a.atttypid IN ('oid'::regtype, 'regclass'::regtype) AND NOT n.name = ANY (source_columns)
     ORDER BY n.ord LIMIT 1;
    SELECT n.name INTO name_column
      FROM unnest(ARRAY['table_name', 'tablename', 'tg_table_name', 'relname', 'tbl', 'table'])
           WITH ORDINALITY n(name, ord)
     WHERE n.name = ANY (audit_columns) AND NOT n.name = ANY (source_columns)
     ORDER BY n.ord LIMIT 1;
    SELECT n.name INTO schema_column
      FROM unnest(ARRAY['schema_name', 'table_schema', 'schemaname', 'tg_table_schema', 'nspname'])
           WITH ORDINALITY n(name, ord)
     WHERE n.name = ANY (audit_columns) AND NOT n.name = ANY (source_columns)
     ORDER BY n.ord LIMIT 1;

    IF oid_column IS NOT NULL THEN
        SELECT format('a.%I::oid IN (%s)', oid_column, string_agg(p.oid::text, ', '))
          INTO filter FROM activity_log._table_and_partitions(source) p(oid);
    ELSIF name_column IS NOT NULL AND schema_column IS NOT NULL THEN
        SELECT format('(a.%I::text, a.%I::text) IN (%s)', schema_column, name_column,
                      string_agg(format('(%L, %L)', n.nspname, c.relname), ', '))
          INTO filter
          FROM activity_log._table_and_partitions(source) p(oid) JOIN pg_class c ON c.oid = p.oid
          JOIN pg_namespace n ON n.oid = c.relnamespace;
    ELSIF name_column IS NOT NULL THEN
        SELECT format('a.%I::text IN (%s)', name_column,
                      string_agg(format('%L, %L', c.relname, n.nspname || '.' || c.relname), ', '))
          INTO filter
          FROM activity_log._table_and_partitions(source) p(oid) JOIN pg_class c ON c.oid = p.oid
          JOIN pg_namespace n ON n.oid = c.relnamespace;
    ELSIF dedicated THEN
        filter := 'true';
    ELSE
        RETURN jsonb_build_object('problem',
            format('%s is written by the audit triggers of several tables and has no table column to tell their rows apart', audit));
    END IF;

    -- Row images: jsonb, json and hstore columns (whatever keys they share with the source
    -- table are compared), and the whole audit row when it carries every source column.
    SELECT coalesce(array_agg(format('a.%I::jsonb', a.attname) ORDER BY a.attnum), '{}') INTO images
      FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
     WHERE a.attrelid = audit AND a.attnum > 0 AND NOT a.attisdropped
       AND NOT a.attname = ANY (source_columns)
       AND (a.atttypid IN ('jsonb'::regtype, 'json'::regtype) OR ty.typname = 'hstore');
    IF source_columns <@ audit_columns THEN
        images := images || 'to_jsonb(a)'::text;
    END IF;

    RETURN jsonb_build_object(
        'op', CASE WHEN op_column IS NULL THEN NULL ELSE format('upper(left(a.%I::text, 1))', op_column) END,
        'filter', filter,
        'images', to_jsonb(images));
END
$$;

-- _checked_reader is `reader` when it is what _legacy_reader derives from the catalog for the
-- audit table and source table, else a problem: its SQL is run as the caller, and a row of
-- migration_backup written by hand must not choose it. Nor may the tables' types run their
-- owners' code (a domain's CHECK, a cast) as the caller while rows are compared.
CREATE FUNCTION activity_log._checked_reader(audit regclass, source regclass, reader jsonb) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN activity_log._runs_user_code(source) OR activity_log._runs_user_code(audit)
                THEN jsonb_build_object('problem', format(
                    '%s or %s is not a table, or has a column whose type is owned by a role that is not a superuser (or has a cast not written in C): comparing their rows would run that role''s code with your rights',
                    source, audit))
                WHEN reader IN (activity_log._legacy_reader(audit, source, true),
                                activity_log._legacy_reader(audit, source, false))
                THEN reader
                ELSE jsonb_build_object('problem', format(
                    'the reader of %s kept in activity_log.migration_backup is not what phase 1 derives from the catalog (the audit table changed, or the row was written by hand)',
                    audit)) END
$$;

-- Rows of a source table in its legacy audit table, by operation.
CREATE FUNCTION activity_log._legacy_counts(audit regclass, reader jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    counts jsonb;
BEGIN
    IF reader ? 'problem' OR activity_log._runs_user_code(audit) THEN
        RETURN NULL;  -- the caller reports why (see _compare)
    END IF;
    EXECUTE format(
        'SELECT jsonb_build_object(''INSERT'', count(*) FILTER (WHERE %1$s = ''I''),
                                   ''UPDATE'', count(*) FILTER (WHERE %1$s = ''U''),
                                   ''DELETE'', count(*) FILTER (WHERE %1$s = ''D''),
                                   ''all'', count(*) FILTER (WHERE %1$s IS DISTINCT FROM ''T''))
           FROM %2$s a WHERE %3$s',
        coalesce(reader->>'op', 'NULL::text'), audit, reader->>'filter')
    INTO counts;
    RETURN counts;
END
$$;


-- x restricted to keys.
CREATE FUNCTION activity_log._pick(x jsonb, keys text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(jsonb_object_agg(k, v), '{}') FROM jsonb_each(x) e(k, v) WHERE k = ANY (keys) $$;

-- Does a legacy row image show a captured change (its new or its old row)? Compared on the
-- table columns the image has, after reading all three back through the table's row type
-- (the caller's job), so hstore text and jsonb values compare alike. NULL: the image says
-- nothing about the table's columns.
CREATE FUNCTION activity_log._same_image(columns text[], raw jsonb, legacy jsonb, new_row jsonb, old_row jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN cardinality(k.keys) > 0 AND legacy IS NOT NULL
                THEN coalesce(activity_log._pick(legacy, k.keys) = activity_log._pick(new_row, k.keys), false)
                  OR coalesce(activity_log._pick(legacy, k.keys) = activity_log._pick(old_row, k.keys), false)
           END
      FROM (SELECT ARRAY(SELECT jsonb_object_keys(raw) WHERE jsonb_typeof(raw) = 'object'
                         INTERSECT SELECT unnest(columns)) AS keys) k
$$;

-- _skipped_updates tells which UPDATEs a legacy audit trigger leaves out of its audit table:
-- NULL when it logs every UPDATE it fires on; else the columns it ignores ('{}': it skips
-- only UPDATEs that change nothing). It recognises a WHEN (OLD.* IS DISTINCT FROM NEW.*)
-- clause, and PL/pgSQL that returns early when NEW equals OLD or when the changed fields are
-- empty (2ndQuadrant's audit-trigger: changed_fields = hstore('') or '{}'::jsonb, after
-- taking out the columns TG_ARGV[1]::text[] names).
CREATE FUNCTION activity_log._skipped_updates(trigger oid) RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t       record;
    src     text;
    args    bytea;
    ignored text[] := '{}';
BEGIN
    SELECT tg.tgnargs, tg.tgargs, pg_get_triggerdef(tg.oid) AS def, p.prosrc, l.lanname
      INTO t
      FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid JOIN pg_language l ON l.oid = p.prolang
     WHERE tg.oid = trigger AND tg.tgtype & 16 <> 0;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF t.def ~ ' FOR EACH ROW WHEN \(\((old\.\* IS DISTINCT FROM new\.\*|new\.\* IS DISTINCT FROM old\.\*)\)\) EXECUTE ' THEN
        RETURN '{}';
    END IF;
    IF t.lanname <> 'plpgsql' THEN
        RETURN NULL;
    END IF;
    src := regexp_replace(regexp_replace(t.prosrc, '/\*.*?\*/', ' ', 'g'), '--[^\n]*', ' ', 'g');
    IF NOT (src ~* '=\s*(hstore\s*\(\s*''''\s*\)|''''\s*::\s*hstore|''\{\}''\s*::\s*jsonb)\s*then\s+return\M'
            OR src ~* '\mif\s+[(\s]*(row\s*\(\s*|to_jsonb\s*\(\s*)?(new|old)(\s*\.\s*\*)?[\s)]*(is\s+not\s+distinct\s+from|=)[\s(]*(row\s*\(\s*|to_jsonb\s*\(\s*)?(new|old)(\s*\.\s*\*)?[\s)]*then\s+return\M') THEN
        RETURN NULL;
    END IF;
    -- audit-trigger's ignored columns: its second argument, a text[] literal.
    IF t.tgnargs >= 2 AND src ~* '\mtg_argv\s*\[\s*1\s*\]\s*::\s*text\s*\[\s*\]' THEN
        args := substr(t.tgargs, position('\x00'::bytea IN t.tgargs) + 1);
        BEGIN
            ignored := array_remove(convert_from(substr(args, 1, position('\x00'::bytea IN args) - 1),
                                                 getdatabaseencoding())::text[], NULL);
        EXCEPTION WHEN OTHERS THEN
            ignored := '{}';  -- not a text[]: the trigger fails on it as well
        END;
    END IF;
    RETURN ignored;
END
$$;

-- The dual-capture comparison of one table: per legacy audit table, its rows for the table
-- since phase 1 against activity_log's records of the same transactions, by operation, plus
-- up to 5 captured changes looked up by row image. window_end is the snapshot both sides
-- were read in.
--
-- What the audit triggers should have written depends on them: only the operations of the
-- triggers that fired in ordinary sessions (enabled, or always) at phase 1 or since count,
-- and UPDATEs a trigger skips (see _skipped_updates) do not. status says what came of it:
--   verified        the rows match: phase 2 moves the table;
--   differs         they do not: phase 2 refuses the table (unless force);
--   cannot compare  no comparison is possible (see difference): phase 2 refuses it too;
--   disabled        its audit triggers are disabled: they write nothing, so phase 2 moves
--                   the table without a comparison;
--   idle            no changes in the window: phase 2 leaves the table in phase 1 (unless
--                   include_idle).
-- note says what was not counted, and which triggers were enabled, disabled or dropped
-- during the window.
CREATE FUNCTION activity_log._compare(rel regclass,
    OUT window_end pg_snapshot, OUT audit_table regclass, OUT legacy jsonb, OUT captured jsonb,
    OUT samples integer, OUT samples_matched integer, OUT matches boolean, OUT difference text,
    OUT status text, OUT unchanged_updates bigint, OUT note text)
RETURNS SETOF record
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m          activity_log.migration;
    b          record;
    t          record;
    now_counts jsonb;
    by_op      boolean;
    columns    text[];
    excluded   text[];
    checks     text[];
    first_miss bigint;
    ops        text[];     -- the operations the audit triggers write (enabled at phase 1 or since)
    off        text[];     -- triggers that write nothing: disabled
    replica    text[];     -- triggers that fire only with session_replication_role = replica
    skippers   text[];     -- triggers that skip some UPDATEs ...
    ignored    text[];     -- ... those that change no column but these
    logs_all   boolean;    -- a trigger logs every UPDATE
    ambiguous  boolean;    -- activity_log does not record every column such a trigger looks at
    writers    integer;    -- triggers that write INSERTs, UPDATEs or DELETEs
    fired_then boolean;
    fired_now  boolean;
    changed    boolean;    -- a trigger was enabled, disabled or dropped during the window
    notes      text[];
    left_out   text[];     -- what the expected counts leave out, and why
    expect     bigint[];   -- INSERT, UPDATE, DELETE, all; then the most UPDATEs and all
    got        bigint[];
BEGIN
    SELECT * INTO m FROM activity_log.migration WHERE relid = rel;
    -- One statement, one snapshot: the legacy rows counted are those of the transactions
    -- visible in window_end (a STABLE function reads with its caller's snapshot).
    SELECT pg_current_snapshot(), jsonb_object_agg(x.audit_table::oid::text, activity_log._legacy_counts(x.audit_table, x.legacy_reader))
      INTO window_end, now_counts
      FROM (SELECT DISTINCT ON (y.audit_table) y.audit_table,
                   activity_log._checked_reader(y.audit_table, rel, y.legacy_reader) AS legacy_reader
              FROM activity_log.migration_backup y WHERE y.relid = rel AND y.audit_table IS NOT NULL) x;
    -- Every transaction visible in window_end has reserved its records in the ring already.
    IF NOT activity_log.flush('30 seconds') THEN
        RAISE EXCEPTION 'the activity_log writer did not store the captured records within 30 seconds'
            USING ERRCODE = 'lock_not_available', HINT = 'See SELECT * FROM activity_log.workers.';
    END IF;
    SELECT jsonb_build_object('INSERT', count(*) FILTER (WHERE e.command = 'INSERT'),
                              'UPDATE', count(*) FILTER (WHERE e.command = 'UPDATE'),
                              'DELETE', count(*) FILTER (WHERE e.command = 'DELETE'),
                              'all', count(*))
      INTO captured
      FROM activity_log.events e
     WHERE e.kind = 'change' AND e.table_oid = rel::oid AND e.id > m.trail_from
       AND NOT pg_visible_in_snapshot(e.xid, m.dual_start) AND pg_visible_in_snapshot(e.xid, window_end);
    SELECT coalesce((SELECT exclude_columns FROM activity_log.tracked_tables WHERE relid = rel), '{}') INTO excluded;
    SELECT array_agg(attname::text) INTO columns
      FROM pg_attribute
     WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped AND NOT attname = ANY (excluded);

    FOR b IN SELECT DISTINCT ON (x.audit_table) x.audit_table,
                    CASE WHEN x.audit_table IS NULL THEN x.legacy_reader
                         ELSE activity_log._checked_reader(x.audit_table, rel, x.legacy_reader) END AS legacy_reader,
                    x.legacy_baseline
               FROM activity_log.migration_backup x
              WHERE x.relid = rel
              ORDER BY x.audit_table
    LOOP
        audit_table := b.audit_table;
        legacy := NULL;
        samples := 0;
        samples_matched := 0;
        status := NULL;
        unchanged_updates := NULL;
        difference := NULL;

        -- The triggers that write this audit table: what they fire on, and whether they fired
        -- in ordinary sessions at phase 1 (the backup's state) and now. All of them disabled
        -- now: the table's legacy trail has stopped already, and phase 2 has nothing to
        -- compare nor to switch off. A trigger dropped since counts as the INSERT, UPDATE and
        -- DELETE trigger it was, and is compared.
        ops := '{}'; off := '{}'; replica := '{}'; skippers := '{}'; ignored := NULL;
        logs_all := false; notes := '{}'; left_out := '{}'; writers := 0;
        FOR t IN SELECT k.trigger_name, k.enabled AS enabled_then, tg.oid AS tgoid, tg.tgenabled AS enabled_now,
                        CASE WHEN tg.oid IS NULL THEN ARRAY['INSERT', 'UPDATE', 'DELETE']
                             ELSE array_remove(ARRAY[CASE WHEN tg.tgtype & 4 <> 0 THEN 'INSERT' END,
                                                     CASE WHEN tg.tgtype & 16 <> 0 THEN 'UPDATE' END,
                                                     CASE WHEN tg.tgtype & 8 <> 0 THEN 'DELETE' END], NULL) END AS fires
                   FROM activity_log.migration_backup k
                   LEFT JOIN pg_trigger tg ON tg.tgrelid = rel AND tg.tgname = k.trigger_name
                  WHERE k.relid = rel AND k.audit_table IS NOT DISTINCT FROM b.audit_table
                  ORDER BY k.trigger_name
        LOOP
            CONTINUE WHEN t.fires = '{}';  -- TRUNCATE only: its rows are not compared
            writers := writers + 1;
            fired_then := t.enabled_then IN ('O', 'A');
            fired_now := coalesce(t.enabled_now IN ('O', 'A'), false);
            IF t.enabled_now = 'R' THEN
                replica := replica || quote_ident(t.trigger_name);
            ELSIF t.enabled_now = 'D' THEN
                off := off || quote_ident(t.trigger_name);
            END IF;
            IF fired_then OR fired_now THEN
                ops := ops || t.fires;
                IF 'UPDATE' = ANY (t.fires) THEN
                    IF activity_log._skipped_updates(t.tgoid) IS NULL THEN
                        logs_all := true;
                    ELSE
                        skippers := skippers || quote_ident(t.trigger_name);
                        ignored := CASE WHEN ignored IS NULL THEN activity_log._skipped_updates(t.tgoid)
                                        ELSE ARRAY(SELECT unnest(ignored) INTERSECT SELECT unnest(activity_log._skipped_updates(t.tgoid)) ORDER BY 1) END;
                    END IF;
                END IF;
            END IF;
            IF fired_then <> fired_now THEN
                notes := notes || format('audit trigger %I was %s during the dual-capture window', t.trigger_name,
                                         CASE WHEN t.tgoid IS NULL THEN 'dropped' WHEN fired_now THEN 'enabled' ELSE 'disabled' END);
            END IF;
        END LOOP;
        IF logs_all THEN
            skippers := '{}';
        END IF;
        changed := notes <> '{}';

        IF replica <> '{}' THEN
            difference := format('audit trigger %s fires only for changes made with session_replication_role = replica (ENABLE REPLICA), as logical replication applies them: its rows cannot be compared with the changes activity_log captures',
                                 array_to_string(replica, ', '));
        ELSIF writers > 0 AND cardinality(off) = writers THEN
            status := 'disabled';
            notes := ARRAY[CASE WHEN NOT changed
                                THEN format('audit trigger%s %s %s disabled: %s nothing, so there is nothing to compare',
                                            CASE WHEN cardinality(off) > 1 THEN 's' ELSE '' END, array_to_string(off, ', '),
                                            CASE WHEN cardinality(off) > 1 THEN 'are' ELSE 'is' END,
                                            CASE WHEN cardinality(off) > 1 THEN 'they write' ELSE 'it writes' END)
                                ELSE format('%s: %s nothing now, so there is nothing to compare', array_to_string(notes, '; '),
                                            CASE WHEN cardinality(off) > 1 THEN 'they write' ELSE 'it writes' END) END];
        ELSIF b.audit_table IS NULL THEN
            difference := 'the table its audit trigger writes is not known: nothing to compare';
        ELSE
            difference := b.legacy_reader->>'problem';
        END IF;

        IF difference IS NULL THEN
            SELECT jsonb_object_agg(k, (now_counts->(b.audit_table::oid::text)->>k)::bigint - (b.legacy_baseline->>k)::bigint)
              INTO legacy FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'all']) k;
            by_op := b.legacy_reader->>'op' IS NOT NULL;
            IF NOT by_op THEN
                legacy := jsonb_build_object('all', legacy->'all');
            END IF;
        END IF;
        IF status = 'disabled' AND NOT changed AND (legacy->>'all')::bigint > 0 THEN
            notes := notes || format('yet %s has %s of its rows from the window: it was enabled for part of it',
                                     b.audit_table, legacy->>'all');
        END IF;

        IF difference IS NULL AND status IS NULL THEN
            -- What the legacy rows should count: the captured changes of the operations the
            -- triggers write, less the UPDATEs they skip. Where activity_log leaves out a column
            -- such a trigger looks at (exclude_columns), an UPDATE that changed no other column
            -- may or may not be in the audit table: the count may be anywhere in between.
            IF skippers <> '{}' THEN
                SELECT count(*) INTO unchanged_updates
                  FROM activity_log.events e
                 WHERE e.kind = 'change' AND e.table_oid = rel::oid AND e.id > m.trail_from
                   AND NOT pg_visible_in_snapshot(e.xid, m.dual_start) AND pg_visible_in_snapshot(e.xid, window_end)
                   AND e.command = 'UPDATE' AND coalesce(e.changed_columns, '{}') <@ ignored;
            END IF;
            ambiguous := skippers <> '{}' AND NOT excluded <@ ignored;
            SELECT array_agg(CASE WHEN o = ANY (ops) THEN (captured->>o)::bigint ELSE 0 END ORDER BY n)
              INTO expect FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) WITH ORDINALITY x(o, n);
            expect[2] := expect[2] - coalesce(unchanged_updates, 0);
            expect := expect || (expect[1] + expect[2] + expect[3])
                             || (expect[2] + CASE WHEN ambiguous THEN unchanged_updates ELSE 0 END);
            expect := expect || (expect[4] + expect[5] - expect[2]);
            IF unchanged_updates > 0 AND ambiguous THEN
                left_out := left_out || format('%s %s changed no column activity_log records%s: audit trigger%s %s %s them only if they changed %s, which activity_log leaves out',
                    unchanged_updates, CASE WHEN unchanged_updates = 1 THEN 'UPDATE' ELSE 'UPDATEs' END,
                    CASE WHEN ignored = '{}' THEN '' ELSE ' but ' || array_to_string(ignored, ', ') END,
                    CASE WHEN cardinality(skippers) > 1 THEN 's' ELSE '' END, array_to_string(skippers, ', '),
                    CASE WHEN cardinality(skippers) > 1 THEN 'log' ELSE 'logs' END,
                    array_to_string(ARRAY(SELECT unnest(excluded) EXCEPT SELECT unnest(ignored) ORDER BY 1), ', '));
            ELSIF unchanged_updates > 0 THEN
                left_out := left_out || format('%s %s that changed %s %s not counted: audit trigger%s %s %s those',
                    unchanged_updates, CASE WHEN unchanged_updates = 1 THEN 'UPDATE' ELSE 'UPDATEs' END,
                    CASE WHEN ignored = '{}' THEN 'nothing' ELSE 'no column but ' || array_to_string(ignored, ', ') END,
                    CASE WHEN unchanged_updates = 1 THEN 'is' ELSE 'are' END,
                    CASE WHEN cardinality(skippers) > 1 THEN 's' ELSE '' END, array_to_string(skippers, ', '),
                    CASE WHEN cardinality(skippers) > 1 THEN 'skip' ELSE 'skips' END);
            END IF;
            SELECT left_out || array_agg(format('%s %s %s not counted: no enabled audit trigger writes %ss to %s',
                                                (captured->>o)::bigint, CASE WHEN (captured->>o)::bigint = 1 THEN o ELSE o || 's' END,
                                                CASE WHEN (captured->>o)::bigint = 1 THEN 'is' ELSE 'are' END, o, b.audit_table) ORDER BY n)
              INTO left_out
              FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) WITH ORDINALITY x(o, n)
             WHERE NOT o = ANY (ops) AND (captured->>o)::bigint > 0;

            SELECT array_agg(format('activity_log._same_image(%L, %s, %s, %s, %s)', columns, img,
                                    format('CASE WHEN jsonb_typeof(%1$s) = ''object'' THEN to_jsonb(jsonb_populate_record(NULL::%2$s, %1$s)) END', img, rel),
                                    format('to_jsonb(jsonb_populate_record(NULL::%s, e.new_row))', rel),
                                    format('to_jsonb(jsonb_populate_record(NULL::%s, e.old_row))', rel)))
              INTO checks
              FROM jsonb_array_elements_text(b.legacy_reader->'images') img;
            BEGIN
                -- The legacy row is looked for among the rows its transaction wrote first (xmin:
                -- cheap), then anywhere (a trigger that ran in a subtransaction has its xmin).
                -- Only changes the triggers write are looked for.
                EXECUTE format(
                    'SELECT count(*)::int, (count(*) FILTER (WHERE found))::int, min(id) FILTER (WHERE NOT found)
                       FROM (SELECT e.id,
                                    CASE WHEN EXISTS (SELECT 1 FROM %1$s a WHERE %2$s AND %3$s AND %4$s
                                                         AND a.xmin = (e.xid::text::bigint %% 4294967296)::text::xid)
                                         THEN true
                                         ELSE EXISTS (SELECT 1 FROM %1$s a WHERE %2$s AND %3$s AND %4$s) END AS found
                               FROM activity_log.events e
                              WHERE e.kind = ''change'' AND e.table_oid = $1 AND e.id > $2
                                AND NOT pg_visible_in_snapshot(e.xid, $3) AND pg_visible_in_snapshot(e.xid, $4)
                                AND e.command = ANY ($5)
                                AND NOT (e.command = ''UPDATE'' AND $6 AND coalesce(e.changed_columns, ''{}'') <@ $7)
                              ORDER BY e.id DESC LIMIT 5) s',
                    b.audit_table, b.legacy_reader->>'filter',
                    CASE WHEN by_op THEN (b.legacy_reader->>'op') || ' = left(e.command, 1)' ELSE 'true' END,
                    CASE WHEN checks IS NULL THEN 'true'
                         ELSE format('(SELECT bool_and(v) AND count(v) > 0 FROM unnest(ARRAY[%s]) v)', array_to_string(checks, ', ')) END)
                INTO samples, samples_matched, first_miss
                USING rel::oid, m.trail_from, m.dual_start, window_end, ops, skippers <> '{}', coalesce(ignored, '{}');
            EXCEPTION WHEN OTHERS THEN
                difference := 'row images could not be compared: ' || SQLERRM;
            END;
        END IF;
        IF difference IS NULL AND status IS NULL THEN
            got := ARRAY[(legacy->>'INSERT')::bigint, (legacy->>'UPDATE')::bigint, (legacy->>'DELETE')::bigint, (legacy->>'all')::bigint];
            IF coalesce(CASE WHEN by_op THEN got[1] <> expect[1] OR got[3] <> expect[3] OR got[2] NOT BETWEEN expect[2] AND expect[5]
                             ELSE got[4] NOT BETWEEN expect[4] AND expect[6] END, true) THEN
                status := 'differs';
                difference := CASE WHEN by_op
                    THEN format('%s has %s inserts, %s updates, %s deletes; activity_log %s, %s, %s',
                                b.audit_table, legacy->'INSERT', legacy->'UPDATE', legacy->'DELETE', expect[1],
                                CASE WHEN expect[5] > expect[2] THEN expect[2] || ' to ' || expect[5] ELSE expect[2]::text END, expect[3])
                    ELSE format('%s has %s rows; activity_log %s changes', b.audit_table, legacy->'all',
                                CASE WHEN expect[6] > expect[4] THEN expect[4] || ' to ' || expect[6] ELSE expect[4]::text END) END
                    || CASE WHEN left_out = '{}' THEN '' ELSE ' (' || array_to_string(left_out, '; ') || ')' END;
            ELSIF got[4] = 0 THEN
                status := 'idle';
                notes := ARRAY['no changes in the dual-capture window yet'] || notes;
            ELSIF samples_matched < samples THEN
                status := 'differs';
                difference := format('trail record %s has no matching row image in %s', first_miss, b.audit_table);
            ELSE
                status := 'verified';
            END IF;
        END IF;
        IF difference IS NOT NULL AND status IS NULL THEN
            status := 'cannot compare';
        END IF;
        IF status <> 'differs' THEN
            notes := notes || left_out;
        END IF;
        matches := CASE status WHEN 'verified' THEN true WHEN 'differs' THEN false WHEN 'cannot compare' THEN false END;
        note := nullif(array_to_string(notes, '; '), '');
        RETURN NEXT;
    END LOOP;
END
$$;

-- _compare's rows as one jsonb array: what phase 2 keeps and migration_status() shows.
CREATE FUNCTION activity_log._comparison(rel regclass) RETURNS jsonb
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.audit_table::text), '[]') FROM activity_log._compare(rel) c $$;

CREATE FUNCTION activity_log.migration_status(
    OUT relation regclass, OUT phase integer, OUT since timestamptz, OUT audit_table regclass,
    OUT legacy_inserts bigint, OUT legacy_updates bigint, OUT legacy_deletes bigint,
    OUT captured_inserts bigint, OUT captured_updates bigint, OUT captured_deletes bigint,
    OUT samples integer, OUT samples_matched integer, OUT matches boolean, OUT difference text,
    OUT status text, OUT captured_unchanged_updates bigint, OUT note text)
RETURNS SETOF record
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m          activity_log.migration;
    comparison jsonb;
BEGIN
    FOR m IN SELECT * FROM activity_log.migration ORDER BY relid::text LOOP
        -- After phase 2 the window is closed: report the comparison phase 2 made.
        comparison := CASE WHEN m.phase = 1 THEN activity_log._comparison(m.relid) ELSE m.validation END;
        RETURN QUERY
        SELECT m.relid, m.phase, m.phase1_at, c.audit_table,
               (c.legacy->>'INSERT')::bigint, (c.legacy->>'UPDATE')::bigint, (c.legacy->>'DELETE')::bigint,
               (c.captured->>'INSERT')::bigint, (c.captured->>'UPDATE')::bigint, (c.captured->>'DELETE')::bigint,
               c.samples, c.samples_matched, c.matches, c.difference, c.status, c.unchanged_updates, c.note
          FROM jsonb_to_recordset(comparison) AS c(audit_table regclass, legacy jsonb, captured jsonb,
                                                 samples integer, samples_matched integer, matches boolean,
                                                 difference text, status text, unchanged_updates bigint, note text);
    END LOOP;
END
$$;

COMMENT ON FUNCTION activity_log.migration_status() IS
    'Per migrating table and legacy audit table: rows the legacy triggers wrote since phase 1 against the changes activity_log captured in the same transactions, by operation, and row images of up to 5 of them; status verified, differs, cannot compare, disabled or idle, and a note on what was not counted.';

-- Runs one statement of a migration step, or only shows it (dry run): both return the same.
CREATE FUNCTION activity_log._step(statement text, dry_run boolean) RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT dry_run THEN
        EXECUTE statement;
    END IF;
    RETURN statement;
END
$$;

-- Every table named must be in the migration (phases 2, 3 and the rollback continue it).
CREATE FUNCTION activity_log._require_migrating(tables regclass[], hint text) RETURNS void
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN SELECT x FROM unnest(tables) x
                WHERE NOT EXISTS (SELECT 1 FROM activity_log.migration m WHERE m.relid = x)
    LOOP
        RAISE EXCEPTION 'table % is not being migrated', rel USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = hint;
    END LOOP;
END
$$;

-- migrate_triggers moves tables from their legacy audit triggers to activity_log:
-- phase 1 tracks them (both capture), phase 2 disables the triggers where the comparison
-- matches (or the triggers were disabled already; a table without changes in the window
-- stays in phase 1 unless include_idle), phase 3 drops them. Returns the statements it ran
-- (with dry_run: would run).
CREATE FUNCTION activity_log._migrate_triggers(
    phase integer, tables regclass[], include_triggers name[], force boolean, dry_run boolean,
    include_idle boolean, caller_search_path text)
RETURNS SETOF text
LANGUAGE plpgsql
-- Pinned; the plan resolves the tables trigger functions name through caller_search_path.
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    rel        regclass;
    t          record;
    plan       jsonb;
    chosen     jsonb;
    snap       pg_snapshot;
    trail_from bigint;
    comparison jsonb;
    refused    text[] := '{}';
    problems   text[];
    idle       boolean;
    selected   regclass[];
    moving     regclass[] := '{}';
    names      text;
BEGIN
    IF phase IS NULL OR include_triggers IS NULL OR force IS NULL OR dry_run IS NULL THEN
        RAISE EXCEPTION 'phase, include_triggers, force and dry_run must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF include_idle IS NULL THEN
        RAISE EXCEPTION 'include_idle must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF phase NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'phase must be 1, 2 or 3, not %', phase USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Phase 1 starts capturing next to the triggers, 2 disables them, 3 drops them.';
    END IF;
    IF array_position(tables, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'tables must not contain null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT dry_run AND current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'migrate_triggers must run at READ COMMITTED, not %', upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'invalid_transaction_state',
            HINT = 'The switch-over must see the writes that finished while it waited for the table lock.';
    END IF;

    IF phase = 1 THEN
        -- The plan once (it reads every trigger function's source): everything below uses it.
        SELECT jsonb_agg(jsonb_build_object('relation', p.relation::oid, 'trigger_name', p.trigger_name,
                                            'verdict', p.verdict, 'style', p.style, 'audit_table', p.audit_table::oid,
                                            'system', p.system))
          INTO plan FROM activity_log._migration_plan(caller_search_path, NULL) p;
        SELECT string_agg(quote_ident(n), ', ') INTO names
          FROM unnest(include_triggers) n
         WHERE NOT EXISTS (SELECT 1 FROM jsonb_to_recordset(plan) p(relation oid, trigger_name name, verdict text, style text, audit_table oid)
                            WHERE p.trigger_name = n AND (tables IS NULL OR p.relation::regclass = ANY (tables)));
        IF names IS NOT NULL THEN
            RAISE EXCEPTION 'trigger % does not exist%', names,
                CASE WHEN tables IS NULL THEN '' ELSE ' on the tables given' END
                USING ERRCODE = 'undefined_object', HINT = 'SELECT * FROM activity_log.migration_plan() lists every trigger.';
        END IF;
        FOR t IN SELECT * FROM jsonb_to_recordset(plan) p(relation oid, trigger_name name, verdict text, style text, audit_table oid)
                  WHERE p.trigger_name = ANY (include_triggers) AND p.verdict = 'business'
                    AND (tables IS NULL OR p.relation::regclass = ANY (tables))
        LOOP
            RAISE EXCEPTION 'trigger % on % is a business trigger (%), not an audit trigger', quote_ident(t.trigger_name), t.relation::regclass, t.style
                USING ERRCODE = 'wrong_object_type', HINT = 'activity_log never takes over business triggers.';
        END LOOP;
        -- The triggers of one system migrate together: naming some of an uncertain system is not enough.
        FOR t IN SELECT p.relation, p.trigger_name, p.system
                   FROM jsonb_to_recordset(plan) p(relation oid, trigger_name name, verdict text, system name[])
                  WHERE p.trigger_name = ANY (include_triggers) AND p.verdict = 'uncertain'
                    AND NOT p.system <@ include_triggers
                    AND (tables IS NULL OR p.relation::regclass = ANY (tables))
        LOOP
            RAISE EXCEPTION 'trigger % on % is one system with %: they migrate together or not at all',
                quote_ident(t.trigger_name), t.relation::regclass,
                (SELECT string_agg(quote_ident(n), ', ') FROM unnest(t.system) n WHERE n <> t.trigger_name)
                USING ERRCODE = 'invalid_parameter_value',
                HINT = format('Name them all: include_triggers => %L.', t.system);
        END LOOP;
        SELECT jsonb_agg(to_jsonb(p) ORDER BY p.relation, p.trigger_name)
          INTO chosen
          FROM jsonb_to_recordset(plan) p(relation oid, trigger_name name, verdict text, style text, audit_table oid)
         WHERE (p.verdict = 'audit' OR (p.verdict = 'uncertain' AND p.trigger_name = ANY (include_triggers)))
           AND (tables IS NULL OR p.relation::regclass = ANY (tables))
           AND NOT EXISTS (SELECT 1 FROM activity_log.migration m WHERE m.relid::oid = p.relation);
        FOR rel IN SELECT x FROM unnest(tables) x
                    WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(chosen) c WHERE (c->>'relation')::oid = x)
                      AND NOT EXISTS (SELECT 1 FROM activity_log.migration m WHERE m.relid = x)
        LOOP
            RAISE EXCEPTION 'table % has no audit trigger to migrate', rel USING ERRCODE = 'undefined_object',
                HINT = 'SELECT * FROM activity_log.migration_plan() shows its triggers and why; name an uncertain one with include_triggers.';
        END LOOP;
        SELECT array_agg(DISTINCT (c->>'relation')::oid::regclass) INTO selected FROM jsonb_array_elements(chosen) c;
        IF selected IS NULL THEN
            RAISE NOTICE 'no audit triggers left to migrate';
            RETURN;
        END IF;
        FOREACH rel IN ARRAY selected LOOP
            RETURN NEXT activity_log._step(format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', rel), dry_run);
        END LOOP;
        IF NOT dry_run THEN
            -- Taken holding the locks: every write to these tables that is not in this
            -- snapshot will run after this phase commits, with both captures in place.
            snap := pg_current_snapshot();
            SELECT coalesce(max(id), 0) INTO trail_from FROM activity_log.events;
        END IF;
        FOREACH rel IN ARRAY selected LOOP
            IF NOT dry_run THEN
                INSERT INTO activity_log.migration (relid, phase, tracked_before, dual_start, trail_from)
                VALUES (rel, 1, EXISTS (SELECT 1 FROM activity_log.tracked_tables WHERE relid = rel), snap, trail_from);
                FOR t IN SELECT c.trigger_name, c.verdict, c.audit_table::regclass AS audit_table,
                                -- Only this table's triggers write the audit table: every row in it is this table's.
                                c.audit_table IS NOT NULL AND NOT EXISTS (
                                    SELECT 1 FROM jsonb_to_recordset(plan) p(relation oid, trigger_name name, verdict text, style text, audit_table oid)
                                     WHERE p.audit_table = c.audit_table AND p.relation <> rel::oid
                                    UNION ALL
                                    SELECT 1 FROM activity_log.migration_backup b
                                     WHERE b.audit_table = c.audit_table::regclass AND b.relid <> rel) AS dedicated
                           FROM jsonb_to_recordset(chosen) c(relation oid, trigger_name name, verdict text, audit_table oid)
                          WHERE c.relation = rel::oid
                LOOP
                    INSERT INTO activity_log.migration_backup
                        (relid, trigger_name, definition, enabled, function, function_source, function_owner,
                         verdict, audit_table, legacy_reader)
                    SELECT rel, t.trigger_name, k.definition, k.enabled, k.function, k.function_source,
                           k.function_owner, t.verdict,
                           t.audit_table,
                           CASE WHEN t.audit_table IS NULL THEN '{}'
                                ELSE activity_log._legacy_reader(t.audit_table, rel, t.dedicated) END
                      FROM activity_log._trigger_backup(rel, t.trigger_name) k;
                END LOOP;
                UPDATE activity_log.migration_backup b
                   SET legacy_baseline = activity_log._legacy_counts(b.audit_table, b.legacy_reader)
                 WHERE b.relid = rel AND b.audit_table IS NOT NULL;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM activity_log.tracked_tables WHERE relid = rel) THEN
                RETURN NEXT activity_log._step(format('SELECT activity_log.track(%L)', rel), dry_run);
            END IF;
        END LOOP;
        RETURN;
    END IF;

    -- Phases 2 and 3 continue tables that the previous phase moved.
    PERFORM activity_log._require_migrating(tables, 'Start with SELECT activity_log.migrate_triggers(phase => 1).');
    SELECT array_agg(m.relid ORDER BY m.relid::oid) INTO selected
      FROM activity_log.migration m
     WHERE m.phase = phase - 1 AND (tables IS NULL OR m.relid = ANY (tables));
    FOR rel IN SELECT m.relid FROM activity_log.migration m
                WHERE m.phase < phase - 1 AND (tables IS NULL OR m.relid = ANY (tables))
    LOOP
        IF tables IS NULL AND selected IS NOT NULL THEN
            RAISE NOTICE 'table % stays in phase 1: phase 3 needs phase 2 first', rel;
        ELSE
            RAISE EXCEPTION 'phase 3 needs phase 2 first: the audit triggers of % are still enabled', rel
                USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Run SELECT activity_log.migrate_triggers(phase => 2) first.';
        END IF;
    END LOOP;
    IF selected IS NULL THEN
        IF EXISTS (SELECT 1 FROM activity_log.migration m WHERE tables IS NULL OR m.relid = ANY (tables)) THEN
            RAISE NOTICE 'phase % is done already', phase;
            RETURN;
        END IF;
        RAISE EXCEPTION 'phase % needs phase 1 first: no table is being migrated', phase
            USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Start with SELECT activity_log.migrate_triggers(phase => 1).';
    END IF;

    IF phase = 2 THEN
        FOREACH rel IN ARRAY selected LOOP
            RETURN NEXT activity_log._step(format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', rel), dry_run);
        END LOOP;
        -- Verified and disabled tables move; a table that differs refuses the phase (force
        -- moves it); an idle one stays in phase 1 (include_idle or force moves it).
        FOREACH rel IN ARRAY selected LOOP
            comparison := activity_log._comparison(rel);
            SELECT coalesce(array_agg(format('%s: %s', rel, c->>'difference')) FILTER (WHERE c->>'status' IN ('differs', 'cannot compare')), '{}'),
                   coalesce(bool_or(c->>'status' = 'idle'), false)
              INTO problems, idle
              FROM jsonb_array_elements(comparison) c;
            refused := refused || problems;
            IF problems = '{}' AND idle AND NOT include_idle AND NOT force THEN
                RAISE NOTICE 'table % stays in phase 1: no changes in the dual-capture window yet', rel
                    USING HINT = 'Phase 2 moves it once its audit trigger and activity_log have both recorded changes to it; include_idle => true moves it without that comparison.';
                CONTINUE;
            END IF;
            moving := moving || rel;
            IF NOT dry_run THEN
                UPDATE activity_log.migration
                   SET phase = 2, validation = comparison, phase2_at = now(),
                       forced = problems <> '{}' OR (idle AND NOT include_idle)
                 WHERE relid = rel;
            END IF;
        END LOOP;
        IF refused <> '{}' AND NOT force THEN
            RAISE EXCEPTION 'phase 2 refused: the dual capture does not match the legacy audit rows'
                USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = array_to_string(refused, E'\n'),
                HINT = 'See SELECT * FROM activity_log.migration_status(); pass force => true to disable the triggers anyway, or tables => to move the others.';
        END IF;
        selected := moving;
    END IF;

    FOREACH rel IN ARRAY selected LOOP
        FOR t IN SELECT b.trigger_name FROM activity_log.migration_backup b WHERE b.relid = rel ORDER BY b.trigger_name LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = rel AND tgname = t.trigger_name) THEN
                RAISE NOTICE 'trigger % on % was dropped outside the migration; skipping it (rollback_migration() recreates it from the backup)',
                    quote_ident(t.trigger_name), rel;
                CONTINUE;
            END IF;
            RETURN NEXT activity_log._step(
                CASE phase WHEN 2 THEN format('ALTER TABLE %s DISABLE TRIGGER %I', rel, t.trigger_name)
                           ELSE format('DROP TRIGGER %I ON %s', t.trigger_name, rel) END,
                dry_run);
        END LOOP;
        IF phase = 3 AND NOT dry_run THEN
            UPDATE activity_log.migration SET phase = 3, phase3_at = now() WHERE relid = rel;
            UPDATE activity_log.migration_backup SET dropped_at = now() WHERE relid = rel;
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION activity_log.migrate_triggers(
    phase integer, tables regclass[] DEFAULT NULL, include_triggers name[] DEFAULT '{}',
    force boolean DEFAULT false, dry_run boolean DEFAULT false, include_idle boolean DEFAULT false)
RETURNS SETOF text
LANGUAGE sql
AS $$ SELECT * FROM activity_log._migrate_triggers(phase, tables, include_triggers, force, dry_run, include_idle,
                                                  pg_catalog.current_setting('search_path')) $$;

COMMENT ON FUNCTION activity_log.migrate_triggers(integer, regclass[], name[], boolean, boolean, boolean) IS
    'Phase 1: track the tables of the legacy audit triggers (both capture); 2: disable the triggers where migration_status() is verified or disabled (include_idle: also where the window saw no changes); 3: drop them (backed up). Returns the statements; dry_run only shows them.';

-- rollback_migration puts the legacy triggers back as they were before phase 1 (definition,
-- enabled state, and the function when it was dropped since) and stops the tracking phase 1
-- started. Returns the statements it ran (with dry_run: would run).
CREATE FUNCTION activity_log.rollback_migration(tables regclass[] DEFAULT NULL, dry_run boolean DEFAULT false)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mig       activity_log.migration;
    bk        activity_log.migration_backup;
    enabled   "char";
    recreated text[] := '{}';
BEGIN
    IF dry_run IS NULL THEN
        RAISE EXCEPTION 'dry_run must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF array_position(tables, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'tables must not contain null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM activity_log._require_migrating(tables, 'SELECT * FROM activity_log.migration lists the tables being migrated.');
    IF NOT EXISTS (SELECT 1 FROM activity_log.migration WHERE tables IS NULL OR relid = ANY (tables)) THEN
        RAISE NOTICE 'nothing to roll back: no table is being migrated';
        RETURN;
    END IF;
    FOR mig IN SELECT * FROM activity_log.migration
              WHERE tables IS NULL OR relid = ANY (tables) ORDER BY relid::oid
    LOOP
        RETURN NEXT activity_log._step(format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', mig.relid), dry_run);
    END LOOP;
    FOR mig IN SELECT * FROM activity_log.migration WHERE tables IS NULL OR relid = ANY (tables) ORDER BY relid::oid LOOP
        FOR bk IN SELECT * FROM activity_log.migration_backup x WHERE x.relid = mig.relid ORDER BY x.trigger_name LOOP
            SELECT tgenabled INTO enabled FROM pg_catalog.pg_trigger WHERE tgrelid = mig.relid AND tgname = bk.trigger_name;
            IF NOT FOUND THEN
                -- Kept SQL runs as the role that kept it, the function as its owner (see
                -- _run_as): a row of migration_backup written by hand can do no more than
                -- its writer could, whoever rolls back and whoever owns the table by then.
                IF pg_catalog.to_regprocedure(bk.function) IS NULL AND NOT bk.function = ANY (recreated) THEN
                    IF NOT dry_run THEN
                        PERFORM activity_log._run_as(bk.function_owner, bk.function_source);
                    END IF;
                    RETURN NEXT bk.function_source;
                    recreated := recreated || bk.function;
                END IF;
                IF NOT dry_run THEN
                    PERFORM activity_log._run_as(bk.kept_by, bk.definition);
                END IF;
                RETURN NEXT bk.definition;
                enabled := 'O';  -- as CREATE TRIGGER makes it
            END IF;
            IF enabled <> bk.enabled THEN
                RETURN NEXT activity_log._step(format('ALTER TABLE %s %s TRIGGER %I', mig.relid,
                    CASE bk.enabled WHEN 'D' THEN 'DISABLE' WHEN 'A' THEN 'ENABLE ALWAYS'
                                   WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'ENABLE' END,
                    bk.trigger_name), dry_run);
            END IF;
        END LOOP;
        -- After the triggers are back (same transaction, table locked): no write falls between.
        IF NOT mig.tracked_before AND EXISTS (SELECT 1 FROM activity_log.tracked_tables WHERE relid = mig.relid) THEN
            RETURN NEXT activity_log._step(format('SELECT activity_log.untrack(%L)', mig.relid), dry_run);
        END IF;
        IF NOT dry_run THEN
            DELETE FROM activity_log.migration WHERE relid = mig.relid;
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION activity_log.rollback_migration(regclass[], boolean) IS
    'Restores the legacy triggers of migrating tables (all, or tables) exactly as they were before phase 1, and stops the tracking phase 1 started. Returns the statements; dry_run only shows them.';

-- Internals: _step runs whatever it is given, the readers run SQL built from their arguments.
REVOKE EXECUTE ON FUNCTION activity_log._step(text, boolean), activity_log._legacy_counts(regclass, jsonb),
    activity_log._legacy_reader(regclass, regclass, boolean), activity_log._compare(regclass),
    activity_log._comparison(regclass), activity_log._resolve_table(text, oid, oid, text[], text),
    activity_log._trigger_backup(regclass, name), activity_log._skipped_updates(oid) FROM PUBLIC;
