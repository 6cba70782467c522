//! activity_log_monitor: the web page people watch (issue 31) — the trail live, the change log,
//! health and pipeline, analytics, the trigger migration — and a Prometheus exporter.
//!
//! Runs outside PostgreSQL, as an ordinary client of one or more databases. Its rules:
//! * Read-only: every connection starts with `default_transaction_read_only = on` and
//!   `search_path = pg_catalog, pg_temp`; every statement is a parameterised SELECT with
//!   schema-qualified names (`db.rs`). A role with only `activity_log_reader` suffices.
//! * Everything shown came from the trail and is attacker-controlled (row images, table names,
//!   query texts): the server escapes it (`html.rs`), the page's script sets `textContent`
//!   only, and a Content-Security-Policy forbids inline script.
//! * Binds to 127.0.0.1 by default; any other address only with `--token` or `--basic-auth`.

mod auth;
mod csv;
mod db;
mod html;
mod metrics;
mod pages;
mod svg;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::auth::Auth;

const USAGE: &str = "usage: activity_log_monitor --url postgres://… [--url …] [--listen 127.0.0.1:8080] \
[--token T | --basic-auth user:pass] [--refresh-ms N]";

/// Options is the parsed command line.
#[derive(Debug)]
struct Options {
    urls: Vec<String>,
    listen: SocketAddr,
    auth: Auth,
    refresh_ms: u64,
}

/// parse_args reads the command line; an error is a message with a hint, for stderr.
fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut urls = Vec::new();
    let mut listen: SocketAddr = "127.0.0.1:8080".parse().expect("a valid literal address");
    let mut token = None;
    let mut basic = None;
    let mut refresh_ms = 2000u64;
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (flag, None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("option {name} needs a value\n{USAGE}"))
        };
        match name {
            "--url" => urls.push(value()?),
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|_| {
                    format!("invalid --listen address \"{v}\"\nHint: give an IP address and a port, such as 127.0.0.1:8080.")
                })?;
            }
            "--token" => token = Some(value()?),
            "--basic-auth" => basic = Some(value()?),
            "--refresh-ms" => {
                let v = value()?;
                refresh_ms = v.parse().ok().filter(|&n| (100..=3_600_000).contains(&n)).ok_or_else(|| {
                    format!("invalid --refresh-ms \"{v}\"\nHint: give milliseconds between 100 and 3600000.")
                })?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option \"{other}\"\n{USAGE}")),
        }
        i += 1;
    }
    if urls.is_empty() {
        return Err(format!(
            "no database given\nHint: name one with --url postgres://user@host/db (repeat --url for more).\n{USAGE}"
        ));
    }
    let auth = match (token, basic) {
        (Some(_), Some(_)) => {
            return Err("--token and --basic-auth exclude each other\nHint: choose one.".into());
        }
        // The token also travels in a cookie: visible ASCII only, none of a cookie's separators.
        (Some(t), None)
            if t.is_empty()
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b)) =>
        {
            return Err(
                "invalid --token\nHint: use visible ASCII characters other than ; , \" and \\ (openssl rand -hex 24, say)."
                    .into(),
            );
        }
        (Some(t), None) => Auth::Token(t),
        (None, Some(b)) => match b.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Auth::basic(u, p),
            _ => {
                return Err(
                    "invalid --basic-auth\nHint: give user:password, both non-empty.".into(),
                );
            }
        },
        (None, None) => Auth::None,
    };
    if !listen.ip().is_loopback() && matches!(auth, Auth::None) {
        return Err(format!(
            "refusing to listen on {listen} without authentication: the trail holds row images and query texts\n\
             Hint: add --token T or --basic-auth user:pass, or listen on 127.0.0.1."
        ));
    }
    Ok(Options {
        urls,
        listen,
        auth,
        refresh_ms,
    })
}

/// App is what every handler shares.
pub struct App {
    pub targets: Vec<db::Target>,
    pub refresh_ms: u64,
}

