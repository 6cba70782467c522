//! worker/rollup.rs: runs in the writer, inside each batch's transaction; owns the two
//! rollups the writer keeps as it stores rows: `activity_log.activity_hourly` (records per
//! hour, kind and status) and `activity_log.activity_daily`, behind the `metrics_daily` view
//! (per day, kind, category and status: records, and their durations as a count, a sum and a
//! log-scale histogram for the p95). See sql/analytics.sql.
//!
//! Both are sums, so a batch adds its own rows and nothing else: the writer's cost is one
//! statement per batch whatever the trail's length, and no maintenance runs between batches.
//! A percentile does not add up; a histogram does, which is why the p95 comes from one with
//! buckets 2 % wide (within 1 % of a duration of the day; [`duration_bucket`]). A batch
//! inserts its own rows (a key's rows add up) and updates none, so no lock anybody holds on
//! the rollups — rebuild_rollup(), refresh_metrics(), a transaction left open after them —
//! makes the writer wait; every [`COMPACT_EVERY`] it merges the rows of the days it added to
//! (`_compact_rollups`, which skips rows somebody holds).
//!
//! Rules: only counts of rows this batch stores are added (the rollups are exact whichever way
//! the batch ends); a broken rollup (dropped, locked, refused) is logged and must not hold up
//! the trail: rebuild_rollup() and refresh_metrics() repair it.

use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::{Cell, OnceCell};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::worker::subxact::in_subtransaction;

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

/// How often the writer merges the rollups' rows of the days it added to: a busy writer adds
/// a row per key and batch, a hundred a second, and their readers read them all.
const COMPACT_EVERY: Duration = Duration::from_secs(10);

/// What the writer added to the rollups since it last merged: the oldest day (µs since
/// 2000-01-01 UTC; i64::MAX: nothing) and when it last merged.
#[derive(Clone, Copy)]
struct Uncompacted {
    oldest_day: i64,
    merged_at: Option<Instant>,
}

thread_local! {
    static UNCOMPACTED: Cell<Uncompacted> = const {
        Cell::new(Uncompacted { oldest_day: i64::MAX, merged_at: None })
    };
}

/// ln of the ratio between a histogram bucket's two bounds (the buckets are 2.02 % wide): a
/// bucket's middle is within 1 % of every duration in it.
const BUCKET_LN_WIDTH: f64 = 0.02;
/// The bucket of durations that are zero, negative or not a number.
const ZERO_BUCKET: i32 = -1000;
/// The range of the other buckets: about 2e-9 ms to 7e86 ms.
const LOWEST_BUCKET: i32 = -999;
const HIGHEST_BUCKET: i32 = 10_000;

/// duration_bucket is the histogram bucket of a duration in ms: bucket k holds the durations
/// in (e^(0.02(k-1)), e^(0.02k)]. The writer and refresh_metrics() (through
/// `_duration_bucket`) share this one function, so that both put a duration in the same bucket.
pub fn duration_bucket(ms: f64) -> i32 {
    if ms > 0.0 {
        // `as` saturates an infinite value; the clamp keeps the range the view knows.
        ((ms.ln() / BUCKET_LN_WIDTH).ceil() as i32).clamp(LOWEST_BUCKET, HIGHEST_BUCKET)
    } else {
        ZERO_BUCKET
    }
}

/// The SQL face of [`duration_bucket`], for refresh_metrics() (not executable by PUBLIC).
#[pg_extern(name = "_duration_bucket", immutable, parallel_safe)]
fn duration_bucket_sql(ms: f64) -> i32 {
    duration_bucket(ms)
}

/// A histogram as the rollup stores it: a JSON object of bucket → durations.
fn histogram(value: &serde_json::Value) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    if let Some(object) = value.as_object() {
        for (k, n) in object {
            match (k.parse::<i32>(), n.as_i64()) {
                (Ok(k), Some(n)) => *out.entry(k).or_default() += n,
                _ => raise(
                    PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                    format!(
                        "activity_log: a histogram holds {k}: {n}, not a bucket and a count (run activity_log.refresh_metrics())"
                    ),
                    None,
                ),
            }
        }
    }
    out
}

fn histogram_json(buckets: &BTreeMap<i32, i64>) -> serde_json::Value {
    serde_json::Value::Object(
        buckets
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(k, n)| (k.to_string(), (*n).into()))
            .collect(),
    )
}

/// The step of the `_sum_buckets` aggregate: two histograms added (not executable by PUBLIC).
#[pg_extern(name = "_add_buckets", immutable, parallel_safe)]
fn add_buckets_sql(a: pgrx::JsonB, b: pgrx::JsonB) -> pgrx::JsonB {
    let mut sum = histogram(&a.0);
    for (k, n) in histogram(&b.0) {
        *sum.entry(k).or_default() += n;
    }
    pgrx::JsonB(histogram_json(&sum))
}

