//! worker/drain.rs: the writer's draining stage; owns where a batch comes from and the batch
//! transaction. The sources: committed frames at the ring's tail, the staged rows of a
//! transaction an announcement in the ring stands for, and the staged transactions in
//! durable_queue no announcement stands for (the sweep). A batch is one transaction: take
//! (staged rows are deleted in it), map (worker/map.rs), store, commit, and only then move the
//! ring's tail. A failed batch is noted in the ring's metrics and ends the process; after
//! [`ISOLATE_AFTER_FAILURES`] failed runs a batch is stored record by record, and staged
//! frames are named to worker/suspects.rs while they are read.
//!
//! Order: ring frames and durable_queue rows carry a commit order key (the WAL insert position
//! at PRE_COMMIT, see ring/mod.rs), and the writer stores them in its order: a staged row the
//! ring announced where the announcement is, the others ([`drain_staged`]) before the ring's
//! next frame when their key is not above it, a ring batch cut before a frame whose key is
//! above a staged row's. So `id` is the commit order of conflicting transactions.
//!
//! Runs in the writer only, called by its loop (worker/writer.rs); it builds no trail row
//! itself and never calls back into the loop.

use crate::errors::raise;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use crate::gucs;
use crate::record;
use crate::ring;
use crate::shared;
use crate::worker::maintain::write_drop_gap;
use crate::worker::map::Rows;
use crate::worker::pace;
use crate::worker::subxact::{error_message, is_transient};
use crate::worker::suspects;

/// The database this process writes for (set once when the writer starts).
pub(super) static mut MY_DB: u32 = 0;

pub(super) fn still_mine(slot: usize) -> bool {
    // SAFETY: process-local static.
    ring::slot_dboid(slot) == unsafe { MY_DB }
}

/// A batch of fewer records than this costs noticeably more per record: a batch's own work
/// (its transaction, opening the partition and its indexes, the chain's head, the rollup
/// upsert) is about 2 million instructions, as much as storing 28 pgbench rows.
pub(super) fn small_batch() -> u64 {
    gucs::batch_size() as u64 / 4
}

/// What one call of [`drain`] did.
pub(super) struct Drained {
    pub(super) written: u64,
    /// Committed frames were left for the next round (see drain).
    pub(super) left_some: bool,
}

/// drain writes batches until the ring holds no committed frame at its tail, and takes the
/// staged transactions no announcement in the ring stands for, merged with the ring's frames
/// by their commit order key (see ring/mod.rs): before each ring batch, the staged
/// transactions whose key is not above the ring's next frame's ([`drain_staged`]), and a ring
/// batch ends before the first frame whose key is above a staged transaction's. After the
/// first batch it leaves a small one for the next round: while a batch is written, commits go
/// on, so chasing them would write ever smaller batches (under pgbench, five per round, most of
/// a few dozen records).
pub(super) fn drain(slot: usize) -> Drained {
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
                // Its commit callback comes at once, or after its commit's WAL flush (or a
                // synchronous standby): it sets the writer's latch (capture/xact.rs), which the
                // loop waits on.
                return Drained {
                    written,
                    left_some: false,
                };
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
        .unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("activity_log: could not read activity_log.durable_queue: {e}"),
                None,
            )
        })
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
/// it was staged; its seal is checked when the batch is built (see check_frame in worker/map.rs).
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
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("activity_log: could not read activity_log.durable_queue: {e}"),
            None,
        )
    });
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
        Err(e) => raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("activity_log: an announcement in the ring is unreadable: {e}"),
            None,
        ),
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
pub(super) fn sweeping(slot: usize) -> bool {
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
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("activity_log: could not read activity_log.durable_queue: {e}"),
            None,
        )
    });
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
                        raise(
                            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                            format!("activity_log: could not read activity_log.durable_queue: {e}"),
                            None,
                        )
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
            // Only a ring batch that is not full is paced: a writer behind, or catching up on
            // durable_queue, works without pauses (and pace.rs stops them when hurried).
            let keeps_up =
                matches!(source, Source::Ring(b) if (b.records as usize) < gucs::batch_size())
                    && !isolate;
            let _paced = pace::begin(slot, keeps_up);
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
            if let Source::Ring(b) = source {
                // The last thing before COMMIT: if the writer dies between it and the tail's
                // move, the ring is not spilled again (ring/spill.rs).
                ring::committing(slot, b.end);
            }
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
