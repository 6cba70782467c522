//! worker: the launcher (one, static) and the writers (one per audited database).
//! Both run as background workers, never capture their own statements, and never share a
//! database connection.

pub mod chain;
mod decode;
pub mod launcher;
mod store;
pub mod writer;
