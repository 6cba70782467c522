//! ring: the shared-memory rings that carry committed records from backends to writers.
//!
//! Layout: one [`Control`] block, `max_databases` [`Slot`]s, then one data area of
//! `buffer_size` bytes per slot. A slot belongs to one database while its `dboid` is set, for
//! a turn: databases without one wait on a list (waiting.rs) and the launcher hands rings
//! around (worker/launcher.rs). Many backends produce into a slot; exactly one writer consumes
//! from it. A frame without records is an announcement: it holds the place, in the ring's
//! order, of a transaction whose records are staged in durable_queue (capture/xact.rs).
//!
//! Locking:
//! - the control lock (tranche lock 0) guards claiming and releasing slots (`Slot::dboid`);
//! - each slot's lock (tranche lock 1 + i) guards `head` and the frame headers written at
//!   reservation. It is held only for a few loads and stores: payload copies and state changes
//!   happen outside it, so a commit never waits behind another backend's memcpy.
//! - everything else is an atomic; counters are `Relaxed` and only ever read for metrics.
//!
//! A frame is `[FrameHeader][payload]`, 8-byte aligned. A producer reserves it under the slot
//! lock with state PENDING, copies the payload, and later marks it COMMITTED or VOID. The writer
//! reads from `tail` and stops at the first PENDING frame, so records reach the table in
//! reservation order. `tail` moves only after the writer's insert has committed: a writer that
//! dies mid-batch loses nothing.
//!
//! Commit order key: each frame carries the WAL insert position read under the slot lock when
//! it was reserved (at PRE_COMMIT), so keys never decrease along the ring. A durable_queue row
//! carries the same kind of key, read when it was staged at PRE_COMMIT (capture/durable.rs).
//! A transaction that depends on another (waited for its row lock, or saw its rows) reaches
//! PRE_COMMIT after that one wrote its commit record, so its key is strictly higher; equal
//! keys mean no WAL in between, hence independent transactions. WAL positions only grow, also
//! across crash-restarts, so the key orders staged rows of before a crash before anything
//! after it. The writer stores ring frames and staged rows by this key (worker/writer.rs).
//!
//! Rules: no `palloc`, no `ereport`, no panics in anything a backend calls from its commit or
//! abort path (`commit`, `void`, `wake_writer`).

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PgSharedMemoryInitialization;
use std::cell::{RefCell, UnsafeCell};
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering::*};

use crate::gucs;

mod waiting;
use waiting::Waiting;

const TRANCHE: &CStr = c"activity_log";
const SHMEM_NAME: &CStr = c"activity_log rings";
const LAST_ERROR_LEN: usize = 256;

const STATE_PENDING: u32 = 1;
const STATE_COMMITTED: u32 = 2;
const STATE_VOID: u32 = 3;
const STATE_PAD: u32 = 4;

/// Writer lifecycle, in `Slot::writer_state`.
pub const WRITER_NONE: u32 = 0;
pub const WRITER_STARTING: u32 = 1;
pub const WRITER_RUNNING: u32 = 2;

#[repr(C)]
struct Control {
    nslots: u32,
    /// How many crash-restarts of the postmaster preceded this shared memory; set once.
    crash_generation: u32,
    /// The server's previous run stopped without every ring drained (see STATE_FILE); set once.
    unclean_stop: bool,
    slot_bytes: u64,
    /// When this shared memory was initialised (PostgreSQL timestamp).
    started_at: i64,
    launcher_procno: AtomicI32, // -1 when no launcher; written by the launcher
    launcher_pid: AtomicI32,
    /// Records lost because their database had no ring and they could not be staged (a
    /// standby, or the extension being dropped).
    dropped_unassigned: AtomicU64,
    /// Databases that staged records while they had no ring (ring/waiting.rs).
    waiting: Waiting,
    /// Entries of the staging table after the rings' data: one per backend (MaxBackends).
    staging_entries: u32,
}

/// A backend's transaction between staging its records without an announcement in a ring and
/// counting them in `staged_commits`, which its commit callback does only after the
/// transaction became visible: see [`staging_begins`]. Indexed by the backend's proc number.
#[repr(C)]
struct Staging {
    /// A commit order key at most the transaction's; 0 when the entry is unused.
    key: AtomicU64,
    dboid: AtomicU32,
}

