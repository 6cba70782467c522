//! ring/slots.rs: which database a ring serves, and the state of its writer.
//!
//! Owns a slot's life apart from its frames: claiming a free ring for a database and
//! releasing it; the list of databases waiting for one (waiting.rs) and the hand-back that
//! frees one for them; the writer's registration and failures (the launcher's back-off);
//! pausing the writer for a drop; holding it off during a restore; waking it.
//!
//! Runs in backends (claim at the first record, release and pause around a drop), the
//! launcher and the writers. Claiming and releasing take the control lock (lock 0) and then
//! the slot's lock; `stop_writer_for_drop` waits (cancellably) in the dropping backend;
//! everything else is atomics and latches, callable from commit and abort paths
//! (`note_waiting`, `resume`, `end_restore_hold`, `wake_writer`). Must not touch frame
//! contents beyond counting them on release (consume.rs).

use pgrx::pg_sys;
use std::sync::atomic::Ordering::*;

use super::consume::{count_records, head, tail};
use super::layout::{
    LockGuard, WRITER_NONE, WRITER_RUNNING, WRITER_STARTING, control, slot, slot_count,
};
use super::metrics::count_drop;
use super::produce::commit_staged;
use crate::shared::{self, set_latch, wait_a_moment, wake_launcher};

/*---- claiming, releasing, handing back ----*/

/// slot_of finds the slot that belongs to `dboid`, without taking a lock.
pub fn slot_of(dboid: u32) -> Option<usize> {
    if dboid == 0 {
        return None; // a process connected to no database has no trail
    }
    (0..slot_count()).find(|&i| slot(i).dboid.load(Acquire) == dboid)
}

/// claim returns the slot of `dboid`, taking a free one if it has none. `xid` is the claiming
/// transaction's id when it may have created the extension itself (0 otherwise): a writer that
/// does not see the extension yet must not release a ring whose claimer is still running.
pub fn claim(dboid: u32, xid: u32) -> Option<usize> {
    let _g = LockGuard::exclusive(0);
    if let Some(i) = slot_of(dboid) {
        if xid != 0 {
            slot(i).claim_xid.store(xid, Release);
        }
        return Some(i);
    }
    // Prefer the ring this database had before (its counters continue), else any free one.
    let free = |i: usize| slot(i).dboid.load(Acquire) == 0;
    let i = (0..slot_count())
        .find(|&i| free(i) && slot(i).last_dboid.load(Relaxed) == dboid)
        .or_else(|| (0..slot_count()).find(|&i| free(i)))?;
    let s = slot(i);
    if s.last_dboid.load(Relaxed) != dboid {
        // A ring that served another database starts from zero.
        for c in [
            &s.published_records,
            &s.published_bytes,
            &s.written_records,
            &s.dropped_records,
            &s.batches,
            &s.write_errors,
            &s.overflow_waits,
            &s.dropped_reported,
        ] {
            c.store(0, Relaxed);
        }
        s.last_flush_at.store(0, Relaxed);
        s.last_error_at.store(0, Relaxed);
        s.failures.store(0, Relaxed);
        // A drop that paused the writer of the database the ring served before, and has not
        // ended yet, holds up no other database: its commit or abort finds the ring serving
        // another one and leaves it alone.
        s.paused_by.store(0, Relaxed);
        let _g = LockGuard::exclusive(i + 1);
        // SAFETY: guarded by the slot lock.
        unsafe {
            (*s.last_error.get())[0] = 0;
        }
    }
    // A writer start asked for the database this ring served before, which never attached
    // (that database was dropped meanwhile): not this database's, whose writer the launcher
    // starts now rather than after the 30 s a failed start is given.
    let _ = s
        .writer_state
        .compare_exchange(WRITER_STARTING, WRITER_NONE, AcqRel, Acquire);
    // The new writer sweeps durable_queue once before anything waits on it: after a crash it
    // may hold transactions that committed while no ring existed.
    s.staged_commits.store(1, Relaxed);
    s.staged_swept.store(0, Relaxed);
    s.claim_xid.store(xid, Release);
    s.hand_back_requested.store(false, Relaxed);
    s.closing.store(false, Relaxed);
    s.restored_by.store(0, Relaxed);
    // SAFETY: reads the clock.
    s.claimed_at
        .store(unsafe { pg_sys::GetCurrentTimestamp() }, Relaxed);
    s.dboid.store(dboid, Release);
    // What the database lost while it waited is this ring's to report (a gap record).
    let lost = control().waiting.remove(dboid);
    s.dropped_records.fetch_add(lost, Release);
    Some(i)
}

