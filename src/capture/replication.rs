//! capture/replication.rs: tracked tables on a logical replication subscriber.
//!
//! The apply worker changes a subscribed table through ExecSimpleRelationInsert/Update/Delete
//! and ExecuteTruncateGuts, and the tablesync worker loads its initial copy through CopyFrom:
//! no ExecutorStart, no ProcessUtility. Their ResultRelInfo comes straight from the relation
//! cache, and only row triggers enabled REPLICA or ALWAYS fire there. Capturing those rows
//! would take a real trigger in pg_trigger, which activity_log never creates. So rows applied
//! by logical replication are not captured, and never silently:
//!
//! - `track()` refuses a table that is, or has a partition that is, a subscription target
//!   (sql/tracking.sql): audit it on the publisher.
//! - CREATE SUBSCRIPTION and ALTER SUBSCRIPTION … REFRESH / ADD / SET PUBLICATION that make a
//!   tracked table a target raise a WARNING naming it ([`after_subscription_command`]): not an
//!   ERROR, since CREATE SUBSCRIPTION may have created the remote slot already.
//! - In the apply and tablesync workers (which run this library, its hooks and its transaction
//!   callbacks like any process), [`before_commit`] leaves one gap record per tracked table and
//!   transaction that changed it: PostgreSQL's pending table statistics of the transaction
//!   give how many rows were inserted, updated and deleted, and whether it truncated the table;
//!   the record names the subscription and the replication origin.
//!
//! Ordinary backends pay one test of their backend type at PRE_COMMIT and per change record
//! (`process::in_logical_worker`), and nothing else.
//!
//! The commit path: reading the statistics, the lock table, the subscription's and origin's
//! names (missing_ok) raises no ERROR. The one thing that can is reloading this process's copy
//! of tracked_tables after it changed (one SPI query, under a snapshot pushed for it), which
//! every DML statement of the database needs as well; its ERROR aborts the applied
//! transaction, which the worker then retries: nothing commits unrecorded. A transaction a
//! `two_phase` subscription prepares publishes its gap records at PRE_PREPARE, without waiting
//! for ring space (a full ring counts them as dropped, which the trail then reports).

use pgrx::pg_sys;
use pgrx::pg_sys::ffi::pg_guard_ffi_boundary;
use pgrx::prelude::*;
use std::collections::BTreeMap;
use std::ffi::{CStr, c_char};
use std::rc::Rc;

use super::applied::{CAPTURED, Counts};
use super::tracked::{self, Tracked};
use super::{context, rows};
use crate::errors::{raise, warn};
use crate::record::Op;
use crate::unguarded;

/// before_commit leaves one gap record per tracked table that this logical replication
/// worker's transaction changed: the rows it applied cannot be captured. Called at
/// PRE_COMMIT, in such a worker only, before the transaction's records are published; and at
/// PRE_PREPARE (`prepared`) for a subscription with two_phase, whose records are then
/// published at once.
pub fn before_commit(prepared: bool) {
    // SAFETY: reads transaction state.
    let wrote = unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
    if !wrote || !context::capturing() {
        return;
    }
    let mut changed: BTreeMap<u32, (Rc<Tracked>, Counts)> = BTreeMap::new();
    let mut unknown: BTreeMap<u32, Rc<Tracked>> = BTreeMap::new();
    let tables = match tracked::stale() {
        true => with_snapshot(tracked::all),
        false => tracked::all(),
    };
    for (relid, table) in tables {
        let oid = pg_sys::Oid::from(relid);
        match changed_in_this_transaction(oid) {
            Some(counts) if counts.any() => {
                changed
                    .entry(table.relid)
                    .or_insert_with(|| (table.clone(), Counts::default()))
                    .1
                    .add(counts);
            }
            Some(_) => {}
            None if locked_for_writing(oid) => {
                unknown.insert(table.relid, table);
            }
            None => {}
        }
    }
    if changed.is_empty() && unknown.is_empty() {
        return;
    }
    let captured = CAPTURED.with_borrow(|c| {
        let mut by_root: BTreeMap<u32, Counts> = BTreeMap::new();
        for &(_, root, counts) in c {
            by_root.entry(root).or_default().add(counts);
        }
        by_root
    });
    let source = Source::current(prepared);
    // SAFETY: reads transaction state.
    let cid = unsafe { pg_sys::GetCurrentCommandId(false) };
    for (root, (table, counts)) in changed {
        let counts = counts.less(captured.get(&root).copied().unwrap_or_default());
        if counts.any() {
            let note = source.note(Some(counts));
            rows::push_change(
                &table,
                Op::Gap,
                cid,
                counts.rows(),
                Vec::new(),
                &note,
                |_| false,
            );
        }
    }
    for table in unknown.values() {
        let note = source.note(None);
        rows::push_change(table, Op::Gap, cid, 0, Vec::new(), &note, |_| false);
    }
}

