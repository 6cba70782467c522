//! capture/rows.rs: exact old/new row images of tracked tables, without a trigger in pg_trigger.
//!
//! # How it works
//!
//! Research/row-capture.md, mechanism A: after `standard_ExecutorStart`, each
//! ModifyTable whose root is tracked gets a transition capture state, and its root
//! ResultRelInfo gets a private copy of its trigger descriptor with three synthetic AFTER
//! STATEMENT triggers (insert, update, delete) that exist only in executor memory. The core
//! then fills the OLD/NEW transition tables exactly as stored — after BEFORE triggers,
//! defaults, generated columns, partition routing (converted to the root's row type), ON
//! CONFLICT and MERGE — and calls [`al_capture_rows`] once per statement and operation.
//! It copies the tuples out of the tuplestores as raw minimal tuples (detoasted: nothing
//! points at storage), with a description of the row type, and appends one `Change` record to
//! the pending buffer; the writer turns them into JSON.
//!
//! A tracked table changed through an untracked ancestor (an inheritance parent, or a
//! partitioned root it was attached to) is one of the ModifyTable's result relations but not
//! its root: the root's transition tables, were they made, would not say whose a row is. Its
//! own ResultRelInfo gets synthetic AFTER ROW triggers instead ([`Level::Row`]), which the
//! core calls per row at the end of the query ([`al_capture_row`]); the rows are gathered into
//! one record per table and statement. Rows the core routes into it through the untracked root
//! reach a ResultRelInfo made only when the first row arrives, which nothing can augment in
//! time: the statement leaves a gap record naming the table ([`note_rows_routed_past_capture`]).
//!
//! A MERGE's UPDATE action that moves rows to another partition hands them to the DELETE and
//! INSERT transition tables, whose statement triggers fire only when the MERGE has those
//! actions: [`queue_moved_rows`] queues the missing events for synthetic triggers alone.
//!
//! COPY FROM starts no executor: it gets two triggers of its own, through its target's relation
//! cache entry, whose function is this one's `activity_log._capture_rows()` (copy_from.rs).
//!
//! The fixes the prototype needed: FK cascades run with SKIP_TRIGGERS and fire at the outer
//! query's level, so the outer EState's ResultRelInfo for the child table is augmented too
//! (a stack of EStates inside ExecutorFinish); trigger arrays are resized together with the
//! descriptor, including EXPLAIN ANALYZE instrumentation; foreign tables cannot be tracked
//! (track() refuses them); changes carry the command id so the writer orders them.
//!
//! # Invariants
//!
//! - Runs in every backend's executor path: must not raise an ERROR the user's statement would
//!   not have raised; allocates only in the query's memory context.
//! - The synthetic triggers exist only in executor memory (and, for a COPY, in the relation
//!   cache entry copy_from.rs swaps): never in pg_trigger. Their OIDs are one range
//!   (triggers.rs), which `al_capture_rows` checks before it reads anything else.
//! - What is set up for a statement ([`SET_UP`], [`ROW_BATCHES`]) is forgotten when its query
//!   ends or its subtransaction aborts ([`forget`], [`forget_subxact`]), and all of it at
//!   transaction end ([`forget_all`]); [`FINISHING`] is a stack kept by a guard.
//!
//! # Panic / unwind safety
//!
//! The trigger functions are `#[pg_guard]`. `work_mem` raised for a statement's transition
//! tables, and the [`FINISHING`] stack, are put back by guards' `Drop`, which also runs when an
//! ERROR unwinds through us; the rest is forgotten when the query or its subtransaction ends.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::{CStr, c_char};
use std::io::Write;
use std::rc::Rc;

use super::origin::{self, clip};
use super::tracked::{self, Tracked};
use super::triggers::{
    COPY_TGOID_BEFORE, COPY_TGOID_INSERT, FAKE_TGOID_BASE, MOVED_TGOID_NEW, MOVED_TGOID_NEW_ALONE,
    MOVED_TGOID_OLD, MOVED_TGOID_OLD_ALONE, NTRIG, in_memory_budget_kb, is_synthetic,
};
use super::{applied, context, copy_from, pending, redact};
use crate::gucs;
use crate::process;
use crate::record::{Body, Bytes, Change, Column, Op, Record, RowSink};
use crate::unguarded;

/// The two sets of synthetic triggers. A tracked table named by the statement (or its
/// partition) gets statement triggers with transition tables; a tracked table reached through
/// an untracked ancestor (inheritance, or a partitioned root it was attached to) gets row
/// triggers on its own ResultRelInfo, since the ModifyTable's transition tables hold the
/// ancestor's rows without saying whose they are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Statement,
    Row,
}

impl Level {
    fn foid(self) -> u32 {
        match self {
            Level::Statement => 3_999_999_999,
            Level::Row => 3_999_999_998,
        }
    }
    fn first_tgoid(self) -> u32 {
        match self {
            Level::Statement => FAKE_TGOID_BASE,
            Level::Row => FAKE_TGOID_BASE + NTRIG as u32,
        }
    }
}

