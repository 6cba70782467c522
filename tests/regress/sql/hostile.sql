-- Hostile and odd input: identifiers that look like SQL, quotes, unicode and mixed case;
-- every common column type; arguments that are NULL, of the wrong shape or huge. Each gives
-- the right rows or a clear error.

-- A table and columns named to break string-built SQL.
CREATE TABLE "Ödd ""Table""; DROP TABLE x; --" (
    "Mixed Col" int PRIMARY KEY,
    "ünïcode"   text,
    "a'b"       text
);
SELECT activity_log.track('"Ödd ""Table""; DROP TABLE x; --"', exclude_columns => '{a''b}');
SELECT relid, exclude_columns FROM activity_log.tracked_tables WHERE relid::text LIKE '%Ödd%';
INSERT INTO "Ödd ""Table""; DROP TABLE x; --" VALUES (1, 'ü', 'secret');
UPDATE "Ödd ""Table""; DROP TABLE x; --" SET "ünïcode" = '漢字 "quoted" \ back' WHERE "Mixed Col" = 1;
DELETE FROM "Ödd ""Table""; DROP TABLE x; --";
SELECT activity_log.flush();
SELECT op, schema_name, table_name, row_key, old_row, new_row, changed_columns
  FROM activity_log.changes WHERE table_oid = '"Ödd ""Table""; DROP TABLE x; --"'::regclass ORDER BY id;
SELECT count(*) FROM activity_log.history('"Ödd ""Table""; DROP TABLE x; --"', '{"Mixed Col": 1}');

-- Injection-shaped and malformed arguments.
SELECT activity_log.track('x; DROP TABLE y');
SELECT activity_log.track('"Ödd ""Table""; DROP TABLE x; --"', exclude_columns => '{"nope; DROP TABLE z"}');
SELECT activity_log.track('"Ödd ""Table""; DROP TABLE x; --"', exclude_columns => NULL);
SELECT activity_log.track(NULL);
SELECT activity_log.track('"Ödd ""Table""; DROP TABLE x; --"', durability => 'SYNC''; DROP TABLE y; --');
SELECT activity_log.track('"Ödd ""Table""; DROP TABLE x; --"', durability => NULL);
SELECT activity_log.untrack('pg_class');
SELECT activity_log.history('"Ödd ""Table""; DROP TABLE x; --"', '[1]');
SELECT activity_log.history('"Ödd ""Table""; DROP TABLE x; --"', NULL);
SELECT activity_log.log_event('', '{}');
SELECT activity_log.log_event(repeat('x', 201), '{}');
SELECT activity_log.log_event('ok', '"just a string"');
SELECT activity_log.log_event('ok', '{}', category => 'x''; DROP TABLE y; --');
SELECT activity_log.log_event(E'drop\ntable ''y''; --', jsonb_build_object('big', repeat('ü', 100000)),
                              entity_id => repeat('9', 1024));
SELECT activity_log.flush();
SELECT command, length(details->'data'->>'big') AS big_chars, length(details->>'entity_id') AS entity_id_chars
  FROM activity_log.events WHERE kind = 'event' ORDER BY id DESC LIMIT 1;
SELECT activity_log.recent(since => '-1 day');
SELECT activity_log.recent(max_rows => -1);
SELECT activity_log.flush('-1 s');
SELECT activity_log.migrate_triggers(phase => 1, include_triggers => '{"x; DROP TABLE y; --"}');
SELECT activity_log.migrate_triggers(phase => 1, tables => '{"x; DROP TABLE y; --"}');
SELECT * FROM activity_log.trend(since => '1 day', bucket => '0 s');
SELECT * FROM activity_log.anomalies(since => NULL);

-- Every common type: the stored image is what PostgreSQL's own to_jsonb makes of the row.
CREATE TYPE hostile_mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN hostile_positive AS int CHECK (VALUE > 0);
CREATE TYPE hostile_pair AS (a int, b text);
CREATE TABLE hostile_types (
    id    int PRIMARY KEY,
    n     numeric,
    f     float8,
    d     date,
    ts    timestamptz,
    iv    interval,
    arr   int[],
    txt   text[],
    pair  hostile_pair,
    pos   hostile_positive,
    mood  hostile_mood,
    b     bytea,
    j     json,
    jb    jsonb,
    u     uuid,
    ip    inet,
    r     int4range,
    bits  bit varying,
    big   text
);
SELECT activity_log.track('hostile_types');
INSERT INTO hostile_types VALUES
    (1, 'NaN', 'NaN', 'infinity', '-infinity', '-178000000 years', '{1,NULL,3}', '{"a,b","c\"d",NULL}',
     ROW(1, 'x"y'), 7, 'happy', '\x00ff00', '{"dup": 1, "dup": 2,  "ws" : true}', '{"nested": {"a": [1, null]}}',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '::1/128', '[1,5)', B'10101', repeat('long text ', 200000)),
    (2, 'Infinity', '-Infinity', '4713-01-01 BC', '294276-12-31 23:59:59.999999+00', '1 microsecond', '{}', '{}',
     NULL, 1, 'sad', '', 'null', 'null', NULL, '10.0.0.0/8', 'empty', B'', ''),
    (3, -0.000000000000000000001, 1e308, '2026-11-25', '2026-11-25 12:00:00+05:30', NULL, NULL, NULL,
     ROW(NULL, NULL), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
UPDATE hostile_types SET big = big || '!', arr = arr || 4, mood = 'ok' WHERE id = 1;
UPDATE hostile_types SET pair = ROW(2, E'tab\there') WHERE id = 3;
SELECT activity_log.flush();
-- The newest image of each row equals the row as PostgreSQL renders it, with the writer's
-- settings: the server's time zone and the default IntervalStyle.
SELECT set_config('TimeZone', setting, false) IS NOT NULL AS server_time_zone
  FROM pg_file_settings WHERE name = 'timezone' ORDER BY seqno DESC LIMIT 1;
SET IntervalStyle = 'postgres';
SELECT t.id, c.op, c.new_row = to_jsonb(t) AS exact, c.changed_columns
  FROM hostile_types t
  JOIN LATERAL (SELECT * FROM activity_log.changes c
                 WHERE c.table_oid = 'hostile_types'::regclass AND c.row_key = jsonb_build_object('id', t.id)
                 ORDER BY c.id DESC LIMIT 1) c ON true
 ORDER BY t.id;
SELECT new_row - 'big' AS row_2 FROM activity_log.changes
 WHERE table_oid = 'hostile_types'::regclass AND row_key = '{"id": 2}';
SELECT length(new_row->>'big') AS toasted_chars, length(old_row->>'big') AS old_chars
  FROM activity_log.changes WHERE table_oid = 'hostile_types'::regclass AND row_key = '{"id": 1}' AND op = 'UPDATE';

RESET TimeZone;
RESET IntervalStyle;
SELECT activity_log.untrack('hostile_types');
SELECT activity_log.untrack('"Ödd ""Table""; DROP TABLE x; --"');
DROP TABLE hostile_types, "Ödd ""Table""; DROP TABLE x; --";
DROP TYPE hostile_pair;
DROP DOMAIN hostile_positive;
DROP TYPE hostile_mood;
