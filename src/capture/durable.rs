//! capture/durable.rs: staging of a transaction's records in `activity_log.durable_queue`.
//!
//! Two kinds of transaction stage: one that changed a table tracked with durability 'sync'
//! (at PRE_COMMIT, one row holding its encoded frame — the bytes the ring would carry — so the
//! records are in the WAL with the commit), and one whose records outgrew the backend's
//! pending buffer (capture/pending.rs stages them piece by piece as they come, inside the
//! (sub)transaction that made them, and the rest at PRE_COMMIT). Either way the rows commit or
//! vanish with the (sub)transaction, and the writer moves them into the trail. The insert is a
//! plain heap_insert (no executor, no privilege check, no trigger, no index), so any role's
//! transaction can stage and nothing of ours is captured. Runs only where an ERROR still rolls
//! back the user's transaction: PRE_COMMIT, PRE_COMMIT_SUB, or while a statement runs.

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::origin;
use crate::errors::raise;
use crate::record;

/// durable_queue's columns, in order.
const NATTS: i32 = 7;

/// queue_relid is durable_queue's OID, or InvalidOid when the extension is not (or no longer)
/// in this database.
fn queue_relid() -> pg_sys::Oid {
    // SAFETY: catalog lookups inside a valid transaction; missing objects return InvalidOid.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"activity_log".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return nsp;
        }
        pg_sys::get_relname_relid(c"durable_queue".as_ptr(), nsp)
    }
}

/// can_stage tells whether a piece may be staged now: in a running transaction that can get an
/// xid (not in parallel mode, not on a standby), in a database with the extension.
pub fn can_stage() -> bool {
    // SAFETY: reads of transaction state.
    let ready = unsafe {
        pg_sys::IsTransactionState() && !pg_sys::IsInParallelMode() && !pg_sys::RecoveryInProgress()
    };
    ready && queue_relid() != pg_sys::InvalidOid
}

/// stage inserts the concatenation of `parts` (encoded records, `nrecords` of them) as one
/// durable_queue row, behind the transaction's frame info and followed by its seal (a CRC-32C
/// of the frame and of the row's columns, see record.rs). `seq` is the piece's position in
/// the transaction's record stream, for a transaction that stages several pieces; None for
/// one staged whole. `ring_mark`: the turn mark of the ring that announced the transaction
/// (capture/xact.rs), if one did. The row's `commit_lsn` is the WAL insert position now: at
/// PRE_COMMIT, the transaction's commit order key (see ring/mod.rs); a piece staged earlier
/// gets an earlier one, and the writer takes the highest of a transaction's rows, that of its
/// row staged at PRE_COMMIT (capture/pending.rs, `with_pieces`, stages one even when empty).
pub fn stage(parts: &[&[u8]], nrecords: u32, seq: Option<u64>, ring_mark: Option<i64>) {
    let relid = queue_relid();
    if relid == pg_sys::InvalidOid {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "activity_log.durable_queue does not exist",
            Some(
                "Reinstall the extension: DROP EXTENSION activity_log; CREATE EXTENSION activity_log.",
            ),
        );
    }
    // The frame names the transaction: give it its xid now (the insert would anyway).
    // SAFETY: inside a running transaction that may write (checked by the callers).
    let xid = unsafe { pg_sys::GetTopFullTransactionId() }.value;
    origin::client_addr();
    let info = origin::frame_info();
    let len: usize = info.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let size = len + record::SEAL_LEN + pg_sys::VARHDRSZ;
    // MaxAllocSize: the largest varlena PostgreSQL can allocate (bindgen misses the macro).
    const MAX_ALLOC_SIZE: usize = 0x3fff_ffff;
    if size > MAX_ALLOC_SIZE {
        // Only a single record can get here (pieces are cut at SPILL_BYTES): a row of ~1 GB.
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("an audit record of this transaction ({len} bytes) exceeds 1 GB"),
            Some(
                "Exclude the table's largest columns with activity_log.track(exclude_columns => …).",
            ),
        );
    }
    // SAFETY: inside the transaction, which has an xid now. The bytea is palloc'd in the
    // current memory context and filled fully before use; the relation stays locked
    // (RowExclusiveLock) until the transaction ends.
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
        if (*(*rel).rd_att).natts != NATTS {
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
        for part in std::iter::once(&info[..]).chain(parts.iter().copied()) {
            std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
            at = at.add(part.len());
        }
        // The seal: the writer refuses a row whose bytes or columns changed after this.
        let staged_at = pg_sys::GetCurrentTimestamp();
        let row = record::StagedRow {
            xid,
            seq: seq.map(|s| s as i64),
            records: nrecords,
            staged_at,
        };
        let seal = record::seal(
            std::slice::from_raw_parts(frame.add(pg_sys::VARHDRSZ), len),
            &row,
        );
        std::ptr::copy_nonoverlapping(seal.as_ptr(), at, seal.len());
        let mut values = [
            pg_sys::Datum::from(staged_at),
            pg_sys::Datum::from(nrecords as i32),
            pg_sys::Datum::from(frame),
            pg_sys::Datum::from(xid),
            pg_sys::Datum::from(seq.unwrap_or(0) as i64),
            pg_sys::Datum::from(ring_mark.unwrap_or(0)),
            pg_sys::Datum::from(crate::unguarded::GetXLogInsertRecPtr()),
        ];
        let mut nulls = [
            false,
            false,
            false,
            false,
            seq.is_none(),
            ring_mark.is_none(),
            false,
        ];
        let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(rel, tuple);
        pg_sys::heap_freetuple(tuple);
        pg_sys::pfree(frame.cast());
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
}
