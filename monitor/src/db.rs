//! db.rs: the databases the monitor reads, and every statement it runs.
//!
//! Each `--url` is a target with a small pool. Every connection starts with
//! `default_transaction_read_only = on`, `search_path = pg_catalog, pg_temp` and
//! `TimeZone = UTC` (startup options, so nothing the server's or role's defaults say changes
//! them); statements name every object with its schema and take every value as a parameter.
//! Filters build the WHERE clause from fixed column names only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

/// The session settings every connection starts with. The timeouts bound what one request can
/// hold: a statement 30 s, a transaction left idle (a CSV export whose client stopped reading)
/// 60 s — after that the server ends the session, and its snapshot no longer holds back vacuum.
const SESSION_OPTIONS: &str = "-c default_transaction_read_only=on -c search_path=pg_catalog,pg_temp -c TimeZone=UTC \
-c statement_timeout=30s -c idle_in_transaction_session_timeout=60s";

/// Connections per database. At most `MAX_EXPORTS` of them stream a CSV export at a time, so
/// the pages always have the others.
pub const POOL_SIZE: usize = 4;
pub const MAX_EXPORTS: usize = 2;
/// How long a request waits for a free connection before it is answered 503.
const POOL_WAIT: Duration = Duration::from_secs(5);

pub struct Target {
    /// What the page shows: the database name, with the host when more targets share a name.
    pub name: String,
    pub pool: Pool,
    /// The connection settings, for the health probe's own connection (`probe`).
    pub cfg: tokio_postgres::Config,
    /// Permits for the CSV exports running now (`MAX_EXPORTS`).
    pub exports: Arc<Semaphore>,
    /// The last health probe: when, and the extension's version or what failed.
    pub probe: Mutex<Option<(Instant, Result<String, String>)>>,
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
                if code == "57014" {
                    return Error {
                        status: 503,
                        message:
                            "the query took longer than the monitor's statement_timeout (30 s)\n\
                                  Hint: narrow the filter (a time range, a kind, a table)."
                                .into(),
                    };
                }
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

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Error {
        match e {
            PoolError::Timeout(_) => Error {
                status: 503,
                message: format!(
                    "all {POOL_SIZE} connections to the database are busy\nHint: retry in a moment; \
                     long CSV exports hold connections (at most {MAX_EXPORTS} at a time)."
                ),
            },
            // The role may write (privileges): 403, which stops the monitor at its start.
            PoolError::PostCreateHook(HookError::Message(m)) => Error {
                status: 403,
                message: m.into_owned(),
            },
            PoolError::PostCreateHook(HookError::Backend(e)) | PoolError::Backend(e) => e.into(),
            e => Error {
                status: 502,
                message: format!("database connection: {e}"),
            },
        }
    }
}

