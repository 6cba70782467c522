//! ring/produce.rs: backends put frames into a ring: reserve, then commit or void.
//!
//! Owns the producer's protocol and the fit/pad/wrap arithmetic ([`place`], a pure function
//! with unit tests). A frame never wraps around the end of a data area: one that does not fit
//! before the end starts at the beginning, after a PAD frame that fills the rest.
//!
//! Runs in every backend at PRE_COMMIT ([`reserve`]: may wait for the slot lock, cannot fail
//! half-way) and in its commit or abort callback ([`commit`], [`void`], [`commit_staged`]:
//! stores, atomics and a latch; no `palloc`, no `ereport`, no panic). Holds the slot lock only
//! for [`place`] and the frame header's stores: the payload is copied outside it.

use std::sync::atomic::{AtomicU32, Ordering::*};

use super::consume::filling;
use super::layout::{
    FrameHeader, HEADER, LockGuard, STATE_COMMITTED, STATE_PAD, STATE_PENDING, STATE_VOID,
    capacity, data, header, slot,
};
use super::pages::map;
use super::slots::wake_writer;

/// A frame reserved for one transaction, PENDING until [`commit`] or [`void`].
#[must_use]
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    slot: usize,
    pos: u64,
    nrecords: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReserveError {
    /// No room now; the writer may make some.
    Full,
    /// Larger than the whole ring; it can never fit.
    TooLarge,
    /// The slot was released (the extension was dropped, or the ring handed to another
    /// database) or is being handed back, since it was looked up.
    Gone,
}

fn align8(n: u64) -> u64 {
    (n + 7) & !7
}

/// How much of a ring a frame may fill.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// All of it.
    Whole,
    /// Up to half: frames with application events of roles that are not superusers, so that
    /// a flood of them leaves the other half to everybody's changes and statements.
    Half,
}

impl Share {
    /// limit is how many bytes of a ring of `cap` bytes frames within this share may occupy.
    fn limit(self, cap: u64) -> u64 {
        match self {
            Share::Whole => cap,
            Share::Half => cap / 2,
        }
    }
}

/// Where [`place`] puts a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    /// Where the frame starts; the head moves to `pos` plus the frame's length.
    pos: u64,
    /// Bytes from the head to the end of the data area, filled with a PAD frame (0: none).
    pad: u64,
    /// The ring was empty, with its head too far along for the frame plus padding: tail and
    /// head both move on to `pos`, the start of the data area, and no PAD frame is written.
    restart: bool,
}

/// place decides where a frame of `len` bytes (header included, a multiple of 8) goes in a
/// ring of `cap` bytes whose next free byte is `head` and whose oldest byte not yet stored is
/// `tail`, within `share` of the ring. Positions only grow; a position's place in the data
/// area is `pos % cap`, and [tail, head) is what the ring holds. TooLarge: the frame can never
/// fit within the share; Full: not now. Pure arithmetic, no shared memory: [`reserve`] calls
/// it under the slot lock.
fn place(
    head: u64,
    tail: u64,
    cap: u64,
    len: u64,
    share: Share,
) -> Result<Placement, ReserveError> {
    let limit = share.limit(cap);
    if len > limit {
        return Err(ReserveError::TooLarge);
    }
    let (mut head, mut tail, mut restart) = (head, tail, false);
    let mut pad = if cap - head % cap < len {
        cap - head % cap
    } else {
        0
    };
    if pad > 0 && head == tail && pad + len > cap {
        // An empty ring whose head sits too far along for a large frame plus padding:
        // restart at the beginning of the buffer (nothing lies between tail and head).
        head += pad;
        tail = head;
        pad = 0;
        restart = true;
    }
    if cap - (head - tail) < pad + len || (head - tail) + pad + len > limit {
        return Err(ReserveError::Full);
    }
    Ok(Placement {
        pos: head + pad,
        pad,
        restart,
    })
}