thread_local! {
    /// EStates inside ExecutorFinish that fire their own AFTER triggers (innermost last).
    static FINISHING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// ModifyTables set up for capture (EState, ModifyTableState, table, subtransaction), until
    /// their query finishes or their subtransaction aborts.
    static SET_UP: RefCell<Vec<SetUp>> = const { RefCell::new(Vec::new()) };
    /// Rows the row triggers collected, not yet in a record (see [`RowBatch`]); a batch of a
    /// query whose AFTER triggers fire while an outer query's are firing comes after the outer
    /// one's.
    static ROW_BATCHES: RefCell<Vec<RowBatch>> = const { RefCell::new(Vec::new()) };
    /// Old images of rows a MERGE moved to another partition, handed over by the event that
    /// comes right before the one with their new images (see [`queue_moved_rows`]).
    static MOVED_OLDS: RefCell<Vec<MovedTable>> = const { RefCell::new(Vec::new()) };
    /// New images of rows a MERGE moved that are recorded unpaired, as INSERTs, after the
    /// MERGE's UPDATE event, with their note (see [`moved_rows`]).
    static MOVED_NEWS: RefCell<Vec<(MovedTable, &'static str)>> = const { RefCell::new(Vec::new()) };
    /// The events [`queue_moved_rows`] queued that have not fired yet, nor been handed over by
    /// another event ([`moved_rows_handed_over`]).
    static MOVES_QUEUED: RefCell<Vec<QueuedMove>> = const { RefCell::new(Vec::new()) };
}

/// An event [`queue_moved_rows`] queued.
struct QueuedMove {
    estate: usize,
    /// The tracked table's oid, as its events name it ([`Tracked::relid`]: a partition that
    /// the MERGE targets is tracked through its tracked ancestor).
    relid: u32,
    /// The MERGE's target (its ResultRelInfos get the triggers, [`spread_moved_triggers`]).
    target: u32,
    cid: u32,
    tgoid: u32,
    /// The subtransaction it was queued in.
    subxact: u32,
}

/// A transition table of rows a MERGE moved, waiting for a later event of the same query: the
/// DELETE table for the INSERT table ([`MOVED_OLDS`]), or the INSERT table for the MERGE's
/// UPDATE event ([`MOVED_NEWS`]).
struct MovedTable {
    /// The query firing the event ([`FINISHING`]).
    owner: usize,
    relid: u32,
    cid: u32,
    store: usize,
    /// The subtransaction the event fired in.
    subxact: u32,
}

/// Consecutive rows the row triggers captured for one table, operation and command, made into
/// one Change record when the query that fires them (`owner`) has fired its AFTER triggers, or
/// every [`BATCH_ROWS`] rows or [`BATCH_BYTES`]. Never earlier: a statement that a user's
/// trigger runs meanwhile, inside a savepoint it may roll back, must not take them with it.
struct RowBatch {
    owner: usize,
    bytes: usize,
    tracked: Rc<Tracked>,
    relid: u32,
    op: Op,
    cid: u32,
    subxact: u32,
    columns: Vec<Column<'static>>,
    rows: Vec<OldNew>,
}

/// A row's old and new images (minimal-tuple bytes), as a row trigger saw them.
type OldNew = (Option<Vec<u8>>, Option<Vec<u8>>);

const BATCH_ROWS: usize = 1000;
/// The capture's pending buffer stages what passes 1 MB (capture/pending.rs); a batch holds no
/// more before it goes there.
const BATCH_BYTES: usize = 1 << 20;

struct SetUp {
    estate: usize,
    mt: usize,
    tracked: Rc<Tracked>,
    subxact: u32,
}

/// forget_subxact drops entries of an aborted subtransaction (and of its children): their
/// executor state is gone.
pub fn forget_subxact(subid: u32) {
    SET_UP.with_borrow_mut(|s| s.retain(|e| e.subxact < subid));
    ROW_BATCHES.with_borrow_mut(|b| b.retain(|b| b.subxact < subid));
    // Only the aborted subtransaction's: one that a trigger or a function of the statement
    // runs (an exception block) aborts while the statement's own events are still queued.
    MOVED_OLDS.with_borrow_mut(|m| m.retain(|o| o.subxact < subid));
    MOVED_NEWS.with_borrow_mut(|m| m.retain(|(o, _)| o.subxact < subid));
    MOVES_QUEUED.with_borrow_mut(|q| q.retain(|e| e.subxact < subid));
}

/// after_finish checks that every captured ModifyTable of `estate` ran to completion: one that
/// stopped early (a C caller running DML … RETURNING through SPI with a row limit) fires no
/// statement triggers, so its changes are missing and the trail says so with a gap record.
pub unsafe fn after_finish(estate: *mut pg_sys::EState) {
    flush_row_batches(estate as usize);
    // Events of moved rows that neither fired nor were handed over by another part of the
    // statement (moved_rows_handed_over): not expected, but their transition tables are gone
    // now, so the trail says what may be missing rather than nothing.
    let owner = estate as usize;
    MOVED_OLDS.with_borrow_mut(|m| m.retain(|o| o.owner != owner));
    let mut unfired: Vec<(u32, u32)> = MOVES_QUEUED.with_borrow_mut(|q| {
        let (mine, others): (Vec<_>, Vec<_>) = q.drain(..).partition(|e| e.estate == owner);
        *q = others;
        mine.into_iter().map(|e| (e.relid, e.cid)).collect()
    });
    MOVED_NEWS.with_borrow_mut(|m| {
        m.retain(|(o, _)| {
            if o.owner == owner {
                unfired.push((o.relid, o.cid));
            }
            o.owner != owner
        })
    });
    unfired.sort_unstable();
    unfired.dedup();
    for (relid, cid) in unfired {
        if let Some(tracked) = tracked::lookup(relid) {
            let note = "rows a MERGE moved to another partition may be missing from the trail: the events that hand them over never fired";
            push_change(&tracked, Op::Gap, cid, 0, Vec::new(), note, |_| false);
        }
    }
    if FINISHING.with_borrow(Vec::is_empty) {
        flush_row_batches(0); // fired outside any query's finish (not expected)
    }
    // SAFETY: estate is live; its routing list holds the ResultRelInfos of partitions that
    // received rows.
    unsafe { note_rows_routed_past_capture(estate) };
    // Nearly always none: then nothing is allocated here, statement after statement.
    let unfinished: Vec<Rc<Tracked>> = SET_UP.with_borrow(|s| {
        s.iter()
            .filter(|e| e.estate == estate as usize)
            // SAFETY: the ModifyTableState belongs to the EState, which lives until ExecutorEnd.
            .filter(|e| !unsafe { (*(e.mt as *mut pg_sys::ModifyTableState)).mt_done })
            .map(|e| e.tracked.clone())
            .collect()
    });
    forget(estate);
    for tracked in unfinished {
        // SAFETY: plain read of the EState.
        let cid = unsafe { (*estate).es_output_cid };
        let note =
            "the statement stopped before it finished, so the rows it changed were not captured";
        push_change(&tracked, Op::Gap, cid, 0, Vec::new(), note, |_| false);
    }
}

/// forget drops what is known of `estate` (ExecutorEnd; also after an error).
pub fn forget(estate: *mut pg_sys::EState) {
    let estate = estate as usize;
    SET_UP.with_borrow_mut(|s| s.retain(|e| e.estate != estate));
    MOVES_QUEUED.with_borrow_mut(|q| q.retain(|e| e.estate != estate));
    MOVED_OLDS.with_borrow_mut(|m| m.retain(|o| o.owner != estate));
    MOVED_NEWS.with_borrow_mut(|m| m.retain(|(o, _)| o.owner != estate));
}

pub fn forget_all() {
    SET_UP.with_borrow_mut(Vec::clear);
    ROW_BATCHES.with_borrow_mut(Vec::clear);
    MOVED_OLDS.with_borrow_mut(Vec::clear);
    MOVED_NEWS.with_borrow_mut(Vec::clear);
    MOVES_QUEUED.with_borrow_mut(Vec::clear);
}

/// note_rows_routed_past_capture leaves a gap record for each tracked table that received
/// rows routed through an untracked partitioned table (INSERT, MERGE or an UPDATE moving rows
/// into it): PostgreSQL makes such a partition's ResultRelInfo only when the first row is
/// routed to it, too late for row triggers, and the root's transition tables do not say
/// which partition a row went to.
unsafe fn note_rows_routed_past_capture(estate: *mut pg_sys::EState) {
    if !context::capturing() {
        return;
    }
    // SAFETY: as for the caller; empty for nearly every statement.
    unsafe {
        for node in list_nodes((*estate).es_tuple_routing_result_relations) {
            let rri = node.cast::<pg_sys::ResultRelInfo>();
            let root = (*rri).ri_RootResultRelInfo;
            if root.is_null() || is_augmented(rri, Level::Row) {
                continue;
            }
            let relid = (*(*rri).ri_RelationDesc).rd_id.to_u32();
            let root_relid = (*(*root).ri_RelationDesc).rd_id.to_u32();
            if tracked::lookup(root_relid).is_some() {
                continue; // the root's transition tables have them
            }
            let Some(tracked) = tracked::lookup(relid) else {
                continue;
            };
            let name = |r: *mut pg_sys::ResultRelInfo| {
                let rel = (*r).ri_RelationDesc;
                CStr::from_ptr(pg_sys::quote_qualified_identifier(
                    pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace),
                    (*(*rel).rd_rel).relname.data.as_ptr(),
                ))
                .to_string_lossy()
                .into_owned()
            };
            let note = format!(
                "rows were routed into {} through the untracked partitioned table {}, and were not captured",
                name(rri),
                name(root)
            );
            push_change(
                &tracked,
                Op::Gap,
                (*estate).es_output_cid,
                0,
                Vec::new(),
                &note,
                |_| false,
            );
        }
    }
}

/// Pops the EState pushed by [`finishing`] when ExecutorFinish returns or unwinds.
pub struct Finishing(bool);
impl Drop for Finishing {
    fn drop(&mut self) {
        if self.0 {
            FINISHING.with_borrow_mut(|f| f.pop());
        }
    }
}

/// finishing notes that `estate` is about to fire its AFTER triggers (ExecutorFinish).
pub unsafe fn finishing(estate: *mut pg_sys::EState) -> Finishing {
    // SAFETY: estate is the live EState of the query being finished.
    let fires_triggers =
        unsafe { (*estate).es_top_eflags as u32 & pg_sys::EXEC_FLAG_SKIP_TRIGGERS == 0 };
    if fires_triggers {
        FINISHING.with_borrow_mut(|f| f.push(estate as usize));
    }
    Finishing(fires_triggers)
}

unsafe fn list_nodes(list: *mut pg_sys::List) -> Vec<*mut pg_sys::Node> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: a List of node pointers.
    unsafe {
        (0..(*list).length as usize)
            .map(|i| (*(*list).elements.add(i)).ptr_value.cast())
            .collect()
    }
}

/// after_executor_start sets up capture for every ModifyTable of a tracked table.
pub unsafe fn after_executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32) {
    // SAFETY: called right after standard_ExecutorStart on a live QueryDesc.
    unsafe {
        if eflags as u32 & pg_sys::EXEC_FLAG_EXPLAIN_ONLY != 0 {
            return;
        }
        // Run from inside a COPY (by a trigger): whether captured or not, the COPY's triggers
        // in this statement's copy of the descriptor must not fire for it.
        let in_copy = copy_from::swapped();
        let capturing = context::capturing();
        if !in_copy && !capturing {
            return;
        }
        let estate = (*query_desc).estate;
        let each = |mt: *mut pg_sys::ModifyTableState| {
            if in_copy {
                disable_copy_triggers((*mt).rootResultRelInfo);
            }
            if capturing {
                setup(mt, estate, eflags);
            }
        };
        let top = (*query_desc).planstate.cast::<pg_sys::Node>();
        if pgrx::is_a(top, pg_sys::NodeTag::T_ModifyTableState) {
            each(top.cast());
        }
        // Data-modifying WITH queries; the list is empty for a plain statement.
        for node in list_nodes((*estate).es_auxmodifytables) {
            if node != top && pgrx::is_a(node, pg_sys::NodeTag::T_ModifyTableState) {
                each(node.cast());
            }
        }
        if capturing {
            spread_moved_triggers(estate);
        }
    }
}

/// spread_moved_triggers gives the triggers of [`queue_moved_rows`] to every result relation of
/// `estate` that is the same table as a moving MERGE's target: when an event fires, the trigger
/// manager looks its trigger up in the first ResultRelInfo of the table it finds
/// (ExecGetTriggerResultRel), which is a data-modifying WITH's when one writes the table too,
/// and it silently skips an event whose trigger is not there.
unsafe fn spread_moved_triggers(estate: *mut pg_sys::EState) {
    let targets: Vec<u32> = MOVES_QUEUED.with_borrow(|q| {
        q.iter()
            .filter(|e| e.estate == estate as usize)
            .map(|e| e.target)
            .collect()
    });
    if targets.is_empty() {
        return;
    }
    // SAFETY: estate is the query's, just started; its opened result relations are live.
    unsafe {
        for node in list_nodes((*estate).es_opened_result_relations) {
            let rri = node.cast::<pg_sys::ResultRelInfo>();
            let relid = (*(*rri).ri_RelationDesc).rd_id.to_u32();
            if targets.contains(&relid) && is_augmented(rri, Level::Statement) {
                add_moved_triggers(rri, estate);
            }
        }
    }
}

