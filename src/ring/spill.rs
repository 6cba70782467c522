//! ring/spill.rs: committed records that are still in a ring when the postmaster releases
//! shared memory go to a spill file in the data directory, and back into their database's
//! ring when shared memory is made anew; except at a base backup's first start as a standby or
//! for archive recovery, which sets the copied files aside ([`set_aside_copy`]): their records
//! are the copied server's to store.
//!
//! Runs in the postmaster only: [`spill_all`] from the rings' on_shmem_exit callback (a stop
//! of any kind that lets the postmaster exit, and a crash-restart; every other process of the
//! server has exited by then), [`restore_all`] while the postmaster initialises shared memory
//! (at start and after a crash-restart, before any backend exists). So nothing else reads or
//! writes the rings meanwhile and no lock is taken. Plain file I/O: every failure is logged
//! and reported to the caller, never raised (no ERROR, no panic: the postmaster must not die
//! because of us).
//!
//! One exception: [`remove_dropped`] deletes the files of a database that no longer exists,
//! from a backend right after its DROP DATABASE and from the launcher when it starts (while
//! other processes run). It only removes whole files (a rename or a removal by the postmaster
//! happens while no backend exists, so the two never meet), and reports failures as values:
//! the drop has happened by then, and an ERROR would not undo it.
//!
//! What is spilled: only COMMITTED frames, copied whole. A frame becomes COMMITTED after its
//! payload is copied and its transaction committed (produce.rs), so a committed frame is
//! never torn. A PENDING frame belongs to a backend that died between its transaction's
//! PRE_COMMIT and its commit or abort callback (an immediate stop, a crash): whether that
//! transaction committed is unknown here, so its records are counted as lost. VOID frames and
//! padding are left out. Drops the writer has not reported yet travel with the frames, so
//! that the gap record about them is still written.
//!
//! File `activity_log.spill.<dboid>` (a second one for the same database while the first is
//! kept: `activity_log.spill.<dboid>.<n>`), native byte order:
//! `magic[8] dboid:u32 nframes:u32 records:u64 dropped:u64 bytes:u64 frames[bytes] sha256[32]`,
//! the digest over everything before it.
//!
//! Announcements (frames that only hold the place of a transaction staged in durable_queue)
//! are not spilled: their transactions are on disk already, and the ring put back has a turn
//! mark of its own, so the writer's sweep takes them by their commit order key, merged with
//! the ring's frames, and reads them one by one after a crash they may have caused
//! (worker/suspects.rs), as after any crash. Written to a temporary file, fsynced, renamed, and
//! the directory fsynced; removed (and the directory fsynced) once its frames are back in
//! shared memory.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering::*};

use super::layout::{FrameHeader, HEADER, STATE_COMMITTED, STATE_PAD, STATE_PENDING, Slot};

const MAGIC: &[u8; 8] = b"ALSPILL1";
const PREFIX: &str = "activity_log.spill.";
/// magic, dboid, nframes, records, dropped, bytes.
const FILE_HEADER: usize = 8 + 4 + 4 + 8 + 8 + 8;
const DIGEST: usize = 32;

/// What [`spill_all`] did.
#[derive(Default)]
pub(super) struct Spilled {
    /// Records now in spill files.
    pub records: u64,
    /// Records of PENDING frames: transactions caught between PRE_COMMIT and their commit or
    /// abort callback; lost.
    pub pending: u64,
    /// Records of rings whose writer was killed between its batch's COMMIT and the tail's
    /// move: part of them may be in the trail already, so none is spilled (a record is never
    /// stored twice); lost, or in the trail.
    pub uncertain: u64,
    /// Why some committed records could not be spilled (a write failed), with their count.
    pub failures: Vec<String>,
}

/// A ring as the postmaster sees it while no other process runs.
pub(super) struct RingView<'a> {
    pub slot: &'a Slot,
    pub data: *mut u8,
    pub cap: u64,
}

impl RingView<'_> {
    /// frame returns the bytes of the frame at ring position `pos` (its whole length).
    fn at(&self, pos: u64, len: u64) -> &[u8] {
        // SAFETY: [pos % cap, + len) lies inside the data area: a frame never crosses its end.
        unsafe {
            std::slice::from_raw_parts(self.data.add((pos % self.cap) as usize), len as usize)
        }
    }
}

