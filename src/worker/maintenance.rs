//! worker/maintenance.rs: runs in the writer, between two batches; owns the periodic refresh
//! of `activity_log.metrics_daily` (sql/analytics.sql).
//!
//! Every `activity_log.metrics_refresh` it looks up the days (UTC) of the rows the writer
//! stored since its last look — the rows after the trail's last id then — and recomputes
//! those days and today, one day per call, each in its own transaction: usually today alone,
//! yesterday too just after midnight, an older day only when a late record (a durable backlog,
//! say) was stored. The first look of a writer process also takes yesterday, which the
//! previous writer may have stored rows of after its last look.
//!
//! Rules: the writer drains its ring between two calls, so a call must stay small — it reads
//! one day of the trail, or the rows stored since the last look, never the whole trail
//! (refresh_metrics() does that, on demand) — and never waits for a lock
//! (`_refresh_metrics_day` takes metrics_daily's with NOWAIT; the day is tried again later).
//! A day's work grows with that day's rows: a day of millions of rows still holds the writer
//! for seconds (bench/results/metrics_refresh.md). A failure is logged, never raised: metrics
//! are a convenience, the trail is not, and refresh_metrics() repairs what was missed. It
//! writes nothing but metrics_daily.

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

use crate::gucs;
use crate::worker::writer::in_subtransaction;

/// How soon a day that could not be recomputed (metrics_daily locked by refresh_metrics(), say)
/// is tried again, at most.
const RETRY: Duration = Duration::from_secs(60);

/// The writer's state of metrics_daily's refresh.
pub struct Metrics {
    /// When the trail is next looked at for days to recompute.
    next_look: Instant,
    /// When the next pending day may be recomputed (later after a failure).
    retry_at: Instant,
    /// The trail's last id at the previous look (or at the writer's start): the rows after it
    /// are not in metrics_daily yet. None: it could not be read at the start.
    through_id: Option<i64>,
    /// Whether no look was made yet by this process.
    first_look: bool,
    /// Days (UTC midnights, as text) still to recompute; the newest is last, done first.
    pending: Vec<String>,
}

impl Metrics {
    /// start notes the trail's last id, before the writer stores its backlog: the first look
    /// (one interval later, as a restarting writer has a backlog to store first) recomputes the
    /// days of every row stored after it.
    pub fn start() -> Metrics {
        let read = BackgroundWorker::transaction(|| {
            let mut last = None;
            in_subtransaction(|| {
                last = Spi::get_one::<i64>("SELECT coalesce(max(id), 0) FROM activity_log.events")
                    .unwrap_or_else(|e| error!("{e}"));
            })
            .map(|()| last)
        });
        let through_id = read.unwrap_or_else(|message| {
            log!("activity_log: could not read the last id of activity_log.events: {message}");
            None
        });
        let now = Instant::now();
        Metrics {
            next_look: now + gucs::metrics_refresh().unwrap_or_default(),
            retry_at: now,
            through_id,
            first_look: true,
            pending: Vec::new(),
        }
    }

    /// run does the next step of the refresh, if one is due: recompute one pending day, or look
    /// for the days to recompute. Never more than one day's rows in one call.
    pub fn run(&mut self) {
        let Some(every) = gucs::metrics_refresh() else {
            return;
        };
        let now = Instant::now();
        if let Some(day) = self.pending.last() {
            if now >= self.retry_at {
                match refresh_day(day) {
                    Ok(()) => {
                        self.pending.pop();
                    }
                    Err(message) => {
                        log!(
                            "activity_log: could not refresh activity_log.metrics_daily for {day}: {message}"
                        );
                        self.retry_at = now + every.min(RETRY);
                    }
                }
            }
            return;
        }
        if now < self.next_look {
            return;
        }
        self.next_look = now + every;
        match changed_days(self.through_id, self.first_look) {
            Ok((through_id, days)) => {
                self.through_id = Some(through_id);
                self.first_look = false;
                self.pending = days;
            }
            Err(message) => {
                log!("activity_log: could not refresh activity_log.metrics_daily: {message}");
            }
        }
    }
}

/// changed_days returns the trail's last id and the days (oldest first) of the rows after
/// `after`, always with today (ids are in storage order only among the writer's rows: a row
/// added by hand takes its session's ids), and with yesterday on a writer's first look or when
/// `after` is unknown.
fn changed_days(after: Option<i64>, first_look: bool) -> Result<(i64, Vec<String>), String> {
    BackgroundWorker::transaction(|| {
        let mut found = (after.unwrap_or(0), Vec::new());
        in_subtransaction(|| {
            found = Spi::connect(|client| {
                let mut rows = client.select(
                    "SELECT c.through_id,
                            ARRAY(SELECT DISTINCT d
                                    FROM unnest(coalesce(c.days, '{}')
                                                || date_trunc('day', now(), 'UTC')
                                                || CASE WHEN $2 THEN date_trunc('day', now(), 'UTC') - interval '1 day' END) d
                                   WHERE d IS NOT NULL
                                   ORDER BY d)::text[]
                       -- Unknown: the rows from now on, and the recent days.
                       FROM activity_log._metrics_changes(
                                coalesce($1, (SELECT coalesce(max(id), 0) FROM activity_log.events))) c",
                    None,
                    &[after.into(), (first_look || after.is_none()).into()],
                )?;
                let row = rows.next();
                let through_id = row
                    .as_ref()
                    .map(|r| r.get::<i64>(1))
                    .transpose()?
                    .flatten()
                    .unwrap_or(0);
                let days = row
                    .map(|r| r.get::<Vec<String>>(2))
                    .transpose()?
                    .flatten()
                    .unwrap_or_default();
                Ok::<_, pgrx::spi::Error>((through_id, days))
            })
            .unwrap_or_else(|e| error!("{e}"));
        })
        .map(|()| found)
    })
}

/// refresh_day recomputes metrics_daily's rows of one day, in its own transaction.
fn refresh_day(day: &str) -> Result<(), String> {
    let started = Instant::now();
    let rows = BackgroundWorker::transaction(|| {
        let mut rows = None;
        in_subtransaction(|| {
            rows = Spi::get_one_with_args::<i64>(
                "SELECT activity_log._refresh_metrics_day($1::timestamptz)",
                &[day.into()],
            )
            .unwrap_or_else(|e| error!("{e}"));
        })
        .map(|()| rows)
    })?;
    debug1!(
        "activity_log: metrics_daily of {day} refreshed ({} rows) in {} ms",
        rows.unwrap_or(0),
        started.elapsed().as_millis()
    );
    Ok(())
}
