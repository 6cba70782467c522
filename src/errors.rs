//! errors.rs: one way to raise an ERROR with a hint, in PostgreSQL's message style
//! (lower-case message without a period; detail and hint are full sentences).

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// raise reports an ERROR and does not return.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: Option<&str>) -> ! {
    raise_with_detail(code, message, None, hint)
}

/// raise_with_detail is [`raise`] with a DETAIL line.
pub fn raise_with_detail(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    detail: Option<&str>,
    hint: Option<&str>,
) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "activity_log");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR returned")
}

/// warn reports a WARNING with a detail and a hint, and returns.
pub fn warn(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let mut report = ErrorReport::new(code, message.into(), "activity_log");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::WARNING);
}