/// reserve places a PENDING frame for the concatenation of `parts` in the ring of
/// `slot_index` and copies the parts into it (no intermediate buffer), within `share` of the
/// ring. Safe to call at PRE_COMMIT: it cannot fail half-way.
pub fn reserve(
    slot_index: usize,
    dboid: u32,
    parts: &[&[u8]],
    nrecords: u32,
    share: Share,
) -> Result<Reservation, ReserveError> {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    let cap = capacity();
    let need = align8(HEADER + payload_len as u64);
    if need > share.limit(cap) {
        return Err(ReserveError::TooLarge); // before the lock: it can never fit
    }
    let s = slot(slot_index);
    let base = data(slot_index);
    // Map where the frame will most likely go before taking the lock: a page fault under it
    // would hold up every other committing backend.
    let likely = s.head.load(Relaxed) % cap;
    map(
        slot_index,
        if cap - likely < need { 0 } else { likely },
        need,
    );
    let pos = {
        let _g = LockGuard::exclusive(slot_index + 1);
        if s.dboid.load(Acquire) != dboid || s.closing.load(Acquire) {
            return Err(ReserveError::Gone);
        }
        let head = s.head.load(Relaxed);
        let fit = place(head, s.tail.load(Acquire), cap, need, share)?;
        if fit.restart {
            s.tail.store(fit.pos, Release);
            s.head.store(fit.pos, Release);
        }
        // SAFETY: [head, head + pad) and the new frame's header lie inside this slot's data
        // area and between head and tail + cap, which no one else reads or writes until head
        // moves.
        unsafe {
            if fit.pad > 0 {
                let p = base.add((head % cap) as usize);
                p.cast::<u32>().write(fit.pad as u32);
                (*p.add(4).cast::<AtomicU32>()).store(STATE_PAD, Relaxed);
            }
            let pos = fit.pos;
            // Read under the slot lock: keys never decrease along the ring.
            let key = crate::unguarded::GetXLogInsertRecPtr();
            base.add((pos % cap) as usize)
                .cast::<FrameHeader>()
                .write(FrameHeader {
                    len: need as u32,
                    state: AtomicU32::new(STATE_PENDING),
                    nrecords,
                    payload_len: payload_len as u32,
                    commit_ts: 0,
                    key,
                });
            s.head.store(pos + need, Release);
            pos
        }
    };
    map(slot_index, pos % cap, need);
    // SAFETY: the frame [pos, pos + need) is ours alone while it is PENDING.
    unsafe {
        let mut at = base.add((pos % cap + HEADER) as usize);
        for part in parts {
            std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
            at = at.add(part.len());
        }
    }
    Ok(Reservation {
        slot: slot_index,
        pos,
        nrecords,
    })
}

/// commit makes a reserved frame visible to the writer. Runs after the transaction committed:
/// two stores and a latch, nothing that can fail.
pub fn commit(r: Reservation, commit_ts: i64) {
    let h = header(r.slot, r.pos);
    // SAFETY: the frame is PENDING and ours.
    unsafe {
        (*h).commit_ts = commit_ts;
        (*h).state.store(STATE_COMMITTED, Release);
    }
    let s = slot(r.slot);
    s.published_records.fetch_add(r.nrecords as u64, Relaxed);
    // SAFETY: as above.
    s.published_bytes
        .fetch_add(unsafe { (*h).len } as u64, Relaxed);
    wake_writer_if_needed(r);
}

/// wake_writer_if_needed wakes the writer only when it may be idle because of this frame: the
/// frame is the oldest in the ring (the writer stops at the first uncommitted frame, and a busy
/// writer reaches later ones by itself), or the ring is filling up. Waking it on every commit
/// costs every committing backend a system call.
fn wake_writer_if_needed(r: Reservation) {
    if slot(r.slot).tail.load(Acquire) >= r.pos || filling(r.slot) {
        wake_writer(r.slot);
    }
}

/// void withdraws a reserved frame of a transaction that aborted after PRE_COMMIT.
pub fn void(r: Reservation) {
    // SAFETY: the frame is PENDING and ours.
    unsafe { (*header(r.slot, r.pos)).state.store(STATE_VOID, Release) };
    wake_writer_if_needed(r);
}

/// commit_staged tells the writer that a committed transaction left its records in
/// activity_log.durable_queue. Runs after the commit: atomics and a latch, nothing that fails.
pub fn commit_staged(slot_index: usize, nrecords: u32) {
    let s = slot(slot_index);
    s.published_records.fetch_add(nrecords as u64, Relaxed);
    // A busy writer sweeps again by itself (drain_staged); only one that had swept everything
    // may be asleep. SeqCst against mark_swept/staged_commits in the writer: each side stores,
    // then loads the other's value, and one of them must see the other's store.
    let before = s.staged_commits.fetch_add(1, SeqCst);
    if before <= s.staged_swept.load(SeqCst) {
        wake_writer(slot_index);
    }
}

