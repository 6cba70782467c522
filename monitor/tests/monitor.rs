//! Integration tests of the activity monitor against a real cluster (`./dev start-cluster`,
//! through the extension's own harness, tests/common/mod.rs): every endpoint, the filters,
//! keyset paging while rows arrive, the CSV export against `COPY`, /metrics parsed strictly,
//! a role with only activity_log_reader, attacker-controlled text shown as text, authentication.
//!
//! Needs what the extension's real-cluster tests need: the extension installed into PG_BIN's
//! PostgreSQL (`./dev install --debug`), sudo and the `postgres` OS user.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Cluster, with_extension};

/// The columns the export writes, as the documentation lists them (the test's own copy).
const HISTORY_CSV_COLUMNS: &str = "id, ts, committed_at, op, schema_name, table_name, row_key, \
old_row, new_row, changed_columns, db_user, actor, context, xid, query, details";
const CSV_COLUMNS: &str = "id, ts, committed_at, kind, category, severity, status, sqlstate, db_user, \
effective_user, actor, application_name, client_addr, command, schema_name, table_name, row_key, old_row, \
new_row, changed_columns, query, rows, duration_ms, context, jwt_claims, details";

const XSS_TABLE: &str = "<script>alert('t')</script>";

/// copy_columns: the SELECT list of the COPY that a CSV export is compared with, for the
/// ", "-separated `columns`: each as text, with the formula guard (a `'` before a cell starting
/// with = + - @ TAB CR) when `guard`, as the monitor writes it.
fn copy_columns(columns: &str, guard: bool) -> String {
    columns
        .split(", ")
        .map(|c| {
            if guard {
                format!(
                    "CASE WHEN left({c}::text, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r') \
                     THEN '''' || {c}::text ELSE {c}::text END AS {c}"
                )
            } else {
                format!("{c}::text AS {c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Monitor is a running monitor process; dropped, it is killed.
struct Monitor {
    child: Child,
    addr: String,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Monitor {
    /// start runs the monitor with `args` (plus --listen 127.0.0.1:0 unless given) and waits for
    /// its "listening on" line.
    fn start(args: &[&str]) -> Monitor {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_activity_log_monitor"));
        cmd.args(args);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the monitor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("activity_log_monitor: listening on http://")
            .and_then(|a| a.strip_suffix('/'))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .replace("0.0.0.0", "127.0.0.1");
        Monitor { child, addr }
    }

    fn get(&self, path: &str) -> Response {
        self.get_with(path, &[])
    }

    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http_get(&self.addr, path, headers)
    }

    /// json gets a JSON endpoint that must answer 200.
    fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }
}

struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// http_get is a minimal HTTP/1.1 client (one request per connection; chunked bodies decoded).
fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut hs = BTreeMap::new();
    for l in lines {
        let (k, v) = l.split_once(':').unwrap();
        hs.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = raw[split + 4..].to_vec();
    if hs.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Response {
        status,
        headers: hs,
        body,
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// url is the monitor's --url for a database of the cluster, as `user`.
fn url(c: &Cluster, db: &str, user: &str) -> String {
    format!(
        "postgresql:///{db}?host={}&port={}&user={user}",
        c.dir, c.port
    )
}

/// filled starts a cluster whose database `app` holds a trail of every kind, with `<script>` in a
/// column value, a table name and a query, and a login role `monitor` with only
/// activity_log_reader.
fn filled(name: &str) -> Cluster {
    let c = Cluster::start(name, &["activity_log.capture_statements = 'mod'"]);
    with_extension(&c, "app");
    c.sql(
        "app",
        &format!(
            "CREATE ROLE monitor LOGIN;
             GRANT activity_log_reader TO monitor;
             CREATE ROLE alice LOGIN;
             CREATE TABLE public.orders (id int PRIMARY KEY, item text, qty int);
             GRANT ALL ON public.orders TO alice;
             SELECT activity_log.track('public.orders');
             CREATE TABLE public.\"{t}\" (id int PRIMARY KEY, v text);
             SELECT activity_log.track('public.\"{q}\"');
             INSERT INTO public.orders VALUES (1, '<script>alert(1)</script>', 1), (2, 'pen', 2);
             UPDATE public.orders SET qty = 5, item = 'book' WHERE id = 1;
             SET activity_log.actor = 'bob';
             DELETE FROM public.orders WHERE id = 2;
             RESET activity_log.actor;
             INSERT INTO public.\"{t}\" VALUES (1, 'x');
             SELECT activity_log.log_event('invoice_sent', '{{\"amount\": 1}}', category => 'billing', severity => 'warning');
",
            t = XSS_TABLE,
            q = XSS_TABLE.replace('\'', "''")
        ),
    );
    c.sql_as(
        "alice",
        "app",
        "INSERT INTO public.orders VALUES (3, 'ink', 7)",
    );
    // A failed statement whose query text holds a script.
    let e = c.error("app", "SELECT '<script>alert(2)</script>'::int;");
    assert!(e.contains("invalid input syntax for type integer"), "{e}");
    c.flush("app");
    c
}

/// ids runs a query returning ids, as numbers.
fn ids(c: &Cluster, sql: &str) -> Vec<i64> {
    c.sql("app", sql)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn json_ids(v: &serde_json::Value) -> Vec<i64> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

/// The strict Prometheus text parser: each family's HELP and TYPE once, before its samples; the
/// samples of a family together; names, labels and values as the exposition format (0.0.4)
/// defines them. Returns each sample as (name, labels, value).
fn parse_prometheus(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let mut samples = Vec::new();
    let mut help = std::collections::BTreeSet::new();
    let mut typed = BTreeMap::new();
    let mut finished = std::collections::BTreeSet::new();
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect(&at);
            assert!(is_name(name, true), "{at}");
            assert!(help.insert(name.to_string()), "second HELP, {at}");
            assert!(
                !finished.contains(name) && !samples.iter().any(|(s, _, _)| s == name),
                "HELP after samples, {at}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(&at);
            assert!(is_name(name, true), "{at}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{at}"
            );
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "second TYPE, {at}"
            );
            assert!(
                !samples.iter().any(|(s, _, _)| s == name),
                "TYPE after samples, {at}"
            );
        } else if line.starts_with('#') {
            continue;
        } else {
            assert!(!line.is_empty(), "empty line, {at}");
            let (name, rest) = match line.find('{') {
                Some(b) => (&line[..b], &line[b..]),
                None => line
                    .split_once(' ')
                    .map(|(n, _)| (n, &line[n.len()..]))
                    .expect(&at),
            };
            assert!(is_name(name, true), "{at}");
            if name != current {
                assert!(
                    finished.insert(current.clone()) || current.is_empty(),
                    "{at}"
                );
                assert!(
                    !finished.contains(name),
                    "samples of {name} not together, {at}"
                );
                current = name.to_string();
            }
            assert!(typed.contains_key(name), "sample without TYPE, {at}");
            let mut labels = BTreeMap::new();
            let mut rest = rest;
            if let Some(body) = rest.strip_prefix('{') {
                let mut chars = body.char_indices().peekable();
                let end;
                loop {
                    let start = chars.peek().expect(&at).0;
                    let mut key_end = start;
                    while let Some(&(i, c)) = chars.peek() {
                        if c == '=' {
                            key_end = i;
                            break;
                        }
                        chars.next();
                    }
                    let key = &body[start..key_end];
                    assert!(is_name(key, false), "label name {key:?}, {at}");
                    chars.next();
                    assert_eq!(chars.next().map(|x| x.1), Some('"'), "{at}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect(&at).1 {
                            '\\' => match chars.next().expect(&at).1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                other => panic!("escape \\{other}, {at}"),
                            },
                            '"' => break,
                            '\n' => panic!("newline in a label value, {at}"),
                            c => value.push(c),
                        }
                    }
                    assert!(
                        labels.insert(key.to_string(), value).is_none(),
                        "label twice, {at}"
                    );
                    match chars.next().expect(&at) {
                        (_, ',') => continue,
                        (i, '}') => {
                            end = i;
                            break;
                        }
                        other => panic!("{other:?}, {at}"),
                    }
                }
                rest = &body[end + 1..];
            }
            let value = rest.strip_prefix(' ').expect(&at);
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().unwrap_or_else(|_| panic!("value {v:?}, {at}")),
            };
            samples.push((name.to_string(), labels, value));
        }
    }
    samples
}

#[test]
fn every_endpoint_with_a_reader_only_role() {
    let c = filled("monitor-endpoints");
    let m = Monitor::start(&["--url", &url(&c, "app", "monitor"), "--refresh-ms", "500"]);

    // /healthz: ok, and no database name for an unauthenticated caller.
    let r = m.get("/healthz");
    assert_eq!(
        (r.status, r.text()),
        (
            200,
            "ok\ndatabase 0: ok, 0 of 4 connections in use, 0 waiting\n".to_string()
        )
    );

    // Activity: the newest page is the trail, newest first.
    let all = ids(&c, "SELECT id FROM activity_log.events ORDER BY id DESC");
    assert!(all.len() > 10, "{all:?}");
    let page = m.json("/api/activity");
    assert_eq!(json_ids(&page), all);
    assert_eq!(page["next_before"], serde_json::Value::Null);

    // Every filter equals its SQL.
    let me = c.one("app", "SELECT current_date::text");
    let mid = c.one(
        "app",
        "SELECT committed_at::text FROM activity_log.events ORDER BY id OFFSET 5 LIMIT 1",
    );
    let to_mid = format!("to={}", enc(&mid));
    let before_mid = format!("committed_at < '{mid}'");
    for (query, sql) in [
        ("kind=change", "kind = 'change'"),
        ("source=ddl", "kind = 'ddl'"),
        (
            "kind=event&category=billing",
            "kind = 'event' AND category = 'billing'",
        ),
        ("severity=warning", "severity = 'warning'"),
        ("status=error", "status = 'error'"),
        ("user=alice", "db_user = 'alice'"),
        ("actor=bob", "actor = 'bob'"),
        ("table=orders", "table_name = 'orders'"),
        (
            "table=public.orders&kind=change",
            "schema_name = 'public' AND table_name = 'orders' AND kind = 'change'",
        ),
        (
            &format!("table={}", enc(&format!("public.{XSS_TABLE}"))),
            &format!("table_name = '{}'", XSS_TABLE.replace('\'', "''")),
        ),
        ("q=SCRIPT", "strpos(lower(query), 'script') > 0"),
        (
            &format!("from={me}&to={}", enc("2999-01-01 00:00+00")),
            "committed_at >= current_date AND committed_at < '2999-01-01 00:00+00'",
        ),
        ("from=2999-01-01", "false"),
        (&to_mid, &before_mid),
        ("kind=&status=&q=", "true"),
    ] {
        let expected = ids(
            &c,
            &format!("SELECT id FROM activity_log.events WHERE {sql} ORDER BY id DESC"),
        );
        assert_eq!(
            json_ids(&m.json(&format!("/api/activity?{query}"))),
            expected,
            "{query}"
        );
    }
    for sql in [
        "actor = 'bob'",
        "db_user = 'alice'",
        "category = 'billing'",
        "severity = 'warning'",
    ] {
        assert!(
            !ids(
                &c,
                &format!("SELECT id FROM activity_log.events WHERE {sql}")
            )
            .is_empty(),
            "{sql}"
        );
    }
    assert!(
        !ids(
            &c,
            "SELECT id FROM activity_log.events WHERE status = 'error'"
        )
        .is_empty()
    );

    // Bad filters are refused with the reason and a hint.
    let r = m.get("/api/activity?kind=bogus");
    assert_eq!(r.status, 400);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["error"],
        "unknown kind \"bogus\"\nHint: give one of change, statement, ddl, event, system."
    );
    let r = m.get("/api/activity?from=yesterdayish");
    assert_eq!(r.status, 400);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["error"],
        "from \"yesterdayish\" is not a date or time\nHint: write 2026-12-01, 2026-12-01 13:45 or 2026-12-01T13:45:00Z (UTC unless an offset is given)."
    );
    assert_eq!(m.get("/api/activity?db=7").status, 404);

    // One record, whole: the update's images and changed columns.
    let upd: i64 = c
        .one(
            "app",
            "SELECT id FROM activity_log.changes WHERE op = 'UPDATE'",
        )
        .parse()
        .unwrap();
    let rec = m.json(&format!("/api/activity/{upd}"));
    let want: serde_json::Value = serde_json::from_str(&c.one(
        "app",
        &format!("SELECT jsonb_build_object('old_row', old_row, 'new_row', new_row, 'changed_columns', changed_columns, 'query', query) FROM activity_log.events WHERE id = {upd}"),
    ))
    .unwrap();
    for k in ["old_row", "new_row", "changed_columns", "query"] {
        assert_eq!(rec[k], want[k], "{k}");
    }
    assert_eq!(rec["changed_columns"], serde_json::json!(["item", "qty"]));
    assert!(rec.get("chain").is_none());
    assert_eq!(m.get("/api/activity/999999999").status, 404);

    // The export's order is the trail's ids, newest first, as numbers (an independent
    // statement: the export once sorted its id::text column, 9 after 10).
    let r = m.get("/export.csv");
    let csv_ids: Vec<i64> = r
        .text()
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect();
    let numeric = ids(&c, "SELECT id FROM activity_log.events ORDER BY id DESC");
    assert!(numeric.iter().any(|&i| i >= 10), "ids past 9: {numeric:?}");
    assert_eq!(csv_ids, numeric);

    // CSV equals COPY of the same SELECT, for a filter and for the whole trail: with the formula
    // guard (a `'` before a cell starting with = + - @ TAB CR) and, with raw=1, without it.
    for (query, sql, guard) in [
        ("kind=change", " WHERE kind = 'change'", true),
        ("", "", true),
        ("raw=1", "", false),
    ] {
        let r = m.get(&format!("/export.csv?{query}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
        assert_eq!(r.headers["transfer-encoding"], "chunked", "streamed");
        let cols = copy_columns(CSV_COLUMNS, guard);
        let out = c
            .psql_command("app")
            .args([
                "-c",
                "SET TimeZone = 'UTC'",
                "-c",
                &format!("COPY (SELECT {cols} FROM activity_log.events e{sql} ORDER BY e.id DESC) TO STDOUT (FORMAT csv, HEADER)"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(r.text(), String::from_utf8(out.stdout).unwrap(), "{query}");
    }
    assert!(
        m.get("/export.csv?kind=change")
            .text()
            .contains("<script>alert(1)</script>")
    );
    assert_eq!(m.get("/export.csv?status=nope").status, 400);

    // Change log: tables, a table's changes, a row's history.
    let tables = m.json("/api/changes");
    assert_eq!(
        tables["tables"],
        serde_json::json!([
            {"table": format!("public.\"{XSS_TABLE}\""), "tracked": true},
            {"table": "public.orders", "tracked": true}
        ])
    );
    let ch = m.json("/api/changes?table=public.orders");
    assert_eq!(
        json_ids(&ch),
        ids(
            &c,
            "SELECT id FROM activity_log.changes WHERE table_name = 'orders' ORDER BY id DESC"
        )
    );
    let h = m.json(&format!(
        "/api/history?table=public.orders&key={}",
        enc("{\"id\":1}")
    ));
    let ops: Vec<&str> = h["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["INSERT", "UPDATE"]);
    let r = m.get(&format!(
        "/api/history?table=public.orders&key={}",
        enc("[1]")
    ));
    assert_eq!(r.status, 400);
    let r = m.get(&format!(
        "/api/history?table=public.nope&key={}",
        enc("{\"id\":1}")
    ));
    assert_eq!(r.status, 404);
    // A row's history as CSV: COPY of the same history() call, oldest first, with the formula
    // guard; a table's change log is the Activity export filtered by kind and table.
    let r = m.get(&format!(
        "/export.csv?view=history&table=public.orders&key={}",
        enc("{\"id\":1}")
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["transfer-encoding"], "chunked", "streamed");
    let cols = copy_columns(HISTORY_CSV_COLUMNS, true);
    let out = c
        .psql_command("app")
        .args([
            "-c",
            "SET TimeZone = 'UTC'",
            "-c",
            &format!(
                "COPY (SELECT {cols} FROM activity_log.history('public.orders', '{{\"id\": 1}}') h ORDER BY h.id) \
                 TO STDOUT (FORMAT csv, HEADER)"
            ),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        expected.lines().count(),
        3,
        "a header and the row's INSERT and UPDATE"
    );
    assert_eq!(r.text(), expected);
    for (query, status) in [
        ("view=history&table=public.orders".to_string(), 400),
        (
            format!("view=history&table=public.orders&key={}", enc("[1]")),
            400,
        ),
        (
            format!("view=history&table=public.nope&key={}", enc("{\"id\":1}")),
            404,
        ),
        ("view=nope".to_string(), 400),
    ] {
        assert_eq!(
            m.get(&format!("/export.csv?{query}")).status,
            status,
            "{query}"
        );
    }

    // Health, analytics, migration as JSON.
    let h = m.json("/api/health");
    assert_eq!(
        h["health"]["score"],
        c.one("app", "SELECT score FROM activity_log.health()")
            .parse::<i64>()
            .unwrap()
    );
    let factors: Vec<&str> = h["health"]["factors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["factor"].as_str().unwrap())
        .collect();
    assert!(
        factors.contains(&"writer") && factors.contains(&"writer_lag"),
        "{factors:?}"
    );
    assert!(
        h["health"]["factors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["reason"].is_string())
    );
    assert_eq!(h["metrics"]["database"], "app");
    assert_eq!(h["metrics"]["writer_state"], "running");
    assert_eq!(h["gaps"], serde_json::json!([]));
    assert_eq!(h["dead_letters"], serde_json::json!([]));
    let a = m.json("/api/analytics?since=6%20hours&bucket=1%20hour");
    let trend_events: i64 = a["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["events"].as_i64().unwrap())
        .sum();
    assert_eq!(
        trend_events,
        c.one(
            "app",
            "SELECT sum(events) FROM activity_log.trend('6 hours', '1 hour')"
        )
        .parse::<i64>()
        .unwrap()
    );
    assert_eq!(a["hourly"].as_array().unwrap().len(), 24);
    assert_eq!(a["daily"].as_array().unwrap().len(), 7);
    let users: Vec<&str> = a["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["db_user"].as_str().unwrap())
        .collect();
    assert!(
        users.contains(&"alice") && users.contains(&"postgres"),
        "{users:?}"
    );
    let r = m.get("/api/analytics?since=-1%20hour");
    assert_eq!(r.status, 400, "{}", r.text());
    let mig = m.json("/api/migration");
    assert_eq!(mig["tables"], serde_json::json!([]));
    assert!(
        mig["denied"]
            .as_str()
            .unwrap()
            .starts_with("migration_plan() and migration_status() need activity_log_admin, which the monitor's read-only role does not have")
    );

    // /metrics: strict Prometheus text with the database's rings and the monitor's own.
    let r = m.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let samples = parse_prometheus(&r.text());
    let find = |name: &str| {
        samples
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(find("activity_log_monitor_up").1["target"], "app");
    assert_eq!(find("activity_log_monitor_up").2, 1.0);
    let written = find("activity_log_records_written_total");
    assert_eq!(
        (written.1["target"].as_str(), written.1["database"].as_str()),
        ("app", "app")
    );
    // Every record went through the ring but CREATE EXTENSION's own (the extension's script
    // stores it); none came from the monitor, whose GETs cause no failed statement (the trail
    // holds exactly the records counted when the test began).
    c.flush("app");
    assert_eq!(
        c.one(
            "app",
            "SELECT count(*) FROM activity_log.events WHERE command IS DISTINCT FROM 'CREATE EXTENSION'"
        ),
        written.2.to_string()
    );
    assert_eq!(
        ids(&c, "SELECT id FROM activity_log.events ORDER BY id DESC"),
        all,
        "the monitor added records to the trail"
    );
    assert_eq!(find("activity_log_writer_up").2, 1.0);

    // The pages: attacker-controlled text only ever as text.
    let key = enc("{\"id\":1}");
    let xss_table = enc(&format!("public.{XSS_TABLE}"));
    for path in [
        "/activity".to_string(),
        format!(
            "/activity?q={}&table={xss_table}",
            enc("<script>alert(3)</script>")
        ),
        "/changes".to_string(),
        "/changes?table=public.orders".to_string(),
        format!("/changes?table=public.orders&key={key}"),
        format!("/changes?table={xss_table}"),
        format!("/changes?table={xss_table}&key={key}"),
        "/health".to_string(),
        "/analytics".to_string(),
        "/migration".to_string(),
    ] {
        let r = m.get(&path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
        assert!(
            r.headers["content-security-policy"].contains("script-src 'self'"),
            "{path}"
        );
        let body = r.text();
        assert_eq!(
            body.matches("<script").count(),
            1,
            "{path}: only the page's own script\n{body}"
        );
        assert!(
            body.contains("<script src=\"/static/app.js\"></script>"),
            "{path}"
        );
        assert!(
            !body.contains("alert(") || body.contains("&lt;script&gt;alert("),
            "{path}"
        );
    }
    let body = m
        .get(&format!("/activity?q={}", enc("<script>alert(3)</script>")))
        .text();
    assert!(
        body.contains("value=\"&lt;script&gt;alert(3)&lt;/script&gt;\""),
        "{body}"
    );
    let body = m.get("/changes").text();
    assert!(
        body.contains(">public.&quot;&lt;script&gt;alert(&#39;t&#39;)&lt;/script&gt;&quot;</a>"),
        "{body}"
    );
    let body = m
        .get(&format!("/changes?table=public.orders&key={key}"))
        .text();
    assert!(body.contains("<tr class=\"changed\"><td>item</td><td>&lt;script&gt;alert(1)&lt;/script&gt;</td><td>book</td></tr>"), "{body}");
    assert!(
        body.contains("<tr class=\"changed\"><td>qty</td><td>1</td><td>5</td></tr>"),
        "{body}"
    );
    let body = m
        .get(&format!("/changes?table={xss_table}&key={key}"))
        .text();
    assert!(
        body.contains("<h2>History of public.&lt;script&gt;alert(&#39;t&#39;)&lt;/script&gt;"),
        "{body}"
    );
    let body = m.get("/migration").text();
    assert!(body.contains("<p class=\"note\" id=\"denied\">migration_plan() and migration_status() need activity_log_admin"), "{body}");
    let body = m.get("/health").text();
    assert!(body.contains("<td>writer</td>"), "{body}");
    assert!(body.contains("<h2>Writer</h2><table class=\"kv\"><tbody><tr><th>writer_state</th><td>running</td></tr>"), "{body}");
    assert!(m.get("/analytics").text().contains("<svg class=\"chart\""));
    // The query text of the failed statement, in the JSON the page's script puts in textContent.
    // (The monitor's own failed statements, such as the bad filters above, are in the trail too.)
    let err = m.json("/api/activity?status=error&q=alert(2)");
    assert_eq!(err["rows"].as_array().unwrap().len(), 1);
    assert_eq!(
        err["rows"][0]["query"],
        "SELECT '<script>alert(2)</script>'::int"
    );

    // The static files and the rest.
    let js = m.get("/static/app.js");
    assert_eq!(js.headers["content-type"], "text/javascript; charset=utf-8");
    assert!(
        !js.text().contains("innerHTML"),
        "the script never parses HTML"
    );
    assert_eq!(m.get("/static/style.css").status, 200);
    assert_eq!(m.get("/").status, 303);
    assert_eq!(m.get("/nope").status, 404);
    let t = m.json("/api/targets");
    assert_eq!(t["targets"][0]["up"], true);
    assert_eq!(t["refresh_ms"], 500);
}

#[test]
fn keyset_pages_skip_and_repeat_nothing_while_rows_arrive() {
    let c = Cluster::start("monitor-keyset", &[]);
    with_extension(&c, "app");
    c.sql(
        "app",
        "CREATE ROLE monitor LOGIN; GRANT activity_log_reader TO monitor;
                  SELECT activity_log.log_event('e' || g) FROM generate_series(1, 1000) g;",
    );
    c.flush("app");
    let m = Monitor::start(&["--url", &url(&c, "app", "monitor")]);
    let first = m.json("/api/activity?kind=event&limit=100");
    let top = json_ids(&first)[0];
    let mut seen = json_ids(&first);
    let mut before = first["next_before"].as_i64().unwrap();
    let mut round = 0;
    loop {
        // New rows arrive between the pages.
        round += 1;
        c.sql(
            "app",
            &format!(
                "SELECT activity_log.log_event('late{round}-' || g) FROM generate_series(1, 37) g"
            ),
        );
        c.flush("app");
        let p = m.json(&format!(
            "/api/activity?kind=event&limit=100&before={before}"
        ));
        seen.extend(json_ids(&p));
        match p["next_before"].as_i64() {
            Some(b) => before = b,
            None => break,
        }
    }
    assert_eq!(round, 10, "1 000 rows in pages of 100");
    assert_eq!(
        seen,
        ids(
            &c,
            &format!(
                "SELECT id FROM activity_log.events WHERE kind = 'event' AND id <= {top} ORDER BY id DESC"
            )
        )
    );
    // The live poll above the newest row seen: every new row once, oldest first, in pages.
    let mut after = top;
    let mut new = Vec::new();
    loop {
        let p = m.json(&format!("/api/activity?kind=event&limit=100&after={after}"));
        let got = json_ids(&p);
        if got.is_empty() {
            break;
        }
        after = *got.last().unwrap();
        new.extend(got);
    }
    assert_eq!(new.len(), 370);
    assert_eq!(
        new,
        ids(
            &c,
            &format!(
                "SELECT id FROM activity_log.events WHERE kind = 'event' AND id > {top} ORDER BY id"
            )
        )
    );
    // Scrolling back up (app.js): the rows just above a window whose first id is W are
    // `after=W&limit=N`, the N rows just newer than W, oldest first, whatever arrived since.
    for (at, n) in [(500, 100), (1, 1), (999, 500)] {
        let w = seen[at];
        let p = m.json(&format!("/api/activity?kind=event&limit={n}&after={w}"));
        let mut above = seen[at.saturating_sub(n)..at].to_vec();
        above.reverse();
        assert_eq!(json_ids(&p), above, "the {n} rows just above position {at}");
    }
    let r = m.get("/api/activity?before=5&after=3");
    assert_eq!(r.status, 400);
}

#[test]
fn a_public_address_needs_authentication_and_auth_is_checked() {
    // Refused before anything is bound or connected.
    let out = Command::new(env!("CARGO_BIN_EXE_activity_log_monitor"))
        .args([
            "--url",
            "postgresql:///nowhere?host=/nonexistent",
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "activity_log_monitor: refusing to listen on 0.0.0.0:0 without authentication: the trail holds row images and query texts\n\
         Hint: add --token T or --basic-auth user:pass, or listen on 127.0.0.1.\n"
    );

    // With a token it starts; a database that is down is reported, not fatal.
    let m = Monitor::start(&[
        "--url",
        "postgresql:///nowhere?host=/nonexistent&port=1",
        "--listen",
        "0.0.0.0:0",
        "--token",
        "s3cret-token",
    ]);
    assert_eq!(m.get("/api/targets").status, 401);
    assert_eq!(
        m.get_with("/api/targets", &[("Authorization", "Bearer wrong")])
            .status,
        401
    );
    let r = m.get_with("/api/targets", &[("Authorization", "Bearer s3cret-token")]);
    assert_eq!(r.status, 200);
    let t: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(t["targets"][0]["up"], false);
    // ?token= signs in and sends the browser to the same URL without the token.
    let r = m.get("/activity?kind=change&token=s3cret-token&status=error");
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/activity?kind=change&status=error");
    assert_eq!(
        r.headers["set-cookie"],
        "al_monitor_token=s3cret-token; Path=/; HttpOnly; SameSite=Strict"
    );
    assert_eq!(
        m.get_with("/metrics", &[("Cookie", "al_monitor_token=s3cret-token")])
            .status,
        200
    );
    assert_eq!(
        m.get_with("/metrics", &[("Cookie", "al_monitor_token=other")])
            .status,
        401
    );
    let r = m.get("/healthz");
    assert_eq!(
        (r.status, r.text()),
        (
            503,
            "not ok\ndatabase 0: not ok, 0 of 4 connections in use, 0 waiting\n".to_string()
        )
    );
    let samples = parse_prometheus(
        &m.get_with("/metrics", &[("Authorization", "Bearer s3cret-token")])
            .text(),
    );
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].0, "activity_log_monitor_up");
    assert_eq!(samples[0].2, 0.0);
    drop(m);

    let m = Monitor::start(&[
        "--url",
        "postgresql:///nowhere?host=/nonexistent",
        "--basic-auth",
        "ann:pw",
    ]);
    let r = m.get("/metrics");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers["www-authenticate"],
        "Basic realm=\"activity_log monitor\", charset=\"UTF-8\""
    );
    // base64("ann:pw") = YW5uOnB3
    assert_eq!(
        m.get_with("/metrics", &[("Authorization", "Basic YW5uOnB3")])
            .status,
        200
    );
    assert_eq!(
        m.get_with("/metrics", &[("Authorization", "Basic YW5uOnB4")])
            .status,
        401
    );
}

/// raw_get sends a GET with the given Host and returns the connection (for slow clients).
fn raw_get(addr: &str, path: &str, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

/// The hostile review of issue 31 (reproductions f01–f15): each finding, as the fix answers it.
#[test]
fn the_review_findings_stay_fixed() {
    let c = filled("monitor-review");
    c.sql(
        "app",
        "CREATE SCHEMA \"my.schema\";
         CREATE TABLE \"my.schema\".t (id int PRIMARY KEY, v text);
         SELECT activity_log.track('\"my.schema\".t');
         INSERT INTO \"my.schema\".t VALUES (1, 'a');
         UPDATE \"my.schema\".t SET v = 'b';
         UPDATE \"my.schema\".t SET v = 'c';
         SET activity_log.actor = '=cmd';
         SELECT activity_log.log_event('invoice_sent', '{}', category => 'billing');
         RESET activity_log.actor;
         SELECT count(activity_log.log_event('bulk', jsonb_build_object('n', g, 'pad', repeat('x', 500)), category => 'report'))
           FROM generate_series(1, 20000) g;",
    );
    c.flush("app");

    // f11: a superuser (or a writer, or an activity_log_admin member) is refused at the start.
    let out = Command::new(env!("CARGO_BIN_EXE_activity_log_monitor"))
        .args([
            "--url",
            &url(&c, "app", "postgres"),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("activity_log_monitor: database app: refusing to use role \"postgres\": it is a superuser"),
        "{err}"
    );
    assert!(
        err.contains("Hint: connect as a role with only activity_log_reader"),
        "{err}"
    );
    c.sql("app", "CREATE ROLE writer LOGIN; GRANT activity_log_reader TO writer; GRANT DELETE ON activity_log.dead_letters TO writer;");
    let out = Command::new(env!("CARGO_BIN_EXE_activity_log_monitor"))
        .args([
            "--url",
            &url(&c, "app", "writer"),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "refusing to use role \"writer\": it holds DELETE on activity_log.dead_letters;"
        ),
        "{err}"
    );
    drop(Monitor::start(&[
        "--url",
        &url(&c, "app", "postgres"),
        "--allow-privileged",
    ]));

    let m = Monitor::start(&["--url", &url(&c, "app", "monitor"), "--export-idle-s", "2"]);

    // f01: a Host that is not this monitor's (DNS rebinding) is refused; loopback names pass.
    let mut s = raw_get(&m.addr, "/api/targets", "evil.example:8080");
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 421 "), "{out}");
    assert!(
        out.contains("this monitor does not answer to the name \"evil.example:8080\""),
        "{out}"
    );
    let port = m.addr.rsplit_once(':').unwrap().1;
    let mut s = raw_get(&m.addr, "/api/targets", &format!("localhost:{port}"));
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");

    // f09: bad parameters are a 400 before any SQL: no failed statement lands in the trail.
    let errors = || {
        c.flush("app");
        c.one(
            "app",
            "SELECT count(*) FROM activity_log.events WHERE status = 'error'",
        )
    };
    let before = errors();
    for (path, message) in [
        (
            "/api/activity?from=yesterday",
            "from \"yesterday\" is not a date or time",
        ),
        (
            "/api/activity?to=2026-02-30",
            "to \"2026-02-30\" is not a date or time",
        ),
        (
            "/export.csv?from=2026-13-01",
            "from \"2026-13-01\" is not a date or time",
        ),
        ("/api/activity?severity=loud", "unknown severity \"loud\""),
        ("/api/activity?q=a%00b", "q holds a control character"),
        (
            "/api/analytics?since=1%20fortnight",
            "since \"1 fortnight\" is not a positive interval",
        ),
        (
            "/api/analytics?since=-1%20hour",
            "since \"-1 hour\" is not a positive interval",
        ),
        (
            "/api/analytics?bucket=0%20hours",
            "bucket \"0 hours\" is not a positive interval",
        ),
        (
            "/api/analytics?since=30%20days&bucket=1%20minute",
            "too many buckets",
        ),
        (
            "/analytics?since=x",
            "since \"x\" is not a positive interval",
        ),
        (
            "/api/history?table=public.orders&key=%7B%22id%22%3A%22%5Cu0000%22%7D",
            "the row key holds a NUL character",
        ),
        (
            "/api/changes?table=public.%22open",
            "table \"public.\"open\" is not a table name",
        ),
    ] {
        let r = m.get(path);
        // The message as the endpoint carries it: in JSON, as text or escaped in a page.
        let text = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| r.text().replace("&quot;", "\""));
        assert_eq!(r.status, 400, "{path}: {text}");
        assert!(text.contains(message), "{path}: {text}");
        assert!(text.contains("Hint: "), "{path}: {text}");
    }
    assert_eq!(errors(), before, "a GET wrote error records");

    // f10: an empty key is refused; a row's history is paged on id.
    let r = m.get(&format!(
        "/api/history?table=public.orders&key={}",
        enc("{}")
    ));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("the row key is empty"), "{}", r.text());
    // f02: a schema whose name holds a dot, quoted as the list of tables shows it.
    let tables = m.json("/api/changes");
    assert!(
        tables["tables"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"table": "\"my.schema\".t", "tracked": true})),
        "{tables}"
    );
    let t = enc("\"my.schema\".t");
    let all = ids(
        &c,
        "SELECT id FROM activity_log.changes WHERE schema_name = 'my.schema' ORDER BY id",
    );
    assert_eq!(all.len(), 3);
    let p1 = m.json(&format!(
        "/api/history?table={t}&key={}&limit=2",
        enc("{\"id\":1}")
    ));
    assert_eq!(json_ids(&p1), all[..2]);
    assert_eq!(p1["next_after"], all[1]);
    let p2 = m.json(&format!(
        "/api/history?table={t}&key={}&limit=2&after={}",
        enc("{\"id\":1}"),
        all[1]
    ));
    assert_eq!(json_ids(&p2), all[2..]);
    assert_eq!(p2["next_after"], serde_json::Value::Null);
    let ch = m.json(&format!("/api/changes?table={t}"));
    assert_eq!(json_ids(&ch), all.iter().rev().copied().collect::<Vec<_>>());
    let act = m.json(&format!("/api/activity?table={t}"));
    assert_eq!(
        json_ids(&act),
        all.iter().rev().copied().collect::<Vec<_>>()
    );

    // f08: a cell that would be a spreadsheet formula is written with a ' before it.
    let r = m.get("/export.csv?actor=%3Dcmd");
    assert_eq!(r.status, 200);
    let line = r.text().lines().nth(1).unwrap().to_string();
    assert!(line.contains(",'=cmd,"), "{line}");

    // f03: exports hold at most 2 of the 4 connections; the pages and /healthz still answer; a
    // client that stops reading ends its export (--export-idle-s 2), which frees its connection.
    let slow: Vec<TcpStream> = (0..2)
        .map(|_| raw_get(&m.addr, "/export.csv", &m.addr))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let r = m.get("/export.csv");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.text(),
        "2 CSV exports of this database are running, the most at a time\nHint: retry when one has finished.\n"
    );
    let t0 = std::time::Instant::now();
    assert_eq!(m.get("/api/activity?limit=1").status, 200);
    let r = m.get("/healthz");
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .contains("database 0: ok, 2 of 4 connections in use"),
        "{}",
        r.text()
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    std::thread::sleep(Duration::from_secs(4));
    let held = c.one(
        "app",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'activity_log_monitor' AND xact_start IS NOT NULL",
    );
    assert_eq!(held, "0", "an idle export still holds a transaction");
    assert_eq!(m.get("/export.csv?kind=change").status, 200);
    drop(slow);

    // f12: a client that never finishes its headers is cut off (10 s).
    let mut s = TcpStream::connect(&m.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "{waited:?}"
    );

    // f04: a stop (SIGTERM) with an export in flight ends within the 5 s grace (a monitor with
    // the default 30 s export idle bound, which would otherwise keep it).
    drop(m);
    let mut m = Monitor::start(&["--url", &url(&c, "app", "monitor")]);
    let slow = raw_get(&m.addr, "/export.csv", &m.addr);
    std::thread::sleep(Duration::from_millis(1000));
    let pid = m.child.id().to_string();
    let t0 = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = m.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    drop(slow);
}
