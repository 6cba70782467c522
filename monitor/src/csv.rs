//! csv.rs: the streamed CSV export.
//!
//! The export runs in one REPEATABLE READ READ ONLY transaction (one snapshot: the file is what
//! one SELECT returned) through a portal, 2 000 rows at a time; each chunk is encoded and
//! handed to the response through a channel of four chunks, so a slow client slows the export
//! down instead of the monitor holding the whole result. The encoding is PostgreSQL's own
//! `COPY … (FORMAT csv, HEADER)`: a NULL is an empty field, an empty string is `""`, and a field
//! is quoted when it holds a comma, a quote, CR or LF, or is `\.`.
//!
//! Formula guard: a cell that starts with `=`, `+`, `-`, `@`, TAB or CR is written with a `'`
//! before it, so that a spreadsheet opening the file shows the text instead of evaluating an
//! attacker's formula (a query text or row value such as `=HYPERLINK(…)`). `raw=1` turns the
//! guard off: then the file is exactly `COPY`'s.
//!
//! Bounds: at most `db::MAX_EXPORTS` exports per database at a time (each holds a connection and
//! a snapshot); a client that takes no data for `Limits::idle` ends its export, and no export
//! runs longer than `Limits::life`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::db::{self, CsvSelect, Error, Target};

const CHUNK_ROWS: i32 = 2000;

/// Limits bound one export.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a chunk may wait for the client to take it.
    pub idle: Duration,
    /// How long an export may run in all.
    pub life: Duration,
}

/// guarded is the cell with the formula guard: `'` before a leading `=`, `+`, `-`, `@`, TAB or CR.
pub fn guarded(v: &str) -> std::borrow::Cow<'_, str> {
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}").into()
    } else {
        v.into()
    }
}

/// field appends one value as PostgreSQL's CSV output writes it.
pub fn field(out: &mut String, v: Option<&str>) {
    let Some(v) = v else { return };
    if v.is_empty() || v == "\\." || v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

fn line(out: &mut String, values: &[Option<&str>], guard: bool) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match v {
            Some(v) if guard => field(out, Some(&guarded(v))),
            v => field(out, *v),
        }
    }
    out.push('\n');
}

/// export starts the export of a statement's rows (`guard`: with the formula guard) and returns
/// the body that streams them; an error before the first row is returned as such, one later ends
/// the body with an error (the client sees a cut transfer, never a file that looks complete).
pub async fn export(
    t: &Target,
    select: CsvSelect,
    guard: bool,
    limits: Limits,
) -> Result<Body, Error> {
    let CsvSelect {
        sql,
        params: w,
        columns,
    } = select;
    let Ok(permit) = t.exports.clone().try_acquire_owned() else {
        return Err(Error {
            status: 503,
            message: format!(
                "{} CSV exports of this database are running, the most at a time\nHint: retry when one has finished.",
                db::MAX_EXPORTS
            ),
        });
    };
    let mut client = t.pool.get().await?;
    let deadline = Instant::now() + limits.life;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (started_tx, started_rx) = oneshot::channel::<Result<(), Error>>();
    // The task owns the connection (and the transaction that borrows it) until the last row.
    // Set when the export stops early: the body then ends with an error, so the client sees a
    // cut transfer, never a file that looks complete.
    let cut = Arc::new(AtomicBool::new(false));
    let cut_task = cut.clone();
    tokio::spawn(async move {
        // Held until the export ends, however it ends.
        let _permit = permit;
        let mut started = Some(started_tx);
        let result: Result<(), Error> = async {
            let trans = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let portal = trans.bind(sql.as_str(), &w.refs()).await?;
            let mut chunk = String::new();
            line(
                &mut chunk,
                &columns.iter().map(|c| Some(*c)).collect::<Vec<_>>(),
                false,
            );
            loop {
                let rows = trans.query_portal(&portal, CHUNK_ROWS).await?;
                // The first chunk was read: a bad filter was a 400, from here on it streams.
                if let Some(s) = started.take() {
                    let _ = s.send(Ok(()));
                }
                encode(&mut chunk, &rows, guard);
                let left = deadline.saturating_duration_since(Instant::now());
                let wait = limits.idle.min(left);
                match tokio::time::timeout(
                    wait,
                    tx.send(Ok(Bytes::from(std::mem::take(&mut chunk)))),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    // The client went away.
                    Ok(Err(_)) => return Ok(()),
                    Err(_) => {
                        let why = if left <= limits.idle {
                            format!("the export ran longer than {} s", limits.life.as_secs())
                        } else {
                            format!("the client took no data for {} s", limits.idle.as_secs())
                        };
                        return Err(Error {
                            status: 503,
                            message: why,
                        });
                    }
                }
                if rows.len() < CHUNK_ROWS as usize {
                    break;
                }
            }
            trans.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            match started.take() {
                Some(s) => {
                    let _ = s.send(Err(e));
                }
                None => {
                    cut_task.store(true, Ordering::SeqCst);
                    let _ = tx.try_send(Err(std::io::Error::other(format!("export failed: {e}"))));
                }
            }
        }
        // Dropping the client here returns the connection (and ends the transaction) at once.
    });
    match started_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(Error {
                status: 500,
                message: "the export stopped before its first row".into(),
            });
        }
    }
    Ok(Body::from_stream(futures_util::stream::unfold(
        Some(rx),
        move |rx| {
            let cut = cut.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(item) => Some((item, Some(rx))),
                    None if cut.load(Ordering::SeqCst) => {
                        Some((Err(std::io::Error::other("export cut short")), None))
                    }
                    None => None,
                }
            }
        },
    )))
}

fn encode(out: &mut String, rows: &[tokio_postgres::Row], guard: bool) {
    for r in rows {
        let values: Vec<Option<&str>> = (0..r.len()).map(|i| r.get::<_, Option<&str>>(i)).collect();
        line(out, &values, guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formula_guard_quotes_leading_formula_characters() {
        let mut s = String::new();
        line(
            &mut s,
            &[
                Some("=1+1"),
                Some("+1"),
                Some("-2"),
                Some("@SUM(A1)"),
                Some("\tx"),
                Some("\rx"),
                Some("a=b"),
                None,
                Some(""),
            ],
            true,
        );
        assert_eq!(s, "'=1+1,'+1,'-2,'@SUM(A1),'\tx,\"'\rx\",a=b,,\"\"\n");
    }

    #[test]
    fn fields_are_quoted_as_postgresql_quotes_them() {
        let mut s = String::new();
        line(
            &mut s,
            &[
                Some("a"),
                None,
                Some(""),
                Some("x,y"),
                Some("say \"hi\""),
                Some("l1\nl2"),
                Some("\\."),
                Some("<script>"),
            ],
            false,
        );
        assert_eq!(
            s,
            "a,,\"\",\"x,y\",\"say \"\"hi\"\"\",\"l1\nl2\",\"\\.\",<script>\n"
        );
    }
}
