//! capture/pending.rs: what a backend collects before its transaction ends.
//!
//! Runs in every backend, on the write path. Owns the per-backend pending buffer: encoded
//! records of the open transaction, with a mark per open subtransaction so that ROLLBACK TO
//! SAVEPOINT drops exactly what the subtransaction added. Failed-statement records live in a
//! separate buffer because they outlive the transaction that failed.
//!
//! Memory stays bounded whatever the transaction's size: when the part of the buffer that the
//! current (sub)transaction owns passes [`SPILL_BYTES`], it is staged in durable_queue inside
//! that (sub)transaction (capture/durable.rs), so a rollback to a savepoint or an abort removes
//! exactly what it removes from the buffer, and a crash leaves nothing. A bulk statement's
//! Change record is cut into several records with the same header as it fills. Every piece
//! carries its position in the transaction (`seq`, a byte offset in the transaction's record
//! stream that only grows), so the writer stores the pieces in order however they were staged.
//! A transaction that staged a piece publishes the rest through durable_queue too.
//!
//! No `pg_sys` here: the hooks (`hooks.rs`) and transaction callbacks (`xact.rs`) translate
//! PostgreSQL state into plain values and call in.

use super::durable;
use crate::record::{Record, RowSink};
use crate::ring::Reservation;
use std::cell::RefCell;

#[derive(Default)]
struct Pending {
    /// Encoded records of the open top-level transaction.
    bytes: Vec<u8>,
    records: u32,
    /// (subtransaction id, bytes.len(), records, spilled_records) when each open
    /// subtransaction started.
    marks: Vec<(u32, usize, u32, u32)>,
    /// Failed-statement records; published when the top-level transaction ends, however it ends.
    failures: Vec<u8>,
    failure_records: u32,
    /// A change of a table tracked with durability 'sync' is pending: publish through
    /// durable_queue instead of the ring. Kept when a subtransaction that set it rolls back
    /// (staging is correct for any transaction, only slower).
    durable: bool,
    /// Application events of a role that is not a superuser are pending: the frame may fill
    /// only half the ring (ring::Share). Kept when a subtransaction rolls back, like durable.
    unprivileged_events: bool,
    /// Where the buffer's pieces start in the transaction's record stream, by offset: after a
    /// spill, the bytes that follow come later than what was staged. Empty: one run from 0.
    runs: Vec<Run>,
    /// Some records of the open transaction are staged in durable_queue already.
    spilled: bool,
    /// How many, less those whose subtransaction rolled back (for the published count).
    spilled_records: u32,
    /// The frame reserved at PRE_COMMIT, made visible at COMMIT or voided at ABORT.
    reservation: Option<Reservation>,
    /// Set at PRE_COMMIT when the records were staged.
    staged: Option<Staged>,
}

/// A transaction's records staged in durable_queue at PRE_COMMIT, for its commit callback.
#[derive(Clone, Copy, Debug)]
pub(super) struct Staged {
    /// The ring to notify, if the database had one.
    pub(super) slot: Option<usize>,
    pub(super) records: u32,
    /// No announcement in the ring stands for it: the writer finds it by sweeping, and it is
    /// counted in shared::staging_begins until the callback.
    pub(super) unannounced: bool,
}

/// A piece of the pending buffer from `offset` on, at `seq` in the transaction's record stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    offset: usize,
    seq: u64,
}

/// A (sub)transaction stages its part of the pending buffer when it grows beyond this: the bound
/// on a backend's pending records is this much per open subtransaction level (plus one row,
/// and plus what accumulates while staging is impossible: in parallel mode, or before the
/// extension exists in the database).
pub const SPILL_BYTES: usize = 1 << 20;

/// Whose part of the pending buffer to stage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Level {
    /// The running (sub)transaction's own records.
    Current,
    /// The parent's and the running subtransaction's records, from the parent's mark on: at
    /// PRE_COMMIT_SUB, where the subtransaction's records become the parent's (what is staged
    /// then goes with the subtransaction's xid, which commits or aborts with the parent).
    Parent,
}

impl Pending {
    /// part_start is where `level`'s part of the buffer starts.
    fn part_start(&self, level: Level) -> usize {
        let skip = match level {
            Level::Current => 0,
            Level::Parent => 1,
        };
        self.marks
            .iter()
            .rev()
            .nth(skip)
            .map_or(0, |&(_, len, _, _)| len)
    }

