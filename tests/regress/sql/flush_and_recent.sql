-- flush and recent: argument checks, and the statement records of the trail.

-- flush: the timeout must be between 0 and 1 hour.
SELECT activity_log.flush(NULL);
SELECT activity_log.flush('-1 second');
SELECT activity_log.flush('2 hours');
SELECT activity_log.flush('1 hour 1 second');
-- A zero timeout does not wait; it returns true or false, never NULL.
SELECT activity_log.flush('0') IS NOT NULL AS answered;
SELECT pg_typeof(activity_log.flush('0'));
SELECT activity_log.flush('1 hour');
SELECT activity_log.flush();

-- recent: argument checks.
SELECT * FROM activity_log.recent(source => 'events');
SELECT * FROM activity_log.recent(status => 'failed');
SELECT * FROM activity_log.recent(severity => 'fatal');
SELECT * FROM activity_log.recent(category => 'nonsense');
SELECT * FROM activity_log.recent(max_rows => 0);
SELECT * FROM activity_log.recent(max_rows => 100001);
SELECT * FROM activity_log.recent(max_rows => NULL);
SELECT * FROM activity_log.recent(since => NULL);
SELECT * FROM activity_log.recent(since => '-1 hour');

-- recent returns the newest records first.
SELECT activity_log.log_event('recent.first', category => 'report');
SELECT activity_log.log_event('recent.second', '{"n": 2}', category => 'report', severity => 'warning');
SELECT activity_log.log_event('recent.third', '{"n": 3}', 'report', 'r-3', 'report', 'error');
SELECT activity_log.flush();
SELECT source, category, severity, status, command, details
  FROM activity_log.recent(source => 'event', max_rows => 2);
SELECT source, command FROM activity_log.recent(source => 'event', category => 'report', severity => 'warning');
SELECT source, command FROM activity_log.recent(category => 'report', status => 'success', max_rows => 10);
-- Nothing is newer than zero seconds.
SELECT count(*) FROM activity_log.recent(since => '0');
-- The view holds the same rows as the table (all of them are from the last 24 hours).
SELECT (SELECT count(*) FROM activity_log.recent_activity) = (SELECT count(*) FROM activity_log.events) AS same_rows;

-- Statement records. Everything before this point is in the table; remember where it ends.
SELECT activity_log.flush();
SELECT max(id) AS start_id FROM activity_log.events \gset

CREATE TABLE widgets (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO widgets VALUES (1, 'one'), (2, 'two'), (3, 'three'), (4, 'four');
UPDATE widgets SET name = upper(name) WHERE id <= 2;
DELETE FROM widgets WHERE id = 4;
SELECT id, name FROM widgets ORDER BY id;
WITH gone AS (DELETE FROM widgets WHERE id = 3 RETURNING id) SELECT count(*) FROM gone;
-- Failed statements are recorded with their SQLSTATE and error message.
SELECT id, 10 / (id - id) FROM widgets;
INSERT INTO widgets VALUES (1, 'duplicate');
-- A rolled-back transaction leaves no success record, but its failure is recorded.
BEGIN;
INSERT INTO widgets VALUES (10, 'ten');
UPDATE widgets SET name = NULL WHERE id = 10;
ROLLBACK;
-- A statement that succeeded inside a rolled-back savepoint is forgotten; one that failed
-- inside a savepoint is recorded.
BEGIN;
SAVEPOINT s1;
DELETE FROM widgets WHERE id = 1;
ROLLBACK TO SAVEPOINT s1;
UPDATE widgets SET name = 'One' WHERE id = 1;
SAVEPOINT s2;
INSERT INTO widgets VALUES (2, 'duplicate in savepoint');
ROLLBACK TO SAVEPOINT s2;
COMMIT;
-- A failed DDL statement.
CREATE TABLE widgets (id int);
TRUNCATE widgets;
-- Let the writer store the records that name widgets before the table goes away.
SELECT activity_log.flush();
DROP TABLE widgets;
SELECT activity_log.flush();

SELECT kind, category, severity, status, sqlstate, command, query, rows, relations, details->>'error' AS error
  FROM activity_log.events
 WHERE id > :start_id AND kind IN ('statement', 'ddl') AND query NOT LIKE '%activity_log.%'
 ORDER BY id;

-- Classes of the successful statements.
SELECT kind, category, severity, command, count(*)
  FROM activity_log.events
 WHERE id > :start_id AND kind IN ('statement', 'ddl') AND status = 'success'
   AND query NOT LIKE '%activity_log.%'
 GROUP BY kind, category, severity, command
 ORDER BY kind, category, command;

-- Successful statements have a duration and a query id; failed ones have neither.
SELECT status,
       count(*) FILTER (WHERE duration_ms IS NOT NULL) AS with_duration,
       count(*) FILTER (WHERE query_id IS NOT NULL) AS with_query_id,
       count(*) FILTER (WHERE severity = CASE status WHEN 'error' THEN 'error' ELSE 'info' END) AS expected_severity,
       count(*)
  FROM activity_log.events
 WHERE id > :start_id AND kind = 'statement' AND command IN ('INSERT', 'UPDATE', 'DELETE')
 GROUP BY status ORDER BY status;

-- The statements that read the trail are recorded too (capture_statements = 'all').
SELECT kind, category, status, command, rows, relations
  FROM activity_log.events
 WHERE id > :start_id AND query LIKE 'SELECT max(id) AS start_id FROM activity_log.events%'
 ORDER BY id;
