//! db.rs: the databases the monitor reads, and every statement it runs.
//!
//! Each `--url` is a target with a small pool. Every connection starts with
//! `default_transaction_read_only = on`, `search_path = pg_catalog, pg_temp` and
//! `TimeZone = UTC` (startup options, so nothing the server's or role's defaults say changes
//! them); statements name every object with its schema and take every value as a parameter.
//! Filters build the WHERE clause from fixed column names only.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Deserialize;
use serde_json::Value;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

/// The session settings every connection starts with.
const SESSION_OPTIONS: &str =
    "-c default_transaction_read_only=on -c search_path=pg_catalog,pg_temp -c TimeZone=UTC";

pub struct Target {
    /// What the page shows: the database name, with the host when more targets share a name.
    pub name: String,
    pub pool: Pool,
}

/// Error is what a handler turns into a response: the status and a message with its hint.
#[derive(Debug)]
pub struct Error {
    pub status: u16,
    pub message: String,
}

impl Error {
    pub fn bad(message: impl Into<String>) -> Error {
        Error {
            status: 400,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Error {
        match e.as_db_error() {
            Some(d) => {
                let code = d.code().code();
                // Invalid input in a filter (a time that is not one, say) is the caller's.
                let status = if code.starts_with("22") { 400 } else { 502 };
                let mut m = format!("{}: {}", d.severity(), d.message());
                if let Some(h) = d.hint() {
                    m.push_str(&format!("\nHint: {h}"));
                }
                Error { status, message: m }
            }
            None => Error {
                status: 502,
                message: format!("database connection: {e}"),
            },
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Error {
        Error {
            status: 502,
            message: format!("database connection: {e}"),
        }
    }
}

impl Target {
    pub fn from_urls(urls: &[String]) -> Result<Vec<Target>, String> {
        let mut configs = Vec::new();
        for u in urls {
            let mut cfg: tokio_postgres::Config = u.parse().map_err(|e| {
                format!("invalid --url: {e}\nHint: write postgres://user@host:port/database, or postgres:///database?host=/socket/dir&port=5432.")
            })?;
            let options = match cfg.get_options() {
                Some(o) if !o.is_empty() => format!("{o} {SESSION_OPTIONS}"),
                _ => SESSION_OPTIONS.to_string(),
            };
            cfg.options(&options);
            cfg.application_name("activity_log_monitor");
            cfg.connect_timeout(Duration::from_secs(5));
            let db = cfg
                .get_dbname()
                .or(cfg.get_user())
                .unwrap_or("postgres")
                .to_string();
            let host = match cfg.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".into(),
            };
            configs.push((db, host, cfg));
        }
        let mut targets = Vec::new();
        for (db, host, cfg) in &configs {
            let dup = configs.iter().filter(|(d, _, _)| d == db).count() > 1;
            let name = if dup {
                format!("{db} on {host}")
            } else {
                db.clone()
            };
            let mgr = Manager::from_config(
                cfg.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            let pool = Pool::builder(mgr)
                .max_size(4)
                .build()
                .map_err(|e| format!("pool for {name}: {e}"))?;
            targets.push(Target { name, pool });
        }
        Ok(targets)
    }

    /// check connects and reads the extension's version: what /healthz and the start report.
    pub async fn check(&self) -> Result<String, Error> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'activity_log'",
                &[],
            )
            .await?;
        row.map(|r| r.get::<_, String>(0)).ok_or_else(|| Error {
            status: 502,
            message: "the extension activity_log is not installed in this database\nHint: CREATE EXTENSION activity_log, or point --url at a database that has it.".into(),
        })
    }

    /// json_rows runs a statement whose one column is jsonb and returns the values.
    pub async fn json_rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Value>, Error> {
        let c = self.pool.get().await?;
        let rows = c.query(sql, params).await?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, Option<Value>>(0).unwrap_or(Value::Null))
            .collect())
    }

