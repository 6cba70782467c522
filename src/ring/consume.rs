//! ring/consume.rs: the writer takes frames out of its ring: read, advance, next_key.
//!
//! Owns the reader's protocol: copy committed frames from the tail, stop at the first PENDING
//! one (records reach the table in reservation order), and move the tail only after the batch
//! is stored, so a writer that dies mid-batch loses nothing. Also the staged-sweep counters
//! the writer reads and marks.
//!
//! Runs in the ring's one writer (and, for `head`/`tail`/`has_frames`, in backends waiting on
//! it). Never writes a frame; takes the slot lock only to read frame headers the producers
//! wrote under it ([`next_key`]) and to move the tail ([`advance`]).

use std::sync::atomic::{AtomicU32, Ordering::*};

use super::layout::{
    FrameHeader, HEADER, LockGuard, STATE_COMMITTED, STATE_PAD, STATE_PENDING, capacity, data,
    header, slot,
};
use super::metrics::count_written;
use super::pages::map;

/// One committed frame copied out of the ring (or, for the writer, a row of durable_queue).
#[derive(Clone)]
pub struct Frame {
    pub commit_ts: i64,
    /// Commit order key (see ring/mod.rs); of a staged row, its transaction's.
    pub key: u64,
    /// Where the frame starts in the ring (0 for a staged row).
    pub pos: u64,
    pub nrecords: u32,
    pub payload: Vec<u8>,
    /// Set for a frame the writer took from durable_queue: the row's columns, which its seal
    /// covers; `payload` is then the frame and its seal.
    pub staged: Option<crate::record::StagedRow>,
}

/// A batch read from the ring; pass `end` to [`advance`] once it is stored.
pub struct Batch {
    pub frames: Vec<Frame>,
    pub records: u64,
    pub end: u64,
    /// The batch is one announcement of a transaction staged in pieces: a frame without
    /// records (and a record count of 0) that holds the transaction's place in the ring's
    /// order (see capture/xact.rs, `announce`); its payload is the transaction's frame info.
    /// An announcement of a transaction staged in one row has its record count and goes in
    /// batches like any frame; the writer takes the row into the batch.
    pub announcement: bool,
}

impl Batch {
    /// carried_over counts the records of frames committed before `since`.
    pub fn carried_over(&self, since: i64) -> u64 {
        self.frames
            .iter()
            .filter(|f| f.commit_ts < since)
            .map(|f| f.nrecords as u64)
            .sum()
    }
}

/// read copies committed frames from the tail until `max_records` (whole frames) or the first
/// PENDING frame.
pub fn read(slot_index: usize, max_records: usize) -> Batch {
    let cap = capacity();
    let s = slot(slot_index);
    let head = s.head.load(Acquire);
    let mut pos = s.tail.load(Acquire);
    let mut batch = Batch {
        frames: Vec::new(),
        records: 0,
        end: pos,
        announcement: false,
    };
    while pos < head && (batch.records as usize) < max_records {
        let base = data(slot_index);
        map(slot_index, pos % cap, HEADER);
        // SAFETY: pos is a frame start in [tail, head); its len and state were written before
        // head moved past it (Release/Acquire on head).
        let (len, state) = unsafe {
            let p = base.add((pos % cap) as usize);
            (
                p.cast::<u32>().read() as u64,
                (*p.add(4).cast::<AtomicU32>()).load(Acquire),
            )
        };
        match state {
            STATE_PENDING => break,
            STATE_COMMITTED => {
                let h = header(slot_index, pos);
                // SAFETY: as above.
                let announcement = unsafe { (*h).nrecords } == 0;
                if announcement && !batch.frames.is_empty() {
                    break; // it is a batch of its own
                }
                map(slot_index, pos % cap, len);
                // SAFETY: a COMMITTED frame is immutable until tail passes it.
                unsafe {
                    let start = base.add((pos % cap + HEADER) as usize);
                    let payload =
                        std::slice::from_raw_parts(start, (*h).payload_len as usize).to_vec();
                    batch.records += (*h).nrecords as u64;
                    batch.frames.push(Frame {
                        commit_ts: (*h).commit_ts,
                        key: (*h).key,
                        pos,
                        nrecords: (*h).nrecords,
                        payload,
                        staged: None,
                    });
                }
                if announcement {
                    batch.announcement = true;
                    batch.end = pos + len;
                    break;
                }
            }
            _ => {} // PAD or VOID
        }
        pos += len;
        batch.end = pos;
    }
    batch
}

impl Batch {
    /// cut_above drops the frames whose key is above `key`, and what follows them: staged
    /// transactions up to `key` must be stored first. The batch then ends where the first
    /// dropped frame starts.
    pub fn cut_above(&mut self, key: u64) {
        if let Some(i) = self.frames.iter().position(|f| f.key > key) {
            self.end = self.frames[i].pos;
            self.frames.truncate(i);
            self.records = self.frames.iter().map(|f| f.nrecords as u64).sum();
            self.announcement = self.announcement && !self.frames.is_empty();
        }
    }
}