/// with_snapshot runs `f`, which may read tracked_tables through SPI, with an active snapshot:
/// at PRE_COMMIT the workers have popped theirs, and SPI refuses to run without one ("cannot
/// execute SQL without an outer snapshot or portal"), as PostgreSQL's own deferred triggers
/// would at that point without the snapshot CommitTransaction pushes for them.
fn with_snapshot<R>(f: impl FnOnce() -> R) -> R {
    struct Pop(bool);
    impl Drop for Pop {
        fn drop(&mut self) {
            if self.0 {
                // SAFETY: pops the snapshot pushed below. While an ERROR unwinds, the top
                // may be another one (SPI's): the abort that follows resets the stack anyway.
                unsafe { pg_sys::PopActiveSnapshot() };
            }
        }
    }
    // SAFETY: inside the committing transaction, which may still take a snapshot.
    let pushed = unsafe {
        let push = !pg_sys::ActiveSnapshotSet();
        if push {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        push
    };
    let _pop = Pop(pushed);
    f()
}

/// changed_in_this_transaction is what the open transaction did to `relid`, from its pending
/// table statistics: the counts of each (sub)transaction level still open, plus what a
/// TRUNCATE at a level set aside (PostgreSQL keeps the counts from before the first TRUNCATE
/// of a level, and zeroes them). None when the statistics are not kept (track_counts off).
///
/// The pending entry's `trans` chain holds the transaction's counts until AtEOXact_PgStat,
/// which runs after PRE_COMMIT (and AtPrepare_PgStat after PRE_PREPARE). How the entry is
/// found is the one thing that differs between versions ([`pending_entry`]).
fn changed_in_this_transaction(relid: pg_sys::Oid) -> Option<Counts> {
    // SAFETY: reads a GUC variable.
    if !unsafe { pg_sys::pgstat_track_counts } {
        return None;
    }
    let mut counts = Counts::default();
    pending_entry(relid, |entry| {
        // SAFETY: the entry and its chain live in TopMemoryContext and TopTransactionContext
        // until the transaction ends; nothing here changes them.
        unsafe {
            let mut trans = (*entry).trans;
            while !trans.is_null() {
                let t = &*trans;
                counts.inserted += t.tuples_inserted;
                counts.updated += t.tuples_updated;
                counts.deleted += t.tuples_deleted;
                if t.truncdropped {
                    counts.truncated = true;
                    counts.inserted += t.inserted_pre_truncdrop;
                    counts.updated += t.updated_pre_truncdrop;
                    counts.deleted += t.deleted_pre_truncdrop;
                }
                trans = t.upper;
            }
        }
    });
    Some(counts)
}

/// pending_entry calls `f` with this backend's pending statistics entry of `relid`, if it has
/// one (a relation this transaction changed has one).
///
/// PostgreSQL 15: find_tabstat_entry returns the pending entry itself.
#[cfg(feature = "pg15")]
fn pending_entry(relid: pg_sys::Oid, f: impl FnOnce(*mut pg_sys::PgStat_TableStatus)) {
    // SAFETY: a lookup in this backend's pending statistics (NULL when it has none).
    let entry = unsafe { pg_sys::find_tabstat_entry(relid) };
    if !entry.is_null() {
        f(entry);
    }
}

/// From PostgreSQL 16, find_tabstat_entry returns a copy without the `trans` chain, whose
/// counts also hold earlier transactions' not yet flushed; the pending entry itself is the
/// relation cache entry's pgstat_info (pgstat_assoc_relation links them when the relation is
/// first written). Only a relation this transaction locked for writing can have changed, and
/// its cache entry is then there: no entry is built for the others, and none without a lock.
#[cfg(not(feature = "pg15"))]
fn pending_entry(relid: pg_sys::Oid, f: impl FnOnce(*mut pg_sys::PgStat_TableStatus)) {
    if !locked_for_writing(relid) {
        return;
    }
    // SAFETY: the relation is locked by this transaction, so its cache entry stays valid
    // while we hold the reference RelationIdGetRelation takes (RelationClose drops it).
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return;
        }
        let entry = (*rel).pgstat_info;
        if !entry.is_null() {
            f(entry);
        }
        pg_sys::RelationClose(rel);
    }
}

