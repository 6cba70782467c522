-- settings: validation, defaults, who may change what, and their effect on the trail.

-- Defaults (capture_statements is 'all' in the test cluster's postgresql.conf).
SHOW activity_log.enabled;
SHOW activity_log.capture_statements;
SHOW activity_log.batch_size;
SHOW activity_log.flush_interval;
SHOW activity_log.max_query_length;
SHOW activity_log.overflow;
SHOW activity_log.overflow_timeout;
SHOW activity_log.buffer_size;
SHOW activity_log.max_databases;
SHOW activity_log.actor;
SHOW activity_log.context;

SELECT name, setting, unit, context, vartype, min_val, max_val, enumvals, boot_val
  FROM pg_settings WHERE name LIKE 'activity_log.%' ORDER BY name;

-- activity_log.context must be a JSON object.
SET activity_log.context = 'not json';
SET activity_log.context = '[1]';
SET activity_log.context = '"text"';
SET activity_log.context = '{"a":1}';
SHOW activity_log.context;
-- An empty value clears it.
SET activity_log.context = '';
SHOW activity_log.context;
RESET activity_log.context;

-- Enums list their values.
SET activity_log.capture_statements = 'bogus';
SET activity_log.overflow = 'x';
-- Integers are range-checked.
SET activity_log.max_query_length = -1;
SET activity_log.max_query_length = '2MB';
SET activity_log.overflow_timeout = 0;
SET activity_log.enabled = 'maybe';
-- Server-wide settings cannot be changed in a session.
SET activity_log.buffer_size = '1MB';
SET activity_log.max_databases = 8;
SET activity_log.batch_size = 10;
SET activity_log.flush_interval = '100ms';
-- The prefix is reserved: misspelt settings are errors, not new placeholders.
SET activity_log.enable = off;

-- A superuser can change the superuser-only settings for the session.
SET activity_log.overflow = 'drop';
SHOW activity_log.overflow;
RESET activity_log.overflow;
SET activity_log.overflow_timeout = '2s';
SHOW activity_log.overflow_timeout;
RESET activity_log.overflow_timeout;

-- A role without superuser cannot switch its own auditing off, but can name the actor.
CREATE ROLE al_regress_user;
SET ROLE al_regress_user;
SET activity_log.enabled = off;
SET activity_log.capture_statements = 'none';
SET activity_log.max_query_length = 0;
SET activity_log.overflow = 'drop';
SET activity_log.overflow_timeout = '1s';
SET activity_log.actor = 'bob';
SET activity_log.context = '{"tenant": "t-1"}';
SHOW activity_log.enabled;
SHOW activity_log.capture_statements;
SHOW activity_log.actor;
SHOW activity_log.context;
SELECT activity_log.log_event('settings.as_user', category => 'authorization');
RESET ROLE;
SELECT activity_log.flush();
SELECT kind, category, db_user, effective_user, actor, context, command, details
  FROM activity_log.events WHERE kind = 'event' AND command = 'settings.as_user' ORDER BY id;
-- The refused SET commands are failed statements of that role.
SELECT kind, status, sqlstate, effective_user, command, query, details->>'error' AS error
  FROM activity_log.events
 WHERE status = 'error' AND effective_user = 'al_regress_user'
 ORDER BY id;
RESET activity_log.actor;
RESET activity_log.context;

-- max_query_length cuts the recorded query text (on a character boundary).
SET activity_log.max_query_length = 10;
SELECT 'abcdefghijklmnopqrstuvwxyz' AS long_query;
SELECT 'ééééé' AS multibyte;
RESET activity_log.max_query_length;
SELECT activity_log.flush();
SELECT command, query, octet_length(query) AS bytes
  FROM activity_log.events
 WHERE kind = 'statement' AND query LIKE 'SELECT ''%' AND octet_length(query) <= 10
 ORDER BY id;

-- activity_log.enabled = off: nothing this session does is recorded, failures included.
SET activity_log.enabled = off;
CREATE TABLE settings_not_recorded (id int);
INSERT INTO settings_not_recorded VALUES (1);
SELECT activity_log.log_event('settings.disabled');
SELECT 1 / (SELECT count(*) - count(*) FROM settings_not_recorded);
RESET activity_log.enabled;

-- capture_statements levels: none records no statements (and no failures), ddl only DDL,
-- mod also data changes; events are recorded at every level.
SET activity_log.capture_statements = 'none';
CREATE TABLE settings_none (id int);
INSERT INTO settings_none VALUES (1);
SELECT count(*) FROM settings_none;
SELECT 1 / (SELECT count(*) - count(*) FROM settings_none);
SELECT activity_log.log_event('settings.none');
SET activity_log.capture_statements = 'ddl';
CREATE TABLE settings_ddl (id int);
INSERT INTO settings_ddl VALUES (1);
SELECT count(*) FROM settings_ddl;
SELECT 1 / (SELECT count(*) - count(*) FROM settings_ddl);
SET activity_log.capture_statements = 'mod';
CREATE TABLE settings_mod (id int);
INSERT INTO settings_mod VALUES (1);
SELECT count(*) FROM settings_mod;
SELECT 1 / (SELECT count(*) - count(*) FROM settings_mod);
RESET activity_log.capture_statements;
-- Let the writer store the records that name these tables before they go away.
SELECT activity_log.flush();
DROP TABLE settings_not_recorded, settings_none, settings_ddl, settings_mod;
SELECT activity_log.flush();
SELECT kind, status, sqlstate, command, query
  FROM activity_log.events
 WHERE query LIKE '%settings\_%' OR command LIKE 'settings.%'
 ORDER BY id;

DROP ROLE al_regress_user;
