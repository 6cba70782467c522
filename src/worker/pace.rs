//! worker/pace.rs: keeps a writer that keeps up from holding a CPU for long stretches.
//!
//! Stored in one go, a batch holds one of the server's CPUs for milliseconds (1 200 statement
//! records under pgbench are about 7 ms), and backends that wake meanwhile queue behind it: on
//! 2 cores that costs pgbench far more than the writer's CPU (bench/statements.py, and a
//! process that only spins 7 ms in every 57 costs as much), and is most of activity_log's p99.
//! So while it keeps up, the writer pauses for 1 ms after each `activity_log.writer_slice` of
//! work. It stops pausing, for the rest of the batch, as soon as it is hurried: the ring more
//! than a quarter full, a flush() waiting for its records, a drop stopping it, another database
//! waiting for the ring, a shutdown or termination; and a batch that starts full (`batch_size`)
//! or behind is not paced at all. So pacing only spreads the work of a writer that keeps up.
//!
//! The slice is a threshold checked at the next record decoded or the next 16 rows stored, so a
//! stretch of work runs a little past it; the batch's start (opening the trail, the chain's head)
//! and end (the last multi-insert, the rollups, the commit) are not cut. Pauses hold no buffer
//! lock, pin of a heap page or LWLock: only what the batch transaction holds (its locks on the
//! trail and its indexes, its xid; on 17+ the BRIN revmap pins an index keeps between inserts).
//! The writer's nap between small batches (so that commits gather) is here too: whoever waits
//! for the writer ends it, within 5 ms.
//! Process-local state only.

use pgrx::pg_sys;
use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::gucs;
use crate::ring;

thread_local! {
    /// Set while a batch is paced: its ring, and when the writer last started working.
    static PACED: Cell<Option<(usize, Instant)>> = const { Cell::new(None) };
}

/// Paced is a batch's pacing; it ends when dropped.
pub(super) struct Paced;

/// begin paces the batch of ring `slot` about to be stored when the writer `keeps_up`, a slice
/// is set and nobody hurries it.
pub(super) fn begin(slot: usize, keeps_up: bool) -> Paced {
    let on = keeps_up && gucs::writer_slice().is_some() && !hurried(slot);
    PACED.set(on.then(|| (slot, Instant::now())));
    Paced
}

impl Drop for Paced {
    fn drop(&mut self) {
        PACED.set(None);
    }
}

/// hurried tells whether the writer of `slot` must work without pauses now.
fn hurried(slot: usize) -> bool {
    waited_for(slot) || ring::filling(slot)
}

/// waited_for tells whether a process waits for the writer of `slot`, or it must stop.
fn waited_for(slot: usize) -> bool {
    // Not BackgroundWorker::sigterm_received(): it clears pgrx's flag, which the writer's loop
    // reads to stop. pgrx's SIGTERM handler (worker_spi_sigterm, pgrx 0.18) also sets this one,
    // as PostgreSQL's own handler does, and nothing clears it; were it not set, a terminated
    // writer would still stop, after its paced batch.
    // SAFETY: a flag of this process, set by its signal handler.
    let stopping = unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() } != 0;
    stopping || ring::hurried(slot) || ring::paused(slot) || ring::hand_back_requested(slot)
}

/// due tells whether the writer has worked a whole slice since its last pause, in a paced
/// batch; once hurried, the batch is paced no more.
pub(super) fn due() -> bool {
    let (Some((slot, since)), Some(slice)) = (PACED.get(), gucs::writer_slice()) else {
        return false;
    };
    if since.elapsed() < slice {
        return false;
    }
    if hurried(slot) {
        PACED.set(None);
        return false;
    }
    true
}

/// pause lets the CPU go for 1 ms; the caller holds no buffer lock and no LWLock.
pub(super) fn pause() {
    nap(Duration::from_millis(1));
    if let Some((slot, _)) = PACED.get() {
        PACED.set(Some((slot, Instant::now())));
    }
}

/// nap_unless_waited_for sleeps for up to `pause` between small batches, so that commits
/// gather, and ends within [`NAP_STEP`] when someone waits for the writer of `slot` (a flush(),
/// a commit waiting for room, a drop, another database, a shutdown). Commits do not end it, nor
/// does a ring filling up behind a frame still pending (every commit wakes the writer then, and
/// it could store nothing more). It sleeps in steps rather than on the latch: a writer waiting
/// on its latch would be woken, and each committing backend would pay for the wake-up, by every
/// commit into a filling ring.
pub(super) fn nap_unless_waited_for(slot: usize, pause: Duration) {
    let until = Instant::now() + pause;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || waited_for(slot) {
            return;
        }
        nap(left.min(NAP_STEP));
    }
}

/// How long a waiter can wait for a napping writer to notice it.
const NAP_STEP: Duration = Duration::from_millis(5);

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
