//! worker/suspects.rs: a staged frame that crashes the writer costs two crash-restarts of the
//! server, not a crash loop.
//!
//! Staged frames are checked before they are decoded (record.rs: the seal, every length), but
//! a frame whose seal a superuser forged can still hold a value whose insides are wrong (an
//! array's dimensions, a jsonb's offsets), and PostgreSQL's functions that read such values
//! trust them. A crash rolls the batch back, so its rows stay in durable_queue, and every
//! writer after it would crash on them again.
//!
//! How it works: before a batch with staged frames is decoded, the writer names them in a file
//! of the data directory, `activity_log.<database oid>.reading`, with the postmaster's start
//! time and crash count; the file goes once the batch has committed or failed with an ERROR.
//! A writer that starts and finds it learns whether the server crashed since it was written
//! (same postmaster, more crash-restarts), and if so gives each frame named a strike. A frame
//! with a strike is read alone, in a batch of its own, so that the next crash names it alone;
//! a frame named alone at its second strike is condemned: kept as a dead letter without being
//! decoded (worker/map.rs). Two strikes, not one, because the crash may have been another
//! process's: an innocent frame is condemned only if the server crashes twice while the writer
//! reads it. A postmaster stopped some other way (immediate shutdown, power loss) starts with
//! another time: the file says nothing then.
//!
//! What it may not do: decide anything for frames read from the ring (shared memory does not
//! survive the crash) or fail the batch (the file is a hint: when it cannot be written, the
//! writer says so in the log and goes on).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use crate::record::StagedRow;
use crate::shared;

/// A staged row: its transaction and piece.
type Key = (u64, Option<i64>);

#[derive(Default)]
struct Suspects {
    path: String,
    /// Rows crashes happened with, and how many: each is taken alone.
    alone: HashMap<Key, u32>,
    /// Rows two crashes happened with, the second time alone: not decoded again.
    condemned: HashSet<Key>,
    /// The file names a batch now.
    written: bool,
}

thread_local! {
    // The writer is single-threaded.
    static SUSPECTS: RefCell<Suspects> = RefCell::new(Suspects::default());
}

fn key(row: &StagedRow) -> Key {
    (row.xid, row.seq)
}

fn postmaster() -> (i64, u32) {
    // SAFETY: a global set once by the postmaster before it forked us.
    (unsafe { pg_sys::PgStartTime }, shared::crash_generation())
}

/// load reads what the last writer of database `dboid` left, at the writer's start.
pub fn load(dboid: u32) {
    let path = format!("activity_log.{dboid}.reading");
    let left = std::fs::read_to_string(&path).ok();
    let _ = std::fs::remove_file(&path);
    SUSPECTS.with_borrow_mut(|s| s.path = path.clone());
    let Some(left) = left else { return };
    let mut lines = left.lines();
    let header: Vec<i64> = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|v| v.parse().ok())
        .collect();
    let (started, crashes) = postmaster();
    if header.len() != 2 || header[0] != started || header[1] >= crashes as i64 {
        return; // no crash-restart of this postmaster since it was written
    }
    let rows: Vec<(Key, u32)> = lines
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let xid = fields.next()?.parse().ok()?;
            let seq = fields.next()?.parse().ok();
            let strikes: u32 = fields.next()?.parse().ok()?;
            Some(((xid, seq), strikes + 1))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let names = rows
        .iter()
        .map(|((xid, seq), _)| match seq {
            Some(seq) => format!("{xid} (piece {seq})"),
            None => xid.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    SUSPECTS.with_borrow_mut(|s| match rows[..] {
        [(row, strikes)] if strikes >= 2 => {
            log!(
                "activity_log: the server crashed while the writer read the staged records of transaction {names} alone, for the second time: they are kept in activity_log.dead_letters, not read again"
            );
            s.condemned.insert(row);
        }
        [_] => {
            log!(
                "activity_log: the server crashed while the writer read the staged records of transaction {names} alone: they are read once more, and kept in activity_log.dead_letters if the server crashes again"
            );
            s.alone.extend(rows);
        }
        _ => {
            log!(
                "activity_log: the server crashed while the writer read the staged records of transactions {names}: each is read alone from now on"
            );
            s.alone.extend(rows);
        }
    });
}

/// reading names the staged frames of the batch about to be decoded (see the module comment).
pub fn reading<'a>(rows: impl Iterator<Item = &'a StagedRow>) {
    let (started, crashes) = postmaster();
    let mut text = format!("{started} {crashes}\n");
    let mut any = false;
    for row in rows {
        any = true;
        let strikes = SUSPECTS.with_borrow(|s| s.alone.get(&key(row)).copied().unwrap_or(0));
        let seq = row.seq.map_or("-".to_string(), |s| s.to_string());
        text.push_str(&format!("{} {seq} {strikes}\n", row.xid));
    }
    if !any {
        return;
    }
    SUSPECTS.with_borrow_mut(|s| match std::fs::write(&s.path, text) {
        Ok(()) => s.written = true,
        Err(e) => log!("activity_log: could not write {}: {e}", s.path),
    });
}

/// done forgets the batch [`reading`] named: it committed, or failed with an ERROR.
pub fn done() {
    SUSPECTS.with_borrow_mut(|s| {
        if s.written {
            let _ = std::fs::remove_file(&s.path);
            s.written = false;
        }
    });
}

/// condemned: two crashes happened while this row was read, the second time alone.
pub fn condemned(row: &StagedRow) -> bool {
    SUSPECTS.with_borrow(|s| s.condemned.contains(&key(row)))
}

/// alone: a crash happened while this row was read; it goes in a batch alone.
pub fn alone(xid: u64, seq: Option<i64>) -> bool {
    SUSPECTS.with_borrow(|s| !s.alone.is_empty() && s.alone.contains_key(&(xid, seq)))
}
