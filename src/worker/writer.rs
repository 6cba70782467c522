//! worker/writer.rs: one per audited database; drains that database's ring into
//! `activity_log.events`.
//!
//! The loop: read committed frames from the ring tail (up to `batch_size` records), decode
//! them, insert them with one set-based `INSERT ... SELECT FROM unnest(...)`, commit, and only
//! then move the tail. A failed insert is noted in the ring's metrics and ends the process with
//! exit code 1; the launcher starts a new writer after a back-off and the same records are
//! tried again, so nothing published is lost. On SIGTERM the writer drains the ring before it
//! exits. Its own inserts are never captured (`hooks::mark_own_worker`).

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{IntoDatum, PgOid};
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};

use crate::capture::hooks;
use crate::gucs;
use crate::record::{self, Body, Op, StatementClass};
use crate::ring;
use crate::worker::{decode, images};

/// The slot and database this process writes for.
static mut MY_SLOT: i64 = -1;
static mut MY_DB: u32 = 0;
/// Set once the writer leaves its loop normally; an exit without it counts as a failure.
static mut CLEAN_EXIT: bool = false;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn al_writer_main(arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    hooks::mark_own_worker();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);

    let installed = BackgroundWorker::transaction(|| {
        // SAFETY: catalog lookup inside a transaction.
        unsafe { pg_sys::get_extension_oid(c"activity_log".as_ptr(), true) != pg_sys::InvalidOid }
    });
    if !installed {
        // Nothing to write in this database. Its ring goes too, unless the transaction that
        // claimed it is still running (a CREATE EXTENSION not yet committed): then the
        // launcher tries again after a back-off.
        let Some(i) = ring::slot_of(dboid) else {
            return;
        };
        let claimer = ring::claim_xid(i);
        // SAFETY: plain lookup in the proc array.
        let claimer_running =
            claimer != 0 && unsafe { pg_sys::TransactionIdIsInProgress(claimer.into()) };
        if claimer_running {
            ring::detach_writer(i, 0, true);
        } else {
            ring::release(i);
            ring::detach_writer(i, 0, false);
        }
        return; // exit code 0
    }
    let Some(slot) = ring::claim(dboid, 0) else {
        log!(
            "activity_log: no ring is free for database {dboid}; raise activity_log.max_databases"
        );
        return;
    };
    // SAFETY: MyProc is set in every process attached to shared memory.
    let attached =
        unsafe { ring::attach_writer(slot, pg_sys::MyProcPid, (*pg_sys::MyProc).pgprocno) };
    if !attached {
        return; // another writer runs for this database
    }
    // SAFETY: registering a plain callback; MY_SLOT is process-local.
    unsafe {
        MY_SLOT = slot as i64;
        MY_DB = dboid;
        pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0));
    }

    // The batch insert's estimates (unnest of large arrays) would trigger JIT compilation,
    // which costs far more than it saves for this query.
    // SAFETY: plain GUC assignment in this process.
    unsafe {
        pg_sys::SetConfigOption(
            c"jit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    if ring::take_gap(slot) {
        BackgroundWorker::transaction(write_gap_event);
    }
    while BackgroundWorker::wait_latch(Some(gucs::flush_interval())) && still_mine(slot) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: documented way to reload settings in a worker.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if drain(slot) < gucs::batch_size() as u64 / 4 {
            // Small batches: let commits gather for a moment, so that a busy server is written
            // in batches rather than one tiny insert per commit. Adds at most 10 ms of lag.
            // SAFETY: plain sleep.
            unsafe { pg_sys::pg_usleep(10_000) };
        }
    }
    drain_before_exit(slot);
    // SAFETY: process-local flag read by on_exit.
    unsafe { CLEAN_EXIT = true };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    // SAFETY: process-local statics written by this process only.
    unsafe {
        if MY_SLOT >= 0 {
            ring::detach_writer(MY_SLOT as usize, pg_sys::MyProcPid, !CLEAN_EXIT);
        }
    }
}

