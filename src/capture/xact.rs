//! capture/xact.rs: transaction callbacks, the only path from the pending buffer to a ring.
//!
//! Runs in every backend at every transaction end.
//!
//! # How it works
//!
//! [`install`] registers a permanent transaction and subtransaction callback
//! (`RegisterXactCallback`: pgrx's safe callbacks last one transaction only). The protocol:
//! - PRE_COMMIT: find the database's ring, reserve a frame and copy the records into it,
//!   applying `activity_log.overflow` when there is no room; a transaction that changed a
//!   durability 'sync' table, staged records already (capture/pending.rs), or whose frame is larger
//!   than the ring stages its records in durable_queue instead (capture/durable.rs).
//!   This is the last point where an ERROR is allowed, so everything that can fail happens here.
//! - COMMIT: mark the frame committed (or count the staged row) and wake the writer. Stores
//!   and a latch: no allocation, no ERROR, no panic.
//! - ABORT: void the frame if one was reserved; publish failed-statement records without
//!   waiting (a full ring counts them as dropped).
//! - Subtransactions: a mark per subtransaction; ROLLBACK TO SAVEPOINT drops what it added.
//!   PRE_COMMIT_SUB stages the parent's part of the buffer when it has grown too large.
//! - PREPARE TRANSACTION with pending records is refused: the commit would happen in another
//!   session, which cannot publish them.
//!
//! # Invariants
//!
//! - COMMIT and ABORT forget what the transaction noted: its running statements (hooks.rs),
//!   this backend's tracked-tables state for it (tracked.rs), a replication worker's captured
//!   counts (applied.rs); ABORT also undoes its COPY swaps (copy_from.rs). ABORT_SUB does the
//!   same for the subtransaction, and drops its records from the pending buffer.
//! - A frame reserved at PRE_COMMIT is either committed at COMMIT or voided at ABORT: the
//!   reservation is held in the pending buffer (pending.rs) between the two.
//!
//! # Panic / unwind safety
//!
//! Both callbacks are `#[pg_guard]`. After PRE_COMMIT (COMMIT, ABORT, and the subtransaction
//! ends that follow an ERROR) a panic or an ERROR would abort the backend: those paths only
//! store, take short locks and set latches; they do not allocate through PostgreSQL, raise, or
//! call anything that can.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::c_void;
use std::time::Instant;

use super::{applied, copy_from, durable, hooks, origin, pending, replication, tracked};
use crate::errors::raise;
use crate::gucs::{self, Overflow};
use crate::process;
use crate::ring::{self, ReserveError, Share};
use crate::shared;
use crate::unguarded;

/// install registers the permanent callbacks; called once from `_PG_init`.
pub fn install() {
    // SAFETY: plain registration of callbacks that live as long as the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(al_xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(al_subxact_callback), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn al_xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => pre_commit(),
        XACT_EVENT_COMMIT => {
            if let Some(r) = pending::take_reservation() {
                // SAFETY: no error paths; the stop timestamp was set by the commit record.
                ring::commit(r, unsafe {
                    unguarded::GetCurrentTransactionStopTimestamp()
                });
            }
            if let Some(staged) = pending::take_staged() {
                commit_staged(staged);
            }
            tracked::at_transaction_end();
            applied::at_transaction_end();
            hooks::forget_statements();
            hooks::settle_drop(true);
        }
        XACT_EVENT_ABORT => {
            copy_from::abandon(0);
            if let Some(r) = pending::take_reservation() {
                ring::void(r);
            }
            pending::take_staged(); // the staged rows vanished with the transaction
            staging_ends();
            publish_failures_now(pending::take_failures());
            tracked::at_transaction_end();
            applied::at_transaction_end();
            hooks::forget_statements();
            hooks::settle_drop(false);
        }
        // A subscription with two_phase prepares what it applied, and its COMMIT PREPARED
        // later shows nothing: the gap records go out now, with the prepare.
        XACT_EVENT_PRE_PREPARE if process::in_logical_worker() && !pending::has_records() => {
            replication::before_commit(true);
            if pending::has_records() {
                publish_failures_now(pending::take_records());
            }
        }
        XACT_EVENT_PRE_PREPARE if pending::has_records() => raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "activity_log cannot audit a prepared transaction",
            Some(
                "Run PREPARE TRANSACTION with activity_log.enabled = off, or commit the transaction directly.",
            ),
        ),
        XACT_EVENT_PREPARE => {
            publish_failures_now(pending::take_failures());
            applied::at_transaction_end();
            hooks::forget_statements();
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn al_subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_START_SUB => pending::subxact_start(my_subid),
        SUBXACT_EVENT_PRE_COMMIT_SUB => {
            pending::spill_if_due(pending::Level::Parent);
        }
        SUBXACT_EVENT_COMMIT_SUB => {
            pending::subxact_end(my_subid, false);
            hooks::settle_drop_in_subxact(my_subid, parent_subid, true);
        }
        SUBXACT_EVENT_ABORT_SUB => {
            copy_from::abandon(my_subid);
            pending::subxact_end(my_subid, true);
            hooks::forget_subxact(my_subid);
            applied::forget_subxact(my_subid);
            hooks::settle_drop_in_subxact(my_subid, parent_subid, false);
            // A loop of failing statements, each in its own subtransaction, must not pile up
            // failure records without bound: past SPILL_BYTES they are published now.
            if pending::failure_bytes() >= pending::SPILL_BYTES {
                publish_failures_now(pending::take_failures_only());
            }
        }
        _ => {}
    }
}

