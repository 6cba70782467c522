//! worker: the launcher (one, static) and the writers (one per audited database).
//! Both run as background workers, never capture their own statements, and never share a
//! database connection.

pub mod chain;
mod decode;
mod jsonb;
pub mod launcher;
mod store;
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

/// pin_search_path makes every name in the worker's SQL resolve in pg_catalog (its own
/// temporary schema, listed last, it never uses). Workers run as the bootstrap superuser: an
/// object planted in a schema of the default search_path would run with its rights — an
/// operator `public.*(bigint, interval)` even wins over pg_catalog's, which needs an implicit
/// cast. PGC_S_OVERRIDE, as autovacuum does: it outranks ALTER DATABASE / ALTER ROLE settings
/// applied at connect and the configuration file reread on SIGHUP.
pub fn pin_search_path() {
    // SAFETY: a plain GUC assignment; search_path's check hook only parses the list.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
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