    /// json_one runs a statement that returns one jsonb value.
    pub async fn json_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Value, Error> {
        Ok(self
            .json_rows(sql, params)
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Null))
    }
}

/// The kinds and statuses the trail's CHECK constraints allow.
pub const KINDS: &[&str] = &["change", "statement", "ddl", "event", "system"];
pub const STATUSES: &[&str] = &["success", "error", "gap"];

/// Filter is the Activity page's filter, as the URL carries it. Empty values mean "any".
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filter {
    pub db: Option<usize>,
    /// `source` too, as `recent()` and `recent_activity` call it.
    #[serde(alias = "source")]
    pub kind: Option<String>,
    pub category: Option<String>,
    pub status: Option<String>,
    pub severity: Option<String>,
    pub user: Option<String>,
    pub actor: Option<String>,
    /// `table` or `schema.table`.
    pub table: Option<String>,
    /// The time range, on committed_at: `from` included, `to` excluded.
    pub from: Option<String>,
    pub to: Option<String>,
    /// Text the query must contain (case-insensitive).
    pub q: Option<String>,
    /// Keyset paging: rows with a smaller id (older), newest first.
    pub before: Option<i64>,
    /// Live polling: rows with a larger id (newer), oldest first.
    pub after: Option<i64>,
    pub limit: Option<i64>,
    /// Change log: the view to export (`activity` or `changes`).
    pub view: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Where is a WHERE clause under construction: the clause's text and its parameters.
pub struct Where {
    pub clauses: Vec<String>,
    pub params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Where {
    fn new() -> Where {
        Where {
            clauses: Vec::new(),
            params: Vec::new(),
        }
    }

    /// push adds `template` with `$` replaced by the next parameter's number.
    fn push(&mut self, template: &str, value: Box<dyn ToSql + Sync + Send>) {
        self.params.push(value);
        self.clauses
            .push(template.replace('$', &format!("${}", self.params.len())));
    }

    pub fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    pub fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

impl Filter {
    pub fn db(&self) -> usize {
        self.db.unwrap_or(0)
    }

    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(200).clamp(1, 1000)
    }

    /// validate refuses values no row can have, with the values that can be given.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(k) = given(&self.kind)
            && !KINDS.contains(&k)
        {
            return Err(Error::bad(format!(
                "unknown kind \"{k}\"\nHint: give one of {}.",
                KINDS.join(", ")
            )));
        }
        if let Some(s) = given(&self.status)
            && !STATUSES.contains(&s)
        {
            return Err(Error::bad(format!(
                "unknown status \"{s}\"\nHint: give one of {}.",
                STATUSES.join(", ")
            )));
        }
        if self.before.is_some() && self.after.is_some() {
            return Err(Error::bad(
                "before and after exclude each other\nHint: page back with before, poll for new rows with after.",
            ));
        }
        Ok(())
    }

    /// where_clause is the filter over `activity_log.events` (also its keyset bound).
    pub fn where_clause(&self, keyset: bool) -> Where {
        let mut w = Where::new();
        let text = |v: &str| -> Box<dyn ToSql + Sync + Send> { Box::new(v.to_string()) };
        if let Some(v) = given(&self.kind) {
            w.push("kind = $", text(v));
        }
        if let Some(v) = given(&self.category) {
            w.push("category = $", text(v));
        }
        if let Some(v) = given(&self.status) {
            w.push("status = $", text(v));
        }
        if let Some(v) = given(&self.severity) {
            w.push("severity = $", text(v));
        }
        if let Some(v) = given(&self.user) {
            w.push("db_user = $", text(v));
        }
        if let Some(v) = given(&self.actor) {
            w.push("actor = $", text(v));
        }
        if let Some(v) = given(&self.table) {
            match v.split_once('.') {
                Some((s, t)) => {
                    w.push("schema_name = $", text(s));
                    w.push("table_name = $", text(t));
                }
                None => w.push("table_name = $", text(v)),
            }
        }
        // The time range is on committed_at, when a record's transaction ended: it is what the
        // trail's day partitions are by (a range reads only its days), and it follows id.
        if let Some(v) = given(&self.from) {
            w.push("committed_at >= $::text::timestamptz", text(v));
        }
        if let Some(v) = given(&self.to) {
            w.push("committed_at < $::text::timestamptz", text(v));
        }
        if let Some(v) = given(&self.q) {
            w.push(
                "pg_catalog.strpos(pg_catalog.lower(query), pg_catalog.lower($)) > 0",
                text(v),
            );
        }
        if keyset {
            if let Some(b) = self.before {
                w.push("id < $", Box::new(b));
            }
            if let Some(a) = self.after {
                w.push("id > $", Box::new(a));
            }
        }
        w
    }
}

/// The columns of a row in the Activity list (the query cut to 300 characters).
pub const LIST_COLUMNS: &str = "id, ts, committed_at, kind, category, severity, status, sqlstate, db_user, actor, \
command, schema_name, table_name, pg_catalog.left(query, 300) AS query, rows, duration_ms";

/// The CSV export's columns: everything but the hash chain, as text.
pub const CSV_COLUMNS: &[&str] = &[
    "id",
    "ts",
    "committed_at",
    "kind",
    "category",
    "severity",
    "status",
    "sqlstate",
    "db_user",
    "effective_user",
    "actor",
    "application_name",
    "client_addr",
    "command",
    "schema_name",
    "table_name",
    "row_key",
    "old_row",
    "new_row",
    "changed_columns",
    "query",
    "rows",
    "duration_ms",
    "context",
    "jwt_claims",
    "details",
];

/// csv_select is the export's statement for a filter (newest first), with its parameters.
pub fn csv_select(f: &Filter) -> (String, Where) {
    let w = f.where_clause(true);
    let cols: Vec<String> = CSV_COLUMNS
        .iter()
        .map(|c| format!("{c}::text AS {c}"))
        .collect();
    (
        format!(
            "SELECT {} FROM activity_log.events{} ORDER BY id DESC",
            cols.join(", "),
            w.sql()
        ),
        w,
    )
}

/// activity returns a page of the trail: newest first below `before`, or oldest first above
/// `after` (the page's poll for new rows).
pub async fn activity(t: &Target, f: &Filter) -> Result<Vec<Value>, Error> {
    f.validate()?;
    let w = f.where_clause(true);
    let order = if f.after.is_some() { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT pg_catalog.to_jsonb(r) FROM (SELECT {LIST_COLUMNS} FROM activity_log.events{} ORDER BY id {order} LIMIT {}) r",
        w.sql(),
        f.limit()
    );
    t.json_rows(&sql, &w.refs()).await
}

/// record returns one row of the trail, whole but for the chain.
pub async fn record(t: &Target, id: i64) -> Result<Value, Error> {
    let v = t
        .json_one(
            "SELECT pg_catalog.to_jsonb(r) - 'chain' FROM activity_log.events r WHERE id = $1",
            &[&id],
        )
        .await?;
    if v.is_null() {
        return Err(Error {
            status: 404,
            message: format!(
                "no record with id {id} in the trail\nHint: retention may have dropped it."
            ),
        });
    }
    Ok(v)
}

/// tables lists the tracked tables and those with changes among the trail's newest 10 000
/// rows (a table no longer tracked, say), by name.
pub async fn tables(t: &Target) -> Result<Vec<Value>, Error> {
    t.json_rows(
        "SELECT pg_catalog.jsonb_build_object('table', r.name, 'tracked', pg_catalog.bool_or(r.tracked)) \
           FROM (SELECT pg_catalog.format('%s.%s', n.nspname, c.relname) AS name, true AS tracked \
                   FROM activity_log.tracked_tables tt \
                   JOIN pg_catalog.pg_class c ON c.oid = tt.relid \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 UNION ALL \
                 SELECT pg_catalog.format('%s.%s', schema_name, table_name), false \
                   FROM (SELECT schema_name, table_name FROM activity_log.events WHERE kind = 'change' \
                          ORDER BY id DESC LIMIT 10000) x) r \
          GROUP BY r.name ORDER BY r.name",
        &[],
    )
    .await
}

/// changes returns a table's newest changes (`schema.table`), newest first, keyset on id.
pub async fn changes(
    t: &Target,
    table: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Value>, Error> {
    let Some((schema, name)) = table.split_once('.') else {
        return Err(Error::bad(format!(
            "table \"{table}\" has no schema\nHint: write schema.table, as the list of tables shows it."
        )));
    };
    t.json_rows(
        "SELECT pg_catalog.to_jsonb(r) FROM (SELECT id, committed_at, op, row_key, old_row, new_row, changed_columns, \
                db_user, actor, pg_catalog.left(query, 300) AS query \
           FROM activity_log.changes WHERE schema_name = $1 AND table_name = $2 AND id < $3 \
          ORDER BY id DESC LIMIT $4) r",
        &[&schema, &name, &before.unwrap_or(i64::MAX), &limit.clamp(1, 1000)],
    )
    .await
}

/// history returns one row's story, oldest first (`activity_log.history()`).
pub async fn history(t: &Target, table: &str, key: &str) -> Result<Vec<Value>, Error> {
    let key: Value = serde_json::from_str(key).map_err(|e| {
        Error::bad(format!(
            "the row key is not JSON: {e}\nHint: give the key as the change log shows it, such as {{\"id\": 42}}."
        ))
    })?;
    if !key.is_object() {
        return Err(Error::bad(
            "the row key must be a JSON object\nHint: give the key as the change log shows it, such as {\"id\": 42}.",
        ));
    }
    let Some((schema, name)) = table.split_once('.') else {
        return Err(Error::bad(format!(
            "table \"{table}\" has no schema\nHint: write schema.table, as the list of tables shows it."
        )));
    };
    // The name is looked up, not parsed as regclass input: a table name may hold any character.
    let c = t.pool.get().await?;
    let oid = c
        .query_opt(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await?;
    let Some(oid) = oid.map(|r| r.get::<_, u32>(0)) else {
        return Err(Error {
            status: 404,
            message: format!(
                "table \"{table}\" does not exist\nHint: a dropped table's changes stay in the trail: filter the Activity page by table instead."
            ),
        });
    };
    let rows = c
        .query(
            "SELECT pg_catalog.to_jsonb(h) FROM (SELECT id, committed_at, op, row_key, old_row, new_row, changed_columns, \
                    db_user, actor, pg_catalog.left(query, 300) AS query \
               FROM activity_log.history($1::pg_catalog.oid::pg_catalog.regclass, $2::jsonb)) h",
            &[&oid, &key],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, Value>(0)).collect())
}

/// health returns the score and factors, this database's pipeline (`metrics()`: queue, rates,
/// the writer's state, failures and last error), the newest gap records and dead letters. Not
/// the `queue` and `workers` views: they call `_queue()`, which a role with only
/// activity_log_reader may not execute (0.2.0), and pg_stat_activity hides other roles'
/// processes from it; `metrics()` runs as its owner.
pub async fn health(t: &Target) -> Result<Value, Error> {
    t.json_one(
        "SELECT pg_catalog.jsonb_build_object( \
           'health', (SELECT pg_catalog.to_jsonb(h) FROM activity_log.health() h), \
           'metrics', (SELECT pg_catalog.to_jsonb(m) FROM activity_log.metrics() m), \
           'gaps', (SELECT coalesce(pg_catalog.jsonb_agg(g ORDER BY g.id DESC), '[]') FROM \
                      (SELECT id, committed_at, command, details FROM activity_log.events \
                        WHERE kind = 'system' AND status = 'gap' ORDER BY id DESC LIMIT 50) g), \
           'dead_letters', (SELECT coalesce(pg_catalog.jsonb_agg(d ORDER BY d.id DESC), '[]') FROM \
                      (SELECT id, failed_at, committed_at, what, error, frame IS NOT NULL AS has_frame \
                         FROM activity_log.dead_letters ORDER BY id DESC LIMIT 50) d), \
           'now', pg_catalog.now())",
        &[],
    )
    .await
}

/// An analytics window: `since` and `bucket` as intervals the functions validate.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Window {
    pub db: Option<usize>,
    pub since: Option<String>,
    pub bucket: Option<String>,
}

pub async fn analytics(t: &Target, w: &Window) -> Result<Value, Error> {
    let since = given(&w.since).unwrap_or("24 hours").to_string();
    let bucket = given(&w.bucket).unwrap_or("1 hour").to_string();
    t.json_one(
        "SELECT pg_catalog.jsonb_build_object( \
           'since', $1::text, 'bucket', $2::text, \
           'trend', (SELECT coalesce(pg_catalog.jsonb_agg(r ORDER BY r.bucket_start), '[]') \
                       FROM activity_log.trend($1::text::interval, $2::text::interval) r), \
           'hourly', (SELECT coalesce(pg_catalog.jsonb_agg(r ORDER BY r.hour_of_day), '[]') \
                       FROM activity_log.hourly_pattern(greatest($1::text::interval, interval '1 day')) r), \
           'daily', (SELECT coalesce(pg_catalog.jsonb_agg(r ORDER BY r.day_of_week), '[]') \
                       FROM activity_log.daily_pattern(greatest($1::text::interval, interval '7 days')) r), \
           'users', (SELECT coalesce(pg_catalog.jsonb_agg(r ORDER BY r.events DESC, r.db_user, r.actor), '[]') \
                       FROM activity_log.user_summary($1::text::interval) r), \
           'anomalies', (SELECT coalesce(pg_catalog.jsonb_agg(r ORDER BY r.bucket_start, r.metric), '[]') \
                       FROM activity_log.anomalies(since => $1::text::interval, bucket => $2::text::interval) r))",
        &[&since, &bucket],
    )
    .await
}

/// migration returns migration_plan() and migration_status(), which need activity_log_admin;
/// a reader gets the `activity_log.migration` table and the reason instead.
pub async fn migration(t: &Target) -> Result<Value, Error> {
    let c = t.pool.get().await?;
    let full = c
        .query_one(
            "SELECT pg_catalog.jsonb_build_object( \
               'plan', (SELECT coalesce(pg_catalog.jsonb_agg(p), '[]') FROM activity_log.migration_plan() p), \
               'status', (SELECT coalesce(pg_catalog.jsonb_agg(s), '[]') FROM activity_log.migration_status() s))",
            &[],
        )
        .await;
    match full {
        Ok(r) => Ok(r.get::<_, Value>(0)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            let tables = c
                .query_one(
                    "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
                        'relation', m.relid::pg_catalog.regclass::text, 'phase', m.phase, 'forced', m.forced, \
                        'phase1_at', m.phase1_at, 'phase2_at', m.phase2_at, 'phase3_at', m.phase3_at) \
                        ORDER BY m.relid::pg_catalog.regclass::text), '[]') FROM activity_log.migration m",
                    &[],
                )
                .await?;
            Ok(serde_json::json!({
                "denied": "migration_plan() and migration_status() need activity_log_admin; this role may only read the tables being migrated. Hint: GRANT activity_log_admin to the monitor's role to see the plan (the monitor still only reads).",
                "tables": tables.get::<_, Value>(0),
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// metrics_text is the extension's Prometheus text of every ring, and the health score.
pub async fn metrics_text(t: &Target) -> Result<(String, Option<i32>), Error> {
    let c = t.pool.get().await?;
    let r = c
        .query_one(
            "SELECT activity_log.metrics_text(), (SELECT score FROM activity_log.health())",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}