/// commit_staged tells the writer about a committed transaction whose records are in
/// durable_queue. Runs after the commit: atomics and a latch, nothing that fails.
fn commit_staged(staged: pending::Staged) {
    let dboid = my_database();
    if !staged.unannounced {
        // Staged in pieces and announced: the writer stores them at the announcement.
        if let Some(slot) = staged.slot {
            ring::count_published(slot, staged.records as u64);
        }
        return;
    }
    gucs::hold_staged_commit(true);
    if let Some(slot) = staged.slot {
        ring::commit_staged(slot, staged.records);
    }
    if !staged.slot.is_some_and(|s| ring::serves(s, dboid)) {
        // Without a ring, or with one being handed back (it may be gone before its writer
        // sweeps again): the database waits for its turn, and whoever gets its next ring
        // sweeps durable_queue first; a ring it got since PRE_COMMIT may have swept already.
        ring::note_waiting(dboid);
        if let Some(now) = ring::slot_of(dboid).filter(|&s| Some(s) != staged.slot) {
            ring::commit_staged(now, 0);
        }
    }
    // After staged_commits: a writer that no longer sees the mark sees the count.
    staging_ends();
}

/// staging_ends ends this backend's staging mark and wakes the writer that may be holding ring
/// frames back for it (see worker/drain.rs).
fn staging_ends() {
    if let Some(dboid) = shared::staging_ends()
        && let Some(slot) = ring::slot_of(dboid)
    {
        ring::wake_writer(slot);
    }
}

fn my_database() -> u32 {
    // SAFETY: read of a backend global.
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

/// audited_slot finds this database's ring, claiming one when the extension is installed but
/// no ring is assigned yet (right after a restart). Needs a valid transaction.
fn audited_slot(dboid: u32) -> Option<Result<usize, ()>> {
    if let Some(s) = ring::slot_of(dboid) {
        return Some(Ok(s));
    }
    // SAFETY: catalog lookup inside a valid transaction (PRE_COMMIT).
    let installed =
        unsafe { pg_sys::get_extension_oid(c"activity_log".as_ptr(), true) } != pg_sys::InvalidOid;
    if !installed {
        return None;
    }
    // SAFETY: plain read of transaction state.
    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() }.into_inner();
    match ring::claim(dboid, xid) {
        Some(s) => {
            shared::wake_launcher();
            Some(Ok(s))
        }
        None => Some(Err(())),
    }
}