/// locked_for_writing tells whether this transaction holds the lock that writing `relid`
/// takes: ROW EXCLUSIVE for rows (the apply and tablesync workers keep it until the
/// transaction ends), ACCESS EXCLUSIVE for TRUNCATE.
fn locked_for_writing(relid: pg_sys::Oid) -> bool {
    // SAFETY: reads a backend global.
    let tag = pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: relid.to_u32(),
        locktag_field3: 0,
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_RELATION as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    };
    [pg_sys::RowExclusiveLock, pg_sys::AccessExclusiveLock]
        .into_iter()
        .any(|mode| {
            // SAFETY: looks up this backend's local lock table.
            unsafe { crate::versions::lock_held_by_me(&tag, mode as pg_sys::LOCKMODE) }
        })
}

/// Where applied rows come from, and who is behind them: the worker's subscription, its
/// owner, and its replication origin. From PostgreSQL 16 a member of pg_create_subscription
/// who may CREATE in the database can make a subscription that writes into a tracked table
/// (docs/src/security/model.md): the owner and run_as_owner name whose rights applied the rows.
struct Source {
    subscription: Option<String>,
    subscription_oid: Option<u32>,
    /// The subscription's owner (a role name; None when the role or subscription is gone).
    owner: Option<String>,
    /// pg_subscription.subrunasowner (PostgreSQL 16 on): the rows were applied with the
    /// owner's rights, not the table owner's. None on 15, where they always are.
    run_as_owner: Option<bool>,
    origin: Option<String>,
    /// The tablesync worker (initial copy of a table, then its catch-up), not the apply worker.
    tablesync: bool,
    /// A parallel apply worker (PostgreSQL 16 on, `streaming = parallel`): the leader apply
    /// worker handed it a large transaction.
    parallel: bool,
    /// The transaction is being prepared (two_phase), not committed.
    prepared: bool,
}

/// pg_subscription's oid (catalog/pg_subscription.h; not bound by pgrx).
const SUBSCRIPTION_RELATION_ID: u32 = 6100;

/// attributed_note is what a record this logical replication worker leaves says of who is
/// behind it: `note` with the subscription, its owner, run_as_owner and the worker added (a
/// gap's reason becomes a JSON object's `reason`; a captured row change, say by a trigger
/// enabled ALWAYS, gets them as its `details`). None: the note stands as it is (it carries
/// them already, or it is not one the writer reads as JSON). Called for each record of such a
/// worker: a few syscache lookups, no ERROR for a name that is gone.
pub fn attributed_note(note: &str, op: Op) -> Option<String> {
    let facts = match op {
        Op::Gap
            if serde_json::from_str::<serde_json::Value>(note)
                .is_ok_and(|v| v.get("reason").is_some()) =>
        {
            return None;
        }
        Op::Gap => serde_json::json!({ "reason": note }),
        Op::Insert | Op::Update | Op::Delete if note.is_empty() => serde_json::json!({}),
        _ => return None,
    };
    let mut facts = facts;
    Source::current(false).add_facts(&mut facts);
    Some(facts.to_string())
}

