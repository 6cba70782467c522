-- activity_log 0.1.0 -> 0.2.0 (ALTER EXTENSION activity_log UPDATE). Every SQL-level difference
-- between the 0.1.0 install script (sql/releases/activity_log--0.1.0.sql, generated from v0.1.0)
-- and this version's: after it, the catalog of an updated database equals a fresh install's,
-- object for object (tests/upgrade.rs compares them and names what differs).
--
-- The library is replaced (and the server restarted) before this runs: it touches only SQL
-- objects. The trail, the tracking, the staged queue and the migration's state are kept.
\echo Use "ALTER EXTENSION activity_log UPDATE TO '0.2.0'" to load this file. \quit

-- Trigger migration (issue 27): the plan reads helper functions, the readers of a trail and
-- extensions, and groups a table's triggers into systems that migrate together.

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

-- _migration_plan gains OUT system name[]: its result type changes, so it is dropped and made
-- again (nothing depends on it in the catalog: its callers are SQL and PL/pgSQL bodies).
DROP FUNCTION activity_log._migration_plan(text, regclass);

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
CREATE OR REPLACE FUNCTION activity_log.migration_plan(
    OUT relation regclass, OUT trigger_name name, OUT function regprocedure, OUT fires text,
    OUT verdict text, OUT confidence numeric, OUT style text, OUT audit_table regclass,
    OUT why text, OUT phase integer, OUT state text)
RETURNS SETOF record
LANGUAGE sql STABLE
AS $$ SELECT p.relation, p.trigger_name, p.function, p.fires, p.verdict, p.confidence, p.style, p.audit_table, p.why,
              p.phase, p.state
         FROM activity_log._migration_plan(pg_catalog.current_setting('search_path'), NULL) p $$;


-- migrate_triggers moves tables from their legacy audit triggers to activity_log:
-- phase 1 tracks them (both capture), phase 2 disables the triggers where the comparison
-- matches (or the triggers were disabled already; a table without changes in the window
-- stays in phase 1 unless include_idle), phase 3 drops them. Returns the statements it ran
-- (with dry_run: would run).
CREATE OR REPLACE FUNCTION activity_log._migrate_triggers(
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

-- Privileges as the install script gives them (sql/finalize.sql): internal functions are not
-- PUBLIC's; the migration's helpers are activity_log_admin's.
REVOKE EXECUTE ON FUNCTION activity_log._source_text(text), activity_log._insert_targets(text, oid, oid, text[], text),
    activity_log._callees(oid), activity_log._readers(regclass, oid[]),
    activity_log._system_link(oid, oid, oid[], oid, oid, oid[]), activity_log._migration_plan(text, regclass)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION activity_log._migration_plan(text, regclass), activity_log._source_text(text),
    activity_log._insert_targets(text, oid, oid, text[], text), activity_log._callees(oid),
    activity_log._readers(regclass, oid[]), activity_log._system_link(oid, oid, oid[], oid, oid, oid[])
    TO activity_log_admin;
