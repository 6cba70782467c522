//! api: the SQL functions implemented in Rust. Thin: argument checks, then a call into capture
//! or ring. Public wrappers with defaults and documentation live in `sql/`, in the file of their
//! topic (lib.rs lists them); the functions here start with an underscore when users are meant
//! to call the wrapper.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

use crate::capture;
use crate::errors::raise;
use crate::ring;
use crate::shared;
use crate::worker::chain;

/// Categories accepted by `log_event`, documented in the README.
pub const CATEGORIES: &[&str] = &[
    "application",
    "authentication",
    "authorization",
    "session",
    "user_management",
    "role_management",
    "data_access",
    "data_change",
    "data_export",
    "data_import",
    "data_backup",
    "data_restore",
    "data_deletion",
    "schema_change",
    "configuration",
    "security",
    "compliance",
    "privacy",
    "billing",
    "payment",
    "order",
    "inventory",
    "notification",
    "communication",
    "integration",
    "api",
    "file",
    "report",
    "workflow",
    "maintenance",
    "performance",
    "system",
];

/// Severities accepted by `log_event`, lowest first.
pub const SEVERITIES: &[&str] = &["debug", "info", "notice", "warning", "error", "critical"];

fn require_preload_or_error() {
    if !crate::process::preloaded() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "activity_log must be loaded via shared_preload_libraries",
            Some(
                "Add activity_log to shared_preload_libraries in postgresql.conf and restart the server.",
            ),
        );
    }
}

/// Raises the standard error when the library was not preloaded; used by the install script.
#[pg_extern(name = "_require_preload")]
fn require_preload() {
    require_preload_or_error();
}

fn my_database() -> u32 {
    // SAFETY: read of a backend global.
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

/// Claims this database's ring and wakes the launcher so that a writer starts.
#[pg_extern(name = "_activate")]
fn activate() -> bool {
    require_preload_or_error();
    // SAFETY: assigns this transaction an xid; we are inside CREATE EXTENSION.
    let xid = unsafe { pg_sys::GetTopTransactionId() };
    let claimed = ring::claim(my_database(), xid.into_inner()).is_some();
    shared::wake_launcher();
    claimed
}

fn check_name(what: &str, value: Option<&str>, allowed: &[&str]) -> String {
    let Some(v) = value else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{what} must not be null"),
            None,
        )
    };
    if !allowed.contains(&v) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid {what} \"{v}\""),
            Some(&format!("Valid values are: {}.", allowed.join(", "))),
        );
    }
    v.to_string()
}

/// A jsonb argument as its exact text (jsonb_out). pgrx's JsonB goes through serde_json,
/// whose f64 numbers round `123456789012345678901234567890` and `1e-400` and refuse `1e400`
/// and nesting deeper than 127 levels: an audit record must keep what the caller passed.
pub struct JsonbText(Vec<u8>);

impl FromDatum for JsonbText {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<JsonbText> {
        if is_null {
            return None;
        }
        // SAFETY: a jsonb Datum; jsonb_out detoasts it and returns a palloc'd C string.
        unsafe {
            let text = pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_JSONB_OUT), datum);
            Some(JsonbText(
                std::ffi::CStr::from_ptr(text).to_bytes().to_vec(),
            ))
        }
    }
}

// SAFETY: unboxed through FromDatum, as pgrx does for its own JsonB.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonbText {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the argument is declared jsonb.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
    unsafe fn unbox_nullable_arg(
        arg: pgrx::callconv::Arg<'_, 'fcx>,
    ) -> pgrx::nullable::Nullable<Self> {
        // SAFETY: the argument is declared jsonb.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

// SAFETY: the SQL type is jsonb, whose Datums FromDatum above reads.
unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for JsonbText {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(JsonbText);
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef,
        pgrx::pgrx_sql_entity_graph::metadata::ArgumentError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef,
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef::One(
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("jsonb"),
    ));
}

