//! ring/pages.rs: maps the rings' pages into a process before it touches them.
//!
//! Owns a per-process bitmap of the data-area chunks this process has mapped. Runs in every
//! process that reads or writes a ring, outside the slot locks where it can (reserve maps the
//! likely place of its frame before it takes the lock): one system call per chunk at most,
//! never an ERROR; on a kernel without MADV_POPULATE_WRITE the pages fault in as before.

use std::cell::RefCell;

use super::layout::{capacity, data, slot_count};

/// The ring is mapped into a process this much at a time (see [`map`]).
const MAP_CHUNK: u64 = 256 * 1024;

thread_local! {
    /// The chunks of the data areas this process has mapped, a bit each (slot by slot).
    static MAPPED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// map maps the chunks of `slot_index`'s data area that [off, off + len) touches into this
/// process, each the first time only. The postmaster touched every page at start, but a
/// process still takes a page fault the first time it touches a page of shared memory: one per
/// 4 kB of frames for every backend and for the writer, until each has gone round the ring
/// once (on this VM 1.4 per pgbench transaction in the backends with a 1 GB ring, each costing
/// far more than its share of one system call).
/// MADV_POPULATE_WRITE (Linux 5.14) maps a whole chunk in one call and changes no contents; on
/// older kernels it fails and the pages fault in as before.
pub(super) fn map(slot_index: usize, off: u64, len: u64) {
    let cap = capacity();
    let per_slot = cap.div_ceil(MAP_CHUNK);
    let first = off / MAP_CHUNK;
    let last = ((off + len).min(cap) - 1) / MAP_CHUNK;
    MAPPED.with_borrow_mut(|mapped| {
        if mapped.is_empty() {
            mapped.resize((slot_count() as u64 * per_slot).div_ceil(64) as usize, 0);
        }
        for chunk in first..=last {
            let bit = slot_index as u64 * per_slot + chunk;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            if mapped[word] & mask == 0 {
                mapped[word] |= mask;
                let start = chunk * MAP_CHUNK;
                // SAFETY: [start, end) lies inside this slot's data area.
                unsafe {
                    populate(
                        data(slot_index).add(start as usize),
                        (cap.min(start + MAP_CHUNK) - start) as usize,
                    )
                };
            }
        }
    });
}

#[cfg(target_os = "linux")]
unsafe extern "C" {
    fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: std::ffi::c_int)
    -> std::ffi::c_int;
}

/// populate maps the pages of [at, at + len) of shared memory into this process.
#[cfg(target_os = "linux")]
unsafe fn populate(at: *mut u8, len: usize) {
    const MADV_POPULATE_WRITE: std::ffi::c_int = 23;
    const PAGE: usize = 4096;
    let start = (at as usize) & !(PAGE - 1);
    let end = (at as usize + len + PAGE - 1) & !(PAGE - 1);
    // SAFETY: the range lies inside one slot's data area (rounded out to whole pages of the
    // same shared mapping); populating changes no contents.
    unsafe { madvise(start as *mut _, end - start, MADV_POPULATE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
unsafe fn populate(_at: *mut u8, _len: usize) {}
