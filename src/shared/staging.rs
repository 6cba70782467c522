//! shared/staging.rs: the staging table, one entry per backend (indexed by proc number).
//!
//! A backend's transaction that stages its records in durable_queue without an announcement
//! in a ring is marked here from its PRE_COMMIT until its commit or abort callback
//! (capture/xact.rs); the writer holds back ring frames with a higher commit order key
//! meanwhile (worker/drain.rs). Not part of the ring: it concerns the staged path, is keyed
//! by backend, not by database, and serves every ring alike.
//!
//! Atomics only (`SeqCst`, see each function): callable from the commit and abort paths.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use super::{is_initialised, staging_offset, state};

/// A backend's transaction between staging its records without an announcement in a ring and
/// counting them in `staged_commits`, which its commit callback does only after the
/// transaction became visible: see [`staging_begins`]. Indexed by the backend's proc number.
#[repr(C)]
pub(super) struct Staging {
    /// A commit order key at most the transaction's; 0 when the entry is unused.
    key: AtomicU64,
    dboid: AtomicU32,
}

/// staging_table is the staging table (see [`Staging`]).
fn staging_table() -> &'static [Staging] {
    let c = state();
    // SAFETY: the table follows the state block (see total_size) and was zeroed at
    // initialisation; it lives as long as the shared memory.
    unsafe {
        let at = std::ptr::from_ref(c).cast::<u8>().add(staging_offset());
        std::slice::from_raw_parts(at.cast::<Staging>(), c.staging_entries as usize)
    }
}

/// my_staging is this backend's entry of the staging table, None for a process without one.
fn my_staging() -> Option<&'static Staging> {
    let procno = crate::versions::my_proc_number()?;
    staging_table().get(usize::try_from(procno).ok()?)
}

/// staging_begins marks this backend's transaction, about to stage its records without an
/// announcement in a ring, until [`staging_ends`] in its commit or abort callback; `key` is at
/// most its commit order key (the WAL insert position before it stages). The writer stores no
/// ring frame with a higher key meanwhile ([`staging_key`]): once the transaction is visible
/// and before its commit callback counts it in `staged_commits`, another transaction may change
/// its rows and commit through the ring, and must not be stored before it.
pub fn staging_begins(dboid: u32, key: u64) {
    // Every backend and background worker has an entry.
    if let Some(e) = my_staging() {
        e.dboid.store(dboid, SeqCst);
        e.key.store(key.max(1), SeqCst);
    }
}

/// staging_ends ends what [`staging_begins`] marked; in the commit callback after
/// `staged_commits` was bumped, so that a writer that no longer sees the mark sees the count.
/// Returns the database of the mark it ended (its writer may wait for it), None when nothing
/// was marked.
pub fn staging_ends() -> Option<u32> {
    if !is_initialised() {
        return None;
    }
    let e = my_staging()?;
    (e.key.swap(0, SeqCst) != 0).then(|| e.dboid.load(SeqCst))
}

/// staging_key is the lowest key of the transactions of `dboid` between [`staging_begins`]
/// and [`staging_ends`], None when there are none.
pub fn staging_key(dboid: u32) -> Option<u64> {
    staging_table()
        .iter()
        .filter_map(|e| {
            // The database is stored before the key, and read after it.
            let key = e.key.load(SeqCst);
            (key != 0 && e.dboid.load(SeqCst) == dboid).then_some(key)
        })
        .min()
}
