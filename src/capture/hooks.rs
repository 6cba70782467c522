//! capture/hooks.rs: the executor, ProcessUtility, emit_log and object_access hooks.
//!
//! Runs in every backend for every statement, so it stays cheap: a depth counter, a few
//! timestamps and copies of the statement text. Names are not looked up here (roles and
//! relations travel as OIDs); the writer resolves them.
//!
//! # How it works
//!
//! [`install`] chains each hook in a pair (`PREV_X = X_hook; X_hook = al_x`), and each hook
//! calls the previous one, else PostgreSQL's standard function. A top-level statement (depth 0)
//! is noted when it starts (context.rs keeps it, so that an error report or a change record can
//! name it); when it ends normally, a statement record goes into the pending buffer if
//! `activity_log.capture_statements` selects its class. Errors are seen by `emit_log_hook`,
//! which PostgreSQL calls once per error that reaches the top level, before the transaction
//! aborts. ProcessUtility also hands COPY FROM to copy_from.rs, records TRUNCATE, and stops the
//! writer of a trail a DROP DATABASE or DROP EXTENSION ends; object_access refuses to drop the
//! extension any other way while the trail holds records.
//!
//! # Invariants
//!
//! - The statement depth is 0 exactly outside any statement this backend runs: every hook that
//!   runs nested statements holds a [`Nested`] guard around the chained call.
//! - Only a top-level statement is recorded as a statement; a nested one that writes or changes
//!   the schema makes its top-level statement a Mod or a Ddl one (`note_nested`).
//! - The running statements are forgotten at every transaction end and at the abort of the
//!   subtransaction they started in (xact.rs calls [`forget_statements`], [`forget_subxact`]).
//! - Nothing of the extension's own processes, parallel workers, binary upgrade, recovery or a
//!   restore is recorded (context.rs `capturing`).
//!
//! # Panic / unwind safety
//!
//! Every hook is `#[pg_guard]`; saved hook pointers are called through
//! `pg_guard_ffi_boundary`. The depth counter is restored by a guard's `Drop`, which also runs
//! when a PostgreSQL ERROR unwinds through us. `emit_log_hook` runs inside error reporting and
//! must not raise: it calls nothing that can `ereport`.

use pgrx::pg_sys;
use pgrx::pg_sys::ffi::pg_guard_ffi_boundary;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::{CStr, c_char, c_int};
use std::rc::Rc;

use super::context::{
    Attribution, CURRENT, DEPTH, Nested, as_extension_owner, capturing, recorded_text,
};
use super::origin::{ORIGIN_FIELD_MAX, client_addr, clip, cstr_bytes, origin};
use super::{copy_from, pending, redact, replication, restore, rows, tracked};
use crate::errors::{raise, raise_with_detail};
use crate::gucs::{self, CaptureStatements};
use crate::process::runs_statements_for_a_user;
use crate::record::Op;
use crate::record::{Body, Record, Statement, StatementClass};
use crate::ring;
use crate::unguarded;

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;
static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;
static mut PREV_EMIT_LOG: pg_sys::emit_log_hook_type = None;
static mut PREV_OBJECT_ACCESS: pg_sys::object_access_hook_type = None;

/// A top-level statement that has started and not yet ended.
struct Running {
    query_desc: usize, // identity only; 0 for utility statements
    subxact: u32,      // the subtransaction it started in
    ts: i64,
    class: StatementClass,
    command: &'static [u8],
    query: Rc<[u8]>,
    relations: Vec<u32>,
}

thread_local! {
    static RUNNING: RefCell<Vec<Running>> = const { RefCell::new(Vec::new()) };
}

/// install chains every hook; called once from `_PG_init`.
pub fn install() {
    // SAFETY: _PG_init runs single-threaded in the postmaster before any backend exists.
    unsafe {
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(al_executor_start);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(al_executor_run);
        PREV_EXECUTOR_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(al_executor_finish);
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(al_executor_end);
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(al_process_utility);
        PREV_EMIT_LOG = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(al_emit_log);
        PREV_OBJECT_ACCESS = pg_sys::object_access_hook;
        pg_sys::object_access_hook = Some(al_object_access);
    }
}

fn wanted(class: StatementClass) -> bool {
    match gucs::capture_statements() {
        CaptureStatements::None => false,
        CaptureStatements::Ddl => class == StatementClass::Ddl,
        CaptureStatements::Mod => class != StatementClass::Other,
        CaptureStatements::All => true,
    }
}

fn now() -> i64 {
    // SAFETY: no error paths.
    unsafe { unguarded::GetCurrentTimestamp() }
}

/// statement_text cuts one statement out of a (possibly multi-statement) query string.
unsafe fn statement_text(source: *const c_char, location: c_int, len: c_int) -> Rc<[u8]> {
    if source.is_null() {
        return Rc::from(&b""[..]);
    }
    // SAFETY: source is the NUL-terminated query string of the statement.
    let all = unsafe { CStr::from_ptr(source) }.to_bytes();
    let start = if location >= 0 && (location as usize) <= all.len() {
        location as usize
    } else {
        0
    };
    let end = if location >= 0 && len > 0 {
        (start + len as usize).min(all.len())
    } else {
        all.len()
    };
    recorded_text(all[start..end].trim_ascii())
}

