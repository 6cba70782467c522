//! capture/events.rs: application events, the records `activity_log.log_event()` adds.
//!
//! Runs in the backend that calls `log_event()`, inside its transaction. api/mod.rs checks the
//! arguments and hands them here: the event goes into the pending buffer (pending.rs) with the
//! session's origin, and is published with the transaction's other records, or not at all.

use pgrx::pg_sys;

use super::{context, origin, pending};
use crate::record::{Body, Event, Record};

/// log_event adds an application event to the open transaction, unless this session captures
/// nothing ([`context::capturing`]). `privileged`: the caller is a superuser, whose events may
/// fill the whole ring (the others' only half of it, see ring::Share).
pub fn log_event(
    action: &str,
    details: Vec<u8>,
    entity_type: Option<&str>,
    entity_id: Option<&str>,
    category: &str,
    severity: &str,
    privileged: bool,
) {
    if !context::capturing() {
        return;
    }
    origin::client_addr();
    if !privileged {
        pending::note_unprivileged_event();
    }
    // SAFETY: no error paths.
    let ts = unsafe { pg_sys::GetCurrentTimestamp() };
    pending::push(&Record {
        origin: origin::origin(),
        body: Body::Event(Event {
            ts,
            action: action.as_bytes().into(),
            details: details.into(),
            entity_type: entity_type.map(|s| s.as_bytes().into()),
            entity_id: entity_id.map(|s| s.as_bytes().into()),
            category: category.as_bytes().into(),
            severity: severity.as_bytes().into(),
        }),
    });
}
