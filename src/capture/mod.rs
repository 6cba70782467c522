//! capture: what a backend collects before its transaction ends.
//!
//! Runs in every backend, on the write path. Owns the per-backend pending buffer: encoded
//! records of the open transaction, with a mark per open subtransaction so that ROLLBACK TO
//! SAVEPOINT drops exactly what the subtransaction added. Failed-statement records live in a
//! separate buffer because they outlive the transaction that failed.
//!
//! No `pg_sys` here: the hooks (`hooks.rs`) and transaction callbacks (`xact.rs`) translate
//! PostgreSQL state into plain values and call in.

pub mod durable;
pub mod hooks;
pub mod redact;
pub mod rows;
pub mod tracked;
pub mod xact;

use crate::record::{Record, RowSink};
use crate::ring::Reservation;
use std::cell::RefCell;

#[derive(Default)]
struct Pending {
    /// Encoded records of the open top-level transaction.
    bytes: Vec<u8>,
    records: u32,
    /// (subtransaction id, bytes.len(), records) when each open subtransaction started.
    marks: Vec<(u32, usize, u32)>,
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
    /// The frame reserved at PRE_COMMIT, made visible at COMMIT or voided at ABORT.
    reservation: Option<Reservation>,
    /// Set at PRE_COMMIT when the records were staged: (the ring to notify, records).
    staged: Option<(Option<usize>, u32)>,
}

thread_local! {
    // PostgreSQL backends are single-threaded; the RefCell is never borrowed across a call
    // that could re-enter capture.
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// push adds a record to the open transaction; `rows` appends a Change's row images. The
/// buffer stays borrowed while `rows` runs: it must not call back into capture. An ERROR
/// inside it leaves part of a record behind, which the (sub)transaction's abort drops.
pub fn push(record: &Record, rows: impl FnOnce(&mut RowSink)) {
    PENDING.with_borrow_mut(|p| {
        record.encode_with_rows(&mut p.bytes, rows);
        p.records += 1;
    });
}

/// mark_durable makes the open transaction publish through durable_queue.
pub fn mark_durable() {
    PENDING.with_borrow_mut(|p| p.durable = true);
}

fn is_durable() -> bool {
    PENDING.with_borrow(|p| p.durable)
}

/// note_unprivileged_event marks the open transaction as carrying application events of a
/// role that is not a superuser.
pub fn note_unprivileged_event() {
    PENDING.with_borrow_mut(|p| p.unprivileged_events = true);
}

fn has_unprivileged_events() -> bool {
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
        let (len, n) = (p.bytes.len(), p.records);
        p.marks.push((subid, len, n));
    });
}

/// subxact_end forgets the subtransaction's mark; on abort it also drops its records.
pub fn subxact_end(subid: u32, aborted: bool) {
    PENDING.with_borrow_mut(|p| {
        if let Some(at) = p.marks.iter().rposition(|m| m.0 == subid) {
            let (_, len, n) = p.marks[at];
            p.marks.truncate(at);
            if aborted {
                p.bytes.truncate(len);
                p.records = n;
            }
        }
    });
}

/// with_pending lends the transaction's records and failures (and their count) to `f`; they
/// stay pending until [`discard`], so an ERROR before the reservation loses no failure record.
fn with_pending<R>(f: impl FnOnce(&[u8], &[u8], u32) -> R) -> R {
    PENDING.with_borrow(|p| f(&p.bytes, &p.failures, p.records + p.failure_records))
}

/// pending_bytes is the size of what would be published.
pub(crate) fn pending_bytes() -> usize {
    PENDING.with_borrow(|p| p.bytes.len() + p.failures.len())
}

/// counts is the number of records and failures pending.
fn counts() -> u32 {
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
fn discard() {
    PENDING.with_borrow_mut(|p| {
        emptied(&mut p.bytes);
        p.records = 0;
        p.marks.clear();
        emptied(&mut p.failures);
        p.failure_records = 0;
        p.durable = false;
        p.unprivileged_events = false;
    });
}

/// take_failures hands out the failure records and discards the transaction's other records.
fn take_failures() -> (Vec<u8>, u32) {
    PENDING.with_borrow_mut(|p| {
        emptied(&mut p.bytes);
        p.records = 0;
        p.marks.clear();
        p.durable = false;
        p.unprivileged_events = false;
        let n = std::mem::replace(&mut p.failure_records, 0);
        (std::mem::take(&mut p.failures), n)
    })
}

fn has_records() -> bool {
    PENDING.with_borrow(|p| p.records > 0)
}

fn has_anything() -> bool {
    PENDING.with_borrow(|p| p.records > 0 || p.failure_records > 0)
}

fn set_reservation(r: Reservation) {
    PENDING.with_borrow_mut(|p| p.reservation = Some(r));
}

fn take_reservation() -> Option<Reservation> {
    PENDING.with_borrow_mut(|p| p.reservation.take())
}

fn set_staged(slot: Option<usize>, records: u32) {
    PENDING.with_borrow_mut(|p| p.staged = Some((slot, records)));
}

fn take_staged() -> Option<(Option<usize>, u32)> {
    PENDING.with_borrow_mut(|p| p.staged.take())
}

/// clip cuts `text` to at most `max` bytes without splitting a UTF-8 character.
pub fn clip(text: &[u8], max: usize) -> &[u8] {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && (text[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    &text[..end]
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
        push(&event(1), |_| {});
        subxact_start(2);
        push(&event(2), |_| {});
        subxact_start(3);
        push(&event(3), |_| {});
        subxact_end(3, false); // RELEASE: record 3 now belongs to subxact 2
        subxact_end(2, true); // ROLLBACK TO: drops 2 and 3
        push(&event(4), |_| {});
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
        push(&event(1), |_| {});
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
        push(&event(1), |_| {});
        let small = PENDING.with_borrow(|p| p.bytes.capacity());
        discard();
        assert_eq!(PENDING.with_borrow(|p| p.bytes.capacity()), small);
        push(&big, |_| {});
        push_failure(&big);
        discard();
        let kept = PENDING.with_borrow(|p| (p.bytes.capacity(), p.failures.capacity()));
        assert!(
            kept.0 <= RETAINED_CAPACITY && kept.1 <= RETAINED_CAPACITY,
            "{kept:?}"
        );
        push(&big, |_| {});
        let _ = take_failures();
        assert!(PENDING.with_borrow(|p| p.bytes.capacity()) <= RETAINED_CAPACITY);
    }

    #[test]
    fn clip_respects_utf8_boundaries() {
        assert_eq!(clip("héllo".as_bytes(), 2), b"h");
        assert_eq!(clip("héllo".as_bytes(), 3), "hé".as_bytes());
        assert_eq!(clip(b"abc", 10), b"abc");
        assert_eq!(clip(b"abc", 0), b"");
    }
}