/// bucket_p95 is the middle of the bucket holding the ceil(0.95 n)-th smallest of `n`
/// durations (the one percentile_disc(0.95) picks): within 1 % of it.
fn bucket_p95(buckets: &BTreeMap<i32, i64>, n: i64) -> Option<f64> {
    if n <= 0 {
        return None;
    }
    let rank = ((95 * n as i128 + 99) / 100) as i64;
    let mut seen = 0;
    let k = *buckets
        .iter()
        .find(|(_, count)| {
            seen += **count;
            seen >= rank
        })?
        .0;
    Some(if k == ZERO_BUCKET {
        0.0
    } else {
        2.0 * (BUCKET_LN_WIDTH * k as f64).exp() / (1.0 + BUCKET_LN_WIDTH.exp())
    })
}

/// The SQL face of [`bucket_p95`], for metrics_daily (run by its readers).
#[pg_extern(name = "_bucket_p95", immutable, parallel_safe)]
fn bucket_p95_sql(buckets: pgrx::JsonB, durations: i64) -> Option<f64> {
    bucket_p95(&histogram(&buckets.0), durations)
}

/// What the rollups need of one stored row.
#[derive(Clone, Copy)]
pub struct Fact {
    /// The row's ts, in microseconds since 2000-01-01 UTC.
    pub ts: i64,
    pub kind: &'static str,
    /// An index into the batch's [`Categories`].
    pub category: u32,
    pub status: &'static str,
    pub duration_us: Option<i64>,
}

/// The categories of a batch's rows, each kept once: a batch's rows share a handful, but
/// log_event() takes any text, so a batch may bring thousands.
#[derive(Default)]
pub struct Categories {
    names: Vec<String>,
    ids: HashMap<Vec<u8>, u32>,
}

impl Categories {
    pub fn id(&mut self, category: &[u8]) -> u32 {
        if let Some(last) = self.names.last()
            && last.as_bytes() == category
        {
            return (self.names.len() - 1) as u32;
        }
        if let Some(&id) = self.ids.get(category) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names
            .push(String::from_utf8_lossy(category).into_owned());
        self.ids.insert(category.to_vec(), id);
        id
    }
}

/// (hour as microseconds since 2000-01-01 UTC, kind, status)
type HourKey = (i64, &'static str, &'static str);
/// (day as microseconds since 2000-01-01 UTC, kind, category, status)
type DayKey = (i64, &'static str, u32, &'static str);

#[derive(Default)]
struct DayTotals {
    events: i64,
    durations: i64,
    duration_us: i64,
    buckets: BTreeMap<i32, i64>,
}

/// The counts of one batch's stored rows.
#[derive(Default)]
pub struct Rollups {
    /// A batch has a handful of hours and rows mostly fall into the one before them: a list.
    hourly: Vec<(HourKey, i64)>,
    daily: HashMap<DayKey, DayTotals>,
}

impl Rollups {
    pub fn add(&mut self, f: &Fact) {
        let hour = (f.ts - f.ts.rem_euclid(HOUR_US), f.kind, f.status);
        match self.hourly.iter_mut().rev().find(|(seen, _)| *seen == hour) {
            Some((_, n)) => *n += 1,
            None => self.hourly.push((hour, 1)),
        }
        let day = (f.ts - f.ts.rem_euclid(DAY_US), f.kind, f.category, f.status);
        let totals = self.daily.entry(day).or_default();
        totals.events += 1;
        if let Some(us) = f.duration_us {
            totals.durations += 1;
            totals.duration_us += us;
            // The trail stores the duration in ms as float8: bucket that value, as
            // refresh_metrics() does from the trail.
            *totals
                .buckets
                .entry(duration_bucket(us as f64 / 1000.0))
                .or_default() += 1;
        }
    }

    /// store adds the counts to both rollups, in a subtransaction of the batch's transaction,
    /// and merges the rollups' rows when that is due, in another. Never inlined: bench/writer_cost.py
    /// reports its cost by name.
    #[inline(never)]
    pub fn store(self, categories: &Categories) {
        if self.hourly.is_empty() {
            return;
        }
        let oldest_day = self.daily.keys().map(|k| k.0).min().unwrap_or(i64::MAX);
        if let Err(message) = in_subtransaction(|| self.insert(categories)) {
            log!(
                "activity_log: activity_log.activity_hourly and activity_daily not updated (run activity_log.rebuild_rollup() and activity_log.refresh_metrics()): {message}"
            );
            return;
        }
        let mut state = UNCOMPACTED.get();
        state.oldest_day = state.oldest_day.min(oldest_day);
        if state
            .merged_at
            .is_none_or(|at| at.elapsed() >= COMPACT_EVERY)
        {
            // Its own subtransaction: a merge that fails (a row somebody broke) costs no
            // batch its counts, and is tried again an interval later.
            match in_subtransaction(|| compact(state.oldest_day)) {
                Ok(()) => state.oldest_day = i64::MAX,
                Err(message) => log!(
                    "activity_log: the rollups' rows were not merged (activity_log.refresh_metrics() and rebuild_rollup() rebuild them): {message}"
                ),
            }
            state.merged_at = Some(Instant::now());
        }
        UNCOMPACTED.set(state);
    }