/// count_published adds records that reached the trail without passing a commit callback in
/// this shared memory (staged before a crash-restart).
pub fn count_published(slot_index: usize, records: u64) {
    slot(slot_index)
        .published_records
        .fetch_add(records, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReserveError::{Full, TooLarge};

    const CAP: u64 = 1024;

    fn at(pos: u64, pad: u64) -> Result<Placement, ReserveError> {
        Ok(Placement {
            pos,
            pad,
            restart: false,
        })
    }

    #[test]
    fn a_frame_goes_at_the_head_when_it_fits_before_the_end() {
        assert_eq!(place(0, 0, CAP, 64, Share::Whole), at(0, 0));
        assert_eq!(place(100 * 8, 8, CAP, 64, Share::Whole), at(800, 0));
        // Up to the last byte of the data area: no padding.
        assert_eq!(place(960, 900, CAP, 64, Share::Whole), at(960, 0));
        // Positions grow past the capacity; only their place in the data area counts.
        assert_eq!(
            place(5 * CAP + 64, 5 * CAP, CAP, 64, Share::Whole),
            at(5 * CAP + 64, 0)
        );
    }

    #[test]
    fn a_frame_that_reaches_past_the_end_pads_and_wraps() {
        // 24 bytes are left before the end: they become padding, the frame starts the next lap.
        assert_eq!(place(1000, 900, CAP, 64, Share::Whole), at(CAP, 24));
        assert_eq!(
            place(3 * CAP + 1000, 3 * CAP + 900, CAP, 64, Share::Whole),
            at(4 * CAP, 24)
        );
    }

    #[test]
    fn padding_counts_against_the_room() {
        // 950 bytes used: 64 more would fit, but not with the 24 bytes of padding before them.
        assert_eq!(place(1000, 50, CAP, 64, Share::Whole), Err(Full));
        assert_eq!(place(1000, 64, CAP, 64, Share::Whole), at(CAP, 24));
    }

    #[test]
    fn a_ring_fills_up_to_the_last_byte() {
        // 960 bytes used, 64 free: exactly full afterwards.
        assert_eq!(place(CAP, 64, CAP, 64, Share::Whole), at(CAP, 0));
        assert_eq!(place(CAP, 64, CAP, 72, Share::Whole), Err(Full));
        assert_eq!(
            place(CAP, 0, CAP, 8, Share::Whole),
            Err(Full),
            "already full"
        );
        // A frame as large as the whole ring fits an empty ring at the start of its data area.
        assert_eq!(
            place(2 * CAP, 2 * CAP, CAP, CAP, Share::Whole),
            at(2 * CAP, 0)
        );
    }

    #[test]
    fn a_frame_larger_than_its_share_never_fits() {
        assert_eq!(place(0, 0, CAP, CAP + 8, Share::Whole), Err(TooLarge));
        assert_eq!(place(0, 0, CAP, CAP / 2 + 8, Share::Half), Err(TooLarge));
        assert_eq!(place(0, 0, CAP, CAP / 2, Share::Half), at(0, 0));
    }

    #[test]
    fn half_a_ring_is_the_limit_of_a_half_share() {
        // 400 bytes used: 120 more fit the ring but not its first half.
        assert_eq!(place(400, 0, CAP, 120, Share::Half), Err(Full));
        assert_eq!(place(400, 0, CAP, 120, Share::Whole), at(400, 0));
        assert_eq!(place(400, 0, CAP, 112, Share::Half), at(400, 0));
        // What other frames hold counts, padding included.
        assert_eq!(place(1000, 600, CAP, 88, Share::Half), at(CAP, 24));
        assert_eq!(place(1000, 600, CAP, 96, Share::Half), Err(Full));
    }

    #[test]
    fn after_a_wrap_the_head_runs_up_to_the_tail() {
        // The head wrapped (offset 76), the tail did not (offset 900): 824 bytes lie between.
        assert_eq!(
            place(CAP + 76, 900, CAP, 100, Share::Whole),
            at(CAP + 76, 0)
        );
        assert_eq!(
            place(CAP + 80, 904, CAP, 824, Share::Whole),
            at(CAP + 80, 0)
        );
        assert_eq!(place(CAP + 80, 904, CAP, 832, Share::Whole), Err(Full));
    }

    #[test]
    fn an_empty_ring_restarts_at_the_start_for_a_frame_that_cannot_follow_padding() {
        // Empty, head at 1000: 24 bytes of padding and 1008 of frame exceed the ring.
        assert_eq!(
            place(1000, 1000, CAP, 1008, Share::Whole),
            Ok(Placement {
                pos: CAP,
                pad: 0,
                restart: true
            })
        );
        // A smaller frame pads as usual, up to exactly the whole ring with its padding.
        assert_eq!(place(1000, 1000, CAP, 64, Share::Whole), at(CAP, 24));
        assert_eq!(place(1000, 1000, CAP, 1000, Share::Whole), at(CAP, 24));
        // A non-empty ring does not restart: it waits for room.
        assert_eq!(place(1000, 992, CAP, 1008, Share::Whole), Err(Full));
    }

    #[test]
    fn no_placement_crosses_the_end_or_overlaps_what_the_ring_holds() {
        const CAP: u64 = 96;
        for tail in (0..3 * CAP).step_by(8) {
            for head in (tail..=tail + CAP).step_by(8) {
                for len in (8..=CAP + 8).step_by(8) {
                    for share in [Share::Whole, Share::Half] {
                        let Ok(p) = place(head, tail, CAP, len, share) else {
                            continue;
                        };
                        let tail = if p.restart { p.pos } else { tail };
                        assert!(
                            p.pos % CAP + len <= CAP,
                            "{head} {tail} {len}: crosses the end"
                        );
                        assert_eq!(
                            p.pos,
                            head + p.pad + if p.restart { CAP - head % CAP } else { 0 }
                        );
                        assert!(
                            p.pos + len - tail <= share.limit(CAP),
                            "{head} {tail} {len}: over"
                        );
                        assert!(p.pad < len, "padding only when the frame does not fit");
                    }
                }
            }
        }
    }

    #[test]
    fn frames_are_whole_multiples_of_8() {
        assert_eq!(align8(HEADER), 32);
        assert_eq!(align8(HEADER + 1), 40);
        assert_eq!(align8(HEADER + 8), 40);
    }
}
