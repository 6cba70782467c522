//! worker/writer.rs: one per audited database; drains that database's ring into
//! `activity_log.events`.
//!
//! The loop: read committed frames from the ring tail (up to `batch_size` records), decode
//! them (worker/decode.rs), store them the way COPY does (worker/store.rs), commit, and only
//! then move the tail. A failed insert is noted in the ring's metrics and ends the process with
//! exit code 1; the launcher starts a new writer after a back-off and the same records are
//! tried again, so nothing published is lost. On SIGTERM the writer drains the ring before it
//! exits. Its own inserts are never captured (`hooks::mark_own_worker`).
//!
//! Order: ring frames and durable_queue rows carry a commit order key (the WAL insert position
//! at PRE_COMMIT, see ring/mod.rs), and the writer stores them in its order: a staged row the
//! ring announced where the announcement is, the others ([`drain_staged`]) before the ring's
//! next frame when their key is not above it, a ring batch cut before a frame whose key is
//! above a staged row's. So `id` is the commit order of conflicting transactions.

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::capture::hooks;
use crate::gucs;
use crate::record::{self, Body, Op, StatementClass};
use crate::ring;
use crate::shared;
use crate::worker::decode;
use crate::worker::rollup::{Categories, Fact, Rollups};
use crate::worker::store::{self, Col, Row, Trail};
use crate::worker::subxact::{
    error_message, in_subtransaction, is_transient, try_in_subtransaction,
};
use crate::worker::suspects;

/// The slot and database this process writes for.
static mut MY_SLOT: i64 = -1;
static mut MY_DB: u32 = 0;
/// Set once the writer leaves its loop normally; an exit without it counts as a failure.
static mut CLEAN_EXIT: bool = false;

/// keep_freed_memory makes this process's malloc reuse what a batch freed instead of handing
/// it back to the kernel. Each batch allocates a few megabytes (row Datums, heap tuples, the
/// transaction's memory blocks) and frees them at its end; with glibc's defaults the larger ones
/// are mmap'd and unmapped, and the heap top is trimmed, so the next batch takes a page fault
/// and a zeroed page for every 4 kB again (about 6 % of the writer's CPU during a pgbench
/// drain). Only the writer does this: it is our process, and its batches are bounded by
/// activity_log.batch_size. What it keeps beyond 64 MB of free heap is still returned.
#[cfg(target_env = "gnu")]
fn keep_freed_memory() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: glibc tuning of this single-threaded process, before it allocates for a batch.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20); // glibc's largest allowed value
        mallopt(M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(target_env = "gnu"))]
fn keep_freed_memory() {}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn al_writer_main(arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    keep_freed_memory();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    hooks::mark_own_worker();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);
    super::pin_settings();

    // A ring is claimed by the first transaction that audits something in the database, and
    // that may be the CREATE EXTENSION itself: until it commits, the extension is not visible
    // here. Wait for that transaction rather than exit (an exit would count as a failed run).
    // Whether it runs is read before looking for the extension: had it been read after, a
    // commit in between would make an installed extension look absent and its ring released.
    loop {
        let claimer = ring::slot_of(dboid).map(ring::claim_xid).unwrap_or(0);
        // SAFETY: plain lookup in the proc array.
        let claimer_running =
            claimer != 0 && unsafe { pg_sys::TransactionIdIsInProgress(claimer.into()) };
        let installed = BackgroundWorker::transaction(|| {
            // SAFETY: catalog lookup inside a transaction.
            unsafe {
                pg_sys::get_extension_oid(c"activity_log".as_ptr(), true) != pg_sys::InvalidOid
            }
        });
        if installed {
            break;
        }
        let Some(i) = ring::slot_of(dboid) else {
            return;
        };
        if !claimer_running {
            // Nothing to write in this database: its ring goes too.
            ring::release(i);
            ring::detach_writer(i, 0, false);
            return; // exit code 0
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(10))) {
            ring::detach_writer(i, 0, false);
            return; // shutting down; the launcher starts a writer when it is needed again
        }
    }
    let Some(slot) = ring::claim(dboid, 0) else {
        // Every ring is taken: when transactions wait in durable_queue, the launcher gives
        // this database a ring at its turn.
        if staged_rows_left() {
            ring::note_waiting(dboid);
        }
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
    if ring::paused(slot) {
        // A drop stopped the ring's writer while this one started.
        // SAFETY: process-local flag read by on_exit.
        unsafe { CLEAN_EXIT = true };
        return;
    }
    // Staged frames a crash happened with: not read again, or read alone.
    suspects::load(dboid);

    // A restore holds the writer off before it touches the trail: the restore makes the
    // dumped day partitions and rows first (capture/restore.rs). Told to stop meanwhile, it
    // leaves at once and the records stay in the ring for the next writer.
    let stopping = !wait_for_restore(slot);
    // Partitions first: a record stored before today's partition exists would go to
    // events_default and keep that day's partition from being made.
    let mut next_maintenance = Instant::now();
    if !stopping {
        maintain_partitions_if_due(&mut next_maintenance);
        if ring::take_gap(slot) {
            BackgroundWorker::transaction(write_gap_event);
        }
    }
    // Staged transactions left for the next round: do not sleep (no commit wakes the writer
    // while it is sweeping), only look at signals.
    let mut more = false;
    while !stopping
        && BackgroundWorker::wait_latch(Some(if more {
            Duration::ZERO
        } else {
            gucs::flush_interval()
        }))
        && still_mine(slot)
        && !ring::paused(slot)
    {
        if BackgroundWorker::sighup_received() {
            // SAFETY: documented way to reload settings in a worker.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        ring::roll_window(slot);
        if !wait_for_restore(slot) {
            break;
        }
        maintain_partitions_if_due(&mut next_maintenance);
        let drained = drain(slot);
        // The batches' inserts and deletes reach the statistics autovacuum reads, as a
        // backend's do when it goes idle (at most once a second; outside any transaction).
        // SAFETY: between transactions of this background worker.
        unsafe { pg_sys::pgstat_report_stat(false) };
        // Staged transactions still to take, and the last round took some: go on at once.
        // (Waiting behind a frame still pending: its commit wakes the writer.)
        more = drained.left_some || (sweeping(slot) && drained.written > 0);
        if ring::hand_back_requested(slot) && (drained.written == 0 && !more || turn_is_over(slot))
        {
            hand_back(slot);
            // SAFETY: process-local flag read by on_exit.
            unsafe { CLEAN_EXIT = true };
            return;
        }
        if drained.written < small_batch() {
            // Small batches: let commits gather for a moment, so that a busy server is written
            // in batches rather than one tiny insert per commit. Adds at most 50 ms of lag;
            // with 10 ms the writer spent a fifth more CPU per record under pgbench (a batch
            // costs a transaction, opening the partition and its indexes, the rollup upsert).
            // SAFETY: plain sleep.
            unsafe { pg_sys::pg_usleep(50_000) };
        }
    }
    // A drop stopped the writer: it leaves at once, and the records stay in the ring (gone
    // with the trail if the drop commits, stored by the next writer if not). A restore that
    // holds the trail is stopped with the server: once it is gone the queue is stored.
    if !ring::paused(slot) && restore_gone(slot, Duration::from_secs(30)) {
        drain_before_exit(slot);
    }
    // SAFETY: process-local flag read by on_exit.
    unsafe { CLEAN_EXIT = true };
}

/// How long a writer keeps its ring, once another database waits for one, while its own
/// database keeps it busy: a database without a ring commits through durable_queue (slower,
/// nothing lost), and its records reach the trail at its turn.
const TURN: Duration = Duration::from_secs(5);

fn turn_is_over(slot: usize) -> bool {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    now - ring::claimed_at(slot) >= TURN.as_micros() as i64
}

/// hand_back gives the ring up for another database (the launcher asked): no new frame is
/// reserved from now on (committing transactions stage theirs), what is in the ring and in
/// durable_queue is stored, and the ring is released. Transactions staged meanwhile put the
/// database back on the waiting list; so does this writer when it sees some left.
fn hand_back(slot: usize) {
    ring::close(slot);
    // What committed before the close; later commits put the database back on the list.
    let staged = ring::staged_commits(slot);
    while ring::has_frames(slot) || ring::staged_swept(slot) < staged {
        if ring::paused(slot)
            || drain(slot).written == 0
                && !BackgroundWorker::wait_latch(Some(Duration::from_millis(5)))
        {
            // Stopping, or a drop stopped the writer: the ring stays closed, and the next
            // writer opens it again.
            return;
        }
    }
    // SAFETY: process-local statics; detached before the release so that the writer that
    // gets the ring next finds it free.
    unsafe {
        ring::detach_writer(slot, pg_sys::MyProcPid, false);
        MY_SLOT = -1;
    }
    ring::release_closed(slot);
    if staged_rows_left() {
        // SAFETY: process-local static.
        ring::note_waiting(unsafe { MY_DB });
    }
}

/// staged_rows_left tells whether durable_queue holds committed transactions.
fn staged_rows_left() -> bool {
    BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM activity_log.durable_queue)")
            .unwrap_or_else(|e| {
                error!("activity_log: could not read activity_log.durable_queue: {e}")
            })
            .unwrap_or(false)
    })
}