    fn insert(self, categories: &Categories) {
        let (mut hours, mut hour_kinds, mut hour_statuses, mut hour_counts) =
            (vec![], vec![], vec![], vec![]);
        for ((hour, kind, status), n) in self.hourly {
            hours.push(hour);
            hour_kinds.push(kind.to_string());
            hour_statuses.push(status.to_string());
            hour_counts.push(n);
        }
        let n = self.daily.len();
        let (mut days, mut kinds, mut names, mut statuses) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut events, mut durations, mut duration_us, mut buckets) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((day, kind, category, status), t) in self.daily {
            days.push(day);
            kinds.push(kind.to_string());
            names.push(categories.names[category as usize].clone());
            statuses.push(status.to_string());
            events.push(t.events);
            durations.push(t.durations);
            duration_us.push(t.duration_us);
            buckets.push(histogram_json(&t.buckets).to_string());
        }
        thread_local! {
            static PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
        }
        // One statement for both: the writer runs it for every batch. A data-modifying WITH
        // runs whether or not it is read.
        super::with_kept_plan(
            &PLAN,
            "WITH hourly AS (
                 INSERT INTO activity_log.activity_hourly (hour, kind, status, events)
                 SELECT timestamptz '2000-01-01 00:00:00+00' + u.hour::float8 * interval '1 microsecond', u.kind, u.status, u.n
                   FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[]) AS u(hour, kind, status, n))
             INSERT INTO activity_log.activity_daily
                    (day, kind, category, status, events, durations, duration_sum_ms, duration_buckets)
             SELECT timestamptz '2000-01-01 00:00:00+00' + u.day::float8 * interval '1 microsecond',
                    u.kind, u.category, u.status, u.events, u.durations, u.us / 1000.0, u.buckets::jsonb
               FROM unnest($5::int8[], $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[],
                           $11::int8[], $12::text[]) AS u(day, kind, category, status, events, durations, us, buckets)",
            &[
                pg_sys::INT8ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::INT8ARRAYOID,
                pg_sys::INT8ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::INT8ARRAYOID,
                pg_sys::INT8ARRAYOID,
                pg_sys::INT8ARRAYOID,
                pg_sys::TEXTARRAYOID,
            ],
            |client, plan| {
                let args = [
                    hours.into(),
                    hour_kinds.into(),
                    hour_statuses.into(),
                    hour_counts.into(),
                    days.into(),
                    kinds.into(),
                    names.into(),
                    statuses.into(),
                    events.into(),
                    durations.into(),
                    duration_us.into(),
                    buckets.into(),
                ];
                client.update(plan, None, &args).map(drop)
            },
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("activity_log: could not update the rollups: {e}"), None));
    }
}

/// compact merges the rollups' rows of the days from `since` (µs since 2000-01-01 UTC) on.
fn compact(since: i64) {
    thread_local! {
        static PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
    }
    super::with_kept_plan(
        &PLAN,
        "SELECT activity_log._compact_rollups(timestamptz '2000-01-01 00:00:00+00' + $1::float8 * interval '1 microsecond')",
        &[pg_sys::INT8OID],
        |client, plan| client.select(plan, None, &[since.into()]).map(drop),
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("activity_log: could not merge the rollups' rows: {e}"), None));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_is_within_one_percent_of_its_bucket_middle() {
        let middle =
            |k: i32| 2.0 * (BUCKET_LN_WIDTH * k as f64).exp() / (1.0 + BUCKET_LN_WIDTH.exp());
        for ms in [0.001, 0.017, 0.5, 1.0, 3.3, 250.0, 59_999.0, 3.6e6] {
            let k = duration_bucket(ms);
            let error = (middle(k) - ms).abs() / ms;
            assert!(error <= 0.01, "{ms} ms in bucket {k}: {error}");
        }
    }

    #[test]
    fn the_p95_is_the_bucket_of_the_rank_percentile_disc_picks() {
        // 20 durations 1..=20 ms: percentile_disc(0.95) is the 19th, 19 ms.
        let mut buckets = BTreeMap::new();
        for ms in 1..=20 {
            *buckets.entry(duration_bucket(ms as f64)).or_default() += 1;
        }
        let p95 = bucket_p95(&buckets, 20).unwrap();
        assert!((p95 - 19.0).abs() / 19.0 <= 0.01, "{p95}");
        assert_eq!(bucket_p95(&buckets, 0), None);
        assert_eq!(
            bucket_p95(&BTreeMap::from([(ZERO_BUCKET, 3)]), 3),
            Some(0.0)
        );
    }

    #[test]
    fn zero_and_odd_durations_have_their_own_buckets() {
        assert_eq!(duration_bucket(0.0), ZERO_BUCKET);
        assert_eq!(duration_bucket(-5.0), ZERO_BUCKET);
        assert_eq!(duration_bucket(f64::NAN), ZERO_BUCKET);
        assert_eq!(duration_bucket(f64::INFINITY), HIGHEST_BUCKET);
        assert_eq!(duration_bucket(f64::MIN_POSITIVE), LOWEST_BUCKET);
        assert_eq!(duration_bucket(1.0), 0);
    }
}