fn pre_commit() {
    if hooks::trail_dropped_at_pre_commit() {
        // This transaction dropped the trail its records were for.
        pending::discard();
        return;
    }
    if process::in_logical_worker() {
        // Rows it applied to tracked tables: a gap record each (capture/replication.rs).
        replication::before_commit(false);
    }
    if !pending::has_anything() || !ring::is_initialised() {
        return;
    }
    let dboid = my_database();
    // After DROP DATABASE removed the database's files, an ERROR here would leave it invalid
    // (half-dropped, a second DROP needed): its records go as if overflow were 'drop', counted.
    let overflow = if hooks::dropped_a_database() {
        Overflow::Drop
    } else {
        gucs::overflow()
    };
    let slot = match audited_slot(dboid) {
        None => {
            pending::discard();
            return;
        }
        Some(slot) => slot.ok(),
    };
    if pending::is_durable() {
        stage(slot);
        return;
    }
    let Some(slot) = slot else {
        // More audited databases than rings: this one waits for its turn, its records safe
        // in durable_queue meanwhile.
        if durable::can_stage() {
            stage(None);
            return;
        }
        let n = pending::counts();
        shared::count_unassigned_drop(n as u64);
        if overflow == Overflow::Error {
            raise(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                "no activity_log ring is free for this database",
                Some("Raise activity_log.max_databases and restart the server."),
            );
        }
        warning!("activity_log dropped {n} records: no ring is free for this database");
        pending::discard();
        return;
    };
    origin::client_addr();
    let info = origin::frame_info();
    let share = match pending::has_unprivileged_events() {
        true => Share::Half,
        false => Share::Whole,
    };
    let started = Instant::now();
    let mut waited = false;
    loop {
        let (reserved, n) = pending::with_pending(|records, failures, n| {
            (
                ring::reserve(slot, dboid, &[&info[..], records, failures], n, share),
                n,
            )
        });
        match reserved {
            Ok(r) => {
                pending::discard();
                pending::set_reservation(r);
                return;
            }
            // The ring is being handed to another database: wait for the next turn in
            // durable_queue.
            Err(ReserveError::Gone) if durable::can_stage() => {
                stage(None);
                return;
            }
            Err(ReserveError::Gone) => {
                // The extension was dropped while we ran: no trail to write to, but say so.
                shared::count_unassigned_drop(n as u64);
                pending::discard();
                return;
            }
            // Larger than the ring can carry (failure records or pieces that could not be
            // staged while they came): through durable_queue, like a 'sync' transaction.
            Err(ReserveError::TooLarge) if durable::can_stage() => {
                stage(Some(slot));
                return;
            }
            Err(ReserveError::TooLarge) if overflow != Overflow::Drop => raise(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "audit records of this transaction ({} bytes) do not fit in activity_log.buffer_size ({} bytes)",
                    info.len() + pending::pending_bytes(),
                    ring::capacity()
                ),
                Some("Raise activity_log.buffer_size, or split the transaction."),
            ),
            Err(ReserveError::TooLarge) => {
                ring::count_drop(slot, n as u64);
                pending::discard();
                return;
            }
            Err(ReserveError::Full) => match overflow {
                Overflow::Drop => {
                    ring::count_drop(slot, n as u64);
                    pending::discard();
                    return;
                }
                Overflow::Error => raise(
                    PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                    "activity_log ring is full",
                    Some(
                        "The transaction was rolled back so that no unaudited change commits. Check activity_log.queue, or raise activity_log.buffer_size.",
                    ),
                ),
                Overflow::Wait => {
                    if !waited {
                        ring::count_overflow_wait(slot);
                        waited = true;
                    }
                    if started.elapsed() >= gucs::overflow_timeout() {
                        raise(
                            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                            "activity_log ring stayed full for activity_log.overflow_timeout",
                            Some(
                                "The transaction was rolled back so that no unaudited change commits. Check that the writer is running (activity_log.queue).",
                            ),
                        );
                    }
                    ring::wait_for_writer(slot);
                }
            },
        }
    }
}

