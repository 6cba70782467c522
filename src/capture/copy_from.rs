//! capture/copy_from.rs: the rows COPY FROM loads into a tracked table, captured like an
//! INSERT's: the same change records, row images as stored, the COPY's command id.
//!
//! # How it works
//!
//! COPY FROM starts no executor, so rows.rs never sees it. CopyFrom (copyfrom.c)
//! copies the relation cache's trigger descriptor of its target into its ResultRelInfo
//! (InitResultRelInfo), and asks that same descriptor whether to collect transition tuples
//! (`MakeTransitionCaptureState(cstate->rel->trigdesc, …, CMD_INSERT)`). So for the length of
//! a `COPY <tracked table or partition of one> FROM …`, the utility hook puts into the target's
//! relation cache entry a descriptor with two synthetic statement triggers more:
//!
//! - a BEFORE INSERT trigger, first of all: it tells that CopyFrom took our descriptor, and puts
//!   `work_mem` back (raised, like rows.rs does for a statement, so that the transition table made
//!   just before keeps up to the ring's size in memory) before any user code of the COPY runs;
//! - an AFTER INSERT trigger with a NEW TABLE, which gets every loaded row as stored — after
//!   BEFORE ROW triggers, defaults, generated columns and the WHERE clause, routed rows converted
//!   to the target's row type — and records them as rows.rs records an INSERT's.
//!
//! The trigger manager calls a trigger it found in a relation's descriptor through pg_proc:
//! their function is `activity_log._capture_rows()`, a C function EXECUTE-able by nobody but
//! the extension's owner, which refuses to run for any trigger but ours.
//!
//! # Invariants
//!
//! - The descriptor is the relation cache's while it is there: allocated whole in
//!   CacheMemoryContext (CopyTriggerDesc), because a rebuild of the entry during the COPY (an
//!   invalidation processed when a partition or an index is locked) frees it as its own
//!   (RelationClearRelation → FreeTriggerDesc) and installs the catalog's. A relcache callback
//!   then puts ours (made anew from the rebuilt one) back in: CopyFrom may not have taken it
//!   yet. On the way out — the statement's end, an ERROR (the guard's Drop runs while pgrx
//!   unwinds), or as a last resort the (sub)transaction's abort — the original goes back only if
//!   the entry still holds ours; otherwise the saved original is freed here.
//! - Should CopyFrom still start without ours (the callback could not make it), the BEFORE
//!   trigger never runs, and the trail gets a gap record instead (hooks.rs `after_utility`).
//! - While ours is there, statements this backend runs from inside the COPY (a user's trigger
//!   writing the same table) find the synthetic triggers in the relation cache too: rows.rs
//!   disables them in each such statement's copy, whose rows are captured once, as its own.
//! - Everything here runs in the COPY's backend only: the relation cache is per backend.
//!
//! # Panic / unwind safety
//!
//! The relcache callback is `#[pg_guard]` (the triggers' function is rows.rs's). The swap is undone by a guard's
//! `Drop` (also when an ERROR unwinds through the COPY) and, should that not run, by the
//! (sub)transaction's abort (xact.rs calls [`abandon`]). The callback only borrows the swaps
//! with `try_borrow_mut`, so an invalidation that arrives during our own bookkeeping is skipped,
//! not a panic.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::{CString, c_char};

use super::triggers::{self, COPY_TGOID_BEFORE, COPY_TGOID_INSERT, is_synthetic};
use super::{context, tracked};

/// A COPY whose target's relation cache entry holds our descriptor.
struct Swap {
    /// The target, opened (a reference keeps the entry from being freed, only rebuilt).
    rel: pg_sys::Relation,
    ours: *mut pg_sys::TriggerDesc,
    original: *mut pg_sys::TriggerDesc,
    /// The caller's work_mem, until our BEFORE trigger puts it back.
    work_mem: Option<i32>,
    /// Our BEFORE trigger ran: CopyFrom uses our descriptor.
    started: bool,
    subxact: pg_sys::SubTransactionId,
    /// What ours is made of, to make it again after a rebuild.
    function: pg_sys::Oid,
    cid: u32,
}

