//! worker/subxact.rs: runs part of a worker's transaction in a subtransaction that is rolled
//! back on ERROR, and tells caught errors apart (a transient one says nothing about the
//! records). The writer's stages and the rollups use it to isolate a failure without losing
//! the batch; the PL/pgSQL reader (crate::plpgsql) to compile a body without keeping anything.
//! Holds no state and calls into no other worker module.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// is_transient tells errors that say nothing about the records — a full disk, memory, a lock
/// or statement timeout, a cancel, a deadlock, an I/O error — from those a record may cause.
/// The first kind is retried as it is (with the back-off) however often it happens; isolating
/// records then would only move good ones to the dead letters.
pub(super) fn is_transient(e: &pg_sys::panic::CaughtError) -> bool {
    use PgSqlErrorCode::*;
    let code = error_report(e).sql_error_code();
    // The low 12 bits of an encoded SQLSTATE are its two-character class.
    let class = |c: PgSqlErrorCode| c as u32 & 0xFFF;
    [
        ERRCODE_INSUFFICIENT_RESOURCES,
        ERRCODE_TRANSACTION_ROLLBACK,
        ERRCODE_OPERATOR_INTERVENTION,
        ERRCODE_SYSTEM_ERROR,
    ]
    .into_iter()
    .any(|c| class(c) == class(code))
        || matches!(code, ERRCODE_LOCK_NOT_AVAILABLE | ERRCODE_OBJECT_IN_USE)
}

fn error_report(e: &pg_sys::panic::CaughtError) -> &pg_sys::panic::ErrorReportWithLevel {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r,
    }
}

pub(super) fn error_message(e: &pg_sys::panic::CaughtError) -> String {
    error_report(e).message().to_string()
}

/// in_subtransaction runs `f` in an internal subtransaction and rolls it back on ERROR.
pub(super) fn in_subtransaction(f: impl FnOnce()) -> Result<(), String> {
    try_in_subtransaction(f).map_err(|e| error_message(&e))
}

/// try_in_subtransaction is [`in_subtransaction`] returning the error itself.
pub(super) fn try_in_subtransaction(
    f: impl FnOnce(),
) -> Result<(), Box<pg_sys::panic::CaughtError>> {
    subtransaction(f, true)
}

/// undone_in_subtransaction runs `f` in an internal subtransaction that is rolled back however
/// it ends (what `f` did to the catalog, settings and memory is gone): `f` returns owned data.
/// An ERROR of `f` is returned as its message, except a cancel, a shutdown or a lack of
/// memory, which go on up as they came.
pub(crate) fn undone_in_subtransaction<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    subtransaction(f, false).map_err(|e| {
        use PgSqlErrorCode::*;
        let class = |c: PgSqlErrorCode| c as u32 & 0xFFF;
        let code = class(error_report(&e).sql_error_code());
        if code == class(ERRCODE_OPERATOR_INTERVENTION)
            || code == class(ERRCODE_INSUFFICIENT_RESOURCES)
        {
            e.rethrow()
        }
        error_message(&e)
    })
}

fn subtransaction<T>(
    f: impl FnOnce() -> T,
    keep: bool,
) -> Result<T, Box<pg_sys::panic::CaughtError>> {
    // SAFETY: the pattern PL/pgSQL uses for exception blocks: remember the memory context and
    // resource owner, and restore both whichever way the subtransaction ends.
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| Ok(f())))
            .catch_others(|e| Err(Box::new(e)))
            .execute();
        if result.is_ok() && keep {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}