/// Longest entity_type and entity_id log_event accepts: identifiers, not documents.
const MAX_ENTITY_LEN: usize = 1024;

/// Records an application event in the current transaction.
#[pg_extern]
fn log_event(
    action: Option<&str>,
    details: default!(Option<JsonbText>, "'{}'"),
    entity_type: default!(Option<&str>, "NULL"),
    entity_id: default!(Option<&str>, "NULL"),
    category: default!(Option<&str>, "'application'"),
    severity: default!(Option<&str>, "'info'"),
) {
    require_preload_or_error();
    // SAFETY: read of a backend global. A parallel worker's records would end with it: reached
    // through a function someone marked PARALLEL SAFE, the event is refused, never lost.
    if unsafe { pg_sys::ParallelWorkerNumber } >= 0 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "activity_log.log_event() cannot run in a parallel worker",
            Some("Mark the function that calls it PARALLEL UNSAFE (or RESTRICTED)."),
        );
    }
    let action = match action.map(str::trim) {
        None => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "action must not be null",
            None,
        ),
        Some("") => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "action must not be empty",
            None,
        ),
        Some(a) if a.len() > 200 => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "action must be at most 200 bytes long",
            Some("Put long text into details."),
        ),
        Some(a) => a.to_string(),
    };
    for (what, value) in [("entity_type", entity_type), ("entity_id", entity_id)] {
        if value.is_some_and(|v| v.len() > MAX_ENTITY_LEN) {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{what} must be at most {MAX_ENTITY_LEN} bytes long"),
                Some("Put long text into details."),
            );
        }
    }
    let category = check_name("category", category, CATEGORIES);
    let severity = check_name("severity", severity, SEVERITIES);
    let details = match details {
        Some(JsonbText(text)) if !text.starts_with(b"{") => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "details must be a JSON object",
            Some("Wrap other values, for example jsonb_build_object('value', ...)."),
        ),
        Some(JsonbText(text)) => text,
        None => b"{}".to_vec(),
    };
    // SAFETY: reads of the session's user id.
    let privileged = unsafe { pg_sys::superuser() };
    if !privileged && details.len() > crate::gucs::max_event_size() {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "details of {} bytes exceed activity_log.max_event_size ({} bytes)",
                details.len(),
                crate::gucs::max_event_size()
            ),
            Some(
                "Store large documents in a table and log their key; a superuser may raise the limit.",
            ),
        );
    }
    capture::log_event(
        &action,
        details,
        entity_type,
        entity_id,
        &category,
        &severity,
        privileged,
    );
}

/// Longest wait `flush` accepts.
const MAX_FLUSH_WAIT_US: i128 = 3_600_000_000;

/// Recomputes the trail's hash chain for ids from_id..to_id (default: the whole trail).
// The named columns must be spelled out here for pg_extern: no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern]
fn verify(
    from_id: default!(Option<i64>, "NULL"),
    to_id: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(rows_checked, i64),
        name!(intact, bool),
        name!(first_broken_id, Option<i64>),
        name!(problem, Option<String>),
        name!(head, Option<Vec<u8>>),
    ),
> {
    let from = from_id.unwrap_or(i64::MIN);
    let to = to_id.unwrap_or(i64::MAX);
    if from > to {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("from_id ({from}) must not be greater than to_id ({to})"),
            None,
        );
    }
    let v = chain::verify(from, to);
    TableIterator::once((
        v.rows_checked,
        v.first_broken_id.is_none(),
        v.first_broken_id,
        v.problem,
        v.head,
    ))
}

