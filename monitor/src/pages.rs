//! pages.rs: the handlers — the five pages (server-rendered, every value through `esc`), their
//! JSON endpoints, the CSV export, `/metrics` and `/healthz`.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::db::{self, Error, Filter, Target, Window};
use crate::html::{esc, page};
use crate::metrics::Exposition;
use crate::svg::{Series, bars};
use crate::{Shared, csv};

const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

/// Only the database, for endpoints that take nothing else.
#[derive(Debug, Default, Deserialize)]
pub struct Db {
    pub db: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChangesQuery {
    pub db: Option<usize>,
    pub table: Option<String>,
    pub key: Option<String>,
    pub before: Option<i64>,
    /// A row's history: the changes after this id (keyset paging, oldest first).
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

/// The changes of a row's history on one page (or `limit`, at most 1000).
const HISTORY_PAGE: i64 = 200;

/// percent_decode decodes a query-string value (`+` is a space).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// percent_encode encodes a value for a query string.
pub fn percent_encode(s: &str) -> String {
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

fn target(app: &Shared, db: Option<usize>) -> Result<&Target, Error> {
    let i = db.unwrap_or(0);
    app.targets.get(i).ok_or_else(|| Error {
        status: 404,
        message: format!(
            "no database {i}\nHint: the monitor was started with {} database(s), numbered from 0.",
            app.targets.len()
        ),
    })
}

fn names(app: &Shared) -> Vec<String> {
    app.targets.iter().map(|t| t.name.clone()).collect()
}

fn status(e: &Error) -> StatusCode {
    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json_response(r: Result<Value, Error>) -> Response {
    match r {
        Ok(v) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&v).unwrap_or_else(|_| "null".into()),
        )
            .into_response(),
        Err(e) => (
            status(&e),
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "error": e.message }).to_string(),
        )
            .into_response(),
    }
}

fn html_response(
    app: &Shared,
    title: &str,
    path: &str,
    db: Option<usize>,
    body: Result<String, Error>,
) -> Response {
    let (code, body) = match body {
        Ok(b) => (StatusCode::OK, b),
        Err(e) => (
            status(&e),
            format!(
                "<h1>{}</h1><pre class=\"error\">{}</pre>",
                esc(title),
                esc(&e.message)
            ),
        ),
    };
    (
        code,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page(
            title,
            path,
            &names(app),
            db.unwrap_or(0),
            app.refresh_ms,
            &body,
        ),
    )
        .into_response()
}

/// cell renders a JSON value as table-cell text: strings as they are, others as JSON.
fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// table renders rows of JSON objects with the given columns.
fn table(rows: &[Value], cols: &[&str], class: &str) -> String {
    if rows.is_empty() {
        return "<p class=\"empty\">none</p>".into();
    }
    let mut s = format!("<table class=\"{}\"><thead><tr>", esc(class));
    for c in cols {
        s.push_str(&format!("<th>{}</th>", esc(c)));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in cols {
            let v = r.get(*c).unwrap_or(&Value::Null);
            let null = if v.is_null() { " class=\"null\"" } else { "" };
            s.push_str(&format!("<td{null}>{}</td>", esc(&cell_text(v))));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

fn arr(v: &Value, key: &str) -> Vec<Value> {
    v.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

pub async fn index() -> Redirect {
    Redirect::to("/activity")
}

pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found\nHint: the pages are /activity, /changes, /health, /analytics and /migration.\n",
    )
        .into_response()
}

// ---- Activity ----

fn select(name: &str, label: &str, values: &[&str], current: Option<&str>) -> String {
    let mut s = format!(
        "<label>{} <select name=\"{}\"><option value=\"\">any</option>",
        esc(label),
        esc(name)
    );
    for v in values {
        let sel = if Some(*v) == current { " selected" } else { "" };
        s.push_str(&format!("<option{sel}>{}</option>", esc(v)));
    }
    s.push_str("</select></label>");
    s
}

fn input(name: &str, label: &str, current: &Option<String>, placeholder: &str) -> String {
    format!(
        "<label>{} <input name=\"{}\" value=\"{}\" placeholder=\"{}\"></label>",
        esc(label),
        esc(name),
        esc(current.as_deref().unwrap_or("")),
        esc(placeholder)
    )
}

/// filter_query is the filter as a query string (for the export link).
fn filter_query(f: &Filter) -> String {
    let mut parts = vec![format!("db={}", f.db())];
    for (k, v) in [
        ("kind", &f.kind),
        ("category", &f.category),
        ("status", &f.status),
        ("severity", &f.severity),
        ("user", &f.user),
        ("actor", &f.actor),
        ("table", &f.table),
        ("from", &f.from),
        ("to", &f.to),
        ("q", &f.q),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("{k}={}", percent_encode(v)));
        }
    }
    parts.join("&")
}

