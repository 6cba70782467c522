//! capture/origin.rs: who is acting, and from where: the `Origin` every record carries and
//! the `FrameInfo` (process, transaction, client address) that opens every frame.
//!
//! Runs in every backend, on the write path, whenever a record is made or a frame is sealed.
//! Plain reads of backend globals and settings: nothing here raises an ERROR, so the abort
//! path may call [`cached_client_addr`] and [`frame_info`]. The client's own strings (actor,
//! context, JWT claims) are bounded ([`ORIGIN_FIELD_MAX`]), so a session cannot make its records
//! too large for the ring. Leaf module: it uses nothing else of capture.

use pgrx::pg_sys;
use std::cell::RefCell;
use std::ffi::{CStr, c_char};

use crate::gucs;
use crate::record::{Bytes, FrameInfo, Origin};
use crate::unguarded;

thread_local! {
    static CLIENT_ADDR: RefCell<Option<Option<Vec<u8>>>> = const { RefCell::new(None) };
}

/// origin tells who is acting, and in which context, right now. It borrows the strings of
/// settings, which stay put until a setting changes: encode the record it goes into at once
/// (every caller does), not after anything that could run SET.
pub fn origin() -> Origin<'static> {
    // SAFETY: plain reads of backend globals and GUC strings; none of these raise errors.
    unsafe {
        let jwt = unguarded::GetConfigOption(c"request.jwt.claims".as_ptr(), true, false);
        Origin {
            session_user: unguarded::GetSessionUserId().to_u32(),
            current_user: unguarded::GetUserId().to_u32(),
            actor: gucs::actor().map(|mut a| {
                a.truncate(clip(&a, ORIGIN_FIELD_MAX).len());
                a.into()
            }),
            context: gucs::context().map(|c| bounded_json(c.into())),
            jwt_claims: borrowed_cstr(jwt)
                .filter(|b| !b.is_empty())
                .map(|j| bounded_json(j.into())),
            application_name: borrowed_cstr(pg_sys::application_name)
                .unwrap_or_default()
                .into(),
        }
    }
}

/// The most bytes of actor, context, jwt_claims and an error message a record carries. They
/// are the client's to set, and 17 MB of claims (repeated by every record) made records too
/// large for the ring: a session's own DDL and changes could be made to vanish under
/// `overflow = drop`.
pub(super) const ORIGIN_FIELD_MAX: usize = 8192;

/// bounded_json is `json`, or when it is longer than ORIGIN_FIELD_MAX a JSON object that says
/// so (a cut would not be JSON).
fn bounded_json(json: Bytes<'static>) -> Bytes<'static> {
    if json.len() <= ORIGIN_FIELD_MAX {
        return json;
    }
    format!(
        "{{\"activity_log\": \"left out: {} bytes, over the {ORIGIN_FIELD_MAX} a record keeps\"}}",
        json.len()
    )
    .into_bytes()
    .into()
}

/// borrowed_cstr lends a string PostgreSQL owns (a setting's value, the query string) for as
/// long as the caller knows it stays put (see [`origin`]); [`cstr_bytes`] copies one.
pub(super) unsafe fn borrowed_cstr(p: *const c_char) -> Option<&'static [u8]> {
    // SAFETY: p is NULL or a NUL-terminated string owned by PostgreSQL.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// client_addr returns the client's address as text (NULL for Unix sockets), computed once.
pub fn client_addr() -> Option<Vec<u8>> {
    CLIENT_ADDR.with_borrow_mut(|c| {
        c.get_or_insert_with(|| {
            // SAFETY: inet_client_addr reads MyProcPort; inet_out formats its result. Called
            // inside a transaction (from a hook or PRE_COMMIT), where palloc is fine.
            unsafe {
                let addr = pgrx::direct_function_call_as_datum(pg_sys::inet_client_addr, &[])?;
                let text = pgrx::direct_function_call_as_datum(pg_sys::inet_out, &[Some(addr)])?;
                cstr_bytes(text.cast_mut_ptr::<c_char>())
            }
        })
        .clone()
    })
}

/// cached_client_addr is [`client_addr`] for paths that may not call functions (abort).
pub fn cached_client_addr() -> Option<Vec<u8>> {
    CLIENT_ADDR.with_borrow(|c| c.clone().flatten())
}

pub(super) unsafe fn cstr_bytes(p: *const c_char) -> Option<Vec<u8>> {
    // SAFETY: p is NULL or a NUL-terminated string owned by PostgreSQL.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes().to_vec())
}

/// frame_info encodes the per-transaction facts that open every frame.
pub(super) fn frame_info() -> Vec<u8> {
    let mut info = Vec::with_capacity(64);
    // SAFETY: plain reads of backend state.
    let (pid, xid) = unsafe {
        (
            pg_sys::MyProcPid,
            unguarded::GetTopFullTransactionIdIfAny().value,
        )
    };
    FrameInfo {
        pid,
        xid,
        client_addr: cached_client_addr(),
    }
    .encode(&mut info);
    info
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

    #[test]
    fn clip_respects_utf8_boundaries() {
        assert_eq!(clip("héllo".as_bytes(), 2), b"h");
        assert_eq!(clip("héllo".as_bytes(), 3), "hé".as_bytes());
        assert_eq!(clip(b"abc", 10), b"abc");
        assert_eq!(clip(b"abc", 0), b"");
    }
}
