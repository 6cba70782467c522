-- One batch of the writer: column arrays in, one row per record out, in ring order so that
-- the identity column follows commit order. (Multi-argument unnest must be written
-- unqualified: the parser expands it into ROWS FROM.) Names are resolved here, by the writer;
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
  FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::int8[], $9::int8[], $10::text[], $11::text[], $12::text[],
              $13::int4[], $14::int8[], $15::text[], $16::text[], $17::text[],
              $18::int8[], $19::int8[], $20::int8[], $21::text[], $22::text[], $23::text[],
              $24::text[], $25::text[], $26::int8[], $27::text[], $28::text[], $29::text[], $30::text[])
       WITH ORDINALITY AS u(ts, committed_at, kind, category, severity, status, sqlstate,
                            session_role, effective_role, actor, application_name, client_addr,
                            backend_pid, xid, command, relations, query, query_id, rows,
                            duration_us, context, jwt_claims, details,
                            schema_name, table_name, table_oid, old_row, new_row, row_key,
                            changed_columns, ord)
 ORDER BY u.ord