/// relation_oids lists the tables a plan reads or writes, once each.
unsafe fn relation_oids(ps: *mut pg_sys::PlannedStmt) -> Vec<u32> {
    let mut out = Vec::new();
    // SAFETY: the plan's range table is a List of RangeTblEntry pointers and appendRelations
    // a List of AppendRelInfo pointers, both owned by the plan.
    unsafe {
        let rtable = (*ps).rtable;
        if rtable.is_null() {
            return out;
        }
        // Range-table indexes count from 1.
        let rte = |index: usize| {
            (*(*rtable).elements.add(index - 1))
                .ptr_value
                .cast::<pg_sys::RangeTblEntry>()
        };
        // The partitions (and inheritance children) the planner added to the range table:
        // the statement named their parent, a table, which is listed. The legs of a UNION ALL
        // are children too, of a subquery: those are listed.
        let mut children = Vec::new();
        let appends = (*ps).appendRelations;
        if !appends.is_null() {
            for i in 0..(*appends).length as usize {
                let info = (*(*appends).elements.add(i))
                    .ptr_value
                    .cast::<pg_sys::AppendRelInfo>();
                let parent = (*info).parent_relid as usize;
                if (1..=(*rtable).length as usize).contains(&parent)
                    && (*rte(parent)).rtekind == pg_sys::RTEKind::RTE_RELATION
                {
                    children.push((*info).child_relid as usize);
                }
            }
        }
        for i in 1..=(*rtable).length as usize {
            if children.contains(&i) {
                continue;
            }
            let rte = rte(i);
            // From PostgreSQL 16 on, a view the statement reads is an RTE_SUBQUERY that keeps
            // the view's relid (for its privilege checks); before, it stayed an RTE_RELATION.
            // Other subqueries have none.
            let named = match (*rte).rtekind {
                pg_sys::RTEKind::RTE_RELATION => true,
                pg_sys::RTEKind::RTE_SUBQUERY => (*rte).relid != pg_sys::InvalidOid,
                _ => false,
            };
            if named {
                let oid = (*rte).relid.to_u32();
                if !out.contains(&oid) {
                    out.push(oid);
                }
            }
        }
    }
    out
}

/// forget_subxact drops statements that started in an aborted subtransaction (or its children).
pub fn forget_subxact(subid: u32) {
    RUNNING.with_borrow_mut(|r| r.retain(|x| x.subxact < subid));
    rows::forget_subxact(subid);
}

fn start_statement(running: Running) {
    client_addr();
    CURRENT.set(Some(Attribution {
        command: running.command,
        query: running.query.clone(),
        class: running.class,
    }));
    // A statement may still write, or change the schema, through what it calls (a DO block,
    // a function in a SELECT): it is kept until it ends, when note_nested may have made it a
    // Mod or a Ddl statement.
    if wanted(running.class) || wanted(StatementClass::Ddl) {
        RUNNING.with_borrow_mut(|r| r.push(running));
    }
}

/// note_nested makes the running top-level statement one of `class` (Mod: it wrote data; Ddl:
/// it changed the schema) when a statement it runs is, so that it is recorded at that level —
/// pgaudit logs nested statements too — and adds the tables `relations` the nested statement
/// named to the statement record's.
fn note_nested(class: StatementClass, relations: impl FnOnce() -> Vec<u32>) {
    if class == StatementClass::Other || !wanted(class) {
        return;
    }
    RUNNING.with_borrow_mut(|r| {
        // A DDL statement is recorded already; what it writes is the extension's bookkeeping
        // (a dropped table leaves tracked_tables), not the statement's data.
        if let Some(top) = r.last_mut().filter(|t| t.class != StatementClass::Ddl) {
            if top.class == StatementClass::Other || class == StatementClass::Ddl {
                top.class = class;
            }
            for oid in relations() {
                if !top.relations.contains(&oid) {
                    top.relations.push(oid);
                }
            }
        }
    });
}

/// end_statement turns a finished top-level statement into a pending record.
fn end_statement(query_desc: usize, rows: Option<i64>, query_id: i64) {
    CURRENT.set(None);
    let Some(run) = RUNNING.with_borrow_mut(|r| {
        let at = r.iter().rposition(|x| x.query_desc == query_desc)?;
        Some(r.swap_remove(at))
    }) else {
        return;
    };
    // A restore's own statements are not recorded (restore.rs), from its CREATE EXTENSION on.
    if !wanted(run.class) || restore::active() {
        return;
    }
    let end = now();
    pending::push(&Record {
        origin: origin(),
        body: Body::Statement(Statement {
            ts: run.ts,
            duration_us: end - run.ts,
            class: run.class,
            command: run.command.into(),
            sqlstate: None,
            error_message: None,
            query: redact::redact(&run.query),
            query_id,
            rows,
            relations: run.relations,
        }),
    });
}

/// forget_statements drops what is known about running statements at transaction end.
pub fn forget_statements() {
    CURRENT.set(None);
    RUNNING.with_borrow_mut(Vec::clear);
    rows::forget_all();
}

fn command_name(op: pg_sys::CmdType::Type) -> &'static [u8] {
    match op {
        pg_sys::CmdType::CMD_SELECT => b"SELECT",
        pg_sys::CmdType::CMD_INSERT => b"INSERT",
        pg_sys::CmdType::CMD_UPDATE => b"UPDATE",
        pg_sys::CmdType::CMD_DELETE => b"DELETE",
        pg_sys::CmdType::CMD_MERGE => b"MERGE",
        _ => b"UNKNOWN",
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn al_executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: c_int) {
    // SAFETY: query_desc and its plannedstmt are valid for the whole call. Whether capturing
    // or not: another backend's copy of tracked_tables must hear of any write to it.
    unsafe { tracked::note_targets((*query_desc).plannedstmt) };
    if DEPTH.get() == 0 && capturing() {
        // SAFETY: query_desc and its plannedstmt are valid for the whole call.
        unsafe {
            let ps = (*query_desc).plannedstmt;
            let op = (*query_desc).operation;
            let modifies = op != pg_sys::CmdType::CMD_SELECT || (*ps).hasModifyingCTE;
            let class = if modifies {
                StatementClass::Mod
            } else {
                StatementClass::Other
            };
            start_statement(Running {
                query_desc: query_desc as usize,
                subxact: unguarded::GetCurrentSubTransactionId(),
                ts: now(),
                class,
                command: command_name(op),
                query: statement_text(
                    (*query_desc).sourceText,
                    (*ps).stmt_location,
                    (*ps).stmt_len,
                ),
                // Only a statement record lists them.
                relations: if wanted(class) {
                    relation_oids(ps)
                } else {
                    Vec::new()
                },
            });
        }
    } else if capturing() {
        // SAFETY: as above.
        unsafe {
            let ps = (*query_desc).plannedstmt;
            if (*query_desc).operation != pg_sys::CmdType::CMD_SELECT || (*ps).hasModifyingCTE {
                note_nested(StatementClass::Mod, || relation_oids(ps));
            }
        }
    }
    // SAFETY: chaining to the previous hook or the standard implementation.
    unsafe {
        match PREV_EXECUTOR_START {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc, eflags)),
            None => pg_sys::standard_ExecutorStart(query_desc, eflags),
        }
        rows::after_executor_start(query_desc, eflags);
    }
}