/// disable_copy_triggers turns off, in `rri`'s private trigger descriptor, the synthetic
/// triggers of a COPY that it copied from the relation cache (copy_from.rs): a statement that a
/// trigger runs during a COPY into the same table would otherwise hand its rows to them too,
/// under the COPY's command id. They stay in the array (its other arrays are indexed alike);
/// disabled, the trigger manager never queues or calls them.
unsafe fn disable_copy_triggers(rri: *mut pg_sys::ResultRelInfo) {
    // SAFETY: rri is a live ResultRelInfo whose descriptor is its own (InitResultRelInfo copies
    // the relation cache's).
    unsafe {
        let td = (*rri).ri_TrigDesc;
        if !td.is_null() {
            disable_copy_triggers_in((*td).triggers, (*td).numtriggers as usize);
        }
    }
}

unsafe fn disable_copy_triggers_in(triggers: *mut pg_sys::Trigger, n: usize) {
    for i in 0..n {
        // SAFETY: the caller passes an array of n triggers.
        let t = unsafe { &mut *triggers.add(i) };
        if (COPY_TGOID_BEFORE..=COPY_TGOID_INSERT).contains(&t.tgoid.to_u32()) {
            t.tgenabled = pg_sys::TRIGGER_DISABLED as c_char;
        }
    }
}

unsafe fn setup(mt: *mut pg_sys::ModifyTableState, estate: *mut pg_sys::EState, eflags: i32) {
    // SAFETY: mt and estate belong to the query being started.
    unsafe {
        let root = (*mt).rootResultRelInfo;
        let relid = (*(*root).ri_RelationDesc).rd_id;
        let Some(tracked) = tracked::lookup(relid.to_u32()) else {
            setup_below_untracked(mt, estate, eflags);
            return;
        };
        if tracked.has_foreign_partition {
            // Transition tables cannot hold rows of foreign tables (PostgreSQL raises an ERROR
            // when asked to): leave the statement alone and say so in the trail.
            gap_for_foreign_partition(&tracked, (*estate).es_output_cid);
            return;
        }
        let skip_triggers = eflags as u32 & pg_sys::EXEC_FLAG_SKIP_TRIGGERS != 0;
        let outer = FINISHING.with_borrow(|f| f.last().copied());
        if skip_triggers && outer.is_none() {
            // Not inside an outer query's trigger firing: nowhere to collect the rows.
            return;
        }
        augment(root, estate, Level::Statement);
        let subxact = unguarded::GetCurrentSubTransactionId();
        SET_UP.with_borrow_mut(|s| {
            s.push(SetUp {
                estate: estate as usize,
                mt: mt as usize,
                tracked: tracked.clone(),
                subxact,
            })
        });
        let old = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
        let in_memory = InMemoryTransitionTables::new();
        (*mt).mt_transition_capture =
            pg_sys::MakeTransitionCaptureState((*root).ri_TrigDesc, relid, (*mt).operation);
        let plan = (*mt).ps.plan.cast::<pg_sys::ModifyTable>();
        if (*plan).operation == pg_sys::CmdType::CMD_INSERT
            && (*plan).onConflictAction == pg_sys::OnConflictAction::ONCONFLICT_UPDATE
        {
            (*mt).mt_oc_transition_capture = pg_sys::MakeTransitionCaptureState(
                (*root).ri_TrigDesc,
                relid,
                pg_sys::CmdType::CMD_UPDATE,
            );
        }
        drop(in_memory); // only the transition tables get the larger budget
        if !skip_triggers && (*mt).operation == pg_sys::CmdType::CMD_MERGE {
            queue_moved_rows(mt, estate, tracked.relid);
        }
        pg_sys::MemoryContextSwitchTo(old);
        if skip_triggers && let Some(outer) = outer {
            // An FK cascade: its rows are handed to the outer query's ResultRelInfo.
            let outer = outer as *mut pg_sys::EState;
            let rri = pg_sys::ExecGetTriggerResultRel(outer, relid, std::ptr::null_mut());
            augment(rri, outer, Level::Statement);
        }
    }
}

/// setup_below_untracked gives row triggers to the tracked tables among the result relations
/// of a ModifyTable whose root is not tracked: an UPDATE, DELETE or MERGE through an untracked
/// inheritance parent or partitioned root changes them too.
unsafe fn setup_below_untracked(
    mt: *mut pg_sys::ModifyTableState,
    estate: *mut pg_sys::EState,
    eflags: i32,
) {
    // SAFETY: mt and estate belong to the query being started.
    unsafe {
        let skip_triggers = eflags as u32 & pg_sys::EXEC_FLAG_SKIP_TRIGGERS != 0;
        let outer = FINISHING.with_borrow(|f| f.last().copied());
        if skip_triggers && outer.is_none() {
            return;
        }
        for i in 0..(*mt).mt_nrels as usize {
            let rri = (*mt).resultRelInfo.add(i);
            if rri == (*mt).rootResultRelInfo {
                continue;
            }
            let rel = (*rri).ri_RelationDesc;
            let relid = (*rel).rd_id;
            let Some(tracked) = tracked::lookup(relid.to_u32()) else {
                continue;
            };
            if (*(*rel).rd_rel).relkind == pg_sys::RELKIND_FOREIGN_TABLE as c_char {
                gap_for_foreign_partition(&tracked, (*estate).es_output_cid);
                continue;
            }
            // The events fire through the ResultRelInfo ExecGetTriggerResultRel finds for the
            // table with no root. Since PostgreSQL 15.x that is not a child's own (whose root is
            // the ModifyTable's): it makes one from the relation cache then, without our
            // triggers, and the trigger manager skips an event whose trigger it lacks; so that
            // one gets them too. When it is another ModifyTable's (a data-modifying WITH writes
            // the table itself too), row triggers there would capture that one's rows twice.
            let fires = pg_sys::ExecGetTriggerResultRel(estate, relid, std::ptr::null_mut());
            if fires != rri
                && list_nodes((*estate).es_opened_result_relations).contains(&fires.cast())
            {
                let note = "the statement also writes the table directly (a data-modifying WITH), so the rows it changed through an untracked ancestor were not captured";
                push_change(
                    &tracked,
                    Op::Gap,
                    (*estate).es_output_cid,
                    0,
                    Vec::new(),
                    note,
                    |_| false,
                );
                continue;
            }
            augment(rri, estate, Level::Row);
            augment(fires, estate, Level::Row);
            if skip_triggers && let Some(outer) = outer {
                // An FK cascade: the rows' events fire at the outer query's level.
                let outer = outer as *mut pg_sys::EState;
                let orri = pg_sys::ExecGetTriggerResultRel(outer, relid, std::ptr::null_mut());
                augment(orri, outer, Level::Row);
            }
        }
    }
}

/// Transition tables larger than `work_mem` spill to a temporary file, and the capture reads
/// them back from it. The tuplestores made while this lives (MakeTransitionCaptureState takes
/// their budget from `work_mem`) keep up to the ring's size in memory instead, capped at
/// [`TRANSITION_MEMORY_CAP_KB`](super::triggers::TRANSITION_MEMORY_CAP_KB): a bulk statement of a few hundred thousand rows then reads its
/// rows back from memory, and a larger one from the temporary file, as without us.
struct InMemoryTransitionTables(i32);

impl InMemoryTransitionTables {
    fn new() -> Self {
        // SAFETY: work_mem is a plain GUC variable of this backend; restored on drop.
        unsafe {
            let saved = pg_sys::work_mem;
            pg_sys::work_mem = saved.max(in_memory_budget_kb());
            InMemoryTransitionTables(saved)
        }
    }
}

impl Drop for InMemoryTransitionTables {
    fn drop(&mut self) {
        // SAFETY: see new.
        unsafe { pg_sys::work_mem = self.0 };
    }
}

unsafe fn is_augmented(rri: *mut pg_sys::ResultRelInfo, level: Level) -> bool {
    // SAFETY: rri is a live ResultRelInfo.
    unsafe {
        let td = (*rri).ri_TrigDesc;
        !td.is_null()
            && (0..(*td).numtriggers as usize)
                .any(|i| (*(*td).triggers.add(i)).tgfoid.to_u32() == level.foid())
    }
}

