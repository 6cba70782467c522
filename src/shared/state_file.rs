//! shared/state_file.rs: the crash state file, `activity_log.state` in the data directory.
//!
//! It tells a starting server whether the previous run could have lost records held in
//! shared memory. Written by the postmaster only: "running" when shared memory is
//! initialised (mod.rs), "drained" when the postmaster releases it with every ring empty (the
//! ring's exit callback calls [`note_drained`]). Plain file I/O; a failure is logged, never
//! raised.

use pgrx::prelude::*;

/// In the data directory: "running" while the server runs, "drained" once it stopped with
/// every ring empty. "running" at start means the previous run ended with records possibly
/// in shared memory (an immediate shutdown, a killed postmaster, a power cut): they are lost,
/// and every trail gets a gap record. No file: the first start with activity_log.
const STATE_FILE: &str = "activity_log.state";

pub(super) fn previous_stop_was_unclean() -> bool {
    std::fs::read_to_string(STATE_FILE).is_ok_and(|s| s.trim() == "running")
}

/// write_state replaces the state file durably; runs in the postmaster only.
pub(super) fn write_state(state: &str) {
    let written = (|| {
        let tmp = format!("{STATE_FILE}.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("{state}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, STATE_FILE)
    })();
    if let Err(e) = written {
        log!("activity_log: could not write {STATE_FILE}: {e}");
    }
}

/// note_drained records a clean stop: the postmaster is releasing shared memory (at shutdown,
/// or before a crash-restart) and no record is left in any ring.
pub fn note_drained() {
    write_state("drained");
}
