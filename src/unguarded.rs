//! unguarded.rs: PostgreSQL functions activity_log declares itself, to call them without
//! pgrx's guard around each call. A guarded call sets up a sigsetjmp and checks the thread,
//! about 120 instructions: the hooks made about 90 such calls per pgbench transaction (a sixth
//! of capture's instructions), the writer about 24 per stored row. Also the few functions
//! pgrx does not bind.
//!
//! Two kinds, and nothing else belongs here:
//! - readers of backend state that cannot raise an ERROR: called directly;
//! - functions that can raise one: called only inside `pg_guard_ffi_boundary`, alone or in a
//!   group whose closure owns nothing to drop, so that an ERROR's longjmp out of it skips no
//!   destructor.

use pgrx::pg_sys::{
    EState, FullTransactionId, HeapTuple, List, MemoryContext, MinimalTuple, ModifyTableState, Oid,
    Relation, ResultRelInfo, SubTransactionId, TimestampTz, TupleDesc, TupleTableSlot,
    TupleTableSlotOps, Tuplestorestate,
};
use std::ffi::{c_char, c_int, c_void};

// Readers: no ERROR.
unsafe extern "C-unwind" {
    pub fn GetUserId() -> Oid;
    pub fn GetSessionUserId() -> Oid;
    pub fn GetCurrentSubTransactionId() -> SubTransactionId;
    pub fn GetTopFullTransactionIdIfAny() -> FullTransactionId;
    pub fn GetCurrentTimestamp() -> TimestampTz;
    pub fn GetCurrentTransactionStopTimestamp() -> TimestampTz;
    /// The WAL insert position (a spinlock, no ERROR): the commit order key (ring/mod.rs).
    pub fn GetXLogInsertRecPtr() -> u64;
    /// Raises only when missing_ok is false or restrict_privileged is true.
    pub fn GetConfigOption(
        name: *const c_char,
        missing_ok: bool,
        restrict_privileged: bool,
    ) -> *const c_char;
    /// A logical replication apply, tablesync (or, from PostgreSQL 16, parallel apply) worker.
    pub fn IsLogicalWorker() -> bool;
}

// Not bound by pgrx: replication/worker_internal.h. The subscription a logical replication
// worker serves; NULL in every other process. Only its first field is read: `oid` comes first
// in every version (PostgreSQL 10 to 18).
unsafe extern "C" {
    pub static mut MySubscription: *const SubscriptionHead;
}

/// The first field of PostgreSQL's `Subscription`.
#[repr(C)]
pub struct SubscriptionHead {
    pub oid: Oid,
}

// Only inside pg_guard_ffi_boundary.
unsafe extern "C-unwind" {
    pub fn palloc(size: usize) -> *mut c_void;
    pub fn MemoryContextReset(context: MemoryContext);
    pub fn tuplestore_select_read_pointer(state: *mut Tuplestorestate, ptr: c_int);
    pub fn tuplestore_rescan(state: *mut Tuplestorestate);
    pub fn tuplestore_tuple_count(state: *mut Tuplestorestate) -> i64;
    pub fn MakeSingleTupleTableSlot(
        desc: TupleDesc,
        ops: *const TupleTableSlotOps,
    ) -> *mut TupleTableSlot;
    pub fn heap_tuple_from_minimal_tuple(mtup: MinimalTuple) -> HeapTuple;
    pub fn heap_deform_tuple(
        tuple: HeapTuple,
        desc: TupleDesc,
        values: *mut pgrx::pg_sys::Datum,
        isnull: *mut bool,
    );
    fn ExecInsertIndexTuples(
        rri: *mut ResultRelInfo,
        slot: *mut TupleTableSlot,
        estate: *mut EState,
        update: bool,
        no_dup_err: bool,
        spec_conflict: *mut bool,
        arbiter_indexes: *mut List,
        #[cfg(not(feature = "pg15"))] only_summarizing: bool,
    ) -> *mut List;
    // Not bound by pgrx: executor/execPartition.h (tuple routing as COPY FROM uses it) and
    // commands/sequence.h (nextval without the SQL function's privilege check on every row;
    // the sequence is the extension's own).
    pub fn ExecSetupPartitionTupleRouting(estate: *mut EState, rel: Relation) -> *mut c_void;
    pub fn ExecFindPartition(
        mtstate: *mut ModifyTableState,
        root: *mut ResultRelInfo,
        proute: *mut c_void,
        slot: *mut TupleTableSlot,
        estate: *mut EState,
    ) -> *mut ResultRelInfo;
    pub fn ExecCleanupTupleRouting(mtstate: *mut ModifyTableState, proute: *mut c_void);
    pub fn nextval_internal(relid: Oid, check_permissions: bool) -> i64;
    // Not bound by pgrx: catalog/pg_inherits.h, catalog/partition.h and utils/partcache.h, to find what a
    // TRUNCATE emptied as ExecuteTruncate does.
    pub fn find_all_inheritors(
        parent: Oid,
        lockmode: c_int,
        numparents: *mut *mut List,
    ) -> *mut List;
    pub fn get_partition_parent(relid: Oid, even_if_detached: bool) -> Oid;
    pub fn get_partition_qual_relid(relid: Oid) -> *mut pgrx::pg_sys::Node;
    // Not bound by pgrx: catalog/pg_subscription.h.
    pub fn get_subscription_name(subid: Oid, missing_ok: bool) -> *mut c_char;
    pub fn get_subscription_oid(name: *const c_char, missing_ok: bool) -> Oid;
}

/// insert_index_tuples is ExecInsertIndexTuples for a plain insert (no arbiter indexes, no
/// conflict check), whatever the version's signature. Only inside pg_guard_ffi_boundary.
///
/// # Safety
/// As ExecInsertIndexTuples: `slot` holds a tuple just inserted into `rri`'s relation.
pub unsafe fn insert_index_tuples(
    rri: *mut ResultRelInfo,
    slot: *mut TupleTableSlot,
    estate: *mut EState,
) {
    let (none, no_list) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: as documented for the caller.
    unsafe {
        #[cfg(feature = "pg15")]
        ExecInsertIndexTuples(rri, slot, estate, false, false, none, no_list);
        #[cfg(not(feature = "pg15"))]
        ExecInsertIndexTuples(rri, slot, estate, false, false, none, no_list, false);
    }
}

/// clear_slot is ExecClearTuple (a static inline function in PostgreSQL): the slot's own
/// clear callback. Only inside pg_guard_ffi_boundary.
///
/// # Safety
/// `slot` is a valid slot.
pub unsafe fn clear_slot(slot: *mut TupleTableSlot) {
    // SAFETY: every slot has its ops' clear callback.
    unsafe {
        if let Some(clear) = (*(*slot).tts_ops).clear {
            clear(slot);
        }
    }
}
