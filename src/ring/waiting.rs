//! ring/waiting.rs: the databases waiting for a ring.
//!
//! There are `activity_log.max_databases` rings and any number of audited databases. A
//! transaction whose database has no ring publishes through durable_queue instead (nothing is
//! lost, only slower) and notes its database here; the launcher then gives the database a ring
//! as soon as one is free, and asks the writer that has held its ring longest to hand it back
//! when none is (worker/launcher.rs). Also noted here: every database at the launcher's start,
//! so that transactions staged before a restart are found.
//!
//! Atomics only (a database is noted with one compare-and-swap into an empty entry): callable
//! from a commit path. When every entry is taken, a database is noted again by its next
//! transaction; its records wait in durable_queue meanwhile.

use std::sync::atomic::{AtomicU32, Ordering::*};

/// How many databases can wait at once.
pub const WAITING_LEN: usize = 1024;

#[repr(C)]
pub struct Waiting {
    entries: [AtomicU32; WAITING_LEN],
}

impl Waiting {
    pub const fn new() -> Self {
        Waiting {
            entries: [const { AtomicU32::new(0) }; WAITING_LEN],
        }
    }

    /// note adds `dboid` unless it is there already; false when every entry is taken.
    pub fn note(&self, dboid: u32) -> bool {
        if self.entries.iter().any(|e| e.load(Acquire) == dboid) {
            return true;
        }
        self.entries
            .iter()
            .any(|e| e.compare_exchange(0, dboid, AcqRel, Acquire).is_ok())
    }

    /// remove takes `dboid` off the list.
    pub fn remove(&self, dboid: u32) {
        for e in &self.entries {
            let _ = e.compare_exchange(dboid, 0, AcqRel, Acquire);
        }
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
        assert!(w.note(7));
        assert!(w.note(7));
        assert!(w.note(9));
        assert_eq!(w.databases(), vec![7, 9]);
        w.remove(7);
        assert_eq!(w.databases(), vec![9]);
        for d in 100..100 + WAITING_LEN as u32 - 1 {
            assert!(w.note(d));
        }
        assert!(!w.note(5), "full");
        assert!(w.note(9), "already there");
    }
}