pub async fn activity(State(app): State<Shared>, Query(f): Query<Filter>) -> Response {
    let body = (|| {
        target(&app, f.db)?;
        f.validate()?;
        let mut s =
            String::from("<h1>Activity</h1><form method=\"get\" class=\"filters\" id=\"filters\">");
        s.push_str(&format!(
            "<input type=\"hidden\" name=\"db\" value=\"{}\">",
            f.db()
        ));
        s.push_str(&select("kind", "kind", db::KINDS, f.kind.as_deref()));
        s.push_str(&input("category", "category", &f.category, "any"));
        s.push_str(&select(
            "status",
            "status",
            db::STATUSES,
            f.status.as_deref(),
        ));
        s.push_str(&select(
            "severity",
            "severity",
            db::SEVERITIES,
            f.severity.as_deref(),
        ));
        s.push_str(&input("user", "user", &f.user, "db user"));
        s.push_str(&input("actor", "actor", &f.actor, "actor"));
        s.push_str(&input("table", "table", &f.table, "schema.table"));
        s.push_str(&input(
            "from",
            "committed from",
            &f.from,
            "2026-12-01 00:00",
        ));
        s.push_str(&input("to", "committed before", &f.to, "now"));
        s.push_str(&input("q", "query contains", &f.q, "text"));
        s.push_str("<button type=\"submit\" id=\"apply\">Apply</button></form>");
        s.push_str(&format!(
            "<div class=\"toolbar\"><button type=\"button\" id=\"pause\">Pause</button>\
             <label><input type=\"checkbox\" id=\"compact\"> compact</label>\
             <a id=\"export\" href=\"/export.csv?{}\">Export CSV</a>\
             <span id=\"status\" class=\"status\"></span></div>",
            esc(&filter_query(&f))
        ));
        s.push_str(
            "<div class=\"list\"><div class=\"row head\"><span>id</span><span>time</span><span>kind</span>\
             <span>status</span><span>user</span><span>actor</span><span>command</span><span>table</span>\
             <span>query</span></div><div id=\"viewport\" class=\"viewport\"><div id=\"spacer\"></div></div></div>\
             <aside id=\"detail\" class=\"detail\" hidden><button type=\"button\" id=\"close\">close</button>\
             <div id=\"detail-body\"></div></aside>",
        );
        Ok(s)
    })();
    html_response(&app, "Activity", "/activity", f.db, body)
}

pub async fn api_activity(State(app): State<Shared>, Query(f): Query<Filter>) -> Response {
    let r = async {
        let t = target(&app, f.db)?;
        let rows = db::activity(t, &f).await?;
        let next_before = if f.after.is_none() && rows.len() as i64 == f.limit() {
            rows.last().and_then(|r| r.get("id")).cloned()
        } else {
            None
        };
        Ok(json!({ "rows": rows, "next_before": next_before }))
    }
    .await;
    json_response(r)
}

pub async fn api_record(
    State(app): State<Shared>,
    Path(id): Path<i64>,
    Query(q): Query<Db>,
) -> Response {
    let r = async { db::record(target(&app, q.db)?, id).await }.await;
    json_response(r)
}

