//! worker: the launcher (one, static) and the writers (one per audited database).
//! Both run as background workers, never capture their own statements, and never share a
//! database connection.
//!
//! A writer's stages, one file each, calls going one way: writer.rs (loop, lifecycle) →
//! drain.rs (ring and staged sources, the batch transaction) → map.rs (record → trail row) →
//! store.rs (multi-insert, chain.rs) and rollup.rs; maintain.rs (partitions, retention, gap
//! records) → map.rs. subxact.rs (subtransactions, caught errors) serves them all; pace.rs
//! (pauses of a writer that keeps up) drain.rs and map.rs.

pub mod chain;
pub mod decode;
mod drain;
mod jsonb;
pub mod launcher;
mod maintain;
mod map;
mod pace;
pub mod rollup;
mod store;
pub(crate) mod subxact;
mod suspects;
pub mod writer;

use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult};
use std::cell::OnceCell;
use std::thread::LocalKey;

/// detoast_packed is pg_detoast_datum_packed without the call for a value stored plainly (a
/// short header included), which is nearly every value the writer reads: each call into
/// PostgreSQL from Rust runs under a guard (a sigsetjmp), and the writer reads a dozen varlena
/// values per row.
///
/// # Safety
/// `v` points to a valid varlena.
unsafe fn detoast_packed(v: *mut pg_sys::varlena) -> *mut pg_sys::varlena {
    // SAFETY: as documented for the caller.
    unsafe {
        if pgrx::varatt_is_4b_c(v) || pgrx::varatt_is_1b_e(v) {
            pg_sys::pg_detoast_datum_packed(v)
        } else {
            v
        }
    }
}

/// pin_settings makes the worker's session its own, whatever the database's owner set with
/// ALTER DATABASE … SET (applied at connect). Workers run as the bootstrap superuser:
///
/// - every name in their SQL resolves in pg_catalog (their temporary schema, listed last, they
///   never use): an object planted in a schema of the default search_path would run with
///   their rights — an operator `public.*(bigint, interval)` even wins over pg_catalog's, which
///   needs an implicit cast. PGC_S_OVERRIDE, as autovacuum does: it also outranks the
///   configuration file reread on SIGHUP;
/// - what they store reads the same in every database: the settings that change a value's
///   text (floats, intervals, dates, bytea, xml) are PostgreSQL's defaults;
/// - nothing stops them: no read-only default, no statement, lock or transaction timeout
///   (transaction_timeout exists from PostgreSQL 17 on and ends the whole session), no SET ROLE,
///   no exit_on_error (it makes every ERROR a FATAL, even one the writer catches to set a
///   record aside as a dead letter: the same batch would end each writer that tries it);
///
/// The rest at PGC_S_SESSION, which outranks the database's settings and lets the extension's
/// own functions SET what they need (lock_timeout).
pub fn pin_settings() {
    let set = |name: &std::ffi::CStr, value: &std::ffi::CStr, source| {
        // SAFETY: plain GUC assignments outside a transaction, as autovacuum makes; none of
        // these check hooks reads the catalog for these values.
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                source,
            );
        }
    };
    set(
        c"search_path",
        c"pg_catalog, pg_temp",
        pg_sys::GucSource::PGC_S_OVERRIDE,
    );
    for (name, value) in [
        (c"role", c"none"),
        (c"default_transaction_read_only", c"off"),
        (c"default_transaction_isolation", c"read committed"),
        (c"statement_timeout", c"0"),
        (c"idle_in_transaction_session_timeout", c"0"),
        (c"lock_timeout", c"0"),
        (c"exit_on_error", c"off"),
        (c"extra_float_digits", c"1"),
        (c"DateStyle", c"ISO, MDY"),
        (c"IntervalStyle", c"postgres"),
        (c"bytea_output", c"hex"),
        (c"xmloption", c"content"),
    ] {
        set(name, value, pg_sys::GucSource::PGC_S_SESSION);
    }
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    set(
        c"transaction_timeout",
        c"0",
        pg_sys::GucSource::PGC_S_SESSION,
    );
}

/// A statement a process plans once (see [`with_kept_plan`]).
type KeptPlan = LocalKey<OnceCell<OwnedPreparedStatement>>;

/// with_kept_plan runs `run` with the statement `query`, parsed and planned the first time this
/// process runs it and kept in `plan` (SPI_keepplan) for the next ones: the writer runs a few
/// statements for every batch, and planning them each time cost more than running them.
/// PostgreSQL plans a kept statement again when a table it reads changes (a partition made or
/// dropped, say).
fn with_kept_plan<R>(
    plan: &'static KeptPlan,
    query: &str,
    args: &[pg_sys::Oid],
    run: impl FnOnce(&mut SpiClient, &OwnedPreparedStatement) -> SpiResult<R>,
) -> SpiResult<R> {
    plan.with(|cell| {
        Spi::connect_mut(|client| {
            let kept = match cell.get() {
                Some(kept) => kept,
                None => {
                    let types: Vec<PgOid> = args.iter().map(|&t| PgOid::from(t)).collect();
                    let prepared = client.prepare(query, &types)?.keep();
                    cell.get_or_init(|| prepared)
                }
            };
            run(client, kept)
        })
    })
}
