//! ring: the shared-memory rings that carry committed records from backends to writers, and
//! nothing else (the extension's other shared state is src/shared/).
//!
//! Layout (layout.rs): one control block, `max_databases` slots, then one data area of
//! `buffer_size` bytes per slot. A slot belongs to one database while its `dboid` is set, for
//! a turn: databases without one wait on a list (waiting.rs) and the launcher hands rings
//! around (worker/launcher.rs). Many backends produce into a slot; exactly one writer consumes
//! from it. A frame without records is an announcement: it holds the place, in the ring's
//! order, of a transaction whose records are staged in durable_queue (capture/xact.rs).
//!
//! Locking:
//! - the control lock (tranche lock 0) guards claiming and releasing slots (`Slot::dboid`);
//! - each slot's lock (tranche lock 1 + i) guards `head` and the frame headers written at
//!   reservation. It is held only for a few loads and stores: payload copies and state changes
//!   happen outside it, so a commit never waits behind another backend's memcpy.
//! - everything else is an atomic; counters are `Relaxed` and only ever read for metrics.
//!
//! A frame is `[FrameHeader][payload]`, 8-byte aligned. A producer reserves it under the slot
//! lock with state PENDING, copies the payload, and later marks it COMMITTED or VOID. The writer
//! reads from `tail` and stops at the first PENDING frame, so records reach the table in
//! reservation order. `tail` moves only after the writer's insert has committed: a writer that
//! dies mid-batch loses nothing.
//!
//! Commit order key: each frame carries the WAL insert position read under the slot lock when
//! it was reserved (at PRE_COMMIT), so keys never decrease along the ring. A durable_queue row
//! carries the same kind of key, read when it was staged at PRE_COMMIT (capture/durable.rs).
//! A transaction that depends on another (waited for its row lock, or saw its rows) reaches
//! PRE_COMMIT after that one wrote its commit record, so its key is strictly higher; equal
//! keys mean no WAL in between, hence independent transactions. WAL positions only grow, also
//! across crash-restarts, so the key orders staged rows of before a crash before anything
//! after it. The writer stores ring frames and staged rows by this key (worker/drain.rs).
//!
//! Rules: no `palloc`, no `ereport`, no panics in anything a backend calls from its commit or
//! abort path (`commit`, `void`, `wake_writer`).
//!
//! Files, one job each:
//! - layout.rs: the shared-memory block, its structs and locks, initialisation, accessors;
//! - pages.rs: maps the data areas' pages into a process ahead of use;
//! - produce.rs: reserve, commit, void (backends); the fit/pad/wrap arithmetic;
//! - consume.rs: read, advance, next_key (the writer); Frame and Batch;
//! - slots.rs: claim, release, hand-back, waiting databases, writer state, pause, restore hold;
//! - spill.rs: rings to files and back when shared memory goes and comes (the postmaster);
//!   removing the files of a dropped database;
//! - waiting.rs: the list of databases waiting for a ring;
//! - metrics.rs: counters, rate windows, last error, the queue's snapshot.

mod consume;
mod layout;
mod metrics;
mod pages;
mod produce;
mod slots;
mod spill;
mod waiting;

pub use consume::{
    Batch, Frame, advance, committing, filling, has_frames, head, mark_swept, next_key, read,
    staged_commits, staged_swept, tail,
};
pub use layout::{
    WRITER_NONE, WRITER_RUNNING, WRITER_STARTING, capacity, init, is_initialised, slot_count,
};
pub use metrics::{
    count_drop, count_overflow_wait, count_written, mark_drops_reported, note_exit_error,
    note_write_error, reset_metrics, roll_window, stats, unreported_drops,
};
pub use produce::{
    Reservation, ReserveError, Share, commit, commit_staged, count_published, reserve, void,
};
pub use slots::{
    attach_writer, claim, claim_xid, claimed_at, close, closing, count_waiting_drop, detach_writer,
    end_restore_hold, failures, forget_database, hand_back_requested, hold_for_restore, hurried,
    last_error_transient, mark_starting, note_waiting, paused, paused_by, release, release_closed,
    release_database, release_dropped, request_hand_back, request_sweep, reset_failures,
    restored_by, resume, resume_abandoned, serves, slot_dboid, slot_of, start_requested_at,
    stop_waiting, stop_writer_for_drop, wait_for_writer, waiting_databases, wake_writer,
    writer_state,
};
pub use spill::{Removed, kept_databases, remove_dropped};