pub async fn export_csv(State(app): State<Shared>, Query(f): Query<Filter>) -> Response {
    let r = async {
        let t = target(&app, f.db)?;
        let given = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
        let select = match given(&f.view).as_deref() {
            None | Some("activity") => {
                f.validate()?;
                db::csv_select(&f)
            }
            Some("history") => {
                let (Some(table), Some(key)) = (given(&f.table), f.key.as_deref()) else {
                    return Err(Error::bad(
                        "view=history needs table and key\nHint: /export.csv?view=history&table=public.orders&key={\"id\":42}, as the Change log's row history links it.",
                    ));
                };
                db::history_csv_select(t, &table, key).await?
            }
            Some(v) => {
                return Err(Error::bad(format!(
                    "unknown view \"{v}\"\nHint: view=activity takes the Activity page's filters (kind=change and table=schema.table for a table's change log); view=history a row's history (table and key)."
                )));
            }
        };
        csv::export(t, select, f.raw != Some(1), app.export).await
    }
    .await;
    match r {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"activity_log.csv\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => (status(&e), format!("{}\n", e.message)).into_response(),
    }
}

// ---- Change log ----

fn changes_link(db: usize, table: &str, key: Option<&Value>) -> String {
    let mut s = format!("/changes?db={db}&table={}", percent_encode(table));
    if let Some(k) = key {
        s.push_str(&format!("&key={}", percent_encode(&k.to_string())));
    }
    s
}