/// Waits until every record published before the call is in activity_log.events.
#[pg_extern]
fn flush(timeout: default!(Option<Interval>, "'10 seconds'")) -> bool {
    require_preload_or_error();
    let Some(timeout) = timeout else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "timeout must not be null",
            None,
        )
    };
    let micros = timeout.as_micros();
    if !(0..=MAX_FLUSH_WAIT_US).contains(&micros) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("timeout must be between 0 and 1 hour, not {timeout}"),
            None,
        );
    }
    let timeout = Duration::from_micros(micros as u64);
    let started = Instant::now();
    let dboid = my_database();
    // Without a ring (more audited databases than rings), records wait in durable_queue for
    // the database's turn, and failure records lost meanwhile are counted for the gap record of
    // its next ring: wait for it, and for the first sweep of the ring it gets.
    let mut first = true;
    let slot = loop {
        match ring::slot_of(dboid) {
            Some(slot) if ring::serves(slot, dboid) => break slot,
            None if first
                && !staged_rows_exist()
                && !ring::waiting_databases().contains(&dboid) =>
            {
                return true;
            }
            _ => {}
        }
        first = false;
        if started.elapsed() >= timeout {
            return false;
        }
        ring::note_waiting(dboid);
        shared::wait_a_moment();
    };
    let target = ring::head(slot);
    let staged_target = ring::staged_commits(slot);
    loop {
        // Drops counted so far are in the trail too (as a gap record).
        if ring::tail(slot) >= target
            && ring::staged_swept(slot) >= staged_target
            && ring::unreported_drops(slot).1 == 0
        {
            return true;
        }
        if started.elapsed() >= timeout {
            return false;
        }
        ring::wait_for_writer(slot);
    }
}

/// staged_rows_exist tells whether durable_queue holds committed transactions (read as the
/// extension's owner: the caller may not read the queue).
fn staged_rows_exist() -> bool {
    capture::as_extension_owner(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM activity_log.durable_queue)")
            .ok()
            .flatten()
            .unwrap_or(false)
    })
}

fn timestamp(us: i64) -> Option<TimestampWithTimeZone> {
    // PostgreSQL timestamps are microseconds since 2000-01-01, the same as the ring's.
    (us != 0)
        .then(|| TimestampWithTimeZone::try_from(us).ok())
        .flatten()
}