thread_local! {
    /// Active swaps, innermost last (a COPY run by a trigger of another COPY nests).
    static SWAPS: RefCell<Vec<Swap>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// rows_wanted tells whether COPY FROM into a tracked table records its rows (the one place
/// to say when it must not: the COPY then leaves a record with its row count, as it used to).
pub fn rows_wanted() -> bool {
    true
}

/// swapped tells whether a COPY of this backend is running with our descriptor.
pub fn swapped() -> bool {
    SWAPS.with_borrow(|s| !s.is_empty())
}

/// While alive, a COPY's target holds our descriptor; [`CopyCapture::finish`] ends it after the
/// COPY, Drop when an ERROR unwinds.
#[must_use]
pub struct CopyCapture {
    relid: pg_sys::Oid,
    depth: usize,
    done: bool,
}

/// What a finished COPY's capture tells [`super::hooks`].
pub struct Captured {
    pub relid: pg_sys::Oid,
    /// CopyFrom used our descriptor: every row it loaded is in the pending buffer.
    pub rows_captured: bool,
}

/// begin sets up capture for `stmt` when it is a COPY FROM into a tracked table (or a
/// partition of one); None for anything else.
///
/// # Safety
/// `stmt` is the utility statement about to be run by standard_ProcessUtility.
pub unsafe fn begin(stmt: *mut pg_sys::Node) -> Option<CopyCapture> {
    // SAFETY: stmt is a valid node; catalog lookups and the swap inside the statement's
    // transaction (see the module comment).
    unsafe {
        if !pgrx::is_a(stmt, pg_sys::NodeTag::T_CopyStmt) {
            return None;
        }
        let copy = stmt.cast::<pg_sys::CopyStmt>();
        if !(*copy).is_from || (*copy).relation.is_null() || !rows_wanted() || !context::capturing()
        {
            return None;
        }
        // DoCopy refuses a server file or program to whoever may not read it before it opens
        // the table: so the table is not locked here for a COPY that will not run.
        if !(*copy).filename.is_null() {
            let role = if (*copy).is_program {
                pg_sys::ROLE_PG_EXECUTE_SERVER_PROGRAM
            } else {
                pg_sys::ROLE_PG_READ_SERVER_FILES
            };
            if !pg_sys::has_privs_of_role(pg_sys::GetUserId(), pg_sys::Oid::from(role)) {
                return None;
            }
        }
        // The lock DoCopy takes first (table_openrv), before its own checks: held from here, the
        // name means this relation until the transaction ends.
        let relid = pg_sys::RangeVarGetRelidExtended(
            (*copy).relation,
            pg_sys::RowExclusiveLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        );
        if relid == pg_sys::InvalidOid {
            return None;
        }
        let tracked = tracked::lookup(relid.to_u32())?;
        if tracked.has_foreign_partition {
            return None; // no transition tables there: after_utility leaves a gap record
        }
        let function = tracked::capture_function()?;
        if !REGISTERED.replace(true) {
            pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
        }
        let rel = pg_sys::table_open(relid, pg_sys::NoLock as i32);
        // CopyFrom's es_output_cid: GetCurrentCommandId(true) as it starts; nothing in between
        // advances the command counter.
        let cid = pg_sys::GetCurrentCommandId(false);
        let subxact = pg_sys::GetCurrentSubTransactionId();
        let original = (*rel).trigdesc;
        let ours = with_copy_triggers(original, function, cid);
        // From here to the push nothing can fail.
        (*rel).trigdesc = ours;
        let work_mem = pg_sys::work_mem;
        pg_sys::work_mem = work_mem.max(triggers::in_memory_budget_kb());
        let depth = SWAPS.with_borrow_mut(|s| {
            s.push(Swap {
                rel,
                ours,
                original,
                work_mem: Some(work_mem),
                started: false,
                subxact,
                function,
                cid,
            });
            s.len() - 1
        });
        Some(CopyCapture {
            relid,
            depth,
            done: false,
        })
    }
}

impl CopyCapture {
    /// finish puts the original descriptor back after the COPY succeeded.
    pub fn finish(mut self) -> Captured {
        self.done = true;
        let started = restore(self.depth, true);
        Captured {
            relid: self.relid,
            rows_captured: started,
        }
    }
}

impl Drop for CopyCapture {
    fn drop(&mut self) {
        if !self.done {
            // An ERROR unwinds: the abort that follows releases the relation's reference,
            // whichever resource owner holds it now.
            restore(self.depth, !std::thread::panicking());
        }
    }
}

/// relcache_callback puts our descriptor back into a COPY target's entry that an invalidation
/// just rebuilt from the catalog (`relid`, or every relation for InvalidOid); the rebuild freed
/// ours. With COPYs into the same table nested, each one's is made anew from the one below.
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    SWAPS.with(|s| {
        // Busy only if an invalidation came in the middle of our own bookkeeping, which calls
        // nothing that processes them; the BEFORE trigger's check would cover it.
        let Ok(mut swaps) = s.try_borrow_mut() else {
            return;
        };
        for top in (0..swaps.len()).rev() {
            let rel = swaps[top].rel;
            // SAFETY: every swap's relation is open (its entry is rebuilt in place, never
            // freed); descriptors are freed once: ours by the rebuild, the others here.
            unsafe {
                let innermost = !swaps[top + 1..].iter().any(|w| w.rel == rel);
                if !innermost || (relid != pg_sys::InvalidOid && (*rel).rd_id != relid) {
                    continue;
                }
                let current = (*rel).trigdesc;
                if current == swaps[top].ours && has_copy_trigger(current) {
                    continue;
                }
                debug1!("activity_log: a COPY's target was rebuilt in the relation cache");
                let mut base = current;
                for swap in swaps.iter_mut().filter(move |w| w.rel == rel) {
                    let ours = with_copy_triggers(base, swap.function, swap.cid);
                    pg_sys::FreeTriggerDesc(swap.original);
                    swap.original = base;
                    swap.ours = ours;
                    // At once: should the next one fail, the entry holds this one's.
                    (*rel).trigdesc = ours;
                    base = ours;
                }
            }
        }
    });
}