    /// seq_at is the position in the transaction's record stream of the byte at `offset`.
    fn seq_at(&self, offset: usize) -> u64 {
        match self.runs.iter().rev().find(|r| r.offset <= offset) {
            Some(r) => r.seq + (offset - r.offset) as u64,
            None => offset as u64,
        }
    }

    /// pieces lends each run of the buffer from `from` on (with its seq and record count) to
    /// `f`, in order: bytes staged from the middle of the buffer started a new run, and each
    /// run is a piece of its own.
    fn pieces<'a>(&'a self, from: usize, mut f: impl FnMut(u64, &'a [u8], u32)) {
        let mut starts = vec![Run {
            offset: from,
            seq: self.seq_at(from),
        }];
        starts.extend(self.runs.iter().filter(|r| r.offset > from));
        for (i, run) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(self.bytes.len(), |r| r.offset);
            let bytes = &self.bytes[run.offset..end];
            if !bytes.is_empty() {
                f(run.seq, bytes, count_records(bytes));
            }
        }
    }

    /// cut forgets the buffer from `from` on, which was staged; what follows comes after it.
    fn cut(&mut self, from: usize) {
        let staged = count_records(&self.bytes[from..]);
        let next = self.seq_at(self.bytes.len());
        self.runs.retain(|r| r.offset < from);
        self.runs.push(Run {
            offset: from,
            seq: next,
        });
        self.bytes.truncate(from);
        self.records -= staged;
        self.spilled = true;
        self.spilled_records += staged;
    }
}

/// count_records counts the length-prefixed records in `bytes`.
fn count_records(mut bytes: &[u8]) -> u32 {
    let mut n = 0;
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        bytes = &bytes[(4 + len).min(bytes.len())..];
        n += 1;
    }
    n
}