/// augment gives `rri` a private trigger descriptor with the synthetic triggers of `level`
/// appended, and every array indexed by trigger position resized to match.
unsafe fn augment(rri: *mut pg_sys::ResultRelInfo, estate: *mut pg_sys::EState, level: Level) {
    // SAFETY: rri and estate are live; everything is allocated in the query's context.
    unsafe {
        if is_augmented(rri, level) {
            return;
        }
        let old = (*rri).ri_TrigDesc;
        let n = if old.is_null() {
            0
        } else {
            (*old).numtriggers as usize
        };
        let total = n + NTRIG;
        // This runs for every statement on a tracked table, and each call into PostgreSQL costs
        // a sigsetjmp (pgrx's guard): the descriptor, its three arrays, the argument vector and
        // the command id's text share one zeroed allocation in the query's context.
        let mut size = 0;
        let mut take = |bytes: usize| {
            let at = size;
            size += bytes.next_multiple_of(align_of::<pg_sys::Datum>());
            at
        };
        let td_at = take(size_of::<pg_sys::TriggerDesc>());
        let triggers_at = take(size_of::<pg_sys::Trigger>() * total);
        let finfo_at = take(size_of::<pg_sys::FmgrInfo>() * total);
        let when_at = take(size_of::<*mut pg_sys::ExprState>() * total);
        let args_at = take(size_of::<*mut c_char>());
        let cid_at = take(CID_TEXT_BYTES);
        let block = pg_sys::MemoryContextAllocZero((*estate).es_query_cxt, size).cast::<u8>();
        let td = block.add(td_at).cast::<pg_sys::TriggerDesc>();
        let triggers = block.add(triggers_at).cast::<pg_sys::Trigger>();
        let finfo = block.add(finfo_at).cast::<pg_sys::FmgrInfo>();
        let when = block.add(when_at).cast::<*mut pg_sys::ExprState>();
        let args = block.add(args_at).cast::<*mut c_char>();
        let cid = block.add(cid_at);

        if !old.is_null() {
            std::ptr::copy_nonoverlapping(old, td, 1);
        }
        if n > 0 {
            std::ptr::copy_nonoverlapping((*old).triggers, triggers, n);
            disable_copy_triggers_in(triggers, n);
        }
        // The statement's command id travels in the trigger's one argument.
        // Any u32 fits in the ten bytes, and the zeroed block ends it with a NUL.
        let mut text = std::slice::from_raw_parts_mut(cid, CID_TEXT_BYTES - 1);
        let _ = write!(text, "{}", (*estate).es_output_cid);
        *args = cid.cast::<c_char>();
        // The names are static: PostgreSQL only reads a trigger's strings, and frees or copies
        // only the relation cache's descriptors, never an executor's private one.
        let events = [
            (pg_sys::TRIGGER_TYPE_INSERT, c"activity_log_insert"),
            (pg_sys::TRIGGER_TYPE_UPDATE, c"activity_log_update"),
            (pg_sys::TRIGGER_TYPE_DELETE, c"activity_log_delete"),
        ];
        for (k, (event, name)) in events.iter().enumerate() {
            let t = &mut *triggers.add(n + k);
            t.tgoid = pg_sys::Oid::from(level.first_tgoid() + k as u32);
            t.tgname = name.as_ptr().cast_mut();
            t.tgfoid = pg_sys::Oid::from(level.foid());
            t.tgenabled = pg_sys::TRIGGER_FIRES_ALWAYS as c_char;
            t.tgisinternal = true;
            t.tgnargs = 1;
            t.tgargs = args;
            if level == Level::Row {
                t.tgtype = (pg_sys::TRIGGER_TYPE_AFTER | pg_sys::TRIGGER_TYPE_ROW | event) as i16;
                continue;
            }
            t.tgtype = (pg_sys::TRIGGER_TYPE_AFTER | event) as i16; // statement level: no ROW bit
            if *event != pg_sys::TRIGGER_TYPE_INSERT {
                t.tgoldtable = c"activity_log_old".as_ptr().cast_mut();
            }
            if *event != pg_sys::TRIGGER_TYPE_DELETE {
                t.tgnewtable = c"activity_log_new".as_ptr().cast_mut();
            }
        }
        (*td).triggers = triggers;
        (*td).numtriggers = total as i32;
        if level == Level::Row {
            (*td).trig_insert_after_row = true;
            (*td).trig_update_after_row = true;
            (*td).trig_delete_after_row = true;
        } else {
            (*td).trig_insert_after_statement = true;
            (*td).trig_update_after_statement = true;
            (*td).trig_delete_after_statement = true;
            (*td).trig_insert_new_table = true;
            (*td).trig_update_old_table = true;
            (*td).trig_update_new_table = true;
            (*td).trig_delete_old_table = true;
        }

        if n > 0 && !(*rri).ri_TrigFunctions.is_null() {
            std::ptr::copy_nonoverlapping((*rri).ri_TrigFunctions, finfo, n);
        }
        for k in 0..NTRIG {
            let f = &mut *finfo.add(n + k);
            f.fn_addr = Some(match level {
                Level::Statement => al_capture_rows,
                Level::Row => al_capture_row,
            });
            f.fn_oid = pg_sys::Oid::from(level.foid()); // non-zero: fmgr_info is never called
            f.fn_stats = pg_sys::TrackFunctionsLevel::TRACK_FUNC_ALL as u8; // never counted by pgstat
            f.fn_mcxt = (*estate).es_query_cxt;
        }
        if n > 0 && !(*rri).ri_TrigWhenExprs.is_null() {
            std::ptr::copy_nonoverlapping((*rri).ri_TrigWhenExprs, when, n);
        }
        if (*estate).es_instrument != 0 {
            let old_cxt = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
            let instr = pg_sys::InstrAlloc(total as i32, (*estate).es_instrument, false);
            pg_sys::MemoryContextSwitchTo(old_cxt);
            if n > 0 && !(*rri).ri_TrigInstrument.is_null() {
                std::ptr::copy_nonoverlapping((*rri).ri_TrigInstrument, instr, n);
            }
            (*rri).ri_TrigInstrument = instr;
        }
        (*rri).ri_TrigDesc = td;
        (*rri).ri_TrigFunctions = finfo;
        (*rri).ri_TrigWhenExprs = when;
    }
}

/// queue_moved_rows makes sure the rows a MERGE's UPDATE action moves to another partition of
/// a tracked partitioned root reach the capture, and as UPDATEs where that is certain.
///
/// A plain UPDATE puts a moved row into its UPDATE transition tables; a MERGE puts its old
/// image into the DELETE table and its new one into the INSERT table (nodeModifyTable.c,
/// `ExecDeleteEpilogue` and `ExecInsert` test `operation == CMD_UPDATE`), and queues AFTER
/// STATEMENT triggers only for the actions it has (`fireASTriggers`): a MERGE without a DELETE
/// or INSERT action would never hand those tables to anybody. So the missing events are
/// queued here, through the trigger manager's public entry points, with a descriptor that
/// holds only a synthetic trigger: no user's statement trigger fires for an action the MERGE
/// does not have. They are queued now, at ExecutorStart, because the transition tables they
/// name exist from now on and the events fire only with the query's others (AfterTriggerEndQuery),
/// when the tables are complete, whether the MERGE runs on its own or inside WITH.
///
/// When the MERGE has neither a DELETE nor an INSERT action, every row of those two tables is a
/// moved row, old and new images in the same order: they are recorded as UPDATEs. (The tables
/// are the query's for that table and operation: a data-modifying WITH inserting into or
/// deleting from the same table adds its rows, and its statement event then cancels ours and
/// hands them all over, see [`moved_rows_handed_over`].)
/// Otherwise the moved rows cannot be told apart from the MERGE's own deletes or inserts: the
/// table the MERGE lacks is recorded with a note, the other with the MERGE's own rows.
unsafe fn queue_moved_rows(
    mt: *mut pg_sys::ModifyTableState,
    estate: *mut pg_sys::EState,
    tracked_relid: u32,
) {
    // SAFETY: mt and estate belong to the query being started, whose root is augmented and
    // whose transition capture state is made; allocations go to the query's context.
    unsafe {
        let root = (*mt).rootResultRelInfo;
        let rel = (*root).ri_RelationDesc;
        let subcommands = (*mt).mt_merge_subcommands as u32;
        if (*(*rel).rd_rel).relkind != pg_sys::RELKIND_PARTITIONED_TABLE as c_char
            || subcommands & pg_sys::MERGE_UPDATE == 0
            || (*mt).mt_transition_capture.is_null()
        {
            return;
        }
        let deletes = subcommands & pg_sys::MERGE_DELETE != 0;
        let inserts = subcommands & pg_sys::MERGE_INSERT != 0;
        let events: &[u32] = match (deletes, inserts) {
            (false, false) => &[MOVED_TGOID_OLD, MOVED_TGOID_NEW],
            (false, true) => &[MOVED_TGOID_OLD_ALONE],
            (true, false) => &[MOVED_TGOID_NEW_ALONE],
            (true, true) => return, // its own statement triggers hand both tables over
        };
        add_moved_triggers(root, estate);
        for &tgoid in events {
            let old = tgoid == MOVED_TGOID_OLD || tgoid == MOVED_TGOID_OLD_ALONE;
            let rri =
                pg_sys::palloc(size_of::<pg_sys::ResultRelInfo>()).cast::<pg_sys::ResultRelInfo>();
            std::ptr::copy_nonoverlapping(root, rri, 1);
            let td =
                pg_sys::palloc0(size_of::<pg_sys::TriggerDesc>()).cast::<pg_sys::TriggerDesc>();
            let trigger = pg_sys::palloc0(size_of::<pg_sys::Trigger>()).cast::<pg_sys::Trigger>();
            *trigger = moved_trigger(root, tgoid);
            (*trigger).tgenabled = pg_sys::TRIGGER_FIRES_ALWAYS as c_char;
            (*td).triggers = trigger;
            (*td).numtriggers = 1;
            (*td).trig_delete_after_statement = old;
            (*td).trig_delete_old_table = old;
            (*td).trig_insert_after_statement = !old;
            (*td).trig_insert_new_table = !old;
            (*rri).ri_TrigDesc = td;
            (*rri).ri_TrigFunctions = pg_sys::palloc0(size_of::<pg_sys::FmgrInfo>()).cast();
            (*rri).ri_TrigWhenExprs = pg_sys::palloc0(size_of::<*mut pg_sys::ExprState>()).cast();
            (*rri).ri_TrigInstrument = std::ptr::null_mut();
            // The event names the root's relation: when it fires, the trigger manager finds the
            // trigger by its oid in the root's ResultRelInfo (add_moved_triggers).
            if old {
                pg_sys::ExecASDeleteTriggers(estate, rri, (*mt).mt_transition_capture);
            } else {
                pg_sys::ExecASInsertTriggers(estate, rri, (*mt).mt_transition_capture);
            }
            let cid = (*estate).es_output_cid;
            let subxact = unguarded::GetCurrentSubTransactionId();
            MOVES_QUEUED.with_borrow_mut(|q| {
                q.push(QueuedMove {
                    estate: estate as usize,
                    relid: tracked_relid,
                    target: (*rel).rd_id.to_u32(),
                    cid,
                    tgoid,
                    subxact,
                })
            });
        }
    }
}