impl Target {
    /// from_urls makes a target of each `--url`. Unless `allow_privileged`, each new connection
    /// first checks that its role can only read (`privileges`), and fails if not.
    pub fn from_urls(urls: &[String], allow_privileged: bool) -> Result<Vec<Target>, String> {
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
            // libpq's conventions, so that a password need not be on the command line.
            if cfg.get_password().is_none()
                && let Some(p) = crate::pgpass::password(&cfg)
            {
                cfg.password(p);
            }
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
            let mut builder = Pool::builder(mgr)
                .max_size(POOL_SIZE)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(Duration::from_secs(10)));
            if !allow_privileged {
                builder = builder.post_create(Hook::async_fn(|client, _| {
                    Box::pin(async move {
                        match privileges(client).await {
                            Ok(None) => Ok(()),
                            Ok(Some(why)) => Err(HookError::message(why)),
                            Err(e) => Err(HookError::Backend(e)),
                        }
                    })
                }));
            }
            let pool = builder
                .build()
                .map_err(|e| format!("pool for {name}: {e}"))?;
            targets.push(Target {
                name,
                pool,
                cfg: cfg.clone(),
                exports: Arc::new(Semaphore::new(MAX_EXPORTS)),
                probe: Mutex::new(None),
            });
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

/// privileges says why the connection's role may do more than read the trail (superuser,
/// activity_log_admin, a write privilege on the extension's tables or schema), or None. The
/// monitor never writes; a role that could is a risk the operator must accept explicitly
/// (`--allow-privileged`).
pub async fn privileges(
    c: &tokio_postgres::Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    let r = c
        .query_one(
            "SELECT pg_catalog.current_user()::text, r.rolsuper, \
                    CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'activity_log_admin') \
                         THEN pg_catalog.pg_has_role('activity_log_admin', 'MEMBER') ELSE false END, \
                    CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'activity_log') \
                         THEN pg_catalog.has_schema_privilege('activity_log', 'CREATE') ELSE false END, \
                    (SELECT pg_catalog.string_agg(pg_catalog.format('%s on %s', p.priv, c.oid::pg_catalog.regclass), ', ' \
                             ORDER BY c.oid::pg_catalog.regclass::text, p.priv) \
                       FROM pg_catalog.pg_class c \
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                      CROSS JOIN pg_catalog.unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p(priv) \
                      WHERE n.nspname = 'activity_log' AND c.relkind IN ('r', 'p') \
                        AND pg_catalog.has_table_privilege(c.oid, p.priv)) \
               FROM pg_catalog.pg_roles r WHERE r.rolname = pg_catalog.current_user()",
            &[],
        )
        .await?;
    let user: String = r.get(0);
    let mut why = Vec::new();
    if r.get::<_, bool>(1) {
        why.push("it is a superuser".to_string());
    }
    if r.get::<_, bool>(2) {
        why.push("it is a member of activity_log_admin".to_string());
    }
    if r.get::<_, bool>(3) {
        why.push("it may CREATE in schema activity_log".to_string());
    }
    if let Some(w) = r.get::<_, Option<String>>(4) {
        why.push(format!("it holds {w}"));
    }
    if why.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "refusing to use role \"{user}\": {}; the monitor only reads, and a role that can write \
         makes any flaw in it a way to change the trail\n\
         Hint: connect as a role with only activity_log_reader (CREATE ROLE monitor LOGIN; \
         GRANT activity_log_reader TO monitor), or start with --allow-privileged to accept the risk.",
        why.join(", ")
    )))
}

/// How often the health probe runs, and how old its last answer may be for /healthz to say ok.
const PROBE_EVERY: Duration = Duration::from_secs(5);
pub const PROBE_FRESH: Duration = Duration::from_secs(15);

