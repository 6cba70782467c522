//! gucs.rs: every `activity_log.*` setting, defined once in `_PG_init`.
//!
//! Statics are private; the rest of the crate reads typed accessors. Settings that change what
//! is audited are superuser-only (`SUSET`) so that a session cannot switch its own auditing off.
//! The context setting is validated as a JSON object when it is set, so a bad value is rejected
//! at `SET` time and never reaches the writer.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString, c_char, c_void};

/// What statement-level records to produce; the levels follow PostgreSQL's `log_statement`.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum CaptureStatements {
    #[name = c"none"]
    None,
    #[name = c"ddl"]
    Ddl,
    #[name = c"mod"]
    Mod,
    #[name = c"all"]
    All,
}

/// What a committing transaction does when its database's ring has no room.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Overflow {
    #[name = c"wait"]
    Wait,
    #[name = c"drop"]
    Drop,
    #[name = c"error"]
    Error,
}

/*---- GUC variables ----*/

/// Master switch for capture in this session (superuser-only).
static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
static ALLOW_DROP_TRAIL: GucSetting<bool> = GucSetting::<bool>::new(false);
/// Postmaster-only: bytes of ring per database slot, in kB.
static BUFFER_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);
/// Postmaster-only: how many rings (and writers) exist; databases take turns on them.
static MAX_DATABASES: GucSetting<i32> = GucSetting::<i32>::new(4);
/// Records per insert statement in the writer.
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(5000);
/// Longest time the writer sleeps when nobody wakes it, in ms.
static FLUSH_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// About how much work, in ms, a writer that keeps up does before it pauses (worker/pace.rs).
static WRITER_SLICE_MS: GucSetting<f64> = GucSetting::<f64>::new(0.3);
/// How long the trail keeps records, in minutes; 0 keeps them for ever.
static RETENTION_MIN: GucSetting<i32> = GucSetting::<i32>::new(0);
static CAPTURE_STATEMENTS: GucSetting<CaptureStatements> =
    GucSetting::<CaptureStatements>::new(CaptureStatements::Ddl);
/// Query text is cut to this many bytes (on a character boundary).
static MAX_QUERY_LENGTH: GucSetting<i32> = GucSetting::<i32>::new(4096);
/// Largest `details` a role that is not a superuser may pass to log_event, in bytes.
static MAX_EVENT_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
static OVERFLOW: GucSetting<Overflow> = GucSetting::<Overflow>::new(Overflow::Wait);
/// How long `overflow = wait` waits for room before failing the transaction, in ms.
static OVERFLOW_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Developers' injection point (tests/rows.rs): how long a transaction that staged its records
/// without an announcement waits, twice: before its commit (invisible), and in its commit
/// callback (visible, not yet counted for the writer), in ms.
static HOLD_STAGED_COMMIT_MS: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Application-supplied actor, recorded on every record.
static ACTOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Application-supplied context (a JSON object), recorded on every record.
static CONTEXT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// init defines every setting; called from `_PG_init` only while preloading, because
/// PostgreSQL refuses postmaster settings defined later.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"activity_log.enabled",
        c"Captures audit records in this session.",
        c"When off, nothing the session does is recorded. Only superusers can change it.",
        &ENABLED,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"activity_log.allow_drop_trail",
        c"Lets DROP EXTENSION activity_log drop an audit trail that holds records.",
        c"Off: dropping the extension (or its schema) is refused while the trail or its queue holds records. Only superusers can change it.",
        &ALLOW_DROP_TRAIL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"activity_log.buffer_size",
        c"Size of each database's shared-memory ring.",
        c"Committed records wait here until the writer stores them. Total shared memory is buffer_size times max_databases.",
        &BUFFER_SIZE_KB,
        64,
        1024 * 1024,
        GucContext::Postmaster,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"activity_log.max_databases",
        c"Number of shared-memory rings, and so of writers, at the same time.",
        c"Any number of databases can be audited: they take turns on the rings of buffer_size bytes each; a database without one publishes through durable_queue meanwhile.",
        &MAX_DATABASES,
        1,
        64,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"activity_log.batch_size",
        c"Largest number of records the writer inserts in one statement.",
        c"",
        &BATCH_SIZE,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"activity_log.flush_interval",
        c"Longest time the writer sleeps between looks at its ring.",
        c"Committing backends wake the writer at once; this is the fallback.",
        &FLUSH_INTERVAL_MS,
        10,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_float_guc(
        c"activity_log.writer_slice",
        c"About how long the writer works before a 1 ms pause, while it keeps up; 0 never pauses.",
        c"After each slice of work the writer pauses for 1 ms, so that backends are not held up behind it for long; when it falls behind (a full batch, a quarter-full ring) it works without pauses.",
        &WRITER_SLICE_MS,
        0.0,
        1000.0,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"activity_log.retention",
        c"How long the trail keeps records; 0 keeps them for ever.",
        c"The trail has one partition per day (UTC); the writer drops each partition once its whole day is older than this (checked hourly). Set it in days, e.g. '90d'.",
        &RETENTION_MIN,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_enum_guc(
        c"activity_log.capture_statements",
        c"Which statements produce statement records: none, ddl, mod or all.",
        c"The levels are those of log_statement. Failed statements are recorded at every level but none.",
        &CAPTURE_STATEMENTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"activity_log.max_query_length",
        c"Query text longer than this many bytes is cut.",
        c"0 records no query text.",
        &MAX_QUERY_LENGTH,
        0,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"activity_log.max_event_size",
        c"Largest details (as jsonb text) log_event accepts from a role that is not a superuser.",
        c"Together with the half of the ring that application events may fill, it keeps one role's events from crowding out everybody's records.",
        &MAX_EVENT_SIZE,
        1024,
        1024 * 1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_enum_guc(
        c"activity_log.overflow",
        c"What a committing transaction does when the ring is full: wait, drop or error.",
        c"wait blocks the commit until there is room, then fails the transaction after overflow_timeout; drop commits and counts the lost records; error fails the transaction.",
        &OVERFLOW,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"activity_log.overflow_timeout",
        c"How long overflow = wait waits for room before failing the transaction.",
        c"",
        &OVERFLOW_TIMEOUT_MS,
        1,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"activity_log.debug_hold_staged_commit",
        c"For the project's tests only: hold a transaction staged without an announcement before and after it commits.",
        c"After the commit it is visible and not yet counted for the writer, which is the window the writer's ordering must cover.",
        &HOLD_STAGED_COMMIT_MS,
        0,
        60_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"activity_log.actor",
        c"Application-level actor recorded on every record.",
        c"Set by the application, for example to the end user behind a pooled connection.",
        &ACTOR,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: check_context is a valid GUC check hook for a string setting.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"activity_log.context",
            c"Application context (a JSON object) recorded on every record.",
            c"",
            &CONTEXT,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_context),
            None,
            None,
        );
        pg_sys::MarkGUCPrefixReserved(c"activity_log".as_ptr());
    }
}

