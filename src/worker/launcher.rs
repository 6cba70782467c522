//! worker/launcher.rs: the one static background worker; keeps a writer running for every
//! database that has a ring, and gives rings to databases that wait for one.
//!
//! A ring with a database and no writer gets one, after a back-off that doubles with each
//! failed run (1 s, 2 s, ... 60 s). Databases that staged records while they had no ring wait
//! on a list (ring/waiting.rs): each gets a free ring and a writer; when no ring is free, the
//! writer that has held its ring longest is asked to hand it back (at once when idle, after its
//! turn when busy; worker/writer.rs), so any number of databases share `max_databases` rings
//! and as many writers. At start every connectable database is put on the list, so that what a
//! database staged before a restart is found (a writer whose database lacks the extension
//! frees its ring and exits at once). It connects to no database and only scans `pg_database`.
//! When it starts it also frees the rings and removes the spill files of databases that no
//! longer exist ([`discard_dropped_databases`]): the one place where records are discarded
//! because of what the catalog says, so it never touches a ring that changed meanwhile. And it
//! gives the gap records owed for earlier incidents to the databases that exist
//! (src/shared/owed.rs).

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::time::Duration;

use crate::process;
use crate::ring;
use crate::shared;

/// register adds the launcher to the postmaster's static workers; called from `_PG_init`.
pub fn register() {
    BackgroundWorkerBuilder::new("activity_log launcher")
        .set_type("activity_log launcher")
        .set_library("activity_log")
        .set_function("al_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn al_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    process::mark_own_worker();
    BackgroundWorker::connect_worker_to_spi(None, None);
    super::pin_settings();
    // A background worker attached to shared memory always has a PGPROC (-1 would only mean
    // "nobody to wake").
    let procno = crate::versions::my_proc_number().unwrap_or(-1);
    // SAFETY: reads a process global.
    shared::set_launcher(procno, unsafe { pg_sys::MyProcPid });

    discard_dropped_databases();
    // Before any writer starts: the databases that exist now are those owed the gap records
    // of incidents before this start. Templates too: a database's owner may mark it one, and
    // must not keep its trail's records out so; where no writer ever runs (template0), the
    // lines stay, up to the file's cap.
    shared::settle_databases(&existing_databases());
    for dboid in connectable_databases() {
        ring::note_waiting(dboid);
    }
    while BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: documented way to reload settings in a worker.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        supervise();
    }
    shared::set_launcher(-1, 0);
    // Exit code 1: if this was pg_terminate_backend, the postmaster starts us again.
    // SAFETY: normal process exit.
    unsafe { pg_sys::proc_exit(1) };
}

/// supervise starts a writer for every ring that needs one and whose back-off has passed, and
/// gives rings to the databases that wait for one.
fn supervise() {
    give_rings();
    // SAFETY: no error paths.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    for i in 0..ring::slot_count() {
        let dboid = ring::slot_dboid(i);
        if dboid == 0 {
            continue;
        }
        if ring::paused(i) {
            // A drop stopped its writer: none until the drop ends, even if the backend that
            // paused it left without ending it.
            // SAFETY: a lookup in the proc array.
            let pid = ring::paused_by(i);
            if unsafe { pg_sys::BackendPidGetProc(pid) }.is_null() {
                ring::resume_abandoned(i, pid);
            }
            continue;
        }
        let since = now - ring::start_requested_at(i);
        match ring::writer_state(i) {
            ring::WRITER_NONE => {
                let backoff_s = 1i64 << ring::failures(i).min(6);
                if since >= backoff_s.min(60) * 1_000_000 {
                    start_writer(dboid);
                }
            }
            // A writer that never attached within 30 s failed to start.
            ring::WRITER_STARTING if since > 30_000_000 => ring::detach_writer(i, 0, true),
            _ => {}
        }
    }
}

/// give_rings gives each waiting database a free ring and a writer, and asks for a ring back
/// when none is free.
fn give_rings() {
    let waiting = ring::waiting_databases();
    if waiting.is_empty() {
        return;
    }
    let existing = connectable_databases();
    let mut asked = false;
    for dboid in waiting {
        if !existing.contains(&dboid) {
            ring::stop_waiting(dboid); // dropped, or no longer accepts connections
            continue;
        }
        if let Some(i) = ring::slot_of(dboid) {
            // It got a ring meanwhile (a committing backend claims a free one): its writer
            // sweeps durable_queue for what was staged without one. One being handed back
            // is no ring: the database waits for the next.
            if !ring::closing(i) {
                ring::stop_waiting(dboid);
                ring::request_sweep(i);
            }
            continue;
        }
        if ring::claim(dboid, 0).is_some() {
            start_writer(dboid);
        } else if !asked {
            ask_for_a_ring();
            asked = true;
        }
    }
}

