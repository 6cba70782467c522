-- activity_log 0.1.0 -> 0.2.0 (ALTER EXTENSION activity_log UPDATE). Every SQL-level difference
-- between the 0.1.0 install script (sql/releases/activity_log--0.1.0.sql, generated from v0.1.0)
-- and this version's: after it, the catalog of an updated database equals a fresh install's,
-- object for object (tests/upgrade.rs compares them and names what differs).
--
-- The library is replaced (and the server restarted) before this runs: it touches only SQL
-- objects. The trail, the tracking, the staged queue and the migration's state are kept.
\echo Use "ALTER EXTENSION activity_log UPDATE TO '0.2.0'" to load this file. \quit

-- Trigger migration (issue 27): the plan reads helper functions, the readers of a trail and
-- extensions, and groups a table's triggers into systems that migrate together; a function
-- body passes an allow-list (_body_effects), search_path values are split as PostgreSQL does
-- (_path_schemas, _regclass: _resolve_table changes); bodies are read once as PostgreSQL's
-- scanner reads them (_lex, _source_text), and code run without a call written name(…) counts
-- (_call_names' keywords and attributes, operators, _domain_checks, the WHEN clause).

-- to_regclass() that never fails: NULL for a name that names no table or cannot be a name at
-- all. One trigger function with a strange search_path must not stop the plan (issue 27, F6).
CREATE FUNCTION activity_log._regclass(name text) RETURNS regclass
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN pg_catalog.to_regclass(name);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

-- The schemas of a search_path value, in order, each quoted ready to qualify a name: split as
-- PostgreSQL splits it ('"a,b", mal2' is two schemas, the first with a comma in its name;
-- unquoted names fold to lower case), $user read as the session user.
CREATE FUNCTION activity_log._path_schemas(path text) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(quote_ident(CASE WHEN x.s = '$user' THEN session_user::text ELSE x.s END) ORDER BY x.n), '{}')
      FROM (SELECT CASE WHEN m[1] LIKE '"%' THEN replace(substr(m[1], 2, length(m[1]) - 2), '""', '"')
                        ELSE lower(m[1]) END AS s, n
              FROM regexp_matches(coalesce(path, ''), '("(?:[^"]|"")*"|[^",[:space:]]+)', 'g') WITH ORDINALITY r(m, n)) x
     WHERE x.s <> ''
$$;

-- The table an INSERT INTO in a trigger function means: a qualified name as written; else the
-- function's pinned search_path, the caller's (caller_search_path: this function's own is
-- pinned), the table's schema, the function's schema. NULL when none is a table.
CREATE OR REPLACE FUNCTION activity_log._resolve_table(name text, table_schema oid, function_schema oid,
                                            function_config text[], caller_search_path text)
RETURNS regclass
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
DECLARE
    schema text;
    found  regclass;
BEGIN
    IF name ~ '^("[^"]+"|[^".]+)\.' THEN
        RETURN activity_log._regclass(name);
    END IF;
    FOR schema IN
        SELECT s FROM unnest(function_config) c, unnest(activity_log._path_schemas(substr(c, 13))) WITH ORDINALITY x(s, n)
         WHERE c LIKE 'search_path=%'
         ORDER BY x.n
    LOOP
        found := activity_log._regclass(schema || '.' || name);
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END LOOP;
    FOR schema IN
        SELECT x.s FROM unnest(ARRAY['pg_temp'] || activity_log._path_schemas(caller_search_path)) WITH ORDINALITY AS x(s, n)
         ORDER BY x.n
    LOOP
        found := activity_log._regclass(schema || '.' || name);
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END LOOP;
    RETURN coalesce(activity_log._regclass(table_schema::regnamespace::text || '.' || name),
                    activity_log._regclass(function_schema::regnamespace::text || '.' || name));
END
$$;

-- _lex reads a function body once, left to right, as PostgreSQL's scanner does (issue 27, second
-- review, F1): -- comments to the end of the line, /* */ comments nested, '…' with '', E'…' with
-- backslash escapes, U&'…', $tag$…$tag$, "identifiers" with "" and U&"…". A comment that opens
-- inside a string is no comment, a quote inside a comment or a dollar-quoted string opens
-- nothing. code is src with each comment blanked (its newlines kept); masked is code with each
-- string (of any kind, its prefix included) written '' around x's, and each quoted identifier's
-- characters other than letters, digits, _, $ and space written _ (a ; or a quote in a name
-- splits or opens nothing); both are as long as src, so a position in one is the same in the
-- others. lits holds each string's text, in order. unclosed says what the scanner could not
-- close (PostgreSQL stores such a body when check_function_bodies is off, as pg_restore loads
-- functions), else NULL: code and masked then keep the rest as it is.
CREATE FUNCTION activity_log._lex(src text, OUT code text, OUT masked text, OUT lits text[], OUT unclosed text)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
DECLARE
    total  integer;
    pos    integer := 1;
    win    text;        -- a window of src from pos (one character before it as context)
    wlen   integer;
    ctx    integer;
    width  integer := 256;
    at_end boolean;
    hit    integer;
    p      integer;
    depth  integer;
    rest   text;
    tok    text;
    m      text[];
    chunks text[];      -- src in pieces of 1024 characters: a window is cut from one or two
    k      integer;     -- (substr() from the start of a long text walks every character before)
    h      integer;
    q      integer;
    op     text;
    cparts text[] := '{}';
    mparts text[] := '{}';
