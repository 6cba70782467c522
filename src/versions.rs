//! versions.rs: what differs between the PostgreSQL major versions activity_log supports (15,
//! 16, 17 and 18) for code that only calls PostgreSQL, one function per difference, so that
//! the rest of the crate is the same on every version. Each version's branch is compiled only
//! for that version's feature (`pg15` … `pg18`, set by `cargo pgrx` from the pg_config) and
//! tested by running the whole suite on it (`./dev test --pg N`).
//!
//! Differences that change what a hook or a callback is, not how a function is called, stay
//! with their code, each in one place: the ExecutorRun hook's signature (`capture/hooks.rs`),
//! what a logical replication worker can know of its transaction's changes
//! (`capture/replication.rs`), ExecInsertIndexTuples's declaration (`unguarded.rs`).
//!
//! Runs wherever its callers run; every function here is a thin call with the caller's
//! safety contract, and raises only what the PostgreSQL function it calls raises.

use pgrx::pg_sys;

/// owns_database tells whether `role` owns database `dboid` (or is a superuser): PostgreSQL
/// 16 replaced pg_database_ownercheck with object_ownercheck.
///
/// # Safety
/// Inside a transaction (a catalog lookup).
pub unsafe fn owns_database(dboid: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: as documented for the caller.
    unsafe {
        #[cfg(feature = "pg15")]
        return pg_sys::pg_database_ownercheck(dboid, role);
        #[cfg(not(feature = "pg15"))]
        return pg_sys::object_ownercheck(pg_sys::DatabaseRelationId, dboid, role);
    }
}

/// owns_extension tells whether `role` owns extension `extoid` (or is a superuser): as
/// [`owns_database`].
///
/// # Safety
/// Inside a transaction (a catalog lookup).
pub unsafe fn owns_extension(extoid: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: as documented for the caller.
    unsafe {
        #[cfg(feature = "pg15")]
        return pg_sys::pg_extension_ownercheck(extoid, role);
        #[cfg(not(feature = "pg15"))]
        return pg_sys::object_ownercheck(pg_sys::ExtensionRelationId, extoid, role);
    }
}

/// qualified_name_list splits a possibly qualified name into a List of String nodes; a
/// malformed name raises (PostgreSQL 16 added the soft-error context, which stays NULL here).
///
/// # Safety
/// `name` is a NUL-terminated string; the list is allocated in the current memory context.
pub unsafe fn qualified_name_list(name: *const std::ffi::c_char) -> *mut pg_sys::List {
    // SAFETY: as documented for the caller.
    unsafe {
        #[cfg(feature = "pg15")]
        return pg_sys::stringToQualifiedNameList(name);
        #[cfg(not(feature = "pg15"))]
        return pg_sys::stringToQualifiedNameList(name, std::ptr::null_mut());
    }
}

/// root_to_partition_map is the conversion a partition's rows need from its partitioned
/// root's layout, NULL when the two lay their columns out alike. PostgreSQL 15 fills
/// ri_RootToPartitionMap when tuple routing opens the partition; 16 builds it on first use
/// behind ExecGetRootToChildMap.
///
/// # Safety
/// `partition` was returned by ExecFindPartition for `estate`.
pub unsafe fn root_to_partition_map(
    partition: *mut pg_sys::ResultRelInfo,
    estate: *mut pg_sys::EState,
) -> *mut pg_sys::TupleConversionMap {
    // SAFETY: as documented for the caller.
    unsafe {
        #[cfg(feature = "pg15")]
        {
            let _ = estate;
            (*partition).ri_RootToPartitionMap
        }
        #[cfg(not(feature = "pg15"))]
        pg_sys::ExecGetRootToChildMap(partition, estate)
    }
}

/// my_proc_number is this process's index in ProcGlobal->allProcs (the number others wake it
/// by), None for a process without a PGPROC. PostgreSQL 17 dropped PGPROC's pgprocno; the
/// index itself is what every version's pgprocno was.
pub fn my_proc_number() -> Option<i32> {
    // SAFETY: reads of this process's globals; MyProc, when set, is an element of allProcs.
    unsafe {
        if pg_sys::MyProc.is_null() || pg_sys::ProcGlobal.is_null() {
            return None;
        }
        i32::try_from(pg_sys::MyProc.offset_from((*pg_sys::ProcGlobal).allProcs)).ok()
    }
}

/// attributes are a tuple descriptor's pg_attribute entries. PostgreSQL 18 put them after an
/// array of CompactAttribute, one per column (TupleDescAttr).
///
/// # Safety
/// `desc` is a valid tuple descriptor that outlives `'a`.
pub unsafe fn attributes<'a>(desc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: as documented for the caller; natts entries follow.
    unsafe {
        let natts = (*desc).natts.max(0) as usize;
        #[cfg(not(feature = "pg18"))]
        return (*desc).attrs.as_slice(natts);
        #[cfg(feature = "pg18")]
        return std::slice::from_raw_parts(
            (*desc)
                .compact_attrs
                .as_ptr()
                .add(natts)
                .cast::<pg_sys::FormData_pg_attribute>(),
            natts,
        );
    }
}

/// attribute_mut is entry `i` of a descriptor being built; after changing it, call
/// [`attribute_changed`].
///
/// # Safety
/// `desc` is a valid tuple descriptor nobody else reads yet, `i < natts`.
pub unsafe fn attribute_mut<'a>(
    desc: pg_sys::TupleDesc,
    i: usize,
) -> &'a mut pg_sys::FormData_pg_attribute {
    // SAFETY: as documented for the caller.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        return &mut (*desc).attrs.as_mut_slice((*desc).natts as usize)[i];
        #[cfg(feature = "pg18")]
        return &mut *pg_sys::TupleDescAttr(desc, i as i32);
    }
}

