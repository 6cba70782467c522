//! shared/owed.rs: the gap records owed to trails, kept in `activity_log.owed` in the data
//! directory until each trail has stored its own.
//!
//! A crash-restart or a stop that lost records (an incident) is owed a gap record in every
//! trail, and a spill file that could not be put back one in its database's. A trail stores it
//! when its database's writer next runs, and that can be after a stop or another crash (a
//! database waiting for a ring, one that refuses connections, a standby not yet promoted), so
//! what is owed outlives shared memory:
//! - the postmaster adds an incident owed to every database when it makes shared memory after
//!   one ([`new_shared_memory`]), and what one database owes for its spill files ([`owe`]);
//!   what a spill file not put back at one start owes is dropped at the next, which tries the
//!   file again (and notes it again if it fails again);
//! - the launcher, when it starts, gives each such line to the databases that exist then (a
//!   database created later owes nothing for an earlier incident) and drops the lines of
//!   databases that no longer exist ([`settle_databases`]);
//! - a writer stores its database's lines as gap records ([`owed_to`]), then removes them
//!   ([`paid`]); a writer whose database has no trail removes them unstored, and so do CREATE
//!   DATABASE (a new database may take a dropped one's oid) and CREATE EXTENSION (a new trail)
//!   ([`forgive`]).
//!
//! One JSON object per line (JSON lines, read with serde_json). A gap record owed is known by
//! its reason and the time shared memory was made when it was noted
//! (`shared_memory_started_at_us`), both in the record: the writer stores no second one that
//! its trail holds already (a writer killed between its commit and [`paid`], a copy of a
//! primary whose file it copied).
//! Plain file I/O under an advisory lock (flock) of `activity_log.owed.lock`; a failure is
//! logged, never raised, and a file that cannot be read is left as it is. Runs in the
//! postmaster (no other process exists then), the launcher, writers, and backends running
//! CREATE DATABASE or CREATE EXTENSION; never in a commit path.

use pgrx::prelude::*;
use serde_json::{Value, json};
use std::fs::File;

const OWED_FILE: &str = "activity_log.owed";
const LOCK_FILE: &str = "activity_log.owed.lock";

/// Lines kept per database (and of incidents not yet given to databases): a database whose
/// writer cannot run (one that refuses connections, template0) must not grow the file without
/// end. The oldest go first; 64 incidents before a writer runs again is far past any real case.
const KEEP_PER_DATABASE: usize = 64;

/// Times after 2000-01-01 and before 2200 (in µs from PostgreSQL's epoch) are times a line can
/// hold.
const PLAUSIBLE_US: i64 = 200 * 366 * 86_400 * 1_000_000;

/// A gap record owed: by one database, or by every database for an incident.
#[derive(Clone, Debug, PartialEq)]
pub struct Owed {
    /// The database that owes it; None: every database that exists when the launcher starts.
    db: Option<u32>,
    /// Databases that stored it already (lines of every database only).
    done: Vec<u32>,
    /// When shared memory was made after the incident, or when the line was noted: no record
    /// lost is younger.
    pub started_at_us: i64,
    /// What the trail is told.
    pub reason: String,
    /// For an incident (not a spill file's note): the window of records that may be lost.
    pub incident: Option<Incident>,
    /// Owed only while the shared memory it was noted in lasts.
    start_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Incident {
    /// Crash-restarts of the postmaster before that shared memory.
    pub crash_restarts: u32,
    /// The previous run stopped having lost records (or never released shared memory).
    pub unclean_stop: bool,
}

impl Owed {
    fn to_line(&self) -> String {
        let mut v = json!({
            "db": self.db,
            "shared_memory_started_at_us": self.started_at_us,
            "reason": self.reason,
        });
        if let Some(i) = self.incident {
            v["crash_restarts"] = json!(i.crash_restarts);
            v["unclean_stop"] = json!(i.unclean_stop);
        }
        if self.start_only {
            v["start_only"] = json!(true);
        }
        if !self.done.is_empty() {
            v["done"] = json!(self.done);
        }
        v.to_string()
    }