/// stage publishes the transaction's records through durable_queue: each piece still pending
/// is one row. With a ring, the transaction is first announced in it (see [`announce`]), so
/// that its records take their place in the ring's order, which is the commit order of
/// conflicting transactions. Staged even when no ring is free: the writer finds the rows when
/// it starts.
fn stage(slot: Option<usize>) {
    let dboid = my_database();
    let spilled = pending::has_spilled();
    // A transaction staged in one row is announced with its record count: the writer takes
    // its row into the batch the announcement is in. One staged in pieces stands alone in the
    // ring (no count): the writer stores its pieces in batches of their own.
    let single = (!spilled).then(pending::counts);
    let mark = slot.and_then(|s| announce(s, dboid, single.unwrap_or(0)));
    if mark.is_none() {
        // SAFETY: reads the WAL insert position; no ERROR. The rows staged next get a key at
        // least this high.
        shared::staging_begins(dboid, unsafe { crate::unguarded::GetXLogInsertRecPtr() });
    }
    let mut n = pending::spilled_records();
    pending::with_pieces(|seq, parts, records| {
        durable::stage(parts, records, spilled.then_some(seq), mark);
        n += records;
    });
    pending::discard();
    if mark.is_none() || single.is_none() {
        // Published through durable_queue; the ring's writer sweeps it (or, announced in
        // pieces, stores it at the announcement and only counts it here).
        pending::set_staged(pending::Staged {
            slot,
            records: n,
            unannounced: mark.is_none(),
        });
        if mark.is_none() {
            gucs::hold_staged_commit(false);
        }
    }
}

/// announce reserves a frame without records in the ring: it holds the place of the staged
/// transaction, and the writer stores the transaction's staged rows when it reaches it.
/// `nrecords` is their count for a transaction staged in one row, 0 for one in pieces.
/// Returns the ring's turn mark, which the staged rows carry so that the writer's sweep of
/// durable_queue leaves them to the announcement; None when the ring has no room (after
/// `overflow_timeout` under `wait`): the writer then stores the rows by their commit order key
/// (durable_queue.commit_lsn), merged with the ring's frames (worker/drain.rs, `drain`).
fn announce(slot: usize, dboid: u32, nrecords: u32) -> Option<i64> {
    if !ring::serves(slot, dboid) {
        return None;
    }
    let mark = ring::claimed_at(slot);
    let info = frame_info_with_xid();
    let started = Instant::now();
    loop {
        match ring::reserve(slot, dboid, &[&info[..]], nrecords, Share::Whole) {
            Ok(r) => {
                pending::set_reservation(r);
                return Some(mark);
            }
            Err(ReserveError::Full)
                if gucs::overflow() == Overflow::Wait
                    && started.elapsed() < gucs::overflow_timeout() =>
            {
                ring::wait_for_writer(slot);
            }
            Err(_) => return None,
        }
    }
}

/// frame_info_with_xid is [`origin::frame_info`] of a transaction given its xid now (the staged rows
/// name it, and so must the announcement).
fn frame_info_with_xid() -> Vec<u8> {
    // SAFETY: inside the committing transaction, at PRE_COMMIT, which may still write.
    unsafe { pg_sys::GetTopFullTransactionId() };
    origin::client_addr();
    origin::frame_info()
}

/// publish_failures_now stores failed-statement records `(body, n)` of a transaction that did
/// not commit, or of subtransactions that rolled back (and the gap records of a transaction a
/// logical replication worker prepares). Runs in the abort path: never waits, never raises; a
/// full ring counts them as dropped.
fn publish_failures_now((body, n): (Vec<u8>, u32)) {
    if n == 0 || !ring::is_initialised() {
        return;
    }
    let dboid = my_database();
    // No ring (more audited databases than rings): take a free one if there is one (the
    // launcher starts its writer). Failure records cannot be staged (their transaction did not
    // commit): without a ring they are lost, and counted so that the database's next ring
    // puts a gap record in its trail.
    let had = ring::slot_of(dboid);
    let Some(slot) = had.or_else(|| ring::claim(dboid, 0)) else {
        ring::count_waiting_drop(dboid, n as u64);
        return;
    };
    if had.is_none() {
        shared::wake_launcher();
    }
    match ring::reserve(
        slot,
        dboid,
        &[&origin::frame_info()[..], &body[..]],
        n,
        Share::Whole,
    ) {
        // SAFETY: no error paths.
        Ok(r) => ring::commit(r, unsafe { pg_sys::GetCurrentTimestamp() }),
        // Being handed back: its next ring reports the loss. (Or the extension is being
        // dropped: nobody will read the count.)
        Err(ReserveError::Gone) => ring::count_waiting_drop(dboid, n as u64),
        Err(_) => ring::count_drop(slot, n as u64),
    }
}
