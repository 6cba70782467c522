//! worker/writer.rs: one per audited database; drains that database's ring into
//! `activity_log.events`. This file is the writer's loop and lifecycle: the start (wait for
//! the extension's install to commit, claim and attach the ring), the loop, handing the ring
//! back to another database, waiting out a restore, and the exit. Runs only as the writer
//! background worker; it stores nothing itself.
//!
//! The loop: read committed frames from the ring tail (up to `batch_size` records), decode
//! them (worker/decode.rs), store them the way COPY does (worker/store.rs), commit, and only
//! then move the tail. A failed insert is noted in the ring's metrics and ends the process with
//! exit code 1; the launcher starts a new writer after a back-off and the same records are
//! tried again, so nothing published is lost. On SIGTERM the writer drains the ring before it
//! exits. Its own inserts are never captured (`process::mark_own_worker`).
//!
//! The stages, one file each, calls going one way: writer.rs → drain.rs (the sources and the
//! batch transaction, in commit order: see its header) → map.rs (records → trail rows) →
//! store.rs and rollup.rs; maintain.rs (partitions, retention, gap records) → map.rs.

use crate::errors::raise;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::pg_sys::ffi::pg_guard_ffi_boundary;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

use crate::gucs;
use crate::process;
use crate::ring;
use crate::shared;
use crate::worker::drain::{MY_DB, drain, small_batch, still_mine, sweeping};
use crate::worker::maintain::{maintain_partitions_if_due, write_owed_gaps};
use crate::worker::pace;
use crate::worker::suspects;

/// The slot this process writes for (its database is [`MY_DB`]).
static mut MY_SLOT: i64 = -1;
/// Set once the writer leaves its loop normally; an exit without it counts as a failure.
static mut CLEAN_EXIT: bool = false;
/// The ring whose last_error says why this writer exits: its database's, from before the
/// connection (which may end in a FATAL) on.
static mut EXIT_SLOT: i64 = -1;
/// Set once the ERROR or FATAL this writer exits on is in its ring's last_error.
static mut EXIT_ERROR_NOTED: bool = false;
/// emit_log_hook as it was before this writer added [`note_exit_error`].
static mut PREV_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;

/// keep_freed_memory makes this process's malloc reuse what a batch freed instead of handing
/// it back to the kernel. Each batch allocates a few megabytes (row Datums, heap tuples, the
/// transaction's memory blocks) and frees them at its end; with glibc's defaults the larger ones
/// are mmap'd and unmapped, and the heap top is trimmed, so the next batch takes a page fault
/// and a zeroed page for every 4 kB again (bench/profile.py shows what that costs). Only the writer does this: it is our process, and its batches are bounded by
/// activity_log.batch_size. What it keeps beyond 64 MB of free heap is still returned.
#[cfg(target_env = "gnu")]
fn keep_freed_memory() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: glibc tuning of this single-threaded process, before it allocates for a batch.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20); // glibc's largest allowed value
        mallopt(M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(target_env = "gnu"))]
