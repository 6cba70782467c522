//! capture/tracked.rs: this backend's copy of `activity_log.tracked_tables`.
//!
//! Runs in the executor start path of every DML statement, so a lookup is one hash probe.
//! Each partition of a tracked table maps to the tracked root, so a statement that targets a
//! partition directly is captured as a change of the root.
//!
//! The copy is reloaded (one SPI query) when PostgreSQL's own invalidation says it may be
//! stale, as pg_cron does for its job cache. Invalidations are per database, so DDL in one
//! database costs the backends of another nothing, and DDL on untracked tables (a temporary
//! table, say) costs nobody a reload. A relcache callback marks the copy stale when the
//! invalidated relation is in it (a tracked table, one of its partitions, tracked_tables or
//! redactions), or on a full reset:
//!
//! - DROP, RENAME, SET SCHEMA, ADD/DROP PRIMARY KEY and RENAME COLUMN of a tracked table or
//!   partition change its pg_class, pg_index or pg_attribute rows, which invalidates it.
//! - ATTACH PARTITION, CREATE TABLE … PARTITION OF and DETACH PARTITION invalidate the parent
//!   (StorePartitionBound, DetachPartitionFinalize), which is in the copy.
//! - Rows of tracked_tables do not invalidate anything by themselves: every statement that
//!   writes it (track(), untrack(), a dropped table's row leaving it, plain DML) invalidates
//!   tracked_tables, through note_targets and note_change. The invalidation is transactional:
//!   this backend sees it at the statement's end, others when the transaction commits, and an
//!   abort replays it here (the copy may hold the rolled-back rows).
//! - A schema rename touches pg_namespace only: a syscache callback on it marks the copy stale
//!   when the schema is one of the tracked roots'.
//!
//! While the copy is empty (the extension is not installed) any relcache invalidation marks it
//! stale, so that CREATE EXTENSION is seen; reloading it then costs one catalog probe, no SPI.
//!
//! `activity_log.tracked_tables` itself is in the copy too: whoever changes what is tracked,
//! and however (track(), untrack(), a dropped table, plain DML), the change is captured, and
//! the writer stores it as a system record; so is `activity_log.redactions`. Nothing in tracked_tables may make a statement
//! fail: the loader skips what it cannot use, with a WARNING.
//!
//! Each reload logs "activity_log: reloading tracked tables" at DEBUG1.

use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// A tracked table, as the capture needs it.
#[derive(Debug)]
pub struct Tracked {
    /// The tracked root (itself, or the partitioned table a partition belongs to).
    pub relid: u32,
    /// The root's schema and name. A rename invalidates the root, which reloads this copy.
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

/// An invalidation that arrived while the copy was being loaded, checked against the new copy.
#[derive(Clone, Copy)]
enum Inval {
    Relation(u32),
    Namespace(u32),
}

/// At most this many invalidations are remembered during a load; more mark the copy stale.
const MAX_DURING_LOAD: usize = 64;

#[derive(Default)]
struct Cache {
    /// The copy matches tracked_tables as of the last invalidation processed.
    valid: bool,
    loading: bool,
    /// Invalidations seen while loading (None when there were too many).
    during_load: Option<Vec<Inval>>,
    tables: ByRelid,
    /// Syscache hash values of the tracked roots' schemas (NAMESPACEOID).
    namespaces: Vec<u32>,
    /// activity_log._capture_rows(), the function of COPY's synthetic triggers (copy_from.rs);
    /// InvalidOid without it.
    capture_function: pg_sys::Oid,
}

impl Cache {
    /// matters tells whether `inval` may change what this copy holds.
    fn matters(&self, inval: Inval) -> bool {
        match inval {
            Inval::Relation(relid) => {
                relid == pg_sys::InvalidOid.to_u32()
                    || self.tables.is_empty()
                    || self.tables.contains_key(&relid)
            }
            Inval::Namespace(hash) => hash == 0 || self.namespaces.contains(&hash),
        }
    }