/// probe keeps `Target::probe` current over a connection of its own (not the pool's), so that
/// /healthz answers at once and truthfully even while every pooled connection is busy.
pub async fn probe(app: crate::Shared, i: usize) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        let t = &app.targets[i];
        if client
            .as_ref()
            .is_some_and(tokio_postgres::Client::is_closed)
        {
            client = None;
        }
        let result = match client.as_ref() {
            Some(c) => probe_once(c).await,
            None => match t.cfg.connect(NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    let r = probe_once(&c).await;
                    client = Some(c);
                    r
                }
                Err(e) => Err(format!("database connection: {e}")),
            },
        };
        if let Ok(mut p) = t.probe.lock() {
            *p = Some((Instant::now(), result));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

async fn probe_once(c: &tokio_postgres::Client) -> Result<String, String> {
    let q = c.query_opt(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'activity_log'",
        &[],
    );
    match tokio::time::timeout(Duration::from_secs(5), q).await {
        Ok(Ok(Some(r))) => Ok(r.get(0)),
        Ok(Ok(None)) => Err("the extension activity_log is not installed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// check_text refuses a free-text parameter longer than `max` characters or holding a control
/// character: such a value reaches no row, and a NUL would fail in the server — where a failed
/// statement is itself written into the trail. Checked here, it is a 400 before any SQL.
pub fn check_text(name: &str, v: &str, max: usize) -> Result<(), Error> {
    if v.chars().count() > max {
        return Err(Error::bad(format!(
            "{name} is longer than {max} characters\nHint: give a shorter value."
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(Error::bad(format!(
            "{name} holds a control character\nHint: give printable text only."
        )));
    }
    Ok(())
}

/// check_time accepts an ISO 8601 date or date-time, which is what the page's inputs suggest:
/// `YYYY-MM-DD`, then optionally ` ` or `T`, `HH:MM`, `:SS`, `.fraction`, and `Z` or `±HH[:MM]`.
pub fn check_time(name: &str, v: &str) -> Result<(), Error> {
    let bad = || {
        Error::bad(format!(
            "{name} \"{v}\" is not a date or time\nHint: write 2026-12-01, 2026-12-01 13:45 or 2026-12-01T13:45:00Z (UTC unless an offset is given)."
        ))
    };
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = v.get(r)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, m, d) = match (digits(0..4), digits(5..7), digits(8..10)) {
        (Some(y), Some(m), Some(d)) => (y, m, d),
        _ => return Err(bad()),
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if y == 0 || !(1..=12).contains(&m) || d == 0 || d > days[(m - 1) as usize] {
        return Err(bad());
    }
    let mut rest = &v[10..];
    if rest.is_empty() {
        return Ok(());
    }
    rest = rest.strip_prefix([' ', 'T']).ok_or_else(bad)?;
    let two = |s: &str, max: u32| -> Option<()> {
        let n: u32 = s
            .get(0..2)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))?
            .parse()
            .ok()?;
        (n <= max).then_some(())
    };
    two(rest, 23).ok_or_else(bad)?;
    rest = rest[2..].strip_prefix(':').ok_or_else(bad)?;
    two(rest, 59).ok_or_else(bad)?;
    rest = &rest[2..];
    if let Some(r) = rest.strip_prefix(':') {
        two(r, 59).ok_or_else(bad)?;
        rest = &r[2..];
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 || n > 6 {
                return Err(bad());
            }
            rest = &r[n..];
        }
    }
    if rest.is_empty() || rest == "Z" {
        return Ok(());
    }
    let r = rest.strip_prefix(['+', '-']).ok_or_else(bad)?;
    two(r, 15).ok_or_else(bad)?;
    match &r[2..] {
        "" => Ok(()),
        m => {
            let m = m.strip_prefix(':').unwrap_or(m);
            if m.len() == 2 && two(m, 59).is_some() {
                Ok(())
            } else {
                Err(bad())
            }
        }
    }
}

/// parse_interval reads an analytics window, `N unit` (seconds, minutes, hours, days or weeks,
/// singular, plural or abbreviated), as seconds. Months and years are refused: their length
/// varies, and date_bin() takes no such bucket.
pub fn parse_interval(name: &str, v: &str) -> Result<u64, Error> {
    let bad = || {
        Error::bad(format!(
            "{name} \"{v}\" is not a positive interval\nHint: write a number and a unit: 90 seconds, 15 minutes, 6 hours, 7 days or 2 weeks."
        ))
    };
    let v = v.trim();
    let n = v.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 || n > 7 {
        return Err(bad());
    }
    let count: u64 = v[..n].parse().map_err(|_| bad())?;
    let unit = match v[n..].trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        _ => return Err(bad()),
    };
    if count == 0 {
        return Err(bad());
    }
    Ok(count * unit)
}

/// parse_table reads a table filter: `table`, `schema.table`, either part double-quoted when it
/// holds a dot or a quote (`"my.schema"."t"`, `""` for a quote), as the change log lists names.
pub fn parse_table(v: &str) -> Result<(Option<String>, String), Error> {
    fn part(s: &str) -> Option<(String, &str)> {
        if let Some(mut r) = s.strip_prefix('"') {
            let mut out = String::new();
            loop {
                let q = r.find('"')?;
                out.push_str(&r[..q]);
                r = &r[q + 1..];
                match r.strip_prefix('"') {
                    Some(rest) => {
                        out.push('"');
                        r = rest;
                    }
                    None => return (!out.is_empty()).then_some((out, r)),
                }
            }
        } else {
            let end = s.find('.').unwrap_or(s.len());
            (end > 0 && !s[..end].contains('"')).then(|| (s[..end].to_string(), &s[end..]))
        }
    }
    let bad = || {
        Error::bad(format!(
            "table \"{v}\" is not a table name\nHint: write table or schema.table; double-quote a part that holds a dot or a quote: \"my.schema\".orders."
        ))
    };
    let (first, rest) = part(v).ok_or_else(bad)?;
    if rest.is_empty() {
        return Ok((None, first));
    }
    let rest = rest.strip_prefix('.').ok_or_else(bad)?;
    let (second, end) = part(rest).ok_or_else(bad)?;
    if !end.is_empty() {
        return Err(bad());
    }
    Ok((Some(first), second))
}

/// The severities the trail uses (`log_event()` refuses any other).
pub const SEVERITIES: &[&str] = &["debug", "info", "notice", "warning", "error", "critical"];

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
    /// The view to export: `activity` (these filters; `kind=change&table=…` for a table's change
    /// log) or `history` (a row's history: `table` and `key`).
    pub view: Option<String>,
    /// A row's key, for `view=history`.
    pub key: Option<String>,
    /// The CSV export without the formula guard (`raw=1`): cells exactly as the trail holds them.
    pub raw: Option<u8>,
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
        if let Some(s) = given(&self.severity)
            && !SEVERITIES.contains(&s)
        {
            return Err(Error::bad(format!(
                "unknown severity \"{s}\"\nHint: give one of {}.",
                SEVERITIES.join(", ")
            )));
        }
        for (name, v, max) in [
            ("category", &self.category, 200),
            ("user", &self.user, 200),
            ("actor", &self.actor, 200),
            ("table", &self.table, 300),
            ("from", &self.from, 40),
            ("to", &self.to, 40),
            ("q", &self.q, 1000),
        ] {
            if let Some(v) = given(v) {
                check_text(name, v, max)?;
            }
        }
        if let Some(v) = given(&self.table) {
            parse_table(v)?;
        }
        if let Some(v) = given(&self.from) {
            check_time("from", v)?;
        }
        if let Some(v) = given(&self.to) {
            check_time("to", v)?;
        }
        if self.raw.is_some_and(|r| r > 1) {
            return Err(Error::bad(
                "raw is 0 or 1\nHint: raw=1 exports the cells without the formula guard.",
            ));
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
        // validate() refused a name that does not parse.
        if let Some(Ok((schema, table))) = given(&self.table).map(parse_table) {
            if let Some(s) = schema {
                w.push("schema_name = $", Box::new(s));
            }
            w.push("table_name = $", Box::new(table));
        }
        // The time range is on committed_at, when a record's transaction ended: it is what the
        // trail's day partitions are by (a range reads only its days), and it follows id.
        // Each bound is read once, as a sub-select: a text-to-timestamptz cast is only stable
        // (it reads TimeZone), so written inline it was parsed again for every row the scan
        // filtered (4x the time of a page 15 days back in 10 M rows: bench/monitor.py).
        // The day partitions are still skipped, at execution.
        if let Some(v) = given(&self.from) {
            w.push("committed_at >= (SELECT $::text::timestamptz)", text(v));
        }
        if let Some(v) = given(&self.to) {
            w.push("committed_at < (SELECT $::text::timestamptz)", text(v));
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

/// The columns of a row's history in its CSV export: `activity_log.changes`' but the table's oid.
pub const HISTORY_CSV_COLUMNS: &[&str] = &[
    "id",
    "ts",
    "committed_at",
    "op",
    "schema_name",
    "table_name",
    "row_key",
    "old_row",
    "new_row",
    "changed_columns",
    "db_user",
    "actor",
    "context",
    "xid",
    "query",
    "details",
];

/// CsvSelect is a CSV export's statement: its text, parameters and output columns (the header).
pub struct CsvSelect {
    pub sql: String,
    pub params: Where,
    pub columns: &'static [&'static str],
}

fn as_text(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| format!("{c}::text AS {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// csv_select is the export's statement for a filter (newest first), with its parameters. The
/// order is by the table's `e.id`: a bare `id` would name the output column `id::text AS id`
/// and sort as text (9 after 10), with a full sort instead of the index's order.
pub fn csv_select(f: &Filter) -> CsvSelect {
    let w = f.where_clause(true);
    CsvSelect {
        sql: format!(
            "SELECT {} FROM activity_log.events e{} ORDER BY e.id DESC",
            as_text(CSV_COLUMNS),
            w.sql()
        ),
        params: w,
        columns: CSV_COLUMNS,
    }
}

/// history_csv_select is the export's statement for a row's history, oldest first, as the
/// Change log shows it (the same checks of `table` and `key` as [`history`]).
pub async fn history_csv_select(t: &Target, table: &str, key: &str) -> Result<CsvSelect, Error> {
    let key = history_key(key)?;
    let qualified_name = qualified(table)?;
    let c = t.pool.get().await?;
    let oid = table_oid(&c, &qualified_name, table).await?;
    let mut w = Where::new();
    w.params.push(Box::new(oid));
    w.params.push(Box::new(key));
    Ok(CsvSelect {
        sql: format!(
            "SELECT {} FROM activity_log.history($1::pg_catalog.oid::pg_catalog.regclass, $2::jsonb) h ORDER BY h.id",
            as_text(HISTORY_CSV_COLUMNS)
        ),
        params: w,
        columns: HISTORY_CSV_COLUMNS,
    })
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
/// rows (a table no longer tracked, say), by name, each part quoted as an identifier where it
/// needs to be (`"my.schema".t`), so that `parse_table` reads it back.
pub async fn tables(t: &Target) -> Result<Vec<Value>, Error> {
    t.json_rows(
        "SELECT pg_catalog.jsonb_build_object('table', r.name, 'tracked', pg_catalog.bool_or(r.tracked)) \
           FROM (SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS name, true AS tracked \
                   FROM activity_log.tracked_tables tt \
                   JOIN pg_catalog.pg_class c ON c.oid = tt.relid \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 UNION ALL \
                 SELECT pg_catalog.format('%I.%I', schema_name, table_name), false \
                   FROM (SELECT schema_name, table_name FROM activity_log.events WHERE kind = 'change' \
                          ORDER BY id DESC LIMIT 10000) x) r \
          GROUP BY r.name ORDER BY r.name",
        &[],
    )
    .await
}

/// qualified reads `schema.table` (parts quoted as `parse_table` reads them).
fn qualified(table: &str) -> Result<(String, String), Error> {
    check_text("table", table, 300)?;
    match parse_table(table)? {
        (Some(s), t) => Ok((s, t)),
        (None, _) => Err(Error::bad(format!(
            "table \"{table}\" has no schema\nHint: write schema.table, as the list of tables shows it."
        ))),
    }
}

/// changes returns a table's newest changes (`schema.table`), newest first, keyset on id.
pub async fn changes(
    t: &Target,
    table: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Value>, Error> {
    let (schema, name) = qualified(table)?;
    t.json_rows(
        "SELECT pg_catalog.to_jsonb(r) FROM (SELECT id, committed_at, op, row_key, old_row, new_row, changed_columns, \
                db_user, actor, pg_catalog.left(query, 300) AS query \
           FROM activity_log.changes WHERE schema_name = $1 AND table_name = $2 AND id < $3 \
          ORDER BY id DESC LIMIT $4) r",
        &[&schema, &name, &before.unwrap_or(i64::MAX), &limit.clamp(1, 1000)],
    )
    .await
}

/// history returns a page of one row's story, oldest first, after the change `after`
/// (`activity_log.history()`, at most `limit` changes: keyset paging on id).
pub async fn history(
    t: &Target,
    table: &str,
    key: &str,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Value>, Error> {
    let key = history_key(key)?;
    let qualified_name = qualified(table)?;
    let c = t.pool.get().await?;
    let oid = table_oid(&c, &qualified_name, table).await?;
    let rows = c
        .query(
            "SELECT pg_catalog.to_jsonb(h) FROM (SELECT id, committed_at, op, row_key, old_row, new_row, changed_columns, \
                    db_user, actor, pg_catalog.left(query, 300) AS query \
               FROM activity_log.history($1::pg_catalog.oid::pg_catalog.regclass, $2::jsonb) \
              WHERE id > $3 ORDER BY id LIMIT $4) h",
            &[&oid, &key, &after.unwrap_or(0), &limit.clamp(1, 1000)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, Value>(0)).collect())
}

/// history_key is a row's key for its history, as JSON, checked.
fn history_key(key: &str) -> Result<Value, Error> {
    check_text("key", key, 2000)?;
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
    // An empty key is contained in every row's key: it would be every change of the table.
    if key.as_object().is_some_and(serde_json::Map::is_empty) {
        return Err(Error::bad(
            "the row key is empty: it would match every change of the table\nHint: give the key's columns, such as {\"id\": 42}; the table's changes are on its change log page.",
        ));
    }
    // jsonb holds no NUL character: refused here, not by a failing (and recorded) statement.
    if key.to_string().contains("\\u0000") {
        return Err(Error::bad(
            "the row key holds a NUL character (\\u0000)\nHint: no row's key holds one.",
        ));
    }
    Ok(key)
}

/// table_oid is the oid of `table` (`schema.table`, checked by [`qualified`]), or a 404. The
/// name is looked up, not parsed as regclass input: a table name may hold any character.
async fn table_oid(
    c: &deadpool_postgres::Client,
    (schema, name): &(String, String),
    table: &str,
) -> Result<u32, Error> {
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
    Ok(oid)
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

impl Window {
    /// since_bucket is the window, checked here so that a bad one is a 400 before any SQL (a
    /// failed statement would be written into the trail): both positive `N unit` intervals, at
    /// most 10 000 buckets over the window and anomalies()'s 7-day baseline.
    pub fn since_bucket(&self) -> Result<(String, String), Error> {
        let since = given(&self.since).unwrap_or("24 hours").to_string();
        let bucket = given(&self.bucket).unwrap_or("1 hour").to_string();
        let s = parse_interval("since", &since)?;
        let b = parse_interval("bucket", &bucket)?;
        if s > 3650 * 86_400 {
            return Err(Error::bad(format!(
                "since \"{since}\" is more than 10 years\nHint: give a shorter window."
            )));
        }
        if (s + 7 * 86_400) / b > 10_000 {
            return Err(Error::bad(format!(
                "too many buckets: ({since} + the 7-day baseline) / {bucket} is more than 10000\nHint: use a larger bucket or a shorter window."
            )));
        }
        Ok((since, bucket))
    }
}

pub async fn analytics(t: &Target, w: &Window) -> Result<Value, Error> {
    let (since, bucket) = w.since_bucket()?;
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
    // Asked first: a call that fails for want of the privilege would be a failed statement,
    // which the extension writes into the trail.
    let allowed: bool = c
        .query_one(
            "SELECT pg_catalog.has_function_privilege('activity_log.migration_plan()', 'EXECUTE') \
                AND pg_catalog.has_function_privilege('activity_log.migration_status()', 'EXECUTE')",
            &[],
        )
        .await?
        .get(0);
    let full = if allowed {
        c.query_one(
            "SELECT pg_catalog.jsonb_build_object( \
               'plan', (SELECT coalesce(pg_catalog.jsonb_agg(p), '[]') FROM activity_log.migration_plan() p), \
               'status', (SELECT coalesce(pg_catalog.jsonb_agg(s), '[]') FROM activity_log.migration_status() s))",
            &[],
        )
        .await
        .map(Some)
    } else {
        Ok(None)
    };
    match full {
        Ok(Some(r)) => Ok(r.get::<_, Value>(0)),
        Ok(None) => {
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
                "denied": "migration_plan() and migration_status() need activity_log_admin, which the monitor's read-only role does not have: this page lists the tables being migrated. Hint: run SELECT * FROM activity_log.migration_plan() as an administrator in psql to see the plan.",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_iso_8601_only() {
        for ok in [
            "2026-12-01",
            "2024-02-29",
            "2026-12-01 13:45",
            "2026-12-01T13:45:07",
            "2026-12-01T13:45:07.123456Z",
            "2026-12-01 13:45+02",
            "2026-12-01 13:45:00-05:30",
        ] {
            assert!(check_time("from", ok).is_ok(), "{ok}");
        }
        for bad in [
            "yesterday",
            "2026-02-30",
            "2025-02-29",
            "2026-13-01",
            "2026-12-01 24:00",
            "2026-12-01 13:45:07.1234567",
            "2026-12-01 13:45 UTC",
            "2026-12-01x",
            "now",
        ] {
            assert_eq!(
                check_time("from", bad).unwrap_err().message,
                format!(
                    "from \"{bad}\" is not a date or time\nHint: write 2026-12-01, 2026-12-01 13:45 or 2026-12-01T13:45:00Z (UTC unless an offset is given)."
                )
            );
        }
    }

    #[test]
    fn intervals_are_a_number_and_a_unit() {
        assert_eq!(parse_interval("since", "24 hours").unwrap(), 86_400);
        assert_eq!(parse_interval("since", "15min").unwrap(), 900);
        assert_eq!(parse_interval("since", "2 weeks").unwrap(), 1_209_600);
        for bad in ["-1 hour", "0 days", "1 month", "1 hour'", "hours", ""] {
            assert!(parse_interval("since", bad).is_err(), "{bad}");
        }
        let w = Window {
            db: None,
            since: Some("1 day".into()),
            bucket: Some("1 minute".into()),
        };
        assert!(
            w.since_bucket()
                .unwrap_err()
                .message
                .starts_with("too many buckets")
        );
    }

    #[test]
    fn table_names_parse_with_quoted_parts() {
        let p = |s: &str| parse_table(s).map_err(|e| e.message);
        assert_eq!(p("orders"), Ok((None, "orders".into())));
        assert_eq!(
            p("public.orders"),
            Ok((Some("public".into()), "orders".into()))
        );
        assert_eq!(
            p("\"my.schema\".t"),
            Ok((Some("my.schema".into()), "t".into()))
        );
        assert_eq!(
            p("public.\"a\"\"b.c\""),
            Ok((Some("public".into()), "a\"b.c".into()))
        );
        for bad in ["", ".t", "a.", "a.b.c", "\"open", "a\"b", "\"\".t"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