impl Source {
    fn current(prepared: bool) -> Source {
        // SAFETY: MySubscription is NULL or the worker's subscription; get_subscription_name
        // and replorigin_by_oid are catalog lookups with missing_ok (no ERROR for a name that
        // is gone) inside the committing transaction; bgw_name is a NUL-terminated array.
        unsafe {
            let sub = unguarded::MySubscription;
            let subid = (!sub.is_null()).then(|| (*sub).oid);
            let subscription = subid.and_then(|subid| {
                cstring(pg_guard_ffi_boundary(|| {
                    unguarded::get_subscription_name(subid, true)
                }))
            });
            let (owner, run_as_owner) = subid.map_or((None, None), |id| owner_of(id));
            let id = pg_sys::replorigin_session_origin;
            let origin = if u32::from(id) == pg_sys::InvalidRepOriginId {
                None
            } else {
                let mut name: *mut c_char = std::ptr::null_mut();
                pg_sys::replorigin_by_oid(id, true, &mut name);
                cstring(name)
            };
            let worker = pg_sys::MyBgworkerEntry;
            // "logical replication (tablesync) worker for subscription 16390 sync 16384".
            let name: &[u8] = match worker.is_null() {
                true => b"",
                false => CStr::from_ptr((*worker).bgw_name.as_ptr()).to_bytes(),
            };
            let tablesync = name.windows(6).any(|w| w == b" sync ");
            // "logical replication parallel apply worker for subscription 16390".
            let parallel = name.windows(15).any(|w| w == b"parallel apply ");
            Source {
                subscription,
                subscription_oid: subid.map(|o| o.to_u32()),
                owner,
                run_as_owner,
                origin,
                tablesync,
                parallel,
                prepared,
            }
        }
    }

    /// note is the gap record's note: a JSON object with the reason and the facts (the
    /// writer puts them in `details`). `counts` None: not known.
    fn note(&self, counts: Option<Counts>) -> String {
        let by = if self.tablesync {
            "by logical replication's table synchronization"
        } else {
            "by logical replication"
        };
        let mut whence = Vec::new();
        if let Some(o) = &self.origin {
            whence.push(format!("origin {o}"));
        }
        match (&self.subscription, &self.owner) {
            (Some(s), Some(r)) => whence.push(format!("subscription {s} owned by {r}")),
            (Some(s), None) => whence.push(format!("subscription {s}")),
            _ => {}
        }
        if self.parallel {
            whence.push("parallel apply worker".into());
        }
        let whence = match whence.is_empty() {
            true => String::new(),
            false => format!(" ({})", whence.join(", ")),
        };
        let prepared = match self.prepared {
            true => {
                " (the transaction was prepared for two-phase commit, and may yet be rolled back)"
            }
            false => "",
        };
        let reason = match counts {
            Some(c) => format!(
                "{}{} {} inserted, {} updated, {} deleted {by}{whence} were not captured{prepared}",
                if c.truncated { "a TRUNCATE and " } else { "" },
                c.inserted,
                if c.inserted == 1 { "row" } else { "rows" },
                c.updated,
                c.deleted
            ),
            None => format!(
                "rows changed {by}{whence} were not captured (how many is not known: track_counts is off){prepared}"
            ),
        };
        let mut facts = serde_json::json!({ "reason": reason });
        self.add_facts(&mut facts);
        if self.prepared {
            facts["prepared"] = true.into();
        }
        if let Some(c) = counts {
            facts["inserted"] = c.inserted.into();
            facts["updated"] = c.updated.into();
            facts["deleted"] = c.deleted.into();
            facts["truncated"] = c.truncated.into();
        }
        facts.to_string()
    }
}

impl Source {
    /// add_facts puts who and what applied the rows into a record's JSON note.
    fn add_facts(&self, facts: &mut serde_json::Value) {
        facts["source"] = "logical replication".into();
        facts["worker"] = if self.tablesync { "tablesync" } else { "apply" }.into();
        facts["parallel_apply"] = self.parallel.into();
        facts["subscription"] = self.subscription.clone().into();
        facts["subscription_oid"] = self.subscription_oid.into();
        facts["subscription_owner"] = self.owner.clone().into();
        facts["run_as_owner"] = self.run_as_owner.into();
        facts["origin"] = self.origin.clone().into();
    }
}

/// owner_of reads the subscription's owner (by name) and, from PostgreSQL 16 on, its
/// run_as_owner from the syscache: None for what is gone; no ERROR.
///
/// # Safety
/// Inside a transaction.
unsafe fn owner_of(subid: pg_sys::Oid) -> (Option<String>, Option<bool>) {
    let cache = pg_sys::SysCacheIdentifier::SUBSCRIPTIONOID as i32;
    // SAFETY: syscache lookups inside the transaction; the tuple is released below, and the
    // attribute numbers are looked up by name (0 when the column does not exist).
    unsafe {
        let tup = pg_sys::SearchSysCache1(cache, pg_sys::Datum::from(subid));
        if tup.is_null() {
            return (None, None);
        }
        let rel = pg_sys::Oid::from(SUBSCRIPTION_RELATION_ID);
        let attr = |name: &CStr| -> Option<pg_sys::Datum> {
            let attnum = pg_sys::get_attnum(rel, name.as_ptr());
            if attnum <= 0 {
                return None;
            }
            let mut isnull = false;
            let d = pg_sys::SysCacheGetAttr(cache, tup, attnum, &mut isnull);
            (!isnull).then_some(d)
        };
        let owner = attr(c"subowner").and_then(|d| {
            let role = pg_sys::Oid::from(d.value() as u32);
            cstring(pg_sys::GetUserNameFromId(role, true))
        });
        let run_as_owner = attr(c"subrunasowner").map(|d| d.value() & 0xff != 0);
        pg_sys::ReleaseSysCache(tup);
        (owner, run_as_owner)
    }
}