    fn note(&mut self, inval: Inval) {
        if self.loading {
            match &mut self.during_load {
                Some(seen) if seen.len() < MAX_DURING_LOAD => seen.push(inval),
                _ => self.during_load = None,
            }
        } else if self.valid && self.matters(inval) {
            self.valid = false;
        }
    }
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
    /// Set when a callback could not reach CACHE (it never should): the copy is stale.
    static MISSED: Cell<bool> = const { Cell::new(false) };
    /// The oid of activity_log.tracked_tables (InvalidOid: none); None until looked up, and
    /// again after an invalidation that may change it.
    static TRACKED_TABLES: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Not executable by PUBLIC: run with the extension owner's rights.
const LOAD: &str = "SELECT relid, root, key_columns, exclude_columns, has_foreign_partition, durable FROM activity_log._tracked()";

/// lookup returns how `relid` is tracked, if it is (directly or as a partition).
pub fn lookup(relid: u32) -> Option<Rc<Tracked>> {
    refresh_if_stale();
    CACHE.with_borrow(|c| c.tables.get(&relid).cloned())
}

/// all lists every relation of this database that is tracked (directly or as a partition),
/// with how it is tracked.
pub fn all() -> Vec<(u32, Rc<Tracked>)> {
    refresh_if_stale();
    CACHE.with_borrow(|c| c.tables.iter().map(|(&k, v)| (k, v.clone())).collect())
}

/// stale tells whether the next lookup reloads the copy (one SPI query).
pub fn stale() -> bool {
    MISSED.get() || CACHE.with_borrow(|c| !c.valid && !c.loading)
}

/// capture_function is the oid of `activity_log._capture_rows()`, which the trigger manager
/// calls for the synthetic triggers a COPY finds in the relation cache; None when the
/// installed extension has no such function.
pub fn capture_function() -> Option<pg_sys::Oid> {
    refresh_if_stale();
    let oid = CACHE.with_borrow(|c| c.capture_function);
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// note_change makes every backend of this database reload (this one after the current
/// statement, the others when the transaction commits): an invalidation of tracked_tables.
pub fn note_change() {
    let own = tracked_tables();
    if own != pg_sys::InvalidOid {
        // SAFETY: tracked_tables exists in this transaction (looked up just now, or kept since
        // the last invalidation that could have dropped it).
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(own) };
    }
}

/// note_targets calls note_change when `ps` writes activity_log.tracked_tables (plain DML by
/// its owner, or track() and friends): PostgreSQL sends no invalidation for a table's rows.
///
/// # Safety
/// `ps` is a valid PlannedStmt about to be executed.
pub unsafe fn note_targets(ps: *mut pg_sys::PlannedStmt) {
    // SAFETY: the plan's resultRelations is an integer List of range-table indexes (from 1).
    unsafe {
        let results = (*ps).resultRelations;
        if results.is_null() {
            return; // a SELECT: the usual case, decided without a lookup
        }
        let own = tracked_tables();
        if own == pg_sys::InvalidOid {
            return;
        }
        let rtable = (*ps).rtable;
        for i in 0..(*results).length as usize {
            let index = (*(*results).elements.add(i)).int_value as usize;
            if index == 0 || index > (*rtable).length as usize {
                continue;
            }
            let rte = (*(*rtable).elements.add(index - 1))
                .ptr_value
                .cast::<pg_sys::RangeTblEntry>();
            if (*rte).relid == own {
                pg_sys::CacheInvalidateRelcacheByRelid(own);
                return;
            }
        }
    }
}

/// note_copy calls note_change when COPY FROM writes activity_log.tracked_tables.
pub fn note_copy(relid: pg_sys::Oid) {
    if relid != pg_sys::InvalidOid && relid == tracked_tables() {
        note_change();
    }
}

/// tracked_tables is the oid of activity_log.tracked_tables, InvalidOid without the extension.
fn tracked_tables() -> pg_sys::Oid {
    register_once();
    if let Some(oid) = TRACKED_TABLES.get() {
        return oid;
    }
    // SAFETY: syscache lookups inside the current transaction (a statement is running).
    let oid = unsafe {
        let schema = pg_sys::get_namespace_oid(c"activity_log".as_ptr(), true);
        if schema == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::get_relname_relid(c"tracked_tables".as_ptr(), schema)
        }
    };
    TRACKED_TABLES.set(Some(oid));
    oid
}

/// register_once registers the invalidation callbacks of this backend (they cannot be removed;
/// a backend registers them the first time it needs the copy).
fn register_once() {
    if REGISTERED.replace(true) {
        return;
    }
    // SAFETY: plain registrations into backend-local arrays (an ERROR only when full, which
    // leaves REGISTERED set: there is no way to retry a full array).
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            Some(namespace_callback),
            pg_sys::Datum::from(0),
        );
    }
}

