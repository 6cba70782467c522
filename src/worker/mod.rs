//! worker: the launcher (one, static) and the writers (one per audited database).
//! Both run as background workers, never capture their own statements, and never share a
//! database connection.

pub mod chain;
mod decode;
pub mod launcher;
mod store;
pub mod writer;

use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult};
use std::cell::OnceCell;

/// kept_plan is the statement in `cell`, parsed and planned the first time this process runs
/// it and kept (SPI_keepplan) for the next ones: the writer runs a few statements for every
/// batch, and planning them each time cost more than running them. PostgreSQL plans a kept
/// statement again when a table it reads changes (a partition made or dropped, say).
fn kept_plan<'a>(
    cell: &'a OnceCell<OwnedPreparedStatement>,
    client: &SpiClient,
    query: &str,
    args: &[pg_sys::Oid],
) -> SpiResult<&'a OwnedPreparedStatement> {
    if let Some(plan) = cell.get() {
        return Ok(plan);
    }
    let types: Vec<PgOid> = args.iter().map(|&t| PgOid::from(t)).collect();
    let plan = client.prepare(query, &types)?.keep();
    Ok(cell.get_or_init(|| plan))
}
