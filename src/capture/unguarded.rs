//! capture/unguarded.rs: PostgreSQL functions the capture path calls without pgrx's guard
//! around each call. A guarded call sets up a sigsetjmp and checks the thread, about 120
//! instructions; the hooks make dozens of such calls per pgbench transaction, and the guards
//! were a sixth of capture's instructions.
//!
//! Two kinds, and nothing else belongs here:
//! - readers of backend state that cannot raise an ERROR: called directly;
//! - functions that can raise one: called only in groups inside one
//!   `pg_guard_ffi_boundary` whose closure owns nothing to drop, so that an ERROR's longjmp
//!   out of it skips no destructor.

use pgrx::pg_sys::{
    FullTransactionId, Oid, SubTransactionId, TimestampTz, TupleDesc, TupleTableSlot,
};
use pgrx::pg_sys::{TupleTableSlotOps, Tuplestorestate};
use std::ffi::{c_char, c_int};

// Readers: no ERROR.
unsafe extern "C-unwind" {
    pub fn GetUserId() -> Oid;
    pub fn GetSessionUserId() -> Oid;
    pub fn GetCurrentSubTransactionId() -> SubTransactionId;
    pub fn GetTopFullTransactionIdIfAny() -> FullTransactionId;
    pub fn GetCurrentTimestamp() -> TimestampTz;
    pub fn GetCurrentTransactionStopTimestamp() -> TimestampTz;
    /// Raises only when missing_ok is false or restrict_privileged is true.
    pub fn GetConfigOption(
        name: *const c_char,
        missing_ok: bool,
        restrict_privileged: bool,
    ) -> *const c_char;
}

// Only inside a group's guard.
unsafe extern "C-unwind" {
    pub fn tuplestore_select_read_pointer(state: *mut Tuplestorestate, ptr: c_int);
    pub fn tuplestore_rescan(state: *mut Tuplestorestate);
    pub fn tuplestore_tuple_count(state: *mut Tuplestorestate) -> i64;
    pub fn MakeSingleTupleTableSlot(
        desc: TupleDesc,
        ops: *const TupleTableSlotOps,
    ) -> *mut TupleTableSlot;
}