#[cfg(not(feature = "pg18"))]
#[pg_guard]
unsafe extern "C-unwind" fn al_executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    let _nested = Nested::enter();
    // SAFETY: chaining.
    unsafe {
        match PREV_EXECUTOR_RUN {
            Some(prev) => {
                pg_guard_ffi_boundary(|| prev(query_desc, direction, count, execute_once))
            }
            None => pg_sys::standard_ExecutorRun(query_desc, direction, count, execute_once),
        }
    }
}

#[cfg(feature = "pg18")]
#[pg_guard]
unsafe extern "C-unwind" fn al_executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
) {
    let _nested = Nested::enter();
    // SAFETY: chaining.
    unsafe {
        match PREV_EXECUTOR_RUN {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc, direction, count)),
            None => pg_sys::standard_ExecutorRun(query_desc, direction, count),
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn al_executor_finish(query_desc: *mut pg_sys::QueryDesc) {
    let _nested = Nested::enter();
    // SAFETY: chaining; the EState stays alive for the whole call.
    unsafe {
        let estate = (*query_desc).estate;
        let _finishing = rows::finishing(estate);
        match PREV_EXECUTOR_FINISH {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc)),
            None => pg_sys::standard_ExecutorFinish(query_desc),
        }
        rows::hide_from_explain(estate);
        rows::after_finish(estate);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn al_executor_end(query_desc: *mut pg_sys::QueryDesc) {
    // SAFETY: reading the EState pointer of a live QueryDesc.
    rows::forget(unsafe { (*query_desc).estate });
    if DEPTH.get() == 0 {
        // SAFETY: estate is still alive: standard_ExecutorEnd below frees it.
        unsafe {
            let estate = (*query_desc).estate;
            let rows = if estate.is_null() {
                None
            } else {
                Some((*estate).es_processed as i64)
            };
            end_statement(
                query_desc as usize,
                rows,
                crate::versions::query_id((*query_desc).plannedstmt),
            );
        }
    }
    // SAFETY: chaining.
    unsafe {
        match PREV_EXECUTOR_END {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc)),
            None => pg_sys::standard_ExecutorEnd(query_desc),
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[pg_guard]
unsafe extern "C-unwind" fn al_process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: pstmt and its utilityStmt are valid for the whole call.
    let top = unsafe {
        DEPTH.get() == 0
            && context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL
            && !pgrx::is_a((*pstmt).utilityStmt, pg_sys::NodeTag::T_TransactionStmt)
            && capturing()
    };
    let mut tag = pg_sys::CommandTag::CMDTAG_UNKNOWN;
    if top {
        // SAFETY: as above; these calls only inspect the parse tree.
        unsafe {
            let stmt = (*pstmt).utilityStmt;
            tag = pg_sys::CreateCommandTag(stmt);
            let class = match pg_sys::GetCommandLogLevel(stmt) {
                pg_sys::LogStmtLevel::LOGSTMT_DDL => StatementClass::Ddl,
                pg_sys::LogStmtLevel::LOGSTMT_MOD => StatementClass::Mod,
                _ => StatementClass::Other,
            };
            start_statement(Running {
                query_desc: 0,
                subxact: unguarded::GetCurrentSubTransactionId(),
                ts: now(),
                class,
                command: CStr::from_ptr(pg_sys::GetCommandTagName(tag)).to_bytes(),
                query: statement_text(query_string, (*pstmt).stmt_location, (*pstmt).stmt_len),
                relations: Vec::new(),
            });
        }
    }
    if !top && DEPTH.get() > 0 && capturing() {
        // SAFETY: as above; only inspects the parse tree.
        let level = unsafe { pg_sys::GetCommandLogLevel((*pstmt).utilityStmt) };
        match level {
            pg_sys::LogStmtLevel::LOGSTMT_DDL => note_nested(StatementClass::Ddl, Vec::new),
            pg_sys::LogStmtLevel::LOGSTMT_MOD => note_nested(StatementClass::Mod, Vec::new),
            _ => {}
        }
    }
    // SAFETY: utilityStmt is a valid node for the whole call.
    unsafe { before_drop(pstmt) };
    // SAFETY: as above; only inspects the parse tree.
    let database_statement = unsafe { database_statement((*pstmt).utilityStmt) };
    if database_statement.is_some() {
        DATABASE_NAMED.set(None);
    }
    // SAFETY: as above; a catalog lookup inside the statement's transaction.
    let creates_extension = unsafe { creates_this_extension((*pstmt).utilityStmt) };
    // COPY FROM into a tracked table: its rows are captured like an INSERT's; the guard puts
    // the relation cache back however the statement ends.
    // SAFETY: utilityStmt is the statement about to run.
    let copy = unsafe { copy_from::begin((*pstmt).utilityStmt) };
    {
        let _nested = Nested::enter();
        // SAFETY: chaining.
        unsafe {
            match PREV_PROCESS_UTILITY {
                Some(prev) => pg_guard_ffi_boundary(|| {
                    prev(
                        pstmt,
                        query_string,
                        read_only_tree,
                        context,
                        params,
                        query_env,
                        dest,
                        qc,
                    )
                }),
                None => pg_sys::standard_ProcessUtility(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                ),
            }
        }
    }
    match database_statement {
        // SAFETY: the DROP DATABASE returned; its transaction is still open.
        Some(DatabaseStatement::Drop) => unsafe { after_drop_database(DATABASE_NAMED.take()) },
        Some(DatabaseStatement::Create) => {
            if let Some(dboid) = DATABASE_NAMED.take() {
                forget_orphan(dboid.to_u32());
            }
        }
        None => {}
    }
    let copied = copy.map(copy_from::CopyCapture::finish);
    // SAFETY: pstmt and qc are valid for the whole call.
    unsafe { after_utility(pstmt, qc, creates_extension, copied) };
    if top {
        // SAFETY: qc is NULL or the completion the statement filled in.
        let rows = unsafe {
            (!qc.is_null() && pg_sys::command_tag_display_rowcount(tag))
                .then(|| (*qc).nprocessed as i64)
        };
        end_statement(0, rows, 0);
    }
}

/// after_utility records what row capture cannot see of a utility statement: TRUNCATE of
/// tracked tables, and a COPY FROM whose rows were not captured (copy_from.rs): a gap record,
/// or a record with the row count when [`copy_from::rows_wanted`] says no. DDL needs nothing
/// here: PostgreSQL's invalidations reach the backends' copies of tracked_tables (tracked.rs).
/// A CREATE EXTENSION that created activity_log may start a restore (restore.rs).
unsafe fn after_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    qc: *mut pg_sys::QueryCompletion,
    created_extension: bool,
    copied: Option<copy_from::Captured>,
) {
    // SAFETY: a valid PlannedStmt and QueryCompletion of a statement that just succeeded.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        let rows = if qc.is_null() {
            0
        } else {
            (*qc).nprocessed as i64
        };
        let resolve = |rv: *mut pg_sys::RangeVar| {
            pg_sys::RangeVarGetRelidExtended(
                rv,
                pg_sys::NoLock as i32,
                pg_sys::RVROption::RVR_MISSING_OK,
                None,
                std::ptr::null_mut(),
            )
        };
        let cid = pg_sys::GetCurrentCommandId(false);
        if created_extension && crate::ring::is_initialised() {
            // A trail that begins now owes no gap record of what happened before.
            crate::shared::forgive(pg_sys::MyDatabaseId.to_u32());
            restore::after_create_extension(capturing());
        }
        if pgrx::is_a(stmt, pg_sys::NodeTag::T_CopyStmt) {
            let copy = stmt.cast::<pg_sys::CopyStmt>();
            if (*copy).is_from && !(*copy).relation.is_null() {
                let relid = resolve((*copy).relation);
                // Whoever loads tracked_tables, and however, every backend must see it.
                tracked::note_copy(relid);
                if restore::active()
                    && let Some(t) = tracked::lookup(relid.to_u32())
                    && &t.schema[..] != b"activity_log"
                {
                    let note = "restored from a dump: the loaded rows are counted, not recorded (they are those of the restored trail)";
                    rows::push_change(&t, Op::Copy, cid, rows, Vec::new(), note, |_| false);
                }
            }
        }
        if !capturing() {
            return;
        }
        replication::after_subscription_command(stmt);
        if pgrx::is_a(stmt, pg_sys::NodeTag::T_RenameStmt) {
            let rename = stmt.cast::<pg_sys::RenameStmt>();
            if (*rename).renameType == pg_sys::ObjectType::OBJECT_COLUMN
                && !(*rename).relation.is_null()
            {
                let relid = resolve((*rename).relation);
                let old = CStr::from_ptr((*rename).subname).to_bytes();
                if let Some(t) = tracked::lookup(relid.to_u32())
                    && t.relid == relid.to_u32()
                    && t.exclude_columns.iter().any(|c| c == old)
                {
                    // An excluded column keeps being excluded under its new name.
                    let _nested = Nested::enter();
                    let new = CStr::from_ptr((*rename).newname)
                        .to_string_lossy()
                        .into_owned();
                    as_extension_owner(|| {
                        Spi::run_with_args(
                            "SELECT activity_log._rename_excluded($1, $2, $3)",
                            &[
                                relid.into(),
                                String::from_utf8_lossy(old).into_owned().into(),
                                new.into(),
                            ],
                        )
                    })
                    .unwrap_or_else(|e| {
                        raise(
                            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                            format!("activity_log: could not follow the column rename: {e}"),
                            None,
                        )
                    });
                }
            }
        }
        if pgrx::is_a(stmt, pg_sys::NodeTag::T_TruncateStmt) {
            let truncate = stmt.cast::<pg_sys::TruncateStmt>();
            let list = (*truncate).relations;
            let named = (0..(*list).length as usize).map(|i| {
                let rv: *mut pg_sys::RangeVar = (*(*list).elements.add(i)).ptr_value.cast();
                (resolve(rv), (*rv).inh)
            });
            let cascade = (*truncate).behavior == pg_sys::DropBehavior::DROP_CASCADE;
            record_truncate(truncated(named, cascade), (*truncate).restart_seqs, cid);
        } else if pgrx::is_a(stmt, pg_sys::NodeTag::T_CopyStmt) {
            let copy = stmt.cast::<pg_sys::CopyStmt>();
            if (*copy).is_from && !(*copy).relation.is_null() {
                let relid = resolve((*copy).relation);
                if let Some(t) = tracked::lookup(relid.to_u32()) {
                    let gap = match copied {
                        // Its rows are in the pending buffer, as INSERTs (none: nothing to say).
                        Some(c) if c.relid == relid && c.rows_captured => None,
                        Some(c) if c.relid == relid => Some(format!(
                            "the COPY started without the capture's triggers (its relation cache entry was rebuilt first), so the {rows} rows it loaded were not captured"
                        )),
                        _ if t.has_foreign_partition && copy_from::rows_wanted() => Some(
                            "the table has a foreign partition, so no rows of this statement were captured"
                                .to_string(),
                        ),
                        _ => {
                            rows::push_change(&t, Op::Copy, cid, rows, Vec::new(), "", |_| false);
                            None
                        }
                    };
                    if let Some(note) = gap {
                        rows::push_change(&t, Op::Gap, cid, rows, Vec::new(), &note, |_| false);
                    }
                } else if rows > 0 {
                    copied_past_capture(relid, rows, cid);
                }
            }
        }
    }
}

