//! worker/pace.rs: keeps a writer that keeps up from holding a CPU for long stretches.
//!
//! Stored in one go, a batch holds one of the server's CPUs for milliseconds (1 200 statement
//! records under pgbench are about 7 ms), and backends that wake meanwhile queue behind it: on
//! 2 cores that costs pgbench far more than the writer's CPU (bench/statements.py, and a
//! process that only spins 7 ms in every 57 costs as much), and is most of activity_log's p99.
//! So while it keeps up, the writer pauses for 1 ms after each `activity_log.writer_slice` of
//! work; a writer that is behind (a full batch, a quarter-full ring) or stopping works
//! without pauses, so pacing never makes it lose ground.
//!
//! Pauses are taken between records and rows, where the writer holds no buffer lock and no
//! LWLock (only its batch transaction's locks on the trail). Process-local state only.

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::gucs;

thread_local! {
    /// Set while a batch is paced: when the writer last started working.
    static WORKING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Paced is a batch's pacing; it ends when dropped.
pub(super) struct Paced;

/// begin paces the batch about to be stored when the writer `keeps_up` and a slice is set.
pub(super) fn begin(keeps_up: bool) -> Paced {
    let on = keeps_up && gucs::writer_slice().is_some() && !BackgroundWorker::sigterm_received();
    WORKING_SINCE.set(on.then(Instant::now));
    Paced
}

impl Drop for Paced {
    fn drop(&mut self) {
        WORKING_SINCE.set(None);
    }
}

/// due tells whether the writer has worked a whole slice since its last pause, in a paced batch
/// (told to stop meanwhile, it pauses no more).
pub(super) fn due() -> bool {
    match (WORKING_SINCE.get(), gucs::writer_slice()) {
        (Some(since), Some(slice)) => {
            since.elapsed() >= slice && !BackgroundWorker::sigterm_received()
        }
        _ => false,
    }
}

/// pause lets the CPU go for 1 ms; the caller holds no buffer lock and no LWLock.
pub(super) fn pause() {
    nap(Duration::from_millis(1));
    WORKING_SINCE.set(Some(Instant::now()));
}

/// nap sleeps for `pause` without waking when a commit sets the latch (the point is to let
/// them gather), as a wait pg_stat_activity shows (wait_event_type Extension) rather than time
/// on the CPU; the postmaster's death still ends it, and the latch stays set for the next round.
pub(super) fn nap(pause: Duration) {
    // SAFETY: waiting on this process's own latch, without consuming it.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            pause.as_millis().max(1) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
    }
}