/// note_waiting puts `dboid` on the list of databases waiting for a ring and wakes the
/// launcher. Atomics and a latch: callable after commit.
pub fn note_waiting(dboid: u32) {
    control().waiting.note(dboid);
    wake_launcher();
}

/// waiting_databases lists the databases waiting for a ring.
pub fn waiting_databases() -> Vec<u32> {
    control().waiting.databases()
}

/// stop_waiting takes `dboid` off the waiting list: it has a ring now (which takes over what it
/// lost while it waited), or it is gone.
pub fn stop_waiting(dboid: u32) {
    let lost = control().waiting.remove(dboid);
    match slot_of(dboid) {
        Some(i) => count_drop(i, lost),
        None => shared::count_unassigned_drop(lost),
    }
}

/// count_waiting_drop counts `records` lost by `dboid` while it has no ring; its next ring
/// reports them.
pub fn count_waiting_drop(dboid: u32, records: u64) {
    if !control().waiting.note_dropped(dboid, records) {
        shared::count_unassigned_drop(records);
    }
    wake_launcher();
}

/// serves tells whether slot `i` is `dboid`'s ring and takes frames (is not being handed back).
pub fn serves(i: usize, dboid: u32) -> bool {
    let s = slot(i);
    s.dboid.load(Acquire) == dboid && !s.closing.load(Acquire)
}

pub fn closing(i: usize) -> bool {
    slot(i).closing.load(Acquire)
}

/// request_sweep makes the writer of slot `i` sweep durable_queue (again): its database
/// staged transactions that no commit counted in this slot.
pub fn request_sweep(i: usize) {
    commit_staged(i, 0);
}

/// request_hand_back asks the writer of slot `i` to hand its ring back.
pub fn request_hand_back(i: usize) {
    slot(i).hand_back_requested.store(true, Release);
    wake_writer(i);
}

pub fn hand_back_requested(i: usize) -> bool {
    slot(i).hand_back_requested.load(Acquire)
}

/// How long one call of [`hurry`] keeps the writer from pausing, in µs.
const HURRY_US: i64 = 20_000;

/// hurry tells the writer of ring `i` that someone waits for its records: it stops pausing
/// (worker/pace.rs) for the next 20 ms; a waiter calls it again while it waits.
fn hurry(i: usize) {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    slot(i).hurry_until.store(now + HURRY_US, Relaxed);
}

/// hurried tells whether someone waits for ring `i`'s records now (see [`hurry`]). A time
/// further ahead than one hurry lasts was set before the clock stepped back: it is over.
pub fn hurried(i: usize) -> bool {
    // SAFETY: reads the clock.
    let left = slot(i).hurry_until.load(Relaxed) - unsafe { pg_sys::GetCurrentTimestamp() };
    (1..=HURRY_US).contains(&left)
}

/// wait_for_writer is how a process waits for ring `i`'s writer to store what is queued: it
/// hurries the writer, wakes it, and sleeps up to 5 ms (serving interrupts).
pub fn wait_for_writer(i: usize) {
    hurry(i);
    wake_writer(i);
    wait_a_moment();
}

/// claimed_at is when slot `i` was given to its database: with the shared memory's start it
/// tells one turn of a database on a ring from any other, so it marks the staged rows that
/// this turn's ring announces (see capture/xact.rs, `announce`).
pub fn claimed_at(i: usize) -> i64 {
    slot(i).claimed_at.load(Relaxed)
}

/// close stops new reservations in slot `i`: from now on its database's transactions stage
/// their records (reserve says Gone). Frames reserved before stay and are drained.
pub fn close(i: usize) {
    let _s = LockGuard::exclusive(i + 1);
    slot(i).closing.store(true, Release);
}

/// release_closed frees slot `i` after [`close`] once every frame is stored: false while some
/// are still there.
pub fn release_closed(i: usize) -> bool {
    let s = slot(i);
    {
        let _s = LockGuard::exclusive(i + 1);
        if s.tail.load(Acquire) != s.head.load(Acquire) {
            return false;
        }
    }
    release(i);
    true
}

/// release frees the slot of a database that no longer has the extension; its records go.
pub fn release(i: usize) {
    let _c = LockGuard::exclusive(0);
    let _s = LockGuard::exclusive(i + 1);
    release_held(i);
}

