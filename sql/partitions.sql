-- partitions.sql: the trail's day partitions and retention. _maintain_partitions() (called by
-- the writer) makes the coming days' partitions and drops those past the retention, keeping
-- the chain values the remaining rows link to (_keep_anchors()).

-- _maintain_partitions keeps the trail's day partitions (UTC): it creates those from today to
-- two days ahead and, given a retention, drops every partition whose whole day is older than
-- it (and deletes such rows from events_default), first keeping in chain_anchors the chain
-- values the remaining rows link to. Returns what it dropped. The writer calls it at start and
-- every hour, in its own transaction; lock_timeout: readers of the trail are not held up.
CREATE FUNCTION activity_log._maintain_partitions(retention interval)
RETURNS TABLE (partition text, range_from timestamptz, range_to timestamptz, rows bigint,
               first_id bigint, last_id bigint, anchors bigint[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET lock_timeout = '1s'
AS $$
DECLARE
    day    timestamptz;
    cutoff timestamptz := now() - retention;
    part   record;
    kept   bigint;
    m      oid;
BEGIN
    FOR day IN SELECT generate_series(date_trunc('day', now()), date_trunc('day', now()) + interval '2 days', interval '1 day')
    LOOP
        partition := 'events_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('activity_log.' || partition) IS NOT NULL;
        -- No partition can be made for a day events_default already holds rows of.
        CONTINUE WHEN EXISTS (SELECT 1 FROM activity_log.events_default d
                               WHERE d.committed_at >= day AND d.committed_at < day + interval '1 day');
        BEGIN
            EXECUTE format('CREATE TABLE activity_log.%I PARTITION OF activity_log.events FOR VALUES FROM (%L) TO (%L)',
                           partition, day, day + interval '1 day');
            PERFORM activity_log._index_trail_partition(format('activity_log.%I', partition)::regclass);
        EXCEPTION WHEN invalid_object_definition THEN
            NULL;  -- overlaps a partition made by hand: that one takes the rows
        END;
    END LOOP;
    IF retention IS NULL OR retention <= interval '0' THEN
        RETURN;
    END IF;
    FOR part IN
        SELECT c.oid::regclass AS rel, c.relname::text AS name, b.v[1]::timestamptz AS lo, b.v[2]::timestamptz AS hi
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                                 'FROM \(''([^'']*)''\) TO \(''([^'']*)''\)') AS v) b
         WHERE i.inhparent = 'activity_log.events'::regclass AND b.v IS NOT NULL
           AND b.v[2]::timestamptz <= cutoff
         ORDER BY 4
    LOOP
        EXECUTE format('SELECT count(*), min(id), max(id) FROM %s', part.rel) INTO rows, first_id, last_id;
        -- The oldest id that stays, partition by partition (each an index probe).
        kept := NULL;
        FOR m IN SELECT c.oid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'activity_log.events'::regclass AND c.oid <> part.rel
        LOOP
            EXECUTE format('SELECT least($1, (SELECT min(id) FROM %s))', m::regclass) INTO kept USING kept;
        END LOOP;
        anchors := activity_log._keep_anchors(part.rel, 'true', kept);
        EXECUTE format('DROP TABLE %s', part.rel);
        INSERT INTO activity_log.retention_log (partition, range_from, range_to, rows, first_id, last_id)
        VALUES (part.name, part.lo, part.hi, rows, first_id, last_id);
        partition := part.name; range_from := part.lo; range_to := part.hi;
        RETURN NEXT;
    END LOOP;
    -- Rows in events_default older than the retention.
    SELECT count(*), min(d.id), max(d.id) INTO rows, first_id, last_id
      FROM activity_log.events_default d WHERE d.committed_at < cutoff;
    IF rows > 0 THEN
        SELECT min(e.id) INTO kept FROM activity_log.events e WHERE e.committed_at >= cutoff;
        anchors := activity_log._keep_anchors('activity_log.events_default', format('committed_at < %L', cutoff), kept);
        DELETE FROM activity_log.events_default d WHERE d.committed_at < cutoff;
        INSERT INTO activity_log.retention_log (partition, range_from, range_to, rows, first_id, last_id)
        VALUES ('events_default', NULL, cutoff, rows, first_id, last_id);
        partition := 'events_default'; range_from := NULL; range_to := cutoff;
        RETURN NEXT;
    END IF;
END
$$;

-- _keep_anchors saves the chain values of the rows of `rel` matching `filter` that remaining
-- rows (the oldest of which has id `kept`) may link to: the newest such row below `kept` and
-- every one above it. Without remaining rows, the newest: the next row the writer stores
-- links to it.
CREATE FUNCTION activity_log._keep_anchors(rel regclass, filter text, kept bigint)
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids bigint[];
BEGIN
    -- The ids go into the RETENTION record: verify() honours an anchor only where a record
    -- of the chain names it.
    EXECUTE format(
        'WITH kept AS (
             SELECT id, chain FROM %1$s
              WHERE %2$s AND chain IS NOT NULL
                AND id >= (SELECT CASE WHEN $1 IS NULL THEN max(id)
                                       ELSE coalesce(max(id) FILTER (WHERE id < $1), min(id)) END
                             FROM %1$s WHERE %2$s)),
              saved AS (INSERT INTO activity_log.chain_anchors (id, chain) SELECT id, chain FROM kept
                        ON CONFLICT (id) DO NOTHING)
         SELECT coalesce(array_agg(id ORDER BY id), ''{}'') FROM kept', rel, filter) USING kept INTO ids;
    RETURN ids;
END
$$;