/// ask_for_a_ring asks the writer that has held its ring longest to hand it back, unless a
/// ring is being handed back already (one at a time: each hand-back serves one database).
fn ask_for_a_ring() {
    let held = (0..ring::slot_count()).filter(|&i| ring::slot_dboid(i) != 0);
    if held
        .clone()
        .any(|i| ring::hand_back_requested(i) || ring::closing(i))
    {
        return;
    }
    if let Some(i) = held
        .filter(|&i| ring::writer_state(i) == ring::WRITER_RUNNING)
        .min_by_key(|&i| ring::claimed_at(i))
    {
        ring::request_hand_back(i);
    }
}

fn start_writer(dboid: u32) {
    // SAFETY: no error paths.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    if let Some(i) = ring::slot_of(dboid) {
        ring::mark_starting(i, now);
    }
    let started = BackgroundWorkerBuilder::new(&format!("activity_log writer {dboid}"))
        .set_type("activity_log writer")
        .set_library("activity_log")
        .set_function("al_writer_main")
        .set_argument(Some(pg_sys::Datum::from(dboid)))
        .enable_spi_access()
        .load_dynamic();
    if started.is_err() {
        // While rings change hands, a writer that handed its ring back may still hold its
        // worker slot for a moment: tried again at the next pass, not a failed run. Said in
        // the log only when a database has waited for a slot for a while.
        let first = NO_SLOT_SINCE.with_borrow_mut(|m| *m.entry(dboid).or_insert(now));
        if now - first > NO_SLOT_LOG_AFTER_US {
            log!(
                "activity_log: could not start a writer for database {dboid} for {} s; no background worker slot is free (raise max_worker_processes)",
                (now - first) / 1_000_000
            );
            NO_SLOT_SINCE.with_borrow_mut(|m| m.insert(dboid, now));
        }
        if let Some(i) = ring::slot_of(dboid) {
            ring::detach_writer(i, 0, false);
        }
    } else {
        NO_SLOT_SINCE.with_borrow_mut(|m| m.remove(&dboid));
    }
}

/// How long a database may wait for a background worker slot before the log says so.
const NO_SLOT_LOG_AFTER_US: i64 = 30_000_000;

thread_local! {
    /// Databases whose writer found no free background worker slot, since when.
    static NO_SLOT_SINCE: std::cell::RefCell<std::collections::HashMap<u32, i64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// discard_dropped_databases frees the rings and removes the spill files that hold records of
/// databases that no longer exist, with one WARNING per database. Such records come from a
/// spill file kept at an earlier start (a ring too small, say) of a database dropped before
/// this one: put back into a ring, they would have a writer failing at every start, hold a
/// ring the other databases wait for, be written out again at each stop, and end up in the
/// trail of whatever database is created later with the same oid. Runs once when the launcher
/// starts, while backends may already run: a ring is freed only if it took no frame since it
/// was read, before pg_database was.
fn discard_dropped_databases() {
    let rings: Vec<(usize, u32, u64)> = (0..ring::slot_count())
        .map(|i| (i, ring::slot_dboid(i), ring::head(i)))
        .filter(|&(_, dboid, _)| dboid != 0)
        .collect();
    let kept = ring::kept_databases();
    if rings.is_empty() && kept.is_empty() {
        return;
    }
    let existing = existing_databases();
    let mut gone: Vec<u32> = rings
        .iter()
        .map(|r| r.1)
        .chain(kept.iter().copied())
        .filter(|dboid| !existing.contains(dboid))
        .collect();
    gone.sort_unstable();
    gone.dedup();
    for dboid in gone {
        let in_ring: u64 = rings
            .iter()
            .filter(|r| r.1 == dboid)
            .filter_map(|&(i, _, head)| ring::release_dropped(i, dboid, head))
            .sum();
        let ring::Removed {
            files,
            records,
            failures,
        } = ring::remove_dropped(dboid);
        let failed = if failures.is_empty() {
            String::new()
        } else {
            format!(
                "; could not remove {} (tried again at the next start)",
                failures.join(", ")
            )
        };
        warning!(
            "activity_log: database {dboid} no longer exists: discarded its {} records kept from before the start ({in_ring} in its ring, {records} in {files} spill files){failed}",
            in_ring + records
        );
    }
}

/// existing_databases lists every database in pg_database that is not half-dropped.
fn existing_databases() -> Vec<u32> {
    scan_databases(|db| {
        // A DROP DATABASE interrupted after it marked the database invalid (15.4 and later
        // minors; the earlier ones never store -2): PostgreSQL's database_is_invalid_form
        // tests the same. Nobody can connect to it again; it can only be dropped.
        db.datconnlimit != pg_sys::DATCONNLIMIT_INVALID_DB
    })
}

/// connectable_databases lists databases that accept connections, read straight from the
/// shared catalog because the launcher is connected to no database.
fn connectable_databases() -> Vec<u32> {
    scan_databases(|db| db.datallowconn && !db.datistemplate)
}

/// scan_databases lists the databases of pg_database that `keep` takes, read straight from the
/// shared catalog because the launcher is connected to no database.
fn scan_databases(keep: impl Fn(&pg_sys::FormData_pg_database) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    // SAFETY: the classic catalog scan of autovacuum's get_database_list, inside a transaction.
    unsafe {
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let db = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tup);
            if keep(&*db) {
                out.push((*db).oid.to_u32());
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    out
}