/// copy_started notes that a COPY into `relid` fired our BEFORE trigger: its transition table
/// exists, so work_mem goes back to the caller's value before any user trigger runs.
pub fn copy_started(relid: pg_sys::Oid) {
    SWAPS.with_borrow_mut(|s| {
        // SAFETY: the relation is open (Swap::rel).
        if let Some(top) = s.last_mut()
            && unsafe { (*top.rel).rd_id } == relid
        {
            top.started = true;
            if let Some(w) = top.work_mem.take() {
                // SAFETY: a plain GUC variable of this backend.
                unsafe { pg_sys::work_mem = w };
            }
        }
    });
}

/// abandon undoes what a COPY of subtransaction `subxact` (or of a later one) left in place: a
/// last resort at abort (the guard's Drop has normally done it already).
pub fn abandon(subxact: pg_sys::SubTransactionId) {
    let left: Vec<Swap> = SWAPS.with_borrow_mut(|s| {
        let keep = s.iter().take_while(|w| w.subxact < subxact).count();
        s.split_off(keep)
    });
    for swap in left.into_iter().rev() {
        undo(swap, false);
    }
}

/// restore undoes the swap at `depth` (and any left above it, innermost first) and tells
/// whether that COPY started with our descriptor.
fn restore(depth: usize, close: bool) -> bool {
    let undone: Vec<Swap> = SWAPS.with_borrow_mut(|s| {
        if s.len() > depth {
            s.split_off(depth)
        } else {
            Vec::new()
        }
    });
    let started = undone.first().is_some_and(|w| w.started);
    for swap in undone.into_iter().rev() {
        undo(swap, close);
    }
    started
}

