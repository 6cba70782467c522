//! capture/applied.rs: the rows a logical replication worker's transaction did capture.
//!
//! Runs in logical replication apply and tablesync workers only (rows.rs asks
//! `process::in_logical_worker` first). A trigger enabled ALWAYS or REPLICA that writes to a
//! tracked table runs its statements through the executor, so rows.rs captures them; PostgreSQL's
//! statistics count them among the applied rows too. replication.rs takes these counts out of
//! the gap records it leaves at PRE_COMMIT, so that no row is both recorded and reported
//! missing. Stores into a per-backend list: no ERROR, and no allocation at transaction end.

use std::cell::RefCell;

use crate::record::Op;
use crate::unguarded;

/// What a transaction did to a table (all of a tracked table's partitions, summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub truncated: bool,
}

impl Counts {
    pub(super) fn any(&self) -> bool {
        self.inserted > 0 || self.updated > 0 || self.deleted > 0 || self.truncated
    }

    pub(super) fn add(&mut self, other: Counts) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.truncated |= other.truncated;
    }

    /// less is what is left of `self` once `captured` is taken out (never below zero).
    pub(super) fn less(self, captured: Counts) -> Counts {
        Counts {
            inserted: (self.inserted - captured.inserted).max(0),
            updated: (self.updated - captured.updated).max(0),
            deleted: (self.deleted - captured.deleted).max(0),
            truncated: self.truncated && !captured.truncated,
        }
    }

    pub(super) fn rows(&self) -> i64 {
        self.inserted + self.updated + self.deleted
    }
}

thread_local! {
    /// Rows this logical replication worker did capture in the open transaction (a trigger
    /// enabled ALWAYS or REPLICA that writes to a tracked table runs its statements through
    /// the executor): (subtransaction, tracked root, counts). The statistics count them too.
    pub(super) static CAPTURED: RefCell<Vec<(u32, u32, Counts)>> = const { RefCell::new(Vec::new()) };
}

/// note_captured counts rows of `root` that a logical replication worker captured (see
/// CAPTURED); called by rows::push_change in such a worker only.
pub fn note_captured(root: u32, op: Op, rows: i64) {
    let counts = match op {
        Op::Insert | Op::Copy => Counts {
            inserted: rows,
            ..Counts::default()
        },
        Op::Update => Counts {
            updated: rows,
            ..Counts::default()
        },
        Op::Delete => Counts {
            deleted: rows,
            ..Counts::default()
        },
        Op::Truncate | Op::TruncatePartition => Counts {
            truncated: true,
            ..Counts::default()
        },
        Op::Gap => return,
    };
    // SAFETY: reads transaction state.
    let subxact = unsafe { unguarded::GetCurrentSubTransactionId() };
    CAPTURED.with_borrow_mut(|c| c.push((subxact, root, counts)));
}

/// forget_subxact drops what an aborted subtransaction (and its children) captured.
pub fn forget_subxact(subid: u32) {
    CAPTURED.with_borrow_mut(|c| c.retain(|e| e.0 < subid));
}

/// at_transaction_end forgets the transaction's captured counts. No ERROR, no allocation.
pub fn at_transaction_end() {
    CAPTURED.with_borrow_mut(Vec::clear);
}
