-- The demo workload of ./dev demo: a little of everything activity_log records.
CREATE EXTENSION activity_log;

CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(10,2));
SELECT activity_log.track('orders');   -- row images, without a trigger

SET activity_log.actor = 'alice@example.com';
SET activity_log.context = '{"request_id": "demo-1", "feature": "checkout"}';

INSERT INTO orders SELECT g, 'customer ' || g, g * 10 FROM generate_series(1, 5) g;
UPDATE orders SET total = total * 1.1 WHERE id <= 2;
DELETE FROM orders WHERE id = 5;
SELECT activity_log.log_event('order_exported', '{"format": "csv", "orders": 90}',
                              entity_type => 'report', category => 'data_export');

-- A rolled-back transaction leaves no success record ...
BEGIN;
DELETE FROM orders;
ROLLBACK;

-- ... and a failed statement leaves a failure record with its SQLSTATE.
\set ON_ERROR_STOP 0
INSERT INTO orders VALUES (1, 'duplicate', 0);
\set ON_ERROR_STOP 1

RESET activity_log.actor;
RESET activity_log.context;
SELECT activity_log.flush();
