//! capture/triggers.rs: what rows.rs and copy_from.rs share about their synthetic triggers.
//!
//! The triggers' OIDs (one range, above any OID a real catalog row can get) and the `work_mem`
//! their transition tables are made with. Constants and one read of the ring's size: runs
//! wherever rows.rs or copy_from.rs run, and uses nothing else of capture.

use pgrx::pg_sys;

/// Synthetic trigger and function OIDs: above any OID a real catalog row can get here, and
/// not an RI trigger function (AfterTriggerSaveEvent asks RI_FKey_trigger_type about it).
/// The executor's triggers of each rows.rs `Level` (insert, update, delete) come first; a COPY's two
/// (copy_from.rs) follow, with oids of their own: the trigger manager finds a trigger by its
/// oid, and a statement run from inside a COPY holds both kinds (see rows.rs `disable_copy_triggers`).
pub(super) const FAKE_TGOID_BASE: u32 = 4_000_000_000;
pub(super) const NTRIG: usize = 3;
pub(super) const COPY_TGOID_BEFORE: u32 = FAKE_TGOID_BASE + 2 * NTRIG as u32;
pub(super) const COPY_TGOID_INSERT: u32 = COPY_TGOID_BEFORE + 1;
/// The four that hand rows a MERGE moved to another partition to the capture (rows.rs
/// `queue_moved_rows`): the old images of rows whose new images follow (paired), the new
/// images, then old and new images that cannot be paired.
pub(super) const MOVED_TGOID_OLD: u32 = COPY_TGOID_INSERT + 1;
pub(super) const MOVED_TGOID_NEW: u32 = MOVED_TGOID_OLD + 1;
pub(super) const MOVED_TGOID_OLD_ALONE: u32 = MOVED_TGOID_OLD + 2;
pub(super) const MOVED_TGOID_NEW_ALONE: u32 = MOVED_TGOID_OLD + 3;

/// is_synthetic tells whether `tgoid` is one of activity_log's synthetic triggers.
pub(super) fn is_synthetic(tgoid: pg_sys::Oid) -> bool {
    (FAKE_TGOID_BASE..=MOVED_TGOID_NEW_ALONE).contains(&tgoid.to_u32())
}

/// Largest in-memory budget given to a transition table (64 MB): beyond it a statement's rows
/// would be held twice in the backend's memory (tuplestore and pending records) for little
/// gain, since reading a spilled table is a small part of capturing it.
pub(super) const TRANSITION_MEMORY_CAP_KB: i32 = 64 * 1024;

/// in_memory_budget_kb is the work_mem transition tables are made with (see
/// rows.rs `InMemoryTransitionTables`; a COPY's in copy_from.rs).
pub(super) fn in_memory_budget_kb() -> i32 {
    (crate::ring::capacity() / 1024).min(TRANSITION_MEMORY_CAP_KB as u64) as i32
}