/// copied_past_capture leaves a gap record for each tracked table among the partitions of an
/// untracked partitioned table a COPY just loaded `rows` rows into: PostgreSQL routed some of
/// them there, perhaps, and nothing captured them (the COPY's triggers are the root's).
unsafe fn copied_past_capture(relid: pg_sys::Oid, rows: i64, cid: u32) {
    // SAFETY: catalog lookups of a relation the COPY holds locked, under pgrx's guard.
    unsafe {
        if pg_sys::get_rel_relkind(relid) != pg_sys::RELKIND_PARTITIONED_TABLE as c_char {
            return;
        }
        let list = pg_guard_ffi_boundary(|| {
            unguarded::find_all_inheritors(relid, pg_sys::NoLock as c_int, std::ptr::null_mut())
        });
        let mut noted: Vec<u32> = Vec::new();
        for i in 0..(*list).length as usize {
            let part = (*(*list).elements.add(i)).oid_value;
            let Some(t) = tracked::lookup(part.to_u32()) else {
                continue;
            };
            if noted.contains(&t.relid) {
                continue;
            }
            noted.push(t.relid);
            let name = |oid: pg_sys::Oid| {
                CStr::from_ptr(pg_sys::quote_qualified_identifier(
                    pg_sys::get_namespace_name(pg_sys::get_rel_namespace(oid)),
                    pg_sys::get_rel_name(oid),
                ))
                .to_string_lossy()
                .into_owned()
            };
            let note = format!(
                "COPY loaded {rows} rows into the untracked partitioned table {}, which routes rows into {}: those were not captured",
                name(relid),
                name(part)
            );
            rows::push_change(&t, Op::Gap, cid, 0, Vec::new(), &note, |_| false);
        }
    }
}