#[repr(C)]
struct Slot {
    dboid: AtomicU32,              // 0 = free; changed under the control lock
    writer_state: AtomicU32,       // WRITER_*; launcher sets STARTING, writer the rest
    writer_pid: AtomicI32,         // written by the writer
    writer_procno: AtomicI32,      // -1 when no writer; written by the writer
    start_requested_at: AtomicI64, // written by the launcher
    failures: AtomicU32,           // consecutive failed writer runs; drives the back-off
    gap_generation: AtomicU32,     // crash_generation the writer has reported a gap for
    claim_xid: AtomicU32,          // transaction that last claimed the ring (0: none known)
    last_dboid: AtomicU32,         // the database the ring served before its last release
    /// The launcher asks the writer to hand the ring back: another database waits for one.
    hand_back_requested: AtomicBool,
    /// The writer is handing the ring back: no new frame is reserved (a committing
    /// transaction stages its records instead), and the ring is released once drained.
    closing: AtomicBool,
    /// A backend about to drop the database or the extension stopped the writer: pid of that
    /// backend, 0 when none. The ring keeps its records; the drop releases it at commit, and
    /// an abort lets the launcher start a writer again.
    paused_by: AtomicI32,
    /// A session restoring a dump into the database holds the writer off: its pid, 0 when
    /// none (see capture/restore.rs). Cleared by that session, or by the writer once the
    /// session is gone.
    restored_by: AtomicI32,
    claimed_at: AtomicI64, // when the ring was given to its database
    /// dropped_records the writer has put a gap record in the trail for.
    dropped_reported: AtomicU64,
    head: AtomicU64, // next byte to reserve; written under the slot lock
    tail: AtomicU64, // first byte not yet in the table; written by the writer only
    /// Durable transactions (see capture/durable.rs) bypass the ring: each one that commits
    /// bumps `staged_commits`; the writer sweeps activity_log.durable_queue when it moved and
    /// then stores the value it read before the sweep in `staged_swept`.
    staged_commits: AtomicU64,
    staged_swept: AtomicU64,
    published_records: AtomicU64,
    published_bytes: AtomicU64,
    written_records: AtomicU64,
    dropped_records: AtomicU64,
    batches: AtomicU64,
    write_errors: AtomicU64,
    overflow_waits: AtomicU64,
    last_flush_at: AtomicI64,
    last_error_at: AtomicI64,
    last_error: UnsafeCell<[u8; LAST_ERROR_LEN]>, // guarded by the slot lock
    /// The last failed batch failed for a reason that says nothing about its records.
    last_error_transient: AtomicBool,
    max_batch_records: AtomicU64, // written by the writer; zeroed by reset_metrics
    /// reset_metrics(): the counters as they were at `reset_at`, subtracted when shown.
    reset_at: AtomicI64,
    base: [AtomicU64; COUNTERS],
    /// Two samples (time, published, written) about a window apart, for recent rates;
    /// rolled by the writer.
    window: [Sample; 2],
}

#[repr(C)]
struct Sample {
    at: AtomicI64,
    published: AtomicU64,
    written: AtomicU64,
}

impl Sample {
    #[allow(clippy::declare_interior_mutable_const)] // only ever copied into shared memory
    const ZERO: Sample = Sample {
        at: AtomicI64::new(0),
        published: AtomicU64::new(0),
        written: AtomicU64::new(0),
    };
}

/// The counters reset_metrics resets, in `Slot::base` order.
const COUNTERS: usize = 7;

/// Recent rates cover the last one to two windows.
const WINDOW_US: i64 = 10_000_000;

#[repr(C)]
struct FrameHeader {
    len: u32, // whole frame, header included, multiple of 8
    state: AtomicU32,
    nrecords: u32,
    payload_len: u32, // len minus header and alignment padding
    commit_ts: i64,   // written by the producer before it stores COMMITTED
    key: u64,         // commit order key (WAL insert position), written at reservation
}
const HEADER: u64 = size_of::<FrameHeader>() as u64;
const _: () = assert!(HEADER == 32);

struct Shmem {
    control: UnsafeCell<*mut Control>,
    locks: UnsafeCell<*mut pg_sys::LWLockPadded>,
}
// SAFETY: the pointers are written once per process, in the shmem startup hook, before any
// other code of ours runs in that process; afterwards they are only read.
unsafe impl Sync for Shmem {}

static SHMEM: Shmem = Shmem {
    control: UnsafeCell::new(std::ptr::null_mut()),
    locks: UnsafeCell::new(std::ptr::null_mut()),
};

/// Counts shared-memory initialisations in the postmaster; more than one means crash-restarts.
static mut INIT_COUNT: u32 = 0;

fn total_size(nslots: usize, slot_bytes: usize) -> usize {
    staging_offset(nslots, slot_bytes) + staging_entries() * size_of::<Staging>()
}

/// Where the staging table starts: after the control block, the slots and the rings' data.
fn staging_offset(nslots: usize, slot_bytes: usize) -> usize {
    (size_of::<Control>() + nslots * size_of::<Slot>() + nslots * slot_bytes)
        .next_multiple_of(align_of::<Staging>())
}

/// One entry per backend: proc numbers of backends and background workers are below
/// MaxBackends (set before shared memory is requested).
fn staging_entries() -> usize {
    // SAFETY: read of a global set at postmaster start.
    unsafe { pg_sys::MaxBackends }.max(0) as usize
}

impl PgSharedMemoryInitialization for Shmem {
    type Value = ();