/// relcache_callback marks the copy stale when `relid` is in it (InvalidOid: every relation).
/// It runs while invalidations are processed: no ERROR, no allocation in PostgreSQL.
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if let Some(own) = TRACKED_TABLES.get()
        && (relid == pg_sys::InvalidOid || relid == own || own == pg_sys::InvalidOid)
    {
        TRACKED_TABLES.set(None);
    }
    note(Inval::Relation(relid.to_u32()));
}

/// namespace_callback marks the copy stale when a tracked root's schema changes (a rename).
unsafe extern "C-unwind" fn namespace_callback(
    _arg: pg_sys::Datum,
    _cacheid: std::ffi::c_int,
    hashvalue: u32,
) {
    note(Inval::Namespace(hashvalue));
}

fn note(inval: Inval) {
    let noted = CACHE.with(|c| c.try_borrow_mut().map(|mut c| c.note(inval)).is_ok());
    if !noted {
        MISSED.set(true);
    }
}

thread_local! {
    /// The copy was loaded with a transaction snapshot: reloaded after the transaction.
    static LOADED_UNDER_OLD_SNAPSHOT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// at_transaction_end marks the copy stale when this transaction loaded it with its own
/// (REPEATABLE READ or SERIALIZABLE) snapshot. Runs after commit and abort: no ERROR.
pub fn at_transaction_end() {
    if LOADED_UNDER_OLD_SNAPSHOT.replace(false) {
        CACHE.with_borrow_mut(|c| c.valid = false);
    }
}

fn refresh_if_stale() {
    let stale = CACHE.with_borrow_mut(|c| {
        if MISSED.replace(false) {
            c.valid = false;
        }
        let stale = !c.valid && !c.loading;
        if stale {
            c.loading = true;
            c.during_load = Some(Vec::new());
        }
        stale
    });
    if !stale {
        return;
    }
    register_once();
    // Cleared however load() ends (an ERROR or a cancel unwinds through here too).
    struct Loading;
    impl Drop for Loading {
        fn drop(&mut self) {
            CACHE.with_borrow_mut(|c| c.loading = false);
        }
    }
    let _loading = Loading;
    debug1!("activity_log: reloading tracked tables");
    let (tables, namespaces, capture_function) = load();
    // SAFETY: read of a backend global. Under REPEATABLE READ or SERIALIZABLE the copy was
    // read with the transaction's snapshot, which may predate a committed track(): good for
    // this transaction, which sees that snapshot too, not for the next ones.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        LOADED_UNDER_OLD_SNAPSHOT.set(true);
    }
    CACHE.with_borrow_mut(|c| {
        c.tables = tables;
        c.namespaces = namespaces;
        c.capture_function = capture_function;
        c.valid = match c.during_load.take() {
            Some(seen) => !seen.iter().any(|&inval| c.matters(inval)),
            None => false,
        };
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

/// namespace_hash is the NAMESPACEOID syscache hash of `relid`'s schema, as its callback gets it.
fn namespace_hash(relid: pg_sys::Oid) -> u32 {
    // SAFETY: syscache lookups inside the loading statement's transaction.
    unsafe {
        let nsp = pg_sys::get_rel_namespace(relid);
        pg_sys::GetSysCacheHashValue(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            pg_sys::Datum::from(nsp),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    }
}

/// load reads the tracked tables of this database, the syscache hashes of their schemas and
/// the oid of `activity_log._capture_rows()`; none when the extension is not installed.
fn load() -> (ByRelid, Vec<u32>, pg_sys::Oid) {
    let mut out = ByRelid::default();
    let mut namespaces = Vec::new();
    // SAFETY: catalog lookup inside the statement's transaction.
    let installed =
        unsafe { pg_sys::get_extension_oid(c"activity_log".as_ptr(), true) } != pg_sys::InvalidOid;
    if !installed {
        return (out, namespaces, pg_sys::InvalidOid);
    }
    // SAFETY: a catalog lookup inside the statement's transaction (missing_ok: an extension
    // installed before the function existed has none).
    let capture_function = unsafe {
        let name = crate::versions::qualified_name_list(c"activity_log._capture_rows".as_ptr());
        pg_sys::LookupFuncName(name, 0, std::ptr::null(), true)
    };
    let _nested = super::context::Nested::enter(); // the query below is not a user statement
    let rows: Vec<(u32, Tracked)> = super::context::as_extension_owner(|| {
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
                if relid == root {
                    let hash = namespace_hash(root);
                    if !namespaces.contains(&hash) {
                        namespaces.push(hash);
                    }
                }
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
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("activity_log: could not read activity_log.tracked_tables: {e}"),
            None,
        )
    });
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
    (out, namespaces, capture_function)
}