/// creates_this_extension tells whether `stmt` is a CREATE EXTENSION of activity_log that will
/// create it: not there yet. (`IF NOT EXISTS` of an installed extension succeeds for anyone,
/// and creates nothing.)
unsafe fn creates_this_extension(stmt: *mut pg_sys::Node) -> bool {
    // SAFETY: a valid parse tree node; the lookup is a syscache probe.
    unsafe {
        pgrx::is_a(stmt, pg_sys::NodeTag::T_CreateExtensionStmt)
            && CStr::from_ptr((*stmt.cast::<pg_sys::CreateExtensionStmt>()).extname).to_bytes()
                == b"activity_log"
            && pg_sys::get_extension_oid(c"activity_log".as_ptr(), true) == pg_sys::InvalidOid
    }
}

/// truncated lists the relations a TRUNCATE that just succeeded emptied, found the way
/// ExecuteTruncate found them: the ones named, their inheritors and partitions unless ONLY,
/// and with CASCADE the tables referencing any of them, to a fixpoint. They are all still
/// locked, so nothing has changed since.
unsafe fn truncated(
    named: impl Iterator<Item = (pg_sys::Oid, bool)>,
    cascade: bool,
) -> Vec<pg_sys::Oid> {
    let oids = |list: *mut pg_sys::List| -> Vec<pg_sys::Oid> {
        // SAFETY: an OID list PostgreSQL just built (NIL is null).
        unsafe {
            if list.is_null() {
                return Vec::new();
            }
            (0..(*list).length as usize)
                .map(|i| (*(*list).elements.add(i)).oid_value)
                .collect()
        }
    };
    let mut all: Vec<pg_sys::Oid> = Vec::new();
    let add = |all: &mut Vec<pg_sys::Oid>, relid: pg_sys::Oid| {
        if relid != pg_sys::InvalidOid && !all.contains(&relid) {
            all.push(relid);
        }
    };
    // SAFETY: catalog lookups of locked relations, under pgrx's guard.
    unsafe {
        for (relid, inherited) in named {
            add(&mut all, relid);
            if inherited && relid != pg_sys::InvalidOid {
                let children = pg_guard_ffi_boundary(|| {
                    unguarded::find_all_inheritors(
                        relid,
                        pg_sys::NoLock as c_int,
                        std::ptr::null_mut(),
                    )
                });
                for child in oids(children) {
                    add(&mut all, child);
                }
            }
        }
        if cascade {
            loop {
                let mut list: *mut pg_sys::List = std::ptr::null_mut();
                for &relid in &all {
                    list = pg_sys::lappend_oid(list, relid);
                }
                let referencing = oids(pg_sys::heap_truncate_find_FKs(list));
                if referencing.is_empty() {
                    break;
                }
                for relid in referencing {
                    add(&mut all, relid);
                }
            }
        }
    }
    all
}

/// record_truncate records one TRUNCATE per tracked table among the emptied relations. A
/// partition emptied without its tracked root is a TRUNCATE PARTITION of the root, with the
/// partition's constraint (in the root's column names), so that replaying it removes only
/// those rows; only the topmost emptied partition of a subtree is recorded.
unsafe fn record_truncate(emptied: Vec<pg_sys::Oid>, restart_identity: bool, cid: u32) {
    for &relid in &emptied {
        let Some(t) = tracked::lookup(relid.to_u32()) else {
            continue;
        };
        let mut note = serde_json::Map::new();
        if restart_identity {
            note.insert("restart_identity".into(), true.into());
        }
        let op = if t.relid == relid.to_u32() {
            Op::Truncate
        } else {
            let root = pg_sys::Oid::from(t.relid);
            // SAFETY: catalog lookups of a locked partition, under pgrx's guard.
            let (parent, name, constraint) = unsafe {
                pg_guard_ffi_boundary(|| {
                    let parent = unguarded::get_partition_parent(relid, false);
                    let name = pg_sys::quote_qualified_identifier(
                        pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid)),
                        pg_sys::get_rel_name(relid),
                    );
                    // As pg_get_partition_constraintdef() writes it: no table prefix.
                    let qual = unguarded::get_partition_qual_relid(relid);
                    let constraint = if qual.is_null() {
                        std::ptr::null_mut()
                    } else {
                        let names = pg_sys::deparse_context_for(pg_sys::get_rel_name(relid), relid);
                        pg_sys::deparse_expression(qual, names, false, false)
                    };
                    (parent, name, constraint)
                })
            };
            if emptied.contains(&root) || emptied.contains(&parent) {
                continue;
            }
            // SAFETY: strings PostgreSQL just made (the constraint may be missing).
            let text = |s: *mut c_char| unsafe {
                (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
            };
            note.insert("partition".into(), text(name).into());
            note.insert("partition_constraint".into(), text(constraint).into());
            Op::TruncatePartition
        };
        let note = if note.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(note).to_string()
        };
        rows::push_change(&t, op, cid, 0, Vec::new(), &note, |_| false);
    }
}

