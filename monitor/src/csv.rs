//! csv.rs: the streamed CSV export.
//!
//! The export runs in one REPEATABLE READ READ ONLY transaction (one snapshot: the file is what
//! one SELECT returned) through a portal, 2 000 rows at a time; each chunk is encoded and
//! handed to the response through a channel of four chunks, so a slow client slows the export
//! down instead of the monitor holding the whole result. The encoding is PostgreSQL's own
//! `COPY … (FORMAT csv, HEADER)`: a NULL is an empty field, an empty string is `""`, and a field
//! is quoted when it holds a comma, a quote, CR or LF, or is `\.`.

use axum::body::{Body, Bytes};
use tokio::sync::{mpsc, oneshot};

use crate::db::{self, Error, Filter, Target};

const CHUNK_ROWS: i32 = 2000;

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

fn line(out: &mut String, values: &[Option<&str>]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(out, *v);
    }
    out.push('\n');
}

/// export starts the export of a filter's rows and returns the body that streams them; an error
/// before the first row is returned as such, one later ends the body with an error (the client
/// sees a cut transfer, never a file that looks complete).
pub async fn export(t: &Target, f: &Filter) -> Result<Body, Error> {
    f.validate()?;
    let (sql, w) = db::csv_select(f);
    let mut client = t.pool.get().await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (started_tx, started_rx) = oneshot::channel::<Result<(), Error>>();
    // The task owns the connection (and the transaction that borrows it) until the last row.
    tokio::spawn(async move {
        let mut started = Some(started_tx);
        let result: Result<(), tokio_postgres::Error> = async {
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
                &db::CSV_COLUMNS.iter().map(|c| Some(*c)).collect::<Vec<_>>(),
            );
            loop {
                let rows = trans.query_portal(&portal, CHUNK_ROWS).await?;
                // The first chunk was read: a bad filter was a 400, from here on it streams.
                if let Some(s) = started.take() {
                    let _ = s.send(Ok(()));
                }
                encode(&mut chunk, &rows);
                if tx
                    .send(Ok(Bytes::from(std::mem::take(&mut chunk))))
                    .await
                    .is_err()
                {
                    // The client went away.
                    return Ok(());
                }
                if rows.len() < CHUNK_ROWS as usize {
                    break;
                }
            }
            trans.commit().await
        }
        .await;
        if let Err(e) = result {
            match started.take() {
                Some(s) => {
                    let _ = s.send(Err(e.into()));
                }
                None => {
                    let _ = tx
                        .send(Err(std::io::Error::other(format!("export failed: {e}"))))
                        .await;
                }
            }
        }
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
        rx,
        |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
    )))
}

fn encode(out: &mut String, rows: &[tokio_postgres::Row]) {
    for r in rows {
        let values: Vec<Option<&str>> = (0..r.len()).map(|i| r.get::<_, Option<&str>>(i)).collect();
        line(out, &values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        );
        assert_eq!(
            s,
            "a,,\"\",\"x,y\",\"say \"\"hi\"\"\",\"l1\nl2\",\"\\.\",<script>\n"
        );
    }
}