/// diff renders the columns of an old and a new image, changed ones marked.
fn diff(old: &Value, new: &Value, changed: &[String]) -> String {
    let mut cols: Vec<String> = Vec::new();
    for img in [old, new] {
        if let Some(o) = img.as_object() {
            for k in o.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let mut s = String::from(
        "<table class=\"diff\"><thead><tr><th>column</th><th>old</th><th>new</th></tr></thead><tbody>",
    );
    for c in &cols {
        let o = old.get(c);
        let n = new.get(c);
        let is_changed = changed.contains(c) || (old.is_object() && new.is_object() && o != n);
        let class = if is_changed { " class=\"changed\"" } else { "" };
        s.push_str(&format!(
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(c),
            esc(&o.map(cell_text).unwrap_or_default()),
            esc(&n.map(cell_text).unwrap_or_default())
        ));
    }
    s.push_str("</tbody></table>");
    s
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn changes(State(app): State<Shared>, Query(q): Query<ChangesQuery>) -> Response {
    let body = async {
        let t = target(&app, q.db)?;
        let dbi = q.db.unwrap_or(0);
        let tables = db::tables(t).await?;
        let mut s = String::from("<h1>Change log</h1><div class=\"cols\"><nav class=\"tables\"><h2>Tables</h2><ul>");
        for tb in &tables {
            let name = cell_text(tb.get("table").unwrap_or(&Value::Null));
            let cur = if q.table.as_deref() == Some(name.as_str()) { " class=\"current\"" } else { "" };
            let untracked = if tb.get("tracked") == Some(&Value::Bool(true)) { "" } else { " <small>(not tracked)</small>" };
            s.push_str(&format!(
                "<li><a href=\"{}\"{cur}>{}</a>{untracked}</li>",
                esc(&changes_link(dbi, &name, None)),
                esc(&name)
            ));
        }
        if tables.is_empty() {
            s.push_str("<li class=\"empty\">no tracked table and no change in the trail</li>");
        }
        s.push_str("</ul></nav><section class=\"changes\">");
        match (q.table.as_deref().filter(|t| !t.is_empty()), q.key.as_deref().filter(|k| !k.is_empty())) {
            (Some(tb), Some(key)) => {
                let limit = q.limit.unwrap_or(HISTORY_PAGE).clamp(1, 1000);
                let h = db::history(t, tb, key, q.after, limit).await?;
                s.push_str(&format!(
                    "<h2>History of {} {}</h2><p><a href=\"{}\">back to the table</a> · {} change(s), oldest first · \
                     <a id=\"export\" href=\"/export.csv?db={dbi}&view=history&table={}&key={}\">Export CSV</a></p><ol class=\"timeline\">",
                    esc(tb),
                    esc(key),
                    esc(&changes_link(dbi, tb, None)),
                    h.len(),
                    esc(&percent_encode(tb)),
                    esc(&percent_encode(key))
                ));
                for c in &h {
                    s.push_str(&format!(
                        "<li><div class=\"when\"><b>{}</b> {} · #{} · {} {}</div>",
                        esc(&cell_text(&c["op"])),
                        esc(&cell_text(&c["committed_at"])),
                        esc(&cell_text(&c["id"])),
                        esc(&cell_text(&c["db_user"])),
                        esc(&cell_text(&c["actor"]))
                    ));
                    s.push_str(&diff(&c["old_row"], &c["new_row"], &strings(c.get("changed_columns"))));
                    s.push_str(&format!("<pre class=\"query\">{}</pre></li>", esc(&cell_text(&c["query"]))));
                }
                s.push_str("</ol>");
                if let Some(last) = h.last().and_then(|c| c["id"].as_i64()).filter(|_| h.len() as i64 == limit) {
                    s.push_str(&format!(
                        "<p><a id=\"later\" href=\"{}&after={last}\">later changes</a></p>",
                        esc(&changes_link(dbi, tb, serde_json::from_str::<Value>(key).ok().as_ref()))
                    ));
                }
            }
            (Some(tb), None) => {
                let rows = db::changes(t, tb, q.before, q.limit.unwrap_or(50)).await?;
                s.push_str(&format!(
                    "<p class=\"toolbar\"><a id=\"export\" href=\"/export.csv?db={dbi}&kind=change&table={}\">Export CSV</a> (every change of the table, newest first)</p>",
                    esc(&percent_encode(tb))
                ));
                s.push_str(&format!("<h2>Latest changes of {}</h2><table class=\"grid\"><thead><tr><th>id</th><th>committed</th><th>op</th><th>row</th><th>changed</th><th>user</th><th>actor</th></tr></thead><tbody>", esc(tb)));
                for r in &rows {
                    let key = r.get("row_key").filter(|k| k.is_object());
                    let key_cell = match key {
                        Some(k) => format!("<a href=\"{}\">{}</a>", esc(&changes_link(dbi, tb, Some(k))), esc(&k.to_string())),
                        None => String::new(),
                    };
                    s.push_str(&format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{key_cell}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&cell_text(&r["id"])),
                        esc(&cell_text(&r["committed_at"])),
                        esc(&cell_text(&r["op"])),
                        esc(&strings(r.get("changed_columns")).join(", ")),
                        esc(&cell_text(&r["db_user"])),
                        esc(&cell_text(&r["actor"]))
                    ));
                }
                s.push_str("</tbody></table>");
                if rows.is_empty() {
                    s.push_str("<p class=\"empty\">no change</p>");
                }
                if let Some(last) = rows.last().and_then(|r| r["id"].as_i64()).filter(|_| rows.len() as i64 == q.limit.unwrap_or(50)) {
                    s.push_str(&format!(
                        "<p><a href=\"{}&before={last}\">older</a></p>",
                        esc(&changes_link(dbi, tb, None))
                    ));
                }
            }
            _ => s.push_str("<p>Pick a table: its latest changes, and each row's history.</p>"),
        }
        s.push_str("</section></div>");
        Ok(s)
    }
    .await;
    html_response(&app, "Change log", "/changes", q.db, body)
}

pub async fn api_changes(State(app): State<Shared>, Query(q): Query<ChangesQuery>) -> Response {
    let r = async {
        let t = target(&app, q.db)?;
        match q.table.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(json!({ "tables": db::tables(t).await? })),
            Some(tb) => {
                Ok(json!({ "rows": db::changes(t, tb, q.before, q.limit.unwrap_or(50)).await? }))
            }
        }
    }
    .await;
    json_response(r)
}

pub async fn api_history(State(app): State<Shared>, Query(q): Query<ChangesQuery>) -> Response {
    let r = async {
        let t = target(&app, q.db)?;
        let (Some(tb), Some(key)) = (q.table.as_deref(), q.key.as_deref()) else {
            return Err(Error::bad(
                "history needs table and key\nHint: /api/history?table=public.orders&key={\"id\":42}",
            ));
        };
        let limit = q.limit.unwrap_or(HISTORY_PAGE).clamp(1, 1000);
        let rows = db::history(t, tb, key, q.after, limit).await?;
        // Keyset paging: the next page is after the last id, while pages are full.
        let next_after = if rows.len() as i64 == limit {
            rows.last().and_then(|r| r.get("id")).cloned()
        } else {
            None
        };
        Ok(json!({ "rows": rows, "next_after": next_after }))
    }
    .await;
    json_response(r)
}