/// A ring whose writer a DROP DATABASE or DROP EXTENSION of this transaction stopped.
#[derive(Clone, Copy)]
struct PendingDrop {
    slot: usize,
    dboid: u32,
    /// The subtransaction that dropped: its rollback lets the writer go on at once.
    subxact: pg_sys::SubTransactionId,
    /// Whether the ring is freed if the transaction commits: not when the extension is there
    /// again at commit (created anew, or its drop rolled back to a savepoint).
    release: bool,
}

thread_local! {
    static PENDING_DROP: Cell<Option<PendingDrop>> = const { Cell::new(None) };
    /// This transaction's DROP EXTENSION activity_log passed the trail check.
    static DROP_CHECKED: Cell<bool> = const { Cell::new(false) };
    /// The database the running DROP DATABASE removes or CREATE DATABASE makes, as PostgreSQL
    /// names it to the object access hook once it holds the database's lock: the statement's
    /// name may have come to mean another database, or none, while it waited for that lock.
    static DATABASE_NAMED: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
    /// A DROP DATABASE statement runs (Some), with FORCE or not: its drop stops the
    /// database's writer once PostgreSQL holds the lock ([`stop_writer_for_dropdb`]).
    static DROPDB_FORCE: Cell<Option<bool>> = const { Cell::new(None) };
    /// This transaction's DROP DATABASE removed a database (its files are gone).
    static DROPPED_A_DATABASE: Cell<bool> = const { Cell::new(false) };
}

/// before_drop stops the writer of a trail the statement ends, so that it holds no lock and
/// no connection the drop needs: DROP EXTENSION activity_log (the writer gets a moment to
/// store what is queued first) and DROP DATABASE (a connected writer would make PostgreSQL
/// refuse it; noted here, stopped once the drop holds the database's lock:
/// [`stop_writer_for_dropdb`]). Nothing is released until the drop commits
/// ([`settle_drop`]): a refused or cancelled drop costs no record. DROP EXTENSION is refused while the trail holds records,
/// unless `activity_log.allow_drop_trail` says otherwise.
unsafe fn before_drop(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: the caller passes a valid PlannedStmt.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if pgrx::is_a(stmt, pg_sys::NodeTag::T_DropdbStmt) {
            // The writer is stopped only once PostgreSQL holds the database's lock and has
            // checked the owner ([`stop_writer_for_dropdb`], from the object access hook):
            // stopping it while the drop waits for that lock let an owner keep a ring (and
            // with it another database's writer) stopped for as long as a transaction of
            // theirs held the lock. Not for a drop PostgreSQL refuses at once (in a
            // transaction block).
            let dropdb = stmt.cast::<pg_sys::DropdbStmt>();
            let force = !(*dropdb).options.is_null() && (*(*dropdb).options).length > 0;
            DROPDB_FORCE.set((!pg_sys::IsTransactionBlock()).then_some(force));
            return;
        }
        if !pgrx::is_a(stmt, pg_sys::NodeTag::T_DropStmt) {
            return;
        }
        let drop = stmt.cast::<pg_sys::DropStmt>();
        if (*drop).removeType != pg_sys::ObjectType::OBJECT_EXTENSION || (*drop).objects.is_null() {
            return;
        }
        let objects = (*drop).objects;
        let ours = (0..(*objects).length as usize).any(|k| {
            let name = (*(*objects).elements.add(k))
                .ptr_value
                .cast::<pg_sys::String>();
            CStr::from_ptr((*name).sval) == c"activity_log"
        });
        let extension = pg_sys::get_extension_oid(c"activity_log".as_ptr(), true);
        // Only for whoever may drop it: PostgreSQL refuses everybody else, and before that
        // nothing of theirs should run here (the trail check runs as the extension's owner).
        if !ours
            || extension == pg_sys::InvalidOid
            || !crate::versions::owns_extension(extension, pg_sys::GetUserId())
        {
            return;
        }
    }
    if !gucs::allow_drop_trail()
        && let Some(what) = what_the_trail_holds()
    {
        raise_with_detail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot drop extension activity_log: its audit trail holds {what}"),
            Some(
                "Dropping it drops activity_log.events with every day partition, and what is still queued.",
            ),
            Some(
                "Keep a copy first (pg_dump --schema=activity_log), then SET activity_log.allow_drop_trail = on and drop it again.",
            ),
        );
    }
    DROP_CHECKED.set(true);
    // SAFETY: reads a process-local global.
    let dboid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    stop_writer_for_drop(dboid, std::time::Duration::from_secs(10));
}

#[derive(Clone, Copy)]
enum DatabaseStatement {
    Drop,
    Create,
}

/// database_statement tells a DROP DATABASE or CREATE DATABASE apart from other statements.
unsafe fn database_statement(stmt: *mut pg_sys::Node) -> Option<DatabaseStatement> {
    // SAFETY: the caller passes the statement about to run.
    unsafe {
        if pgrx::is_a(stmt, pg_sys::NodeTag::T_DropdbStmt) {
            Some(DatabaseStatement::Drop)
        } else if pgrx::is_a(stmt, pg_sys::NodeTag::T_CreatedbStmt) {
            Some(DatabaseStatement::Create)
        } else {
            None
        }
    }
}

