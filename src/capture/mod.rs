//! capture: what a backend collects before its transaction ends, and how it reaches a ring.
//!
//! Runs in every backend, on the write path: the executor, utility and error hooks and the
//! transaction callbacks note what a transaction does (statements, row images, failures,
//! application events) as encoded records in a per-backend pending buffer, and publish them at
//! commit, into the database's ring or staged in durable_queue.
//!
//! The face: the rest of the extension uses only what this file exports — [`install`] (from
//! `_PG_init`), [`log_event`] (`activity_log.log_event()`), [`note_tracking_change`] (track and
//! untrack), and [`as_extension_owner`] / [`as_role`] (SQL run with another role's rights).
//! Whether this process is one of our workers, or preloaded, is `crate::process`'s.
//!
//! The modules, leaves first; each uses only modules above it (no cycle):
//!
//! ```text
//! origin       who is acting: Origin, FrameInfo, client address      uses nothing in capture
//! redact       secrets out of statement text                          uses nothing in capture
//! triggers     synthetic trigger OIDs, transition-table budget        uses nothing in capture
//! applied      rows a logical replication worker captured itself      uses nothing in capture
//! durable      staging in durable_queue                               uses origin
//! pending      the pending buffer (spills through durable)            uses durable
//! restore      a session restoring a dump                             uses origin, pending
//! context      session/statement context: capturing, Nested, query    uses origin, restore
//! tracked      this backend's copy of tracked_tables                  uses context
//! events       application events (log_event)                         uses context, origin, pending
//! copy_from    COPY FROM's rows, through the relation cache           uses context, tracked, triggers
//! rows         row images through synthetic triggers                  uses applied, context, copy_from,
//!                                                                          origin, pending, redact,
//!                                                                          tracked, triggers
//! replication  tracked tables on a subscriber: gap records            uses applied, context, rows,
//!                                                                          tracked
//! hooks        executor, ProcessUtility, emit_log, object_access      uses context, copy_from, origin,
//!                                                                          pending, redact, replication,
//!                                                                          restore, rows, tracked
//! xact         transaction callbacks: pending buffer -> ring          uses applied, copy_from, durable,
//!                                                                          hooks, origin, pending,
//!                                                                          replication, tracked
//! ```
//!
//! Outside capture, they use `crate::{errors, gucs, process, record, ring, shared, unguarded}`,
//! never `api` or `worker`.

mod applied;
mod context;
mod copy_from;
mod durable;
mod events;
mod hooks;
mod origin;
mod pending;
mod redact;
mod replication;
mod restore;
mod rows;
mod tracked;
mod triggers;
mod xact;

pub use context::{as_extension_owner, as_role};
pub use events::log_event;
pub use tracked::note_change as note_tracking_change;

/// install chains the hooks and registers the transaction callbacks; called once from
/// `_PG_init`.
pub fn install() {
    hooks::install();
    xact::install();
}