/// attribute_changed tells the descriptor that entry `i` was changed by hand: PostgreSQL 18
/// deforms tuples by the CompactAttribute copy, which must be filled again.
///
/// # Safety
/// As [`attribute_mut`].
pub unsafe fn attribute_changed(desc: pg_sys::TupleDesc, i: usize) {
    #[cfg(feature = "pg18")]
    // SAFETY: as documented for the caller.
    unsafe {
        pg_sys::populate_compact_attribute(desc, i as i32)
    };
    #[cfg(not(feature = "pg18"))]
    let _ = (desc, i);
}

/// form_minimal_tuple is heap_form_minimal_tuple without room before the tuple (PostgreSQL 18
/// added the `extra` bytes).
///
/// # Safety
/// As heap_form_minimal_tuple: `values` and `isnull` have natts entries.
pub unsafe fn form_minimal_tuple(
    desc: pg_sys::TupleDesc,
    values: *const pg_sys::Datum,
    isnull: *const bool,
) -> pg_sys::MinimalTuple {
    // SAFETY: as documented for the caller.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        return pg_sys::heap_form_minimal_tuple(desc, values.cast_mut(), isnull.cast_mut());
        #[cfg(feature = "pg18")]
        return pg_sys::heap_form_minimal_tuple(desc, values, isnull, 0);
    }
}

/// minimal_from_heap_tuple is minimal_tuple_from_heap_tuple without room before the tuple
/// (as [`form_minimal_tuple`]).
///
/// # Safety
/// `tuple` is a valid heap tuple.
pub unsafe fn minimal_from_heap_tuple(tuple: pg_sys::HeapTuple) -> pg_sys::MinimalTuple {
    // SAFETY: as documented for the caller.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        return pg_sys::minimal_tuple_from_heap_tuple(tuple);
        #[cfg(feature = "pg18")]
        return pg_sys::minimal_tuple_from_heap_tuple(tuple, 0);
    }
}

/// lock_held_by_me tells whether this backend holds `tag` in exactly `mode` (PostgreSQL 17
/// added the "or stronger" flag, false here).
///
/// # Safety
/// Looks up this backend's local lock table: a backend attached to shared memory.
pub unsafe fn lock_held_by_me(tag: &pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE) -> bool {
    // SAFETY: as documented for the caller.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        return pg_sys::LockHeldByMe(tag, mode);
        #[cfg(not(any(feature = "pg15", feature = "pg16")))]
        return pg_sys::LockHeldByMe(tag, mode, false);
    }
}

/// query_id is a statement's query identifier as pg_stat_statements shows it (a signed
/// bigint): PostgreSQL 18 made the field itself signed.
///
/// # Safety
/// `stmt` is a valid PlannedStmt.
pub unsafe fn query_id(stmt: *const pg_sys::PlannedStmt) -> i64 {
    // SAFETY: as documented for the caller.
    let id = unsafe { (*stmt).queryId };
    #[cfg(not(feature = "pg18"))]
    return id as i64; // the same 64 bits, as pg_stat_statements shows them
    #[cfg(feature = "pg18")]
    return id;
}

/// end_index_inserts ends the index access methods' insert state of `rri`'s indexes, so that
/// nothing stays pinned after the subtransaction the inserts ran in. PostgreSQL 17 lets an
/// index AM keep state between inserts until ExecCloseIndices (BRIN keeps its revmap's pages
/// pinned): pinned under a subtransaction's resource owner and released after it, they fail
/// with "buffer pin … is not owned by resource owner". Before 17 no AM kept any.
///
/// # Safety
/// `rri` is an open ResultRelInfo whose indexes are open (ExecOpenIndices).
pub unsafe fn end_index_inserts(rri: *mut pg_sys::ResultRelInfo) {
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    // SAFETY: as documented for the caller; index_insert_cleanup resets ii_AmCache, and the
    // next insert starts afresh.
    unsafe {
        for i in 0..(*rri).ri_NumIndices.max(0) as usize {
            let index = *(*rri).ri_IndexRelationDescs.add(i);
            let info = *(*rri).ri_IndexRelationInfo.add(i);
            if !index.is_null() && !info.is_null() {
                pg_sys::index_insert_cleanup(index, info);
            }
        }
    }
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    let _ = rri;
}

/// forget_index_inserts drops the index AMs' insert state of `rri`'s indexes after the
/// subtransaction that made it rolled back: the rollback released its pins already, so it
/// must not be ended ([`end_index_inserts`]) but forgotten (its memory goes with the
/// executor state's). Nothing before PostgreSQL 17.
///
/// # Safety
/// As [`end_index_inserts`]; the subtransaction of the inserts has rolled back.
pub unsafe fn forget_index_inserts(rri: *mut pg_sys::ResultRelInfo) {
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    // SAFETY: as documented for the caller.
    unsafe {
        for i in 0..(*rri).ri_NumIndices.max(0) as usize {
            let info = *(*rri).ri_IndexRelationInfo.add(i);
            if !info.is_null() {
                (*info).ii_AmCache = std::ptr::null_mut();
            }
        }
    }
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    let _ = rri;
}

/// is_virtual_generated tells whether a column is computed when read and stored as null:
/// PostgreSQL 18's virtual generated columns (before 18 there are none).
pub fn is_virtual_generated(attribute: &pg_sys::FormData_pg_attribute) -> bool {
    #[cfg(feature = "pg18")]
    return attribute.attgenerated as u8 == pg_sys::ATTRIBUTE_GENERATED_VIRTUAL;
    #[cfg(not(feature = "pg18"))]
    {
        let _ = attribute;
        false
    }
}