/// check_context accepts an empty value or a JSON object.
#[pg_guard]
unsafe extern "C-unwind" fn check_context(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to a NUL-terminated string or NULL.
    let text = unsafe {
        let p = *newval;
        if p.is_null() {
            return true;
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    if text.trim().is_empty()
        || matches!(
            serde_json::from_str(&text),
            Ok(serde_json::Value::Object(_))
        )
    {
        return true;
    }
    // SAFETY: GUC_check_errdetail_string is read by the GUC machinery right after we return false.
    unsafe {
        pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(
            c"activity_log.context must be a JSON object, for example '{\"request_id\": \"abc\"}'."
                .as_ptr(),
        );
    }
    false
}

/*---- accessors ----*/

pub fn enabled() -> bool {
    ENABLED.get()
}
pub fn allow_drop_trail() -> bool {
    ALLOW_DROP_TRAIL.get()
}
pub fn ring_bytes() -> usize {
    BUFFER_SIZE_KB.get() as usize * 1024
}
pub fn max_databases() -> usize {
    MAX_DATABASES.get() as usize
}
pub fn batch_size() -> usize {
    BATCH_SIZE.get() as usize
}
/// The writer's slice of work between pauses; None: it never pauses.
pub fn writer_slice() -> Option<std::time::Duration> {
    let ms = WRITER_SLICE_MS.get();
    (ms > 0.0).then(|| std::time::Duration::from_secs_f64(ms / 1000.0))
}
/// Minutes the trail keeps records; None: for ever.
pub fn retention_minutes() -> Option<i32> {
    let m = RETENTION_MIN.get();
    (m > 0).then_some(m)
}

pub fn flush_interval() -> std::time::Duration {
    std::time::Duration::from_millis(FLUSH_INTERVAL_MS.get() as u64)
}
pub fn capture_statements() -> CaptureStatements {
    CAPTURE_STATEMENTS.get()
}
pub fn max_query_length() -> usize {
    MAX_QUERY_LENGTH.get() as usize
}
pub fn max_event_size() -> usize {
    MAX_EVENT_SIZE.get() as usize
}
pub fn overflow() -> Overflow {
    OVERFLOW.get()
}
pub fn overflow_timeout() -> std::time::Duration {
    std::time::Duration::from_millis(OVERFLOW_TIMEOUT_MS.get() as u64)
}
/// hold_staged_commit sleeps for activity_log.debug_hold_staged_commit (tests only), shown in
/// pg_stat_activity as pg_sleep's wait event. Before the commit (`committed` false) a cancel or
/// terminate ends the transaction as usual; after it, nothing may fail: a pending interrupt
/// only ends the hold.
pub fn hold_staged_commit(committed: bool) {
    let ms = HOLD_STAGED_COMMIT_MS.get();
    if ms <= 0 {
        return;
    }
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms as u64);
    loop {
        if committed {
            // SAFETY: read of a backend global.
            if unsafe { pg_sys::InterruptPending } != 0 {
                return;
            }
        } else {
            pgrx::check_for_interrupts!();
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        // SAFETY: waiting on our own latch, as pg_sleep does.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                left.as_millis().max(1) as std::ffi::c_long,
                pg_sys::WaitEventTimeout::WAIT_EVENT_PG_SLEEP,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
}
/// actor returns the setting as bytes, or None when unset or empty.
pub fn actor() -> Option<Vec<u8>> {
    non_empty(ACTOR.get())
}
/// context returns the JSON text of the setting, or None when unset or empty.
pub fn context() -> Option<Vec<u8>> {
    non_empty(CONTEXT.get())
}

fn non_empty(v: Option<CString>) -> Option<Vec<u8>> {
    v.map(CString::into_bytes).filter(|b| !b.is_empty())
}