/// walk visits the frames in [tail, head): (pos, len, state, nrecords). Stops at a header
/// that cannot be a frame (len 0, not a multiple of 8, or past the end of the data area):
/// the rest is not readable.
fn walk(r: &RingView, mut f: impl FnMut(u64, u64, u32, u32)) {
    let (mut pos, head) = (r.slot.tail.load(Acquire), r.slot.head.load(Acquire));
    while pos < head {
        let off = pos % r.cap;
        // SAFETY: a frame start inside the data area (checked below before moving on).
        let (len, state) = unsafe {
            let p = r.data.add(off as usize);
            (
                p.cast::<u32>().read() as u64,
                (*p.add(4).cast::<AtomicU32>()).load(Acquire),
            )
        };
        if len == 0 || !len.is_multiple_of(8) || off + len > r.cap || pos + len > head {
            break;
        }
        let nrecords = if state == STATE_PAD || len < HEADER {
            0
        } else {
            // SAFETY: a frame with a whole header.
            unsafe { (*r.data.add(off as usize).cast::<FrameHeader>()).nrecords }
        };
        f(pos, len, state, nrecords);
        pos += len;
    }
}

/// spill_ring writes the committed frames of one ring (database `dboid`) to a spill file;
/// adds what it did to `out`.
pub(super) fn spill_ring(r: &RingView, dboid: u32, dropped: u64, out: &mut Spilled) {
    // Set when the writer was killed between its batch's COMMIT and the tail's move (an
    // immediate stop or a crash in that window): whether the batch is in the trail is unknown
    // here, and spilling it would store it twice if it is. Its records are given up, and said
    // so; the frames after it were never read by the writer and are kept.
    let committing = r.slot.committing_until.load(Acquire);
    let mut frames = Vec::new();
    let (mut records, mut bytes, mut pending, mut uncertain) = (0u64, 0u64, 0u64, 0u64);
    walk(r, |pos, len, state, nrecords| match state {
        STATE_COMMITTED if pos < committing => uncertain += nrecords as u64,
        STATE_COMMITTED if len >= HEADER && !is_announcement(r.at(pos, len), nrecords) => {
            frames.push((pos, len));
            records += nrecords as u64;
            bytes += len;
        }
        STATE_PENDING => pending += nrecords as u64,
        _ => {}
    });
    out.pending += pending;
    out.uncertain += uncertain;
    if uncertain > 0 {
        pgrx::warning!(
            "activity_log: the writer of database {dboid} stopped while committing a batch of {uncertain} records: they are not kept, and may be in the trail already"
        );
    }
    // A ring that lost records mid-commit gets a file too, even without a frame: the file
    // gives its database a ring at the next start, whose writer records the loss at once (a
    // database without a ring would record it only when it next gets one).
    if frames.is_empty() && dropped == 0 && pending == 0 && uncertain == 0 {
        return;
    }
    let path = free_name(dboid);
    let written = (|| -> std::io::Result<()> {
        let tmp = format!("{path}.tmp");
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
        let mut digest = Sha256::new();
        let mut put = |b: &[u8]| -> std::io::Result<()> {
            digest.update(b);
            f.write_all(b)
        };
        put(MAGIC)?;
        put(&dboid.to_ne_bytes())?;
        put(&(frames.len() as u32).to_ne_bytes())?;
        put(&records.to_ne_bytes())?;
        put(&dropped.to_ne_bytes())?;
        put(&bytes.to_ne_bytes())?;
        for &(pos, len) in &frames {
            put(r.at(pos, len))?;
        }
        let sum = digest.finalize();
        f.write_all(&sum)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir()
    })();
    match written {
        Ok(()) => {
            out.records += records;
            pgrx::log!(
                "activity_log: kept {records} committed records of database {dboid} that were still in its ring in {path}"
            );
        }
        Err(e) => {
            pgrx::warning!(
                "activity_log: could not write {path}: {e}; {records} committed records of database {dboid} are lost"
            );
            out.failures.push(format!(
                "{records} committed records of database {dboid} could not be written to {path}: {e}"
            ));
        }
    }
}

/// is_announcement tells a frame that only holds the place of a staged transaction (see
/// capture/xact.rs, `announce`): no records (one staged in pieces), or a payload that is only
/// the frame info (one staged in one row), as the writer tells them (worker/drain.rs).
fn is_announcement(frame: &[u8], nrecords: u32) -> bool {
    let Some(payload_len) = frame.get(12..16) else {
        return false;
    };
    let payload_len = u32::from_ne_bytes(payload_len.try_into().unwrap_or([0; 4])) as usize;
    let Some(payload) = frame.get(HEADER as usize..HEADER as usize + payload_len) else {
        return false;
    };
    nrecords == 0
        || matches!(crate::record::decode_info(payload), Ok((_, len)) if len == payload.len())
}