/// cstring copies a string PostgreSQL palloc'd (NULL: None).
unsafe fn cstring(p: *mut c_char) -> Option<String> {
    // SAFETY: p is NULL or a NUL-terminated string.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// after_subscription_command warns when a subscription command that just succeeded made
/// tracked tables targets of the subscription: CREATE SUBSCRIPTION, and ALTER SUBSCRIPTION …
/// REFRESH PUBLICATION, ADD PUBLICATION or SET PUBLICATION. A WARNING, not an ERROR: CREATE
/// SUBSCRIPTION may have created the slot on the publisher already, which a rollback would
/// leave behind.
///
/// # Safety
/// `stmt` is the utility statement that just succeeded.
pub unsafe fn after_subscription_command(stmt: *mut pg_sys::Node) {
    use pg_sys::AlterSubscriptionType::*;
    // SAFETY: the node's type is checked before it is read.
    let name = unsafe {
        if pgrx::is_a(stmt, pg_sys::NodeTag::T_CreateSubscriptionStmt) {
            (*stmt.cast::<pg_sys::CreateSubscriptionStmt>()).subname
        } else if pgrx::is_a(stmt, pg_sys::NodeTag::T_AlterSubscriptionStmt) {
            let alter = stmt.cast::<pg_sys::AlterSubscriptionStmt>();
            match (*alter).kind {
                ALTER_SUBSCRIPTION_REFRESH
                | ALTER_SUBSCRIPTION_ADD_PUBLICATION
                | ALTER_SUBSCRIPTION_SET_PUBLICATION => (*alter).subname,
                _ => return,
            }
        } else {
            return;
        }
    };
    // SAFETY: a catalog lookup inside the statement's transaction.
    let subid = unsafe { pg_guard_ffi_boundary(|| unguarded::get_subscription_oid(name, true)) };
    if subid == pg_sys::InvalidOid {
        return;
    }
    // SAFETY: the command's catalog rows become visible to the query below.
    unsafe { pg_sys::CommandCounterIncrement() };
    let _nested = context::Nested::enter(); // not a user statement
    let targets: Vec<pg_sys::Oid> = context::as_extension_owner(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT srrelid FROM pg_catalog.pg_subscription_rel WHERE srsubid = $1 ORDER BY srrelid",
                None,
                &[subid.into()],
            )?;
            let mut out = Vec::new();
            for row in rows {
                if let Some(relid) = row.get::<pg_sys::Oid>(1)? {
                    out.push(relid);
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("activity_log: could not read pg_subscription_rel: {e}"),
            None,
        )
    });
    let mut named: Vec<String> = Vec::new();
    for relid in targets {
        let Some(t) = tracked::lookup(relid.to_u32()) else {
            continue;
        };
        let root = qualified(&t.schema, &t.table);
        let entry = if t.relid == relid.to_u32() {
            root
        } else {
            // SAFETY: catalog lookups of a relation the subscription lists.
            let partition = unsafe {
                let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
                let rel = pg_sys::get_rel_name(relid);
                match (cstring(nsp), cstring(rel)) {
                    (Some(n), Some(r)) => qualified(n.as_bytes(), r.as_bytes()),
                    _ => format!("{}", relid.to_u32()),
                }
            };
            format!("{root} (its partition {partition})")
        };
        if !named.contains(&entry) {
            named.push(entry);
        }
    }
    if named.is_empty() {
        return;
    }
    // SAFETY: the name is the statement's NUL-terminated string.
    let subname = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    let (noun, verb) = match named.len() {
        1 => ("table", "is"),
        _ => ("tables", "are"),
    };
    warn(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!(
            "tracked {noun} {} {verb} now a target of subscription \"{subname}\"",
            named.join(", ")
        ),
        Some(
            "Rows applied by logical replication cannot be captured: each transaction of the subscription that changes a tracked table leaves a gap record in the trail instead.",
        ),
        Some(
            "Audit the table on the publisher, and untrack it here (or remove it from the publication).",
        ),
    );
}

