//! capture/context.rs: the session and the statement a record is made in.
//!
//! Runs in every backend, on the write path. Owns what the hooks (hooks.rs) note about the
//! running statement and what every other part of capture asks about it:
//!
//! - whether this process and session capture at all ([`capturing`]: not in our own workers,
//!   parallel workers, binary upgrade, recovery, nor while a dump is restored);
//! - the statement nesting depth ([`Nested`], a guard: the depth is restored however the
//!   statement ends, an ERROR's unwinding included);
//! - the top-level statement an error or a change record is attributed to ([`current_query`]);
//! - running internal SQL with the extension owner's rights ([`as_extension_owner`], [`as_role`]).
//!
//! Who is acting (the record's `Origin`, the client address) is origin.rs's.

use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::ffi::c_int;
use std::rc::Rc;

use super::origin::{borrowed_cstr, clip};
use super::restore;
use crate::gucs;
use crate::process;
use crate::record::StatementClass;

/// What an error report is attributed to: the top-level statement that was running.
pub(super) struct Attribution {
    pub(super) command: &'static [u8],
    // Shared with the statement's Running entry and lent to each of its change records.
    pub(super) query: Rc<[u8]>,
    pub(super) class: StatementClass,
}

thread_local! {
    pub(super) static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The statement an error report should be attributed to.
    pub(super) static CURRENT: RefCell<Option<Attribution>> = const { RefCell::new(None) };
    /// Set once recovery is seen to be over: it does not come back in this process.
    static RECOVERY_DONE: Cell<bool> = const { Cell::new(false) };
}

/// While alive, statements run by this backend are nested (not top-level) statements.
pub struct Nested;
impl Nested {
    pub fn enter() -> Self {
        DEPTH.set(DEPTH.get() + 1);
        Nested
    }
}
impl Drop for Nested {
    fn drop(&mut self) {
        DEPTH.set(DEPTH.get() - 1);
    }
}

/// as_extension_owner runs `f` with the rights of the bootstrap superuser, who owns the
/// extension's objects: the way a SECURITY DEFINER function of the extension would run, for
/// the internal functions the capture calls on anybody's behalf and PUBLIC may not execute.
/// The user id is restored however `f` ends (an ERROR's abort restores it too).
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    as_role(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), false, f)
}

/// as_role runs `f` as `role` (a local user id change, as SECURITY DEFINER makes), and with
/// `restricted` inside a security-restricted operation, where SET ROLE and the like are
/// refused (as REFRESH MATERIALIZED VIEW runs a view's query). The user id and context are
/// restored however `f` ends (an ERROR's abort restores them too).
pub fn as_role<R>(role: pg_sys::Oid, restricted: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, c_int);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: puts back what GetUserIdAndSecContext returned.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    let mut flags = pg_sys::SECURITY_LOCAL_USERID_CHANGE as c_int;
    if restricted {
        flags |= pg_sys::SECURITY_RESTRICTED_OPERATION as c_int;
    }
    // SAFETY: what fmgr_security_definer does around a SECURITY DEFINER call.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(role, context | flags);
    }
    let _restore = Restore(user, context);
    f()
}

/// capturing tells whether this process records anything at all.
pub fn capturing() -> bool {
    // SAFETY: reads of process-local globals.
    unsafe {
        !process::in_own_worker()
            && pg_sys::ParallelWorkerNumber < 0
            && !pg_sys::IsBinaryUpgrade
            && crate::ring::is_initialised()
            && !in_recovery() // a standby runs no writer and changes nothing
            && gucs::enabled()
            && !restore::active()
    }
}

fn in_recovery() -> bool {
    if RECOVERY_DONE.get() {
        return false;
    }
    // SAFETY: reads shared state.
    let in_recovery = unsafe { pg_sys::RecoveryInProgress() };
    RECOVERY_DONE.set(!in_recovery);
    in_recovery
}

/// recorded_text is a statement's text as a record may carry it: cut to max_query_length.
/// Secrets are redacted from it when a record takes it (redact::redact, after the cut, which
/// bounds the work: the cut keeps a prefix, so every literal in it reads the same, and a
/// secret the cut ends is redacted to the end) — not for every statement, most of which leave
/// no record — and still in the backend, so that no secret reaches durable_queue or its WAL.
pub(super) fn recorded_text(text: &[u8]) -> Rc<[u8]> {
    Rc::from(clip(text, gucs::max_query_length()))
}

/// current_query is the text of the top-level statement running now.
pub fn current_query() -> Rc<[u8]> {
    CURRENT
        .with_borrow(|c| c.as_ref().map(|a| a.query.clone()))
        .unwrap_or_else(|| {
            // SAFETY: debug_query_string is NULL or the query being run.
            recorded_text(unsafe { borrowed_cstr(pg_sys::debug_query_string) }.unwrap_or_default())
        })
}