/// One row per ring in use: its fill, its counters and its writer.
// The row type must be spelled out here: #[pg_extern] reads the column names from it.
#[allow(clippy::type_complexity)]
#[pg_extern(name = "_queue")]
pub fn queue() -> TableIterator<
    'static,
    (
        name!(database_oid, pg_sys::Oid),
        name!(capacity_bytes, i64),
        name!(used_bytes, i64),
        name!(published_records, i64),
        name!(published_bytes, i64),
        name!(written_records, i64),
        name!(dropped_records, i64),
        name!(batches, i64),
        name!(write_errors, i64),
        name!(overflow_waits, i64),
        name!(writer_pid, Option<i32>),
        name!(writer_state, String),
        name!(writer_failures, i32),
        name!(last_flush_at, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
        name!(last_error_at, Option<TimestampWithTimeZone>),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(queued_records, i64),
        name!(max_batch_records, i64),
        name!(stats_since, Option<TimestampWithTimeZone>),
        name!(recent_in_per_s, Option<f64>),
        name!(recent_out_per_s, Option<f64>),
        name!(oldest_unwritten_at, Option<TimestampWithTimeZone>),
    ),
> {
    require_preload_or_error();
    let rows: Vec<_> = (0..ring::slot_count())
        .map(ring::stats)
        .filter(|s| s.dboid != 0)
        .map(|s| {
            (
                pg_sys::Oid::from(s.dboid),
                s.capacity as i64,
                s.used_bytes as i64,
                s.published_records as i64,
                s.published_bytes as i64,
                s.written_records as i64,
                s.dropped_records as i64,
                s.batches as i64,
                s.write_errors as i64,
                s.overflow_waits as i64,
                (s.writer_pid != 0).then_some(s.writer_pid),
                match s.writer_state {
                    // A restore holds it off (capture/restore.rs): it runs, and stores nothing.
                    _ if s.restored_by != 0 => "held by a restore",
                    ring::WRITER_RUNNING => "running",
                    ring::WRITER_STARTING => "starting",
                    _ => "stopped",
                }
                .to_string(),
                s.writer_failures as i32,
                timestamp(s.last_flush_at),
                (!s.last_error.is_empty()).then_some(s.last_error),
                timestamp(s.last_error_at),
                timestamp(shared::started_at()),
                s.queued_records as i64,
                s.max_batch_records as i64,
                timestamp(if s.reset_at != 0 {
                    s.reset_at
                } else {
                    shared::started_at()
                }),
                s.recent_in_per_s,
                s.recent_out_per_s,
                s.oldest_unwritten_at.and_then(timestamp),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Starts the current database's metrics counters afresh; the queue itself is untouched.
#[pg_extern(name = "_reset_metrics")]
pub fn reset_metrics() {
    require_preload_or_error();
    if let Some(slot) = ring::slot_of(my_database()) {
        ring::reset_metrics(slot);
    }
}

/// Tells every backend to reload its list of tracked tables (called by track and untrack).
#[pg_extern(name = "_tracking_changed")]
fn tracking_changed() {
    require_preload_or_error();
    capture::note_tracking_change();
}

/// Runs `statement` with the rights of `role`, inside a security-restricted operation (as
/// REFRESH MATERIALIZED VIEW runs a view's query as its owner): for the SQL the migration kept
/// (a legacy trigger's definition, as the role that kept it; its function, as the function's
/// owner). A row of activity_log.migration_backup written by hand then does no more than its
/// writer could, whoever rolls back, and cannot SET ROLE its way out. The caller must have
/// `role`'s privileges.
#[pg_extern(name = "_run_as")]
fn run_as(role: pg_sys::Oid, statement: &str) {
    // SAFETY: reads of the current user and a catalog lookup.
    if !unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), role) } {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "must have the privileges of role with OID {}",
                role.to_u32()
            ),
            Some("The kept SQL runs as the role that kept it; roll back as a member of that role."),
        );
    }
    capture::as_role(role, true, || {
        // SAFETY: a GUC nest level, so that what the statement SETs ends with it (an ERROR's
        // abort ends it otherwise).
        let nest = unsafe { pg_sys::NewGUCNestLevel() };
        Spi::run(statement).unwrap_or_else(|e| {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}"), None)
        });
        // SAFETY: ends the level opened above.
        unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    });
}

/// Whether reading `relation`'s rows could run code of a role that is not a superuser (a
/// domain's CHECK, a cast): the migration then does not compare them as its caller.
#[pg_extern(name = "_runs_user_code")]
fn runs_user_code(relation: pg_sys::Oid) -> bool {
    crate::worker::decode::relation_runs_user_code(relation)
}

/// What a PL/pgSQL function does, statement by statement, as plpgsql's compiler and the raw
/// parser read it (crate::plpgsql::facts): for the trigger migration's analyzer.
#[pg_extern(name = "_plpgsql_facts", volatile, parallel_unsafe)]
pub fn plpgsql_facts(
    function: Option<pg_sys::Oid>,
    search_path: default!(Option<&str>, "NULL"),
) -> Option<pgrx::JsonB> {
    function.map(|f| pgrx::JsonB(crate::plpgsql::facts(f, search_path)))
}

/// Records lost because no ring was free for their database.
#[pg_extern(name = "_dropped_unassigned")]
fn dropped_unassigned() -> i64 {
    require_preload_or_error();
    shared::dropped_unassigned() as i64
}

/// The launcher's process id, NULL when it is not running.
#[pg_extern(name = "_launcher_pid")]
fn launcher_pid() -> Option<i32> {
    require_preload_or_error();
    Some(shared::launcher_pid()).filter(|&p| p != 0)
}

/// The categories `log_event` accepts.
#[pg_extern]
fn categories() -> SetOfIterator<'static, &'static str> {
    SetOfIterator::new(CATEGORIES.iter().copied())
}

/// The severities `log_event` accepts, lowest first.
#[pg_extern]
fn severities() -> SetOfIterator<'static, &'static str> {
    SetOfIterator::new(SEVERITIES.iter().copied())
}