/// release_held is [`release`] for a caller holding the control lock and the slot's lock;
/// returns the records discarded.
fn release_held(i: usize) -> u64 {
    let s = slot(i);
    let head = s.head.load(Acquire);
    let lost = count_records(i, s.tail.load(Acquire), head);
    s.dropped_records.fetch_add(lost, Relaxed);
    // Positions only ever grow: a producer that reserved before the release still owns its
    // frame's bytes (behind the new tail) until it marks it, and nobody reads them again.
    s.tail.store(head, Release);
    s.last_dboid.store(s.dboid.load(Acquire), Relaxed);
    s.dboid.store(0, Release);
    // The writer sees its ring gone when it wakes, and exits.
    set_latch(s.writer_procno.load(Acquire));
    lost
}

/// release_database frees the slot of a database that DROP DATABASE removed, as [`release`],
/// and makes the ring forget that it served it: a database created later with the same oid
/// (CREATE DATABASE … OID) starts from zero counters and no restore note, instead of reporting
/// the dropped one's drops and kept spill files in its own trail.
pub fn release_database(i: usize) {
    let _c = LockGuard::exclusive(0);
    let _s = LockGuard::exclusive(i + 1);
    release_forgetting(i);
}

/// release_forgetting is [`release_held`] for a database that is gone: the ring forgets it
/// served it.
fn release_forgetting(i: usize) -> u64 {
    let lost = release_held(i);
    slot(i).last_dboid.store(0, Relaxed);
    lost
}

/// forget_database discards what the rings hold for `dboid`, a database that no longer exists
/// (a database of that oid is being created): its place on the waiting list, without counting
/// what it lost meanwhile against anybody, and its ring, freed as by [`release_database`].
/// Returns the records discarded.
pub fn forget_database(dboid: u32) -> u64 {
    control().waiting.remove(dboid);
    let _c = LockGuard::exclusive(0);
    let Some(i) = slot_of(dboid) else {
        return 0;
    };
    let _s = LockGuard::exclusive(i + 1);
    release_forgetting(i)
}

/// release_dropped frees slot `i` if it still serves `dboid` and its head is still `head`: the
/// launcher read both before it found `dboid` gone from pg_database, so a ring that took frames
/// since (a database created meanwhile with the same oid, whose records must stay) is left
/// alone. As [`release_database`], the ring forgets the database. Returns the records
/// discarded.
pub fn release_dropped(i: usize, dboid: u32, head: u64) -> Option<u64> {
    let _c = LockGuard::exclusive(0);
    let _s = LockGuard::exclusive(i + 1);
    let s = slot(i);
    if s.dboid.load(Acquire) != dboid || s.head.load(Acquire) != head {
        return None;
    }
    Some(release_forgetting(i))
}

pub fn claim_xid(i: usize) -> u32 {
    slot(i).claim_xid.load(Acquire)
}

pub fn slot_dboid(i: usize) -> u32 {
    slot(i).dboid.load(Acquire)
}

/*---- writer state ----*/

/// wake_writer sets the latch of the slot's writer, or of the launcher when there is none.
pub fn wake_writer(slot_index: usize) {
    let s = slot(slot_index);
    match s.writer_procno.load(Acquire) {
        p if p >= 0 => set_latch(p),
        _ => wake_launcher(),
    }
}

/// writer_pid_of returns the pid of slot `i`'s writer, 0 when none.
pub fn writer_pid_of(i: usize) -> i32 {
    slot(i).writer_pid.load(Acquire)
}

pub fn writer_state(i: usize) -> u32 {
    slot(i).writer_state.load(Acquire)
}

/// mark_starting records that the launcher asked for a writer for slot `i`.
pub fn mark_starting(i: usize, now: i64) {
    let s = slot(i);
    s.start_requested_at.store(now, Release);
    s.writer_state.store(WRITER_STARTING, Release);
}

pub fn start_requested_at(i: usize) -> i64 {
    slot(i).start_requested_at.load(Acquire)
}

/// attach_writer makes the calling process the writer of slot `i`; false if one is running.
pub fn attach_writer(i: usize, pid: i32, procno: i32) -> bool {
    let s = slot(i);
    if s.writer_state.swap(WRITER_RUNNING, AcqRel) == WRITER_RUNNING {
        return false;
    }
    s.writer_pid.store(pid, Release);
    s.writer_procno.store(procno, Release);
    // A writer that was handing the ring back stopped half-way: the ring is its database's
    // again.
    s.hand_back_requested.store(false, Relaxed);
    s.closing.store(false, Release);
    true
}

