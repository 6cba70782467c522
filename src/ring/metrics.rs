//! ring/metrics.rs: what a ring counts, for activity_log.queue and the health report.
//!
//! Owns the counters of a slot (published, written, dropped, batches, errors, overflow waits),
//! their reset baseline (reset_metrics), the two rate windows, the last write error and the
//! gap-reporting marks of dropped records; [`stats`] takes a snapshot of all of it.
//!
//! Counting runs everywhere (backends count drops and overflow waits, the writer counts what
//! it stored); counters are `Relaxed` atomics and never steer the pipeline, except
//! `dropped_records`, which the writer turns into gap records. Reading the last error and the
//! oldest unstored frame takes the slot lock briefly; nothing here ever raises an ERROR.

use pgrx::pg_sys;
use std::sync::atomic::{AtomicU32, Ordering::*};

use super::layout::{
    COUNTERS, FrameHeader, LAST_ERROR_LEN, LockGuard, STATE_COMMITTED, Slot, capacity, data, slot,
};

/// Recent rates cover the last one to two windows.
const WINDOW_US: i64 = 10_000_000;

/// count_written adds a stored batch to the metrics.
pub fn count_written(slot_index: usize, records: u64) {
    let s = slot(slot_index);
    s.written_records.fetch_add(records, Relaxed);
    s.batches.fetch_add(1, Relaxed);
    s.max_batch_records.fetch_max(records, Relaxed);
    // SAFETY: plain call, no error paths.
    s.last_flush_at
        .store(unsafe { pg_sys::GetCurrentTimestamp() }, Relaxed);
}

pub fn count_drop(slot_index: usize, records: u64) {
    slot(slot_index).dropped_records.fetch_add(records, Release);
}

pub fn count_overflow_wait(slot_index: usize) {
    slot(slot_index).overflow_waits.fetch_add(1, Relaxed);
}

/// unreported_drops is (records of slot `i` dropped so far, how many of them have no gap
/// record in the trail yet); [`mark_drops_reported`] with the first once the record is stored.
pub fn unreported_drops(i: usize) -> (u64, u64) {
    let s = slot(i);
    let dropped = s.dropped_records.load(Acquire);
    (
        dropped,
        dropped.saturating_sub(s.dropped_reported.load(Acquire)),
    )
}

pub fn mark_drops_reported(i: usize, dropped: u64) {
    slot(i).dropped_reported.fetch_max(dropped, AcqRel);
}

/// counters reads the resettable counters, in `Slot::base` order.
fn counters(s: &Slot) -> [u64; COUNTERS] {
    [
        s.published_records.load(Relaxed),
        s.published_bytes.load(Relaxed),
        s.written_records.load(Relaxed),
        s.dropped_records.load(Relaxed),
        s.batches.load(Relaxed),
        s.write_errors.load(Relaxed),
        s.overflow_waits.load(Relaxed),
    ]
}

/// reset_metrics starts the counters of a ring afresh (pg_stat_statements_reset style); the
/// queue itself and what it holds are untouched.
pub fn reset_metrics(slot_index: usize) {
    let s = slot(slot_index);
    for (base, now) in s.base.iter().zip(counters(s)) {
        base.store(now, Relaxed);
    }
    s.max_batch_records.store(0, Relaxed);
    // SAFETY: plain call, no error paths.
    s.reset_at
        .store(unsafe { pg_sys::GetCurrentTimestamp() }, Relaxed);
}

/// roll_window takes a new rate sample once the last one is a window old; the writer calls
/// it whenever it wakes.
pub fn roll_window(slot_index: usize) {
    let s = slot(slot_index);
    // SAFETY: plain call, no error paths.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let [older, newer] = &s.window;
    if now - newer.at.load(Relaxed) < WINDOW_US {
        return;
    }
    older.at.store(newer.at.load(Relaxed), Relaxed);
    older
        .published
        .store(newer.published.load(Relaxed), Relaxed);
    older.written.store(newer.written.load(Relaxed), Relaxed);
    newer
        .published
        .store(s.published_records.load(Relaxed), Relaxed);
    newer
        .written
        .store(s.written_records.load(Relaxed), Relaxed);
    newer.at.store(now, Relaxed);
}

/// oldest_unwritten_at is the commit time of the oldest committed frame the writer has not
/// stored, looking at most 256 frames past the tail (None: nothing committed waits).
fn oldest_unwritten_at(slot_index: usize) -> Option<i64> {
    let s = slot(slot_index);
    let cap = capacity();
    // Under the slot lock no frame between tail and head can be reused.
    let _g = LockGuard::exclusive(slot_index + 1);
    let (mut pos, head) = (s.tail.load(Acquire), s.head.load(Acquire));
    for _ in 0..256 {
        if pos >= head {
            return None;
        }
        // SAFETY: a frame start in [tail, head), read under the slot lock.
        let (len, state, commit_ts) = unsafe {
            let p = data(slot_index).add((pos % cap) as usize);
            let state = (*p.add(4).cast::<AtomicU32>()).load(Acquire);
            let ts = if state == STATE_COMMITTED {
                (*p.cast::<FrameHeader>()).commit_ts
            } else {
                0
            };
            (p.cast::<u32>().read() as u64, state, ts)
        };
        if state == STATE_COMMITTED {
            return Some(commit_ts);
        }
        pos += len.max(8);
    }
    None
}