BEGIN
    IF src IS NULL THEN
        RETURN;
    END IF;
    lits := '{}';
    total := length(src);
    -- Bounded (issue 27, third review, F8): every caller of the plan reads every trigger body.
    IF total > 65536 THEN
        code := src;
        masked := src;
        unclosed := format('more than 65536 characters (%s): too long to analyse', total);
        RETURN;
    END IF;
    chunks := ARRAY(SELECT substr(src, x, 1024) FROM generate_series(1, total, 1024) x ORDER BY x);
    LOOP
        -- Each step reads a window from pos, not the rest of the body: a search or a match over
        -- the whole rest per string would make a body of many short strings cost its length
        -- squared (third review, F8). A window too short for the next token is widened.
        ctx := CASE WHEN pos > 1 THEN 1 ELSE 0 END;
        win := '';
        FOR k IN (pos - ctx - 1) / 1024 + 1 .. least((pos + width - 2) / 1024 + 1, cardinality(chunks)) LOOP
            win := win || chunks[k];
        END LOOP;
        win := substr(win, (pos - ctx - 1) % 1024 + 1, width + ctx);
        wlen := length(win);
        at_end := pos + width > total;
        -- the next place something opens: a comment, a string or a quoted identifier (a prefix
        -- E, U& or a dollar quote only where no identifier goes on: abe'…' is abe then '…').
        -- Identifier letters are PostgreSQL's: every character beyond ASCII is one (F3). Found
        -- with strpos(): regexp_instr() finds every match of its pattern in the window.
        hit := 0;
        p := 1 + ctx;
        LOOP
            h := NULL;
            FOREACH op IN ARRAY ARRAY['--', '/*', '''', '"', '$'] LOOP
                q := strpos(substr(win, p), op);
                IF q > 0 AND (h IS NULL OR p + q - 1 < h) THEN
                    h := p + q - 1;
                END IF;
            END LOOP;
            EXIT WHEN h IS NULL;
            op := substr(win, h, 1);
            IF op = '$' THEN
                IF (h > 1 AND substr(win, h - 1, 1) ~ '[A-Za-z0-9_$\x80-\U0010ffff]')
                   OR substr(win, h) !~ '^\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$' THEN
                    p := h + 1;  -- $1, x$y: no dollar quote
                    CONTINUE;
                END IF;
            ELSIF op = '''' AND h - 1 > ctx AND substr(win, h - 1, 1) IN ('e', 'E')
                  AND (h - 2 < 1 OR substr(win, h - 2, 1) !~ '[A-Za-z0-9_$\x80-\U0010ffff]') THEN
                h := h - 1;
            ELSIF op IN ('''', '"') AND h - 2 > ctx AND substr(win, h - 2, 2) IN ('u&', 'U&')
                  AND (h - 3 < 1 OR substr(win, h - 3, 1) !~ '[A-Za-z0-9_$\x80-\U0010ffff]') THEN
                h := h - 2;
            END IF;
            hit := h;
            EXIT;
        END LOOP;
        IF hit = 0 THEN
            IF NOT at_end THEN
                width := width * 4;
                CONTINUE;
            END IF;
            cparts := cparts || substr(win, 1 + ctx);
            mparts := mparts || substr(win, 1 + ctx);
            EXIT;
        END IF;
        rest := substr(win, hit);
        tok := NULL;
        IF rest LIKE '--%' THEN
            p := strpos(rest, E'\n');
            tok := CASE WHEN p = 0 THEN rest ELSE left(rest, p - 1) END;
        ELSIF rest LIKE '/*%' THEN
            depth := 1;
            p := 3;
            WHILE depth > 0 LOOP
                p := regexp_instr(rest, '/\*|\*/', p);
                EXIT WHEN p = 0;
                depth := depth + CASE WHEN substr(rest, p, 2) = '/*' THEN 1 ELSE -1 END;
                p := p + 2;
            END LOOP;
            IF depth > 0 THEN
                unclosed := format('an unterminated comment (/* at character %s)', pos + hit - 1 - ctx);
            ELSE
                tok := left(rest, p - 1);
            END IF;
        ELSIF rest LIKE '$%' THEN
            m := regexp_match(rest, '^(\$[^$]*\$)');
            p := strpos(substr(rest, length(m[1]) + 1), m[1]);
            IF p = 0 THEN
                unclosed := format('an unterminated dollar-quoted string (%s at character %s)', m[1], pos + hit - 1 - ctx);
            ELSE
                tok := left(rest, 2 * length(m[1]) + p - 1);
            END IF;
        ELSIF rest ~ '^[eE]''' THEN
            m := regexp_match(rest, '^[eE]''((?:[^''\\]|\\.|'''')*)''');
            IF m IS NULL THEN
                unclosed := format('an unterminated quoted string (E'' at character %s)', pos + hit - 1 - ctx);
            ELSE
                tok := 'E''' || m[1] || '''';
            END IF;
        ELSIF rest ~ '^([uU]&)?''' THEN
            m := regexp_match(rest, '^((?:[uU]&)?)''((?:[^'']|'''')*)''');
            IF m IS NULL THEN
                unclosed := format('an unterminated quoted string ('' at character %s)', pos + hit - 1 - ctx);
            ELSE
                tok := m[1] || '''' || m[2] || '''';
            END IF;
        ELSE
            m := regexp_match(rest, '^((?:[uU]&)?)"((?:[^"]|"")*)"');
            IF m IS NULL THEN
                unclosed := format('an unterminated quoted identifier (" at character %s)', pos + hit - 1 - ctx);
            ELSE
                tok := m[1] || '"' || m[2] || '"';
            END IF;
        END IF;
        -- A token is read only when the window holds it and the character after it, and that
        -- character does not go on with it ('' or "": the match fell back to a shorter string
        -- for want of the rest; a line comment ends at a newline): else the window is widened
        -- and read again.
        IF NOT at_end AND (unclosed IS NOT NULL OR hit + length(tok) - 1 >= wlen
                           OR (rest !~ '^(--|/\*|\$)' AND substr(win, hit + length(tok), 1) = right(tok, 1))) THEN
            unclosed := NULL;
            width := width * 4;
            CONTINUE;
        END IF;
        cparts := cparts || substr(win, 1 + ctx, hit - 1 - ctx);
        mparts := mparts || substr(win, 1 + ctx, hit - 1 - ctx);
        IF unclosed IS NOT NULL THEN
            cparts := cparts || rest || substr(src, pos + wlen - ctx);
            mparts := mparts || rest || substr(src, pos + wlen - ctx);
            EXIT;
        END IF;
        IF rest LIKE '--%' OR rest LIKE '/*%' THEN
            cparts := cparts || regexp_replace(tok, '[^\n]', ' ', 'g');
            mparts := mparts || regexp_replace(tok, '[^\n]', ' ', 'g');
        ELSIF rest ~ '^([uU]&)?"' THEN
            cparts := cparts || tok;
            mparts := mparts || (m[1] || '"' || regexp_replace(m[2], '[^A-Za-z0-9_$ ]', '_', 'g') || '"');
        ELSE
            -- a string: its text stays in code; masked has '' around x's
            IF rest LIKE '$%' THEN
                lits := lits || substr(tok, length(m[1]) + 1, length(tok) - 2 * length(m[1]));
            ELSIF rest ~ '^[eE]''' THEN
                lits := lits || regexp_replace(replace(m[1], '''''', ''''), '\\(.)', '\1', 'g');
            ELSE
                lits := lits || replace(m[2], '''''', '''');
            END IF;
            cparts := cparts || tok;
            mparts := mparts || ('''' || repeat('x', length(tok) - 2) || '''');
        END IF;
        pos := pos + (hit - 1 - ctx) + length(tok);
        width := 256;
        IF pos > total THEN
            EXIT;
        END IF;
    END LOOP;
    code := array_to_string(cparts, '');
    masked := array_to_string(mparts, '');
    -- PostgreSQL's identifiers take every character beyond ASCII as a letter (compté(…),
    -- audit.change€, AS €$q$): the plan's patterns read ASCII names only, so such a name or
    -- operator outside strings and comments makes the body unreadable (third review, F3, F17,
    -- F18) rather than misread.
    IF unclosed IS NULL AND masked ~ '[\x80-\U0010ffff]' THEN
        unclosed := format('a name or operator with characters beyond ASCII (%s at character %s)',
                           substring(masked FROM '[\x80-\U0010ffff]'), strpos(masked, substring(masked FROM '[\x80-\U0010ffff]')));
    END IF;
END
$$;

-- A function's source without comments (the plan's patterns must not match a comment), read by
-- _lex. A body _lex cannot read to its end is an error: the caller (the plan, for one trigger)
-- reports the trigger as unanalysable instead of judging what it can see of it.
CREATE FUNCTION activity_log._source_text(src text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    l record;
BEGIN
    l := activity_log._lex(src);
    IF l.unclosed IS NOT NULL THEN
        RAISE EXCEPTION 'a function body has %, so it cannot be read as PostgreSQL reads it', l.unclosed
            USING ERRCODE = 'syntax_error';
    END IF;
    RETURN l.code;
END
$$;

-- The tables a function body inserts into (INSERT INTO as written, also inside a format
-- string), in the order they appear, resolved like the trigger's own (see _resolve_table).
CREATE FUNCTION activity_log._insert_targets(src text, table_schema oid, function_schema oid,
                                             function_config text[], caller_search_path text)
RETURNS regclass[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
BEGIN
    RETURN (SELECT coalesce(array_agg(x.found ORDER BY x.first), '{}')
      FROM (SELECT r.found, min(m.n) AS first
              FROM regexp_matches(src,
                       'insert\s+into\s+((?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)', 'gi')
                   WITH ORDINALITY m(v, n),
                   LATERAL (SELECT activity_log._resolve_table(regexp_replace(m.v[1], '\s', '', 'g'), table_schema,
                                                               function_schema, function_config, caller_search_path) AS found) r
             WHERE r.found IS NOT NULL
             GROUP BY r.found) x);
END
$$;

-- The helper functions a trigger function calls, and the ones they call (two levels): calls
-- written schema.function(…) to SQL or PL/pgSQL functions that are not trigger functions
-- (pgMemento's log_statement writes its logs through pgmemento.log_table_event(), which calls
-- pgmemento.log_transaction()). Read from pg_proc only: nothing is run. A body _lex cannot read
-- to its end is read as it is (more calls found, not fewer): _body_effects refuses the
-- trigger's own and its helpers' anyway.
CREATE FUNCTION activity_log._callees(fn oid) RETURNS oid[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
DECLARE
    found    oid[] := '{}';
    frontier oid[] := ARRAY[fn];
    next     oid[];
BEGIN
    FOR depth IN 1..2 LOOP
        SELECT coalesce(array_agg(DISTINCT p.oid), '{}') INTO next
          FROM pg_proc f,
               regexp_matches((activity_log._lex(f.prosrc)).code,
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

-- The functions a statement of a function body calls, as (schema or NULL, name, how): how is
-- 'call' for every name( that is not a keyword, a type with a modifier (numeric(10,2),
-- ::varchar(20)), the table and column list of an INSERT INTO, nor an alias with column names
-- (AS x(a, b)); 'keyword' for a keyword or construct written name( (filter(…), coalesce(…)),
-- which calls a function only when a user function has that name (issue 27, second review,
-- F10); 'attribute' for a .name not followed by ( — (NEW).bump is bump(NEW) when a function
-- bump takes the row (functional notation). String literals must be masked already (see _lex).
CREATE FUNCTION activity_log._call_names(stmt text, OUT schema_name text, OUT function_name text, OUT how text)
RETURNS SETOF record
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
BEGIN
    RETURN QUERY
    SELECT CASE WHEN m[1] IS NULL THEN NULL WHEN m[1] LIKE '"%' THEN replace(substr(m[1], 2, length(m[1]) - 2), '""', '"')
                ELSE lower(m[1]) END,
           CASE WHEN m[2] LIKE '"%' THEN replace(substr(m[2], 2, length(m[2]) - 2), '""', '"') ELSE lower(m[2]) END,
           CASE WHEN m[1] IS NOT NULL OR lower(m[2]) <> ALL (ARRAY[
            'if', 'elsif', 'elseif', 'when', 'then', 'else', 'and', 'or', 'not', 'in', 'any', 'all', 'some', 'exists',
            'values', 'row', 'array', 'cast', 'coalesce', 'nullif', 'greatest', 'least', 'return', 'select', 'perform',
            'from', 'where', 'as', 'on', 'join', 'using', 'filter', 'over', 'group', 'by', 'is', 'distinct', 'like',
            'ilike', 'similar', 'between', 'case', 'into', 'table', 'lateral', 'extract', 'position', 'trim', 'overlay',
            'substring', 'xmlelement', 'xmlforest', 'xmlconcat', 'xmlparse', 'xmlpi', 'xmlroot', 'xmlserialize',
            'xmlexists', 'xmlattributes', 'xmltable', 'grouping', 'with', 'union', 'intersect', 'except', 'conflict',
            'do', 'set', 'returning', 'limit', 'offset', 'having', 'order', 'window', 'partition', 'range', 'rows',
            'interval', 'varying', 'decimal', 'dec', 'float', 'numeric', 'char', 'character', 'varchar', 'timestamp',
            'time', 'bit', 'nchar', 'execute', 'raise', 'exit', 'continue', 'while', 'loop', 'for', 'foreach', 'assert',
            'exception', 'collate', 'only', 'within', 'escape', 'insert', 'update', 'delete', 'new', 'old', 'recursive',
            'precision', 'default', 'strict', 'of', 'to', 'at', 'zone', 'normalize', 'treat', 'all', 'unnest_', 'begin', 'end']) THEN 'call' ELSE 'keyword' END
      FROM regexp_matches(
               regexp_replace(regexp_replace(regexp_replace(' ' || stmt,
                   '\minsert\s+into\s+(?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?(?:\s+as\s+[a-z_][a-z0-9_$]*)?\s*(?:\(\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*,\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))*\s*\))?',
                   ' insert ', 'gi'),
                   '(::\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?(?:\s+varying)?)\s*\((?=\s*[0-9]+\s*(?:,\s*[0-9]+\s*)?\))', '\1 #(', 'gi'),
                   '\mas\s+(?:"[^"]+"|[a-z_][a-z0-9_$]*)\s*\(', 'as #(', 'gi'),
               '(?:[^a-z0-9_$."]|^)(?:("[^"]+"|[a-z_][a-z0-9_$]*)\s*\.\s*)?("[^"]+"|[a-z_][a-z0-9_$]*)\s*\(', 'gi') m
    -- db.schema.f(…): PostgreSQL takes it for schema.f(…) of the current database (third review, F5)
    UNION ALL
    SELECT CASE WHEN m[1] LIKE '"%' THEN replace(substr(m[1], 2, length(m[1]) - 2), '""', '"') ELSE lower(m[1]) END,
           CASE WHEN m[2] LIKE '"%' THEN replace(substr(m[2], 2, length(m[2]) - 2), '""', '"') ELSE lower(m[2]) END,
           'call'
      FROM regexp_matches(stmt, '(?:"[^"]+"|[a-z_][a-z0-9_$]*)\s*\.\s*("[^"]+"|[a-z_][a-z0-9_$]*)\s*\.\s*("[^"]+"|[a-z_][a-z0-9_$]*)\s*\(', 'gi') m
    UNION ALL
    SELECT NULL, CASE WHEN m[1] LIKE '"%' THEN replace(substr(m[1], 2, length(m[1]) - 2), '""', '"') ELSE lower(m[1]) END,
           'attribute'
      FROM regexp_matches(stmt, '\.\s*("[^"]+"|[a-z_][a-z0-9_$]*)(?![a-z0-9_$])(?!\s*\()', 'gi') m;
END
$$;

-- The volatile built-in functions an audit trigger may call: they read clocks, make ids and
-- take sequence numbers; they change nothing anyone reads.
CREATE FUNCTION activity_log._harmless_volatile() RETURNS name[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['clock_timestamp', 'timeofday', 'current_query', 'random', 'gen_random_uuid', 'uuid_generate_v1',
                   'uuid_generate_v1mc', 'uuid_generate_v4', 'nextval', 'currval', 'lastval']::name[] $$;

-- _domain_checks names the domains among types (a domain over a domain too) whose check or
-- default calls a user function that is not immutable, or a volatile built-in other than
-- _harmless_volatile(): a variable declared with such a domain, a value cast to it or passed as
-- an argument of it runs that code (issue 27, second review, F10). NULL when none does.
CREATE FUNCTION activity_log._domain_checks(types oid[]) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE d(top, oid) AS (
        SELECT t.oid, t.oid FROM pg_type t WHERE t.oid = ANY (types) AND t.typtype = 'd'
        UNION
        SELECT d.top, t.typbasetype FROM d JOIN pg_type t ON t.oid = d.oid WHERE t.typtype = 'd'
    )
    SELECT string_agg(DISTINCT format('domain %s, whose %s calls %s', x.top::regtype, x.what, p.oid::regprocedure), ', ')
      FROM (SELECT d.top, 'check' AS what, dep.refobjid
              FROM d JOIN pg_constraint c ON c.contypid = d.oid
              JOIN pg_depend dep ON dep.classid = 'pg_catalog.pg_constraint'::regclass AND dep.objid = c.oid
                                AND dep.refclassid = 'pg_catalog.pg_proc'::regclass
            UNION ALL
            SELECT d.top, 'default', dep.refobjid
              FROM d JOIN pg_depend dep ON dep.classid = 'pg_catalog.pg_type'::regclass AND dep.objid = d.oid
                                       AND dep.refclassid = 'pg_catalog.pg_proc'::regclass) x
      JOIN pg_proc p ON p.oid = x.refobjid
     WHERE (p.pronamespace <> 'pg_catalog'::regnamespace AND p.provolatile <> 'i')
        OR (p.pronamespace = 'pg_catalog'::regnamespace AND p.provolatile = 'v'
            AND NOT p.proname = ANY (activity_log._harmless_volatile()))
$$;

-- _body_effects reads a function body against the allow-list of what an audit trigger does
-- (issue 27, F2). A body passes when every statement is one of: INSERT … VALUES / SELECT (no
-- ON CONFLICT … DO UPDATE), RETURN, RAISE (whether it validates is judged elsewhere), an
-- assignment or declaration of a variable, IF / ELSIF / ELSE / CASE / loops / EXIT / NULL /
-- GET DIAGNOSTICS, a block with EXCEPTION handlers, a SELECT / PERFORM that only reads, an
-- EXECUTE of a literal SELECT or INSERT INTO; and every function it calls is either a built-in
-- (or an extension's) function that is immutable or stable or one of _harmless_volatile(), or a
-- SQL / PL/pgSQL function that passes the same list (followed three levels deep). A helper
-- with no arguments called inside an INSERT may upsert session context it cannot have read
-- from the row (ON CONFLICT … DO UPDATE SET c = EXCLUDED.c only: django-pghistory's
-- _pgh_attach_context()). Code that runs without a call written name(…) counts as a call too
-- (issue 27, second review, F10): a user function named like a keyword (filter(…)), functional
-- notation ((NEW).bump is bump(NEW)), a user-defined operator (never followed: a problem), a
-- domain whose check calls code (a variable declared with it, a cast to it). The body is read
-- by _lex (F1); one it cannot read to its end is an error. Returns {"problems": [what does not
-- pass, in words], "helpers": [SQL / PL/pgSQL functions it calls, at any depth]}. Only the
-- catalog is read.
CREATE FUNCTION activity_log._body_effects(fn oid, caller_search_path text, depth integer DEFAULT 0,
                                          context_call boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
DECLARE
    f          record;
    q          record;
    c          record;
    src        text;
    lits       text[];
    parts      text[];
    masked     text;
    stmt       text;
    rest       text;
    kind       text;
    lit        text;
    m          text[];
    conds      text[];
    path       text[];
    cands      oid[];
    cand       oid;
    sub        jsonb;
    problems   text[] := '{}';
    helpers    oid[] := '{}';
    in_declare boolean := false;
    i          integer;
    exec_lit   text;
    operand    text;        -- what an EXECUTE runs, before INTO / USING
    lx         record;
    kw_user    text[];      -- keywords written name( that a user function is named after
    attr_user  text[];      -- .names that a function taking a row is named after
    domains    text;
BEGIN
    SELECT p.oid, p.prosrc, p.pronargs, p.proconfig, p.pronamespace, l.lanname, p.proargtypes, p.prorettype,
           p.prosqlbody IS NOT NULL AS atomic
      INTO f
      FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.oid = fn;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('problems', '[]'::jsonb, 'helpers', '[]'::jsonb);
    END IF;
    -- Read once by _lex (F1): comments, strings and quoted names as PostgreSQL reads them.
    lx := activity_log._lex(CASE WHEN f.atomic THEN pg_get_function_sqlbody(fn) ELSE f.prosrc END);
    IF lx.unclosed IS NOT NULL THEN
        RAISE EXCEPTION 'a function body has %, so it cannot be read as PostgreSQL reads it', lx.unclosed
            USING ERRCODE = 'syntax_error';
    END IF;
    src := lx.code;
    -- Names without a schema: the function's pinned search_path, else the caller's and every
    -- search_path set for a role or this database (ALTER ROLE … SET search_path: the session
    -- firing the trigger may have any of them; third review, F9), "$user" as every role with a
    -- schema of its name (F21); its own schema. A call is checked against every function it
    -- can mean.
    SELECT coalesce((SELECT activity_log._path_schemas(substr(x, 13)) FROM unnest(f.proconfig) x
                      WHERE x LIKE 'search_path=%' LIMIT 1),
                    activity_log._path_schemas(caller_search_path)
                    || ARRAY(SELECT DISTINCT y FROM activity_log._role_settings('search_path') s,
                                    unnest(activity_log._path_schemas(s.value)) y)
                    || ARRAY(SELECT quote_ident(n.nspname) FROM pg_catalog.pg_namespace n
                              JOIN pg_catalog.pg_roles r ON r.rolname = n.nspname))
           || quote_ident(f.pronamespace::regnamespace::text)
      INTO path;

    -- String literals become '#n' (their text kept in lits, in _lex's order), so that a ; or a
    -- keyword inside one splits or matches nothing.
    lits := lx.lits;
    parts := regexp_split_to_array(lx.masked, '''x*''');
    masked := parts[1];
    FOR i IN 1..cardinality(parts) - 1 LOOP
        masked := masked || '''#' || i || '''' || parts[i + 1];
    END LOOP;

    -- Code that runs without a call written name(…) (issue 27, second review, F10), looked up
    -- once per body: a user function named like a keyword (filter(…)), functional notation
    -- ((NEW).bump runs bump(NEW)), a user-defined operator, a domain's check.
    SELECT coalesce(array_agg(DISTINCT n.function_name) FILTER (WHERE n.how = 'keyword'), '{}'),
           coalesce(array_agg(DISTINCT n.function_name) FILTER (WHERE n.how = 'attribute'), '{}')
      INTO kw_user, attr_user
      FROM activity_log._call_names(masked || ' ' || array_to_string(lits, ' ')) n
     WHERE n.how <> 'call'
       -- (a scalar subquery: one index lookup per name, never a scan of all of pg_proc)
       AND (SELECT true FROM pg_proc p
             WHERE p.proname = n.function_name::name
               AND CASE WHEN n.how = 'keyword' THEN p.pronamespace <> 'pg_catalog'::regnamespace
                        ELSE p.pronargs = 1 AND EXISTS (SELECT 1 FROM pg_type ty WHERE ty.oid = p.proargtypes[0]
                                                           AND ty.typtype IN ('c', 'p')) END
             LIMIT 1);
    -- An operator of any symbol the body uses (each run of operator characters and its parts),
    -- when one of that symbol is not built in: a user-defined operator runs its function, whose
    -- effect is not followed; an extension's runs a function judged like a built-in.
    IF EXISTS (SELECT 1 FROM pg_operator o WHERE o.oprnamespace <> 'pg_catalog'::regnamespace) THEN
        problems := problems || ARRAY(
            SELECT DISTINCT CASE WHEN x.ext THEN format('uses operator %s, which runs %s(), which is volatile', x.op, x.fn)
                                 ELSE format('uses operator %s, a user-defined operator running %s', x.op, x.fn) END
              FROM (SELECT o.oid::regoperator::text AS op, o.oprcode::regprocedure::text AS fn, p.proname,
                           p.provolatile,
                           EXISTS (SELECT 1 FROM pg_depend d
                                    WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                                      AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e') AS ext
                      FROM (SELECT DISTINCT substr(r.m[1], g.a, h.b) AS sym
                              FROM regexp_matches(masked || ' ' || array_to_string(lits, ' '), '[-+*/<>=~!@#%^&|`?]+', 'g') AS r(m),
                                   generate_series(1, length(r.m[1])) g(a), generate_series(1, length(r.m[1]) - g.a + 1) h(b)) s
                      JOIN pg_operator o ON o.oprname = s.sym
                      JOIN pg_proc p ON p.oid = o.oprcode
                     WHERE o.oprnamespace <> 'pg_catalog'::regnamespace) x
             WHERE NOT x.ext OR (x.provolatile = 'v' AND NOT x.proname = ANY (activity_log._harmless_volatile())));
    END IF;
    -- A domain named in the body (a variable declared with it, a cast to it) or taken or
    -- returned by the function: its check runs on every value given to it.
    -- (only when there are domains outside pg_catalog and information_schema at all)
    IF EXISTS (SELECT 1 FROM pg_type ty WHERE ty.typtype = 'd'
                  AND ty.typnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)) THEN
        domains := activity_log._domain_checks(ARRAY(
            SELECT unnest((SELECT array_agg(ty.oid) FROM pg_type ty WHERE ty.typname = n.name::name AND ty.typtype = 'd'))
              FROM (SELECT DISTINCT CASE WHEN w.m[1] LIKE '"%' THEN replace(substr(w.m[1], 2, length(w.m[1]) - 2), '""', '"')
                                         ELSE lower(w.m[1]) END AS name
                      FROM regexp_matches(masked, '"[^"]+"|[a-z_][a-z0-9_$]*', 'gi') AS w(m)) n
            UNION
            SELECT unnest(f.proargtypes::oid[] || f.prorettype)));
    END IF;
    IF domains IS NOT NULL THEN
        problems := problems || format('uses %s', domains);
    END IF;

    FOREACH stmt IN ARRAY regexp_split_to_array(masked, ';') LOOP
        rest := btrim(stmt, E' \t\r\n');
        conds := '{}';
        -- Control structure in front of the statement: its conditions only need their calls checked.
        LOOP
            IF rest ~* '^<<\s*[a-z_][a-z0-9_$]*\s*>>' THEN
                rest := regexp_replace(rest, '^<<[^>]*>>\s*', '');
            ELSIF rest ~* '^declare\M' THEN
                in_declare := true;
                rest := regexp_replace(rest, '^declare\M\s*', '', 'i');
            ELSIF rest ~* '^begin\M' THEN
                in_declare := false;
                rest := regexp_replace(rest, '^begin\M\s*', '', 'i');
            ELSIF rest ~* '^exception\s+when\M.*?\mthen\M' THEN
                rest := regexp_replace(rest, '^exception\s+when\M.*?\mthen\M\s*', '', 'i');
            ELSIF rest ~* '^when\M.*?\mthen\M' THEN
                m := regexp_match(rest, '^when\M(.*?)\mthen\M(.*)$', 'i');
                conds := conds || m[1];
                rest := btrim(m[2], E' \t\r\n');
            ELSIF rest ~* '^(if|elsif|elseif)\M.*?\mthen\M' THEN
                m := regexp_match(rest, '^(?:if|elsif|elseif)\M(.*?)\mthen\M(.*)$', 'i');
                conds := conds || m[1];
                rest := btrim(m[2], E' \t\r\n');
            ELSIF rest ~* '^case\M.*?\mwhen\M.*?\mthen\M' THEN
                m := regexp_match(rest, '^case\M(.*?)\mwhen\M(.*?)\mthen\M(.*)$', 'i');
                conds := conds || m[1] || m[2];
                rest := btrim(m[3], E' \t\r\n');
            ELSIF rest ~* '^else\M' THEN
                rest := regexp_replace(rest, '^else\M\s*', '', 'i');
            ELSIF rest ~* '^(while|for|foreach)\M.*?\mloop\M' THEN
                m := regexp_match(rest, '^(?:while|for|foreach)\M(.*?)\mloop\M(.*)$', 'i');
                IF m[1] ~* '\mexecute\M' THEN
                    problems := problems || 'loops over a query built at run time'::text;
                ELSIF m[1] ~* '\m(insert|update|delete|merge)\M' THEN
                    problems := problems || 'updates or deletes other rows'::text;
                END IF;
                conds := conds || m[1];
                rest := btrim(m[2], E' \t\r\n');
            ELSIF rest ~* '^loop\M' THEN
                rest := regexp_replace(rest, '^loop\M\s*', '', 'i');
            ELSE
                EXIT;
            END IF;
        END LOOP;

        -- What the statement is.
        exec_lit := NULL;
        kind := CASE
            WHEN rest = '' OR rest ~* '^end(\s+(if|loop|case))?(\s+[a-z_][a-z0-9_$]*)?$' OR rest ~* '^null$' THEN 'none'
            WHEN in_declare THEN 'declare'
            WHEN rest ~* '^return\M' THEN 'expression'
            WHEN rest ~* '^(raise|assert|exit|continue|close|fetch|move|open)\M' THEN 'expression'
            WHEN rest ~* '^get\s+((current|stacked)\s+)?diagnostics\M' THEN 'none'
            WHEN rest ~* '^(perform|select|with|values|table)\M' AND rest ~* '\minsert\s+into\M'
                 AND rest !~* '\m(update|delete|merge)\M' THEN 'insert'
            WHEN rest ~* '^(perform|select|with|values|table)\M' THEN 'read'
            WHEN rest ~* '^insert\s+into\M' THEN 'insert'
            WHEN rest ~* '^execute\M' THEN 'execute'
            WHEN rest ~* '^(update|delete|merge)\M' THEN 'update'
            WHEN rest ~* '^(notify|listen|unlisten)\M' THEN 'notify'
            WHEN rest ~* '^("[^"]+"|[a-z_][a-z0-9_$]*)(\s*\.\s*("[^"]+"|[a-z_][a-z0-9_$]*))*\s*(\[[^]]*\]\s*)*:?=' THEN 'expression'
            ELSE 'other' END;
        -- The query of OPEN … FOR, of a cursor declared FOR, of RETURN QUERY is a statement too
        -- (third review, F2, F19): a write in it is a write.
        IF (kind = 'expression' AND rest ~* '^(open|return\s+query)\M')
           OR (kind = 'declare' AND rest ~* '\mcursor\M.*\m(for|is)\M') THEN
            IF rest ~* '\mexecute\M' THEN
                problems := problems || 'runs a statement built at run time'::text;
            ELSIF rest ~* '\m(insert|update|delete|merge)\M' THEN
                problems := problems || 'writes rows in the query of OPEN, a cursor or RETURN QUERY'::text;
            END IF;
        END IF;
        IF kind = 'read' THEN
            IF rest ~* '\m(insert|update|delete|merge)\M' THEN
                problems := problems || 'updates or deletes other rows'::text;
            ELSIF rest ~* '\mfor\s+((no\s+)?key\s+)?(update|share)\M' THEN
                problems := problems || 'locks rows'::text;
            END IF;
        ELSIF kind = 'insert' THEN
            IF rest ~* '\mon\s+conflict\M.*\mdo\s+update\M' THEN
                -- Only a context helper's replace of what it was given (SET c = EXCLUDED.c, …).
                IF NOT (context_call AND depth > 0 AND f.pronargs = 0
                        AND regexp_replace(substring(rest from '(?i)\mdo\s+update\s+set\M(.*)$'),
                                           '\s*("[^"]+"|[a-z_][a-z0-9_$]*)\s*=\s*excluded\s*\.\s*("[^"]+"|[a-z_][a-z0-9_$]*)\s*(,|$)', '', 'gi')
                            ~ '^\s*$') THEN
                    problems := problems || format('upserts into %s (ON CONFLICT … DO UPDATE)',
                        coalesce(substring(rest from '(?i)^insert\s+into\s+((?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)'), 'a table'));
                END IF;
            ELSIF regexp_replace(rest, '\mdo\s+nothing\M', '', 'gi') ~* '\m(update|delete|merge)\M' THEN
                problems := problems || 'updates or deletes other rows'::text;
            END IF;
        ELSIF kind = 'execute' THEN
            -- What it runs: the literals it is built from, in order.
            SELECT string_agg(coalesce(lits[x[1]::integer], ''), ' ' ORDER BY n) INTO lit
              FROM regexp_matches(rest, '''#([0-9]+)''', 'g') WITH ORDINALITY y(x, n);
            lit := lower(btrim(coalesce(lit, ''), E' \t\r\n('));
            -- the functions the statement it runs calls are checked like its own (F2), the
            -- strings in it masked by _lex, format()'s %I / %s / %L / %1$I read as a constant
            lx := activity_log._lex(lit);
            exec_lit := regexp_replace(lx.masked, '%([0-9]+\$)?-?[0-9]*[isl]', '0', 'g');
            IF lx.unclosed IS NOT NULL THEN
                problems := problems || format('runs a statement with an unterminated %s', regexp_replace(lx.unclosed, ' at character [0-9]+', ''));
            END IF;
            -- Run-time SQL is never read as its literal parts (third review, F1): the operand
            -- must be one string, or a format() of one whose %s arguments are all constants
            -- (%I and %L quote whatever they are given: no code comes in through them).
            operand := btrim(regexp_replace(regexp_replace(rest, '^execute\M', '', 'i'),
                                            '\m(into|using)\M.*$', '', 'i'), E' \t\r\n');
            m := regexp_match(operand, '^format\s*\(\s*''#([0-9]+)''((?:\s*,\s*[^,]+?)*)\s*\)$', 'i');
            IF NOT (operand ~ '^''#[0-9]+''$'
                    OR (m IS NOT NULL
                        AND (coalesce(lits[m[1]::integer], '') !~ '%([0-9]+\$)?-?[0-9]*s'
                             OR m[2] ~ '^(\s*,\s*(''#[0-9]+''|[0-9]+))*$'))) THEN
                problems := problems || 'runs a statement built at run time'::text;
            ELSIF lit = '' THEN
                problems := problems || 'runs a statement built at run time'::text;
            ELSIF lit ~ '^(select|with)\M' AND lit !~ '\m(into|insert|update|delete|merge)\M' AND lit !~ ';' THEN
                NULL;  -- a read
            ELSIF lit ~ '^insert\s+into\M' AND lit !~ ';' THEN
                IF lit ~ '\mon\s+conflict\M.*\mdo\s+update\M' THEN
                    problems := problems || 'upserts at run time (ON CONFLICT … DO UPDATE)'::text;
                ELSIF regexp_replace(lit, '\mdo\s+nothing\M', '', 'g') ~ '\m(update|delete|merge)\M' THEN
                    problems := problems || 'updates or deletes other rows'::text;
                END IF;
            ELSIF lit ~ '^(update|delete|merge)\M' THEN
                problems := problems || 'updates or deletes other rows'::text;
            ELSIF lit ~ '^(notify|listen)\M' THEN
                problems := problems || 'sends notifications'::text;
            ELSE
                problems := problems || format('runs %s at run time', upper(coalesce(substring(lit from '^[a-z]+'), 'a statement')));
            END IF;
        ELSIF kind = 'update' THEN
            problems := problems || 'updates or deletes other rows'::text;
        ELSIF kind = 'notify' THEN
            problems := problems || 'sends notifications'::text;
        ELSIF kind = 'other' THEN
            problems := problems || CASE
                WHEN rest ~* '^refresh\M' THEN 'refreshes a materialized view'
                WHEN rest ~* '^truncate\M' THEN 'truncates a table'
                WHEN rest ~* '^call\M' THEN 'calls a procedure'
                ELSE format('runs %s', upper(coalesce(substring(rest from '(?i)^[a-z]+'), 'a statement'))) END;
        END IF;
        CONTINUE WHEN kind IN ('none', 'update', 'notify', 'other');

        -- The functions it calls (in the statement and the conditions in front of it).
        FOR c IN SELECT DISTINCT n.schema_name, n.function_name, n.how
                   FROM unnest(array_remove(conds || rest || exec_lit, NULL)) s(t), activity_log._call_names(s.t) n
                  WHERE n.how = 'call' OR (n.how = 'keyword' AND n.function_name = ANY (kw_user))
                     OR (n.how = 'attribute' AND n.function_name = ANY (attr_user))
        LOOP
            cands := ARRAY(SELECT p.oid FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace
                            WHERE p.proname = c.function_name::name
                              AND CASE WHEN c.schema_name IS NOT NULL THEN ns.nspname = c.schema_name
                                       ELSE ns.nspname = 'pg_catalog' OR quote_ident(ns.nspname) = ANY (path) END
                              AND CASE c.how WHEN 'keyword' THEN ns.nspname <> 'pg_catalog'
                                             WHEN 'attribute' THEN p.pronargs = 1
                                                  AND EXISTS (SELECT 1 FROM pg_type ty WHERE ty.oid = p.proargtypes[0]
                                                                 AND ty.typtype IN ('c', 'p'))
                                             ELSE true END);
            -- a keyword or a field that no function is named after is what it looks like
            CONTINUE WHEN cands = '{}' AND c.how <> 'call';
            IF cands = '{}' THEN
                problems := problems || format('calls %s(), which is not a function it can find',
                                               concat_ws('.', quote_ident(c.schema_name), quote_ident(c.function_name)));
                CONTINUE;
            END IF;
            FOREACH cand IN ARRAY cands LOOP
                SELECT p.oid, p.proname, p.provolatile, p.pronamespace, l.lanname,
                       EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                                  AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e') AS ext
                  INTO q
                  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.oid = cand;
                IF q.lanname IN ('sql', 'plpgsql') AND q.pronamespace <> 'pg_catalog'::regnamespace THEN
                    CONTINUE WHEN cand = fn OR cand = ANY (helpers);
                    helpers := helpers || cand;
                    IF depth >= 3 THEN
                        problems := problems || format('calls %s, too deep to follow', cand::regprocedure);
                        CONTINUE;
                    END IF;
                    sub := activity_log._body_effects(cand, caller_search_path, depth + 1, kind = 'insert');
                    helpers := helpers || ARRAY(SELECT jsonb_array_elements_text(sub->'helpers')::oid);
                    problems := problems || ARRAY(SELECT format('calls %s, which %s', cand::regprocedure, x)
                                                    FROM jsonb_array_elements_text(sub->'problems') x);
                ELSIF q.pronamespace = 'pg_catalog'::regnamespace OR q.ext THEN
                    IF q.provolatile = 'v' AND NOT q.proname = ANY (activity_log._harmless_volatile()) THEN
                        problems := problems || CASE WHEN q.proname = 'pg_notify' THEN 'sends notifications'
                                                     ELSE format('calls %s(), which is volatile', quote_ident(q.proname)) END;
                    END IF;
                ELSE
                    problems := problems || format('calls %s, written in %s, which cannot be read', cand::regprocedure, q.lanname);
                END IF;
            END LOOP;
        END LOOP;
    END LOOP;
    -- A helper that raises makes the trigger's writes fail (F5).
    IF depth > 0 AND f.lanname = 'plpgsql' AND activity_log._raises_on_writes(src, 0) THEN
        problems := problems || 'raises errors'::text;
    END IF;
    RETURN jsonb_build_object('problems', to_jsonb(ARRAY(SELECT DISTINCT x FROM unnest(problems) x ORDER BY x)),
                              'helpers', to_jsonb(ARRAY(SELECT DISTINCT x FROM unnest(helpers) x)));
END
$$;

-- _readers lists what reads tbl, as a jsonb array of {"oid": function or null, "name"}: views,
-- materialized views and rules over it and SQL functions with BEGIN ATOMIC bodies (their
-- dependencies are in pg_depend), and the functions among oids (srcs: their source in lower
-- case; any language but C, trigger functions included) whose source names the table other than
-- to insert into it, delete from it, truncate or drop it (pgMemento's restore functions reading
-- pgmemento.row_log, an AS OF function over a history table, a plpython function, another
-- table's trigger reading it). The caller leaves out the trigger's own functions. Only the
-- catalog is read: no function is run.
CREATE FUNCTION activity_log._readers(tbl regclass, oids oid[], srcs text[]) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
BEGIN
    RETURN (WITH t AS (
        SELECT lower(c.relname::text) AS relname,
               -- the name as a regular expression: a word, quoted or not, maybe schema-qualified
               '(("[^"]+"|[a-z_][a-z0-9_$]*)\s*\.\s*)?"?' || regexp_replace(lower(c.relname), '([^a-zA-Z0-9_])', '\\\1', 'g') || '"?'
                   AS pattern
          FROM pg_class c WHERE c.oid = tbl)
    SELECT coalesce(jsonb_agg(jsonb_build_object('oid', r.fn, 'name', r.name) ORDER BY r.name), '[]')
      FROM (SELECT DISTINCT NULL::oid AS fn,
                   CASE WHEN r.rulename = '_RETURN' AND v.relkind = 'v' THEN format('view %s', v.oid::regclass)
                        WHEN r.rulename = '_RETURN' AND v.relkind = 'm' THEN format('materialized view %s', v.oid::regclass)
                        ELSE format('rule %I on %s', r.rulename, v.oid::regclass) END AS name
              FROM pg_depend d
              JOIN pg_rewrite r ON r.oid = d.objid
              JOIN pg_class v ON v.oid = r.ev_class
             WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
               AND d.refobjid = tbl AND r.ev_class <> tbl
            UNION
            SELECT DISTINCT p.oid, p.oid::regprocedure::text
              FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
             WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
               AND d.refobjid = tbl
            UNION
            SELECT x.o, x.o::regprocedure::text
              FROM unnest(oids, srcs) x(o, s), t
             WHERE strpos(x.s, t.relname) > 0
               -- another trigger function that writes it (the same generic audit function on other
               -- tables, declaring a variable of its row type) is a writer, judged as such
               AND NOT (EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = x.o AND p.prorettype = 'pg_catalog.trigger'::regtype)
                        AND x.s ~* ('\minsert\s+into\s+' || t.pattern || '(?![a-z0-9_$])'))
               -- (any language: a body _lex cannot read to its end is kept as it is, so that
               -- the name counts rather than hides)
               AND regexp_replace((activity_log._lex(x.s)).code,
                                  '\m(insert\s+into|delete\s+from|truncate(\s+table)?(\s+only)?|drop\s+table(\s+if\s+exists)?)\s+'
                                  || t.pattern || '(?![a-z0-9_$])', ' ', 'gi')
                   ~* ('(?<![a-z0-9_$])' || regexp_replace(t.relname, '([^a-zA-Z0-9_])', '\\\1', 'g') || '(?![a-z0-9_$])')) r);
END
$$;

-- _role_settings lists what ALTER ROLE / ALTER DATABASE … SET give `parameter` for this database
-- (a role's setting everywhere, or the database's, or a role's in it): a session firing a
-- trigger may start with any of them. setrole and setdatabase are 0 for every role / database.
CREATE FUNCTION activity_log._role_settings(parameter text, OUT value text, OUT setrole oid, OUT setdatabase oid)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT substr(cfg, strpos(cfg, '=') + 1), s.setrole, s.setdatabase
      FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) cfg
     WHERE lower(split_part(cfg, '=', 1)) = lower(parameter)
       AND s.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database d
                                  WHERE d.datname = pg_catalog.current_database()))
$$;

-- _trigger_events lists the events a trigger of pg_trigger.tgtype fires on, as TG_OP, TG_WHEN
-- and TG_LEVEL say them.
CREATE FUNCTION activity_log._trigger_events(tgtype integer, OUT op text, OUT wh text, OUT lv text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.op,
           CASE WHEN tgtype & 2 <> 0 THEN 'BEFORE' WHEN tgtype & 64 <> 0 THEN 'INSTEAD OF' ELSE 'AFTER' END,
           CASE WHEN tgtype & 1 <> 0 THEN 'ROW' ELSE 'STATEMENT' END
      FROM (VALUES (4, 'INSERT'), (8, 'DELETE'), (16, 'UPDATE'), (32, 'TRUNCATE')) o(bit, op)
     WHERE tgtype & o.bit <> 0
$$;

-- _guard_excludes says whether a condition a statement runs under (cond must be true, or, with
-- holds false, not true) keeps event (op, wh, lv) from reaching it. Only a condition on TG_OP,
-- TG_WHEN and TG_LEVEL alone can say so: with the event's values substituted it holds only
-- literals, so running it runs no user code. Any other condition, or one that fails to
-- evaluate, excludes nothing.
CREATE FUNCTION activity_log._guard_excludes(cond text, holds boolean, op text, wh text, lv text)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
DECLARE
    val boolean;
BEGIN
    -- No backslash: '\' reads alike whether standard_conforming_strings is on or off (the body
    -- may have been compiled with it off, the plan runs with it on). No quote after a name:
    -- tg_op 'x' is a literal of a type named tg_op, not the variable.
    IF cond IS NULL
       OR cond !~* '^(\s|[(),=<>!]|\mtg_(when|level|op)\M|''[^''\\]*''|\m(not|and|or|in|is|distinct|from)\M)+$'
       OR cond ~* '\mtg_(when|level|op)\M\s*''' THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE 'SELECT (' || regexp_replace(regexp_replace(regexp_replace(cond,
                     '\mtg_op\M', quote_literal(op), 'gi'),
                     '\mtg_when\M', quote_literal(wh), 'gi'),
                     '\mtg_level\M', quote_literal(lv), 'gi') || ')::boolean'
           INTO val;
    EXCEPTION WHEN OTHERS THEN
        RETURN false;   -- TG_OP = 'INSERT' = 'x' compiles; it fails when it runs, as it would here
    END;
    RETURN CASE WHEN holds THEN val IS NOT TRUE ELSE val IS TRUE END;
END
$$;

-- _raises_on_writes says whether a trigger function body (comments removed) makes writes fail
-- (issue 27, F3-F5): an ASSERT, a SELECT … INTO STRICT, or a RAISE of any level but DEBUG, LOG,
-- INFO, NOTICE and WARNING (RAISE EXCEPTION, RAISE with no level, RAISE SQLSTATE, RAISE
-- check_violation …) — except a protocol guard, which no write of the trigger's table reaches:
-- a RAISE in an IF / ELSIF branch whose condition tests only TG_OP, TG_WHEN and TG_LEVEL and is
-- false for every event the trigger fires on (pg_trigger.tgtype), or in the ELSE of an IF chain
-- whose every condition tests only those and one of which is true for every event. Conditions
-- are evaluated with the event's values substituted: they hold only literals then.
CREATE FUNCTION activity_log._raises_on_writes(src text, tgtype integer) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
DECLARE
    masked  text;
    pos     integer := 1;
    hit     integer;
    tok     text;
    kinds   text[] := '{}';     -- the open frames: if, case, begin, loop
    conds   text[] := '{}';     -- per open if frame: its conditions so far, joined by chr(1)
    branch  text[] := '{}';     -- per open frame: 'cond' (in an if / elsif branch) or 'else'
    cstart  integer := NULL;    -- where the condition being read starts
    c       text;
    combo   record;
    orig    text := src;        -- conditions are read as written: 'delete' is not 'DELETE'
BEGIN
    -- strings of every kind masked by _lex, positions kept: keywords inside a message (or a
    -- $q$…$q$ with a quote in it) are not keywords (issue 27, second review, F1)
    masked := lower((activity_log._lex(src)).masked);
    -- nor inside a quoted name: PERFORM 1 AS "else" opens no ELSE (third review, F22); _lex
    -- leaves only letters, digits, _, $ and spaces between a name's quotes
    LOOP
        c := regexp_replace(masked, '("[^"a-z]*)[a-z]([^"]*")', '\1x\2', 'g');
        EXIT WHEN c = masked;
        masked := c;
    END LOOP;
    c := NULL;
    LOOP
        hit := regexp_instr(masked, '\m(end\s+if|end\s+case|end\s+loop|elsif|if|else|then|case|begin|end|loop|raise|assert|into\s+strict)\M', pos);
        EXIT WHEN hit = 0;
        tok := regexp_replace(substring(masked FROM hit FOR 12), '^(end\s+if|end\s+case|end\s+loop|elsif|if|else|then|case|begin|end|loop|raise|assert|into\s+strict).*$', '\1', 's');
        tok := regexp_replace(tok, '\s+', ' ', 'g');
        pos := hit + length(regexp_substr(masked, '(end\s+if|end\s+case|end\s+loop|elsif|if|else|then|case|begin|end|loop|raise|assert|into\s+strict)', hit));
        IF tok IN ('assert', 'into strict') THEN
            RETURN true;
        ELSIF tok = 'if' THEN
            kinds := kinds || 'if'::text; conds := conds || ''::text; branch := branch || 'cond'::text;
            cstart := pos;
        ELSIF tok = 'elsif' AND kinds[cardinality(kinds)] = 'if' THEN
            branch[cardinality(kinds)] := 'cond';
            cstart := pos;
        ELSIF tok = 'then' AND cstart IS NOT NULL AND kinds[cardinality(kinds)] = 'if' THEN
            c := substring(orig FROM cstart FOR hit - cstart);
            conds[cardinality(kinds)] := conds[cardinality(kinds)] || chr(1) || c;
            cstart := NULL;
        ELSIF tok = 'else' AND kinds[cardinality(kinds)] = 'if' THEN
            branch[cardinality(kinds)] := 'else';
        ELSIF tok = 'case' THEN
            kinds := kinds || 'case'::text; conds := conds || ''::text; branch := branch || ''::text;
        ELSIF tok IN ('begin', 'loop') THEN
            -- a RAISE in a loop is validation wherever the loop is (third review, F22)
            kinds := kinds || tok; conds := conds || ''::text; branch := branch || ''::text;
        ELSIF tok IN ('end if', 'end case', 'end loop', 'end') THEN
            IF cardinality(kinds) > 0 THEN
                kinds := kinds[1:cardinality(kinds) - 1]; conds := conds[1:cardinality(conds) - 1];
                branch := branch[1:cardinality(branch) - 1];
            END IF;
        ELSIF tok = 'raise' THEN
            CONTINUE WHEN substr(masked, pos) ~ '^\s+(debug|log|info|notice|warning)\M';
            -- a protocol guard, or validation
            IF tgtype = 0 OR cardinality(kinds) = 0 OR kinds[cardinality(kinds)] <> 'if' THEN
                RETURN true;
            END IF;
            FOR combo IN SELECT * FROM activity_log._trigger_events(tgtype) LOOP
                -- in an if / elsif branch: reached unless its condition excludes the event; in
                -- the else: unless one of the chain's conditions is true for it
                IF branch[cardinality(kinds)] = 'cond' THEN
                    CONTINUE WHEN activity_log._guard_excludes(split_part(conds[cardinality(kinds)], chr(1), -1),
                                                               true, combo.op, combo.wh, combo.lv);
                ELSE
                    CONTINUE WHEN EXISTS (SELECT FROM unnest(string_to_array(substr(conds[cardinality(kinds)], 2), chr(1))) g(cond)
                                           WHERE activity_log._guard_excludes(g.cond, false, combo.op, combo.wh, combo.lv));
                END IF;
                RETURN true;      -- a write of this event reaches the RAISE
            END LOOP;
        END IF;
    END LOOP;
    RETURN false;
END
$$;

-- What a PL/pgSQL function does, statement by statement, read by plpgsql's own compiler
-- (issue 27's parser, src/plpgsql.rs): internal, for the trigger migration's analyzer.
CREATE FUNCTION activity_log._plpgsql_facts("function" oid, "search_path" text DEFAULT NULL) RETURNS jsonb
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'plpgsql_facts_wrapper';
REVOKE EXECUTE ON FUNCTION activity_log._plpgsql_facts(oid, text) FROM PUBLIC;

-- _plpgsql_side_effects lists what a PL/pgSQL trigger function (fired as tgtype says) does
-- besides auditing, as plpgsql's own compiler reads it under the caller's search_path
-- (_plpgsql_facts, issue 27's parser). side: 'modifies NEW' (any form of writing NEW or a field of
-- it: assignment, INTO, FOR, FOREACH, GET DIAGNOSTICS, FETCH, a CALL with arguments; in a
-- BEFORE INSERT or UPDATE row trigger, returning a record variable, or changing OLD and
-- returning it), 'raises errors (validation)' (RAISE above WARNING, ASSERT, INTO STRICT, a CASE
-- without ELSE, unless the statement's conditions on TG_OP, TG_WHEN and TG_LEVEL exclude every
-- event the trigger fires on; not when the body assigns one of them, or a condition's name is
-- another variable's, declared around it), 'updates or deletes other rows' (an UPDATE, DELETE or MERGE statement; one
-- in the query of OPEN, FOR or a cursor is _body_effects' to name), 'sends notifications'
-- (NOTIFY). outside: the other statements outside the allow-list of an audit trigger's (a CALL,
-- a write in the query of FOR, OPEN, a cursor or RETURN QUERY, an upsert, TRUNCATE, REFRESH,
-- any other command but INSERT and SELECT), in _body_effects' words, so that a statement the
-- reading of the text missed is still found. A body the compiler cannot read here is a side effect too: the parser must never
-- say nothing because it could not look (second review). _migration_plan adds these to what
-- its reading of the text found: the parser can only add effects, never take one away.
CREATE FUNCTION activity_log._plpgsql_side_effects(fn oid, tgtype integer, caller_search_path text,
                                                   OUT side text[], OUT outside text[])
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
AS $$
    SELECT CASE WHEN f.facts ? 'error'
                THEN ARRAY[format('has a body PL/pgSQL''s compiler could not read here (%s)', f.facts->>'error')]
                -- read here with standard_conforming_strings on; where sessions start with it off
                -- a backslash in a literal may end it elsewhere, and the body means something else
                WHEN f.scs_off
                THEN ARRAY['has a body PL/pgSQL reads otherwise with standard_conforming_strings off, as sessions here may start']
                ELSE (SELECT array_remove(ARRAY[
        CASE WHEN bool_or(coalesce((s->>'writes_new')::boolean, false))
                  OR (tgtype & 1 <> 0 AND tgtype & 2 <> 0 AND tgtype & (4 | 16) <> 0
                      AND bool_or(s->>'returns' = 'variable'))
                  OR (tgtype & 1 <> 0 AND tgtype & 2 <> 0 AND tgtype & 16 <> 0
                      AND bool_or(coalesce((s->>'writes_old')::boolean, false)) AND bool_or(s->>'returns' = 'old'))
             THEN 'modifies NEW' END,
        -- a statement that fails writes, reached by some event the trigger fires on: its
        -- guards on TG_OP / TG_WHEN / TG_LEVEL do not exclude that event (2ndQuadrant's IF
        -- TG_WHEN <> 'AFTER' THEN RAISE is a protocol guard, not validation)
        CASE WHEN (f.facts->>'falls_off_end')::boolean OR (f.facts->>'not_null_variables')::boolean
                  OR bool_or((s->>'kind' = 'raise' AND s->>'level' NOT IN ('debug', 'log', 'info', 'notice', 'warning')
                           OR s->>'kind' = 'assert'
                           OR (coalesce((s->>'into')::boolean, false)
                               AND ((s->>'strict')::boolean OR f.into_checked
                                    OR (s->>'kind' = 'sql' AND s->>'command' IN ('INSERT', 'UPDATE', 'DELETE', 'MERGE')
                                        AND NOT coalesce((s->>'single_row')::boolean, false))))
                           -- outside a handler there is no stacked error to read
                           OR (s->>'kind' = 'get diagnostics' AND (s->>'stacked')::boolean AND NOT (s->>'handler')::boolean)
                           -- an AFTER row trigger's return value is checked against the table's row
                           OR (tgtype & 1 <> 0 AND tgtype & (2 | 64) = 0 AND s->>'kind' = 'return'
                               AND s->>'returns' IN ('expression', 'variable')
                               AND lower(regexp_replace(coalesce(s->>'sql', ''), '\s+', '', 'g'))
                                   NOT IN ('coalesce(new,old)', 'coalesce(old,new)')))
                          AND EXISTS (SELECT FROM activity_log._trigger_events(tgtype) e
                                       WHERE NOT EXISTS (SELECT FROM jsonb_array_elements(s->'guards') g
                                                          WHERE NOT f.protocol_written AND NOT g ? 'shadowed'
                                                            AND activity_log._guard_excludes(g->>'cond', (g->>'holds')::boolean,
                                                                                             e.op, e.wh, e.lv))))
             THEN 'raises errors (validation)' END,
        CASE WHEN bool_or(s->>'kind' = 'sql' AND s->>'command' IN ('UPDATE', 'DELETE', 'MERGE'))
             THEN 'updates or deletes other rows' END,
        CASE WHEN bool_or(s->>'command' = 'NOTIFY') THEN 'sends notifications' END], NULL)
                        FROM jsonb_array_elements(f.facts->'statements') s) END,
           CASE WHEN NOT f.facts ? 'error' THEN ARRAY(SELECT DISTINCT x FROM (SELECT CASE
            WHEN o->>'kind' = 'call' THEN 'calls a procedure'
            -- a cursor not open, or open already (a bound one stays open into the next row's
            -- call), is an ERROR: not one of an audit trigger's statements
            WHEN (o->>'kind' IN ('fetch', 'move', 'close') OR o ? 'opens_cursor'
                  OR (o->>'kind' = 'open' AND coalesce(o->>'command' = 'SELECT' AND NOT (o->>'writes_in_with')::boolean, true)))
                 THEN 'uses a cursor'
            WHEN o->>'kind' IN ('for', 'open', 'cursor', 'return query')
                 AND (o->>'command' <> 'SELECT' OR (o->>'writes_in_with')::boolean)
                 THEN 'writes rows in the query of OPEN, a cursor or RETURN QUERY'
            WHEN o->>'kind' = 'sql' AND (o->>'upsert')::boolean
                 THEN format('upserts into %s (ON CONFLICT … DO UPDATE)',
                             concat_ws('.', o->'relation'->>'schema', o->'relation'->>'name'))
            WHEN o->>'kind' = 'sql' AND o->>'command' = 'TRUNCATE TABLE' THEN 'truncates a table'
            WHEN o->>'kind' = 'sql' AND o->>'command' = 'REFRESH MATERIALIZED VIEW' THEN 'refreshes a materialized view'
            WHEN o->>'kind' = 'sql' AND o->>'command' NOT IN ('INSERT', 'SELECT', 'UPDATE', 'DELETE', 'MERGE', 'NOTIFY')
                 THEN format('runs %s', o->>'command') END AS x
              FROM jsonb_array_elements(f.facts->'statements') o) y WHERE x IS NOT NULL ORDER BY x) END
      FROM (SELECT x.facts, jsonb_path_exists(x.facts, '$.statements[*] ? (@.writes_protocol == true)') AS protocol_written,
                   -- plpgsql.extra_errors is read when the statement runs: the reader's, the
                   -- function's own, any role's or this database's
                   EXISTS (SELECT FROM (SELECT pg_catalog.current_setting('plpgsql.extra_errors', true) AS v
                                        UNION ALL
                                        SELECT cfg FROM pg_catalog.pg_proc p, unnest(p.proconfig) cfg WHERE p.oid = fn
                                        UNION ALL
                                        SELECT r.value FROM activity_log._role_settings('plpgsql.extra_errors') r) c
                            WHERE c.v ~* '^(plpgsql\.extra_errors=)?.*(too_many_rows|strict_multi_assignment|all)'
                              AND (c.v !~ '=' OR c.v ~* '^plpgsql\.extra_errors=')) AS into_checked
                   ,
                   EXISTS (SELECT FROM pg_catalog.pg_proc p
                            WHERE p.oid = fn AND strpos(p.prosrc, '\') > 0
                              AND NOT EXISTS (SELECT FROM unnest(p.proconfig) cfg WHERE cfg ~* '^standard_conforming_strings='))
                   AND ((SELECT s.reset_val FROM pg_catalog.pg_settings s WHERE s.name = 'standard_conforming_strings') = 'off'
                        OR EXISTS (SELECT FROM activity_log._role_settings('standard_conforming_strings') r
                                    -- every spelling of off PostgreSQL accepts (review of 2026-12-06, F1)
                                    WHERE r.value ~* '^\s*(of|off|f|fa|fal|fals|false|n|no|0)\s*$'))
                   AS scs_off
              FROM (SELECT activity_log._plpgsql_facts(fn, caller_search_path) AS facts) x) f
$$;

-- _trail_problem says why a table a trigger writes cannot be a trail that only people read, or
-- NULL (issue 27, F7): a trail is an ordinary or partitioned table with no user trigger or rule
-- of its own (nor on any of its partitions), and no column default or domain check that calls a
-- user function that is not immutable, or a volatile built-in other than _harmless_volatile()
-- (DEFAULT public.next_number('receipt') runs business code on every row the trigger writes).
CREATE FUNCTION activity_log._trail_problem(tbl regclass) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind "char";
    what text;
BEGIN
    SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = tbl;
    IF kind IS NULL OR kind NOT IN ('r', 'p') THEN
        RETURN format('its table %s is %s, not a table', tbl,
                      CASE kind WHEN 'v' THEN 'a view' WHEN 'f' THEN 'a foreign table' WHEN 'm' THEN 'a materialized view'
                                ELSE 'not an ordinary table' END);
    END IF;
    SELECT string_agg(x, ', ' ORDER BY x) INTO what
      FROM (SELECT format('trigger %I on %s', tg.tgname, tg.tgrelid::regclass) AS x
              FROM (SELECT tbl::oid AS relid UNION SELECT x.relid FROM pg_partition_tree(tbl) x) pt JOIN pg_trigger tg ON tg.tgrelid = pt.relid
             -- (a user's CONSTRAINT TRIGGER runs code too: only PostgreSQL's own are left out,
             -- third review, F15)
             WHERE NOT tg.tgisinternal
            UNION ALL
            SELECT format('rule %I on %s', r.rulename, r.ev_class::regclass)
              FROM (SELECT tbl::oid AS relid UNION SELECT x.relid FROM pg_partition_tree(tbl) x) pt JOIN pg_rewrite r ON r.ev_class = pt.relid) y;
    IF what IS NOT NULL THEN
        RETURN format('its table %s runs code of its own (%s)', tbl, what);
    END IF;
    SELECT string_agg(DISTINCT x, ', ') INTO what
      FROM (SELECT format('the default of column %I calls %s', a.attname, p.oid::regprocedure) AS x, p.oid
              FROM (SELECT tbl::oid AS relid UNION SELECT x.relid FROM pg_partition_tree(tbl) x) pt
              JOIN pg_attrdef ad ON ad.adrelid = pt.relid
              JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
              JOIN pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = ad.oid
                              AND d.refclassid = 'pg_catalog.pg_proc'::regclass
              JOIN pg_proc p ON p.oid = d.refobjid
            UNION ALL
            SELECT format('column %I is of domain %s, whose check calls %s', a.attname, a.atttypid::regtype, p.oid::regprocedure), p.oid
              FROM (SELECT tbl::oid AS relid UNION SELECT x.relid FROM pg_partition_tree(tbl) x) pt
              JOIN pg_attribute a ON a.attrelid = pt.relid AND a.attnum > 0 AND NOT a.attisdropped
              JOIN pg_type ty ON ty.oid = a.atttypid AND ty.typtype = 'd'
              JOIN pg_constraint con ON con.contypid = ty.oid
              JOIN pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = con.oid
                              AND d.refclassid = 'pg_catalog.pg_proc'::regclass
              JOIN pg_proc p ON p.oid = d.refobjid) y
      JOIN pg_proc p ON p.oid = y.oid
     WHERE (p.pronamespace <> 'pg_catalog'::regnamespace AND p.provolatile <> 'i')
        OR (p.pronamespace = 'pg_catalog'::regnamespace AND p.provolatile = 'v'
            AND NOT p.proname = ANY (activity_log._harmless_volatile()));
    IF what IS NOT NULL THEN
        RETURN format('its table %s runs code of its own (%s)', tbl, what);
    END IF;
    RETURN NULL;
END
$$;

-- _system_link says why two triggers of one table belong to one system, or NULL: the same
-- function, functions of the same extension, or trails that are the same table or reference
-- each other — by a foreign key, or by a column the other trail holds unique on its own
-- (pgMemento's row_log.event_key and table_event_log.event_key) when its name is specific: a
-- table_name or an id in both tables links nothing (issue 27, F3).
CREATE FUNCTION activity_log._system_link(a_fn oid, a_ext oid, a_writes oid[], b_fn oid, b_ext oid, b_writes oid[])
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    x      oid;
    y      oid;
    reason text;
BEGIN
    IF a_fn = b_fn THEN
        RETURN format('the same function %s', a_fn::regproc);
    ELSIF a_ext = b_ext THEN
        RETURN format('functions of extension %I', (SELECT extname FROM pg_extension WHERE oid = a_ext));
    ELSIF a_writes && b_writes THEN
        RETURN format('both write %s', (SELECT min(w::regclass::text) FROM unnest(a_writes) w WHERE w = ANY (b_writes)));
    END IF;
    -- One trail for each side, one pair at a time (scalar lookups: each plan is an index scan).
    FOREACH x IN ARRAY a_writes || b_writes LOOP
        FOREACH y IN ARRAY CASE WHEN x = ANY (a_writes) THEN b_writes ELSE a_writes END LOOP
            CONTINUE WHEN x = y;
            SELECT format('%s references %s', c.conrelid::regclass, c.confrelid::regclass) INTO reason
              FROM pg_constraint c WHERE c.conrelid = x AND c.confrelid = y AND c.contype = 'f'
             ORDER BY c.conname LIMIT 1;
            IF reason IS NOT NULL THEN
                RETURN reason;
            END IF;
        END LOOP;
    END LOOP;
    -- A column of one trail that is the whole of a unique index of the other (not its own key).
    FOREACH x IN ARRAY a_writes || b_writes LOOP
        FOREACH y IN ARRAY CASE WHEN x = ANY (a_writes) THEN b_writes ELSE a_writes END LOOP
            CONTINUE WHEN x = y;
            SELECT min(format('%s.%I refers to %s', ca.attrelid::regclass, ca.attname, i.indrelid::regclass)) INTO reason
              FROM pg_index i
              JOIN pg_attribute cb ON cb.attrelid = i.indrelid AND cb.attnum = i.indkey[0]
              JOIN pg_attribute ca ON ca.attrelid = x AND ca.attname = cb.attname AND ca.atttypid = cb.atttypid
             WHERE i.indrelid = y AND i.indisunique AND i.indnkeyatts = 1
               AND ca.attnum > 0 AND NOT ca.attisdropped
               -- only a name specific enough to be a reference (F3): table_name, id, name … match by accident
               AND ca.attname::text ~ '_'
               AND ca.attname::text !~ '^(table|schema|rel|relation|column|object|entity|event|record|row)_?(name|oid|id|schema)$'
               AND ca.attname NOT IN ('schema_name', 'table_name', 'table_schema', 'table_oid', 'created_at', 'updated_at',
                                      'changed_at', 'deleted_at', 'user_name', 'user_id', 'session_user_name', 'client_addr',
                                      'client_port', 'application_name', 'transaction_id', 'action_tstamp_tx', 'op_id',
                                      'tg_op', 'tg_table_name', 'tg_table_schema', 'tg_relid')
               AND NOT EXISTS (SELECT 1 FROM pg_index own
                                WHERE own.indrelid = ca.attrelid AND own.indisunique AND own.indnkeyatts = 1
                                  AND own.indkey[0] = ca.attnum);
            IF reason IS NOT NULL THEN
                RETURN reason;
            END IF;
        END LOOP;
    END LOOP;
    RETURN NULL;
END
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
SET standard_conforming_strings = on
-- The catalog queries here are small but some are estimated large (a generate_series over
-- operator symbols): JIT-compiling them cost 200 ms per trigger function, more than the plan.
SET jit = off
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
    parsed     text[];      -- what plpgsql's compiler reads in the body (_plpgsql_side_effects)
    parsed_outside text[];  -- and the statements it finds outside the allow-list
    validates  boolean;     -- it makes writes fail (RAISE, ASSERT, INTO STRICT …)
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
    acc        jsonb[] := '{}';   -- one entry per trigger (an array: appends and updates in place)
    groups     record;
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
    eff        jsonb;
    effects    text[];      -- what the body does outside the allow-list (see _body_effects)
    effects_cache jsonb := '{}';
    reader_cache  jsonb := '{}';
    cand_oids  oid[];
    cand_srcs  text[];
    skip       oid[];
    pubs       text;
    outbox     text;
    queue_table regclass;
    transition_copy boolean;
    weak_not   boolean;
    partial    text;
    trails     oid[];
    names      text[];
    hot        integer[];
    hot_oids   oid[];
    hot_srcs   text[];
    pattern    text;
    wq         record;
BEGIN
    -- The functions that could read a trail, with their source in lower case, read from pg_proc
    -- once per plan: each trail's readers are looked up in it (F7).
    SELECT coalesce(array_agg(p.oid ORDER BY p.oid), '{}'), coalesce(array_agg(lower(p.prosrc) ORDER BY p.oid), '{}')
      INTO cand_oids, cand_srcs
      FROM pg_catalog.pg_proc p
      JOIN pg_catalog.pg_language l ON l.oid = p.prolang
      JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
     WHERE l.lanname NOT IN ('c', 'internal')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'activity_log')
       AND p.prosqlbody IS NULL AND p.prosrc <> '';
    -- The likely trails (the tables trigger functions insert into, by name) are looked for in
    -- all of them at once, a regular expression per 200 names: each of those trails is then
    -- looked up among the few functions that name any of them (hot), any other in all.
    names := ARRAY(SELECT DISTINCT lower(regexp_replace(m[1], '^.*\.|"', '', 'g'))
                     FROM pg_catalog.pg_proc p,
                          regexp_matches(p.prosrc, 'insert\s+into\s+((?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)', 'gi') m
                    WHERE p.prorettype = 'pg_catalog.trigger'::regtype);
    hot := '{}';
    BEGIN
        FOR i IN 0..(cardinality(names) - 1) / 200 LOOP
            EXIT WHEN cardinality(names) = 0;
            pattern := '(' || array_to_string(ARRAY(SELECT regexp_replace(x, '([^a-z0-9_])', '\\\1', 'g')
                                                      FROM unnest(names[i * 200 + 1:(i + 1) * 200]) x), '|') || ')';
            hot := hot || ARRAY(SELECT s.i::integer FROM unnest(cand_srcs) WITH ORDINALITY s(src, i) WHERE s.src ~ pattern);
        END LOOP;
        hot := ARRAY(SELECT DISTINCT x FROM unnest(hot) x ORDER BY x);
    EXCEPTION WHEN OTHERS THEN
        names := '{}';  -- every trail is looked up in all of them
    END;
    hot_oids := ARRAY(SELECT cand_oids[x] FROM unnest(hot) x);
    hot_srcs := ARRAY(SELECT cand_srcs[x] FROM unnest(hot) x);
    FOR t IN
        SELECT tg.oid, tg.tgrelid, tg.tgname, tg.tgfoid, tg.tgtype::integer AS tgtype, tg.tgenabled,
               tg.tgisinternal, tg.tgconstraint, tg.tgnewtable, tg.tgoldtable, tg.tgqual::text AS tgqual,
               c.relnamespace, c.relname, c.relkind, p.prosrc, p.pronamespace, p.proconfig, l.lanname,
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

        -- An INSTEAD OF trigger carries out the write on its view (dropping it changes what an
        -- INSERT into the view does), and activity_log tracks tables only: a trigger on a view or
        -- a foreign table is never migrated (issue 27, third review, F14).
        IF t.tgisinternal OR t.tgconstraint <> 0 OR t.tgtype & 64 <> 0 OR t.relkind NOT IN ('r', 'p') THEN
            verdict := 'business';
            confidence := 1.00;
            style := CASE WHEN t.tgisinternal THEN 'internal' WHEN t.tgconstraint <> 0 THEN 'constraint'
                          WHEN t.tgtype & 64 <> 0 THEN 'instead of' ELSE 'not a table' END;
            why := CASE WHEN t.contype = 'f' THEN format('enforces foreign key %I', t.conname)
                        WHEN t.tgisinternal THEN 'internal trigger of PostgreSQL'
                        WHEN t.tgconstraint <> 0 THEN format('constraint trigger of %I', t.conname)
                        WHEN t.tgtype & 64 <> 0 THEN 'INSTEAD OF trigger: it carries out the write on the view; activity_log tracks tables only'
                        ELSE format('trigger on a %s, which activity_log does not track',
                                    CASE t.relkind WHEN 'v' THEN 'view' WHEN 'f' THEN 'foreign table' ELSE 'relation that is not a table' END) END;
            acc := array_append(acc, jsonb_build_object('relation', relation::oid, 'trigger_name', trigger_name, 'function', function::oid,
                    'fires', fires, 'verdict', verdict, 'confidence', confidence, 'style', style, 'audit_table', audit_table::oid,
                    'why', why, 'phase', phase, 'state', state, 'fn', t.tgfoid, 'ext', ext, 'writes', to_jsonb(writes::oid[]),
                    'member', false));
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
            acc := array_append(acc, jsonb_build_object('relation', relation::oid, 'trigger_name', trigger_name, 'function', function::oid,
                    'fires', fires, 'verdict', verdict, 'confidence', confidence, 'style', style, 'audit_table', audit_table::oid,
                    'why', why, 'phase', phase, 'state', state, 'fn', t.tgfoid, 'ext', ext, 'writes', to_jsonb(writes::oid[]),
                    'member', false));
            CONTINUE;
        END IF;

        -- One trigger that cannot be analysed is reported as such; the plan goes on (F6).
        BEGIN
        -- The source without comments; the patterns below are case-insensitive.
        src := activity_log._source_text(t.prosrc);

        -- Effects that are not auditing: a trigger with any of them is never taken over.
        side := ARRAY[]::text[];
        -- NEW is written by assignment (NEW.col := …, NEW := …), by SELECT … INTO NEW[.col], or,
        -- in a BEFORE / INSTEAD OF row trigger, by returning anything but NEW, OLD or NULL
        -- (temporal_tables: RETURN jsonb_populate_record(NEW, …)).
        -- NEW's names: NEW and its aliases (r ALIAS FOR NEW; ALIAS FOR $1 …), each a word (F6).
        pattern := '(new' || coalesce((SELECT string_agg('|' || regexp_replace(lower(m[1]), '([^a-z0-9_])', '\\\1', 'g'), '')
                                          FROM regexp_matches(src, '\m([a-z_][a-z0-9_$]*)\s+alias\s+for\s+(new|old|\$\d+)\M', 'gi') m), '')
                   || ')';
        -- Also through a block label (lbl.new.x := …), anywhere in an INTO list (EXECUTE … INTO
        -- NEW, SELECT INTO NEW a, b), as GET DIAGNOSTICS' target, as a FOR loop's variable
        -- (third review, F4).
        IF src ~* ('(;|\mbegin|\mthen|\melse|\mloop)\s*(("[^"]+"|[a-z_][a-z0-9_$]*)\s*\.\s*)?' || pattern || '\s*(\.\s*("[^"]+"|\w+)\s*)*(\[[^]]*\]\s*)?:?=')
           OR src ~* ('(?<!insert)\s+into\s+(strict\s+)?(("[^"]+"|[a-z_][a-z0-9_$.]*)\s*,\s*)*(("[^"]+"|[a-z_][a-z0-9_$]*)\s*\.\s*)?' || pattern || '\M')
           OR src ~* ('\mget\s+((current|stacked)\s+)?diagnostics\M[^;]*\m' || pattern || '\M')
           OR src ~* ('\mfor\s+(("[^"]+"|[a-z_][a-z0-9_$]*)\s*,\s*)*' || pattern || '\M\s*(,|\min\M)')
           OR (t.tgtype & 1 <> 0 AND t.tgtype & (2 | 64) <> 0
               AND src ~* '\mreturn\s+(?!(new|old|null)\s*;|coalesce\s*\(\s*(new|old)\s*,\s*(new|old)\s*\)\s*;)[^;\s][^;]*;')
           -- A BEFORE INSERT / UPDATE row trigger that returns OLD writes OLD's values instead of
           -- NEW's (freezes the row), unless that RETURN OLD is a DELETE's: IF TG_OP = 'DELETE'
           -- THEN RETURN OLD (F6).
           OR (t.tgtype & 1 <> 0 AND t.tgtype & 2 <> 0 AND t.tgtype & (4 | 16) <> 0
               AND regexp_count(src, '\mreturn\s+old\s*;', 1, 'i')
                   > CASE WHEN t.tgtype & 8 <> 0
                          THEN regexp_count(src, '\mif\s+\(?\s*tg_op\s*=\s*''DELETE''\s*\)?\s*then\s+((?!\m(if|else|elsif|end)\M)[^;]*;\s*)*?return\s+old\s*;', 1, 'i')
                          ELSE 0 END) THEN
            side := side || 'modifies NEW'::text;
        END IF;
        -- ELSE RAISE EXCEPTION 'unhandled case' guards a function against misuse; it validates
        -- nothing. Nor does a protocol guard: IF TG_WHEN <> 'AFTER' THEN RAISE EXCEPTION …
        -- END IF, a condition on TG_WHEN / TG_LEVEL / TG_OP alone (2ndQuadrant's audit-trigger).
        -- plpgsql's compiler says which statements raise and the conditions around each; the
        -- reading of the text decides only where it could not (another language, a body that
        -- does not compile here, which is an effect of its own).
        parsed := NULL;
        parsed_outside := NULL;
        IF t.lanname = 'plpgsql' THEN
            SELECT x.side, x.outside INTO parsed, parsed_outside
              FROM activity_log._plpgsql_side_effects(t.tgfoid, t.tgtype, caller_search_path) x;
        END IF;
        validates := CASE WHEN parsed IS NOT NULL AND NOT EXISTS (SELECT FROM unnest(parsed) x WHERE x LIKE 'has a body %')
                          THEN 'raises errors (validation)' = ANY (parsed)
                          ELSE activity_log._raises_on_writes(src, t.tgtype) END;
        IF validates THEN
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
        -- What plpgsql's compiler reads in the body that the patterns above missed (FOREACH
        -- NEW.x IN ARRAY, a quoted table name after UPDATE, NOTIFY "channel").
        side := side || ARRAY(SELECT x FROM unnest(parsed) x WHERE NOT x = ANY (side));
        -- The allow-list (F2): what the body and the functions it calls do besides what an audit
        -- trigger does. Read once per function.
        eff := effects_cache -> (t.tgfoid::text);
        IF eff IS NULL THEN
            eff := activity_log._body_effects(t.tgfoid, caller_search_path)
                   || jsonb_build_object('callees', to_jsonb(activity_log._callees(t.tgfoid)));
            effects_cache := effects_cache || jsonb_build_object(t.tgfoid::text, eff);
        END IF;
        effects := ARRAY(SELECT jsonb_array_elements_text(eff->'problems'));
        -- and the statements outside it that plpgsql's compiler finds and the text did not show
        effects := effects || ARRAY(SELECT x FROM unnest(parsed_outside) x
                                     WHERE NOT x = ANY (effects)
                                       AND NOT (x LIKE 'upserts into %' AND EXISTS (SELECT FROM unnest(effects) prior(known) WHERE prior.known LIKE 'upserts %')));
        -- The trigger's WHEN clause runs with it, and stops with it (issue 27, second review,
        -- F10): the functions and operators it calls (funcid, opfuncid in pg_trigger.tgqual) are
        -- judged like the body's calls, the domains it casts to by their checks.
        IF t.tgqual IS NOT NULL THEN
            FOR wq IN SELECT DISTINCT p.oid, p.proname, p.provolatile, p.pronamespace, l.lanname,
                            EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                     WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                                       AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e') AS ext
                       FROM regexp_matches(t.tgqual, ':(?:funcid|opfuncid) ([0-9]+)', 'g') m
                       JOIN pg_catalog.pg_proc p ON p.oid = m[1]::oid
                       JOIN pg_catalog.pg_language l ON l.oid = p.prolang
                      ORDER BY p.oid LOOP
                IF wq.pronamespace = 'pg_catalog'::regnamespace OR wq.ext THEN
                    IF wq.provolatile = 'v' AND NOT wq.proname = ANY (activity_log._harmless_volatile()) THEN
                        effects := effects || format('calls %s() in its WHEN clause, which is volatile', quote_ident(wq.proname));
                    END IF;
                ELSIF wq.lanname IN ('sql', 'plpgsql') THEN
                    effects := effects || ARRAY(SELECT format('calls %s in its WHEN clause, which %s', wq.oid::regprocedure, x)
                                                  FROM jsonb_array_elements_text(activity_log._body_effects(wq.oid, caller_search_path, 1)->'problems') x);
                ELSE
                    effects := effects || format('calls %s in its WHEN clause, written in %s, which cannot be read',
                                                 wq.oid::regprocedure, wq.lanname);
                END IF;
            END LOOP;
            readers := activity_log._domain_checks(ARRAY(SELECT DISTINCT m[1]::oid FROM regexp_matches(t.tgqual, ':[a-z]*type ([0-9]+)', 'g') m));
            IF readers IS NOT NULL THEN
                effects := effects || format('uses %s in its WHEN clause', readers);
            END IF;
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
        -- through pgmemento.log_table_event(), Hasura v2 through hdb_catalog.insert_event_log(),
        -- a helper called without its schema).
        callees := ARRAY(SELECT jsonb_array_elements_text(eff->'callees')::oid);
        callees := callees || ARRAY(SELECT h::oid FROM jsonb_array_elements_text(eff->'helpers') h
                                     WHERE NOT h::oid = ANY (callees));
        writes := array_remove(activity_log._insert_targets(src, t.relnamespace, t.pronamespace, t.proconfig,
                                                            caller_search_path), t.tgrelid::regclass);
        SELECT writes || coalesce(array_agg(ww.tbl ORDER BY c.n, ww.n)
                                  FILTER (WHERE NOT ww.tbl = ANY (writes) AND ww.tbl <> t.tgrelid), '{}')
          INTO writes
          FROM unnest(callees) WITH ORDINALITY c(fn, n)
          JOIN pg_catalog.pg_proc p ON p.oid = c.fn,
               unnest(activity_log._insert_targets(activity_log._source_text(p.prosrc), t.relnamespace, p.pronamespace,
                                                   p.proconfig, caller_search_path)) WITH ORDINALITY ww(tbl, n);
        -- Writing its own table (a tombstone, a copy) is a side effect of the trigger, lost with
        -- it (third review, F11).
        IF t.tgrelid::regclass = ANY (activity_log._insert_targets(src, t.relnamespace, t.pronamespace, t.proconfig,
                                                                   caller_search_path))
           OR EXISTS (SELECT 1 FROM unnest(callees) c(fn) JOIN pg_catalog.pg_proc p ON p.oid = c.fn
                       WHERE t.tgrelid::regclass = ANY (activity_log._insert_targets(activity_log._source_text(p.prosrc),
                                 t.relnamespace, p.pronamespace, p.proconfig, caller_search_path))) THEN
            effects := effects || format('inserts into its own table %s', t.tgrelid::regclass);
        END IF;
        SELECT array_agg(w ORDER BY n) INTO writes
          FROM (SELECT w, min(n) AS n FROM unnest(writes) WITH ORDINALITY x(w, n) GROUP BY w) y;
        writes := coalesce(writes, '{}');
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
                                t.relnamespace::regnamespace::text || '.' || quote_ident(t.relname || '_changes'),
                                'audit.' || quote_ident(t.relname)]) WITH ORDINALITY n(name, ord),
                   LATERAL (SELECT pg_catalog.to_regclass(n.name) AS r) x
             WHERE x.r IS NOT NULL
             ORDER BY n.ord LIMIT 1;
            guessed := audit_table IS NOT NULL;
            IF guessed THEN
                writes := writes || audit_table;
            END IF;
        END IF;

        -- Who else reads what it writes (F4): functions in any language but C whose source names
        -- the table other than to insert into it (trigger functions of other tables too), SQL
        -- functions with BEGIN ATOMIC bodies, views, materialized views and rules (pg_depend),
        -- and logical replication (a publication of the table, its schema or all tables). A
        -- trail that is read is not only for people, and would go stale after the migration.
        -- The trigger's own function, its helpers and the functions of the other triggers of
        -- its table (judged with it as one system) do not count.
        concerns := '{}';
        -- An unqualified table name means what the search_path of the session that fires the
        -- trigger says: under every search_path set for a role or this database
        -- (ALTER ROLE … SET search_path) it must mean the same table (F11).
        SELECT string_agg(DISTINCT format('INSERT INTO %s means %s for %s (search_path %s)', x.name,
                                          coalesce(x.alt::text, 'no table'), x.who, x.path), '; ')
          INTO readers
          FROM (SELECT n.name, p.path, p.who,
                       activity_log._resolve_table(n.name, t.relnamespace, t.pronamespace, t.proconfig, caller_search_path) AS base,
                       activity_log._resolve_table(n.name, t.relnamespace, t.pronamespace, t.proconfig, p.path) AS alt
                  FROM (SELECT DISTINCT regexp_replace(m[1], '\s', '', 'g') AS name
                          FROM regexp_matches(src, 'insert\s+into\s+((?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)', 'gi') m) n,
                       (SELECT s.value AS path,
                               CASE WHEN s.setrole = 0 THEN 'every role' ELSE format('role %s', s.setrole::regrole) END
                               || CASE WHEN s.setdatabase = 0 THEN '' ELSE ' in this database' END AS who
                          FROM activity_log._role_settings('search_path') s
                        -- "$user" is each role with a schema of its name (third review, F21)
                        UNION ALL
                        SELECT regexp_replace(caller_search_path, '"?\$user"?', quote_ident(r.rolname), 'g'),
                               format('role %s', quote_ident(r.rolname))
                          FROM pg_catalog.pg_roles r JOIN pg_catalog.pg_namespace ns ON ns.nspname = r.rolname
                         WHERE caller_search_path ~ '\$user' AND r.rolname <> session_user) p
                 WHERE n.name !~ '^("[^"]+"|[^".]+)\.') x
         WHERE x.base IS NOT NULL AND x.alt IS DISTINCT FROM x.base;
        IF readers IS NOT NULL THEN
            concerns := concerns || format('it names its table without a schema: %s', readers);
        END IF;
        -- Of the other triggers of its table only those of its system (writing one of its trails
        -- or a trail linked to one: see _system_link; judged with it) are skipped: one that only
        -- reads the trail (a rate limit) is a reader (F9), also when it writes some other table
        -- (third review, F16).
        skip := callees || t.tgfoid
                || ARRAY(SELECT o.tgfoid FROM pg_catalog.pg_trigger o,
                                LATERAL (SELECT coalesce(array_agg(DISTINCT x.w::oid), '{}') AS w
                                           FROM unnest(o.tgfoid || activity_log._callees(o.tgfoid)) w(fn)
                                           JOIN pg_catalog.pg_proc op ON op.oid = w.fn,
                                                unnest(activity_log._insert_targets((activity_log._lex(op.prosrc)).code, t.relnamespace,
                                                       op.pronamespace, op.proconfig, caller_search_path)) x(w)) ow
                          WHERE o.tgrelid = t.tgrelid AND ow.w <> '{}'
                            AND activity_log._system_link(t.tgfoid, NULL, writes::oid[], o.tgfoid, NULL, ow.w) IS NOT NULL);
        FOREACH found IN ARRAY writes LOOP
            IF NOT reader_cache ? (found::oid::text) THEN
                reader_cache := reader_cache || jsonb_build_object(found::oid::text,
                    CASE WHEN (SELECT lower(c.relname) FROM pg_catalog.pg_class c WHERE c.oid = found) = ANY (names)
                         THEN activity_log._readers(found, hot_oids, hot_srcs)
                         ELSE activity_log._readers(found, cand_oids, cand_srcs) END);
            END IF;
            SELECT string_agg(x.v->>'name', ', ' ORDER BY x.v->>'name') INTO readers
              FROM (SELECT v FROM jsonb_array_elements(reader_cache -> (found::oid::text)) v
                     WHERE v->>'oid' IS NULL OR NOT (v->>'oid')::oid = ANY (skip)
                     ORDER BY v->>'name' LIMIT 3) x;
            IF readers IS NOT NULL THEN
                concerns := concerns || format('its table %s is read by %s', found, readers);
            END IF;
            SELECT string_agg(DISTINCT quote_ident(pub.pubname), ', ') INTO pubs
              FROM pg_catalog.pg_publication pub
             WHERE pub.puballtables
                OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr
                            WHERE pr.prpubid = pub.oid
                              AND (pr.prrelid = found OR pr.prrelid IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors(found) a)))
                OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace pn JOIN pg_catalog.pg_class k ON k.oid = found
                            WHERE pn.pnpubid = pub.oid AND pn.pnnspid = k.relnamespace);
            IF pubs IS NOT NULL THEN
                concerns := concerns || format('its table %s is published (publication %s): logical replication sends its rows on',
                                               found, pubs);
            END IF;
            -- Row level security policies, defaults and foreign keys of other tables that use it (F9).
            SELECT string_agg(DISTINCT x, ', ') INTO readers
              FROM (SELECT format('policy %I on %s', pol.polname, pol.polrelid::regclass) AS x
                      FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_policy pol ON pol.oid = d.objid
                     WHERE d.classid = 'pg_catalog.pg_policy'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
                       AND d.refobjid = found
                    UNION ALL
                    SELECT format('a default of %s', ad.adrelid::regclass)
                      FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid
                     WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
                       AND d.refobjid = found AND ad.adrelid <> found
                    UNION ALL
                    SELECT format('foreign key %I of %s', con.conname, con.conrelid::regclass)
                      FROM pg_catalog.pg_constraint con
                     WHERE con.contype = 'f' AND con.confrelid = found AND con.conrelid <> found
                       -- another trail (trigger functions insert into it): one system's tables
                       AND NOT con.conrelid = ANY (writes::oid[])
                       AND NOT lower((SELECT k.relname FROM pg_catalog.pg_class k WHERE k.oid = con.conrelid)) = ANY (names)
                    UNION ALL
                    SELECT format('publication %I (of its partition %s)', pub.pubname, pr.prrelid::regclass)
                      FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication pub ON pub.oid = pr.prpubid
                     WHERE pr.prrelid IN (SELECT x.relid FROM pg_catalog.pg_partition_tree(found) x WHERE x.relid <> found)
                    UNION ALL
                    SELECT format('logical replication slot %I (plugin %s), which decodes the changes of every table', sl.slot_name, sl.plugin)
                      FROM pg_catalog.pg_replication_slots sl
                     WHERE sl.slot_type = 'logical' AND sl.plugin IS DISTINCT FROM 'pgoutput'
                       AND sl.database = current_database()) y;
            IF readers IS NOT NULL THEN
                concerns := concerns || format('its table %s is used by %s', found, readers);
            END IF;
            -- The trail itself must not do business work (F7): a view, a foreign table, a
            -- trigger or rule of its own or of a partition, a default or domain check calling code.
            IF activity_log._trail_problem(found) IS NOT NULL THEN
                concerns := concerns || activity_log._trail_problem(found);
            END IF;
        END LOOP;
        -- Every table it writes itself must be a trail it copies the row into (F8): an INSERT
        -- into any other table (user notifications, a last-change upsert) is business data.
        SELECT string_agg(DISTINCT w::text, ', ') INTO readers
          FROM (SELECT activity_log._resolve_table(regexp_replace(m[1], '\s', '', 'g'), t.relnamespace, t.pronamespace,
                                                   t.proconfig, caller_search_path) AS w, s.stmt
                  FROM regexp_split_to_table(src, ';') s(stmt),
                       regexp_matches(s.stmt, 'insert\s+into\s+((?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)', 'gi') m
                -- and the helpers it hands values to (third review, F20): a helper taking
                -- arguments that inserts them into a table other than the trail (a helper with
                -- none, as django-pghistory's context upsert, is judged by _body_effects)
                UNION ALL
                SELECT activity_log._resolve_table(regexp_replace(m[1], '\s', '', 'g'), t.relnamespace, p.pronamespace,
                                                   p.proconfig, caller_search_path), ''
                  FROM unnest(callees) c(fn) JOIN pg_catalog.pg_proc p ON p.oid = c.fn AND p.pronargs > 0,
                       regexp_matches(activity_log._source_text(p.prosrc),
                                      'insert\s+into\s+((?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*\.\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)', 'gi') m) x
         WHERE x.w IS NOT NULL AND x.w <> t.tgrelid AND x.w IS DISTINCT FROM audit_table
           AND (x.stmt = '' OR x.stmt !~* '\m(to_jsonb|row_to_json|to_json|hstore|row)\s*\(\s*((coalesce|nullif)\s*\(\s*)?(new|old)\M|\m(new|old)\s*\.\s*\*');
        IF readers IS NOT NULL THEN
            concerns := concerns || format('it also writes %s, which is not a copy of the row', readers);
        END IF;
        -- nextval() only on a sequence a trail it writes owns (its serial or identity column):
        -- a shared business sequence (invoice numbers) would get gaps nobody else makes (F12).
        SELECT string_agg(DISTINCT x.arg, ', ') INTO readers
          FROM (SELECT btrim(m[1]) AS arg,
                       CASE WHEN btrim(m[1]) ~ '^''[^'']+''(\s*::\s*regclass)?$'
                            THEN activity_log._resolve_table(substring(btrim(m[1]) FROM '^''([^'']+)'''), t.relnamespace,
                                                             t.pronamespace, t.proconfig, caller_search_path) END AS seq
                  FROM regexp_matches(src || ' ' || coalesce((SELECT string_agg(activity_log._source_text(p.prosrc), ' ')
                                                                FROM unnest(callees) c(fn) JOIN pg_catalog.pg_proc p ON p.oid = c.fn), ''),
                                      '\mnextval\s*\(([^()]*(\([^()]*\))?[^()]*)\)', 'gi') m) x
         WHERE x.seq IS NULL
            OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                            WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = x.seq
                              AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
                              AND d.refobjid = ANY (writes::oid[]));
        IF readers IS NOT NULL THEN
            concerns := concerns || format('it takes numbers from nextval(%s), a sequence no table it writes owns', readers);
        END IF;
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

        -- A delivery queue (Hasura's hdb_catalog.event_log, a polling relay's outbox): a table it
        -- writes has the columns a consumer keeps — delivered, tries, locked, next_retry_at,
        -- status, sent_at … — that the trigger's own table does not have (a history table may
        -- copy a column of that name). An outbox in Debezium's layout (aggregatetype,
        -- aggregateid, type, payload, or aggregate_type, aggregate_id, event_type) is read by
        -- its event router. Either way its rows are read and acted on by something else: the
        -- trigger is never taken over. Every table it writes is looked at, not only the first.
        queue := NULL;
        outbox := NULL;
        FOREACH found IN ARRAY writes LOOP
            EXIT WHEN queue IS NOT NULL OR outbox IS NOT NULL;
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO queue
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = found AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attname IN ('delivered', 'delivered_at', 'tries', 'retries', 'retry_count', 'attempts',
                                 'next_retry_at', 'retry_at', 'locked', 'locked_at', 'locked_by', 'locked_until',
                                 'processed', 'processed_at', 'dispatched', 'dispatched_at', 'acked', 'acked_at',
                                 'consumed', 'consumed_at', 'published', 'published_at', 'sent', 'sent_at',
                                 'status', 'state')
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute s
                                WHERE s.attrelid = t.tgrelid AND s.attname = a.attname AND NOT s.attisdropped);
            IF queue IS NOT NULL THEN
                queue_table := found;
            END IF;
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO outbox
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = found AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attname IN ('aggregatetype', 'aggregateid', 'aggregate_type', 'aggregate_id', 'type', 'event_type', 'payload')
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute x WHERE x.attrelid = found AND NOT x.attisdropped
                              AND x.attname IN ('aggregatetype', 'aggregate_type'))
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute x WHERE x.attrelid = found AND NOT x.attisdropped
                              AND x.attname IN ('aggregateid', 'aggregate_id'));
            IF outbox IS NOT NULL THEN
                queue_table := found;
            END IF;
        END LOOP;

        -- A transition table copies rows when it is read as it is: a GROUP BY or an aggregate
        -- over it (INSERT … SELECT kind, count(*) FROM new_rows GROUP BY kind) counts, it does
        -- not copy (F5).
        transition_copy := (t.tgnewtable IS NOT NULL OR t.tgoldtable IS NOT NULL)
            AND src ~* ('\mfrom\s+(' || array_to_string(ARRAY(SELECT regexp_replace(x, '([^a-zA-Z0-9_])', '\\\1', 'g')
                                                              FROM unnest(ARRAY[t.tgnewtable, t.tgoldtable]::text[]) x
                                                             WHERE x IS NOT NULL), '|') || ')\M')
            AND src !~* '\mgroup\s+by\M|\m(count|sum|avg|min|max|array_agg|string_agg|jsonb_agg|json_agg|jsonb_object_agg|json_object_agg|bool_and|bool_or|every)\s*\(';
        whole_row := src ~* '\m(to_jsonb|row_to_json|to_json|hstore|row)\s*\(\s*((coalesce|nullif)\s*\(\s*)?(new|old)\M'
                     OR src ~* '\m(new|old)\s*\.\s*\*'
                     OR src ~* '\musing\s+(\w+\s*,\s*)*(new|old)\M'
                     OR transition_copy;
        row_data := whole_row OR src ~* '\m(new|old)\s*\.\s*("|[a-z_])';
        uses_op := src ~* '\mtg_op\M';
        generic := src ~* '\mtg_(table_name|relid|table_schema|relname)\M';
        image := CASE WHEN src ~* '\mhstore\s*\(\s*(new|old)\M' THEN 'hstore'
                      WHEN src ~* '\m(to_jsonb|row_to_json|to_json)\s*\(\s*((coalesce|nullif)\s*\(\s*)?(new|old)\M' THEN 'jsonb'
                      WHEN transition_copy THEN 'transition table'
                      WHEN whole_row THEN 'row copy'
                      ELSE 'column list' END;
        -- What the allow-list found counts against a row copy the patterns above did not stop
        -- already; a trigger that copies nothing is business anyway (its effects still keep it
        -- from joining an audit system, see below).
        IF side = '{}' AND effects <> '{}' AND row_data THEN
            side := effects;
        END IF;

        -- A TRUNCATE companion (supa_audit's audit_t): a statement trigger on TRUNCATE alone
        -- that writes the operation into the trail of an audit row trigger of the same table.
        -- activity_log records TRUNCATE itself, so it migrates with that row trigger.
        companion := NULL;
        IF rows_of IS NULL AND t.tgtype & 1 = 0 AND t.tgtype & 32 <> 0 AND t.tgtype & (4 | 8 | 16) = 0
           AND audit_table IS NOT NULL AND NOT row_data AND side = '{}' AND effects = '{}'
           AND src ~* '\mtg_op\M|''truncate''|''t''' THEN
            own_table := audit_table;
            SELECT p.trigger_name INTO companion
              FROM activity_log._migration_plan(caller_search_path, t.tgrelid) p
             WHERE p.verdict = 'audit' AND p.audit_table = own_table
             ORDER BY p.trigger_name LIMIT 1;
        END IF;

        -- A plain row logger: INSERT … VALUES (NEW.col, …), every column of the row (each name
        -- as a whole word: NEW.name is not NEW.name_en), into a table nothing else reads (see
        -- concerns). Its body says what it is; the table's name is weak evidence then
        -- (django-pghistory's <app>_<model>event tables). Names that say outbox, event(s),
        -- message(s) or queue count only against auditing, never for it.
        flat := lower(regexp_replace(src, '\s|"', '', 'g'));
        weak_not := audit_table IS NOT NULL
                    AND (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = audit_table) ~* '(outbox|event|message|queue)';
        named := audit_table IS NOT NULL AND NOT weak_not
                 AND audit_table::text ~* '(audit|histor|\mlog|_log|logged|change|journal|version|trail)';
        plain := audit_table IS NOT NULL AND NOT guessed AND row_data AND side = '{}' AND queue IS NULL AND outbox IS NULL
                 AND concerns = '{}'
                 AND src ~* 'insert\s+into\s+[^;]*?\mvalues\s*\([^;]*\m(new|old)\s*\.'
                 -- it copies the row: every column of the table, as NEW.col or OLD.col
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                  WHERE a.attrelid = t.tgrelid AND a.attnum > 0 AND NOT a.attisdropped
                                    AND flat !~ ('\m(new|old)\.' || regexp_replace(lower(a.attname), '([^a-z0-9_])', '\\\1', 'g')
                                                 || '(?![a-z0-9_$])'))
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                   JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
                                  WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass
                                    AND d.refclassid = 'pg_catalog.pg_class'::regclass
                                    AND d.refobjid = audit_table AND r.ev_class <> audit_table)
                 AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(reader_cache -> (audit_table::oid::text)) v
                                  WHERE v->>'oid' IS NULL
                                     OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                                                     WHERE p.oid = (v->>'oid')::oid AND p.prorettype = 'pg_catalog.trigger'::regtype));

        -- The columns a column-list copy leaves out (pghistory's fields=[…]): it does not copy the row.
        partial := NULL;
        IF audit_table IS NOT NULL AND row_data AND NOT whole_row THEN
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO partial
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = t.tgrelid AND a.attnum > 0 AND NOT a.attisdropped
               AND flat !~ ('\m(new|old)\.' || regexp_replace(lower(a.attname), '([^a-z0-9_])', '\\\1', 'g') || '(?![a-z0-9_$])');
        END IF;

        IF outbox IS NOT NULL THEN
            verdict := 'business';
            confidence := 0.90;
            style := 'outbox';
            why := format('feeds an outbox: %s has %s columns, the layout an outbox relay (Debezium''s event router) reads',
                          queue_table, outbox);
        ELSIF queue IS NOT NULL THEN
            verdict := 'business';
            confidence := 0.90;
            style := 'delivery queue';
            why := format('feeds a delivery queue: %s has %s columns, so something consumes its rows',
                          queue_table, queue);
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
                     - CASE WHEN guessed THEN 0.1 ELSE 0 END
                     - CASE WHEN weak_not AND NOT plain THEN 0.1 ELSE 0 END;
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
            ELSIF guessed AND NOT (
                      -- the guess is what the code computes: the table's own schema and name with
                      -- the suffix, format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME || '_audit')
                      (SELECT c.relnamespace = t.relnamespace AND left(c.relname, length(t.relname)) = t.relname
                              AND src ~* ('\mtg_table_schema\M')
                              AND src ~* ('\mtg_(table_name|relname)\s*\|\|\s*'''
                                          || regexp_replace(substr(c.relname, length(t.relname) + 1), '([^a-zA-Z0-9_])', '\\\1', 'g')
                                          || '''')
                         FROM pg_catalog.pg_class c WHERE c.oid = audit_table)) THEN
                -- Any other table named at run time (EXECUTE format('INSERT INTO %s …', TG_ARGV[0]))
                -- is a guess: the trigger may write any table, so it is never taken over on it (F11).
                verdict := 'uncertain';
                why := why || format(', but the table it writes is named only at run time: %s is a guess', audit_table);
            ELSIF confidence >= 0.75 THEN
                verdict := 'audit';
            ELSE
                verdict := 'uncertain';
                why := why || CASE WHEN partial IS NOT NULL THEN format(', but only some of its columns (not %s)', partial) ELSE '' END
                            || CASE WHEN weak_not THEN format(', and by its name %s looks like a table something else reads', audit_table)
                                    WHEN partial IS NOT NULL THEN ''
                                    ELSE ', which does not look like an audit table' END;
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
                        ELSE format('builds its INSERT into %s at run time; what it copies could not be determined', audit_table) END
                   || CASE WHEN effects <> '{}' THEN ', and it also ' || array_to_string(effects, ', ') ELSE '' END
                   || CASE WHEN concerns <> '{}' THEN '; ' || array_to_string(concerns, '; ') ELSE '' END;
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
        EXCEPTION WHEN OTHERS THEN
            verdict := 'uncertain';
            confidence := 0.30;
            style := 'unanalysable';
            why := format('could not be analysed (%s): left alone unless named', SQLERRM);
            writes := '{}';
            audit_table := NULL;
            row_data := false;
            effects := ARRAY['could not be analysed'];
            ext := NULL;
        END;
        acc := array_append(acc, jsonb_build_object('relation', relation::oid, 'trigger_name', trigger_name, 'function', function::oid,
                'fires', fires, 'verdict', verdict, 'confidence', confidence, 'style', style, 'audit_table', audit_table::oid,
                'why', why, 'phase', phase, 'state', state, 'fn', t.tgfoid, 'ext', ext, 'writes', to_jsonb(writes::oid[]),
                'member', true, 'copies', coalesce(row_data AND audit_table IS NOT NULL, false),
                'effects', to_jsonb(coalesce(effects, '{}'))));
    END LOOP;

    -- Systems: the triggers of one table linked by _system_link (transitively) get one verdict
    -- and migrate together. A member that writes a trail of the system but not the row (a
    -- statement logger: pgMemento's log_statement) takes the system's verdict; one business
    -- for its own reasons makes them all business, one uncertain all uncertain.
    FOR groups IN SELECT array_agg(q.n::integer ORDER BY q.n) AS pos
                    FROM unnest(acc) WITH ORDINALITY q(v, n)
                   WHERE (q.v->>'member')::boolean
                   GROUP BY (q.v->>'relation')::oid LOOP
        pos := groups.pos;
        mem := ARRAY(SELECT acc[x] FROM unnest(pos) WITH ORDINALITY u(x, n) ORDER BY u.n);
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
            -- A member that copies no row is promoted to audit only when every table it writes is
            -- a trail the system's row copies write, and it does nothing outside the allow-list
            -- (F3): else the system is uncertain.
            IF kind = 'audit' THEN
                trails := ARRAY(SELECT DISTINCT w::oid FROM unnest(comp) u(m), jsonb_array_elements_text(mem[u.m]->'writes') w
                                 WHERE (mem[u.m]->>'copies')::boolean);
                SELECT mem[u.m] INTO culprit FROM unnest(comp) u(m)
                 WHERE NOT (mem[u.m]->>'copies')::boolean
                   AND (jsonb_array_length(mem[u.m]->'effects') > 0
                        OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(mem[u.m]->'writes') w WHERE NOT w::oid = ANY (trails)))
                 ORDER BY u.m LIMIT 1;
                IF culprit IS NOT NULL THEN
                    kind := 'uncertain';
                    culprit := culprit || jsonb_build_object('because', format('%I copies no row and %s',
                        culprit->>'trigger_name',
                        CASE WHEN jsonb_array_length(culprit->'effects') > 0
                             THEN 'also ' || (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(culprit->'effects') x)
                             ELSE format('writes %s, which no row copy of the system writes',
                                         (SELECT string_agg(w::oid::regclass::text, ', ') FROM jsonb_array_elements_text(culprit->'writes') w
                                           WHERE NOT w::oid = ANY (trails))) END));
                END IF;
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
                             WHEN culprit ? 'because' THEN (culprit->>'because') || ', so '
                             ELSE format('%I is %s, so ', culprit->>'trigger_name', kind) END
                        || CASE kind WHEN 'audit' THEN 'they migrate together'
                                     WHEN 'uncertain' THEN 'they migrate together, when all of them are named'
                                     ELSE 'none of them migrates' END));
                acc[pos[i]] := e;
            END LOOP;
        END LOOP;
    END LOOP;

    FOREACH e IN ARRAY acc LOOP
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
SET standard_conforming_strings = on
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
                                            'system', p.system, 'function', p.function::oid))
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
        -- Across tables too (F8): the uncertain triggers sharing a function or a trail with one
        -- named are one system — pgMemento's five functions serve every table it logs, into one
        -- row_log its restore functions read — and are named together or not at all. (A trail
        -- that only people read, an audit system, moves table by table.) include_triggers names
        -- triggers by name on every table of tables, or on every table when tables is NULL.
        FOR t IN WITH p AS (SELECT * FROM jsonb_to_recordset(plan)
                                   x(relation oid, trigger_name name, verdict text, audit_table oid, function oid))
                 SELECT c.relation, c.trigger_name,
                        array_agg(DISTINCT o.relation::regclass::text ORDER BY o.relation::regclass::text) AS others,
                        (SELECT array_agg(DISTINCT r.relation::regclass::text ORDER BY r.relation::regclass::text)
                           FROM p r, p s2
                          WHERE s2.trigger_name = ANY (include_triggers) AND s2.verdict = 'uncertain'
                            AND (tables IS NULL OR s2.relation::regclass = ANY (tables))
                            AND r.verdict = 'uncertain'
                            AND (r.function = s2.function OR r.audit_table = s2.audit_table)) AS all_tables,
                        (SELECT array_agg(DISTINCT r.trigger_name ORDER BY r.trigger_name)
                           FROM p r, p s2
                          WHERE s2.trigger_name = ANY (include_triggers) AND s2.verdict = 'uncertain'
                            AND (tables IS NULL OR s2.relation::regclass = ANY (tables))
                            AND r.verdict = 'uncertain'
                            AND (r.function = s2.function OR r.audit_table = s2.audit_table)) AS all_triggers
                   FROM p c
                   JOIN p o ON o.relation <> c.relation AND o.verdict = 'uncertain'
                           AND (o.function = c.function OR o.audit_table = c.audit_table)
                  WHERE c.verdict = 'uncertain' AND c.trigger_name = ANY (include_triggers)
                    AND (tables IS NULL OR c.relation::regclass = ANY (tables))
                    AND NOT (o.trigger_name = ANY (include_triggers) AND (tables IS NULL OR o.relation::regclass = ANY (tables)))
                    AND NOT EXISTS (SELECT 1 FROM activity_log.migration m WHERE m.relid::oid = o.relation)
                  GROUP BY c.relation, c.trigger_name
                  ORDER BY c.relation, c.trigger_name
                  LIMIT 1
        LOOP
            RAISE EXCEPTION 'trigger % on % is one system with the triggers of %: they migrate together or not at all',
                quote_ident(t.trigger_name), t.relation::regclass, array_to_string(t.others, ', ')
                USING ERRCODE = 'invalid_parameter_value',
                HINT = format('They share its function or its trail. Name them all: tables => %L, include_triggers => %L.',
                              t.all_tables, t.all_triggers);
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

-- Privileges as the install script gives them (sql/grants.sql): internal functions are not
-- PUBLIC's; the migration's helpers are activity_log_admin's.
-- _checked_reader is `reader` when it is what _legacy_reader derives from the catalog for the
-- audit table and source table, else a problem: its SQL is run as the caller, and a row of
-- migration_backup written by hand must not choose it. Nor may the tables' types run their
-- owners' code (a domain's CHECK, a cast) as the caller while rows are compared, nor their
-- row-level security policies apply to the caller (issue 27, third review, F13): a policy's
-- expression is code of whoever wrote it, run with the reader's rights on every row read.
CREATE OR REPLACE FUNCTION activity_log._checked_reader(audit regclass, source regclass, reader jsonb) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.row_security_active(source) OR pg_catalog.row_security_active(audit)
                THEN jsonb_build_object('problem', format(
                    '%s or %s has row-level security policies that apply to you: comparing their rows would run the policies'' code with your rights; compare as the table''s owner (without FORCE ROW LEVEL SECURITY) or as a role with BYPASSRLS',
                    source, audit))
                WHEN activity_log._runs_user_code(source) OR activity_log._runs_user_code(audit)
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
CREATE OR REPLACE FUNCTION activity_log._legacy_counts(audit regclass, reader jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    counts jsonb;
BEGIN
    IF reader ? 'problem' OR activity_log._runs_user_code(audit) OR pg_catalog.row_security_active(audit) THEN
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

-- A session with standard_conforming_strings off read '\m' in a pattern as 'm': the functions
-- whose bodies hold backslashes pin it (the ones redefined above say so themselves).
ALTER FUNCTION activity_log._skipped_updates(oid) SET standard_conforming_strings = on;

REVOKE EXECUTE ON FUNCTION activity_log._source_text(text), activity_log._insert_targets(text, oid, oid, text[], text),
    activity_log._callees(oid), activity_log._readers(regclass, oid[], text[]),
    activity_log._system_link(oid, oid, oid[], oid, oid, oid[]), activity_log._migration_plan(text, regclass),
    activity_log._regclass(text), activity_log._path_schemas(text), activity_log._call_names(text),
    activity_log._harmless_volatile(), activity_log._body_effects(oid, text, integer, boolean),
    activity_log._trail_problem(regclass), activity_log._raises_on_writes(text, integer),
    activity_log._lex(text), activity_log._domain_checks(oid[]), activity_log._plpgsql_side_effects(oid, integer, text),
    activity_log._trigger_events(integer), activity_log._guard_excludes(text, boolean, text, text, text),
    activity_log._role_settings(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION activity_log._migration_plan(text, regclass), activity_log._source_text(text),
    activity_log._insert_targets(text, oid, oid, text[], text), activity_log._callees(oid),
    activity_log._readers(regclass, oid[], text[]), activity_log._system_link(oid, oid, oid[], oid, oid, oid[]),
    activity_log._regclass(text), activity_log._path_schemas(text), activity_log._call_names(text),
    activity_log._harmless_volatile(), activity_log._body_effects(oid, text, integer, boolean),
    activity_log._trail_problem(regclass), activity_log._raises_on_writes(text, integer),
    activity_log._lex(text), activity_log._domain_checks(oid[]), activity_log._plpgsql_facts(oid, text),
    activity_log._plpgsql_side_effects(oid, integer, text), activity_log._trigger_events(integer),
    activity_log._guard_excludes(text, boolean, text, text, text), activity_log._role_settings(text)
    TO activity_log_admin;

-- 0.1.0 left queue, workers and index_usage unreadable by activity_log_reader: a view's
-- functions run as its reader, and these two were granted to nobody.
GRANT EXECUTE ON FUNCTION activity_log._queue(), activity_log._trail_index_kind(oid) TO activity_log_reader;

-- history() also finds a table's changes recorded under its earlier oids (before a dump and
-- restore, or a DROP and CREATE of a table of the same name), by the present schema and name.
CREATE OR REPLACE FUNCTION activity_log.history(relation regclass, key jsonb)
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

-- Who did what: per database user and application actor. One pass over the window (issue 31:
-- the rows of a window read twice were materialized, 393 ms on a trail of 10 M rows): its rows
-- are counted per user, actor and table, and each user's row is rolled up from that small
-- result. A user's table rows rank first (false sorts before true: p.tbl IS NULL), so their
-- row_number is their rank among the tables, as before; sum() of counts is a numeric of scale
-- 0, as count()::numeric was, so success_rate keeps its value and scale.
CREATE OR REPLACE FUNCTION activity_log.user_summary(since interval DEFAULT '30 days')
RETURNS TABLE (db_user text, actor text, events bigint, errors bigint, success_rate numeric,
               first_seen timestamptz, last_seen timestamptz, top_tables text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off  -- bucket arithmetic gets huge estimates; JIT would cost ~0.5 s a call
AS $$
BEGIN
    PERFORM activity_log._check_window('since', since);
    RETURN QUERY
    WITH per_table AS (
        SELECT e.db_user AS u, e.actor AS a, e.schema_name AS sch, e.table_name AS tbl, count(*) AS n,
               count(*) FILTER (WHERE e.status = 'error') AS n_error,
               count(*) FILTER (WHERE e.status = 'success') AS n_success,
               min(e.ts) AS first_ts, max(e.ts) AS last_ts
          FROM activity_log.events e
         WHERE e.ts > now() - since AND e.committed_at > now() - since AND e.kind <> 'system'
         GROUP BY e.db_user, e.actor, e.schema_name, e.table_name
    ),
    ranked AS (
        SELECT p.*, quote_ident(p.sch) || '.' || quote_ident(p.tbl) AS name,
               row_number() OVER (PARTITION BY p.u, p.a
                                  ORDER BY p.tbl IS NULL, p.n DESC, quote_ident(p.sch) || '.' || quote_ident(p.tbl)) AS rank
          FROM per_table p
    )
    SELECT r.u, r.a, sum(r.n)::bigint, sum(r.n_error)::bigint,
           round(sum(r.n_success) / sum(r.n), 4),
           min(r.first_ts), max(r.last_ts),
           array_agg(r.name ORDER BY r.rank) FILTER (WHERE r.tbl IS NOT NULL AND r.rank <= 5)
      FROM ranked r
     GROUP BY r.u, r.a
     ORDER BY sum(r.n) DESC, r.u, r.a;
END
$$;