    /// from_line reads a line as [`Owed::to_line`] wrote it; None for anything else, also for
    /// values the writer's SQL would refuse (a time out of PostgreSQL's range, a NUL in the
    /// reason), so that a line edited by hand is skipped, not a writer made to fail.
    fn from_line(line: &[u8]) -> Option<Owed> {
        let v: Value = serde_json::from_slice(line).ok()?;
        let oid = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        Some(Owed {
            db: match &v["db"] {
                Value::Null => None,
                d => Some(oid(d)?),
            },
            done: v["done"]
                .as_array()
                .map(|a| a.iter().filter_map(oid).collect())
                .unwrap_or_default(),
            started_at_us: v["shared_memory_started_at_us"]
                .as_i64()
                .filter(|t| (0..=PLAUSIBLE_US).contains(t))?,
            reason: v["reason"]
                .as_str()
                .filter(|r| !r.contains('\0'))?
                .to_string(),
            incident: match (&v["crash_restarts"], &v["unclean_stop"]) {
                (Value::Null, Value::Null) => None,
                (c, u) => Some(Incident {
                    crash_restarts: oid(c)?,
                    unclean_stop: u.as_bool()?,
                }),
            },
            start_only: v["start_only"].as_bool().unwrap_or(false),
        })
    }

    fn owed_by(&self, dboid: u32) -> bool {
        self.db.map_or(!self.done.contains(&dboid), |d| d == dboid)
    }

    fn same_record(&self, other: &Owed) -> bool {
        self.started_at_us == other.started_at_us && self.reason == other.reason
    }
}

/// new_shared_memory drops what was owed only while the previous shared memory lasted, and
/// notes the incident that preceded this one (a crash-restart, a stop that lost records), owed
/// to every trail; the postmaster calls it each time it makes shared memory.
pub(super) fn new_shared_memory(started_at_us: i64, incident: Option<(Incident, String)>) {
    update(|lines| {
        lines.retain(|o| !o.start_only);
        // A base backup started again before it read its backup_label (its first start waited
        // for WAL, say) is the same copy: its record is owed once. Only its first shared
        // memory: a crash-restart is an incident of its own, whatever its reason says.
        let again = |(incident, reason): &(Incident, String)| {
            incident.crash_restarts == 0
                && super::started_from_base_backup()
                && lines.iter().any(|o| o.db.is_none() && o.reason == *reason)
        };
        if let Some((incident, reason)) = incident.filter(|i| !again(i)) {
            lines.push(Owed {
                db: None,
                done: Vec::new(),
                started_at_us,
                reason,
                incident: Some(incident),
                start_only: false,
            });
        }
    });
}

/// owe notes a gap record owed to the trail of `dboid` alone, `start_only` while this shared
/// memory lasts; the postmaster calls it while it puts spill files back, right after it made
/// the rings (this module's shared memory is made before them: `_PG_init` registers it first,
/// and pgrx runs the earlier startup hook first).
pub fn owe(dboid: u32, reason: String, start_only: bool) {
    let started_at_us = super::started_at();
    update(|lines| {
        lines.push(Owed {
            db: Some(dboid),
            done: Vec::new(),
            started_at_us,
            reason,
            incident: None,
            start_only,
        })
    });
}

/// settle_databases gives each incident owed to every database to those of `existing` that
/// have not stored it, and drops what databases not in `existing` owe (they were dropped);
/// the launcher calls it when it starts, before it starts any writer.
pub fn settle_databases(existing: &[u32]) {
    update(|lines| {
        let mut settled = Vec::with_capacity(lines.len());
        for o in lines.drain(..) {
            match o.db {
                Some(d) if existing.contains(&d) => settled.push(o),
                Some(_) => {}
                None => {
                    settled.extend(
                        existing
                            .iter()
                            .filter(|d| !o.done.contains(d))
                            .map(|&d| Owed {
                                db: Some(d),
                                done: Vec::new(),
                                ..o.clone()
                            }),
                    )
                }
            }
        }
        *lines = settled;
    });
}

/// owed_to lists what database `dboid` owes, oldest first.
pub fn owed_to(dboid: u32) -> Vec<Owed> {
    let _lock = lock();
    read()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.owed_by(dboid))
        .collect()
}

/// paid removes the lines of `owed` from what `dboid` owes, once its trail holds their
/// records.
pub fn paid(dboid: u32, owed: &[Owed]) {
    settle_for(dboid, |o| owed.iter().any(|p| p.same_record(o)));
}

/// forgive removes everything `dboid` owes: it has no trail (the extension is not installed
/// there), or it is a new database that took the oid of a dropped one; a trail created later
/// owes nothing for what happened before.
pub fn forgive(dboid: u32) {
    settle_for(dboid, |_| true);
}

fn settle_for(dboid: u32, settles: impl Fn(&Owed) -> bool) {
    update(|lines| {
        lines.retain_mut(|o| {
            if !o.owed_by(dboid) || !settles(o) {
                return true;
            }
            if o.db.is_some() {
                return false;
            }
            o.done.push(dboid);
            true
        })
    });
}