/// after_drop_database forgets what the extension still holds of the database a DROP DATABASE
/// just removed (`dropped`, as PostgreSQL named it under its lock; None when it dropped
/// nothing): its spill files kept at a start (otherwise put back at the next start into the
/// ring of a database that cannot be connected to, or into the trail of one created later with
/// the same oid, CREATE DATABASE … OID being open to any role with CREATEDB), and its ring,
/// freed when the transaction commits. Only when its pg_database row is gone, so a drop
/// PostgreSQL refused forgets nothing (a refusal raises an ERROR before we get here anyway). A
/// writer stopped for a database this drop did not remove goes on at once and keeps its
/// ring. Must not raise an ERROR: the database is gone already, so a failure is a
/// WARNING.
unsafe fn after_drop_database(dropped: Option<pg_sys::Oid>) {
    // SAFETY: inside the dropping transaction; the counter increment makes its own deletion
    // of the row visible to the lookup, as the next statement would see it.
    let gone = |dboid: pg_sys::Oid| unsafe {
        pg_sys::CommandCounterIncrement();
        !pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::DATABASEOID as c_int,
            pg_sys::Datum::from(dboid),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    };
    let dropped = dropped.filter(|&dboid| gone(dboid)).map(|o| o.to_u32());
    if let Some(p) = PENDING_DROP.get()
        && Some(p.dboid) != dropped
    {
        PENDING_DROP.set(None);
        ring::resume(p.slot);
    }
    let Some(dboid) = dropped else {
        return;
    };
    DROPPED_A_DATABASE.set(true);
    // What it lost while it waited for a ring is no trail's to report: taken off the list now,
    // not at the launcher's next pass, so that a database created meanwhile with the same oid
    // does not inherit the count as a gap record of its own.
    ring::stop_waiting(dboid);
    if let Some(i) = ring::slot_of(dboid)
        && PENDING_DROP.get().is_none()
    {
        PENDING_DROP.set(Some(PendingDrop {
            slot: i,
            dboid,
            // SAFETY: reads transaction state.
            subxact: unsafe { unguarded::GetCurrentSubTransactionId() },
            release: true,
        }));
    }
    remove_spill_files(dboid, &format!("of dropped database {dboid}"));
}

/// forget_orphan runs when CREATE DATABASE made database `dboid`: anything the extension holds
/// under that oid (a ring, spill files, a place on the waiting list) belongs to an earlier
/// database of the same oid that is gone (records come only from sessions of a database that
/// exists), left by a drop this hook did not see through (an earlier release, a file the drop
/// could not remove). Discarded before the new database can be connected to, so that it never
/// reads another database's records (CREATE DATABASE … OID is open to any role with CREATEDB).
/// Must not raise an ERROR; logs what it discarded.
fn forget_orphan(dboid: u32) {
    crate::shared::forgive(dboid);
    let in_ring = ring::forget_database(dboid);
    if in_ring > 0 {
        warning!(
            "activity_log: discarded {in_ring} records a ring held for database oid {dboid}, of a database of that oid that no longer exists"
        );
    }
    remove_spill_files(
        dboid,
        &format!("of an earlier database of oid {dboid}, which a new database takes"),
    );
}

/// remove_spill_files removes the spill files of `dboid`, a database that no longer exists
/// (`whose` names it in the messages), and logs what it did; never raises.
fn remove_spill_files(dboid: u32, whose: &str) {
    let ring::Removed {
        files,
        records,
        failures,
    } = ring::remove_dropped(dboid);
    if files > 0 {
        log!("activity_log: removed {files} spill files {whose}, with {records} records");
    }
    if !failures.is_empty() {
        warning!(
            "activity_log: could not remove a spill file {whose}: {}; the next start discards it",
            failures.join(", ")
        );
    }
}

/// what_the_trail_holds says what dropping the extension would lose: the trail's records, or
/// records still queued; None when there is nothing.
fn what_the_trail_holds() -> Option<String> {
    // Schema-qualified: it runs as the extension's owner with the caller's search_path.
    let (last, staged) = as_extension_owner(|| {
        Spi::get_two::<i64, bool>(
            "SELECT (SELECT pg_catalog.max(id) FROM activity_log.events),
                    EXISTS (SELECT FROM activity_log.durable_queue)",
        )
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("activity_log: could not read the trail: {e}"),
            None,
        )
    });
    // SAFETY: reads a process-local global.
    let dboid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let queued = ring::slot_of(dboid).is_some_and(ring::has_frames);
    match last {
        Some(id) => Some(format!("records (the last has id {id})")),
        None if staged == Some(true) || queued => Some("queued records".into()),
        None => None,
    }
}

/// stop_writer_for_dropdb stops the writer of the database a DROP DATABASE is about to remove,
/// called by the object access hook: PostgreSQL holds the database's lock and has checked the
/// owner by then. Not when PostgreSQL refuses the drop after the hook (a template database, or a
/// client connected to it that FORCE does not end): its owner could keep the writer stopped by
/// trying in a loop.
fn stop_writer_for_dropdb(dboid: pg_sys::Oid, force: bool) {
    // SAFETY: reads process-local globals, the proc array and the catalog (inside the drop's
    // transaction). The owner check repeats PostgreSQL's, which comes before this hook.
    let may_drop = unsafe {
        dboid != pg_sys::MyDatabaseId
            && crate::versions::owns_database(dboid, pg_sys::GetUserId())
            && !is_template(dboid)
            && (force || pg_sys::CountDBConnections(dboid) == 0)
    };
    if may_drop {
        stop_writer_for_drop(dboid.to_u32(), std::time::Duration::ZERO);
    }
}

/// is_template tells whether database `dboid` is a template, which PostgreSQL refuses to drop
/// right after the object access hook: a drop of one must stop nothing, or its owner (who may
/// mark it a template) keeps the ring's writer stopped by trying in a loop.
///
/// # Safety
/// Inside a transaction (a catalog lookup).
unsafe fn is_template(dboid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup, released before returning.
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::DATABASEOID as c_int,
            pg_sys::Datum::from(dboid),
        );
        if tup.is_null() {
            return false;
        }
        let template =
            (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tup)).datistemplate;
        pg_sys::ReleaseSysCache(tup);
        template
    }
}

fn stop_writer_for_drop(dboid: u32, drain: std::time::Duration) {
    let Some(i) = ring::slot_of(dboid) else {
        return;
    };
    PENDING_DROP.set(Some(PendingDrop {
        slot: i,
        dboid,
        // SAFETY: reads transaction state.
        subxact: unsafe { unguarded::GetCurrentSubTransactionId() },
        release: true,
    }));
    ring::stop_writer_for_drop(i, dboid, drain);
}

/// dropped_a_database tells whether this transaction's DROP DATABASE removed a database: it
/// cannot be undone any more (PostgreSQL deleted its files), so nothing may fail its commit.
pub fn dropped_a_database() -> bool {
    DROPPED_A_DATABASE.get()
}

