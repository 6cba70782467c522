//! capture/restore.rs: a session restoring a dump (pg_restore, or a pg_dump script in psql).
//!
//! How it works: pg_dump's scripts and pg_restore turn `check_function_bodies` off before
//! anything else (PostgreSQL documents the setting as the one restores use), and a dump
//! re-creates the extension with `CREATE EXTENSION`, then the trail's day partitions, then
//! their rows, the id sequence and `tracked_tables`. A session that creates the extension with
//! `check_function_bodies` off is taken to be such a restore, and two things follow until it
//! ends (or turns the setting back on):
//!
//! - The database's writer is held off ([`crate::ring::hold_for_restore`]): it makes no day
//!   partition (the restore's `CREATE TABLE` of the same one would fail) and stores nothing
//!   (ids and the hash chain continue from the restored trail, not from an empty one). What
//!   others commit meanwhile waits in the ring.
//! - The session records nothing but one event saying that a restore began: the rows it loads
//!   into tracked tables are the dump's, already in the restored trail, and recording them
//!   again would make a replay of the trail hold them twice. Its `COPY`s into tracked tables
//!   still leave a count record each.
//!
//! A user who creates the extension with `check_function_bodies` off by hand gets the same;
//! the event says why, and `SET check_function_bodies = on` ends it.
//!
//! Runs in the backend that creates the extension; touches one atomic of its ring.

use pgrx::pg_sys;
use std::cell::Cell;

use crate::record::{Body, Event, Record};
use crate::ring;

thread_local! {
    /// The ring this session holds for its restore, when it is restoring.
    static HOLDING: Cell<Option<usize>> = const { Cell::new(None) };
}

/// active tells whether this session is restoring a dump. Ends the restore when
/// `check_function_bodies` is back on.
pub fn active() -> bool {
    let Some(slot) = HOLDING.get() else {
        return false;
    };
    // SAFETY: read of a GUC variable of this backend.
    if unsafe { pg_sys::check_function_bodies } {
        end(slot);
        return false;
    }
    true
}

fn end(slot: usize) {
    HOLDING.set(None);
    // SAFETY: reads this process's pid.
    ring::end_restore_hold(slot, unsafe { pg_sys::MyProcPid });
}

/// after_create_extension starts a restore when this session just created the extension with
/// `check_function_bodies` off: it records that a restore began (when `record`: capture is
/// on), then holds the writer off. Called in the creating transaction.
pub fn after_create_extension(record: bool) {
    // SAFETY: reads of backend globals.
    let (restoring, dboid, xid) = unsafe {
        (
            !pg_sys::check_function_bodies,
            pg_sys::MyDatabaseId.to_u32(),
            pg_sys::GetTopTransactionIdIfAny().into_inner(),
        )
    };
    if !restoring || HOLDING.get().is_some() {
        return;
    }
    // Claimed now, so that the writer cannot start unheld once this transaction commits.
    let Some(slot) = ring::claim(dboid, xid) else {
        return; // no ring free: no writer runs for the database until the launcher gives one
    };
    ring::hold_for_restore(slot);
    HOLDING.set(Some(slot));
    if !record {
        return;
    }
    // SAFETY: no error paths.
    let ts = unsafe { pg_sys::GetCurrentTimestamp() };
    super::pending::push(&Record {
        origin: super::origin::origin(),
        body: Body::Event(Event {
            ts,
            action: b"restore started"[..].into(),
            details: RESTORE_NOTE.as_bytes().into(),
            entity_type: Some(b"database"[..].into()),
            entity_id: None,
            category: b"data_restore"[..].into(),
            severity: b"notice"[..].into(),
        }),
    });
}

const RESTORE_NOTE: &str = r#"{"note": "activity_log was created with check_function_bodies off, as pg_dump scripts and pg_restore do: this session is taken to restore a dump. Until it ends (or sets check_function_bodies on), it records nothing more (the rows it loads are those of the restored trail; each COPY into a tracked table leaves a count record), and the writer stores nothing, so that the restored trail comes first and its hash chain continues."}"#;