fn still_mine(slot: usize) -> bool {
    // SAFETY: process-local static.
    ring::slot_dboid(slot) == unsafe { MY_DB }
}

/// drain writes batches until the ring holds no committed frame at its tail.
/// Returns the number of records written.
fn drain(slot: usize) -> u64 {
    let mut written = 0;
    while still_mine(slot) {
        let batch = ring::read(slot, gucs::batch_size());
        if batch.end == ring::tail(slot) {
            break;
        }
        if batch.records > 0 {
            write_batch(slot, &batch);
        }
        // SAFETY: process-local static.
        ring::advance(slot, unsafe { MY_DB }, batch.end, batch.records);
        ring::reset_failures(slot);
        written += batch.records;
    }
    written
}

/// drain_before_exit also waits, briefly, for frames of transactions still committing.
fn drain_before_exit(slot: usize) {
    let started = Instant::now();
    while still_mine(slot) && ring::has_frames(slot) && started.elapsed() < Duration::from_secs(10)
    {
        drain(slot);
        if ring::has_frames(slot) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// write_batch inserts one batch in its own transaction. An ERROR is noted in the metrics and
/// then ends the process (the launcher restarts it): the tail has not moved, so the same
/// records are written by the next writer.
fn write_batch(slot: usize, batch: &ring::Batch) {
    // The same batch failed before: store it record by record, so that one record the table
    // refuses (a constraint or trigger someone added, say) cannot hold up the rest.
    let isolate = ring::failures(slot) >= ISOLATE_AFTER_FAILURES;
    PgTryBuilder::new(|| {
        BackgroundWorker::transaction(|| {
            // Decoding row images needs the catalog, so the batch is built in the transaction.
            let rows = Rows::from_batch(batch, isolate);
            if isolate {
                rows.insert_one_by_one()
            } else {
                rows.insert()
            }
        })
    })
    .catch_others(|e| {
        ring::note_write_error(slot, &error_message(&e));
        e.rethrow()
    })
    .execute();
}

/// Consecutive failed runs after which the writer stores a batch record by record.
const ISOLATE_AFTER_FAILURES: u32 = 2;

fn error_message(e: &pg_sys::panic::CaughtError) -> String {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r.message().to_string(),
    }
}

/// in_subtransaction runs `f` in an internal subtransaction and rolls it back on ERROR.
fn in_subtransaction(f: impl FnOnce()) -> Result<(), String> {
    // SAFETY: the pattern PL/pgSQL uses for exception blocks: remember the memory context and
    // resource owner, and restore both whichever way the subtransaction ends.
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
            f();
            Ok(())
        }))
        .catch_others(|e| Err(error_message(&e)))
        .execute();
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}

fn write_gap_event() {
    let details = json!({
        "reason": "the server restarted after a crash; records that were in shared memory were lost",
        "shared_memory_started_at_us": ring::started_at(),
        "crash_restarts": ring::crash_generation(),
    });
    Spi::run_with_args(
        "INSERT INTO activity_log.events (ts, committed_at, kind, category, severity, status, command, details)
         VALUES (now(), now(), 'system', 'system', 'critical', 'gap', 'GAP', $1::text::jsonb)",
        &[details.to_string().into()],
    )
    .unwrap_or_else(|e| error!("activity_log: could not record the gap event: {e}"));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// parse_json_or_string keeps valid JSON as is and wraps anything else as a JSON string.
fn parse_json_or_string(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| Value::String(text(b)))
}