/// update changes the file's lines under the lock, and writes them back when they changed;
/// nothing when the file cannot be read (it is not replaced by what could be read of it).
fn update(change: impl FnOnce(&mut Vec<Owed>)) {
    let _lock = lock();
    let Some(before) = read() else {
        return;
    };
    let mut lines = before.clone();
    change(&mut lines);
    trim(&mut lines);
    if lines != before {
        let text: String = lines.iter().map(|o| o.to_line() + "\n").collect();
        super::state_file::replace_file(OWED_FILE, &text);
    }
}

/// trim keeps the newest KEEP_PER_DATABASE lines of each database (and of every database).
fn trim(lines: &mut Vec<Owed>) {
    let mut seen: Vec<(Option<u32>, usize)> = Vec::new();
    let mut keep = vec![true; lines.len()];
    for (i, o) in lines.iter().enumerate().rev() {
        match seen.iter_mut().find(|(db, _)| *db == o.db) {
            Some((_, n)) => {
                *n += 1;
                keep[i] = *n <= KEEP_PER_DATABASE;
            }
            None => seen.push((o.db, 1)),
        }
    }
    let mut k = keep.into_iter();
    lines.retain(|_| k.next().unwrap_or(true));
}

/// read returns the file's lines; none when it is missing, None when it cannot be read. A
/// line that does not parse (the file was edited by hand) is logged and skipped.
fn read() -> Option<Vec<Owed>> {
    let bytes = match std::fs::read(OWED_FILE) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(e) => {
            log!("activity_log: could not read {OWED_FILE}: {e}");
            return None;
        }
    };
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .filter_map(|l| {
            let o = Owed::from_line(l);
            if o.is_none() {
                log!(
                    "activity_log: skipped a line of {OWED_FILE} that is not an owed gap record: {}",
                    String::from_utf8_lossy(l)
                );
            }
            o
        })
        .collect();
    Some(lines)
}

/// lock takes the file lock for as long as the returned file lives; None (and a log line)
/// when it cannot, and the caller goes on unlocked: only writers of different databases and
/// the launcher share the file, and losing a race costs a gap record stored twice, at worst.
fn lock() -> Option<File> {
    let taken = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .and_then(|f| f.lock().map(|()| f));
    match taken {
        Ok(f) => Some(f),
        Err(e) => {
            log!("activity_log: could not lock {LOCK_FILE}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(at: i64) -> Owed {
        Owed {
            db: None,
            done: Vec::new(),
            started_at_us: at,
            reason: "r \"quoted\"\nline".into(),
            incident: Some(Incident {
                crash_restarts: 1,
                unclean_stop: false,
            }),
            start_only: false,
        }
    }

    #[test]
    fn a_line_reads_back_as_written() {
        let mut o = incident(7);
        let read = |o: &Owed| Owed::from_line(o.to_line().as_bytes());
        assert_eq!(read(&o), Some(o.clone()));
        o.db = Some(5);
        o.done = vec![1, 2];
        assert_eq!(read(&o), Some(o.clone()));
        o.incident = None;
        o.start_only = true;
        assert_eq!(read(&o), Some(o.clone()));
        for bad in [
            &b"{\"db\": -1}"[..],
            b"garbage",
            b"\xe9t\xe9",
            br#"{"db":5,"shared_memory_started_at_us":9223372036854775807,"reason":"r"}"#,
            br#"{"db":5,"shared_memory_started_at_us":-1,"reason":"r"}"#,
            br#"{"db":5,"shared_memory_started_at_us":7,"reason":"a\u0000b"}"#,
        ] {
            assert_eq!(
                Owed::from_line(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(
            Owed::from_line(br#"{"db":5,"shared_memory_started_at_us":7,"reason":"r"}"#).is_some()
        );
    }

    #[test]
    fn trim_keeps_the_newest_of_each_database() {
        let mut lines: Vec<Owed> = (0..KEEP_PER_DATABASE as i64 + 3)
            .flat_map(|at| {
                let mut d = incident(at);
                d.db = Some(9);
                [incident(at), d]
            })
            .collect();
        trim(&mut lines);
        assert_eq!(lines.len(), 2 * KEEP_PER_DATABASE);
        assert_eq!(lines[0].started_at_us, 3);
        assert_eq!(
            lines.last().unwrap().started_at_us,
            KEEP_PER_DATABASE as i64 + 2
        );
    }
}