    unsafe fn on_shmem_request(&'static self) {
        let n = gucs::max_databases();
        unsafe {
            pg_sys::RequestAddinShmemSpace(total_size(n, gucs::ring_bytes()));
            pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), (n + 1) as i32);
        }
    }

    unsafe fn on_shmem_startup(&'static self, _: ()) {
        let n = gucs::max_databases();
        let slot_bytes = gucs::ring_bytes();
        unsafe {
            // AddinShmemInitLock, as pgrx's own shared-memory code takes it.
            let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
            pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let mut found = false;
            let base =
                pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), total_size(n, slot_bytes), &mut found);
            let control = base.cast::<Control>();
            if !found {
                INIT_COUNT += 1;
                let postmaster = !pg_sys::IsUnderPostmaster;
                let unclean_stop = postmaster && INIT_COUNT == 1 && previous_stop_was_unclean();
                if postmaster {
                    write_state("running");
                    pg_sys::on_shmem_exit(Some(al_rings_exit), pg_sys::Datum::from(0));
                }
                control.write(Control {
                    nslots: n as u32,
                    crash_generation: INIT_COUNT - 1,
                    unclean_stop,
                    slot_bytes: slot_bytes as u64,
                    started_at: pg_sys::GetCurrentTimestamp(),
                    launcher_procno: AtomicI32::new(-1),
                    launcher_pid: AtomicI32::new(0),
                    dropped_unassigned: AtomicU64::new(0),
                    waiting: Waiting::new(),
                    staging_entries: staging_entries() as u32,
                });
                let slots = control.add(1).cast::<Slot>();
                for i in 0..n {
                    slots.add(i).write(Slot {
                        dboid: AtomicU32::new(0),
                        writer_state: AtomicU32::new(WRITER_NONE),
                        writer_pid: AtomicI32::new(0),
                        writer_procno: AtomicI32::new(-1),
                        start_requested_at: AtomicI64::new(0),
                        failures: AtomicU32::new(0),
                        gap_generation: AtomicU32::new(0),
                        claim_xid: AtomicU32::new(0),
                        last_dboid: AtomicU32::new(0),
                        hand_back_requested: AtomicBool::new(false),
                        closing: AtomicBool::new(false),
                        paused_by: AtomicI32::new(0),
                        restored_by: AtomicI32::new(0),
                        claimed_at: AtomicI64::new(0),
                        dropped_reported: AtomicU64::new(0),
                        head: AtomicU64::new(0),
                        tail: AtomicU64::new(0),
                        staged_commits: AtomicU64::new(0),
                        staged_swept: AtomicU64::new(0),
                        published_records: AtomicU64::new(0),
                        published_bytes: AtomicU64::new(0),
                        written_records: AtomicU64::new(0),
                        dropped_records: AtomicU64::new(0),
                        batches: AtomicU64::new(0),
                        write_errors: AtomicU64::new(0),
                        overflow_waits: AtomicU64::new(0),
                        last_flush_at: AtomicI64::new(0),
                        last_error_at: AtomicI64::new(0),
                        last_error: UnsafeCell::new([0; LAST_ERROR_LEN]),
                        last_error_transient: AtomicBool::new(false),
                        max_batch_records: AtomicU64::new(0),
                        reset_at: AtomicI64::new(0),
                        base: [const { AtomicU64::new(0) }; COUNTERS],
                        window: [const { Sample::ZERO }; 2],
                    });
                }
                // Touch every page of the rings now, once, in the postmaster: otherwise the
                // first pass over each page costs a committing backend a page fault and the
                // zeroing of a fresh page (a tenth of a bulk DELETE's time with a large ring).
                std::ptr::write_bytes(slots.add(n).cast::<u8>(), 0, n * slot_bytes);
                // All-zero Staging entries are unused ones.
                std::ptr::write_bytes(
                    base.cast::<u8>().add(staging_offset(n, slot_bytes)),
                    0,
                    staging_entries() * size_of::<Staging>(),
                );
            }
            *self.control.get() = control;
            *self.locks.get() = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
            pg_sys::LWLockRelease(init_lock);
        }
    }
}

/// In the data directory: "running" while the server runs, "drained" once it stopped with
/// every ring empty. "running" at start means the previous run ended with records possibly
/// in shared memory (an immediate shutdown, a killed postmaster, a power cut): they are lost,
/// and every trail gets a gap record. No file: the first start with activity_log.
const STATE_FILE: &str = "activity_log.state";

fn previous_stop_was_unclean() -> bool {
    std::fs::read_to_string(STATE_FILE).is_ok_and(|s| s.trim() == "running")
}

/// write_state replaces the state file durably; runs in the postmaster only.
fn write_state(state: &str) {
    let written = (|| {
        let tmp = format!("{STATE_FILE}.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("{state}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, STATE_FILE)
    })();
    if let Err(e) = written {
        log!("activity_log: could not write {STATE_FILE}: {e}");
    }
}

/// al_rings_exit runs when the postmaster releases shared memory (at shutdown, and before a
/// crash-restart): it notes a clean stop only if no record is left in any ring.
#[pg_guard]
unsafe extern "C-unwind" fn al_rings_exit(_code: i32, _arg: pg_sys::Datum) {
    let drained = (0..slot_count()).all(|i| {
        let s = slot(i);
        s.dboid.load(Acquire) == 0 || s.head.load(Acquire) == s.tail.load(Acquire)
    });
    if drained {
        write_state("drained");
    }
}

/// init registers the shared-memory hooks; `_PG_init` calls it while preloading.
pub fn init() {
    pgrx::pg_shmem_init!(SHMEM = ());
}

/*---- safe accessors over the raw region ----*/

