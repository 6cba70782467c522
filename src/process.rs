//! process: what kind of process this is, for the whole process's life.
//!
//! Plain flags and reads of PostgreSQL's process globals, no state of a session or a
//! statement: whether the library was preloaded (set in the postmaster, inherited by every
//! child), whether this is one of activity_log's own background workers (whose writes are never
//! captured), whether it is a logical replication worker, and whether its errors are a user's
//! failed statements. `capture` asks them; `worker` and `api` set or read them without
//! depending on `capture`.

use pgrx::pg_sys;

use crate::unguarded;

/// True when `_PG_init` ran from shared_preload_libraries; inherited by every child process.
static mut PRELOADED: bool = false;

/// Set in activity_log's own background workers, whose writes are never captured.
static mut IN_OWN_WORKER: bool = false;

/// mark_preloaded notes that `_PG_init` ran from shared_preload_libraries.
pub fn mark_preloaded() {
    // SAFETY: single-threaded postmaster start-up.
    unsafe { PRELOADED = true };
}

pub fn preloaded() -> bool {
    // SAFETY: written once in the postmaster before any backend exists.
    unsafe { PRELOADED }
}

/// mark_own_worker turns capture off for the calling process (the launcher and writers).
pub fn mark_own_worker() {
    // SAFETY: single-threaded process; written once at worker start.
    unsafe { IN_OWN_WORKER = true };
}

/// in_own_worker tells whether this is the launcher or a writer.
pub fn in_own_worker() -> bool {
    // SAFETY: read of a process-local global, written once at worker start.
    unsafe { IN_OWN_WORKER }
}

/// runs_statements_for_a_user tells whether this process's errors are failed statements of a
/// user: client backends, background workers (pg_cron's jobs, say) and walsenders of
/// `replication=database` connections; not autovacuum (a cancelled task is the server's
/// business) nor the auxiliary processes. Their changes are captured all the same: an index
/// expression can write to a tracked table during an autoanalyze.
pub fn runs_statements_for_a_user() -> bool {
    // SAFETY: reads a process-local global.
    matches!(
        unsafe { pg_sys::MyBackendType },
        pg_sys::BackendType::B_BACKEND
            | pg_sys::BackendType::B_BG_WORKER
            | pg_sys::BackendType::B_WAL_SENDER
    )
}

/// in_logical_worker tells whether this process is a logical replication apply or tablesync
/// worker (or, from PostgreSQL 16, a parallel apply worker).
pub fn in_logical_worker() -> bool {
    // SAFETY: reads of process-local globals; IsLogicalWorker only compares a pointer.
    unsafe {
        pg_sys::MyBackendType == pg_sys::BackendType::B_BG_WORKER && unguarded::IsLogicalWorker()
    }
}
