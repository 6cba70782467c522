-- log_event: application events, their validation and their transactional behaviour.

-- The accepted categories and severities.
SELECT * FROM activity_log.categories();
SELECT * FROM activity_log.severities();

-- Events with actor and context set by the application.
SET activity_log.actor = 'alice@example.com';
SET activity_log.context = '{"request_id": "req-1", "feature": "checkout"}';
SELECT activity_log.log_event('user.login');
SELECT activity_log.log_event('order.created', '{"total": 42.5, "items": [1, 2]}', 'order', '1001', 'order', 'notice');
SELECT activity_log.log_event(action => 'password.changed', entity_type => 'user', entity_id => 'u-7',
                              category => 'security', severity => 'warning');
-- Surrounding blanks are trimmed from the action.
SELECT activity_log.log_event('  report.exported  ', '{"format": "csv"}', category => 'data_export');
-- NULL details are recorded as an empty object.
SELECT activity_log.log_event('null.details', NULL);
-- The longest action: exactly 200 bytes.
SELECT activity_log.log_event(repeat('a', 200), category => 'system', severity => 'debug');
RESET activity_log.actor;
RESET activity_log.context;
-- No actor, no context; an entity type without an id.
SELECT activity_log.log_event('anonymous.visit', '{"path": "/"}', entity_type => 'page', entity_id => NULL,
                              severity => 'critical');
-- Every severity is accepted.
SELECT activity_log.log_event('severity.' || s, severity => s) FROM activity_log.severities() s;

-- Bad input: each is an error, and no event is recorded.
SELECT activity_log.log_event(NULL);
SELECT activity_log.log_event('');
SELECT activity_log.log_event('   ');
SELECT activity_log.log_event(repeat('a', 201));
-- The limit is in bytes: 101 two-byte characters are too long.
SELECT activity_log.log_event(repeat('é', 101));
SELECT activity_log.log_event('bad.details', '[1, 2]');
SELECT activity_log.log_event('bad.details', '"text"');
SELECT activity_log.log_event('bad.details', 'null');
SELECT activity_log.log_event('bad.details', '{"unterminated": ');
SELECT activity_log.log_event('bad.category', category => 'nonsense');
SELECT activity_log.log_event('bad.category', category => 'Application');
SELECT activity_log.log_event('bad.severity', severity => 'fatal');
SELECT activity_log.log_event('bad.category', category => NULL);
SELECT activity_log.log_event('bad.severity', severity => NULL);

-- A rolled-back transaction leaves no event.
BEGIN;
SELECT activity_log.log_event('tx.rolled_back');
ROLLBACK;

-- A transaction that fails leaves no event either.
BEGIN;
SELECT activity_log.log_event('tx.failed');
SELECT 1 / (SELECT count(*) - count(*) FROM activity_log.categories());
COMMIT;

-- ROLLBACK TO SAVEPOINT drops exactly what the subtransaction logged.
BEGIN;
SELECT activity_log.log_event('sp.before');
SAVEPOINT s1;
SELECT activity_log.log_event('sp.rolled_back');
SAVEPOINT s2;
SELECT activity_log.log_event('sp.nested_rolled_back');
RELEASE SAVEPOINT s2;
ROLLBACK TO SAVEPOINT s1;
SELECT activity_log.log_event('sp.after');
SAVEPOINT s3;
SELECT activity_log.log_event('sp.released');
RELEASE SAVEPOINT s3;
COMMIT;

-- An exception caught in PL/pgSQL is a subtransaction too.
DO $$
BEGIN
    PERFORM activity_log.log_event('plpgsql.kept');
    BEGIN
        PERFORM activity_log.log_event('plpgsql.rolled_back');
        RAISE EXCEPTION 'oops';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
END
$$;

-- Several events in one transaction keep their order.
BEGIN;
SELECT activity_log.log_event('multi.' || g) FROM generate_series(1, 3) g;
COMMIT;

-- With capture switched off for the session (superuser only), nothing is recorded.
SET activity_log.enabled = off;
SELECT activity_log.log_event('disabled.not_recorded');
RESET activity_log.enabled;

-- request.jwt.claims (as set by PostgREST) is recorded with the event.
SET request.jwt.claims = '{"sub": "user-42", "role": "web"}';
SELECT activity_log.log_event('jwt.event');
RESET request.jwt.claims;

SELECT activity_log.flush();

SELECT kind, category, severity, status, sqlstate, actor, command, context, details
  FROM activity_log.events
 WHERE kind = 'event' AND command NOT LIKE 'aaaa%'
 ORDER BY id;

-- The 200-byte action is kept whole.
SELECT category, severity, actor, octet_length(command) AS action_bytes,
       details->>'action' = command AS action_in_details, details->'data' AS data
  FROM activity_log.events
 WHERE kind = 'event' AND command LIKE 'aaaa%'
 ORDER BY id;

-- Columns that events never fill, and the session columns they do.
SELECT count(*) AS events,
       count(*) FILTER (WHERE db_user = current_user AND effective_user = current_user) AS by_me,
       count(*) FILTER (WHERE query IS NULL AND rows IS NULL AND relations IS NULL AND query_id IS NULL
                              AND duration_ms IS NULL AND sqlstate IS NULL) AS no_statement_columns,
       count(*) FILTER (WHERE ts <= committed_at) AS ts_before_commit,
       count(*) FILTER (WHERE backend_pid IS NOT NULL) AS with_pid,
       count(*) FILTER (WHERE application_name LIKE 'pg_regress%') AS from_pg_regress
  FROM activity_log.events
 WHERE kind = 'event';

SELECT command, jwt_claims FROM activity_log.events WHERE kind = 'event' AND jwt_claims IS NOT NULL ORDER BY id;

-- Events of one transaction share the commit time; a transaction that wrote nothing to the
-- database has no transaction id.
SELECT count(DISTINCT committed_at) AS commit_times, count(xid) AS with_xid, count(*)
  FROM activity_log.events WHERE kind = 'event' AND command LIKE 'multi.%';
SELECT count(DISTINCT committed_at) AS commit_times, count(*)
  FROM activity_log.events WHERE kind = 'event' AND command IN ('sp.before', 'sp.after', 'sp.released');