/// trail_dropped_at_pre_commit tells whether this transaction dropped the extension of its own
/// database: its records then have no trail to go to. When the extension is there again, the
/// ring stays. Runs at PRE_COMMIT, where the catalog can still be read.
pub fn trail_dropped_at_pre_commit() -> bool {
    let Some(mut pending) = PENDING_DROP.get() else {
        return false;
    };
    // SAFETY: reads a process-local global; a catalog lookup inside the committing transaction.
    unsafe {
        if pending.dboid != pg_sys::MyDatabaseId.to_u32() {
            return false;
        }
        if pg_sys::get_extension_oid(c"activity_log".as_ptr(), true) == pg_sys::InvalidOid {
            return true;
        }
    }
    pending.release = false;
    PENDING_DROP.set(Some(pending));
    false
}

/// settle_drop ends what [`before_drop`] began, at the end of the transaction: a drop that
/// committed frees its ring (what is still in it is counted as dropped), one that did not lets
/// the launcher start a writer again. Runs in the commit and abort paths: stores, short locks
/// and latches.
pub fn settle_drop(committed: bool) {
    DROP_CHECKED.set(false);
    DROPPED_A_DATABASE.set(false);
    DROPDB_FORCE.set(None);
    if let Some(p) = PENDING_DROP.take() {
        if committed && p.release && ring::slot_dboid(p.slot) == p.dboid {
            // SAFETY: reads a process-local global.
            if p.dboid == unsafe { pg_sys::MyDatabaseId }.to_u32() {
                ring::release(p.slot);
            } else {
                // DROP DATABASE: the ring's counters and notes were the dropped database's.
                ring::release_database(p.slot);
            }
        }
        ring::resume(p.slot);
    }
}

/// settle_drop_in_subxact follows a subtransaction's end: a drop rolled back to a savepoint
/// lets the writer go on at once; a committed one belongs to the parent now.
pub fn settle_drop_in_subxact(
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    committed: bool,
) {
    let Some(mut pending) = PENDING_DROP.get() else {
        return;
    };
    if pending.subxact != subxact {
        return;
    }
    if committed {
        pending.subxact = parent;
        PENDING_DROP.set(Some(pending));
    } else {
        PENDING_DROP.set(None);
        DROP_CHECKED.set(false);
        ring::resume(pending.slot);
    }
}

/// al_object_access notes the database a DROP DATABASE or CREATE DATABASE acts on (for
/// [`after_drop_database`] and [`forget_orphan`]), and refuses to drop the extension by any
/// other way than a DROP EXTENSION that passed [`before_drop`]'s check (DROP SCHEMA
/// activity_log CASCADE, say), unless `activity_log.allow_drop_trail` is on.
#[pg_guard]
unsafe extern "C-unwind" fn al_object_access(
    access: pg_sys::ObjectAccessType::Type,
    class_id: pg_sys::Oid,
    object_id: pg_sys::Oid,
    sub_id: c_int,
    arg: *mut std::ffi::c_void,
) {
    // SAFETY: chaining with the arguments we were given.
    unsafe {
        if let Some(prev) = PREV_OBJECT_ACCESS {
            pg_guard_ffi_boundary(|| prev(access, class_id, object_id, sub_id, arg));
        }
    }
    if class_id == pg_sys::DatabaseRelationId
        && (access == pg_sys::ObjectAccessType::OAT_DROP
            || access == pg_sys::ObjectAccessType::OAT_POST_CREATE)
    {
        if access == pg_sys::ObjectAccessType::OAT_DROP
            && let Some(force) = DROPDB_FORCE.take()
        {
            stop_writer_for_dropdb(object_id, force);
        }
        DATABASE_NAMED.set(Some(object_id));
        return;
    }
    if access != pg_sys::ObjectAccessType::OAT_DROP
        || class_id != pg_sys::ExtensionRelationId
        || DROP_CHECKED.get()
        || gucs::allow_drop_trail()
    {
        return;
    }
    // SAFETY: a catalog lookup inside the dropping transaction.
    if object_id == unsafe { pg_sys::get_extension_oid(c"activity_log".as_ptr(), true) } {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot drop extension activity_log this way: its audit trail may hold records",
            Some(
                "Use DROP EXTENSION activity_log, which checks the trail, or SET activity_log.allow_drop_trail = on.",
            ),
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn al_emit_log(edata: *mut pg_sys::ErrorData) {
    // SAFETY: edata is the error being reported, valid for the call.
    unsafe {
        if (*edata).elevel == pg_sys::PGERROR as c_int
            && runs_statements_for_a_user()
            && capturing()
            && gucs::capture_statements() != CaptureStatements::None
        {
            record_failure(&*edata);
        }
        if let Some(prev) = PREV_EMIT_LOG {
            pg_guard_ffi_boundary(|| prev(edata));
        }
    }
}

/// record_failure notes a failed top-level statement. Runs inside error reporting: nothing
/// here may raise an ERROR.
unsafe fn record_failure(edata: &pg_sys::ErrorData) {
    let mut state = [0u8; 5];
    let mut code = edata.sqlerrcode;
    for b in &mut state {
        *b = ((code & 0x3F) as u8) + b'0';
        code >>= 6;
    }
    let Attribution {
        command,
        query,
        class,
    } = CURRENT.take().unwrap_or_else(|| {
        // SAFETY: debug_query_string is NULL or the query being run.
        let q = unsafe { cstr_bytes(pg_sys::debug_query_string) }.unwrap_or_default();
        let q = q.trim_ascii();
        let q = q.strip_suffix(b";").unwrap_or(q).trim_ascii_end();
        Attribution {
            command: b"",
            query: recorded_text(q),
            class: StatementClass::Other,
        }
    });
    let ts = now();
    pending::push_failure(&Record {
        origin: origin(),
        body: Body::Statement(Statement {
            ts,
            duration_us: 0,
            class,
            command: command.into(),
            sqlstate: Some(state),
            // SAFETY: message is NULL or the formatted error message.
            // Cut like the query: a message is the client's to make as long as it likes.
            error_message: unsafe { cstr_bytes(edata.message) }
                .map(|m| clip(&m, ORIGIN_FIELD_MAX).to_vec().into()),
            query: redact::redact(&query),
            query_id: 0,
            rows: None,
            relations: Vec::new(),
        }),
    });
}
