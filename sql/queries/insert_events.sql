-- One batch of the writer: column arrays in, one row per record out, in ring order so that
-- the identity column follows commit order. (Multi-argument unnest must be written
-- unqualified: the parser expands it into ROWS FROM.) Names are resolved here, by the writer;
-- relation names are schema-qualified whatever the writer's search_path, and a relation
-- dropped before its record was written shows as its OID. Row images arrive as JSON text;
-- excluded columns are removed, the key and the changed columns derived, here.
INSERT INTO activity_log.events
    (ts, committed_at, kind, category, severity, status, sqlstate, db_user, effective_user,
     actor, application_name, client_addr, backend_pid, xid, command, relations, query,
     query_id, rows, duration_ms, context, jwt_claims, details,
     schema_name, table_name, table_oid, row_key, old_row, new_row, changed_columns)
SELECT timestamptz '2000-01-01 00:00:00+00' + u.ts * interval '1 microsecond',
       timestamptz '2000-01-01 00:00:00+00' + u.committed_at * interval '1 microsecond',
       u.kind, u.category, u.severity, u.status, u.sqlstate,
       pg_catalog.pg_get_userbyid(u.session_role::oid),
       pg_catalog.pg_get_userbyid(u.effective_role::oid),
       u.actor, u.application_name, u.client_addr::inet, u.backend_pid,
       u.xid::text::xid8, u.command,
       (SELECT pg_catalog.array_agg(coalesce(pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), r.oid::text)
                                    ORDER BY r.ord)
          FROM pg_catalog.unnest(u.relations::oid[]) WITH ORDINALITY AS r(oid, ord)
          LEFT JOIN pg_catalog.pg_class c ON c.oid = r.oid
          LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace),
       u.query, u.query_id, u.rows, (u.duration_us / 1000.0)::float8,
       u.context::jsonb, u.jwt_claims::jsonb, u.details::jsonb,
       u.schema_name, u.table_name, u.table_oid::oid, img.row_key, img.o, img.n, img.changed
  FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::int8[], $9::int8[], $10::text[], $11::text[], $12::text[],
              $13::int4[], $14::int8[], $15::text[], $16::text[], $17::text[],
              $18::int8[], $19::int8[], $20::int8[], $21::text[], $22::text[], $23::text[],
              $24::text[], $25::text[], $26::int8[], $27::text[], $28::text[], $29::text[], $30::text[])
       WITH ORDINALITY AS u(ts, committed_at, kind, category, severity, status, sqlstate,
                            session_role, effective_role, actor, application_name, client_addr,
                            backend_pid, xid, command, relations, query, query_id, rows,
                            duration_us, context, jwt_claims, details,
                            schema_name, table_name, table_oid, old_row, new_row, key_columns,
                            exclude_columns, ord)
  LEFT JOIN LATERAL (
        SELECT r.o, r.n,
               CASE WHEN r.o IS NULL AND r.n IS NULL THEN NULL
                    WHEN pg_catalog.cardinality(u.key_columns::text[]) = 0 THEN coalesce(r.o, r.n)
                    ELSE (SELECT pg_catalog.jsonb_object_agg(k, coalesce(r.o, r.n) -> k)
                            FROM pg_catalog.unnest(u.key_columns::text[]) k)
               END AS row_key,
               CASE WHEN r.o IS NOT NULL AND r.n IS NOT NULL THEN
                    ARRAY(SELECT key
                            FROM pg_catalog.jsonb_each(r.o) a FULL JOIN pg_catalog.jsonb_each(r.n) b USING (key)
                           WHERE a.value IS DISTINCT FROM b.value
                           ORDER BY key)
               END AS changed
          FROM (SELECT u.old_row::jsonb - coalesce(u.exclude_columns::text[], '{}') AS o,
                       u.new_row::jsonb - coalesce(u.exclude_columns::text[], '{}') AS n) r
       ) img ON true
 ORDER BY u.ord