/// moved_trigger is the synthetic trigger `tgoid` of [`queue_moved_rows`], with the command id
/// argument of `root`'s statement triggers; disabled, as it is in the root's descriptor, where
/// the trigger manager must never queue it for the statement's own events.
unsafe fn moved_trigger(root: *mut pg_sys::ResultRelInfo, tgoid: u32) -> pg_sys::Trigger {
    // SAFETY: root is augmented at statement level (augment), so its descriptor holds a trigger
    // of ours whose argument vector is the command id.
    unsafe {
        let td = (*root).ri_TrigDesc;
        let args = (0..(*td).numtriggers as usize)
            .map(|i| *(*td).triggers.add(i))
            .find(|t| t.tgfoid.to_u32() == Level::Statement.foid())
            .map_or(std::ptr::null_mut(), |t| t.tgargs);
        let old = tgoid == MOVED_TGOID_OLD || tgoid == MOVED_TGOID_OLD_ALONE;
        let event = if old {
            pg_sys::TRIGGER_TYPE_DELETE
        } else {
            pg_sys::TRIGGER_TYPE_INSERT
        };
        pg_sys::Trigger {
            tgoid: pg_sys::Oid::from(tgoid),
            tgname: if old {
                c"activity_log_moved_old".as_ptr().cast_mut()
            } else {
                c"activity_log_moved_new".as_ptr().cast_mut()
            },
            tgfoid: pg_sys::Oid::from(Level::Statement.foid()),
            tgtype: (pg_sys::TRIGGER_TYPE_AFTER | event) as i16,
            tgenabled: pg_sys::TRIGGER_DISABLED as c_char,
            tgisinternal: true,
            tgnargs: 1,
            tgargs: args,
            tgoldtable: if old {
                c"activity_log_old".as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            },
            tgnewtable: if old {
                std::ptr::null_mut()
            } else {
                c"activity_log_new".as_ptr().cast_mut()
            },
            ..Default::default()
        }
    }
}

/// add_moved_triggers appends the four triggers of [`queue_moved_rows`] to `root`'s descriptor,
/// disabled, with every array indexed by trigger position resized to match: the trigger manager
/// looks an event's trigger up there when it fires, and calls its function.
unsafe fn add_moved_triggers(root: *mut pg_sys::ResultRelInfo, estate: *mut pg_sys::EState) {
    const MOVED: [u32; 4] = [
        MOVED_TGOID_OLD,
        MOVED_TGOID_NEW,
        MOVED_TGOID_OLD_ALONE,
        MOVED_TGOID_NEW_ALONE,
    ];
    // SAFETY: root is live and augmented; everything is allocated in the query's context.
    unsafe {
        let old = (*root).ri_TrigDesc;
        let n = (*old).numtriggers as usize;
        if (0..n).any(|i| (*(*old).triggers.add(i)).tgoid.to_u32() == MOVED_TGOID_OLD) {
            return;
        }
        let total = n + MOVED.len();
        let cxt = (*estate).es_query_cxt;
        let td = pg_sys::MemoryContextAlloc(cxt, size_of::<pg_sys::TriggerDesc>())
            .cast::<pg_sys::TriggerDesc>();
        std::ptr::copy_nonoverlapping(old, td, 1);
        let triggers = pg_sys::MemoryContextAllocZero(cxt, size_of::<pg_sys::Trigger>() * total)
            .cast::<pg_sys::Trigger>();
        std::ptr::copy_nonoverlapping((*old).triggers, triggers, n);
        let finfo = pg_sys::MemoryContextAllocZero(cxt, size_of::<pg_sys::FmgrInfo>() * total)
            .cast::<pg_sys::FmgrInfo>();
        std::ptr::copy_nonoverlapping((*root).ri_TrigFunctions, finfo, n);
        let when = pg_sys::MemoryContextAllocZero(cxt, size_of::<*mut pg_sys::ExprState>() * total)
            .cast::<*mut pg_sys::ExprState>();
        std::ptr::copy_nonoverlapping((*root).ri_TrigWhenExprs, when, n);
        for (k, &tgoid) in MOVED.iter().enumerate() {
            *triggers.add(n + k) = moved_trigger(root, tgoid);
            let f = &mut *finfo.add(n + k);
            f.fn_addr = Some(al_capture_rows);
            f.fn_oid = pg_sys::Oid::from(Level::Statement.foid());
            f.fn_stats = pg_sys::TrackFunctionsLevel::TRACK_FUNC_ALL as u8;
            f.fn_mcxt = cxt;
        }
        (*td).triggers = triggers;
        (*td).numtriggers = total as i32;
        if (*estate).es_instrument != 0 {
            let old_cxt = pg_sys::MemoryContextSwitchTo(cxt);
            let instr = pg_sys::InstrAlloc(total as i32, (*estate).es_instrument, false);
            pg_sys::MemoryContextSwitchTo(old_cxt);
            if !(*root).ri_TrigInstrument.is_null() {
                std::ptr::copy_nonoverlapping((*root).ri_TrigInstrument, instr, n);
            }
            (*root).ri_TrigInstrument = instr;
        }
        (*root).ri_TrigDesc = td;
        (*root).ri_TrigFunctions = finfo;
        (*root).ri_TrigWhenExprs = when;
    }
}

/// Room for a command id in decimal and its NUL: u32::MAX has ten digits.
const CID_TEXT_BYTES: usize = 11;

/// hide_from_explain zeroes the synthetic triggers' instrumentation so that EXPLAIN ANALYZE
/// does not list them (it skips triggers that never ran).
pub unsafe fn hide_from_explain(estate: *mut pg_sys::EState) {
    // SAFETY: estate is live (called after standard_ExecutorFinish).
    unsafe {
        if (*estate).es_instrument == 0 {
            return;
        }
        for list in [
            (*estate).es_opened_result_relations,
            (*estate).es_trig_target_relations,
        ] {
            for node in list_nodes(list) {
                let rri = node.cast::<pg_sys::ResultRelInfo>();
                if (*rri).ri_TrigInstrument.is_null() {
                    continue;
                }
                let td = (*rri).ri_TrigDesc;
                for i in 0..(*td).numtriggers as usize {
                    let foid = (*(*td).triggers.add(i)).tgfoid.to_u32();
                    if foid == Level::Statement.foid() || foid == Level::Row.foid() {
                        std::ptr::write_bytes((*rri).ri_TrigInstrument.add(i), 0, 1);
                    }
                }
            }
        }
    }
}

/// Reads a transition table one tuple at a time as minimal-tuple bytes, through the store's
/// first read pointer: nobody else reads through it (a trigger's query over a transition table
/// takes a pointer of its own and rewinds it, see ExecInitNamedTuplestoreScan), and a private
/// one would cost two more calls into PostgreSQL per table and statement. Values stored out of
/// line (TOAST) are fetched first, and defaults of columns added after a row was stored are
/// filled in, so nothing refers to storage that can change; the writer decodes the bytes
/// (decoding is the expensive part, so it happens there).
struct Reader {
    store: *mut pg_sys::Tuplestorestate,
    desc: pg_sys::TupleDesc,
    slot: *mut pg_sys::TupleTableSlot,
    len: usize,
    /// Scratch for tuples that must be rebuilt, reset per row; made on first use.
    per_row: Option<pgrx::PgMemoryContexts>,
}