/// Column vectors for one `INSERT ... SELECT FROM unnest(...)`; `columns!` lists them once
/// for the struct, single-row copies and the statement's parameters (in `$n` order).
macro_rules! columns {
    ($($name:ident: $ty:ty),* $(,)?) => {
        #[derive(Default)]
        struct Rows {
            /// Decode row images one change at a time, in subtransactions (see from_batch).
            isolate: bool,
            $($name: Vec<$ty>),*
        }

        impl Rows {
            /// row copies record `i` into a batch of its own.
            fn row(&self, i: usize) -> Rows {
                Rows { isolate: self.isolate, $($name: vec![self.$name[i].clone()]),* }
            }

            fn insert(self) {
                let args = [$(self.$name.into()),*];
                Spi::connect_mut(|client| {
                    INSERT_PLAN.with_borrow_mut(|plan| {
                        if plan.is_none() {
                            let types = [$(PgOid::from(<Vec<$ty> as IntoDatum>::type_oid())),*];
                            *plan = Some(client.prepare_mut(INSERT, &types)?.keep());
                        }
                        client.update(plan.as_ref().unwrap(), None, &args).map(|_| ())
                    })
                })
                .unwrap_or_else(|e| error!("activity_log: insert failed: {e}"));
            }
        }
    };
}

columns! {
    ts: i64,
    committed_at: i64,
    kind: String,
    category: String,
    severity: String,
    status: String,
    sqlstate: Option<String>,
    session_user: i64,
    current_user: i64,
    actor: Option<String>,
    application_name: String,
    client_addr: Option<String>,
    backend_pid: i32,
    xid: Option<i64>,
    command: Option<String>,
    relations: Option<String>,
    query: Option<String>,
    query_id: Option<i64>,
    rows: Option<i64>,
    duration_us: Option<i64>,
    context: Option<String>,
    jwt_claims: Option<String>,
    details: Option<String>,
    schema_name: Option<String>,
    table_name: Option<String>,
    table_oid: Option<i64>,
    old_row: Option<String>,
    new_row: Option<String>,
    row_key: Option<String>,
    changed_columns: Option<String>,
}

const INSERT: &str = include_str!("../../sql/queries/insert_events.sql");

thread_local! {
    /// The batch insert, planned once per writer (PostgreSQL replans it if the table changes).
    static INSERT_PLAN: std::cell::RefCell<Option<pgrx::spi::OwnedPreparedStatement>> =
        const { std::cell::RefCell::new(None) };
}

/// array_literal renders a text[] literal, quoting every element.
fn array_literal(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", quoted.join(","))
}

/// The parts of one row that every kind of record has.
struct Common<'a> {
    committed_at: i64,
    info: &'a record::FrameInfo,
    origin: &'a record::Origin,
}

