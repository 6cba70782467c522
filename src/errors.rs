//! errors.rs: one way to raise an ERROR with a hint, in PostgreSQL's message style
//! (lower-case message without a period; detail and hint are full sentences).

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// raise reports an ERROR and does not return.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "activity_log");
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR returned")
}