impl Reader {
    /// open starts reading `store` (None when the statement has no such table).
    ///
    /// # Safety
    /// `store` is NULL or a transition tuplestore of rows of `desc`, live for the reader's life.
    unsafe fn open(store: *mut pg_sys::Tuplestorestate, desc: pg_sys::TupleDesc) -> Option<Reader> {
        if store.is_null() {
            return None;
        }
        // SAFETY: as documented for the caller; the slot is dropped with the reader. Read
        // pointer 0 may rewind: transition tables are made with randomAccess false, which
        // gives it EXEC_FLAG_REWIND. One guard for the four calls (see crate::unguarded).
        let (slot, len) = unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| {
                unguarded::tuplestore_select_read_pointer(store, 0);
                unguarded::tuplestore_rescan(store);
                (
                    unguarded::MakeSingleTupleTableSlot(
                        desc,
                        &raw const pg_sys::TTSOpsMinimalTuple,
                    ),
                    unguarded::tuplestore_tuple_count(store) as usize,
                )
            })
        };
        Some(Reader {
            store,
            desc,
            slot,
            len,
            per_row: None,
        })
    }

    fn len(&self) -> usize {
        self.len
    }

    /// next is the next row's bytes, valid until the following call.
    fn next(&mut self) -> Option<&[u8]> {
        // SAFETY: the slot holds the tuple until the next call (a tuple read back from a spilled
        // store is the slot's to free); what we allocate for a row lives in per_row (reset here).
        unsafe {
            self.release();
            // Read pointer 0 of this store was selected at open.
            if !pg_sys::tuplestore_gettupleslot(self.store, true, false, self.slot) {
                return None;
            }
            // The slot is a minimal-tuple slot that gettupleslot filled: its tuple is there to
            // read, without ExecFetchSlotMinimalTuple's call per row.
            let m = (*self.slot.cast::<pg_sys::MinimalTupleTableSlot>()).mintuple;
            let t = if needs_completing(m, self.desc) {
                let (slot, desc) = (self.slot, self.desc);
                self.scratch().switch_to(|_| completed(slot, m, desc))
            } else {
                m
            };
            Some(std::slice::from_raw_parts(
                t.cast::<u8>(),
                (*t).t_len as usize,
            ))
        }
    }

    fn scratch(&mut self) -> &mut pgrx::PgMemoryContexts {
        self.per_row
            .get_or_insert_with(|| pgrx::PgMemoryContexts::new("activity_log row"))
    }

    /// release frees what the previous row needed.
    fn release(&mut self) {
        if let Some(cxt) = self.per_row.as_mut() {
            // SAFETY: nothing allocated in it for the previous row is used any more.
            unsafe { cxt.reset() };
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.release();
        // SAFETY: the slot is ours.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) };
    }
}

/// needs_completing tells whether stored row `m` refers to storage (a TOAST pointer) or lacks
/// columns added after it was stored.
unsafe fn needs_completing(m: pg_sys::MinimalTuple, desc: pg_sys::TupleDesc) -> bool {
    // SAFETY: a valid minimal tuple of a row type with descriptor desc.
    unsafe {
        let stored_natts = ((*m).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) as i32;
        stored_natts < (*desc).natts || (*m).t_infomask as u32 & pg_sys::HEAP_HASEXTERNAL != 0
    }
}

/// completed is stored row `m` (the tuple in `slot`) with every value inline and every column
/// present, allocated in the current memory context: values stored out of line are fetched,
/// and the defaults ("missing values") of columns added by ADD COLUMN … DEFAULT after the row
/// was stored are taken from the descriptor now (the writer's copy of the row type has none).
unsafe fn completed(
    slot: *mut pg_sys::TupleTableSlot,
    m: pg_sys::MinimalTuple,
    desc: pg_sys::TupleDesc,
) -> pg_sys::MinimalTuple {
    // SAFETY: as for needs_completing; slot holds m.
    unsafe {
        let stored_natts = ((*m).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) as i32;
        let full = if stored_natts < (*desc).natts {
            pg_sys::slot_getallattrs(slot);
            crate::versions::form_minimal_tuple(desc, (*slot).tts_values, (*slot).tts_isnull)
        } else {
            m
        };
        if (*full).t_infomask as u32 & pg_sys::HEAP_HASEXTERNAL != 0 {
            detoasted(full, desc)
        } else {
            full
        }
    }
}

/// detoasted returns a copy of `m` with every out-of-line value fetched inline, allocated in
/// the current memory context.
unsafe fn detoasted(m: pg_sys::MinimalTuple, desc: pg_sys::TupleDesc) -> pg_sys::MinimalTuple {
    // SAFETY: heap_copy_tuple_as_datum expands external values (toast_flatten_tuple_to_datum);
    // the datum is a HeapTupleHeader whose varlena length is the tuple's length.
    unsafe {
        let heap = pg_sys::heap_tuple_from_minimal_tuple(m);
        let datum = pg_sys::heap_copy_tuple_as_datum(heap, desc);
        let header = datum.cast_mut_ptr::<pg_sys::HeapTupleHeaderData>();
        let len = (header.cast::<u32>().read_unaligned() >> 2) & 0x3FFF_FFFF; // VARSIZE, 4-byte header
        let mut tuple = pg_sys::HeapTupleData {
            t_len: len,
            t_data: header,
            ..Default::default()
        };
        crate::versions::minimal_from_heap_tuple(&mut tuple)
    }
}

/// columns describes a row type so that the writer can rebuild it, naming the columns with
/// the descriptor's own strings.
///
/// # Safety
/// `desc` is a live tuple descriptor that outlives `'a`.
unsafe fn columns<'a>(desc: pg_sys::TupleDesc) -> Vec<Column<'a>> {
    // SAFETY: as documented for the caller.
    unsafe {
        crate::versions::attributes(desc)
            .iter()
            .map(|a| Column {
                name: CStr::from_ptr(a.attname.data.as_ptr()).to_bytes().into(),
                type_oid: a.atttypid.to_u32(),
                typmod: a.atttypmod,
                len: a.attlen,
                byval: a.attbyval,
                align: a.attalign as u8,
                // A virtual generated column is null in the stored row (its value is computed
                // when read), so it stays out of the images as a dropped one does, as logical
                // replication leaves it out: replaying the stored columns computes it again.
                dropped: a.attisdropped || crate::versions::is_virtual_generated(a),
            })
            .collect()
    }
}

/// Version-1 calling convention of [`al_capture_rows`], which SQL knows as
/// `activity_log._capture_rows()`: the trigger manager calls the function of a COPY's
/// synthetic triggers (copy_from.rs) through pg_proc, like any trigger function.
#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo_al_capture_rows() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The synthetic triggers' function: one call per statement and operation on a tracked table,
/// and one before the first row of a COPY (copy_from.rs). Called for anything else — as the
/// function of a trigger somebody created, or directly — it refuses with an ERROR and does
/// nothing.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn al_capture_rows(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fcinfo is the call's; its context is checked to be the trigger manager's
    // TriggerData, for one of our synthetic triggers, before anything else is read.
    unsafe {
        let td = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        let ours = !td.is_null()
            && pgrx::is_a(td.cast(), pg_sys::NodeTag::T_TriggerData)
            && !(*td).tg_trigger.is_null()
            && is_synthetic((*(*td).tg_trigger).tgoid)
            && (*(*td).tg_trigger).tgnargs == 1;
        if !ours {
            crate::errors::raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "activity_log._capture_rows() runs only as activity_log's own capture trigger",
                Some(
                    "Drop the trigger that calls it: activity_log captures tracked tables without one.",
                ),
            );
        }
        let rel = (*td).tg_relation;
        if (*td).tg_event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE {
            // A COPY's BEFORE STATEMENT trigger: the COPY took our descriptor.
            copy_from::copy_started((*rel).rd_id);
            return pg_sys::Datum::from(0);
        }
        let Some(tracked) = tracked::lookup((*rel).rd_id.to_u32()) else {
            return pg_sys::Datum::from(0);
        };
        let tgoid = (*(*td).tg_trigger).tgoid.to_u32();
        let event = (*td).tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
        let cid = CStr::from_ptr(*(*(*td).tg_trigger).tgargs)
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let desc = (*rel).rd_att;
        let olds = Reader::open((*td).tg_oldtable, desc);
        let news = Reader::open((*td).tg_newtable, desc);
        let note = match event {
            pg_sys::TRIGGER_EVENT_INSERT | pg_sys::TRIGGER_EVENT_DELETE => merge_moving_note(rel),
            _ => "",
        };
        let push = |op, n: usize, next_row: &mut dyn FnMut(&mut RowSink) -> bool| {
            if n > 0 {
                push_change(&tracked, op, cid, n as i64, columns(desc), note, next_row);
            }
        };
        if (MOVED_TGOID_OLD..=MOVED_TGOID_NEW_ALONE).contains(&tgoid) {
            moved_rows(&tracked, tgoid, cid, desc, td, olds, news);
            return pg_sys::Datum::from(0);
        }
        if event == pg_sys::TRIGGER_EVENT_INSERT || event == pg_sys::TRIGGER_EVENT_DELETE {
            moved_rows_handed_over(&tracked, event, cid, desc);
        }
        match (event, olds, news) {
            (pg_sys::TRIGGER_EVENT_INSERT, _, Some(mut news)) => {
                push(Op::Insert, news.len(), &mut |sink| match news.next() {
                    Some(n) => {
                        sink.push(None, Some(n));
                        true
                    }
                    None => false,
                })
            }
            (pg_sys::TRIGGER_EVENT_DELETE, Some(mut olds), _) => {
                push(Op::Delete, olds.len(), &mut |sink| match olds.next() {
                    Some(o) => {
                        sink.push(Some(o), None);
                        true
                    }
                    None => false,
                })
            }
            (pg_sys::TRIGGER_EVENT_UPDATE, Some(mut olds), Some(mut news)) => {
                // Old and new are paired by position. An old row without a new one (a row moved
                // to a partition whose BEFORE trigger refused it) was deleted.
                let paired = olds.len().min(news.len());
                let orphans = olds.len() - paired;
                let mut left = paired;
                push(Op::Update, paired, &mut |sink| {
                    if left == 0 {
                        return false;
                    }
                    left -= 1;
                    sink.push(olds.next(), news.next());
                    true
                });
                push(Op::Delete, orphans, &mut |sink| match olds.next() {
                    Some(o) => {
                        sink.push(Some(o), None);
                        true
                    }
                    None => false,
                });
            }
            _ => {}
        }
        if event == pg_sys::TRIGGER_EVENT_UPDATE {
            moved_news_after_updates(&tracked, cid, desc);
        }
        pg_sys::Datum::from(0)
    }
}

