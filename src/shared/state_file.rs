//! shared/state_file.rs: the crash state file, `activity_log.state` in the data directory.
//!
//! It tells a starting server whether the previous run could have lost records held in
//! shared memory. Written by the postmaster only: "running" when shared memory is
//! initialised (mod.rs); when the postmaster releases it, after the rings' exit callback
//! spilled their committed records to files (ring/spill.rs), "drained" if nothing was lost,
//! else "lost" and a line that says what ([`note_lost`]). Plain file I/O; a failure is logged,
//! never raised.

use pgrx::prelude::*;

/// In the data directory: "running" while the server runs, "drained" once it stopped having
/// lost nothing, "lost" and a reason once it stopped having lost something. "running" at
/// start means the postmaster never released shared memory (a killed postmaster, a power
/// cut): whatever was in the rings is lost. No file: the first start with activity_log.
const STATE_FILE: &str = "activity_log.state";

/// What a starting server says of a previous run whose postmaster never got to release shared
/// memory.
const NEVER_RELEASED: &str = "the server stopped without releasing shared memory (a killed postmaster, an operating system crash or a power loss); records that were in shared memory were lost";

/// What a base backup's first start says of the server it was copied from.
const FROM_BASE_BACKUP: &str = "this data directory is a base backup of another server (or was rewound from one by pg_rewind), started here for the first time: what that server had captured but neither stored in its trail nor kept in a spill file when the backup was taken is not in this trail (a standby gets what its primary stores later, with the WAL; a copy recovered to a point in time, or started on its own, does not)";

/// recovery_signal names the file that makes this start a standby's or an archive
/// recovery's (`standby.signal`, `recovery.signal`, in the data directory), None for a server
/// that starts as itself.
pub fn recovery_signal() -> Option<&'static str> {
    ["standby.signal", "recovery.signal"]
        .into_iter()
        .find(|f| std::fs::metadata(f).is_ok())
}

/// started_from_base_backup tells whether this is the first start of a base backup (a copy of
/// another server's data directory, with that server's state and spill files): its
/// `backup_label` is there until the startup process has read it, after the postmaster made
/// shared memory. Decided at the first call, which the postmaster makes then; a server's own
/// data directory started with standby.signal (an HA manager starts every node so, and
/// promotes one) has none.
pub fn started_from_base_backup() -> bool {
    static FROM_BACKUP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FROM_BACKUP.get_or_init(|| std::fs::metadata("backup_label").is_ok())
}

/// previous_stop_loss says what the previous run lost, None when nothing (or no previous run).
/// At a base backup's first start, the state file is the copied server's ("running" while the
/// backup was taken), and what the copy lacks is what that server had not stored yet.
pub(super) fn previous_stop_loss() -> Option<String> {
    if started_from_base_backup() {
        return Some(FROM_BASE_BACKUP.to_string());
    }
    let text = std::fs::read_to_string(STATE_FILE).ok()?;
    let mut lines = text.lines();
    match lines.next()?.trim() {
        "running" => Some(NEVER_RELEASED.to_string()),
        "lost" => Some(format!(
            "the server stopped and lost records: {}",
            lines.next().unwrap_or("(no reason recorded)").trim()
        )),
        _ => None,
    }
}

/// write_state replaces the state file durably; runs in the postmaster only.
pub(super) fn write_state(state: &str) {
    replace_file(STATE_FILE, &format!("{state}\n"));
}

/// replace_file replaces a file of the data directory durably (a new file renamed over it);
/// a failure is logged.
pub(super) fn replace_file(name: &str, text: &str) {
    let written = (|| {
        let tmp = format!("{name}.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, name)?;
        std::fs::File::open(".")?.sync_all()
    })();
    if let Err(e) = written {
        log!("activity_log: could not write {name}: {e}");
    }
}

/// note_drained records a stop that lost nothing: the postmaster is releasing shared memory
/// (at shutdown, or before a crash-restart) and every committed record left in a ring is in a
/// spill file.
pub fn note_drained() {
    super::note_release(None);
    write_state("drained");
}

/// note_lost records a stop that lost records, and why (one line).
pub fn note_lost(reason: &str) {
    let reason = reason.replace('\n', " ");
    super::note_release(Some(reason.clone()));
    write_state(&format!("lost\n{reason}"));
}