/// restore_holds tells whether a live backend holds the trail for a restore, ending the hold of
/// one that is gone.
fn restore_holds(slot: usize) -> bool {
    let pid = ring::restored_by(slot);
    if pid == 0 {
        return false;
    }
    // SAFETY: a lookup in the proc array (a shared lock).
    if unsafe { pg_sys::BackendPidGetProc(pid) }.is_null() {
        ring::end_restore_hold(slot, pid);
        return false;
    }
    true
}

/// restore_gone waits up to `within`, when stopping, for a backend that holds the trail for a
/// restore to go (a shutdown stops it too); false if it is still there.
fn restore_gone(slot: usize, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        if !restore_holds(slot) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        // SAFETY: plain sleep (the latch is of no use once SIGTERM arrived).
        unsafe { pg_sys::pg_usleep(10_000) };
    }
}

/// wait_for_restore waits while a backend restores a dump into the database (see
/// capture/restore.rs), ending the hold when that backend is gone; false when told to stop.
fn wait_for_restore(slot: usize) -> bool {
    loop {
        if !restore_holds(slot) {
            return true;
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(500)))
            || !still_mine(slot)
            || ring::paused(slot)
        {
            return false;
        }
    }
}

/// maintain_partitions_if_due runs activity_log._maintain_partitions() every hour: the day
/// partitions two days ahead and, with activity_log.retention, the old ones dropped, each drop
/// recorded in the trail as a `system` record with command RETENTION. A failure (a reader
/// holding the trail's lock past the function's lock_timeout, say) is logged and tried again
/// in five minutes; partitions exist two days ahead, so that is time enough.
fn maintain_partitions_if_due(next: &mut Instant) {
    if Instant::now() < *next {
        return;
    }
    let result = BackgroundWorker::transaction(|| {
        in_subtransaction(|| {
            let retention = gucs::retention_minutes();
            let dropped = Spi::connect_mut(|client| {
                let rows = client.update(
                    "SELECT jsonb_build_object('partition', partition, 'range_from', range_from, 'range_to', range_to,
                                               'rows', rows, 'first_id', first_id, 'last_id', last_id,
                                               'anchors', anchors,
                                               'retention', justify_hours(make_interval(mins => $1))::text)::text
                       FROM activity_log._maintain_partitions(make_interval(mins => $1))",
                    None,
                    &[retention.into()],
                )?;
                rows.map(|r| r.get::<String>(1).map(Option::unwrap_or_default))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_else(|e| error!("{e}"));
            if dropped.is_empty() {
                return;
            }
            let mut records = Rows::new(false);
            // SAFETY: reads the clock.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            for details in dropped {
                let details = serde_json::from_str(&details).unwrap_or(Value::Null);
                records.push_system(now, "info", "success", b"RETENTION", details);
            }
            records.insert();
        })
    });
    let again = match result {
        Ok(()) => Duration::from_secs(3600),
        Err(message) => {
            log!(
                "activity_log: could not maintain the partitions of activity_log.events: {message}"
            );
            Duration::from_secs(300)
        }
    };
    *next = Instant::now() + again;
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

/// A batch of fewer records than this costs noticeably more per record: a batch's own work
/// (its transaction, opening the partition and its indexes, the chain's head, the rollup
/// upsert) is about 2 million instructions, as much as storing 28 pgbench rows.
fn small_batch() -> u64 {
    gucs::batch_size() as u64 / 4
}

/// What one call of [`drain`] did.
struct Drained {
    written: u64,
    /// Committed frames were left for the next round (see drain).
    left_some: bool,
}

/// drain writes batches until the ring holds no committed frame at its tail, and takes the
/// staged transactions no announcement in the ring stands for, merged with the ring's frames
/// by their commit order key (see ring/mod.rs): before each ring batch, the staged
/// transactions whose key is not above the ring's next frame's ([`drain_staged`]), and a ring
/// batch ends before the first frame whose key is above a staged transaction's. After the
/// first batch it leaves a small one for the next round: while a batch is written, commits go
/// on, so chasing them would write ever smaller batches (under pgbench, five per round, most of
/// a few dozen records).
fn drain(slot: usize) -> Drained {
    let mut written = 0;
    let mut first = true;
    while still_mine(slot) {
        if sweeping(slot) {
            let (n, taken) = drain_staged(slot, ring::next_key(slot));
            written += n;
            if taken {
                continue;
            }
        }
        let mut batch = ring::read(slot, gucs::batch_size());
        // Read after the batch: a drop that happened before a frame of the batch was
        // reserved is counted by now, so its gap record precedes every later record.
        let (dropped, unreported) = ring::unreported_drops(slot);
        if unreported > 0 {
            BackgroundWorker::transaction(|| write_drop_gap(unreported));
            ring::mark_drops_reported(slot, dropped);
        }
        if batch.end == ring::tail(slot) {
            break;
        }
        // A transaction that staged without an announcement may be visible and not yet
        // counted in staged_commits (until its commit callback): what commits through the ring
        // meanwhile may depend on it, so frames with a higher key wait. Read after the batch,
        // and before staged_commits (in sweeping, below).
        // SAFETY: process-local static.
        if let Some(key) = shared::staging_key(unsafe { MY_DB }) {
            batch.cut_above(key);
            if batch.end == ring::tail(slot) {
                // Its commit callback comes at once, or after its commit's WAL flush.
                // SAFETY: plain sleep.
                unsafe { pg_sys::pg_usleep(1_000) };
                continue;
            }
        }
        // Looked up after the ring was read: a staged transaction that a frame of the batch
        // depends on committed before that frame did, so it is seen.
        if sweeping(slot)
            && let Some(key) = first_staged_key(slot)
        {
            batch.cut_above(key);
            if batch.end == ring::tail(slot) {
                continue; // that staged transaction comes first
            }
        }
        if batch.announcement {
            written += store_announced(slot, &batch);
            // SAFETY: process-local static.
            ring::advance(slot, unsafe { MY_DB }, batch.end, 0);
            ring::reset_failures(slot);
            continue;
        }
        if !first && batch.records > 0 && batch.records < small_batch() {
            return Drained {
                written,
                left_some: true,
            };
        }
        if batch.records > 0 {
            write_batch(slot, Source::Ring(&batch));
            first = false;
        }
        // SAFETY: process-local static.
        ring::advance(slot, unsafe { MY_DB }, batch.end, batch.records);
        ring::reset_failures(slot);
        written += batch.records;
    }
    Drained {
        written,
        left_some: false,
    }
}

/// Which durable_queue rows the writer takes by commit order key: those of transactions no
/// announcement of this ring's turn (`$1`) stands for. `key` is a transaction's key (that of
/// its highest row), `announced` whether this turn's ring announced it. A committed row's key
/// is below the WAL insert position once it is visible; one above it was edited by hand, and
/// is taken first rather than wait for a position it may never reach.
const UNANNOUNCED: &str = "(SELECT ctid, xid, seq, octet_length(frame) AS bytes,
                CASE WHEN max(commit_lsn) OVER w > pg_catalog.pg_current_wal_insert_lsn()
                     THEN '0/0'::pg_catalog.pg_lsn ELSE max(commit_lsn) OVER w END AS key,
                coalesce(bool_or(ring_mark = $1) OVER w, false) AS announced
           FROM activity_log.durable_queue WINDOW w AS (PARTITION BY xid)) q";

