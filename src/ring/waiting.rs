//! ring/waiting.rs: the databases waiting for a ring.
//!
//! There are `activity_log.max_databases` rings and any number of audited databases. A
//! transaction whose database has no ring publishes through durable_queue instead (nothing is
//! lost, only slower) and notes its database here; the launcher then gives the database a ring
//! as soon as one is free, and asks the writer that has held its ring longest to hand it back
//! when none is (worker/launcher.rs). Also noted here: every database at the launcher's start,
//! so that transactions staged before a restart are found.
//!
//! A waiting database also keeps the count of records it lost meanwhile (failure records of
//! rolled-back transactions: they cannot be staged, and there was no ring to take them); the
//! ring it gets next counts them as dropped, so its writer puts a gap record in the trail.
//!
//! Atomics only (a database is noted with one compare-and-swap into an empty entry): callable
//! from a commit or abort path. When every entry is taken, a database is noted again by its
//! next transaction; its records wait in durable_queue meanwhile.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

/// How many databases can wait at once.
pub const WAITING_LEN: usize = 1024;

#[repr(C)]
pub struct Waiting {
    entries: [AtomicU32; WAITING_LEN],
    /// Records lost by the database of the same entry while it waited.
    dropped: [AtomicU64; WAITING_LEN],
}

impl Waiting {
    pub const fn new() -> Self {
        Waiting {
            entries: [const { AtomicU32::new(0) }; WAITING_LEN],
            dropped: [const { AtomicU64::new(0) }; WAITING_LEN],
        }
    }

    /// note adds `dboid` unless it is there already; its entry, None when every entry is taken.
    pub fn note(&self, dboid: u32) -> Option<usize> {
        if let Some(at) = self.entries.iter().position(|e| e.load(Acquire) == dboid) {
            return Some(at);
        }
        self.entries
            .iter()
            .position(|e| e.compare_exchange(0, dboid, AcqRel, Acquire).is_ok())
    }

    /// note_dropped adds `dboid` and `records` it lost; false when every entry is taken.
    pub fn note_dropped(&self, dboid: u32, records: u64) -> bool {
        let Some(at) = self.note(dboid) else {
            return false;
        };
        self.dropped[at].fetch_add(records, AcqRel);
        true
    }

    /// remove takes `dboid` off the list and returns what it lost while it waited.
    pub fn remove(&self, dboid: u32) -> u64 {
        let mut lost = 0;
        for (e, d) in self.entries.iter().zip(&self.dropped) {
            if e.load(Acquire) == dboid {
                // Counted before the entry is freed; a loss noted in between the two steps
                // would go to the entry's next database (two atomics apart: not worth a lock).
                lost += d.swap(0, AcqRel);
                let _ = e.compare_exchange(dboid, 0, AcqRel, Acquire);
            }
        }
        lost
    }

    /// databases lists the databases waiting, in entry order.
    pub fn databases(&self) -> Vec<u32> {
        self.entries
            .iter()
            .map(|e| e.load(Acquire))
            .filter(|&d| d != 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_waits_once_and_leaves() {
        let w = Waiting::new();
        assert_eq!(w.note(7), Some(0));
        assert_eq!(w.note(7), Some(0));
        assert!(w.note_dropped(9, 3));
        assert!(w.note_dropped(9, 2));
        assert_eq!(w.databases(), vec![7, 9]);
        assert_eq!(w.remove(7), 0);
        assert_eq!(w.databases(), vec![9]);
        for d in 100..100 + WAITING_LEN as u32 - 1 {
            assert!(w.note(d).is_some());
        }
        assert_eq!(w.note(5), None, "full");
        assert!(!w.note_dropped(5, 1));
        assert_eq!(w.note(9), Some(1), "already there");
        assert_eq!(w.remove(9), 5);
        assert!(w.note_dropped(5, 1), "room again");
    }
}