/// free_name is the first spill file name of `dboid` that does not exist yet (a kept one is
/// never overwritten).
fn free_name(dboid: u32) -> String {
    let first = format!("{PREFIX}{dboid}");
    if std::fs::metadata(&first).is_err() {
        return first;
    }
    (1..)
        .map(|n| format!("{first}.{n}"))
        .find(|p| std::fs::metadata(p).is_err())
        .unwrap_or(first)
}

fn sync_dir() -> std::io::Result<()> {
    File::open(".")?.sync_all()
}

/// spill_files lists the spill files in the data directory as (dboid, n, name), in the order
/// they were written for each database.
pub(super) fn spill_files() -> Vec<(u32, u32, String)> {
    let Ok(dir) = std::fs::read_dir(".") else {
        return Vec::new();
    };
    let mut files: Vec<(u32, u32, String)> = dir
        // Regular files only (the entry's own type, symlinks not followed): opening a FIFO of
        // that name would block the postmaster at start, or a dropping backend, for good.
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_file().then_some(())?;
            e.file_name().into_string().ok()
        })
        .filter_map(|name| {
            let rest = name.strip_prefix(PREFIX)?;
            let (db, n) = match rest.split_once('.') {
                Some((db, n)) => (db, n.parse().ok()?),
                None => (rest, 0),
            };
            Some((db.parse().ok()?, n, name))
        })
        .collect();
    files.sort();
    files
}

/// A spill file read and checked.
pub(super) struct SpillFile {
    pub records: u64,
    pub dropped: u64,
    /// The frames, each whole, back to back.
    pub frames: Vec<u8>,
}

