//! ring/layout.rs: the rings' shared-memory block and how to reach into it.
//!
//! Owns the block: one [`Control`], `max_databases` [`Slot`]s, then one data area of
//! `buffer_size` bytes per slot; the frame header format; the LWLock tranche (lock 0 for
//! claiming slots, lock 1 + i for slot i); its initialisation in the postmaster; and the
//! accessors every other file of ring/ goes through. Each shared field says what protects it.
//!
//! Runs everywhere: the postmaster initialises the block, every process of the extension reads
//! it. Knows nothing of what the fields mean beyond their protection: producing, consuming,
//! slot assignment and metrics live in the sibling files. The rest of the extension's shared
//! state (crash generation, launcher, staging table) is src/shared/, not here.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PgSharedMemoryInitialization;
use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64};

use super::waiting::Waiting;
use crate::{gucs, shared};

const TRANCHE: &CStr = c"activity_log";
const SHMEM_NAME: &CStr = c"activity_log rings";
pub(super) const LAST_ERROR_LEN: usize = 256;

/// Frame states, in `FrameHeader::state`.
pub(super) const STATE_PENDING: u32 = 1;
pub(super) const STATE_COMMITTED: u32 = 2;
pub(super) const STATE_VOID: u32 = 3;
/// Padding to the end of a data area: only `len` and `state` are written.
pub(super) const STATE_PAD: u32 = 4;

/// Writer lifecycle, in `Slot::writer_state`.
pub const WRITER_NONE: u32 = 0;
pub const WRITER_STARTING: u32 = 1;
pub const WRITER_RUNNING: u32 = 2;

#[repr(C)]
pub(super) struct Control {
    pub nslots: u32,     // set once
    pub slot_bytes: u64, // set once
    /// Databases that staged records while they had no ring (ring/waiting.rs); atomics.
    pub waiting: Waiting,
}

#[repr(C)]
pub(super) struct Slot {
    pub dboid: AtomicU32,              // 0 = free; changed under the control lock
    pub writer_state: AtomicU32,       // WRITER_*; launcher sets STARTING, writer the rest
    pub writer_pid: AtomicI32,         // written by the writer
    pub writer_procno: AtomicI32,      // -1 when no writer; written by the writer
    pub start_requested_at: AtomicI64, // written by the launcher
    pub failures: AtomicU32,           // consecutive failed writer runs; drives the back-off
    pub claim_xid: AtomicU32,          // transaction that last claimed the ring (0: none known)
    pub last_dboid: AtomicU32,         // the database the ring served before its last release
    /// The launcher asks the writer to hand the ring back: another database waits for one.
    pub hand_back_requested: AtomicBool,
    /// Until this time (GetCurrentTimestamp) a flush() waits for the ring: the writer does not
    /// pause (worker/pace.rs). Renewed by the waiter every few ms, so it lapses on its own.
    pub hurry_until: AtomicI64,
    /// The writer is handing the ring back: no new frame is reserved (a committing
    /// transaction stages its records instead), and the ring is released once drained.
    pub closing: AtomicBool,
    /// A backend about to drop the database or the extension stopped the writer: pid of that
    /// backend, 0 when none. The ring keeps its records; the drop releases it at commit, and
    /// an abort lets the launcher start a writer again.
    pub paused_by: AtomicI32,
    /// A session restoring a dump into the database holds the writer off: its pid, 0 when
    /// none (see capture/restore.rs). Cleared by that session, or by the writer once the
    /// session is gone.
    pub restored_by: AtomicI32,
    pub claimed_at: AtomicI64, // when the ring was given to its database
    /// dropped_records the writer has put a gap record in the trail for.
    pub dropped_reported: AtomicU64,
    pub head: AtomicU64, // next byte to reserve; written under the slot lock
    pub tail: AtomicU64, // first byte not yet in the table; written by the writer only
    /// Where the batch the writer is committing ends, from just before its COMMIT until the
    /// tail has moved past it (0 otherwise): a ring released while it is set (an immediate stop
    /// or a crash killed the writer in between) may hold records that are in the trail already,
    /// so they are not spilled (spill.rs) and a gap record says so. Cleared by any orderly
    /// exit of the writer, whose batch then either committed and moved the tail or aborted.
    pub committing_until: AtomicU64,
    /// Durable transactions (see capture/durable.rs) bypass the ring: each one that commits
    /// bumps `staged_commits`; the writer sweeps activity_log.durable_queue when it moved and
    /// then stores the value it read before the sweep in `staged_swept`.
    pub staged_commits: AtomicU64,
    pub staged_swept: AtomicU64,
    pub published_records: AtomicU64,
    pub published_bytes: AtomicU64,
    pub written_records: AtomicU64,
    pub dropped_records: AtomicU64,
    pub batches: AtomicU64,
    pub write_errors: AtomicU64,
    pub overflow_waits: AtomicU64,
    pub last_flush_at: AtomicI64,
    pub last_error_at: AtomicI64,
    pub last_error: UnsafeCell<[u8; LAST_ERROR_LEN]>, // guarded by the slot lock
    /// The last failed batch failed for a reason that says nothing about its records.
    pub last_error_transient: AtomicBool,
    pub max_batch_records: AtomicU64, // written by the writer; zeroed by reset_metrics
    /// reset_metrics(): the counters as they were at `reset_at`, subtracted when shown.
    pub reset_at: AtomicI64,
    pub base: [AtomicU64; COUNTERS],
    /// Two samples (time, published, written) about a window apart, for recent rates;
    /// rolled by the writer.
    pub window: [Sample; 2],
}

#[repr(C)]
pub(super) struct Sample {
    pub at: AtomicI64,
    pub published: AtomicU64,
    pub written: AtomicU64,
}

