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
mod host;
mod html;
mod metrics;
mod pages;
mod pgpass;
mod svg;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;

use crate::auth::Auth;

const USAGE: &str = "usage: activity_log_monitor --url postgres://… [--url …] [--listen 127.0.0.1:8080] \
[--allowed-host NAME …] [--token-file F | --basic-auth-file F | --token T | --basic-auth user:pass] \
[--refresh-ms N] [--export-idle-s N] [--export-max-s N] [--allow-privileged]
The token may also come from ACTIVITY_LOG_MONITOR_TOKEN, user:password from ACTIVITY_LOG_MONITOR_BASIC_AUTH,
the database password from PGPASSWORD or ~/.pgpass.";

/// How many HTTP connections are served at a time; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop (SIGTERM, Ctrl-C) waits for responses in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Options is the parsed command line.
#[derive(Debug)]
struct Options {
    urls: Vec<String>,
    listen: SocketAddr,
    auth: Auth,
    refresh_ms: u64,
    allowed_hosts: Vec<String>,
    allow_privileged: bool,
    export: csv::Limits,
}

/// secret_file reads a secret from a file (trailing newline removed), so that it is not on the
/// command line, where every local user can read it.
fn secret_file(flag: &str, path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| format!("cannot read {flag} \"{path}\": {e}\nHint: give a file readable by the monitor's user, holding only the secret."))
}

fn seconds(flag: &str, v: &str, max: u64) -> Result<Duration, String> {
    v.parse::<u64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("invalid {flag} \"{v}\"\nHint: give seconds between 1 and {max}."))
}

/// parse_args reads the command line; an error is a message with a hint, for stderr.
fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut urls = Vec::new();
    let mut listen: SocketAddr = "127.0.0.1:8080".parse().expect("a valid literal address");
    let mut token = None;
    let mut basic = None;
    let mut refresh_ms = 2000u64;
    let mut allowed_hosts = Vec::new();
    let mut allow_privileged = false;
    let mut export = csv::Limits {
        idle: Duration::from_secs(30),
        life: Duration::from_secs(600),
    };
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
            "--token-file" => token = Some(secret_file(name, &value()?)?),
            "--basic-auth-file" => basic = Some(secret_file(name, &value()?)?),
            "--allowed-host" => {
                let v = value()?;
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
                {
                    return Err(format!(
                        "invalid --allowed-host \"{v}\"\nHint: give a host name without a port, such as monitor.example.com."
                    ));
                }
                allowed_hosts.push(v.to_ascii_lowercase());
            }
            "--allow-privileged" => allow_privileged = true,
            // Under the sessions' idle_in_transaction_session_timeout (60 s), which would end
            // the export's session first, with a less clear error.
            "--export-idle-s" => export.idle = seconds(name, &value()?, 50)?,
            "--export-max-s" => export.life = seconds(name, &value()?, 86_400)?,
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
    if token.is_none() && basic.is_none() {
        token = std::env::var("ACTIVITY_LOG_MONITOR_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        basic = std::env::var("ACTIVITY_LOG_MONITOR_BASIC_AUTH")
            .ok()
            .filter(|b| !b.is_empty());
    }
    let auth = match (token, basic) {
        (Some(_), Some(_)) => {
            return Err("--token and --basic-auth exclude each other (from options, files or the environment)\nHint: choose one.".into());
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
        allowed_hosts,
        allow_privileged,
        export,
    })
}

/// App is what every handler shares.
pub struct App {
    pub targets: Vec<db::Target>,
    pub refresh_ms: u64,
    pub export: csv::Limits,
}

pub type Shared = Arc<App>;

fn router(app: Shared, auth: Auth, hosts: host::Hosts) -> Router {
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
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(hosts),
            host::check,
        ))
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
    let targets = match db::Target::from_urls(&opts.urls, opts.allow_privileged) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("activity_log_monitor: {e}");
            return ExitCode::from(2);
        }
    };
    for t in &targets {
        // Said at start, but not fatal: a database that is down now is shown as down (and
        // /healthz fails) until it comes back. A role that may write is fatal (db::privileges).
        let checked = t.check().await;
        if let Err(e) = &checked {
            eprintln!("activity_log_monitor: database {}: {e}", t.name);
            if e.status == 403 {
                return ExitCode::from(2);
            }
        }
        // The health probe's first answer, until its own connection gives the next.
        if let Ok(mut p) = t.probe.lock() {
            *p = Some((std::time::Instant::now(), checked.map_err(|e| e.message)));
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
    let local = listener.local_addr().unwrap_or(opts.listen);
    let app = Arc::new(App {
        targets,
        refresh_ms: opts.refresh_ms,
        export: opts.export,
    });
    for i in 0..app.targets.len() {
        tokio::spawn(db::probe(app.clone(), i));
    }
    let hosts = host::Hosts {
        listen: local,
        allowed: opts.allowed_hosts,
    };
    println!("activity_log_monitor: listening on http://{local}/");
    serve(listener, router(app, opts.auth, hosts)).await;
    ExitCode::SUCCESS
}

/// serve accepts connections until SIGTERM or Ctrl-C: at most `MAX_CONNECTIONS` at a time, each
/// given `HEADER_TIMEOUT` to send its request headers; at a stop, responses in flight get
/// `SHUTDOWN_GRACE` to finish (a CSV export may not), then the process ends.
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let stop = async {
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
    };
    tokio::pin!(stop);
    loop {
        // A free slot first: over the cap, connections wait in the kernel's queue.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut stop => break,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    eprintln!("activity_log_monitor: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "activity_log_monitor: stopping with responses still in flight after {} s",
            SHUTDOWN_GRACE.as_secs()
        );
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
    fn secrets_come_from_files() {
        let dir = std::env::temp_dir().join(format!("al-monitor-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let basic = dir.join("basic");
        std::fs::write(&basic, "ann:pw\n").unwrap();
        let o = parse_args(&args(&[
            "--url",
            "x",
            "--token-file",
            token.to_str().unwrap(),
        ]))
        .unwrap();
        assert_eq!(o.auth, Auth::Token("s3cret".into()));
        let o = parse_args(&args(&[
            "--url",
            "x",
            "--basic-auth-file",
            basic.to_str().unwrap(),
        ]))
        .unwrap();
        assert_eq!(o.auth, Auth::basic("ann", "pw"));
        let missing = dir.join("missing");
        let e = parse_args(&args(&[
            "--url",
            "x",
            "--token-file",
            missing.to_str().unwrap(),
        ]))
        .unwrap_err();
        assert!(
            e.starts_with(&format!(
                "cannot read --token-file \"{}\": ",
                missing.display()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let o = parse_args(&args(&[
            "--url",
            "x",
            "--allowed-host",
            "Monitor.Example",
            "--allow-privileged",
        ]))
        .unwrap();
        assert_eq!(o.allowed_hosts, ["monitor.example"]);
        assert!(o.allow_privileged);
        assert_eq!(
            parse_args(&args(&["--url", "x", "--allowed-host", "a:80"])).unwrap_err(),
            "invalid --allowed-host \"a:80\"\nHint: give a host name without a port, such as monitor.example.com."
        );
        assert_eq!(
            parse_args(&args(&["--url", "x", "--export-idle-s", "0"])).unwrap_err(),
            "invalid --export-idle-s \"0\"\nHint: give seconds between 1 and 50."
        );
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