/// next_key is the commit order key below which no frame can come to the ring any more: the
/// key of its oldest frame not yet stored (committed, pending or withdrawn), or, when it holds
/// none, the WAL insert position now (a frame reserved later reads a position at least as
/// high). The writer stores staged transactions with keys up to it before the ring's frames.
pub fn next_key(slot_index: usize) -> u64 {
    let cap = capacity();
    let s = slot(slot_index);
    let _g = LockGuard::exclusive(slot_index + 1);
    let (mut pos, head) = (s.tail.load(Acquire), s.head.load(Acquire));
    while pos < head {
        map(slot_index, pos % cap, HEADER);
        // SAFETY: a frame start in [tail, head), read under the slot lock (its header was
        // written under it, and the frame cannot be reused before tail passes it).
        unsafe {
            let p = data(slot_index).add((pos % cap) as usize);
            let len = p.cast::<u32>().read() as u64;
            if (*p.add(4).cast::<AtomicU32>()).load(Acquire) != STATE_PAD {
                return (*p.cast::<FrameHeader>()).key;
            }
            pos += len.max(8);
        }
    }
    // SAFETY: reads the WAL insert position; no ERROR.
    unsafe { crate::unguarded::GetXLogInsertRecPtr() }
}

/// committing notes, right before the writer's COMMIT, that its batch ends at `end`: until
/// [`advance`] moves the tail there, what lies below it may be in the trail already.
pub fn committing(slot_index: usize, end: u64) {
    slot(slot_index).committing_until.store(end, Release);
}

/// advance frees the ring up to `end` after the batch read up to it is committed; a no-op if
/// the ring was released (and possibly reused) meanwhile.
pub fn advance(slot_index: usize, dboid: u32, end: u64, records: u64) {
    let s = slot(slot_index);
    {
        let _g = LockGuard::exclusive(slot_index + 1);
        if s.dboid.load(Acquire) != dboid || end <= s.tail.load(Acquire) {
            s.committing_until.store(0, Release);
            return; // released (and maybe reused) meanwhile, or already past this point
        }
        s.tail.store(end, Release);
        s.committing_until.store(0, Release);
    }
    if records > 0 {
        count_written(slot_index, records); // else only withdrawn frames or padding
    }
}

/// has_frames tells whether anything, committed or pending, waits in the ring.
pub fn has_frames(slot_index: usize) -> bool {
    let s = slot(slot_index);
    s.tail.load(Acquire) < s.head.load(Acquire)
}

/// filling tells whether more than a quarter of the ring waits for the writer: commits then wake
/// it, and it works without pauses (worker/pace.rs).
pub fn filling(slot_index: usize) -> bool {
    let s = slot(slot_index);
    s.head.load(Acquire).saturating_sub(s.tail.load(Acquire)) > capacity() / 4
}

pub fn head(slot_index: usize) -> u64 {
    slot(slot_index).head.load(Acquire)
}
pub fn tail(slot_index: usize) -> u64 {
    slot(slot_index).tail.load(Acquire)
}

/// staged_commits is the count a sweep of durable_queue must reach to include every
/// transaction that has committed so far.
pub fn staged_commits(slot_index: usize) -> u64 {
    slot(slot_index).staged_commits.load(SeqCst)
}

pub fn staged_swept(slot_index: usize) -> u64 {
    slot(slot_index).staged_swept.load(SeqCst)
}

/// mark_swept records that durable_queue held nothing committed before `commits` was read.
pub fn mark_swept(slot_index: usize, commits: u64) {
    slot(slot_index).staged_swept.fetch_max(commits, SeqCst);
}

/// count_records counts the records of committed and pending frames in [from, to).
pub(super) fn count_records(slot_index: usize, from: u64, to: u64) -> u64 {
    let cap = capacity();
    let (mut pos, mut n) = (from, 0);
    while pos < to {
        // SAFETY: frame starts in [tail, head), read under the slot lock.
        let (len, state, nrec) = unsafe {
            let p = data(slot_index).add((pos % cap) as usize);
            let len = p.cast::<u32>().read() as u64;
            let state = (*p.add(4).cast::<AtomicU32>()).load(Acquire);
            let nrec = if state == STATE_PAD {
                0
            } else {
                (*p.cast::<FrameHeader>()).nrecords
            };
            (len, state, nrec)
        };
        if state == STATE_COMMITTED || state == STATE_PENDING {
            n += nrec as u64;
        }
        pos += len;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pos: u64, key: u64, nrecords: u32, commit_ts: i64) -> Frame {
        Frame {
            commit_ts,
            key,
            pos,
            nrecords,
            payload: Vec::new(),
            staged: None,
        }
    }

    fn batch() -> Batch {
        Batch {
            frames: vec![
                frame(0, 10, 2, 5),
                frame(64, 20, 3, 6),
                frame(160, 30, 4, 7),
            ],
            records: 9,
            end: 256,
            announcement: false,
        }
    }

    #[test]
    fn a_batch_is_cut_before_its_first_frame_above_the_key() {
        let mut b = batch();
        b.cut_above(25);
        assert_eq!((b.frames.len(), b.records, b.end), (2, 5, 160));
        b.cut_above(20);
        assert_eq!(
            (b.frames.len(), b.records, b.end),
            (2, 5, 160),
            "keys up to it stay"
        );
        b.cut_above(5);
        assert_eq!((b.frames.len(), b.records, b.end), (0, 0, 0));
    }

    #[test]
    fn carried_over_counts_frames_committed_before_a_time() {
        assert_eq!(batch().carried_over(7), 5);
        assert_eq!(batch().carried_over(5), 0);
    }
}