/// qualified is `schema.table`, each quoted where SQL needs it.
fn qualified(schema: &[u8], table: &[u8]) -> String {
    let quote = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let plain = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit());
        match plain {
            true => s.into_owned(),
            false => format!("\"{}\"", s.replace('"', "\"\"")),
        }
    };
    format!("{}.{}", quote(schema), quote(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source {
            subscription: Some("s".into()),
            subscription_oid: Some(16390),
            owner: None,
            run_as_owner: None,
            origin: Some("pg_16390".into()),
            tablesync: false,
            parallel: false,
            prepared: false,
        }
    }

    #[test]
    fn the_note_names_who_is_behind_the_applied_rows() {
        let mut by = source();
        by.owner = Some("mal".into());
        by.run_as_owner = Some(true);
        by.parallel = true;
        let counts = Counts {
            inserted: 2991,
            deleted: 10,
            ..Counts::default()
        };
        let note: serde_json::Value = serde_json::from_str(&by.note(Some(counts))).unwrap();
        assert_eq!(
            note,
            serde_json::json!({
                "reason": "2991 rows inserted, 0 updated, 10 deleted by logical replication (origin pg_16390, subscription s owned by mal, parallel apply worker) were not captured",
                "source": "logical replication",
                "worker": "apply",
                "parallel_apply": true,
                "subscription": "s",
                "subscription_oid": 16390,
                "subscription_owner": "mal",
                "run_as_owner": true,
                "origin": "pg_16390",
                "inserted": 2991,
                "updated": 0,
                "deleted": 10,
                "truncated": false,
            })
        );
    }

    #[test]
    fn the_note_says_what_was_not_captured_and_whence() {
        let counts = Counts {
            inserted: 3,
            updated: 1,
            deleted: 2,
            truncated: false,
        };
        let note: serde_json::Value = serde_json::from_str(&source().note(Some(counts))).unwrap();
        assert_eq!(
            note["reason"],
            "3 rows inserted, 1 updated, 2 deleted by logical replication (origin pg_16390, subscription s) were not captured"
        );
        assert_eq!(note["inserted"], 3);
        assert_eq!(note["subscription"], "s");
        assert_eq!(note["worker"], "apply");
        let truncated = Counts {
            truncated: true,
            ..Counts::default()
        };
        let mut sync = source();
        sync.tablesync = true;
        sync.origin = None;
        let note: serde_json::Value = serde_json::from_str(&sync.note(Some(truncated))).unwrap();
        assert_eq!(
            note["reason"],
            "a TRUNCATE and 0 rows inserted, 0 updated, 0 deleted by logical replication's table synchronization (subscription s) were not captured"
        );
        assert_eq!(note["origin"], serde_json::Value::Null);
        let one = Counts {
            inserted: 1,
            ..Counts::default()
        };
        let note: serde_json::Value = serde_json::from_str(&source().note(Some(one))).unwrap();
        assert!(
            note["reason"]
                .as_str()
                .unwrap()
                .starts_with("1 row inserted, 0 updated"),
            "{note}"
        );
    }

    #[test]
    fn captured_rows_are_not_reported_again() {
        let applied = Counts {
            inserted: 5,
            updated: 2,
            deleted: 0,
            truncated: false,
        };
        let by_trigger = Counts {
            inserted: 5,
            updated: 3,
            ..Counts::default()
        };
        assert!(!applied.less(by_trigger).any());
        let partly = Counts {
            inserted: 2,
            ..Counts::default()
        };
        assert_eq!(applied.less(partly).rows(), 5);
    }

    #[test]
    fn names_are_quoted_where_sql_needs_it() {
        assert_eq!(qualified(b"public", b"orders"), "public.orders");
        assert_eq!(
            qualified(b"public", b"Order Lines"),
            "public.\"Order Lines\""
        );
        assert_eq!(qualified(b"a\"b", b"1x"), "\"a\"\"b\".\"1x\"");
    }
}