pub fn note_write_error(slot_index: usize, message: &str, transient: bool) {
    let s = slot(slot_index);
    s.write_errors.fetch_add(1, Relaxed);
    s.last_error_transient.store(transient, Relaxed);
    let _g = LockGuard::exclusive(slot_index + 1);
    // SAFETY: guarded by the slot lock.
    unsafe {
        let buf = &mut *s.last_error.get();
        let n = message.len().min(LAST_ERROR_LEN - 1);
        buf[..n].copy_from_slice(&message.as_bytes()[..n]);
        buf[n] = 0;
        s.last_error_at
            .store(pg_sys::GetCurrentTimestamp(), Relaxed);
    }
}

/// note_exit_error puts why the writer of ring `slot_index` exits into its last_error:
/// `message`, unless last_error holds `cause` already (a failed batch noted it, with more
/// words: note_write_error), so that `activity_log.queue` says why writer_failures grew.
/// write_errors is not counted (the failed run is). Runs inside error reporting and in exit
/// callbacks: it only tries the slot lock, allocates nothing and raises nothing; false when
/// the lock was taken.
pub fn note_exit_error(slot_index: usize, message: &[u8], cause: &[u8]) -> bool {
    let s = slot(slot_index);
    let Some(_g) = LockGuard::try_exclusive(slot_index + 1) else {
        return false;
    };
    // SAFETY: guarded by the slot lock.
    unsafe {
        let buf = &mut *s.last_error.get();
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let noted = !cause.is_empty() && buf[..len].windows(cause.len()).any(|w| w == cause);
        if !noted {
            let n = message.len().min(LAST_ERROR_LEN - 1);
            buf[..n].copy_from_slice(&message[..n]);
            buf[n] = 0;
            s.last_error_at
                .store(pg_sys::GetCurrentTimestamp(), Relaxed);
        }
    }
    true
}

/// A snapshot of one slot, for `activity_log.queue` and the health score.
#[derive(Debug, Default, Clone)]
pub struct SlotStats {
    pub dboid: u32,
    pub capacity: u64,
    pub used_bytes: u64,
    pub published_records: u64,
    pub published_bytes: u64,
    pub written_records: u64,
    pub dropped_records: u64,
    pub batches: u64,
    pub write_errors: u64,
    pub overflow_waits: u64,
    pub writer_pid: i32,
    pub writer_state: u32,
    pub writer_failures: u32,
    pub last_flush_at: i64,
    pub last_error_at: i64,
    pub last_error: String,
    /// Records published and not yet stored (not affected by reset_metrics).
    pub queued_records: u64,
    pub max_batch_records: u64,
    /// When the counters were last reset (0: never; they count from server start).
    pub reset_at: i64,
    /// Records/s in and out over the last one to two windows (None until there is a sample).
    pub recent_in_per_s: Option<f64>,
    pub recent_out_per_s: Option<f64>,
    pub oldest_unwritten_at: Option<i64>,
    /// The backend restoring a dump that holds the writer off (0: none).
    pub restored_by: i32,
}

pub fn stats(i: usize) -> SlotStats {
    let s = slot(i);
    let last_error = {
        let _g = LockGuard::exclusive(i + 1);
        // SAFETY: guarded by the slot lock.
        let buf = unsafe { &*s.last_error.get() };
        let n = buf.iter().position(|&b| b == 0).unwrap_or(LAST_ERROR_LEN);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let raw = counters(s);
    let c: Vec<u64> = raw
        .iter()
        .zip(&s.base)
        .map(|(v, b)| v.saturating_sub(b.load(Relaxed)))
        .collect();
    // SAFETY: plain call, no error paths.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let older = &s.window[0];
    let since = older.at.load(Relaxed);
    let rate = |now_count: u64, then: u64| {
        (since > 0 && now > since)
            .then(|| now_count.saturating_sub(then) as f64 * 1e6 / (now - since) as f64)
    };
    SlotStats {
        dboid: s.dboid.load(Acquire),
        capacity: capacity(),
        used_bytes: s.head.load(Acquire).saturating_sub(s.tail.load(Acquire)),
        published_records: c[0],
        published_bytes: c[1],
        written_records: c[2],
        dropped_records: c[3],
        batches: c[4],
        write_errors: c[5],
        overflow_waits: c[6],
        queued_records: raw[0].saturating_sub(raw[2]),
        max_batch_records: s.max_batch_records.load(Relaxed),
        reset_at: s.reset_at.load(Relaxed),
        recent_in_per_s: rate(raw[0], older.published.load(Relaxed)),
        recent_out_per_s: rate(raw[2], older.written.load(Relaxed)),
        oldest_unwritten_at: oldest_unwritten_at(i),
        restored_by: s.restored_by.load(Acquire),
        writer_pid: s.writer_pid.load(Acquire),
        writer_state: s.writer_state.load(Acquire),
        writer_failures: s.failures.load(Relaxed),
        last_flush_at: s.last_flush_at.load(Relaxed),
        last_error_at: s.last_error_at.load(Relaxed),
        last_error,
    }
}
