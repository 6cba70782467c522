//! shared: the extension's shared memory that is not a ring, one block per server.
//!
//! Named for what it is: the state every process of the extension shares besides the rings
//! (src/ring/), which carry records and nothing else. It owns:
//! - this shared memory's identity: when it was initialised and how many crash-restarts
//!   preceded it; whether the previous run stopped with records left in a ring (the crash
//!   state file, state_file.rs), and the gap records owed to the trails (owed.rs);
//! - where the launcher is (pid and proc number), so that anyone can wake it;
//! - records lost because their database had no ring and could not stage them;
//! - the per-backend staging table of transactions staged without an announcement
//!   (staging.rs), which holds ring frames back in the writer.
//!
//! Runs everywhere: the postmaster initialises the block once per shared-memory lifetime;
//! backends, the launcher and writers read and write it. Everything after initialisation is an
//! atomic or a latch: no lock, no `palloc`, no `ereport`, no panic, so all of it is callable
//! from a commit or abort path, except [`wait_a_moment`], which serves interrupts (a cancel
//! raises an ERROR there), and owed.rs, which reads and writes a file and logs (the launcher,
//! writers and CREATE DATABASE call it, never a commit path). Must not know about rings: src/ring/ uses this module, never the
//! other way round.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PgSharedMemoryInitialization;
use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::*};

mod owed;
mod staging;
mod state_file;

pub use owed::{Owed, forgive, owe, owed_to, paid, settle_databases};
use staging::Staging;
pub use staging::{staging_begins, staging_ends, staging_key};
pub use state_file::{note_drained, note_lost, recovery_signal, started_from_base_backup};

const SHMEM_NAME: &CStr = c"activity_log shared state";

#[repr(C)]
struct State {
    /// How many crash-restarts of the postmaster preceded this shared memory; set once.
    crash_generation: u32,
    /// When this shared memory was initialised (PostgreSQL timestamp); set once.
    started_at: i64,
    launcher_procno: AtomicI32, // -1 when no launcher; written by the launcher
    launcher_pid: AtomicI32,    // written by the launcher
    /// Records lost because their database had no ring and they could not be staged (a
    /// standby, or the extension being dropped). Lock-free; read by activity_log's metrics.
    dropped_unassigned: AtomicU64,
    /// Entries of the staging table after this block: one per backend (MaxBackends); set once.
    staging_entries: u32,
}

struct Shmem(UnsafeCell<*mut State>);
// SAFETY: the pointer is written once per process, in the shmem startup hook, before any other
// code of ours runs in that process; afterwards it is only read.
unsafe impl Sync for Shmem {}

static SHMEM: Shmem = Shmem(UnsafeCell::new(std::ptr::null_mut()));

/// Counts shared-memory initialisations in the postmaster; more than one means crash-restarts.
static mut INIT_COUNT: u32 = 0;

/// What the postmaster noted when it last released shared memory before a crash-restart:
/// what was lost (None: nothing). Postmaster memory, read when shared memory is made anew.
static LAST_RELEASE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// note_release keeps what the rings' exit callback found for the shared memory made after a
/// crash-restart; postmaster only.
fn note_release(loss: Option<String>) {
    *LAST_RELEASE.lock().unwrap_or_else(|e| e.into_inner()) = loss;
}

/// Where the staging table starts: after the state block.
fn staging_offset() -> usize {
    size_of::<State>().next_multiple_of(align_of::<Staging>())
}

/// One entry per backend: proc numbers of backends and background workers are below
/// MaxBackends (set before shared memory is requested).
fn staging_entries() -> usize {
    // SAFETY: read of a global set at postmaster start.
    unsafe { pg_sys::MaxBackends }.max(0) as usize
}

fn total_size() -> usize {
    staging_offset() + staging_entries() * size_of::<Staging>()
}

impl PgSharedMemoryInitialization for Shmem {
    type Value = ();

    unsafe fn on_shmem_request(&'static self) {
        unsafe { pg_sys::RequestAddinShmemSpace(total_size()) };
    }

    unsafe fn on_shmem_startup(&'static self, _: ()) {
        unsafe {
            // AddinShmemInitLock, as pgrx's own shared-memory code takes it.
            let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
            pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let mut found = false;
            let base = pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), total_size(), &mut found);
            let state = base.cast::<State>();
            if !found {
                INIT_COUNT += 1;
                let postmaster = !pg_sys::IsUnderPostmaster;
                // SAFETY: reads the clock.
                let started_at = pg_sys::GetCurrentTimestamp();
                if postmaster {
                    // At the first start: what the previous run of the server lost; after a
                    // crash-restart: what the release of the shared memory before it lost.
                    // Each trail is owed a gap record of it; a crash-restart gets one even
                    // when it lost nothing, as the moment the server's processes were killed,
                    // except on a standby, which captures nothing then.
                    let restarted = INIT_COUNT > 1;
                    let loss = if restarted {
                        LAST_RELEASE
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone()
                    } else {
                        state_file::previous_stop_loss()
                    };
                    let incident = owed::Incident {
                        crash_restarts: INIT_COUNT - 1,
                        unclean_stop: loss.is_some(),
                    };
                    let reason = match (restarted, &loss) {
                        (true, Some(l)) => Some(format!("the server restarted after a crash; {l}")),
                        (true, None) if recovery_signal().is_some() => None,
                        (true, None) => Some("the server restarted after a crash; the committed records that were in shared memory were kept".to_string()),
                        (false, l) => l.clone(),
                    };
                    owed::new_shared_memory(started_at, reason.map(|r| (incident, r)));
                    state_file::write_state("running");
                }
                state.write(State {
                    crash_generation: INIT_COUNT - 1,
                    started_at,
                    launcher_procno: AtomicI32::new(-1),
                    launcher_pid: AtomicI32::new(0),
                    dropped_unassigned: AtomicU64::new(0),
                    staging_entries: staging_entries() as u32,
                });
                // All-zero Staging entries are unused ones.
                std::ptr::write_bytes(
                    base.cast::<u8>().add(staging_offset()),
                    0,
                    staging_entries() * size_of::<Staging>(),
                );
            }
            *self.0.get() = state;
            pg_sys::LWLockRelease(init_lock);
        }
    }
}

/// init registers the shared-memory hooks; `_PG_init` calls it while preloading.
pub fn init() {
    pgrx::pg_shmem_init!(SHMEM = ());
}

fn state() -> &'static State {
    // SAFETY: set in the startup hook of every process that loaded us via preload.
    unsafe { &**SHMEM.0.get() }
}

fn is_initialised() -> bool {
    // SAFETY: plain read of a pointer written once at startup.
    unsafe { !(*SHMEM.0.get()).is_null() }
}

/*---- this shared memory's identity ----*/

pub fn crash_generation() -> u32 {
    state().crash_generation
}
pub fn started_at() -> i64 {
    state().started_at
}

/*---- records lost without a ring ----*/

pub fn count_unassigned_drop(records: u64) {
    state().dropped_unassigned.fetch_add(records, Relaxed);
}

pub fn dropped_unassigned() -> u64 {
    state().dropped_unassigned.load(Relaxed)
}

/*---- the launcher, and latches ----*/

pub fn set_launcher(procno: i32, pid: i32) {
    let c = state();
    c.launcher_pid.store(pid, Release);
    c.launcher_procno.store(procno, Release);
}

pub fn launcher_pid() -> i32 {
    state().launcher_pid.load(Acquire)
}

pub fn wake_launcher() {
    set_latch(state().launcher_procno.load(Acquire));
}

/// set_latch wakes the process with proc number `procno`; nothing when it is negative.
pub fn set_latch(procno: i32) {
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