// ---- Health & pipeline ----

pub async fn health(State(app): State<Shared>, Query(q): Query<Db>) -> Response {
    let body = async {
        let t = target(&app, q.db)?;
        let h = db::health(t).await?;
        let hh = &h["health"];
        let mut s = format!(
            "<h1>Health &amp; pipeline</h1><div class=\"score {}\"><span id=\"score\">{}</span><span id=\"health-status\">{}</span></div>",
            esc(&cell_text(&hh["status"])),
            esc(&cell_text(&hh["score"])),
            esc(&cell_text(&hh["status"]))
        );
        s.push_str("<h2>Factors</h2>");
        s.push_str(&table(&arr(hh, "factors"), &["factor", "value", "weight", "penalty", "reason"], "grid factors"));
        s.push_str(
            "<h2>Records in / out per second (live)</h2><svg id=\"rate-chart\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 760 200\">\
             <polyline id=\"rate-in\" fill=\"none\" stroke=\"#36c\" stroke-width=\"2\" points=\"\"/>\
             <polyline id=\"rate-out\" fill=\"none\" stroke=\"#3a3\" stroke-width=\"2\" points=\"\"/>\
             <text id=\"rate-max\" x=\"4\" y=\"12\" font-size=\"11\" fill=\"#555\"></text>\
             <text x=\"600\" y=\"12\" font-size=\"11\" fill=\"#36c\">in</text><text x=\"640\" y=\"12\" font-size=\"11\" fill=\"#3a3\">out</text></svg>\
             <p id=\"rate-now\" class=\"status\"></p>",
        );
        let m = &h["metrics"];
        for (title, keys) in [
            ("Queue", &["database", "queued_records", "queued_bytes", "capacity_bytes", "fill_pct", "oldest_unwritten_age", "dropped_records", "overflow_waits"][..]),
            ("Records and batches", &["records_in", "records_out", "records_in_per_s_recent", "records_out_per_s_recent", "records_in_per_s_avg", "records_out_per_s_avg", "batches", "avg_batch_records", "max_batch_records", "stats_since"][..]),
            ("Writer", &["writer_state", "writer_pid", "writer_failures", "write_errors", "last_flush_at", "last_error", "last_error_at"][..]),
        ] {
            s.push_str(&format!("<h2>{}</h2><table class=\"kv\"><tbody>", esc(title)));
            for k in keys {
                let null = if m[*k].is_null() { " class=\"null\"" } else { "" };
                s.push_str(&format!("<tr><th>{}</th><td{null}>{}</td></tr>", esc(k), esc(&cell_text(&m[*k]))));
            }
            s.push_str("</tbody></table>");
        }
        s.push_str("<h2>Gap records</h2>");
        s.push_str(&table(&arr(&h, "gaps"), &["id", "committed_at", "command", "details"], "grid"));
        s.push_str("<h2>Dead letters</h2>");
        s.push_str(&table(&arr(&h, "dead_letters"), &["id", "failed_at", "committed_at", "what", "error", "has_frame"], "grid"));
        Ok(s)
    }
    .await;
    html_response(&app, "Health & pipeline", "/health", q.db, body)
}

pub async fn api_health(State(app): State<Shared>, Query(q): Query<Db>) -> Response {
    let r = async { db::health(target(&app, q.db)?).await }.await;
    json_response(r)
}

// ---- Analytics ----