fn keep_freed_memory() {}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn al_writer_main(arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    keep_freed_memory();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    process::mark_own_worker();
    // SAFETY: process-local statics; the hook is this process's only (a writer runs no
    // user session), set before the connection, which can end in a FATAL of its own.
    unsafe {
        EXIT_SLOT = ring::slot_of(dboid).map_or(-1, |i| i as i64);
        PREV_EMIT_LOG_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(note_exit_error);
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);
    super::pin_settings();

    // A ring is claimed by the first transaction that audits something in the database, and
    // that may be the CREATE EXTENSION itself: until it commits, the extension is not visible
    // here. Wait for that transaction rather than exit (an exit would count as a failed run).
    // Whether it runs is read before looking for the extension: had it been read after, a
    // commit in between would make an installed extension look absent and its ring released.
    loop {
        let claimer = ring::slot_of(dboid).map(ring::claim_xid).unwrap_or(0);
        // SAFETY: plain lookup in the proc array.
        let claimer_running =
            claimer != 0 && unsafe { pg_sys::TransactionIdIsInProgress(claimer.into()) };
        let installed = BackgroundWorker::transaction(|| {
            // SAFETY: catalog lookup inside a transaction.
            unsafe {
                pg_sys::get_extension_oid(c"activity_log".as_ptr(), true) != pg_sys::InvalidOid
            }
        });
        if installed {
            break;
        }
        let Some(i) = ring::slot_of(dboid) else {
            return;
        };
        if !claimer_running {
            // Nothing to write in this database: its ring goes too, and with no trail it
            // owes no gap record.
            shared::forgive(dboid);
            ring::release(i);
            ring::detach_writer(i, 0, false);
            return; // exit code 0
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(10))) {
            ring::detach_writer(i, 0, false);
            return; // shutting down; the launcher starts a writer when it is needed again
        }
    }
    let Some(slot) = ring::claim(dboid, 0) else {
        // Every ring is taken: when transactions wait in durable_queue, the launcher gives
        // this database a ring at its turn.
        if staged_rows_left() {
            ring::note_waiting(dboid);
        }
        return;
    };
    // A background worker attached to shared memory always has a PGPROC (see the launcher).
    let procno = crate::versions::my_proc_number().unwrap_or(-1);
    // SAFETY: reads a process global.
    let attached = ring::attach_writer(slot, unsafe { pg_sys::MyProcPid }, procno);
    if !attached {
        return; // another writer runs for this database
    }
    // SAFETY: registering a plain callback; MY_SLOT is process-local.
    unsafe {
        MY_SLOT = slot as i64;
        EXIT_SLOT = slot as i64;
        MY_DB = dboid;
        pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0));
    }
    if ring::paused(slot) {
        // A drop stopped the ring's writer while this one started.
        // SAFETY: process-local flag read by on_exit.
        unsafe { CLEAN_EXIT = true };
        return;
    }
    // Staged frames a crash happened with: not read again, or read alone.
    suspects::load(dboid);

    // A restore holds the writer off before it touches the trail: the restore makes the
    // dumped day partitions and rows first (capture/restore.rs). Told to stop meanwhile, it
    // leaves at once and the records stay in the ring for the next writer.
    let stopping = !wait_for_restore(slot);
    // Partitions first: a record stored before today's partition exists would go to
    // events_default and keep that day's partition from being made.
    let mut next_maintenance = Instant::now();
    if !stopping {
        maintain_partitions_if_due(&mut next_maintenance);
        // Removed only once stored: a writer that fails here leaves them to the next one.
        let owed = shared::owed_to(dboid);
        if !owed.is_empty() {
            BackgroundWorker::transaction(|| write_owed_gaps(&owed));
            shared::paid(dboid, &owed);
        }
    }
    // Staged transactions left for the next round: do not sleep (no commit wakes the writer
    // while it is sweeping), only look at signals.
    let mut more = false;
    while !stopping
        && BackgroundWorker::wait_latch(Some(if more {
            Duration::ZERO
        } else {
            gucs::flush_interval()
        }))
        && still_mine(slot)
        && !ring::paused(slot)
    {
        if BackgroundWorker::sighup_received() {
            // SAFETY: documented way to reload settings in a worker.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        ring::roll_window(slot);
        if !wait_for_restore(slot) {
            break;
        }
        maintain_partitions_if_due(&mut next_maintenance);
        let drained = drain(slot);
        // The batches' inserts and deletes reach the statistics autovacuum reads, as a
        // backend's do when it goes idle (at most once a second; outside any transaction).
        // SAFETY: between transactions of this background worker.
        unsafe { pg_sys::pgstat_report_stat(false) };
        // Staged transactions still to take, and the last round took some: go on at once.
        // (Waiting behind a frame still pending: its commit wakes the writer.)
        more = drained.left_some || (sweeping(slot) && drained.written > 0);
        if ring::hand_back_requested(slot) && (drained.written == 0 && !more || turn_is_over(slot))
        {
            hand_back(slot);
            // SAFETY: process-local flag read by on_exit.
            unsafe { CLEAN_EXIT = true };
            return;
        }
        if drained.written < small_batch() {
            // Small batches: let commits gather for a moment, so that a busy server is written
            // in batches rather than one tiny insert per commit. Adds at most 50 ms of lag; a
            // shorter pause costs the writer more CPU per record (a batch costs a transaction,
            // opening the partition and its indexes, the rollup upsert: bench/writer_cost.py).
            // A flush() waiting for these records ends the pause.
            pace::nap_unless_waited_for(slot, Duration::from_millis(50));
        }
    }
    // A drop stopped the writer: it leaves at once, and the records stay in the ring (gone
    // with the trail if the drop commits, stored by the next writer if not). A restore that
    // holds the trail is stopped with the server: once it is gone the queue is stored.
    if !ring::paused(slot) && restore_gone(slot, Duration::from_secs(30)) {
        drain_before_exit(slot);
    }
    // SAFETY: process-local flag read by on_exit.
    unsafe { CLEAN_EXIT = true };
}

/// How long a writer keeps its ring, once another database waits for one, while its own
/// database keeps it busy: a database without a ring commits through durable_queue (slower,
/// nothing lost), and its records reach the trail at its turn.
const TURN: Duration = Duration::from_secs(5);

fn turn_is_over(slot: usize) -> bool {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    now - ring::claimed_at(slot) >= TURN.as_micros() as i64
}

/// hand_back gives the ring up for another database (the launcher asked): no new frame is
/// reserved from now on (committing transactions stage theirs), what is in the ring and in
/// durable_queue is stored, and the ring is released. Transactions staged meanwhile put the
/// database back on the waiting list; so does this writer when it sees some left.
fn hand_back(slot: usize) {
    ring::close(slot);
    // What committed before the close; later commits put the database back on the list.
    let staged = ring::staged_commits(slot);
    while ring::has_frames(slot) || ring::staged_swept(slot) < staged {
        if ring::paused(slot)
            || drain(slot).written == 0
                && !BackgroundWorker::wait_latch(Some(Duration::from_millis(5)))
        {
            // Stopping, or a drop stopped the writer: the ring stays closed, and the next
            // writer opens it again.
            return;
        }
    }
    // SAFETY: process-local statics; detached before the release so that the writer that
    // gets the ring next finds it free.
    unsafe {
        ring::detach_writer(slot, pg_sys::MyProcPid, false);
        MY_SLOT = -1;
    }
    ring::release_closed(slot);
    if staged_rows_left() {
        // SAFETY: process-local static.
        ring::note_waiting(unsafe { MY_DB });
    }
}

