-- One batch of the writer: column arrays in, one row per record out, in ring order so that
-- the identity column follows commit order. The unnests sit in a select list, where they run in
-- lockstep and stream row by row (in FROM they would be materialized into a tuplestore first,
-- which spills to disk for large batches). Names are resolved here, by the writer;
-- relation names are schema-qualified whatever the writer's search_path, and a relation
-- dropped before its record was written shows as its OID. Row images, keys and changed
-- columns arrive ready (worker/images.rs).
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
       CASE WHEN u.relations IS NOT NULL THEN  -- no subquery for rows without relations
       (SELECT pg_catalog.array_agg(coalesce(pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), r.oid::text)
                                    ORDER BY r.ord)
          FROM pg_catalog.unnest(u.relations::oid[]) WITH ORDINALITY AS r(oid, ord)
          LEFT JOIN pg_catalog.pg_class c ON c.oid = r.oid
          LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace) END,
       u.query, u.query_id, u.rows, (u.duration_us / 1000.0)::float8,
       u.context::jsonb, u.jwt_claims::jsonb, u.details::jsonb,
       u.schema_name, u.table_name, u.table_oid::oid, u.row_key::jsonb, u.old_row::jsonb,
       u.new_row::jsonb, u.changed_columns::text[]
  FROM (SELECT
               pg_catalog.unnest($1::int8[]) AS ts,
               pg_catalog.unnest($2::int8[]) AS committed_at,
               pg_catalog.unnest($3::text[]) AS kind,
               pg_catalog.unnest($4::text[]) AS category,
               pg_catalog.unnest($5::text[]) AS severity,
               pg_catalog.unnest($6::text[]) AS status,
               pg_catalog.unnest($7::text[]) AS sqlstate,
               pg_catalog.unnest($8::int8[]) AS session_role,
               pg_catalog.unnest($9::int8[]) AS effective_role,
               pg_catalog.unnest($10::text[]) AS actor,
               pg_catalog.unnest($11::text[]) AS application_name,
               pg_catalog.unnest($12::text[]) AS client_addr,
               pg_catalog.unnest($13::int4[]) AS backend_pid,
               pg_catalog.unnest($14::int8[]) AS xid,
               pg_catalog.unnest($15::text[]) AS command,
               pg_catalog.unnest($16::text[]) AS relations,
               pg_catalog.unnest($17::text[]) AS query,
               pg_catalog.unnest($18::int8[]) AS query_id,
               pg_catalog.unnest($19::int8[]) AS rows,
               pg_catalog.unnest($20::int8[]) AS duration_us,
               pg_catalog.unnest($21::text[]) AS context,
               pg_catalog.unnest($22::text[]) AS jwt_claims,
               pg_catalog.unnest($23::text[]) AS details,
               pg_catalog.unnest($24::text[]) AS schema_name,
               pg_catalog.unnest($25::text[]) AS table_name,
               pg_catalog.unnest($26::int8[]) AS table_oid,
               pg_catalog.unnest($27::text[]) AS old_row,
               pg_catalog.unnest($28::text[]) AS new_row,
               pg_catalog.unnest($29::text[]) AS row_key,
               pg_catalog.unnest($30::text[]) AS changed_columns) u