thread_local! {
    // PostgreSQL backends are single-threaded; the RefCell is never borrowed across a call
    // that could re-enter capture.
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// push adds a record to the open transaction, and stages the running (sub)transaction's part
/// of the buffer when it has grown beyond [`SPILL_BYTES`].
pub fn push(record: &Record) {
    PENDING.with_borrow_mut(|p| {
        record.encode(&mut p.bytes);
        p.records += 1;
    });
    spill_if_due(Level::Current);
}

/// push_rows adds a Change record whose row images `next_row` appends, one per call, until it
/// returns false. The buffer stays borrowed while `next_row` runs: it must not call back into
/// capture. When the buffer fills, the record is closed, staged, and continued in a new record
/// with the same header. An ERROR inside `next_row` leaves part of a record behind, which the
/// (sub)transaction's abort drops.
pub fn push_rows(record: &Record, mut next_row: impl FnMut(&mut RowSink) -> bool) {
    let mut first = true;
    let mut can_spill = true;
    loop {
        let mut full = false;
        PENDING.with_borrow_mut(|p| {
            let start = p.bytes.len();
            let limit = match can_spill {
                true => p.part_start(Level::Current) + SPILL_BYTES,
                false => usize::MAX,
            };
            let mut rows = 0;
            record.encode_with_rows(&mut p.bytes, |sink| {
                while next_row(sink) {
                    rows += 1;
                    if sink.bytes() >= limit {
                        full = true;
                        break;
                    }
                }
            });
            if rows == 0 && !first {
                p.bytes.truncate(start); // the rows ended exactly where the last piece did
            } else {
                p.records += 1;
            }
        });
        first = false;
        if !full {
            break;
        }
        // When staging is impossible here, the record goes on in memory to its end.
        can_spill = spill_if_due(Level::Current);
    }
}

/// spill_if_due stages `level`'s part of the buffer when it is larger than [`SPILL_BYTES`] and
/// staging is possible here; true unless it was due and could not be done.
pub fn spill_if_due(level: Level) -> bool {
    let Some(from) = PENDING.with_borrow(|p| {
        let from = p.part_start(level);
        (p.bytes.len() - from >= SPILL_BYTES).then_some(from)
    }) else {
        return true;
    };
    if !stager_ready() {
        return false;
    }
    PENDING.with_borrow(|p| {
        p.pieces(from, |seq, bytes, n| {
            durable::stage(&[bytes], n, Some(seq), None)
        })
    });
    PENDING.with_borrow_mut(|p| p.cut(from));
    true
}

/// stager_ready tells whether durable_queue can take a piece now.
fn stager_ready() -> bool {
    // Unit tests run without a server: nothing is staged there.
    cfg!(not(test)) && durable::can_stage()
}

/// mark_durable makes the open transaction publish through durable_queue.
pub fn mark_durable() {
    PENDING.with_borrow_mut(|p| p.durable = true);
}

/// is_durable: the open transaction publishes through durable_queue (a 'sync' table changed,
/// or records were staged already).
pub(super) fn is_durable() -> bool {
    PENDING.with_borrow(|p| p.durable || p.spilled)
}

/// has_spilled: some of the open transaction's records are staged already.
pub(super) fn has_spilled() -> bool {
    PENDING.with_borrow(|p| p.spilled)
}

/// spilled_records: how many of the open transaction's records are staged already.
pub(super) fn spilled_records() -> u32 {
    PENDING.with_borrow(|p| p.spilled_records)
}

/// note_unprivileged_event marks the open transaction as carrying application events of a
/// role that is not a superuser.
pub fn note_unprivileged_event() {
    PENDING.with_borrow_mut(|p| p.unprivileged_events = true);
}

pub(super) fn has_unprivileged_events() -> bool {
    PENDING.with_borrow(|p| p.unprivileged_events)
}

/// push_failure adds a failed-statement record; it survives the rollback that follows.
pub fn push_failure(record: &Record) {
    PENDING.with_borrow_mut(|p| {
        record.encode(&mut p.failures);
        p.failure_records += 1;
    });
}

pub fn subxact_start(subid: u32) {
    PENDING.with_borrow_mut(|p| {
        let (len, n, spilled) = (p.bytes.len(), p.records, p.spilled_records);
        p.marks.push((subid, len, n, spilled));
    });
}

/// subxact_end forgets the subtransaction's mark; on abort it also drops its records.
pub fn subxact_end(subid: u32, aborted: bool) {
    PENDING.with_borrow_mut(|p| {
        if let Some(at) = p.marks.iter().rposition(|m| m.0 == subid) {
            let (_, len, n, spilled) = p.marks[at];
            p.marks.truncate(at);
            if aborted {
                p.bytes.truncate(len);
                p.records = n;
                p.spilled_records = spilled;
                // A run starting at `len` was staged before the subtransaction began: kept.
                p.runs.retain(|r| r.offset <= len);
            }
        }
    });
}

/// with_pending lends the transaction's records and failures (and their count) to `f`; they
/// stay pending until [`discard`], so an ERROR before the reservation loses no failure record.
/// Only for a transaction that staged nothing (its buffer is one run).
pub(super) fn with_pending<R>(f: impl FnOnce(&[u8], &[u8], u32) -> R) -> R {
    PENDING.with_borrow(|p| {
        debug_assert!(!p.spilled);
        f(&p.bytes, &p.failures, p.records + p.failure_records)
    })
}

/// with_pieces lends each piece of the buffer still pending to `f` — its seq, bytes and record
/// count — in order; the failures go with the last piece (they are its seq's, after it).
pub(super) fn with_pieces(mut f: impl FnMut(u64, &[&[u8]], u32)) {
    PENDING.with_borrow(|p| {
        let mut pieces = Vec::new();
        p.pieces(0, |seq, bytes, n| pieces.push((seq, bytes, n)));
        let end = p.seq_at(p.bytes.len());
        let last = pieces.pop().unwrap_or((end, &[], 0));
        for (seq, bytes, n) in pieces {
            f(seq, &[bytes], n);
        }
        // A transaction that staged pieces stages a last row at PRE_COMMIT even when it is
        // empty: that row carries the transaction's commit order key and its ring's mark.
        if last.2 + p.failure_records > 0 || p.spilled {
            f(last.0, &[last.1, &p.failures], last.2 + p.failure_records);
        }
    })
}

/// pending_bytes is the size of what would be published.
pub(super) fn pending_bytes() -> usize {
    PENDING.with_borrow(|p| p.bytes.len() + p.failures.len())
}

/// counts is the number of records and failures pending.
pub(super) fn counts() -> u32 {
    PENDING.with_borrow(|p| p.records + p.failure_records)
}

/// What the pending buffers keep of their capacity between transactions: an OLTP transaction's
/// records (a few KB) then cost no allocation, and a backend that once ran a bulk statement
/// does not hold its records' memory (up to activity_log.buffer_size) for the rest of its life.
const RETAINED_CAPACITY: usize = 1 << 20;

/// emptied clears `buffer`, giving its memory back when it grew beyond [`RETAINED_CAPACITY`].
/// Freed, not shrunk: a shrinking realloc is an allocation, and this runs after commit.
fn emptied(buffer: &mut Vec<u8>) {
    if buffer.capacity() > RETAINED_CAPACITY {
        *buffer = Vec::new();
    } else {
        buffer.clear();
    }
}

/// discard forgets everything pending (records, failures, marks).
pub(super) fn discard() {
    PENDING.with_borrow_mut(|p| {
        emptied(&mut p.bytes);
        p.records = 0;
        p.marks.clear();
        p.runs.clear();
        p.spilled = false;
        p.spilled_records = 0;
        emptied(&mut p.failures);
        p.failure_records = 0;
        p.durable = false;
        p.unprivileged_events = false;
    });
}

/// take_failures hands out the failure records and discards the transaction's other records.
pub(super) fn take_failures() -> (Vec<u8>, u32) {
    PENDING.with_borrow_mut(|p| {
        emptied(&mut p.bytes);
        p.records = 0;
        p.marks.clear();
        p.runs.clear();
        p.spilled = false;
        p.spilled_records = 0;
        p.durable = false;
        p.unprivileged_events = false;
        let n = std::mem::replace(&mut p.failure_records, 0);
        (std::mem::take(&mut p.failures), n)
    })
}

/// take_records hands out the transaction's records (not its failures) and forgets them. Only
/// for a transaction that staged nothing.
pub(super) fn take_records() -> (Vec<u8>, u32) {
    PENDING.with_borrow_mut(|p| {
        debug_assert!(!p.spilled);
        p.marks.clear();
        p.runs.clear();
        p.durable = false;
        let n = std::mem::replace(&mut p.records, 0);
        (std::mem::take(&mut p.bytes), n)
    })
}

/// failure_bytes is the size of the failure records pending.
pub(super) fn failure_bytes() -> usize {
    PENDING.with_borrow(|p| p.failures.len())
}

/// take_failures_only hands out the failure records and keeps the transaction's other records.
pub(super) fn take_failures_only() -> (Vec<u8>, u32) {
    PENDING.with_borrow_mut(|p| {
        let n = std::mem::replace(&mut p.failure_records, 0);
        (std::mem::take(&mut p.failures), n)
    })
}

pub(super) fn has_records() -> bool {
    PENDING.with_borrow(|p| p.records > 0 || p.spilled)
}

pub(super) fn has_anything() -> bool {
    PENDING.with_borrow(|p| p.records > 0 || p.spilled || p.failure_records > 0)
}

pub(super) fn set_reservation(r: Reservation) {
    PENDING.with_borrow_mut(|p| p.reservation = Some(r));
}

pub(super) fn take_reservation() -> Option<Reservation> {
    PENDING.with_borrow_mut(|p| p.reservation.take())
}

pub(super) fn set_staged(staged: Staged) {
    PENDING.with_borrow_mut(|p| p.staged = Some(staged));
}

pub(super) fn take_staged() -> Option<Staged> {
    PENDING.with_borrow_mut(|p| p.staged.take())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Body, Event, Origin};

    fn event(n: u8) -> Record<'static> {
        event_with_details(n, b"{}".to_vec())
    }

    fn event_with_details(n: u8, details: Vec<u8>) -> Record<'static> {
        Record {
            origin: Origin::default(),
            body: Body::Event(Event {
                ts: n as i64,
                action: vec![n].into(),
                details: details.into(),
                entity_type: None,
                entity_id: None,
                category: b"application"[..].into(),
                severity: b"info"[..].into(),
            }),
        }
    }

    #[test]
    fn savepoint_rollback_drops_exactly_its_records() {
        push(&event(1));
        subxact_start(2);
        push(&event(2));
        subxact_start(3);
        push(&event(3));
        subxact_end(3, false); // RELEASE: record 3 now belongs to subxact 2
        subxact_end(2, true); // ROLLBACK TO: drops 2 and 3
        push(&event(4));
        push_failure(&event(9));
        let (bytes, n) = with_pending(|r, f, n| ([r, f].concat(), n));
        assert_eq!(n, 3);
        discard();
        let mut expected = Vec::new();
        for e in [event(1), event(4), event(9)] {
            e.encode(&mut expected);
        }
        assert_eq!(bytes, expected);
        assert!(!has_anything());
    }

    #[test]
    fn abort_keeps_only_failures() {
        push(&event(1));
        push_failure(&event(7));
        let (bytes, n) = take_failures();
        assert_eq!(n, 1);
        let mut expected = Vec::new();
        event(7).encode(&mut expected);
        assert_eq!(bytes, expected);
        assert!(!has_anything());
    }

    #[test]
    fn a_large_transaction_gives_its_memory_back() {
        let big = event_with_details(2, vec![b'x'; 4 * RETAINED_CAPACITY]);
        push(&event(1));
        let small = PENDING.with_borrow(|p| p.bytes.capacity());
        discard();
        assert_eq!(PENDING.with_borrow(|p| p.bytes.capacity()), small);
        push(&big);
        push_failure(&big);
        discard();
        let kept = PENDING.with_borrow(|p| (p.bytes.capacity(), p.failures.capacity()));
        assert!(
            kept.0 <= RETAINED_CAPACITY && kept.1 <= RETAINED_CAPACITY,
            "{kept:?}"
        );
        push(&big);
        let _ = take_failures();
        assert!(PENDING.with_borrow(|p| p.bytes.capacity()) <= RETAINED_CAPACITY);
    }

    /// What pieces() would stage now, as (seq, records' actions).
    fn staged_now() -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        PENDING.with_borrow(|p| {
            p.pieces(0, |seq, bytes, n| {
                assert_eq!(count_records(bytes), n);
                out.push((seq, actions(bytes)));
            })
        });
        out
    }

    fn actions(mut bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
            let record = crate::record::decode_record(&bytes[4..4 + len]).unwrap();
            let Body::Event(e) = record.body else {
                panic!("not an event")
            };
            out.push(e.action[0]);
            bytes = &bytes[4 + len..];
        }
        out
    }

    /// stage_part stands in for spill_if_due's staging: the pieces it would insert, then the cut.
    fn stage_part(level: Level) -> Vec<(u64, Vec<u8>)> {
        PENDING.with_borrow_mut(|p| {
            let from = p.part_start(level);
            let mut staged = Vec::new();
            p.pieces(from, |seq, bytes, _| staged.push((seq, actions(bytes))));
            p.cut(from);
            staged
        })
    }

    /// in_order is what the writer stores: the pieces by seq, their records in turn.
    fn in_order(mut pieces: Vec<(u64, Vec<u8>)>) -> Vec<u8> {
        pieces.sort_by_key(|p| p.0);
        pieces.into_iter().flat_map(|p| p.1).collect()
    }

    #[test]
    fn staged_pieces_keep_the_transaction_order_through_savepoints() {
        push(&event(1));
        subxact_start(2);
        push(&event(2));
        let a = stage_part(Level::Current); // the subtransaction's own: record 2
        assert_eq!(in_order(a.clone()), vec![2]);
        push(&event(3));
        subxact_start(3);
        push(&event(4));
        let c = stage_part(Level::Current); // 4, staged in subxact 3, which rolls back
        assert_eq!(in_order(c), vec![4]);
        push(&event(7));
        subxact_end(3, true); // ROLLBACK TO: drops 4 and 7
        push(&event(5));
        let b = stage_part(Level::Parent); // at RELEASE of 2, from the top's mark: 1 | 3, 5
        subxact_end(2, false);
        // 1 and 3 are on either side of 2 (and 5 after the piece that rolled back): separate
        // pieces, each with its own seq.
        assert_eq!(b.len(), 3, "{b:?}");
        assert_eq!(in_order(b.clone()), vec![1, 3, 5]);
        push(&event(6));
        let rest = staged_now();
        assert_eq!(in_order(rest.clone()), vec![6]);
        let stored = in_order([a, b, rest].concat());
        assert_eq!(stored, vec![1, 2, 3, 5, 6]);
        discard();
    }

    #[test]
    fn a_piece_staged_in_a_rolled_back_subtransaction_leaves_the_order_intact() {
        push(&event(1));
        subxact_start(2);
        push(&event(2));
        let gone = stage_part(Level::Current); // vanishes with the subtransaction's rollback
        push(&event(3));
        subxact_end(2, true);
        push(&event(4));
        let kept = staged_now();
        assert_eq!(in_order(kept.clone()), vec![1, 4]);
        assert!(gone[0].0 > 0 && kept[0].0 == 0);
        assert!(
            has_spilled(),
            "the transaction still publishes through durable_queue"
        );
        discard();
        assert!(!has_anything());
    }
}