fn undo(swap: Swap, close: bool) {
    // SAFETY: swap.rel is open (its reference is released only by `close` here or by the
    // abort), so its entry is the same memory, possibly rebuilt; `ours` and `original` were
    // allocated in CacheMemoryContext and are freed exactly once, here or by the rebuild.
    unsafe {
        if let Some(w) = swap.work_mem {
            pg_sys::work_mem = w;
        }
        let rel = swap.rel;
        // A rebuilt descriptor at the same address (ours freed, its memory reused) is the
        // catalog's and has no synthetic trigger.
        if (*rel).trigdesc == swap.ours && has_copy_trigger(swap.ours) {
            (*rel).trigdesc = swap.original;
            pg_sys::FreeTriggerDesc(swap.ours);
        } else {
            pg_sys::FreeTriggerDesc(swap.original);
        }
        if close {
            pg_sys::RelationClose(rel);
        }
    }
}

unsafe fn has_copy_trigger(td: *mut pg_sys::TriggerDesc) -> bool {
    // SAFETY: td is the live descriptor of an open relation.
    unsafe {
        !td.is_null()
            && (0..(*td).numtriggers as usize)
                .any(|i| (*(*td).triggers.add(i)).tgoid.to_u32() == COPY_TGOID_INSERT)
    }
}

/// with_copy_triggers is a copy of `base` (NULL: no triggers) in CacheMemoryContext with the
/// COPY's two synthetic triggers added: the BEFORE one first, so that it fires before a user's
/// BEFORE STATEMENT trigger, the AFTER one last. Synthetic triggers of an outer COPY into the
/// same table (this COPY runs from one of its triggers) are left out: each COPY captures its own.
unsafe fn with_copy_triggers(
    base: *mut pg_sys::TriggerDesc,
    function: pg_sys::Oid,
    cid: u32,
) -> *mut pg_sys::TriggerDesc {
    // The command id travels in the one argument, as rows.rs's triggers carry it.
    let cid = CString::new(cid.to_string()).expect("digits");
    let mut args = [cid.as_ptr().cast_mut()];
    let trigger = |tgoid: u32, name: &std::ffi::CStr, tgtype: u32| pg_sys::Trigger {
        tgoid: pg_sys::Oid::from(tgoid),
        tgname: name.as_ptr().cast_mut(),
        tgfoid: function,
        tgtype: tgtype as i16, // statement level: no ROW bit
        tgenabled: pg_sys::TRIGGER_FIRES_ALWAYS as c_char,
        tgisinternal: true,
        tgnargs: 1,
        ..Default::default()
    };
    let mut triggers = vec![trigger(
        COPY_TGOID_BEFORE,
        c"activity_log_copy_start",
        pg_sys::TRIGGER_TYPE_BEFORE | pg_sys::TRIGGER_TYPE_INSERT,
    )];
    // SAFETY: base is NULL or the relation cache's descriptor of the open target.
    let mut td = unsafe {
        if base.is_null() {
            pg_sys::TriggerDesc::default()
        } else {
            for i in 0..(*base).numtriggers as usize {
                let t = *(*base).triggers.add(i);
                if !is_synthetic(t.tgoid) {
                    triggers.push(t);
                }
            }
            *base
        }
    };
    let mut after = trigger(
        COPY_TGOID_INSERT,
        c"activity_log_copy",
        pg_sys::TRIGGER_TYPE_AFTER | pg_sys::TRIGGER_TYPE_INSERT,
    );
    after.tgnewtable = c"activity_log_new".as_ptr().cast_mut();
    triggers.push(after);
    for t in triggers.iter_mut() {
        if is_synthetic(t.tgoid) {
            t.tgargs = args.as_mut_ptr();
        }
    }
    td.triggers = triggers.as_mut_ptr();
    td.numtriggers = triggers.len() as i32;
    td.trig_insert_before_statement = true;
    td.trig_insert_after_statement = true;
    td.trig_insert_new_table = true;
    // SAFETY: CopyTriggerDesc deep-copies the descriptor, its array and every string (ours
    // are static or live until this returns) into the current context, CacheMemoryContext.
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::CacheMemoryContext);
        let copy = pg_sys::CopyTriggerDesc(&mut td);
        pg_sys::MemoryContextSwitchTo(old);
        copy
    }
}