pub async fn analytics(State(app): State<Shared>, Query(w): Query<Window>) -> Response {
    let body = async {
        let t = target(&app, w.db)?;
        let a = db::analytics(t, &w).await?;
        let mut s = format!(
            "<h1>Analytics</h1><form method=\"get\" class=\"filters\"><input type=\"hidden\" name=\"db\" value=\"{}\">\
             <label>since <input name=\"since\" value=\"{}\"></label><label>bucket <input name=\"bucket\" value=\"{}\"></label>\
             <button type=\"submit\">Apply</button></form>",
            w.db.unwrap_or(0),
            esc(&cell_text(&a["since"])),
            esc(&cell_text(&a["bucket"]))
        );
        let trend = arr(&a, "trend");
        let anomalies = arr(&a, "anomalies");
        let labels: Vec<String> = trend.iter().map(|r| short_time(&cell_text(&r["bucket_start"]))).collect();
        let marks: Vec<usize> = trend
            .iter()
            .enumerate()
            .filter(|(_, r)| anomalies.iter().any(|x| x["bucket_start"] == r["bucket_start"]))
            .map(|(i, _)| i)
            .collect();
        s.push_str("<h2>Trend</h2>");
        s.push_str(&bars(
            "events and errors per bucket",
            &labels,
            &[
                Series { name: "events", color: "#36c", values: trend.iter().map(|r| num(&r["events"])).collect() },
                Series { name: "errors", color: "#d22", values: trend.iter().map(|r| num(&r["errors"])).collect() },
            ],
            &marks,
        ));
        let hourly = arr(&a, "hourly");
        s.push_str("<h2>Hour of day</h2>");
        s.push_str(&bars(
            "events by hour of day",
            &hourly.iter().map(|r| cell_text(&r["hour_of_day"])).collect::<Vec<_>>(),
            &[
                Series { name: "events", color: "#36c", values: hourly.iter().map(|r| num(&r["events"])).collect() },
                Series { name: "errors", color: "#d22", values: hourly.iter().map(|r| num(&r["errors"])).collect() },
            ],
            &[],
        ));
        let daily = arr(&a, "daily");
        s.push_str("<h2>Day of week</h2>");
        s.push_str(&bars(
            "events by day of week",
            &daily.iter().map(|r| cell_text(&r["day_name"])).collect::<Vec<_>>(),
            &[
                Series { name: "events", color: "#36c", values: daily.iter().map(|r| num(&r["events"])).collect() },
                Series { name: "errors", color: "#d22", values: daily.iter().map(|r| num(&r["errors"])).collect() },
            ],
            &[],
        ));
        let users = arr(&a, "users");
        s.push_str("<h2>Users</h2>");
        s.push_str(&bars(
            "events per user",
            &users.iter().take(20).map(|r| format!("{} {}", cell_text(&r["db_user"]), cell_text(&r["actor"])).trim().to_string()).collect::<Vec<_>>(),
            &[Series { name: "events", color: "#36c", values: users.iter().take(20).map(|r| num(&r["events"])).collect() }],
            &[],
        ));
        s.push_str(&table(&users, &["db_user", "actor", "events", "errors", "success_rate", "first_seen", "last_seen", "top_tables"], "grid"));
        s.push_str("<h2>Anomalies</h2>");
        s.push_str(&table(&anomalies, &["bucket_start", "metric", "value", "baseline_median", "baseline_mad", "robust_z"], "grid"));
        Ok(s)
    }
    .await;
    html_response(&app, "Analytics", "/analytics", w.db, body)
}

/// short_time keeps the month-day and hour:minute of an ISO timestamp for an axis label.
fn short_time(ts: &str) -> String {
    match (ts.get(5..10), ts.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t}"),
        _ => ts.to_string(),
    }
}

pub async fn api_analytics(State(app): State<Shared>, Query(w): Query<Window>) -> Response {
    let r = async { db::analytics(target(&app, w.db)?, &w).await }.await;
    json_response(r)
}

// ---- Trigger migration ----

pub async fn migration(State(app): State<Shared>, Query(q): Query<Db>) -> Response {
    let body = async {
        let m = db::migration(target(&app, q.db)?).await?;
        let mut s = String::from("<h1>Trigger migration</h1><p>Read-only: the phases are run with <code>activity_log.migrate_triggers()</code> in SQL.</p>");
        if let Some(d) = m.get("denied").and_then(Value::as_str) {
            s.push_str(&format!("<p class=\"note\" id=\"denied\">{}</p><h2>Tables being migrated</h2>", esc(d)));
            s.push_str(&table(&arr(&m, "tables"), &["relation", "phase", "forced", "phase1_at", "phase2_at", "phase3_at"], "grid"));
        } else {
            s.push_str("<h2>Plan</h2>");
            s.push_str(&table(&arr(&m, "plan"), &["relation", "trigger_name", "function", "fires", "verdict", "confidence", "style", "audit_table", "why", "phase", "state"], "grid"));
            s.push_str("<h2>Status</h2>");
            s.push_str(&table(&arr(&m, "status"), &["relation", "phase", "since", "audit_table", "legacy_inserts", "legacy_updates", "legacy_deletes", "captured_inserts", "captured_updates", "captured_deletes", "samples", "samples_matched", "difference", "status", "note"], "grid"));
        }
        Ok(s)
    }
    .await;
    html_response(&app, "Trigger migration", "/migration", q.db, body)
}

