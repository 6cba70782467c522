//! worker/maintain.rs: the writer's maintenance and its records about the pipeline itself:
//! the hourly partition maintenance (day partitions ahead; with activity_log.retention the old
//! ones dropped, each drop recorded as a RETENTION record), and the gap records of records lost
//! (a crash-restart or an unclean stop) or dropped (a full ring under overflow = drop).
//!
//! Runs in the writer, between batches, in a transaction of its own or of its caller; it reads
//! no ring frame and no staged row. (The rollups are compacted with the batches:
//! worker/rollup.rs.)

use crate::errors::raise;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

use crate::gucs;
use crate::shared;
use crate::worker::map::Rows;
use crate::worker::subxact::in_subtransaction;

/// maintain_partitions_if_due runs activity_log._maintain_partitions() every hour: the day
/// partitions two days ahead and, with activity_log.retention, the old ones dropped, each drop
/// recorded in the trail as a `system` record with command RETENTION. A failure (a reader
/// holding the trail's lock past the function's lock_timeout, say) is logged and tried again
/// in five minutes; partitions exist two days ahead, so that is time enough.
pub(super) fn maintain_partitions_if_due(next: &mut Instant) {
    if Instant::now() < *next {
        return;
    }
    let result = BackgroundWorker::transaction(|| {
        in_subtransaction(|| {
            let retention = gucs::retention_minutes();
            let dropped = Spi::connect_mut(|client| {
                let rows = client.update(
                    "SELECT jsonb_build_object('partition', partition, 'range_from', range_from, 'range_to', range_to,
                                               'rows', rows, 'first_id', first_id, 'last_id', last_id,
                                               'anchors', anchors,
                                               'retention', justify_hours(make_interval(mins => $1))::text)::text
                       FROM activity_log._maintain_partitions(make_interval(mins => $1))",
                    None,
                    &[retention.into()],
                )?;
                rows.map(|r| r.get::<String>(1).map(Option::unwrap_or_default))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}"), None));
            if dropped.is_empty() {
                return;
            }
            let mut records = Rows::new(false);
            // SAFETY: reads the clock.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            for details in dropped {
                let details = serde_json::from_str(&details).unwrap_or(Value::Null);
                records.push_system(now, "info", "success", b"RETENTION", details);
            }
            records.insert();
        })
    });
    let again = match result {
        Ok(()) => Duration::from_secs(3600),
        Err(message) => {
            log!(
                "activity_log: could not maintain the partitions of activity_log.events: {message}"
            );
            Duration::from_secs(300)
        }
    };
    *next = Instant::now() + again;
}

/// write_owed_gaps stores the gap records this trail owes (src/shared/owed.rs), oldest first,
/// skipping any the trail holds already. An incident's (a crash-restart, a stop that lost
/// records) carries the window in which records may be missing: committed after the newest
/// one stored (lost_after) and before shared memory was made anew (lost_before).
pub(super) fn write_owed_gaps(owed: &[shared::Owed]) {
    let mut gaps = Rows::new(false);
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    for o in owed {
        // The gaps are inserted together at the end: each one's lost_after is the newest
        // record stored before them.
        let window = Spi::get_one_with_args::<String>(
            "SELECT jsonb_build_object(
                        'lost_after', (SELECT committed_at FROM activity_log.events ORDER BY id DESC LIMIT 1),
                        'lost_before', lost_before,
                        'stored', EXISTS (SELECT FROM activity_log.events
                                           WHERE status = 'gap' AND committed_at >= lost_before
                                             AND details->>'shared_memory_started_at_us' = $1::text
                                             AND details->>'reason' = $2))::text
               FROM (SELECT timestamptz '2000-01-01 00:00:00+00' + make_interval(secs => $1::float8 / 1e6)) AS i (lost_before)",
            &[o.started_at_us.into(), o.reason.as_str().into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("activity_log: could not read the trail: {e}"), None))
        .unwrap_or_default();
        let Ok(Value::Object(mut window)) = serde_json::from_str(&window) else {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("activity_log: unexpected gap window {window}"),
                None,
            );
        };
        if window.remove("stored") == Some(Value::Bool(true)) {
            continue;
        }
        let mut details = json!({
            "reason": o.reason,
            "shared_memory_started_at_us": o.started_at_us,
        });
        if let (Some(d), Some(i)) = (details.as_object_mut(), o.incident) {
            d.insert("crash_restarts".into(), i.crash_restarts.into());
            d.insert("unclean_stop".into(), i.unclean_stop.into());
            d.extend(window);
        }
        gaps.push_gap(now, details);
    }
    gaps.insert();
}

/// write_drop_gap records that `dropped` records were dropped since the last such record.
pub(super) fn write_drop_gap(dropped: u64) {
    let mut gap = Rows::new(false);
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    gap.push_gap(
        now,
        json!({
            "reason": "records were dropped: committed transactions' records when the ring was full under activity_log.overflow = drop, or failed statements' records of rolled-back transactions while the database had no ring",
            "dropped_records": dropped,
        }),
    );
    gap.insert();
}