impl Sample {
    #[allow(clippy::declare_interior_mutable_const)] // only ever copied into shared memory
    pub(super) const ZERO: Sample = Sample {
        at: AtomicI64::new(0),
        published: AtomicU64::new(0),
        written: AtomicU64::new(0),
    };
}

/// The counters reset_metrics resets, in `Slot::base` order.
pub(super) const COUNTERS: usize = 7;

#[repr(C)]
pub(super) struct FrameHeader {
    pub len: u32, // whole frame, header included, multiple of 8
    pub state: AtomicU32,
    pub nrecords: u32,
    pub payload_len: u32, // len minus header and alignment padding
    pub commit_ts: i64,   // written by the producer before it stores COMMITTED
    pub key: u64,         // commit order key (WAL insert position), written at reservation
}
pub(super) const HEADER: u64 = size_of::<FrameHeader>() as u64;
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

fn total_size(nslots: usize, slot_bytes: usize) -> usize {
    size_of::<Control>() + nslots * size_of::<Slot>() + nslots * slot_bytes
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
                if !pg_sys::IsUnderPostmaster {
                    pg_sys::on_shmem_exit(Some(al_rings_exit), pg_sys::Datum::from(0));
                }
                control.write(Control {
                    nslots: n as u32,
                    slot_bytes: slot_bytes as u64,
                    waiting: Waiting::new(),
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
                        claim_xid: AtomicU32::new(0),
                        last_dboid: AtomicU32::new(0),
                        hand_back_requested: AtomicBool::new(false),
                        hurry_until: AtomicI64::new(0),
                        closing: AtomicBool::new(false),
                        paused_by: AtomicI32::new(0),
                        restored_by: AtomicI32::new(0),
                        claimed_at: AtomicI64::new(0),
                        dropped_reported: AtomicU64::new(0),
                        head: AtomicU64::new(0),
                        tail: AtomicU64::new(0),
                        committing_until: AtomicU64::new(0),
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
                // zeroing of a fresh page (a visible share of a bulk DELETE's time with a large
                // ring: bench/bulk_dml.py).
                std::ptr::write_bytes(slots.add(n).cast::<u8>(), 0, n * slot_bytes);
            }
            *self.control.get() = control;
            *self.locks.get() = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
            if !found && !pg_sys::IsUnderPostmaster {
                // Records spilled when shared memory was last released go back into their
                // databases' rings before any backend can publish behind them.
                super::spill::restore_all();
            }
            pg_sys::LWLockRelease(init_lock);
        }
    }
}

/// al_rings_exit runs when the postmaster releases shared memory (at shutdown of any kind that
/// lets the postmaster exit, and before a crash-restart), after every other process of the
/// server has exited: it writes the committed records still in the rings to spill files
/// (spill.rs), and notes in the crash state file (src/shared/state_file.rs) whether anything
/// was lost: records of transactions caught mid-commit, or a spill file that could not be
/// written (a crash-restart's gap records are owed to the trails by src/shared/owed.rs).
#[pg_guard]
unsafe extern "C-unwind" fn al_rings_exit(_code: i32, _arg: pg_sys::Datum) {
    let spilled = super::spill::spill_all();
    let mut lost = spilled.failures;
    if spilled.uncertain > 0 {
        lost.push(format!(
            "{} records a writer was committing when the server stopped (an immediate shutdown or a crash) were not kept: they may be in the trail, or lost",
            spilled.uncertain
        ));
    }
    if spilled.pending > 0 {
        lost.push(format!(
            "{} records of transactions that were committing when the server stopped (an immediate shutdown or a crash) may be lost",
            spilled.pending
        ));
    }
    if lost.is_empty() {
        shared::note_drained();
    } else {
        shared::note_lost(&lost.join("; "));
    }
}

/// init registers the shared-memory hooks; `_PG_init` calls it while preloading.
pub fn init() {
    pgrx::pg_shmem_init!(SHMEM = ());
}

/*---- safe accessors over the raw region ----*/

pub(super) fn control() -> &'static Control {
    // SAFETY: set in the startup hook of every process that loaded us via preload.
    unsafe { &**SHMEM.control.get() }
}

pub(super) fn slot(i: usize) -> &'static Slot {
    let c = control();
    assert!(i < c.nslots as usize);
    // SAFETY: slots follow the control block; i is in range.
    unsafe { &*(std::ptr::from_ref(c).add(1).cast::<Slot>().add(i)) }
}

pub(super) fn data(i: usize) -> *mut u8 {
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

pub(super) struct LockGuard(*mut pg_sys::LWLock);
impl LockGuard {
    pub(super) fn exclusive(index: usize) -> Self {
        // SAFETY: the tranche has nslots + 1 locks and index is checked by the callers.
        unsafe {
            let lock = &raw mut (*(*SHMEM.locks.get()).add(index)).lock;
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            LockGuard(lock)
        }
    }

    /// try_exclusive takes the lock only if that needs no wait: for error reporting and exit
    /// callbacks, where this process may itself hold it (an ERROR raised between acquire and
    /// release is not released until the exit's LWLockReleaseAll), and waiting would hang it.
    pub(super) fn try_exclusive(index: usize) -> Option<Self> {
        // SAFETY: as in exclusive; the conditional acquire never waits.
        unsafe {
            let lock = &raw mut (*(*SHMEM.locks.get()).add(index)).lock;
            pg_sys::LWLockConditionalAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE)
                .then_some(LockGuard(lock))
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

pub(super) fn header(slot_index: usize, pos: u64) -> *mut FrameHeader {
    // SAFETY: pos is a frame start inside [tail, head) of this slot.
    unsafe { data(slot_index).add((pos % capacity()) as usize).cast() }
}