pub async fn api_migration(State(app): State<Shared>, Query(q): Query<Db>) -> Response {
    let r = async { db::migration(target(&app, q.db)?).await }.await;
    json_response(r)
}

pub async fn api_targets(State(app): State<Shared>) -> Response {
    let mut list = Vec::new();
    for (i, t) in app.targets.iter().enumerate() {
        let (up, version, error) = match t.check().await {
            Ok(v) => (true, Some(v), None),
            Err(e) => (false, None, Some(e.message)),
        };
        list.push(
            json!({ "db": i, "name": t.name, "up": up, "extversion": version, "error": error }),
        );
    }
    json_response(Ok(json!({ "targets": list, "refresh_ms": app.refresh_ms })))
}

// ---- /metrics, /healthz, static files ----

pub async fn metrics(State(app): State<Shared>) -> Response {
    let mut e = Exposition::default();
    let mut own = Vec::new();
    for t in &app.targets {
        match db::metrics_text(t).await {
            Ok((text, score)) => {
                e.add_text(&t.name, &text);
                own.push((t.name.clone(), 1.0, Some(score)));
            }
            Err(_) => own.push((t.name.clone(), 0.0, None)),
        }
    }
    for (name, up, _) in &own {
        e.add(
            "activity_log_monitor_up",
            "gauge",
            "1 when the monitor could read this database's metrics.",
            name,
            *up,
        );
    }
    for (name, _, score) in &own {
        if let Some(Some(s)) = score {
            e.add(
                "activity_log_health_score",
                "gauge",
                "activity_log.health() score, 0 to 100.",
                name,
                f64::from(*s),
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        e.render(),
    )
        .into_response()
}

/// healthz is for a supervisor, without authentication: `ok` or `not ok`, and each database
/// by number (not by name: that is for authenticated callers) with its pool's use. It reads the
/// health probe's last answer (`db::probe`, a connection of its own), so it answers at once even
/// when every pooled connection is busy.
pub async fn healthz(State(app): State<Shared>) -> Response {
    let mut ok = true;
    let mut s = String::new();
    for (i, t) in app.targets.iter().enumerate() {
        let probe = t.probe.lock().ok().and_then(|p| p.clone());
        let up = match &probe {
            Some((at, Ok(_))) => at.elapsed() <= db::PROBE_FRESH,
            _ => false,
        };
        ok &= up;
        let pool = t.pool.status();
        s.push_str(&format!(
            "database {i}: {}, {} of {} connections in use, {} waiting\n",
            if up { "ok" } else { "not ok" },
            pool.size - pool.available,
            pool.max_size,
            pool.waiting
        ));
    }
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n{s}", if ok { "ok" } else { "not ok" }),
    )
        .into_response()
}

pub async fn app_js() -> Response {
    static_file(APP_JS, "text/javascript; charset=utf-8")
}

pub async fn style_css() -> Response {
    static_file(STYLE_CSS, "text/css; charset=utf-8")
}

fn static_file(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        Body::from(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding_round_trips() {
        let s = "a b&c=d/é<script>";
        assert_eq!(percent_decode(&percent_encode(s)), s);
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn diff_marks_changed_columns_and_escapes_values() {
        let d = diff(
            &json!({"id": 1, "name": "<script>x</script>"}),
            &json!({"id": 1, "name": "b"}),
            &["name".to_string()],
        );
        assert_eq!(
            d,
            "<table class=\"diff\"><thead><tr><th>column</th><th>old</th><th>new</th></tr></thead><tbody>\
             <tr><td>id</td><td>1</td><td>1</td></tr>\
             <tr class=\"changed\"><td>name</td><td>&lt;script&gt;x&lt;/script&gt;</td><td>b</td></tr></tbody></table>"
        );
    }
}