/// detach_writer clears the writer of slot `i` if it is still `pid`; with pid 0 it only ends
/// a start that never attached. `failed` feeds the launcher's back-off.
pub fn detach_writer(i: usize, pid: i32, failed: bool) {
    let s = slot(i);
    let current = s.writer_pid.load(Acquire);
    if (pid != 0 && current != pid) || (pid == 0 && s.writer_state.load(Acquire) == WRITER_RUNNING)
    {
        return;
    }
    s.writer_procno.store(-1, Release);
    s.writer_pid.store(0, Release);
    // An orderly exit: the batch being committed, if any, committed and moved the tail, or
    // aborted (only a crash or an immediate stop leaves committing_until set).
    s.committing_until.store(0, Release);
    if failed {
        s.failures.fetch_add(1, Relaxed);
    }
    s.writer_state.store(WRITER_NONE, Release);
}

pub fn last_error_transient(i: usize) -> bool {
    slot(i).last_error_transient.load(Relaxed)
}

pub fn reset_failures(i: usize) {
    slot(i).failures.store(0, Relaxed);
}
pub fn failures(i: usize) -> u32 {
    slot(i).failures.load(Relaxed)
}

/*---- pausing for a drop, holding off for a restore ----*/

/// stop_writer_for_drop stops the writer of ring `i` before DROP EXTENSION or DROP DATABASE,
/// so that it holds no lock and no connection the drop needs: it first gives the writer up to
/// `drain` to store what is queued, then pauses the ring (the writer exits at its next wake,
/// keeping the records; the launcher starts none) and waits up to 5 s for it to go. Runs in
/// the dropping backend; every wait can be cancelled. The caller releases the ring at commit
/// ([`release`]) or lets it go on at abort ([`resume`]).
pub fn stop_writer_for_drop(i: usize, dboid: u32, drain: std::time::Duration) {
    let started = std::time::Instant::now();
    let target = head(i);
    // A writer may be starting (the launcher is woken): wait for it too, within `drain`.
    while tail(i) < target && started.elapsed() < drain {
        wait_for_writer(i);
    }
    let s = slot(i);
    {
        // Under the lock claim() takes: a ring freed and given to another database since the
        // caller found it is not paused (that database's writer has nothing to do with the drop).
        let _c = LockGuard::exclusive(0);
        if s.dboid.load(Acquire) != dboid {
            return;
        }
        // SAFETY: reads this process's pid.
        s.paused_by.store(unsafe { pg_sys::MyProcPid }, Release);
    }
    set_latch(s.writer_procno.load(Acquire));
    let started = std::time::Instant::now();
    while writer_pid_of(i) != 0 && started.elapsed() < std::time::Duration::from_secs(5) {
        wait_a_moment();
    }
}

/// paused tells the writer and the launcher that a drop stopped the ring's writer.
pub fn paused(i: usize) -> bool {
    slot(i).paused_by.load(Acquire) != 0
}

pub fn paused_by(i: usize) -> i32 {
    slot(i).paused_by.load(Acquire)
}

/// resume lets the launcher start a writer for the ring again: the drop this backend paused
/// it for ended (another backend's pause stays). Valid in the commit and abort paths: an
/// atomic and a latch.
pub fn resume(i: usize) {
    // SAFETY: reads this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    let _ = slot(i).paused_by.compare_exchange(me, 0, AcqRel, Acquire);
    wake_launcher();
}

/// resume_abandoned lets the launcher start a writer again for a ring whose pausing backend
/// is gone (it could not end its drop).
pub fn resume_abandoned(i: usize, pid: i32) {
    let _ = slot(i).paused_by.compare_exchange(pid, 0, AcqRel, Acquire);
}

/// hold_for_restore keeps the writer of ring `i` from touching the trail while this backend
/// restores a dump into the database (capture/restore.rs).
pub fn hold_for_restore(i: usize) {
    // SAFETY: reads this process's pid.
    slot(i)
        .restored_by
        .store(unsafe { pg_sys::MyProcPid }, Release);
}

/// restored_by is the pid of the backend restoring a dump into the ring's database, 0 when
/// none.
pub fn restored_by(i: usize) -> i32 {
    slot(i).restored_by.load(Acquire)
}

/// end_restore_hold lets the writer go on: the restore of backend `pid` ended (it said so, or
/// it is gone). Another backend's hold stays. An atomic and a latch: callable anywhere.
pub fn end_restore_hold(i: usize, pid: i32) {
    let s = slot(i);
    if s.restored_by
        .compare_exchange(pid, 0, AcqRel, Acquire)
        .is_ok()
    {
        set_latch(s.writer_procno.load(Acquire));
    }
}