pub type Shared = Arc<App>;

fn router(app: Shared, auth: Auth) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/activity", get(pages::activity))
        .route("/changes", get(pages::changes))
        .route("/health", get(pages::health))
        .route("/analytics", get(pages::analytics))
        .route("/migration", get(pages::migration))
        .route("/export.csv", get(pages::export_csv))
        .route("/api/activity", get(pages::api_activity))
        .route("/api/activity/{id}", get(pages::api_record))
        .route("/api/changes", get(pages::api_changes))
        .route("/api/history", get(pages::api_history))
        .route("/api/health", get(pages::api_health))
        .route("/api/analytics", get(pages::api_analytics))
        .route("/api/migration", get(pages::api_migration))
        .route("/api/targets", get(pages::api_targets))
        .route("/metrics", get(pages::metrics))
        .route("/healthz", get(pages::healthz))
        .route("/static/app.js", get(pages::app_js))
        .route("/static/style.css", get(pages::style_css))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(auth),
            auth::check,
        ))
        .layer(axum::middleware::from_fn(html::security_headers))
        .with_state(app)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("activity_log_monitor: {e}");
            return ExitCode::from(2);
        }
    };
    let targets = match db::Target::from_urls(&opts.urls) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("activity_log_monitor: {e}");
            return ExitCode::from(2);
        }
    };
    for t in &targets {
        // Said at start, but not fatal: a database that is down now is shown as down (and
        // /healthz fails) until it comes back.
        if let Err(e) = t.check().await {
            eprintln!("activity_log_monitor: database {}: {e}", t.name);
        }
    }
    let listener = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "activity_log_monitor: cannot listen on {}: {e}",
                opts.listen
            );
            return ExitCode::from(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let app = Arc::new(App {
        targets,
        refresh_ms: opts.refresh_ms,
    });
    println!("activity_log_monitor: listening on http://{addr}/");
    let served = axum::serve(listener, router(app, opts.auth))
        .with_graceful_shutdown(async {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
        })
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("activity_log_monitor: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn a_public_address_needs_authentication() {
        let e = parse_args(&args(&[
            "--url",
            "postgres:///x",
            "--listen",
            "0.0.0.0:8080",
        ]))
        .unwrap_err();
        assert!(
            e.starts_with("refusing to listen on 0.0.0.0:8080 without authentication"),
            "{e}"
        );
        let o = parse_args(&args(&[
            "--url",
            "postgres:///x",
            "--listen=0.0.0.0:8080",
            "--token",
            "s3cret",
        ]))
        .unwrap();
        assert_eq!(o.auth, Auth::Token("s3cret".into()));
        let o = parse_args(&args(&["--url", "postgres:///x", "--listen", "[::1]:9"])).unwrap();
        assert_eq!(o.auth, Auth::None);
        assert_eq!(o.refresh_ms, 2000);
    }

    #[test]
    fn bad_options_are_refused_with_a_hint() {
        assert!(
            parse_args(&[])
                .unwrap_err()
                .starts_with("no database given\nHint:")
        );
        assert_eq!(
            parse_args(&args(&["--url", "x", "--refresh-ms", "5"])).unwrap_err(),
            "invalid --refresh-ms \"5\"\nHint: give milliseconds between 100 and 3600000."
        );
        assert_eq!(
            parse_args(&args(&["--url", "x", "--basic-auth", "nopass"])).unwrap_err(),
            "invalid --basic-auth\nHint: give user:password, both non-empty."
        );
        assert!(
            parse_args(&args(&[
                "--url",
                "x",
                "--token",
                "a",
                "--basic-auth",
                "u:p"
            ]))
            .unwrap_err()
            .starts_with("--token and --basic-auth exclude each other")
        );
        assert!(
            parse_args(&args(&["--url"]))
                .unwrap_err()
                .starts_with("option --url needs a value")
        );
    }
}