/// first_staged_key is the lowest commit order key of the staged transactions no announcement
/// stands for, None when there are none.
fn first_staged_key(slot: usize) -> Option<u64> {
    BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<i64>(
            &format!("SELECT (min(key) - '0/0')::int8 FROM {UNANNOUNCED} WHERE NOT announced"),
            &[ring::claimed_at(slot).into()],
        )
        .unwrap_or_else(|e| error!("activity_log: could not read activity_log.durable_queue: {e}"))
        .map(|k| k as u64)
    })
}

/// has_announcements tells whether `batch` holds announcements of transactions staged in one
/// row.
fn has_announcements(batch: &ring::Batch) -> bool {
    batch.frames.iter().any(|f| announced_xid(f).is_some())
}

/// announced_xid is the transaction a frame announces: a frame with a record count whose
/// payload is its frame info alone.
fn announced_xid(frame: &ring::Frame) -> Option<u64> {
    if frame.nrecords == 0 {
        return None;
    }
    match record::decode_info(&frame.payload) {
        Ok((info, len)) if len == frame.payload.len() => Some(info.xid),
        _ => None,
    }
}

/// The durable_queue columns the writer takes with each staged row, in [`staged_frame`]'s
/// order; staged_at as PostgreSQL microseconds (extract gives an exact numeric); a key edited
/// above the WAL insert position as 0, as [`UNANNOUNCED`] takes it.
const STAGED_COLUMNS: &str = "xid::text, seq, records,
    (extract(epoch FROM staged_at) * 1000000)::int8 - 946684800000000, frame,
    CASE WHEN commit_lsn > pg_catalog.pg_current_wal_insert_lsn() THEN 0
         ELSE (commit_lsn - '0/0'::pg_catalog.pg_lsn)::int8 END";

/// staged_frame is a durable_queue row, read with [`STAGED_COLUMNS`], as a frame committed when
/// it was staged; its seal is checked when the batch is built (see [`check_frame`]).
fn staged_frame(row: &pgrx::spi::SpiHeapTupleData) -> Result<ring::Frame, pgrx::spi::Error> {
    let xid: String = row.get(1)?.unwrap_or_default();
    let staged = record::StagedRow {
        xid: xid.parse().unwrap_or_default(),
        seq: row.get(2)?,
        records: row.get::<i32>(3)?.unwrap_or_default() as u32,
        staged_at: row.get(4)?.unwrap_or_default(),
    };
    Ok(ring::Frame {
        commit_ts: staged.staged_at,
        key: row.get::<i64>(6)?.unwrap_or_default() as u64,
        pos: 0,
        nrecords: staged.records,
        payload: row.get(5)?.unwrap_or_default(),
        staged: Some(staged),
    })
}

