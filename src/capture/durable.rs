//! capture/durable.rs: staging of a transaction's records in `activity_log.durable_queue`.
//!
//! A transaction that changed a table tracked with durability 'sync' does not publish through
//! the ring: at PRE_COMMIT it inserts one row holding its encoded frame (the bytes the ring
//! would carry) into durable_queue, so the records are in the WAL with the commit and vanish
//! with an abort. The writer moves them into the trail. The insert is a plain heap_insert
//! (no executor, no privilege check, no trigger, no index), so any role's transaction can stage
//! and nothing of ours is captured. Runs at PRE_COMMIT only, where an ERROR still rolls back.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::raise;

/// stage inserts the concatenation of `parts` as one durable_queue row.
pub fn stage(parts: &[&[u8]], nrecords: u32) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let size = len + pg_sys::VARHDRSZ;
    // MaxAllocSize: the largest varlena PostgreSQL can allocate (bindgen misses the macro).
    const MAX_ALLOC_SIZE: usize = 0x3fff_ffff;
    if size > MAX_ALLOC_SIZE {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "audit records of this transaction ({len} bytes) exceed the 1 GB a durable transaction can stage"
            ),
            Some("Split the transaction, or track the table with durability 'async'."),
        );
    }
    // SAFETY: inside the committing transaction (PRE_COMMIT), which has an xid because it
    // changed a table. The bytea is palloc'd in the current memory context and filled fully
    // before use; the relation stays locked (RowExclusiveLock) until the transaction ends.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"activity_log".as_ptr(), false);
        let relid = pg_sys::get_relname_relid(c"durable_queue".as_ptr(), nsp);
        if relid == pg_sys::InvalidOid {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                "activity_log.durable_queue does not exist",
                Some(
                    "Reinstall the extension: DROP EXTENSION activity_log; CREATE EXTENSION activity_log.",
                ),
            );
        }
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
        if (*(*rel).rd_att).natts != 3 {
            raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                "activity_log.durable_queue does not have the expected columns",
                Some(
                    "Reinstall the extension: DROP EXTENSION activity_log; CREATE EXTENSION activity_log.",
                ),
            );
        }
        let frame = pg_sys::palloc(size).cast::<u8>();
        pgrx::set_varsize_4b(frame.cast(), size as i32);
        let mut at = frame.add(pg_sys::VARHDRSZ);
        for part in parts {
            std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
            at = at.add(part.len());
        }
        let mut values = [
            pg_sys::Datum::from(pg_sys::GetCurrentTimestamp()),
            pg_sys::Datum::from(nrecords as i32),
            pg_sys::Datum::from(frame),
        ];
        let mut nulls = [false; 3];
        let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(rel, tuple);
        pg_sys::heap_freetuple(tuple);
        pg_sys::pfree(frame.cast());
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
}