impl Rows {
    /// from_batch builds the rows of a batch. With `isolate`, row images that cannot be decoded
    /// (their type was dropped, say) become a gap record instead of failing the batch.
    fn from_batch(batch: &ring::Batch, isolate: bool) -> Rows {
        let mut r = Rows {
            isolate,
            ..Rows::default()
        };
        for frame in &batch.frames {
            match record::decode_frame(&frame.payload) {
                Ok((info, mut records)) => {
                    order_changes(&mut records);
                    for rec in &records {
                        r.push(
                            Common {
                                committed_at: frame.commit_ts,
                                info: &info,
                                origin: &rec.origin,
                            },
                            &rec.body,
                        );
                    }
                }
                // Cannot happen unless memory is corrupt; say so in the trail, do not stop.
                Err(e) => r.push_gap(frame.commit_ts, &e.to_string()),
            }
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn push_row(
        &mut self,
        c: &Common,
        ts: i64,
        kind: &str,
        category: String,
        severity: &str,
        status: &str,
        command: Option<String>,
        details: Option<String>,
    ) {
        let o = c.origin;
        self.ts.push(ts);
        self.committed_at.push(c.committed_at);
        self.kind.push(kind.into());
        self.category.push(category);
        self.severity.push(severity.into());
        self.status.push(status.into());
        self.session_user.push(o.session_user as i64);
        self.current_user.push(o.current_user as i64);
        self.actor.push(o.actor.as_deref().map(text));
        self.application_name.push(text(&o.application_name));
        self.context.push(
            o.context
                .as_deref()
                .map(|c| parse_json_or_string(c).to_string()),
        );
        self.jwt_claims.push(
            o.jwt_claims
                .as_deref()
                .map(|c| parse_json_or_string(c).to_string()),
        );
        self.client_addr
            .push(c.info.client_addr.as_deref().map(text));
        self.backend_pid.push(c.info.pid);
        self.xid
            .push((c.info.xid != 0).then_some(c.info.xid as i64));
        self.command.push(command);
        self.details.push(details);
        // Kind-specific columns start empty; the caller fills in its own.
        self.sqlstate.push(None);
        self.relations.push(None);
        self.query.push(None);
        self.query_id.push(None);
        self.rows.push(None);
        self.duration_us.push(None);
        self.schema_name.push(None);
        self.table_name.push(None);
        self.table_oid.push(None);
        self.old_row.push(None);
        self.new_row.push(None);
        self.row_key.push(None);
        self.changed_columns.push(None);
    }

    fn push(&mut self, c: Common, body: &Body) {
        match body {
            Body::Statement(s) => {
                let failed = s.sqlstate.is_some();
                let (kind, category) = match s.class {
                    StatementClass::Ddl => ("ddl", "schema_change"),
                    StatementClass::Mod => ("statement", "data_change"),
                    StatementClass::Other => ("statement", "data_access"),
                };
                self.push_row(
                    &c,
                    s.ts,
                    kind,
                    category.into(),
                    if failed { "error" } else { "info" },
                    if failed { "error" } else { "success" },
                    (!s.command.is_empty()).then(|| text(&s.command)),
                    s.error_message
                        .as_deref()
                        .map(|m| json!({ "error": text(m) }).to_string()),
                );
                last(&mut self.sqlstate, s.sqlstate.map(|c| text(&c)));
                last(
                    &mut self.relations,
                    (!s.relations.is_empty()).then(|| {
                        let list: Vec<String> = s.relations.iter().map(u32::to_string).collect();
                        format!("{{{}}}", list.join(","))
                    }),
                );
                last(
                    &mut self.query,
                    (!s.query.is_empty()).then(|| text(&s.query)),
                );
                last(&mut self.query_id, (s.query_id != 0).then_some(s.query_id));
                last(&mut self.rows, s.rows);
                last(&mut self.duration_us, (!failed).then_some(s.duration_us));
            }
            Body::Event(e) => {
                let mut details = Map::new();
                details.insert("action".into(), Value::String(text(&e.action)));
                if let Some(t) = &e.entity_type {
                    details.insert("entity_type".into(), Value::String(text(t)));
                }
                if let Some(id) = &e.entity_id {
                    details.insert("entity_id".into(), Value::String(text(id)));
                }
                details.insert("data".into(), parse_json_or_string(&e.details));
                self.push_row(
                    &c,
                    e.ts,
                    "event",
                    text(&e.category),
                    &text(&e.severity),
                    "success",
                    Some(text(&e.action)),
                    Some(Value::Object(details).to_string()),
                );
            }
            Body::Change(ch) => {
                let op = match ch.op {
                    Op::Insert => "INSERT",
                    Op::Update => "UPDATE",
                    Op::Delete => "DELETE",
                    Op::Truncate => "TRUNCATE",
                    Op::Copy => "COPY",
                    Op::Gap => "GAP",
                };
                // TRUNCATE and COPY have no images: one record for the statement.
                let images = if ch.rows.is_empty() {
                    vec![(None, None)]
                } else if self.isolate {
                    let mut decoded = Vec::new();
                    if let Err(message) = in_subtransaction(|| {
                        decoded = decode::images_to_json(&ch.columns, &ch.rows)
                    }) {
                        let what = format!("{}.{}", text(&ch.schema), text(&ch.table));
                        let reason = format!("{op} rows of {what} could not be decoded: {message}");
                        self.push_gap(c.committed_at, &reason);
                        return;
                    }
                    decoded
                } else {
                    decode::images_to_json(&ch.columns, &ch.rows)
                };
                let details = match ch.op {
                    Op::Copy => Some(json!({ "rows_captured": false, "note": "COPY FROM bypasses row capture: the loaded rows are counted, not recorded" }).to_string()),
                    Op::Gap => Some(json!({ "rows_captured": false, "reason": text(&ch.note) }).to_string()),
                    _ => None,
                };
                // A gap is a system record about the table, not a change of it.
                let (kind, severity, status) = if ch.op == Op::Gap {
                    ("system", "critical", "gap")
                } else {
                    ("change", "info", "success")
                };
                let keys: Vec<String> = ch.key_columns.iter().map(|k| text(k)).collect();
                let excluded: Vec<String> = ch.exclude_columns.iter().map(|k| text(k)).collect();
                for (old, new) in images {
                    self.push_row(
                        &c,
                        ch.ts,
                        kind,
                        "data_change".into(),
                        severity,
                        status,
                        Some(op.into()),
                        details.clone(),
                    );
                    last(
                        &mut self.query,
                        (!ch.query.is_empty()).then(|| text(&ch.query)),
                    );
                    last(&mut self.schema_name, Some(text(&ch.schema)));
                    last(&mut self.table_name, Some(text(&ch.table)));
                    last(&mut self.table_oid, Some(ch.relid as i64));
                    let d = images::derive(old.as_deref(), new.as_deref(), &keys, &excluded);
                    last(&mut self.old_row, d.old_row);
                    last(&mut self.new_row, d.new_row);
                    last(&mut self.row_key, d.row_key);
                    last(
                        &mut self.changed_columns,
                        d.changed_columns.map(|c| array_literal(&c)),
                    );
                    if matches!(ch.op, Op::Copy | Op::Truncate) {
                        last(&mut self.rows, (ch.op == Op::Copy).then_some(ch.row_count));
                    }
                }
            }
        }
    }

    fn push_gap(&mut self, committed_at: i64, message: &str) {
        let info = record::FrameInfo::default();
        let origin = record::Origin::default();
        let c = Common {
            committed_at,
            info: &info,
            origin: &origin,
        };
        self.push_row(
            &c,
            committed_at,
            "system",
            "system".into(),
            "critical",
            "gap",
            Some("GAP".into()),
            Some(json!({ "reason": message }).to_string()),
        );
    }

    /// insert_one_by_one stores each record in its own subtransaction; a record the table
    /// refuses is replaced by a `gap` record that says why and what it was.
    fn insert_one_by_one(self) {
        for i in 0..self.ts.len() {
            let one = self.row(i);
            if let Err(message) = in_subtransaction(|| one.insert()) {
                let mut gap = Rows::default();
                gap.push_gap(
                    self.committed_at[i],
                    &format!(
                        "{} record \"{}\" could not be stored: {message}",
                        self.kind[i],
                        self.command[i].as_deref().unwrap_or("?")
                    ),
                );
                gap.insert();
            }
        }
    }
}

/// last replaces the value pushed last (the row being built).
fn last<T>(v: &mut [T], x: T) {
    if let Some(slot) = v.last_mut() {
        *slot = x;
    }
}

/// order_changes puts a transaction's row changes in command-id order, keeping every other
/// record where it is. Statements report their changes when they finish, so a statement that
/// called a function which changed rows reports after that function's changes although it
/// started first; replaying in command-id order reproduces the table.
fn order_changes(records: &mut [record::Record]) {
    let cid = |r: &record::Record| match &r.body {
        Body::Change(c) => Some(c.command_id),
        _ => None,
    };
    let slots: Vec<usize> = (0..records.len())
        .filter(|&i| cid(&records[i]).is_some())
        .collect();
    let mut changes: Vec<record::Record> = slots.iter().map(|&i| records[i].clone()).collect();
    changes.sort_by_key(|r| cid(r).unwrap_or(0)); // stable: same command keeps its order
    for (slot, change) in slots.into_iter().zip(changes) {
        records[slot] = change;
    }
}