/// The note of a moving MERGE's old images whose new images are among the statement's INSERT
/// records: the MERGE has an INSERT action, or another part of the statement inserts rows.
const OLD_ALONE: &str = "rows this MERGE moved to another partition: their new versions are among the statement's INSERT records, which cannot be paired with them since the statement inserts rows into the table too";
/// The note of a moving MERGE's new images whose old images are among the statement's DELETE
/// records: the MERGE has a DELETE action, or another part of the statement deletes rows.
const NEW_ALONE: &str = "rows this MERGE moved from another partition: their old versions are among the statement's DELETE records, which cannot be paired with them since the statement deletes rows of the table too";

/// push_rows records the rows of a transition table as one DELETE (old images) or INSERT (new
/// images) record of `tracked`, with `note`; nothing for an empty table.
unsafe fn push_rows(
    tracked: &Tracked,
    op: Op,
    cid: u32,
    desc: pg_sys::TupleDesc,
    reader: Option<Reader>,
    note: &str,
) {
    let Some(mut rows) = reader else { return };
    if rows.len() == 0 {
        return;
    }
    let n = rows.len() as i64;
    // SAFETY: desc is the table's row type, which the reader's tuples have.
    let columns = unsafe { columns(desc) };
    push_change(tracked, op, cid, n, columns, note, |sink| {
        match rows.next() {
            Some(row) if op == Op::Delete => {
                sink.push(Some(row), None);
                true
            }
            Some(row) => {
                sink.push(None, Some(row));
                true
            }
            None => false,
        }
    });
}

/// moved_rows records the rows a MERGE moved to another partition, handed over by the events
/// of [`queue_moved_rows`]: the old images wait for the new ones that the next event brings,
/// and pairs are recorded as UPDATEs (`new_key` set, as for a plain UPDATE that moves a row).
/// Tables of different lengths (a BEFORE INSERT trigger of the destination refused a row) cannot
/// be paired with certainty: each row is recorded as a DELETE or an INSERT, with a note, as are
/// the rows of a MERGE that inserts or deletes rows of its own too.
unsafe fn moved_rows(
    tracked: &Tracked,
    tgoid: u32,
    cid: u32,
    desc: pg_sys::TupleDesc,
    td: *mut pg_sys::TriggerData,
    olds: Option<Reader>,
    news: Option<Reader>,
) {
    const REFUSED: &str = "rows this MERGE moved to another partition, each recorded as a DELETE of its old version and an INSERT of its new one: a trigger refused some of them, so old and new versions cannot be paired";
    const NO_OLD: &str =
        "rows this MERGE moved from another partition: their old versions were not captured";
    // All of them: two moving MERGEs of one statement (17+: one inside WITH) queue one event
    // each, and the later cancels the earlier, whose rows this one's shared table holds.
    MOVES_QUEUED.with_borrow_mut(|q| {
        q.retain(|e| !(e.relid == tracked.relid && e.cid == cid && e.tgoid == tgoid))
    });
    // SAFETY: desc is the relation's and td the trigger call's; the transition tables live until
    // the query's AFTER triggers have all fired.
    unsafe {
        let moved_table = |store: *mut pg_sys::Tuplestorestate| MovedTable {
            owner: FINISHING.with_borrow(|f| f.last().copied()).unwrap_or(0),
            relid: tracked.relid,
            cid,
            store: store as usize,
            subxact: unguarded::GetCurrentSubTransactionId(),
        };
        let push = |op, reader, note| push_rows(tracked, op, cid, desc, reader, note);
        match tgoid {
            MOVED_TGOID_OLD => {
                // Read when the new images arrive: the event for them comes next.
                let old_store = (*td).tg_oldtable;
                MOVED_OLDS.with_borrow_mut(|m| m.push(moved_table(old_store)));
            }
            MOVED_TGOID_NEW => {
                let waiting = MOVED_OLDS
                    .with_borrow_mut(|m| m.pop_if(|o| o.relid == tracked.relid && o.cid == cid));
                let Some(waiting) = waiting else {
                    // The old images' event was cancelled by the DELETE event of another part of
                    // the statement, which hands them over with its own rows; should it never
                    // fire, after_finish leaves a gap record.
                    let cancelled = MOVES_QUEUED.with_borrow(|q| {
                        q.iter().any(|e| {
                            e.relid == tracked.relid && e.cid == cid && e.tgoid == MOVED_TGOID_OLD
                        })
                    });
                    let note = if cancelled { NEW_ALONE } else { NO_OLD };
                    let new_store = (*td).tg_newtable;
                    MOVED_NEWS.with_borrow_mut(|m| m.push((moved_table(new_store), note)));
                    return;
                };
                let olds = Reader::open(waiting.store as *mut _, desc);
                let (olds_len, news_len) = (
                    olds.as_ref().map_or(0, Reader::len),
                    news.as_ref().map_or(0, Reader::len),
                );
                if olds_len != news_len {
                    push(Op::Delete, olds, REFUSED);
                    let new_store = (*td).tg_newtable;
                    MOVED_NEWS.with_borrow_mut(|m| m.push((moved_table(new_store), REFUSED)));
                    return;
                }
                let (Some(mut olds), Some(mut news)) = (olds, news) else {
                    return;
                };
                if news_len == 0 {
                    return;
                }
                push_change(
                    tracked,
                    Op::Update,
                    cid,
                    news_len as i64,
                    columns(desc),
                    "",
                    |sink| match (olds.next(), news.next()) {
                        (Some(o), Some(n)) => {
                            sink.push(Some(o), Some(n));
                            true
                        }
                        _ => false,
                    },
                );
            }
            MOVED_TGOID_OLD_ALONE => push(Op::Delete, olds, OLD_ALONE),
            _ => {
                let new_store = (*td).tg_newtable;
                MOVED_NEWS.with_borrow_mut(|m| m.push((moved_table(new_store), NEW_ALONE)));
            }
        }
    }
}

/// moved_rows_handed_over takes note that an INSERT or DELETE event of another part of the
/// statement (a data-modifying WITH writing the same table) hands over the rows a moving MERGE
/// put into the transition table they share: PostgreSQL cancelled the event of
/// [`queue_moved_rows`] for that table when this one was queued (trigger.c,
/// cancel_prior_stmt_triggers), so it is no longer awaited, and old images waiting for their
/// new ones ([`MOVED_OLDS`]) will not get them: they are recorded now, unpaired, before the
/// rows of this event.
unsafe fn moved_rows_handed_over(tracked: &Tracked, event: u32, cid: u32, desc: pg_sys::TupleDesc) {
    let insert = event == pg_sys::TRIGGER_EVENT_INSERT;
    let cancelled: [u32; 2] = if insert {
        [MOVED_TGOID_NEW, MOVED_TGOID_NEW_ALONE]
    } else {
        [MOVED_TGOID_OLD, MOVED_TGOID_OLD_ALONE]
    };
    let relid = tracked.relid;
    if MOVES_QUEUED.with_borrow(Vec::is_empty) {
        return; // nearly always
    }
    MOVES_QUEUED.with_borrow_mut(|q| {
        q.retain(|e| !(e.relid == relid && e.cid == cid && cancelled.contains(&e.tgoid)))
    });
    if !insert {
        return;
    }
    let Some(waiting) =
        MOVED_OLDS.with_borrow_mut(|m| m.pop_if(|o| o.relid == relid && o.cid == cid))
    else {
        return;
    };
    // SAFETY: the waiting store is the statement's DELETE transition table, live until its
    // query's AFTER triggers have all fired; desc is the relation's.
    unsafe {
        let olds = Reader::open(waiting.store as *mut _, desc);
        push_rows(tracked, Op::Delete, cid, desc, olds, OLD_ALONE);
    }
}