fn control() -> &'static Control {
    // SAFETY: set in the startup hook of every process that loaded us via preload.
    unsafe { &**SHMEM.control.get() }
}

fn slot(i: usize) -> &'static Slot {
    let c = control();
    assert!(i < c.nslots as usize);
    // SAFETY: slots follow the control block; i is in range.
    unsafe { &*(std::ptr::from_ref(c).add(1).cast::<Slot>().add(i)) }
}

fn data(i: usize) -> *mut u8 {
    let c = control();
    // SAFETY: the data areas follow the slot array; i is in range (checked by slot()).
    unsafe {
        std::ptr::from_ref(slot(c.nslots as usize - 1))
            .add(1)
            .cast::<u8>()
            .cast_mut()
            .add(i * c.slot_bytes as usize)
    }
}

pub fn is_initialised() -> bool {
    // SAFETY: plain read of a pointer written once at startup.
    unsafe { !(*SHMEM.control.get()).is_null() }
}

struct LockGuard(*mut pg_sys::LWLock);
impl LockGuard {
    fn exclusive(index: usize) -> Self {
        // SAFETY: the tranche has nslots + 1 locks and index is checked by the callers.
        unsafe {
            let lock = &raw mut (*(*SHMEM.locks.get()).add(index)).lock;
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            LockGuard(lock)
        }
    }
}
impl Drop for LockGuard {
    fn drop(&mut self) {
        // SAFETY: we acquired it; nothing between acquire and release can raise an ERROR.
        unsafe { pg_sys::LWLockRelease(self.0) };
    }
}

pub fn slot_count() -> usize {
    control().nslots as usize
}
pub fn capacity() -> u64 {
    control().slot_bytes
}
pub fn crash_generation() -> u32 {
    control().crash_generation
}
pub fn unclean_stop() -> bool {
    control().unclean_stop
}
pub fn started_at() -> i64 {
    control().started_at
}

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
        s.gap_generation.store(0, Relaxed);
        let _g = LockGuard::exclusive(i + 1);
        // SAFETY: guarded by the slot lock.
        unsafe { (*s.last_error.get())[0] = 0 };
    }
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
        None => count_unassigned_drop(lost),
    }
}

