//! capture/tracked.rs: this backend's copy of `activity_log.tracked_tables`.
//!
//! Runs in the executor start path of every DML statement, so a lookup is one hash probe.
//! The copy is reloaded (one SPI query) when the shared tracking generation moves: track(),
//! untrack() and every committed DDL statement move it, because partitions can be attached,
//! keys changed and tables dropped by DDL. Each partition of a tracked table maps to the
//! tracked root, so a statement that targets a partition directly is captured as a change of
//! the root.
//!
//! `activity_log.tracked_tables` itself is in the copy too: whoever changes what is tracked,
//! and however (track(), untrack(), a dropped table, plain DML), the change is captured, and
//! the writer stores it as a system record; so is `activity_log.redactions`. Nothing in tracked_tables may make a statement
//! fail: the loader skips what it cannot use, with a WARNING.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use crate::ring;

/// A tracked table, as the capture needs it.
#[derive(Debug)]
pub struct Tracked {
    /// The tracked root (itself, or the partitioned table a partition belongs to).
    pub relid: u32,
    /// The root's schema and name. A rename is DDL, which reloads this copy.
    pub schema: Vec<u8>,
    pub table: Vec<u8>,
    /// Primary-key columns of the root; empty when it has none (the key is the whole row).
    pub key_columns: Vec<Vec<u8>>,
    pub exclude_columns: Vec<Vec<u8>>,
    /// A foreign table was attached as a partition after track(): its rows cannot be
    /// collected (PostgreSQL refuses transition tables there), so statements leave a gap.
    pub has_foreign_partition: bool,
    /// Tracked with durability 'sync': records are staged inside the transaction.
    pub durable: bool,
}

#[derive(Default)]
struct Cache {
    generation: u64,
    loading: bool,
    tables: ByRelid,
}

/// Relation oids are distinct integers that nobody picks to collide: a multiplicative hash
/// spreads them well enough, for a tenth of the default SipHash (two lookups per statement).
type ByRelid = HashMap<u32, Rc<Tracked>, BuildHasherDefault<OidHasher>>;

#[derive(Default)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for u32 keys; FNV-1a keeps the hasher whole.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    /// Set when this transaction changed tracking or ran DDL: bump the generation at commit.
    static CHANGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Not executable by PUBLIC: run with the extension owner's rights.
const LOAD: &str = "SELECT relid, root, key_columns, exclude_columns, has_foreign_partition, durable FROM activity_log._tracked()";

/// lookup returns how `relid` is tracked, if it is (directly or as a partition).
pub fn lookup(relid: u32) -> Option<Rc<Tracked>> {
    refresh_if_stale();
    CACHE.with_borrow(|c| c.tables.get(&relid).cloned())
}

/// note_change makes every backend reload when this transaction commits, and this one now.
pub fn note_change() {
    CHANGED.set(true);
    CACHE.with_borrow_mut(|c| c.generation = 0);
}

/// at_commit publishes a change noted in this transaction (an atomic add; cannot fail).
pub fn at_commit() {
    if CHANGED.replace(false) {
        ring::bump_tracking_generation();
    }
}

pub fn at_abort() {
    if CHANGED.replace(false) {
        CACHE.with_borrow_mut(|c| c.generation = 0);
    }
}

fn refresh_if_stale() {
    let generation = ring::tracking_generation();
    let stale = CACHE.with_borrow_mut(|c| {
        let stale = c.generation != generation && !c.loading;
        c.loading |= stale;
        stale
    });
    if !stale {
        return;
    }
    // Cleared however load() ends (an ERROR or a cancel unwinds through here too).
    struct Loading;
    impl Drop for Loading {
        fn drop(&mut self) {
            CACHE.with_borrow_mut(|c| c.loading = false);
        }
    }
    let _loading = Loading;
    let tables = load();
    CACHE.with_borrow_mut(|c| {
        c.tables = tables;
        c.generation = generation;
    });
}

/// names is the schema and name of `relid` (empty when it no longer exists).
fn names(relid: pg_sys::Oid) -> (Vec<u8>, Vec<u8>) {
    let bytes = |p: *mut std::ffi::c_char| {
        if p.is_null() {
            Vec::new()
        } else {
            // SAFETY: a NUL-terminated string palloc'd by the syscache lookup below.
            unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes().to_vec()
        }
    };
    // SAFETY: syscache lookups inside the loading statement's transaction.
    unsafe {
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        (bytes(nsp), bytes(pg_sys::get_rel_name(relid)))
    }
}

/// load reads the tracked tables of this database; none when the extension is not installed.
fn load() -> ByRelid {
    let mut out = ByRelid::default();
    // SAFETY: catalog lookup inside the statement's transaction.
    let installed =
        unsafe { pg_sys::get_extension_oid(c"activity_log".as_ptr(), true) } != pg_sys::InvalidOid;
    if !installed {
        return out;
    }
    let _nested = super::hooks::Nested::enter(); // the query below is not a user statement
    let rows: Vec<(u32, Tracked)> = super::hooks::as_extension_owner(|| {
        Spi::connect(|client| {
            let table = client.select(LOAD, None, &[])?;
            let mut rows = Vec::new();
            for row in table {
                let relid: pg_sys::Oid = row.get(1)?.unwrap_or(pg_sys::InvalidOid);
                let root: pg_sys::Oid = row.get(2)?.unwrap_or(pg_sys::InvalidOid);
                let keys: Vec<Option<String>> = row.get(3)?.unwrap_or_default();
                let excluded: Vec<Option<String>> = row.get(4)?.unwrap_or_default();
                if excluded.contains(&None) {
                    warning!(
                        "activity_log: ignoring NULL in exclude_columns of table {}",
                        root.to_u32()
                    );
                }
                let has_foreign_partition: bool = row.get(5)?.unwrap_or(false);
                let durable: bool = row.get(6)?.unwrap_or(false);
                let (schema, table) = names(root);
                rows.push((
                    relid.to_u32(),
                    Tracked {
                        relid: root.to_u32(),
                        schema,
                        table,
                        key_columns: keys.into_iter().flatten().map(String::into_bytes).collect(),
                        exclude_columns: excluded
                            .into_iter()
                            .flatten()
                            .map(String::into_bytes)
                            .collect(),
                        has_foreign_partition,
                        durable,
                    },
                ));
            }
            Ok::<_, pgrx::spi::Error>(rows)
        })
    })
    .unwrap_or_else(|e| error!("activity_log: could not read activity_log.tracked_tables: {e}"));
    for (relid, tracked) in rows {
        out.insert(relid, Rc::new(tracked));
    }
    // What is tracked, and what was redact()ed (staged inside the transaction: the trail
    // then holds the redaction whenever the redacted row shows it).
    for (name, key, durable) in [
        (c"tracked_tables", "relid", false),
        (c"redactions", "id", true),
    ] {
        // SAFETY: catalog lookups inside the statement's transaction.
        let own = unsafe {
            let schema = pg_sys::get_namespace_oid(c"activity_log".as_ptr(), true);
            pg_sys::get_relname_relid(name.as_ptr(), schema)
        };
        if own != pg_sys::InvalidOid {
            let (schema, table) = names(own);
            let tracked = Tracked {
                relid: own.to_u32(),
                schema,
                table,
                key_columns: vec![key.as_bytes().to_vec()],
                exclude_columns: Vec::new(),
                has_foreign_partition: false,
                durable,
            };
            out.insert(own.to_u32(), Rc::new(tracked));
        }
    }
    out
}