/// moved_news_after_updates records, after a MERGE's UPDATE event (its last: the MERGE has no
/// INSERT action), the new images of the rows it moved that [`moved_rows`] kept waiting. Were
/// they recorded when their own event fires, first, a moved row taking a key that one of the
/// MERGE's deletes or updates frees would come before it in the trail: they come where an
/// INSERT action's rows would, an order replay always accepts.
unsafe fn moved_news_after_updates(tracked: &Tracked, cid: u32, desc: pg_sys::TupleDesc) {
    let relid = tracked.relid;
    if MOVED_NEWS.with_borrow(Vec::is_empty) {
        return; // nearly always
    }
    while let Some((waiting, note)) =
        MOVED_NEWS.with_borrow_mut(|m| m.pop_if(|(o, _)| o.relid == relid && o.cid == cid))
    {
        // SAFETY: the waiting store is the statement's INSERT transition table, live until
        // its query's AFTER triggers have all fired; desc is the relation's.
        unsafe {
            let news = Reader::open(waiting.store as *mut _, desc);
            push_rows(tracked, Op::Insert, cid, desc, news, note);
        }
    }
}

/// merge_moving_note is the note for the INSERT and DELETE records of `rel` made by the query
/// whose AFTER triggers are firing when it has a MERGE of that partitioned table whose UPDATE
/// action can move rows to another partition: its moved rows are among them, unpaired (see
/// [`queue_moved_rows`]). Empty otherwise (nearly always: one short list is read).
unsafe fn merge_moving_note(rel: pg_sys::Relation) -> &'static str {
    const NOTE: &str = "this MERGE's UPDATE action may have moved rows to other partitions: a moved row is recorded as a DELETE of its old version and an INSERT of its new one, among the statement's other deletes and inserts";
    let Some(owner) = FINISHING.with_borrow(|f| f.last().copied()) else {
        return "";
    };
    // SAFETY: rel is the trigger's relation; the ModifyTableStates of SET_UP entries of the
    // query whose triggers are firing live until its ExecutorEnd.
    unsafe {
        if (*(*rel).rd_rel).relkind != pg_sys::RELKIND_PARTITIONED_TABLE as c_char {
            return "";
        }
        let relid = (*rel).rd_id.to_u32();
        let moving = SET_UP.with_borrow(|s| {
            s.iter().any(|e| {
                let mt = e.mt as *mut pg_sys::ModifyTableState;
                // The MERGE's target, which may be a partition of the tracked table.
                let target = (*(*(*mt).rootResultRelInfo).ri_RelationDesc).rd_id.to_u32();
                e.estate == owner
                    && target == relid
                    && (*mt).operation == pg_sys::CmdType::CMD_MERGE
                    && (*mt).mt_merge_subcommands as u32 & pg_sys::MERGE_UPDATE != 0
            })
        });
        if moving { NOTE } else { "" }
    }
}

/// The synthetic row trigger's function: one call per row of a tracked table changed through an
/// untracked ancestor, when the query's AFTER triggers fire. Rows are gathered into
/// [`ROW_BATCHES`], made into records by [`flush_row_batches`].
#[pg_guard]
unsafe extern "C-unwind" fn al_capture_row(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: called by the trigger manager with a TriggerData context; the slots hold the
    // row versions for the duration of the call.
    unsafe {
        let td = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        let rel = (*td).tg_relation;
        let relid = (*rel).rd_id.to_u32();
        let Some(tracked) = tracked::lookup(relid) else {
            return pg_sys::Datum::from(0);
        };
        let cid = CStr::from_ptr(*(*(*td).tg_trigger).tgargs)
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let desc = (*rel).rd_att;
        let image = |slot: *mut pg_sys::TupleTableSlot| -> Vec<u8> {
            let mut should_free = false;
            let m = pg_sys::ExecFetchSlotMinimalTuple(slot, &mut should_free);
            let t = if needs_completing(m, desc) {
                completed(slot, m, desc)
            } else {
                m
            };
            // Allocated in the trigger call's memory, which the trigger manager resets.
            std::slice::from_raw_parts(t.cast::<u8>(), (*t).t_len as usize).to_vec()
        };
        let (op, old, new) = match (*td).tg_event & pg_sys::TRIGGER_EVENT_OPMASK {
            pg_sys::TRIGGER_EVENT_INSERT => (Op::Insert, None, Some(image((*td).tg_trigslot))),
            pg_sys::TRIGGER_EVENT_DELETE => (Op::Delete, Some(image((*td).tg_trigslot)), None),
            pg_sys::TRIGGER_EVENT_UPDATE => (
                Op::Update,
                Some(image((*td).tg_trigslot)),
                Some(image((*td).tg_newslot)),
            ),
            _ => return pg_sys::Datum::from(0),
        };
        let subxact = unguarded::GetCurrentSubTransactionId();
        // The query firing this trigger: the trigger manager calls it at that query's level.
        let owner = FINISHING.with_borrow(|f| f.last().copied()).unwrap_or(0);
        let (same, full) = ROW_BATCHES.with_borrow(|b| match b.last() {
            Some(b) if b.owner == owner => (
                b.relid == relid && b.op == op && b.cid == cid,
                b.rows.len() >= BATCH_ROWS || b.bytes >= BATCH_BYTES,
            ),
            _ => (false, false),
        });
        if full || !same {
            // Another table or command of the same query, or enough for one record.
            if let Some(batch) = ROW_BATCHES.with_borrow_mut(|b| b.pop_if(|b| b.owner == owner)) {
                flush(batch);
            }
            let columns = columns(desc)
                .into_iter()
                .map(|c| Column {
                    name: c.name.into_owned().into(),
                    ..c
                })
                .collect();
            ROW_BATCHES.with_borrow_mut(|b| {
                b.push(RowBatch {
                    owner,
                    bytes: 0,
                    tracked,
                    relid,
                    op,
                    cid,
                    subxact,
                    columns,
                    rows: Vec::new(),
                })
            });
        }
        ROW_BATCHES.with_borrow_mut(|b| {
            if let Some(b) = b.last_mut() {
                b.bytes += old.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len);
                b.rows.push((old, new));
            }
        });
        pg_sys::Datum::from(0)
    }
}

/// flush_row_batches makes the rows the row triggers of query `owner` gathered into records.
fn flush_row_batches(owner: usize) {
    while let Some(batch) = ROW_BATCHES.with_borrow_mut(|b| b.pop_if(|b| b.owner == owner)) {
        flush(batch);
    }
}

/// flush makes one batch of rows into one Change record.
fn flush(batch: RowBatch) {
    let mut rows = batch.rows.iter();
    push_change(
        &batch.tracked,
        batch.op,
        batch.cid,
        batch.rows.len() as i64,
        batch.columns.clone(),
        "",
        |sink| match rows.next() {
            Some((old, new)) => {
                sink.push(old.as_deref(), new.as_deref());
                true
            }
            None => false,
        },
    );
}

/// gap_for_foreign_partition says in the trail that a statement's rows of `tracked` were not
/// captured because the table has a foreign partition (no transition tables there).
pub fn gap_for_foreign_partition(tracked: &Tracked, command_id: u32) {
    let note = "the table has a foreign partition, so no rows of this statement were captured";
    push_change(tracked, Op::Gap, command_id, 0, Vec::new(), note, |_| false);
}

/// push_change appends a Change record for the tracked root of `tracked`.
/// `next_row` appends its row images (see [`pending::push_rows`]); `row_count` is how many rows
/// changed.
pub fn push_change(
    tracked: &Tracked,
    op: Op,
    command_id: u32,
    row_count: i64,
    columns: Vec<Column>,
    note: &str,
    next_row: impl FnMut(&mut RowSink) -> bool,
) {
    // SAFETY: no error paths.
    let ts = unsafe { pg_sys::GetCurrentTimestamp() };
    let query = context::current_query();
    if tracked.durable {
        pending::mark_durable();
    }
    // A logical replication worker's records name the subscription and its owner: whose
    // rights applied them (capture/replication.rs).
    let attributed = match process::in_logical_worker() {
        true => {
            applied::note_captured(tracked.relid, op, row_count);
            super::replication::attributed_note(note, op)
        }
        false => None,
    };
    let note = attributed.as_deref().unwrap_or(note);
    let record = Record {
        origin: origin::origin(),
        body: Body::Change(Change {
            ts,
            command_id,
            op,
            relid: tracked.relid,
            schema: tracked.schema.as_slice().into(),
            table: tracked.table.as_slice().into(),
            key_columns: borrowed(&tracked.key_columns),
            exclude_columns: borrowed(&tracked.exclude_columns),
            query: redact::redact(clip(&query, gucs::max_query_length())),
            note: note.as_bytes().into(),
            row_count,
            columns,
            rows: Vec::new(),
        }),
    };
    pending::push_rows(&record, next_row);
}

/// borrowed lends column names to a record for as long as it is being encoded.
fn borrowed(names: &[Vec<u8>]) -> Vec<Bytes<'_>> {
    names.iter().map(|n| n.as_slice().into()).collect()
}