/// count_waiting_drop counts `records` lost by `dboid` while it has no ring; its next ring
/// reports them.
pub fn count_waiting_drop(dboid: u32, records: u64) {
    if !control().waiting.note_dropped(dboid, records) {
        count_unassigned_drop(records);
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

/// release frees the slot of a database that no longer has the extension; its records go.
pub fn release(i: usize) {
    let _c = LockGuard::exclusive(0);
    let _s = LockGuard::exclusive(i + 1);
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
}

/// stop_writer_for_drop stops the writer of ring `i` before DROP EXTENSION or DROP DATABASE,
/// so that it holds no lock and no connection the drop needs: it first gives the writer up to
/// `drain` to store what is queued, then pauses the ring (the writer exits at its next wake,
/// keeping the records; the launcher starts none) and waits up to 5 s for it to go. Runs in
/// the dropping backend; every wait can be cancelled. The caller releases the ring at commit
/// ([`release`]) or lets it go on at abort ([`resume`]).
pub fn stop_writer_for_drop(i: usize, drain: std::time::Duration) {
    let started = std::time::Instant::now();
    let target = head(i);
    // A writer may be starting (the launcher is woken): wait for it too, within `drain`.
    while tail(i) < target && started.elapsed() < drain {
        wake_writer(i);
        wait_a_moment();
    }
    let s = slot(i);
    // SAFETY: reads this process's pid.
    s.paused_by.store(unsafe { pg_sys::MyProcPid }, Release);
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

/// wait_a_moment sleeps up to 5 ms on the process latch (a writer or the launcher may set it),
/// then serves interrupts: a backend's waits on the pipeline can be cancelled.
pub fn wait_a_moment() {
    // SAFETY: waiting on our own latch.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            5,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

pub fn count_unassigned_drop(records: u64) {
    control().dropped_unassigned.fetch_add(records, Relaxed);
}

/*---- producing ----*/

/// A frame reserved for one transaction, PENDING until [`commit`] or [`void`].
#[must_use]
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    slot: usize,
    pos: u64,
    nrecords: u32,
}

pub enum ReserveError {
    /// No room now; the writer may make some.
    Full,
    /// Larger than the whole ring; it can never fit.
    TooLarge,
    /// The slot was released (the extension was dropped, or the ring handed to another
    /// database) or is being handed back, since it was looked up.
    Gone,
}

fn align8(n: u64) -> u64 {
    (n + 7) & !7
}

/// How much of a ring a frame may fill.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// All of it.
    Whole,
    /// Up to half: frames with application events of roles that are not superusers, so that
    /// a flood of them leaves the other half to everybody's changes and statements.
    Half,
}

/// reserve places a PENDING frame for the concatenation of `parts` in the ring of
/// `slot_index` and copies the parts into it (no intermediate buffer), within `share` of the
/// ring. Safe to call at PRE_COMMIT: it cannot fail half-way.
pub fn reserve(
    slot_index: usize,
    dboid: u32,
    parts: &[&[u8]],
    nrecords: u32,
    share: Share,
) -> Result<Reservation, ReserveError> {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    let cap = capacity();
    let limit = match share {
        Share::Whole => cap,
        Share::Half => cap / 2,
    };
    let need = align8(HEADER + payload_len as u64);
    if need > limit {
        return Err(ReserveError::TooLarge);
    }
    let s = slot(slot_index);
    let base = data(slot_index);
    // Map where the frame will most likely go before taking the lock: a page fault under it
    // would hold up every other committing backend.
    let likely = s.head.load(Relaxed) % cap;
    map(
        slot_index,
        if cap - likely < need { 0 } else { likely },
        need,
    );
    let pos = {
        let _g = LockGuard::exclusive(slot_index + 1);
        if s.dboid.load(Acquire) != dboid || s.closing.load(Acquire) {
            return Err(ReserveError::Gone);
        }
        let mut head = s.head.load(Relaxed);
        let mut tail = s.tail.load(Acquire);
        let mut pad = if cap - head % cap < need {
            cap - head % cap
        } else {
            0
        };
        if pad > 0 && head == tail && pad + need > cap {
            // An empty ring whose head sits too far along for a large frame plus padding:
            // restart at the beginning of the buffer (nothing lies between tail and head).
            head += pad;
            tail = head;
            s.tail.store(head, Release);
            s.head.store(head, Release);
            pad = 0;
        }
        let off = head % cap;
        if cap - (head - tail) < pad + need || (head - tail) + pad + need > limit {
            return Err(ReserveError::Full);
        }
        // SAFETY: [off, off + pad) and the new frame's header lie inside this slot's data area
        // and between head and tail + cap, which no one else reads or writes until head moves.
        unsafe {
            if pad > 0 {
                let p = base.add(off as usize);
                p.cast::<u32>().write(pad as u32);
                (*p.add(4).cast::<AtomicU32>()).store(STATE_PAD, Relaxed);
            }
            let pos = head + pad;
            // Read under the slot lock: keys never decrease along the ring.
            let key = crate::unguarded::GetXLogInsertRecPtr();
            base.add((pos % cap) as usize)
                .cast::<FrameHeader>()
                .write(FrameHeader {
                    len: need as u32,
                    state: AtomicU32::new(STATE_PENDING),
                    nrecords,
                    payload_len: payload_len as u32,
                    commit_ts: 0,
                    key,
                });
            s.head.store(pos + need, Release);
            pos
        }
    };
    map(slot_index, pos % cap, need);
    // SAFETY: the frame [pos, pos + need) is ours alone while it is PENDING.
    unsafe {
        let mut at = base.add((pos % cap + HEADER) as usize);
        for part in parts {
            std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
            at = at.add(part.len());
        }
    }
    Ok(Reservation {
        slot: slot_index,
        pos,
        nrecords,
    })
}

/// The ring is mapped into a process this much at a time (see [`map`]).
const MAP_CHUNK: u64 = 256 * 1024;

thread_local! {
    /// The chunks of the data areas this process has mapped, a bit each (slot by slot).
    static MAPPED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// map maps the chunks of `slot_index`'s data area that [off, off + len) touches into this
/// process, each the first time only. The postmaster touched every page at start, but a
/// process still takes a page fault the first time it touches a page of shared memory: one per
/// 4 kB of frames for every backend and for the writer, until each has gone round the ring
/// once (on this VM 1.4 per pgbench transaction in the backends with a 1 GB ring, each costing
/// far more than its share of one system call).
/// MADV_POPULATE_WRITE (Linux 5.14) maps a whole chunk in one call and changes no contents; on
/// older kernels it fails and the pages fault in as before.
fn map(slot_index: usize, off: u64, len: u64) {
    let cap = capacity();
    let per_slot = cap.div_ceil(MAP_CHUNK);
    let first = off / MAP_CHUNK;
    let last = ((off + len).min(cap) - 1) / MAP_CHUNK;
    MAPPED.with_borrow_mut(|mapped| {
        if mapped.is_empty() {
            mapped.resize((slot_count() as u64 * per_slot).div_ceil(64) as usize, 0);
        }
        for chunk in first..=last {
            let bit = slot_index as u64 * per_slot + chunk;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            if mapped[word] & mask == 0 {
                mapped[word] |= mask;
                let start = chunk * MAP_CHUNK;
                // SAFETY: [start, end) lies inside this slot's data area.
                unsafe {
                    populate(
                        data(slot_index).add(start as usize),
                        (cap.min(start + MAP_CHUNK) - start) as usize,
                    )
                };
            }
        }
    });
}

#[cfg(target_os = "linux")]
unsafe extern "C" {
    fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: std::ffi::c_int)
    -> std::ffi::c_int;
}

/// populate maps the pages of [at, at + len) of shared memory into this process.
#[cfg(target_os = "linux")]
unsafe fn populate(at: *mut u8, len: usize) {
    const MADV_POPULATE_WRITE: std::ffi::c_int = 23;
    const PAGE: usize = 4096;
    let start = (at as usize) & !(PAGE - 1);
    let end = (at as usize + len + PAGE - 1) & !(PAGE - 1);
    // SAFETY: the range lies inside one slot's data area (rounded out to whole pages of the
    // same shared mapping); populating changes no contents.
    unsafe { madvise(start as *mut _, end - start, MADV_POPULATE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
unsafe fn populate(_at: *mut u8, _len: usize) {}

fn header(slot_index: usize, pos: u64) -> *mut FrameHeader {
    // SAFETY: pos is a frame start inside [tail, head) of this slot.
    unsafe { data(slot_index).add((pos % capacity()) as usize).cast() }
}

/// commit makes a reserved frame visible to the writer. Runs after the transaction committed:
/// two stores and a latch, nothing that can fail.
pub fn commit(r: Reservation, commit_ts: i64) {
    let h = header(r.slot, r.pos);
    // SAFETY: the frame is PENDING and ours.
    unsafe {
        (*h).commit_ts = commit_ts;
        (*h).state.store(STATE_COMMITTED, Release);
    }
    let s = slot(r.slot);
    s.published_records.fetch_add(r.nrecords as u64, Relaxed);
    // SAFETY: as above.
    s.published_bytes
        .fetch_add(unsafe { (*h).len } as u64, Relaxed);
    wake_writer_if_needed(r);
}

/// wake_writer_if_needed wakes the writer only when it may be idle because of this frame: the
/// frame is the oldest in the ring (the writer stops at the first uncommitted frame, and a busy
/// writer reaches later ones by itself), or the ring is filling up. Waking it on every commit
/// costs every committing backend a system call.
fn wake_writer_if_needed(r: Reservation) {
    let s = slot(r.slot);
    let tail = s.tail.load(Acquire);
    if tail >= r.pos || s.head.load(Acquire).saturating_sub(tail) > capacity() / 4 {
        wake_writer(r.slot);
    }
}

/// void withdraws a reserved frame of a transaction that aborted after PRE_COMMIT.
pub fn void(r: Reservation) {
    // SAFETY: the frame is PENDING and ours.
    unsafe { (*header(r.slot, r.pos)).state.store(STATE_VOID, Release) };
    wake_writer_if_needed(r);
}

/// commit_staged tells the writer that a committed transaction left its records in
/// activity_log.durable_queue. Runs after the commit: atomics and a latch, nothing that fails.
pub fn commit_staged(slot_index: usize, nrecords: u32) {
    let s = slot(slot_index);
    s.published_records.fetch_add(nrecords as u64, Relaxed);
    // A busy writer sweeps again by itself (drain_staged); only one that had swept everything
    // may be asleep. SeqCst against mark_swept/staged_commits in the writer: each side stores,
    // then loads the other's value, and one of them must see the other's store.
    let before = s.staged_commits.fetch_add(1, SeqCst);
    if before <= s.staged_swept.load(SeqCst) {
        wake_writer(slot_index);
    }
}

/// staging_table is the staging table (see [`Staging`]).
fn staging_table() -> &'static [Staging] {
    let c = control();
    // SAFETY: the table follows the rings' data (see total_size) and was zeroed at
    // initialisation; it lives as long as the shared memory.
    unsafe {
        let at = std::ptr::from_ref(c)
            .cast::<u8>()
            .add(staging_offset(c.nslots as usize, c.slot_bytes as usize));
        std::slice::from_raw_parts(at.cast::<Staging>(), c.staging_entries as usize)
    }
}

/// my_staging is this backend's entry of the staging table, None for a process without one.
fn my_staging() -> Option<&'static Staging> {
    // SAFETY: reads of this process's PGPROC.
    let procno = unsafe {
        if pg_sys::MyProc.is_null() {
            return None;
        }
        (*pg_sys::MyProc).pgprocno
    };
    staging_table().get(usize::try_from(procno).ok()?)
}

/// staging_begins marks this backend's transaction, about to stage its records without an
/// announcement in a ring, until [`staging_ends`] in its commit or abort callback; `key` is at
/// most its commit order key (the WAL insert position before it stages). The writer stores no
/// ring frame with a higher key meanwhile ([`staging_key`]): once the transaction is visible
/// and before its commit callback counts it in `staged_commits`, another transaction may change
/// its rows and commit through the ring, and must not be stored before it.
pub fn staging_begins(dboid: u32, key: u64) {
    // Every backend and background worker has an entry.
    if let Some(e) = my_staging() {
        e.dboid.store(dboid, SeqCst);
        e.key.store(key.max(1), SeqCst);
    }
}

/// staging_ends ends what [`staging_begins`] marked; in the commit callback after
/// `staged_commits` was bumped, so that a writer that no longer sees the mark sees the count.
/// Harmless when nothing was marked.
pub fn staging_ends() {
    if is_initialised()
        && let Some(e) = my_staging()
    {
        e.key.store(0, SeqCst);
    }
}

/// staging_key is the lowest key of the transactions of `dboid` between [`staging_begins`]
/// and [`staging_ends`], None when there are none.
pub fn staging_key(dboid: u32) -> Option<u64> {
    staging_table()
        .iter()
        .filter_map(|e| {
            // The database is stored before the key, and read after it.
            let key = e.key.load(SeqCst);
            (key != 0 && e.dboid.load(SeqCst) == dboid).then_some(key)
        })
        .min()
}

/// count_published adds records that reached the trail without passing a commit callback in
/// this shared memory (staged before a crash-restart).
pub fn count_published(slot_index: usize, records: u64) {
    slot(slot_index)
        .published_records
        .fetch_add(records, Relaxed);
}

/// staged_commits is the count a sweep of durable_queue must reach to include every
/// transaction that has committed so far.
pub fn staged_commits(slot_index: usize) -> u64 {
    slot(slot_index).staged_commits.load(SeqCst)
}

pub fn staged_swept(slot_index: usize) -> u64 {
    slot(slot_index).staged_swept.load(SeqCst)
}

/// mark_swept records that durable_queue held nothing committed before `commits` was read.
pub fn mark_swept(slot_index: usize, commits: u64) {
    slot(slot_index).staged_swept.fetch_max(commits, SeqCst);
}

pub fn count_drop(slot_index: usize, records: u64) {
    slot(slot_index).dropped_records.fetch_add(records, Release);
}

pub fn count_overflow_wait(slot_index: usize) {
    slot(slot_index).overflow_waits.fetch_add(1, Relaxed);
}

fn set_latch(procno: i32) {
    if procno < 0 {
        return;
    }
    // SAFETY: procno is an index into ProcGlobal->allProcs published by a live process; a stale
    // one only wakes whoever took the slot, which is harmless.
    unsafe {
        let proc_ = (*pg_sys::ProcGlobal).allProcs.add(procno as usize);
        pg_sys::SetLatch(&raw mut (*proc_).procLatch);
    }
}

/// wake_writer sets the latch of the slot's writer, or of the launcher when there is none.
pub fn wake_writer(slot_index: usize) {
    let s = slot(slot_index);
    match s.writer_procno.load(Acquire) {
        p if p >= 0 => set_latch(p),
        _ => wake_launcher(),
    }
}

pub fn wake_launcher() {
    set_latch(control().launcher_procno.load(Acquire));
}

/*---- consuming (the writer) ----*/

/// One committed frame copied out of the ring (or, for the writer, a row of durable_queue).
#[derive(Clone)]
pub struct Frame {
    pub commit_ts: i64,
    /// Commit order key (see the module comment); of a staged row, its transaction's.
    pub key: u64,
    /// Where the frame starts in the ring (0 for a staged row).
    pub pos: u64,
    pub nrecords: u32,
    pub payload: Vec<u8>,
    /// Set for a frame the writer took from durable_queue: the row's columns, which its seal
    /// covers; `payload` is then the frame and its seal.
    pub staged: Option<crate::record::StagedRow>,
}

/// A batch read from the ring; pass `end` to [`advance`] once it is stored.
pub struct Batch {
    pub frames: Vec<Frame>,
    pub records: u64,
    pub end: u64,
    /// The batch is one announcement of a transaction staged in pieces: a frame without
    /// records (and a record count of 0) that holds the transaction's place in the ring's
    /// order (see capture/xact.rs, `announce`); its payload is the transaction's frame info.
    /// An announcement of a transaction staged in one row has its record count and goes in
    /// batches like any frame; the writer takes the row into the batch.
    pub announcement: bool,
}

impl Batch {
    /// carried_over counts the records of frames committed before `since`.
    pub fn carried_over(&self, since: i64) -> u64 {
        self.frames
            .iter()
            .filter(|f| f.commit_ts < since)
            .map(|f| f.nrecords as u64)
            .sum()
    }
}

/// read copies committed frames from the tail until `max_records` (whole frames) or the first
/// PENDING frame.
pub fn read(slot_index: usize, max_records: usize) -> Batch {
    let cap = capacity();
    let s = slot(slot_index);
    let head = s.head.load(Acquire);
    let mut pos = s.tail.load(Acquire);
    let mut batch = Batch {
        frames: Vec::new(),
        records: 0,
        end: pos,
        announcement: false,
    };
    while pos < head && (batch.records as usize) < max_records {
        let base = data(slot_index);
        map(slot_index, pos % cap, HEADER);
        // SAFETY: pos is a frame start in [tail, head); its len and state were written before
        // head moved past it (Release/Acquire on head).
        let (len, state) = unsafe {
            let p = base.add((pos % cap) as usize);
            (
                p.cast::<u32>().read() as u64,
                (*p.add(4).cast::<AtomicU32>()).load(Acquire),
            )
        };
        match state {
            STATE_PENDING => break,
            STATE_COMMITTED => {
                let h = header(slot_index, pos);
                // SAFETY: as above.
                let announcement = unsafe { (*h).nrecords } == 0;
                if announcement && !batch.frames.is_empty() {
                    break; // it is a batch of its own
                }
                map(slot_index, pos % cap, len);
                // SAFETY: a COMMITTED frame is immutable until tail passes it.
                unsafe {
                    let start = base.add((pos % cap + HEADER) as usize);
                    let payload =
                        std::slice::from_raw_parts(start, (*h).payload_len as usize).to_vec();
                    batch.records += (*h).nrecords as u64;
                    batch.frames.push(Frame {
                        commit_ts: (*h).commit_ts,
                        key: (*h).key,
                        pos,
                        nrecords: (*h).nrecords,
                        payload,
                        staged: None,
                    });
                }
                if announcement {
                    batch.announcement = true;
                    batch.end = pos + len;
                    break;
                }
            }
            _ => {} // PAD or VOID
        }
        pos += len;
        batch.end = pos;
    }
    batch
}

impl Batch {
    /// cut_above drops the frames whose key is above `key`, and what follows them: staged
    /// transactions up to `key` must be stored first. The batch then ends where the first
    /// dropped frame starts.
    pub fn cut_above(&mut self, key: u64) {
        if let Some(i) = self.frames.iter().position(|f| f.key > key) {
            self.end = self.frames[i].pos;
            self.frames.truncate(i);
            self.records = self.frames.iter().map(|f| f.nrecords as u64).sum();
            self.announcement = self.announcement && !self.frames.is_empty();
        }
    }
}

/// next_key is the commit order key below which no frame can come to the ring any more: the
/// key of its oldest frame not yet stored (committed, pending or withdrawn), or, when it holds
/// none, the WAL insert position now (a frame reserved later reads a position at least as
/// high). The writer stores staged transactions with keys up to it before the ring's frames.
pub fn next_key(slot_index: usize) -> u64 {
    let cap = capacity();
    let s = slot(slot_index);
    let _g = LockGuard::exclusive(slot_index + 1);
    let (mut pos, head) = (s.tail.load(Acquire), s.head.load(Acquire));
    while pos < head {
        map(slot_index, pos % cap, HEADER);
        // SAFETY: a frame start in [tail, head), read under the slot lock (its header was
        // written under it, and the frame cannot be reused before tail passes it).
        unsafe {
            let p = data(slot_index).add((pos % cap) as usize);
            let len = p.cast::<u32>().read() as u64;
            if (*p.add(4).cast::<AtomicU32>()).load(Acquire) != STATE_PAD {
                return (*p.cast::<FrameHeader>()).key;
            }
            pos += len.max(8);
        }
    }
    // SAFETY: reads the WAL insert position; no ERROR.
    unsafe { crate::unguarded::GetXLogInsertRecPtr() }
}

/// advance frees the ring up to `end` after the batch read up to it is committed; a no-op if
/// the ring was released (and possibly reused) meanwhile.
pub fn advance(slot_index: usize, dboid: u32, end: u64, records: u64) {
    let s = slot(slot_index);
    {
        let _g = LockGuard::exclusive(slot_index + 1);
        if s.dboid.load(Acquire) != dboid || end <= s.tail.load(Acquire) {
            return; // released (and maybe reused) meanwhile, or already past this point
        }
        s.tail.store(end, Release);
    }
    if records > 0 {
        count_written(slot_index, records); // else only withdrawn frames or padding
    }
}

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

/// has_frames tells whether anything, committed or pending, waits in the ring.
pub fn has_frames(slot_index: usize) -> bool {
    let s = slot(slot_index);
    s.tail.load(Acquire) < s.head.load(Acquire)
}

pub fn head(slot_index: usize) -> u64 {
    slot(slot_index).head.load(Acquire)
}
pub fn tail(slot_index: usize) -> u64 {
    slot(slot_index).tail.load(Acquire)
}

/// count_records counts the records of committed and pending frames in [from, to).
fn count_records(slot_index: usize, from: u64, to: u64) -> u64 {
    let cap = capacity();
    let (mut pos, mut n) = (from, 0);
    while pos < to {
        // SAFETY: frame starts in [tail, head), read under the slot lock.
        let (len, state, nrec) = unsafe {
            let p = data(slot_index).add((pos % cap) as usize);
            let len = p.cast::<u32>().read() as u64;
            let state = (*p.add(4).cast::<AtomicU32>()).load(Acquire);
            let nrec = if state == STATE_PAD {
                0
            } else {
                (*p.cast::<FrameHeader>()).nrecords
            };
            (len, state, nrec)
        };
        if state == STATE_COMMITTED || state == STATE_PENDING {
            n += nrec as u64;
        }
        pos += len;
    }
    n
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

/*---- writer and launcher registration ----*/

pub fn set_launcher(procno: i32, pid: i32) {
    let c = control();
    c.launcher_pid.store(pid, Release);
    c.launcher_procno.store(procno, Release);
}

pub fn launcher_pid() -> i32 {
    control().launcher_pid.load(Acquire)
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
pub fn claim_xid(i: usize) -> u32 {
    slot(i).claim_xid.load(Acquire)
}

pub fn slot_dboid(i: usize) -> u32 {
    slot(i).dboid.load(Acquire)
}

/// take_gap tells the writer of slot `i` whether it still has to report a crash-restart gap.
pub fn take_gap(i: usize) -> bool {
    let g = crash_generation() + unclean_stop() as u32;
    g > 0 && slot(i).gap_generation.swap(g, AcqRel) != g
}

/*---- metrics ----*/

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

pub fn dropped_unassigned() -> u64 {
    control().dropped_unassigned.load(Relaxed)
}