/// staged_rows_left tells whether durable_queue holds committed transactions.
fn staged_rows_left() -> bool {
    BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM activity_log.durable_queue)")
            .unwrap_or_else(|e| {
                raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("activity_log: could not read activity_log.durable_queue: {e}"),
                    None,
                )
            })
            .unwrap_or(false)
    })
}

/// restore_holds tells whether a live backend holds the trail for a restore, ending the hold of
/// one that is gone.
fn restore_holds(slot: usize) -> bool {
    let pid = ring::restored_by(slot);
    if pid == 0 {
        return false;
    }
    // SAFETY: a lookup in the proc array (a shared lock).
    if unsafe { pg_sys::BackendPidGetProc(pid) }.is_null() {
        ring::end_restore_hold(slot, pid);
        return false;
    }
    true
}

/// restore_gone waits up to `within`, when stopping, for a backend that holds the trail for a
/// restore to go (a shutdown stops it too); false if it is still there.
fn restore_gone(slot: usize, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        if !restore_holds(slot) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        // SAFETY: plain sleep (the latch is of no use once SIGTERM arrived).
        unsafe { pg_sys::pg_usleep(10_000) };
    }
}

/// wait_for_restore waits while a backend restores a dump into the database (see
/// capture/restore.rs), ending the hold when that backend is gone; false when told to stop.
fn wait_for_restore(slot: usize) -> bool {
    loop {
        if !restore_holds(slot) {
            return true;
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(500)))
            || !still_mine(slot)
            || ring::paused(slot)
        {
            return false;
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(code: i32, _arg: pg_sys::Datum) {
    // SAFETY: process-local statics written by this process only.
    unsafe {
        if MY_SLOT >= 0 {
            if !CLEAN_EXIT && !EXIT_ERROR_NOTED {
                // Not by an ERROR or FATAL this process reported (a proc_exit of its own, or
                // one whose report could not take the slot lock): say so, not nothing.
                let mut buf = [0u8; 96];
                let message = exit_message(&mut buf, code);
                ring::note_exit_error(MY_SLOT as usize, message, b"");
            }
            ring::detach_writer(MY_SLOT as usize, pg_sys::MyProcPid, !CLEAN_EXIT);
        }
    }
}

/// exit_message writes "writer exited with code N; see the server log" into `buf`, without
/// allocating (exit callbacks may run out of memory).
fn exit_message(buf: &mut [u8; 96], code: i32) -> &[u8] {
    use std::io::Write;
    let mut w = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(w, "writer exited with code {code}; see the server log");
    let n = w.position() as usize;
    &buf[..n]
}

/// note_exit_error is this writer's emit_log_hook. An ERROR that reaches a background
/// worker's top level ends it, as a FATAL does, and both are reported here just before the
/// exit: their message goes into the ring's last_error, so that `activity_log.queue` says why
/// writer_failures grew (a FATAL left it empty: issue 29). An ERROR the writer catches (a
/// failed batch, noted by drain.rs with its detail) is not reported, and one it rethrows is
/// noted already: the message is left as it is then. Runs inside error reporting: nothing here
/// allocates or raises, and the slot lock is only tried.
#[pg_guard]
unsafe extern "C-unwind" fn note_exit_error(edata: *mut pg_sys::ErrorData) {
    // SAFETY: edata is the error being reported, valid for the call; process-local statics.
    unsafe {
        let e = &*edata;
        let level = match e.elevel as u32 {
            pg_sys::PGERROR => &b"ERROR"[..],
            pg_sys::FATAL => &b"FATAL"[..],
            _ => &b""[..],
        };
        if !level.is_empty()
            && EXIT_SLOT >= 0
            && pg_sys::CritSectionCount == 0
            && !e.message.is_null()
        {
            let cause = std::ffi::CStr::from_ptr(e.message).to_bytes();
            let mut buf = [0u8; 256];
            let mut n = 0;
            for part in [&b"writer exited: "[..], level, b": ", cause] {
                let take = part.len().min(buf.len() - n);
                buf[n..n + take].copy_from_slice(&part[..take]);
                n += take;
            }
            if ring::note_exit_error(EXIT_SLOT as usize, &buf[..n], cause) {
                EXIT_ERROR_NOTED = true;
            }
        }
        if let Some(prev) = PREV_EMIT_LOG_HOOK {
            pg_guard_ffi_boundary(|| prev(edata));
        }
    }
}

/// drain_before_exit also waits, briefly, for frames of transactions still committing.
fn drain_before_exit(slot: usize) {
    let started = Instant::now();
    while still_mine(slot) && ring::has_frames(slot) && started.elapsed() < Duration::from_secs(10)
    {
        if !drain(slot).left_some && ring::has_frames(slot) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