/// with_staged_rows is `batch` with each announcement replaced by its transaction's staged
/// row, deleted from durable_queue in the batch's transaction. A row that is not there (only a
/// superuser's DELETE can do that) leaves a WARNING in the server log.
fn with_staged_rows(batch: &ring::Batch) -> ring::Batch {
    let xids: Vec<String> = batch
        .frames
        .iter()
        .filter_map(announced_xid)
        .map(|xid| xid.to_string())
        .collect();
    let mut staged = std::collections::HashMap::new();
    Spi::connect_mut(|client| {
        let rows = client.update(
            &format!(
                "DELETE FROM activity_log.durable_queue WHERE xid = ANY ($1::xid8[]) AND seq IS NULL
                 RETURNING {STAGED_COLUMNS}"
            ),
            None,
            &[xids.into()],
        )?;
        for row in rows {
            let frame = staged_frame(&row)?;
            if let Some(row) = &frame.staged {
                staged.insert(row.xid, frame);
            }
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| error!("activity_log: could not read activity_log.durable_queue: {e}"));
    let frames = batch
        .frames
        .iter()
        .map(|f| match announced_xid(f) {
            Some(xid) => match staged.remove(&xid) {
                // At the announcement's place and time.
                Some(row) => ring::Frame {
                    commit_ts: f.commit_ts,
                    key: f.key,
                    pos: f.pos,
                    ..row
                },
                None => {
                    warning!("activity_log: the staged records of transaction {xid} are missing from durable_queue");
                    f.clone()
                }
            },
            None => f.clone(),
        })
        .collect();
    ring::Batch {
        frames,
        records: batch.records,
        end: batch.end,
        announcement: false,
    }
}

/// store_announced stores the staged rows of the transaction an announcement (`batch`) stands
/// for, in their order, in as many batches as they need; the ring does not move past the
/// announcement meanwhile, so that what committed after the transaction is stored after it.
fn store_announced(slot: usize, batch: &ring::Batch) -> u64 {
    let frame = &batch.frames[0];
    let xid = match crate::record::decode_frame(&frame.payload) {
        Ok((info, _)) => info.xid,
        Err(e) => error!("activity_log: an announcement in the ring is unreadable: {e}"),
    };
    let xid = xid.to_string();
    let mut written = 0;
    loop {
        let stored = write_batch(
            slot,
            Source::Announced {
                xid: &xid,
                commit_ts: frame.commit_ts,
            },
        );
        ring::count_written(slot, stored.records);
        written += stored.records;
        if stored.pieces_of.is_none() || !still_mine(slot) {
            return written;
        }
    }
}

/// A sweep of durable_queue in progress: the staged_commits it must cover, the WAL insert
/// position read after them (every transaction counted had a lower key), and the transaction
/// staged in pieces it is taking, if any (its pieces are taken before anything else, so that
/// its records are one run in the trail).
struct Sweep {
    commits: u64,
    horizon: u64,
    pieces_of: Option<String>,
}

thread_local! {
    // The writer is single-threaded; a sweep may span several calls of drain_staged.
    static SWEEP: std::cell::RefCell<Option<Sweep>> = const { std::cell::RefCell::new(None) };
}

/// drain_staged stores one batch of the staged transactions no announcement in the ring stands
/// for (no ring had room, the database had none, or another turn's or a crashed server's ring
/// announced them), those whose commit order key is at most `bound` (the ring's next frame's,
/// see [`ring::next_key`]), in key order; returns the records stored and whether it took any.
/// Every transaction counted in `staged_commits` when the sweep began has a key below the
/// horizon read then: once nothing is left up to a bound at least that high, the count is
/// marked swept (flush() waits on it; a committing backend wakes a writer that has swept
/// everything).
fn drain_staged(slot: usize, bound: u64) -> (u64, bool) {
    let Some(pieces_of) = SWEEP.with_borrow_mut(|sweep| {
        if sweep.is_none() {
            let commits = ring::staged_commits(slot);
            if commits == ring::staged_swept(slot) {
                return None;
            }
            // SAFETY: reads the WAL insert position; no ERROR.
            let horizon = unsafe { crate::unguarded::GetXLogInsertRecPtr() };
            *sweep = Some(Sweep {
                commits,
                horizon,
                pieces_of: None,
            });
        }
        sweep.as_ref().map(|s| s.pieces_of.clone())
    }) else {
        return (0, false);
    };
    if !still_mine(slot) {
        return (0, false);
    }
    let stored = write_batch(
        slot,
        Source::Staged {
            pieces_of: pieces_of.as_deref(),
            bound,
        },
    );
    let taken = stored.taken;
    SWEEP.with_borrow_mut(|sweep| {
        if let Some(s) = sweep.as_mut() {
            s.pieces_of = stored.pieces_of.clone();
            if !taken && bound >= s.horizon {
                ring::mark_swept(slot, s.commits);
                *sweep = None;
            }
        }
    });
    if stored.records > 0 {
        ring::count_published(slot, stored.carried_over);
        ring::count_written(slot, stored.records);
        ring::reset_failures(slot);
    }
    (stored.records, taken)
}

/// sweeping tells whether durable_queue may hold transactions the writer has not taken yet.
fn sweeping(slot: usize) -> bool {
    SWEEP.with_borrow(Option::is_some) || ring::staged_commits(slot) != ring::staged_swept(slot)
}

/// Bytes of staged frames per record of batch_size in one batch (a pgbench transaction's frame
/// is about 300 bytes per row it changed).
const STAGED_BYTES_PER_RECORD: usize = 300;

/// What take_staged took: the batch, and the transaction staged in pieces whose remaining
/// pieces come next.
struct Taken {
    batch: ring::Batch,
    pieces_of: Option<String>,
}

/// lsn_text is a WAL position as pg_lsn's text.
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

/// take_staged deletes staged transactions that no announcement of this turn's ring (`mark`)
/// stands for and whose commit order key is at most `bound`, lowest key first, from
/// durable_queue and returns them as a batch; the delete commits with their trail rows. The
/// rest of a transaction staged in pieces (`pieces_of`) comes first. A batch holds at least one
/// transaction, at most `max_records` transactions and, beyond the first, about
/// STAGED_BYTES_PER_RECORD bytes per record of `max_records`: a record can hold many rows (one
/// per row a statement changed), so the frames' size, not their record count, says how much
/// work they are. A transaction staged in pieces is a batch (or several) of its own: see
/// [`take_pieces`].
fn take_staged(max_records: usize, pieces_of: Option<&str>, mark: i64, bound: u64) -> Taken {
    let mut batch = ring::Batch {
        frames: Vec::new(),
        records: 0,
        end: 0,
        announcement: false,
    };
    let mut more_pieces_of = None;
    let budget = max_records * STAGED_BYTES_PER_RECORD;
    Spi::connect_mut(|client| {
        if let Some(xid) = pieces_of {
            if take_pieces(client, xid, budget, None, &mut batch)? {
                more_pieces_of = Some(xid.to_string());
            }
            if !batch.frames.is_empty() {
                return Ok(());
            }
        }
        // Which rows: ctids and sizes only (octet_length reads no out-of-line value).
        let mut picked = Vec::new();
        let mut bytes = 0;
        let candidates = client.select(
            &format!(
                "SELECT ctid::text, bytes, xid::text, seq IS NOT NULL FROM {UNANNOUNCED}
                  WHERE NOT announced AND key <= $2::pg_lsn
                  ORDER BY key, xid, seq NULLS FIRST LIMIT $3"
            ),
            None,
            &[
                mark.into(),
                lsn_text(bound).into(),
                (max_records as i64).into(),
            ],
        )?;
        let mut first_pieces_of = None;
        for row in candidates {
            if row.get::<bool>(4)?.unwrap_or(false) {
                if picked.is_empty() {
                    first_pieces_of = row.get::<String>(3)?;
                }
                break;
            }
            // A row a crash happened with goes alone (worker/suspects.rs).
            let xid = row.get::<String>(3)?.unwrap_or_default();
            let alone = suspects::alone(xid.parse().unwrap_or_default(), None);
            if !picked.is_empty() && (bytes >= budget || alone) {
                break;
            }
            bytes += row.get::<i32>(2)?.unwrap_or(0).max(0) as usize;
            picked.push(row.get::<String>(1)?.unwrap_or_default());
            if alone {
                break;
            }
        }
        if let Some(xid) = first_pieces_of {
            // The transaction's pieces, in their order, before anything else.
            if take_pieces(client, &xid, budget, None, &mut batch)? {
                more_pieces_of = Some(xid);
            }
            return Ok(());
        }
        if picked.is_empty() {
            return Ok(());
        }
        let rows = client.update(
            &format!(
                "DELETE FROM activity_log.durable_queue WHERE ctid = ANY ($1::tid[])
                 RETURNING {STAGED_COLUMNS}"
            ),
            None,
            &[picked.into()],
        )?;
        for row in rows {
            let frame = staged_frame(&row)?;
            batch.records += frame.nrecords as u64;
            batch.frames.push(frame);
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| error!("activity_log: could not read activity_log.durable_queue: {e}"));
    // In commit order (rows come back in heap order).
    batch
        .frames
        .sort_by_key(|f| (f.key, f.staged.map(|s| s.xid).unwrap_or_default()));
    Taken {
        batch,
        pieces_of: more_pieces_of,
    }
}

/// take_pieces deletes the first rows (by seq) of the transaction `xid` staged in durable_queue
/// (one row, or pieces), about `budget` bytes and at least one, into `batch`; true when rows
/// are left. Every row is visible once one is (they commit together), so they are the whole
/// transaction. They take the time `commit_ts` (an announcement's), else that of the last
/// one, staged at pre-commit, which stays until the end (it has the highest seq).
fn take_pieces(
    client: &mut pgrx::spi::SpiClient,
    xid: &str,
    budget: usize,
    commit_ts: Option<i64>,
    batch: &mut ring::Batch,
) -> Result<bool, pgrx::spi::Error> {
    let mut picked = Vec::new();
    let mut bytes = 0;
    let mut last_ts = 0;
    let mut left = false;
    let mut pieces = client.select(
        "SELECT ctid::text, octet_length(frame),
                (extract(epoch FROM max(staged_at) OVER ()) * 1000000)::int8 - 946684800000000, seq
           FROM activity_log.durable_queue WHERE xid = $1::xid8 ORDER BY seq NULLS FIRST",
        None,
        &[xid.into()],
    )?;
    while let Some(row) = pieces.next() {
        // A piece a crash happened with goes alone (worker/suspects.rs).
        let alone = suspects::alone(xid.parse().unwrap_or_default(), row.get::<i64>(4)?);
        if !picked.is_empty() && (bytes >= budget || alone) {
            left = true;
            break;
        }
        bytes += row.get::<i32>(2)?.unwrap_or(0).max(0) as usize;
        last_ts = row.get::<i64>(3)?.unwrap_or_default();
        picked.push(row.get::<String>(1)?.unwrap_or_default());
        if alone {
            left = pieces.next().is_some();
            break;
        }
    }
    if picked.is_empty() {
        return Ok(false);
    }
    let commit_ts = commit_ts.unwrap_or(last_ts);
    let rows = client.update(
        &format!(
            "DELETE FROM activity_log.durable_queue WHERE ctid = ANY ($1::tid[])
             RETURNING {STAGED_COLUMNS}"
        ),
        None,
        &[picked.into()],
    )?;
    let mut frames = Vec::new();
    for row in rows {
        let frame = ring::Frame {
            commit_ts,
            ..staged_frame(&row)?
        };
        batch.records += frame.nrecords as u64;
        frames.push(frame);
    }
    frames.sort_by_key(|f| f.staged.and_then(|s| s.seq).unwrap_or(-1));
    batch.frames.extend(frames);
    Ok(left)
}

/// drain_before_exit also waits, briefly, for frames of transactions still committing.
fn drain_before_exit(slot: usize) {
    let started = Instant::now();
    while still_mine(slot) && ring::has_frames(slot) && started.elapsed() < Duration::from_secs(10)
    {
        if !drain(slot).left_some && ring::has_frames(slot) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Where a batch comes from.
enum Source<'a> {
    /// Frames already read from the ring; the tail moves after the commit.
    Ring(&'a ring::Batch),
    /// Staged transactions no announcement stands for with commit order keys up to `bound`,
    /// taken from durable_queue inside the batch's transaction; the rest of the transaction
    /// `pieces_of` first.
    Staged {
        pieces_of: Option<&'a str>,
        bound: u64,
    },
    /// The staged rows of the transaction `xid`, announced in the ring at `commit_ts`.
    Announced { xid: &'a str, commit_ts: i64 },
}

/// What one batch transaction stored.
#[derive(Default)]
struct Stored {
    records: u64,
    /// Records staged before this shared memory existed (never counted as published in it:
    /// the leftovers of a crash).
    carried_over: u64,
    /// Staged rows were taken (a batch of staged transactions).
    taken: bool,
    /// The transaction staged in pieces whose remaining pieces come next.
    pieces_of: Option<String>,
}

/// write_batch inserts one batch in its own transaction. An ERROR is noted in the metrics and
/// then ends the process (the launcher restarts it): the tail has not moved and the staged
/// rows are not deleted, so the same records are written by the next writer.
fn write_batch(slot: usize, source: Source) -> Stored {
    // The same batch failed before, not for a passing reason: store it record by record, so
    // that one record the table refuses (a constraint or trigger someone added, say) cannot
    // hold up the rest.
    let isolate =
        ring::failures(slot) >= ISOLATE_AFTER_FAILURES && !ring::last_error_transient(slot);
    let stored = PgTryBuilder::new(|| {
        BackgroundWorker::transaction(|| {
            let staged;
            let mut pieces_of = None;
            let spliced;
            let batch = match source {
                Source::Ring(batch) if has_announcements(batch) => {
                    spliced = with_staged_rows(batch);
                    &spliced
                }
                Source::Ring(batch) => batch,
                Source::Staged {
                    pieces_of: of,
                    bound,
                } => {
                    let taken = take_staged(gucs::batch_size(), of, ring::claimed_at(slot), bound);
                    (staged, pieces_of) = (taken.batch, taken.pieces_of);
                    &staged
                }
                Source::Announced { xid, commit_ts } => {
                    let mut batch = ring::Batch {
                        frames: Vec::new(),
                        records: 0,
                        end: 0,
                        announcement: false,
                    };
                    let budget = gucs::batch_size() * STAGED_BYTES_PER_RECORD;
                    let left = Spi::connect_mut(|client| {
                        take_pieces(client, xid, budget, Some(commit_ts), &mut batch)
                    })
                    .unwrap_or_else(|e| {
                        error!("activity_log: could not read activity_log.durable_queue: {e}")
                    });
                    pieces_of = left.then(|| xid.to_string());
                    staged = batch;
                    &staged
                }
            };
            if batch.frames.is_empty() {
                return Stored::default();
            }
            suspects::reading(batch.frames.iter().filter_map(|f| f.staged.as_ref()));
            // Decoding row images needs the catalog, so the batch is built in the transaction.
            let rows = Rows::from_batch(batch, isolate);
            if isolate {
                rows.insert_one_by_one()
            } else {
                rows.insert()
            }
            let carried_over = match source {
                Source::Ring(_) | Source::Announced { .. } => 0,
                Source::Staged { .. } => batch.carried_over(shared::started_at()),
            };
            Stored {
                records: batch.records,
                carried_over,
                taken: true,
                pieces_of,
            }
        })
    })
    .catch_others(|e| {
        suspects::done();
        ring::note_write_error(slot, &error_message(&e), is_transient(&e));
        e.rethrow()
    })
    .execute();
    suspects::done();
    stored
}

/// Consecutive failed runs after which the writer stores a batch record by record.
const ISOLATE_AFTER_FAILURES: u32 = 2;

/// dead_letter keeps a row the trail refused in activity_log.dead_letters (as jsonb of the
/// trail's row type); returns its id, or None when even that fails (the gap record says why).
fn dead_letter(trail: &Trail, row: &Row, what: &str, error: &str) -> Option<i64> {
    let mut id = None;
    let kept = in_subtransaction(|| {
        let text = trail.as_text(row);
        id = Spi::get_one_with_args::<i64>(
            "INSERT INTO activity_log.dead_letters (committed_at, what, error, record)
             SELECT (r).committed_at, $1, $2, to_jsonb(r) FROM (SELECT $3::activity_log.events AS r) x
             RETURNING id",
            &[what.into(), error.into(), text.into()],
        )
        .ok()
        .flatten();
    });
    kept.ok().and(id)
}

/// check_frame validates a frame before any of it is decoded, and splits it into its frame
/// info and records: a staged frame's seal against its row (see record.rs), the frame's
/// structure, a staged frame's record count and transaction id against its row, and every
/// row image against the columns it is described by, and those against their types, so that
/// no length in the frame can make the decoder read past a buffer.
fn check_frame<'a>(
    decoder: &mut decode::Decoder<'a>,
    frame: &'a ring::Frame,
) -> Result<(record::FrameInfo, Vec<record::Record<'a>>), String> {
    let payload = match &frame.staged {
        Some(row) => record::unseal(&frame.payload, row).map_err(|e| e.0.into_owned())?,
        None => &frame.payload[..],
    };
    let (info, records) = record::decode_frame(payload).map_err(|e| e.0.into_owned())?;
    if let Some(row) = &frame.staged {
        if records.len() != row.records as usize {
            return Err(format!(
                "it holds {} records, its row says {}",
                records.len(),
                row.records
            ));
        }
        if info.xid != row.xid {
            return Err(format!(
                "it is of transaction {}, its row says {}",
                info.xid, row.xid
            ));
        }
    }
    for (n, rec) in records.iter().enumerate() {
        if let Body::Change(ch) = &rec.body {
            let table = || format!("{}.{}", text(&ch.schema), text(&ch.table));
            ch.check_images()
                .and_then(|()| decoder.check_types(&ch.columns))
                .map_err(|e| format!("record {} (a change of {}): {}", n + 1, table(), e.0))?;
        }
    }
    Ok((info, records))
}

/// dead_letter_frame keeps a frame that could not be read in activity_log.dead_letters: its
/// bytes as they were (seal included), and its durable_queue row's other columns.
fn dead_letter_frame(frame: &ring::Frame, what: &str, error: &str) -> Result<i64, String> {
    let mut id = None;
    let (row, staged_at) = match &frame.staged {
        Some(row) => (
            json!({ "xid": row.xid, "seq": row.seq, "records": row.records }),
            Some(row.staged_at),
        ),
        None => (json!({ "records": frame.nrecords }), None),
    };
    in_subtransaction(|| {
        id = Spi::get_one_with_args::<i64>(
            "INSERT INTO activity_log.dead_letters (committed_at, what, error, record, frame)
             SELECT epoch + $1 * interval '1 microsecond', $2, $3,
                    $4::jsonb || CASE WHEN $6 IS NULL THEN '{}'
                                      ELSE jsonb_build_object('staged_at', epoch + $6 * interval '1 microsecond') END,
                    $5
               FROM (SELECT timestamptz '2000-01-01 00:00:00+00' AS epoch) e
             RETURNING id",
            &[
                frame.commit_ts.into(),
                what.into(),
                error.into(),
                row.to_string().into(),
                frame.payload.as_slice().into(),
                staged_at.into(),
            ],
        )
        .unwrap_or_else(|e| error!("{e}"));
    })?;
    id.ok_or_else(|| "no id returned".to_string())
}

/// write_gap_event records that a crash-restart or an unclean stop lost whatever was queued: records committed
/// after the newest one stored (lost_after) and before shared memory was made anew
/// (lost_before) may be missing.
fn write_gap_event() {
    let window = Spi::get_one_with_args::<String>(
        "SELECT jsonb_build_object(
                    'lost_after', (SELECT committed_at FROM activity_log.events ORDER BY id DESC LIMIT 1),
                    'lost_before', timestamptz '2000-01-01 00:00:00+00' + make_interval(secs => $1::float8 / 1e6))::text",
        &[shared::started_at().into()],
    )
    .unwrap_or_else(|e| error!("activity_log: could not read the trail: {e}"))
    .unwrap_or_default();
    let reason = if shared::crash_generation() > 0 {
        "the server restarted after a crash; records that were in shared memory were lost"
    } else {
        "the server stopped before the rings were drained (immediate shutdown, killed postmaster or power loss); records that were in shared memory were lost"
    };
    let mut details = json!({
        "reason": reason,
        "shared_memory_started_at_us": shared::started_at(),
        "crash_restarts": shared::crash_generation(),
        "unclean_stop": shared::unclean_stop(),
    });
    if let (Some(d), Ok(Value::Object(w))) =
        (details.as_object_mut(), serde_json::from_str(&window))
    {
        d.extend(w);
    }
    let mut gap = Rows::new(false);
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    gap.push_gap(now, details);
    gap.insert();
}

/// write_drop_gap records that `dropped` records were dropped since the last such record.
fn write_drop_gap(dropped: u64) {
    let mut gap = Rows::new(false);
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    gap.push_gap(
        now,
        json!({
            "reason": "records were dropped: committed transactions' records when the ring was full under activity_log.overflow = drop, or failed statements' records of rolled-back transactions while the database had no ring",
            "dropped_records": dropped,
        }),
    );
    gap.insert();
}

/// gap_details is the `details` of a gap record of a tracked table. Its note is the reason, or
/// a JSON object with a `reason` and more facts (logical replication: the counts, the
/// subscription and the origin, capture/replication.rs), which `details` then carries too.
fn gap_details(note: &[u8]) -> String {
    let mut details = Map::new();
    details.insert("rows_captured".into(), Value::Bool(false));
    match serde_json::from_slice::<Value>(note) {
        Ok(Value::Object(facts)) if facts.contains_key("reason") => details.extend(facts),
        _ => {
            details.insert("reason".into(), Value::String(text(note)));
        }
    }
    Value::Object(details).to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// parse_json_or_string keeps valid JSON as is and wraps anything else as a JSON string.
fn parse_json_or_string(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| Value::String(text(b)))
}

/// The parts of one row that every kind of record has.
struct Common<'a> {
    committed_at: i64,
    info: &'a record::FrameInfo,
    origin: &'a record::Origin<'a>,
}

/// The trail rows of one batch, in ring order.
struct Rows {
    /// Decode row images one change at a time, in subtransactions (see from_batch).
    isolate: bool,
    rows: Vec<Row>,
    /// With `isolate`: each row's commit time and what it is, for the gap record that replaces
    /// it if the table refuses it.
    labels: Vec<(i64, String)>,
    /// What the rollups need of each row, and the categories it names.
    facts: Vec<Fact>,
    categories: Categories,
    /// Role names as text, looked up once per batch.
    users: HashMap<u32, pg_sys::Datum>,
    /// Texts made in this batch, by content. Most repeat from row to row (kind, status,
    /// application, command, the table's names), and rows can share one as the rows of a
    /// statement share their common columns; each text costs a guarded call into PostgreSQL.
    texts: HashMap<Vec<u8>, pg_sys::Datum>,
    /// The text each column got last, by [`Col`]: most rows repeat the row before them, and
    /// comparing the bytes costs a tenth of hashing them for `texts`.
    last_texts: Vec<(Vec<u8>, Option<pg_sys::Datum>)>,
    /// changed_columns arrays made in this batch, by content (see [`Rows::changed_columns`]).
    changed: Vec<(Vec<String>, pg_sys::Datum)>,
}

/// The changed_columns arrays a batch keeps: enough for the tables and update shapes of a
/// busy batch, few enough that looking one up stays cheaper than making it.
const MAX_CHANGED_SETS: usize = 32;

impl Rows {
    fn new(isolate: bool) -> Rows {
        Rows {
            isolate,
            rows: Vec::new(),
            labels: Vec::new(),
            facts: Vec::new(),
            categories: Categories::default(),
            users: HashMap::new(),
            texts: HashMap::new(),
            changed: Vec::new(),
            last_texts: vec![(Vec::new(), None); store::NCOLS],
        }
    }

    /// from_batch builds the rows of a batch. A frame that is not valid ([`check_frame`])
    /// becomes a dead letter and a gap record at its place; the other frames are stored. With
    /// `isolate`, row images that cannot be decoded (their type was dropped, say) become a gap
    /// record instead of failing the batch.
    fn from_batch<'a>(batch: &'a ring::Batch, isolate: bool) -> Rows {
        let mut r = Rows::new(isolate);
        let mut decoder = decode::Decoder::new();
        for frame in &batch.frames {
            if frame.staged.as_ref().is_some_and(suspects::condemned) {
                r.quarantine(frame, "the server crashed twice while the writer read it, the second time alone, so it is not read again (see the server log)");
                continue;
            }
            match check_frame(&mut decoder, frame) {
                // An announcement whose row with_staged_rows did not find: say so in the trail.
                Ok((info, records))
                    if records.is_empty() && frame.staged.is_none() && frame.nrecords > 0 =>
                {
                    let reason = format!(
                        "the records of transaction {} were announced in the ring but are missing from activity_log.durable_queue (deleted by hand?)",
                        info.xid
                    );
                    r.push_gap(
                        frame.commit_ts,
                        json!({ "reason": reason, "xid": info.xid, "records": frame.nrecords }),
                    );
                }
                Ok((info, mut records)) => {
                    order_changes(&mut records);
                    let push = |r: &mut Rows, decoder: &mut decode::Decoder<'a>| {
                        for rec in &records {
                            let c = Common {
                                committed_at: frame.commit_ts,
                                info: &info,
                                origin: &rec.origin,
                            };
                            r.push(decoder, c, &rec.body);
                        }
                    };
                    if !isolate {
                        push(&mut r, &mut decoder);
                        continue;
                    }
                    // The batch failed before: a frame whose records raise an ERROR (a value
                    // its type's functions refuse, in a frame whose seal was forged) is kept
                    // aside like an unreadable one, unless the error says nothing about it.
                    let mark = r.mark();
                    if let Err(e) = try_in_subtransaction(|| push(&mut r, &mut decoder)) {
                        if is_transient(&e) {
                            e.rethrow();
                        }
                        r.rewind(mark);
                        decoder.forget();
                        r.quarantine(frame, &error_message(&e));
                    }
                }
                Err(e) => r.quarantine(frame, &e),
            }
        }
        r
    }

    /// mark is where the rows end now, for [`Rows::rewind`].
    fn mark(&self) -> usize {
        self.rows.len()
    }

    /// rewind forgets the rows made since `mark`, in a subtransaction that was rolled back,
    /// and every value cached since, which went with it.
    fn rewind(&mut self, mark: usize) {
        self.rows.truncate(mark);
        self.facts.truncate(mark);
        self.labels.truncate(mark);
        self.users.clear();
        self.texts.clear();
        self.changed.clear();
        self.last_texts = vec![(Vec::new(), None); store::NCOLS];
    }

    /// quarantine keeps a frame that is not valid in activity_log.dead_letters, as it is, and
    /// records in the trail that its records are missing and why.
    fn quarantine(&mut self, frame: &ring::Frame, error: &str) {
        let what = match &frame.staged {
            Some(row) => match row.seq {
                None => format!(
                    "the records of transaction {} staged in activity_log.durable_queue",
                    row.xid
                ),
                Some(seq) => format!(
                    "the records of transaction {} staged in activity_log.durable_queue (piece {seq})",
                    row.xid
                ),
            },
            None => "the records of a frame in the ring".to_string(),
        };
        let letter = dead_letter_frame(frame, &what, error);
        let reason = match &letter {
            Ok(id) => format!(
                "{what} could not be read, and are not in the trail: {error}; the frame is kept as activity_log.dead_letters id {id}"
            ),
            Err(e) => format!(
                "{what} could not be read, and are not in the trail: {error}; the frame could not be kept either: {e}"
            ),
        };
        warning!("activity_log: {reason}");
        let mut details = json!({ "reason": reason, "records": frame.nrecords });
        if let Some(row) = &frame.staged {
            details["xid"] = json!(row.xid);
            details["seq"] = json!(row.seq);
        }
        if let Ok(id) = letter {
            details["dead_letter"] = json!(id);
        }
        self.push_gap(frame.commit_ts, details);
    }

    #[allow(clippy::too_many_arguments)]
    fn keep(
        &mut self,
        row: Row,
        ts: i64,
        committed_at: i64,
        kind: &'static str,
        category: &[u8],
        status: &'static str,
        duration_us: Option<i64>,
        command: Option<&[u8]>,
    ) {
        let category = self.categories.id(category);
        self.facts.push(Fact {
            ts,
            kind,
            category,
            status,
            duration_us,
        });
        if self.isolate {
            let command = text(command.unwrap_or(b"?"));
            self.labels
                .push((committed_at, format!("{kind} record \"{command}\"")));
        }
        self.rows.push(row);
    }

    fn user(&mut self, role: u32) -> pg_sys::Datum {
        *self
            .users
            .entry(role)
            .or_insert_with(|| store::text_value(store::user_name(role).as_bytes()))
    }

    /// text sets a column to a text this batch made already, or makes it.
    fn text(&mut self, row: &mut Row, c: Col, s: &[u8]) {
        let last = &mut self.last_texts[c as usize];
        let text = match last.1 {
            Some(text) if last.0 == s => text,
            _ => {
                let text = match self.texts.get(s) {
                    Some(&text) => text,
                    None => *self
                        .texts
                        .entry(s.to_vec())
                        .or_insert_with(|| store::text_value(s)),
                };
                last.0.clear();
                last.0.extend_from_slice(s);
                last.1 = Some(text);
                text
            }
        };
        row.shared(c, text);
    }

    /// changed_columns sets a change's changed_columns to an array this batch made already,
    /// or makes it: a table's updates mostly change the same columns, and an array costs a
    /// call into PostgreSQL per name and one more to build it.
    fn changed_columns(&mut self, row: &mut Row, names: Vec<String>) {
        let array = match self.changed.iter().find(|(seen, _)| *seen == names) {
            Some(&(_, array)) => array,
            None => {
                let array = store::text_array(&names);
                if self.changed.len() < MAX_CHANGED_SETS {
                    self.changed.push((names, array));
                }
                array
            }
        };
        row.shared(Col::ChangedColumns, array);
    }

    /// row starts a trail row with the columns every kind of record has.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        c: &Common,
        ts: i64,
        kind: &str,
        category: &[u8],
        severity: &[u8],
        status: &str,
        command: Option<&[u8]>,
        details: Option<&str>,
    ) -> Row {
        let o = c.origin;
        let mut row = Row::default();
        row.timestamp(Col::Ts, ts);
        row.timestamp(Col::CommittedAt, c.committed_at);
        self.text(&mut row, Col::Kind, kind.as_bytes());
        self.text(&mut row, Col::Category, category);
        self.text(&mut row, Col::Severity, severity);
        self.text(&mut row, Col::Status, status.as_bytes());
        let db_user = self.user(o.session_user);
        row.shared(Col::DbUser, db_user);
        let effective_user = self.user(o.current_user);
        row.shared(Col::EffectiveUser, effective_user);
        if let Some(actor) = o.actor.as_deref() {
            self.text(&mut row, Col::Actor, actor);
        }
        self.text(&mut row, Col::ApplicationName, &o.application_name);
        let json =
            |b: &Option<record::Bytes>| b.as_deref().map(|b| parse_json_or_string(b).to_string());
        if let Some(j) = json(&o.context) {
            row.json_text(Col::Context, &j);
        }
        if let Some(j) = json(&o.jwt_claims) {
            row.json_text(Col::JwtClaims, &j);
        }
        if let Some(addr) = &c.info.client_addr {
            row.inet(Col::ClientAddr, addr);
        }
        row.int4(Col::BackendPid, c.info.pid);
        if c.info.xid != 0 {
            row.int8(Col::Xid, c.info.xid as i64);
        }
        if let Some(command) = command {
            self.text(&mut row, Col::Command, command);
        }
        if let Some(d) = details {
            row.json_text(Col::Details, d);
        }
        row
    }

    fn push<'a>(&mut self, decoder: &mut decode::Decoder<'a>, c: Common, body: &Body<'a>) {
        match body {
            Body::Statement(s) => {
                let failed = s.sqlstate.is_some();
                let (kind, category) = match s.class {
                    StatementClass::Ddl => ("ddl", "schema_change"),
                    StatementClass::Mod => ("statement", "data_change"),
                    StatementClass::Other => ("statement", "data_access"),
                };
                let details = s
                    .error_message
                    .as_deref()
                    .map(|m| json!({ "error": text(m) }).to_string());
                let mut row = self.row(
                    &c,
                    s.ts,
                    kind,
                    category.as_bytes(),
                    if failed { b"error" } else { b"info" },
                    if failed { "error" } else { "success" },
                    (!s.command.is_empty()).then_some(&s.command[..]),
                    details.as_deref(),
                );
                if let Some(code) = &s.sqlstate {
                    row.text(Col::Sqlstate, code);
                }
                if !s.relations.is_empty() {
                    let names: Vec<String> = s
                        .relations
                        .iter()
                        .map(|&r| store::relation_name(r))
                        .collect();
                    row.text_array(Col::Relations, &names);
                }
                if !s.query.is_empty() {
                    row.text(Col::Query, &s.query);
                }
                if s.query_id != 0 {
                    row.int8(Col::QueryId, s.query_id);
                }
                if let Some(n) = s.rows {
                    row.int8(Col::Rows, n);
                }
                let duration_us = (!failed).then_some(s.duration_us);
                if let Some(us) = duration_us {
                    row.float8(Col::DurationMs, us as f64 / 1000.0);
                }
                let status = if failed { "error" } else { "success" };
                self.keep(
                    row,
                    s.ts,
                    c.committed_at,
                    kind,
                    category.as_bytes(),
                    status,
                    duration_us,
                    Some(&s.command),
                );
            }
            Body::Event(e) => {
                // `data` is the jsonb text log_event got from jsonb_out, spliced in as it is:
                // parsed here (serde_json's numbers are f64) it would not stay exact.
                let mut details = Map::new();
                details.insert("action".into(), Value::String(text(&e.action)));
                if let Some(t) = &e.entity_type {
                    details.insert("entity_type".into(), Value::String(text(t)));
                }
                if let Some(id) = &e.entity_id {
                    details.insert("entity_id".into(), Value::String(text(id)));
                }
                let mut details = Value::Object(details).to_string();
                details.pop(); // the closing brace
                details.push_str(", \"data\": ");
                details.push_str(&String::from_utf8_lossy(&e.details));
                details.push('}');
                let row = self.row(
                    &c,
                    e.ts,
                    "event",
                    &e.category,
                    &e.severity,
                    "success",
                    Some(&e.action),
                    Some(&details),
                );
                self.keep(
                    row,
                    e.ts,
                    c.committed_at,
                    "event",
                    &e.category,
                    "success",
                    None,
                    Some(&e.action),
                );
            }
            Body::Change(ch) => {
                let op = match ch.op {
                    Op::Insert => "INSERT",
                    Op::Update => "UPDATE",
                    Op::Delete => "DELETE",
                    Op::Truncate => "TRUNCATE",
                    Op::TruncatePartition => "TRUNCATE PARTITION",
                    Op::Copy => "COPY",
                    Op::Gap => "GAP",
                };
                // TRUNCATE and COPY have no images: one record for the statement.
                let mut decode = || {
                    decoder.decode_change(
                        &ch.columns,
                        &ch.key_columns,
                        &ch.exclude_columns,
                        &ch.rows,
                    )
                };
                let images = if ch.rows.is_empty() {
                    vec![decode::ChangeRow::default()]
                } else if self.isolate {
                    let mut decoded = Vec::new();
                    if let Err(message) = in_subtransaction(|| decoded = decode()) {
                        // Row types made in the subtransaction went with it.
                        decoder.forget();
                        let what = format!("{}.{}", text(&ch.schema), text(&ch.table));
                        let reason = format!("{op} rows of {what} could not be decoded: {message}");
                        self.push_gap(c.committed_at, json!({ "reason": reason }));
                        return;
                    }
                    decoded
                } else {
                    decode()
                };
                let details = match ch.op {
                    Op::Copy => {
                        let note = if ch.note.is_empty() {
                            "COPY FROM bypassed row capture: the loaded rows are counted, not recorded".into()
                        } else {
                            text(&ch.note)
                        };
                        Some(json!({ "rows_captured": false, "note": note }).to_string())
                    }
                    Op::Gap => Some(gap_details(&ch.note)),
                    // What capture noted of the TRUNCATE (the partition, RESTART IDENTITY).
                    Op::Truncate | Op::TruncatePartition if !ch.note.is_empty() => {
                        Some(text(&ch.note))
                    }
                    _ => None,
                };
                // A gap is a system record about the table, not a change of it; so is a
                // change of what is tracked (capture/tracked.rs).
                let own = &ch.schema[..] == b"activity_log";
                let tracking = own && &ch.table[..] == b"tracked_tables";
                let redaction = own && &ch.table[..] == b"redactions";
                let (kind, category, severity, status) = if ch.op == Op::Gap {
                    ("system", "data_change", "critical", "gap")
                } else if tracking || redaction {
                    ("system", "configuration", "notice", "success")
                } else {
                    ("change", "data_change", "info", "success")
                };
                let op = match ch.op {
                    Op::Insert | Op::Copy if tracking => "TRACK",
                    Op::Update if tracking => "RETRACK",
                    Op::Delete | Op::Truncate if tracking => "UNTRACK",
                    Op::Insert if redaction => "REDACT",
                    _ => op,
                };
                // The parts all rows of the statement share.
                let mut first = self.row(
                    &c,
                    ch.ts,
                    kind,
                    category.as_bytes(),
                    severity.as_bytes(),
                    status,
                    Some(op.as_bytes()),
                    details.as_deref(),
                );
                if !ch.query.is_empty() {
                    first.text(Col::Query, &ch.query);
                }
                self.text(&mut first, Col::SchemaName, &ch.schema);
                self.text(&mut first, Col::TableName, &ch.table);
                first.oid(Col::TableOid, ch.relid);
                // COPY's rows loaded, a gap's rows known to be missing.
                if ch.op == Op::Copy || (ch.op == Op::Gap && ch.row_count > 0) {
                    first.int8(Col::Rows, ch.row_count);
                }
                for image in images {
                    let mut row = first.clone();
                    if let Some(key) = &image.new_key {
                        row.json_text(Col::Details, &format!("{{\"new_key\": {key}}}"));
                    }
                    row.jsonb(Col::OldRow, image.old_row);
                    row.jsonb(Col::NewRow, image.new_row);
                    row.jsonb(Col::RowKey, image.row_key);
                    if let Some(names) = image.changed_columns {
                        self.changed_columns(&mut row, names);
                    }
                    self.keep(
                        row,
                        ch.ts,
                        c.committed_at,
                        kind,
                        category.as_bytes(),
                        status,
                        None,
                        Some(op.as_bytes()),
                    );
                }
            }
        }
    }

    fn push_gap(&mut self, committed_at: i64, details: Value) {
        self.push_system(committed_at, "critical", "gap", b"GAP", details);
    }

    /// push_system adds a record of the pipeline itself (kind and category `system`).
    fn push_system(
        &mut self,
        committed_at: i64,
        severity: &str,
        status: &'static str,
        command: &'static [u8],
        details: Value,
    ) {
        let info = record::FrameInfo::default();
        let origin = record::Origin::default();
        let c = Common {
            committed_at,
            info: &info,
            origin: &origin,
        };
        let details = details.to_string();
        let row = self.row(
            &c,
            committed_at,
            "system",
            b"system",
            severity.as_bytes(),
            status,
            Some(command),
            Some(&details),
        );
        self.keep(
            row,
            committed_at,
            committed_at,
            "system",
            b"system",
            status,
            None,
            Some(command),
        );
    }

    fn insert(self) {
        let mut trail = Trail::open();
        let mut rollups = Rollups::default();
        for (row, fact) in self.rows.iter().zip(&self.facts) {
            trail.insert(row);
            rollups.add(fact);
        }
        trail.close();
        rollups.store(&self.categories);
    }

    /// insert_one_by_one stores each record in its own subtransaction; a record the table
    /// refuses is replaced by a `gap` record that says why and what it was.
    fn insert_one_by_one(mut self) {
        let mut trail = Trail::open();
        trail.open_partitions(self.rows.iter());
        let mut rollups = Rollups::default();
        let stored = self.rows.iter().zip(&self.labels).zip(&self.facts);
        for ((row, (committed_at, what)), fact) in stored {
            if let Err(message) = in_subtransaction(|| {
                trail.insert(row);
                trail.flush();
            }) {
                trail.discard();
                let letter = dead_letter(&trail, row, what, &message);
                let mut gap = Rows::new(false);
                let reason = match letter {
                    Some(id) => format!(
                        "{what} could not be stored: {message} (kept as activity_log.dead_letters id {id})"
                    ),
                    None => format!("{what} could not be stored: {message}"),
                };
                gap.push_gap(*committed_at, json!({ "reason": reason }));
                trail.insert(&gap.rows[0]);
                trail.flush();
                rollups.add(&Fact {
                    category: self.categories.id(b"system"),
                    ..gap.facts[0]
                });
            } else {
                rollups.add(fact);
            }
        }
        trail.close();
        rollups.store(&self.categories);
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

#[cfg(test)]
mod tests {
    use super::gap_details;
    use serde_json::{Value, json};

    #[test]
    fn a_gap_note_is_its_reason_or_carries_its_facts() {
        let plain: Value = serde_json::from_str(&gap_details(b"the statement stopped")).unwrap();
        assert_eq!(
            plain,
            json!({ "rows_captured": false, "reason": "the statement stopped" })
        );
        let facts = br#"{"reason": "3 rows inserted", "inserted": 3, "subscription": "s"}"#;
        let with: Value = serde_json::from_str(&gap_details(facts)).unwrap();
        assert_eq!(
            with,
            json!({ "rows_captured": false, "reason": "3 rows inserted", "inserted": 3, "subscription": "s" })
        );
        // A JSON object without a reason is a reason like any other text.
        let odd: Value = serde_json::from_str(&gap_details(br#"{"x": 1}"#)).unwrap();
        assert_eq!(odd["reason"], r#"{"x": 1}"#);
    }
}