/// read_spill reads and checks `name`, whose frames must fit `room` bytes. The error says why
/// it cannot be put back, in words for a gap record.
pub(super) fn read_spill(name: &str, dboid: u32, room: u64) -> Result<SpillFile, String> {
    let mut f = File::open(name).map_err(|e| format!("it could not be opened: {e}"))?;
    let mut head = [0u8; FILE_HEADER];
    f.read_exact(&mut head)
        .map_err(|e| format!("it is corrupt (its header could not be read: {e})"))?;
    let u32_at = |o: usize| u32::from_ne_bytes(head[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |o: usize| u64::from_ne_bytes(head[o..o + 8].try_into().unwrap_or([0; 8]));
    if &head[..8] != MAGIC || u32_at(8) != dboid {
        return Err("it is corrupt (not a spill file of this database)".into());
    }
    let (nframes, records, dropped, bytes) = (u32_at(12), u64_at(16), u64_at(24), u64_at(32));
    if bytes > room {
        return Err(format!(
            "its {bytes} bytes of frames do not fit the ring of {room} bytes (activity_log.buffer_size was lowered); raise activity_log.buffer_size to at least {} kB and restart the server to put them back",
            bytes.div_ceil(1024)
        ));
    }
    let mut rest = Vec::new();
    f.read_to_end(&mut rest)
        .map_err(|e| format!("it could not be read: {e}"))?;
    if rest.len() as u64 != bytes + DIGEST as u64 {
        return Err(format!(
            "it is corrupt (it holds {} bytes after its header, not {})",
            rest.len(),
            bytes + DIGEST as u64
        ));
    }
    let sum = rest.split_off(bytes as usize);
    let mut digest = Sha256::new();
    digest.update(head);
    digest.update(&rest);
    if digest.finalize().as_slice() != sum.as_slice() {
        return Err("it is corrupt (its checksum does not match)".into());
    }
    // The digest matches: the frames are as written. Check their framing all the same, so that
    // a file written by another build never puts a frame the writer cannot walk into a ring.
    let (mut off, mut n, mut recs) = (0usize, 0u32, 0u64);
    while off < rest.len() {
        let Some(h) = rest.get(off..off + HEADER as usize) else {
            break;
        };
        let len = u32::from_ne_bytes(h[0..4].try_into().unwrap_or([0; 4])) as usize;
        let state = u32::from_ne_bytes(h[4..8].try_into().unwrap_or([0; 4]));
        let nrec = u32::from_ne_bytes(h[8..12].try_into().unwrap_or([0; 4]));
        let payload = u32::from_ne_bytes(h[12..16].try_into().unwrap_or([0; 4])) as usize;
        if len < HEADER as usize
            || !len.is_multiple_of(8)
            || state != STATE_COMMITTED
            || payload > len - HEADER as usize
            || off + len > rest.len()
        {
            break;
        }
        off += len;
        n += 1;
        recs += nrec as u64;
    }
    if off != rest.len() || n != nframes || recs != records {
        return Err("it is corrupt (its frames do not add up)".into());
    }
    Ok(SpillFile {
        records,
        dropped,
        frames: rest,
    })
}

/// remove_spill deletes a spill file whose frames are back in shared memory, durably: a crash
/// right after must not put them back a second time.
pub(super) fn remove_spill(name: &str) -> std::io::Result<()> {
    std::fs::remove_file(name)?;
    sync_dir()
}

/// What [`remove_dropped`] did.
#[derive(Default)]
pub struct Removed {
    /// Files removed.
    pub files: usize,
    /// Records their headers counted (a file whose header cannot be read counts none).
    pub records: u64,
    /// Files that could not be removed, with why.
    pub failures: Vec<String>,
}

/// remove_dropped deletes the spill files of `dboid`, a database that no longer exists, and
/// fsyncs the directory once. Their records belong to nobody any more: kept, they would be put
/// back into a ring for a database that cannot be connected to (its writer failing at every
/// start, the ring taken from the other databases), or, once a database is created with the
/// same oid (CREATE DATABASE … OID, open to any role with CREATEDB), into that database's
/// trail. The caller makes sure `dboid` is gone. Never raises.
pub fn remove_dropped(dboid: u32) -> Removed {
    let mut out = Removed::default();
    for (_, _, name) in spill_files().into_iter().filter(|f| f.0 == dboid) {
        let records = header_records(&name, dboid);
        match std::fs::remove_file(&name) {
            Ok(()) => {
                out.files += 1;
                out.records += records;
            }
            // Removed meanwhile by another process that saw the database gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => out.failures.push(format!("{name}: {e}")),
        }
    }
    if out.files > 0
        && let Err(e) = sync_dir()
    {
        out.failures
            .push(format!("the data directory could not be synced: {e}"));
    }
    out
}

/// The name a spill file of a base backup started as a standby or for archive recovery is set
/// aside under (see [`set_aside_copy`]); [`spill_files`] never lists it.
const COPY_PREFIX: &str = "activity_log.copied-spill.";

/// set_aside_copy renames a spill file that came with a base backup of another server started
/// as a standby or for archive recovery, instead of putting it back: its records belong to
/// the trail of the server it was copied from, which stores them itself (a standby receives
/// them from it with the WAL), and a copy put back here would store them a second time once
/// this server is promoted. Set aside, not removed: when that server was lost before it
/// stored them, they are the only copy; nor is an earlier set-aside file ever replaced. Its
/// database's trail is owed a gap record that says so (src/shared/owed.rs), stored once this
/// server writes (after a promotion).
fn set_aside_copy(name: &str, dboid: u32, signal: &str) {
    let records = header_records(name, dboid);
    let first = format!("{COPY_PREFIX}{}", &name[PREFIX.len()..]);
    let aside = (0..)
        .map(|n| match n {
            0 => first.clone(),
            n => format!("{first}-{n}"),
        })
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or(first);
    let why = match std::fs::rename(name, &aside) {
        Ok(()) => {
            if let Err(e) = sync_dir() {
                pgrx::warning!(
                    "activity_log: the data directory could not be synced after {name} was renamed to {aside}: {e}"
                );
            }
            format!(
                "{name} ({records} records) came with a base backup of another server, started here with {signal}: it was set aside as {aside} and not put back, so that no record is stored twice (a standby receives the records its primary stores, with the WAL); once this server is promoted, if its trail lacks them (the server it was copied from was lost before it stored them, or stored them after the point this copy was recovered to), rename the file back to {name} and restart"
            )
        }
        Err(e) => {
            // Never put back by this postmaster, at a crash-restart either: only an operator
            // who moved it away can decide.
            REFUSED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name.to_string());
            format!(
                "{name} ({records} records) came with a base backup of another server, started here with {signal}, and could not be set aside ({e}): it is not put back while this server runs; move it away before the server is started again, or its records may be stored a second time"
            )
        }
    };
    pgrx::warning!("activity_log: {why}");
    crate::shared::owe(dboid, why, false);
}

/// The spill files of a base backup this postmaster could not set aside ([`set_aside_copy`]),
/// which its crash-restarts leave alone too.
static REFUSED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// kept_databases lists the databases that have spill files in the data directory.
pub fn kept_databases() -> Vec<u32> {
    let mut dbs: Vec<u32> = spill_files().into_iter().map(|f| f.0).collect();
    dbs.dedup();
    dbs
}

/// header_records is the record count a spill file's header gives, 0 when it cannot be read.
fn header_records(name: &str, dboid: u32) -> u64 {
    let mut head = [0u8; FILE_HEADER];
    let read = File::open(name).and_then(|mut f| f.read_exact(&mut head));
    if read.is_err() || &head[..8] != MAGIC || head[8..12] != dboid.to_ne_bytes() {
        return 0;
    }
    u64::from_ne_bytes(head[16..24].try_into().unwrap_or([0; 8]))
}

/// spill_all writes the committed frames of every ring in use to spill files; called by the
/// rings' exit callback in the postmaster.
pub(super) fn spill_all() -> Spilled {
    let mut out = Spilled::default();
    for i in 0..super::layout::slot_count() {
        let s = super::layout::slot(i);
        let dboid = s.dboid.load(Acquire);
        if dboid == 0 {
            continue;
        }
        let dropped = s
            .dropped_records
            .load(Acquire)
            .saturating_sub(s.dropped_reported.load(Acquire));
        let view = RingView {
            slot: s,
            data: super::layout::data(i),
            cap: super::layout::capacity(),
        };
        spill_ring(&view, dboid, dropped, &mut out);
    }
    out
}

/// restore_all puts the frames of every spill file back into a ring of its database; called
/// by the postmaster right after it initialised the rings, before any other process exists. A
/// file that cannot be put back is kept, and its database's trail is owed a gap record that
/// says so (src/shared/owed.rs).
pub(super) fn restore_all() {
    let files = spill_files();
    if files.is_empty() {
        return;
    }
    let cap = super::layout::capacity();
    // SAFETY: reads the clock.
    let now = unsafe { pgrx::pg_sys::GetCurrentTimestamp() };
    // The ring of `dboid`, claimed for it if it has none yet; None when every ring is taken.
    let ring_of = |dboid: u32| {
        let n = super::layout::slot_count();
        let i = (0..n)
            .find(|&i| super::layout::slot(i).dboid.load(Relaxed) == dboid)
            .or_else(|| (0..n).find(|&i| super::layout::slot(i).dboid.load(Relaxed) == 0))?;
        let s = super::layout::slot(i);
        if s.dboid.load(Relaxed) == 0 {
            s.dboid.store(dboid, Relaxed);
            s.last_dboid.store(dboid, Relaxed);
            s.claimed_at.store(now, Relaxed);
            // Its writer sweeps durable_queue once, as after any claim.
            s.staged_commits.store(1, Relaxed);
        }
        Some(i)
    };
    if crate::shared::started_from_base_backup()
        && let Some(signal) = crate::shared::recovery_signal()
    {
        for (dboid, _, name) in files {
            set_aside_copy(&name, dboid, signal);
        }
        return;
    }
    let refused = REFUSED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut kept_for: Vec<u32> = Vec::new();
    for (dboid, _, name) in files {
        if refused.contains(&name) {
            pgrx::warning!(
                "activity_log: {name} came with a base backup of another server and could not be set aside at the first start: it is not put back (move it away)"
            );
            kept_for.push(dboid);
            continue;
        }
        let Some(i) = ring_of(dboid) else {
            pgrx::warning!(
                "activity_log: {name} is kept: every ring is taken by another database's records (raise activity_log.max_databases and restart the server to put them back)"
            );
            continue;
        };
        let s = super::layout::slot(i);
        let head = s.head.load(Relaxed);
        let problem = if kept_for.contains(&dboid) {
            Err("an older spill file of this database could not be put back before it, and the records must reach the trail in order".to_string())
        } else {
            read_spill(&name, dboid, cap - head)
        };
        let problem = problem.and_then(|f| {
            // Removed first: a file whose frames are in shared memory must not be read again.
            remove_spill(&name)
                .map_err(|e| {
                    format!("it could not be removed ({e}); its records were not put back, so that they are not stored twice")
                })
                .map(|()| f)
        });
        match problem {
            Ok(f) => {
                // SAFETY: [head, head + len) lies in this slot's data area (checked against
                // the room left); no other process exists yet.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        f.frames.as_ptr(),
                        super::layout::data(i).add(head as usize),
                        f.frames.len(),
                    );
                }
                s.head.store(head + f.frames.len() as u64, Release);
                s.published_records.fetch_add(f.records, Relaxed);
                s.dropped_records.fetch_add(f.dropped, Relaxed);
                pgrx::log!(
                    "activity_log: put {} committed records of database {dboid} back into its ring from {name}",
                    f.records
                );
            }
            Err(why) => {
                kept_for.push(dboid);
                pgrx::warning!("activity_log: {name} is kept: {why}");
                // Owed while this shared memory lasts: the next start tries the file again.
                crate::shared::owe(
                    dboid,
                    format!(
                        "records committed before the last stop were kept in {name} in the data directory but could not be put back into the ring: {why}; the file is kept, and its records are not in the trail"
                    ),
                    true,
                );
            }
        }
    }
}
