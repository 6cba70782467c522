//! worker/map.rs: record → trail row. Owns [`Rows`], the trail rows of one batch in ring
//! order with what the rollups need of each: it checks each frame before any of it is decoded,
//! maps each record to its row or rows (kind, category, severity, status, details, row
//! images), puts a dead letter and a gap record in place of what cannot be read or stored, and
//! hands the rows to worker/store.rs and worker/rollup.rs.
//!
//! Runs in the writer, inside a batch transaction (decoding row images needs the catalog).
//! The way is one-directional, drain → map → store: it takes no batch, moves no ring and
//! commits nothing.

use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::HashMap;

use crate::record::{self, Body, Op, StatementClass};
use crate::ring;
use crate::worker::decode;
use crate::worker::pace;
use crate::worker::rollup::{Categories, Fact, Rollups};
use crate::worker::store::{self, Col, Row, Trail};
use crate::worker::subxact::{
    error_message, in_subtransaction, is_transient, try_in_subtransaction,
};
use crate::worker::suspects;

/// dead_letter keeps a row the trail refused in activity_log.dead_letters (as jsonb of the
/// trail's row type); returns its id, or None when even that fails (the gap record says why).
fn dead_letter(trail: &Trail, row: &Row, what: &str, error: &str) -> Option<i64> {
    let mut id = None;
    let kept = in_subtransaction(|| {
        let text = trail.as_text(row);
        id = Spi::get_one_with_args::<i64>(
            "INSERT INTO activity_log.dead_letters (committed_at, what, error, record)
             SELECT (r).committed_at, $1, $2, to_jsonb(r) FROM (SELECT $3::activity_log.events AS r) x
             RETURNING id",
            &[what.into(), error.into(), text.into()],
        )
        .ok()
        .flatten();
    });
    kept.ok().and(id)
}

/// check_frame validates a frame before any of it is decoded, and splits it into its frame
/// info and records: a staged frame's seal against its row (see record.rs), the frame's
/// structure, a staged frame's record count and transaction id against its row, and every
/// row image against the columns it is described by, and those against their types, so that
/// no length in the frame can make the decoder read past a buffer.
fn check_frame<'a>(
    decoder: &mut decode::Decoder<'a>,
    frame: &'a ring::Frame,
) -> Result<(record::FrameInfo, Vec<record::Record<'a>>), String> {
    let payload = match &frame.staged {
        Some(row) => record::unseal(&frame.payload, row).map_err(|e| e.0.into_owned())?,
        None => &frame.payload[..],
    };
    let (info, records) = record::decode_frame(payload).map_err(|e| e.0.into_owned())?;
    if let Some(row) = &frame.staged {
        if records.len() != row.records as usize {
            return Err(format!(
                "it holds {} records, its row says {}",
                records.len(),
                row.records
            ));
        }
        if info.xid != row.xid {
            return Err(format!(
                "it is of transaction {}, its row says {}",
                info.xid, row.xid
            ));
        }
    }
    for (n, rec) in records.iter().enumerate() {
        if let Body::Change(ch) = &rec.body {
            let table = || format!("{}.{}", text(&ch.schema), text(&ch.table));
            ch.check_images()
                .and_then(|()| decoder.check_types(&ch.columns))
                .map_err(|e| format!("record {} (a change of {}): {}", n + 1, table(), e.0))?;
        }
    }
    Ok((info, records))
}

/// dead_letter_frame keeps a frame that could not be read in activity_log.dead_letters: its
/// bytes as they were (seal included), and its durable_queue row's other columns.
fn dead_letter_frame(frame: &ring::Frame, what: &str, error: &str) -> Result<i64, String> {
    let mut id = None;
    let (row, staged_at) = match &frame.staged {
        Some(row) => (
            json!({ "xid": row.xid, "seq": row.seq, "records": row.records }),
            Some(row.staged_at),
        ),
        None => (json!({ "records": frame.nrecords }), None),
    };
    in_subtransaction(|| {
        id = Spi::get_one_with_args::<i64>(
            "INSERT INTO activity_log.dead_letters (committed_at, what, error, record, frame)
             SELECT epoch + $1 * interval '1 microsecond', $2, $3,
                    $4::jsonb || CASE WHEN $6 IS NULL THEN '{}'
                                      ELSE jsonb_build_object('staged_at', epoch + $6 * interval '1 microsecond') END,
                    $5
               FROM (SELECT timestamptz '2000-01-01 00:00:00+00' AS epoch) e
             RETURNING id",
            &[
                frame.commit_ts.into(),
                what.into(),
                error.into(),
                row.to_string().into(),
                frame.payload.as_slice().into(),
                staged_at.into(),
            ],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}"), None));
    })?;
    id.ok_or_else(|| "no id returned".to_string())
}

/// gap_details is the `details` of a gap record of a tracked table. Its note is the reason, or
/// a JSON object with a `reason` and more facts (logical replication: the counts, the
/// subscription and the origin, capture/replication.rs), which `details` then carries too.
fn gap_details(note: &[u8]) -> String {
    let mut details = Map::new();
    details.insert("rows_captured".into(), Value::Bool(false));
    match serde_json::from_slice::<Value>(note) {
        Ok(Value::Object(facts)) if facts.contains_key("reason") => details.extend(facts),
        _ => {
            details.insert("reason".into(), Value::String(text(note)));
        }
    }
    Value::Object(details).to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// parse_json_or_string keeps valid JSON as is and wraps anything else as a JSON string.
fn parse_json_or_string(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| Value::String(text(b)))
}

/// The parts of one row that every kind of record has.
struct Common<'a> {
    committed_at: i64,
    info: &'a record::FrameInfo,
    origin: &'a record::Origin<'a>,
}

/// The trail rows of one batch, in ring order.
pub(super) struct Rows {
    /// Decode row images one change at a time, in subtransactions (see from_batch).
    isolate: bool,
    rows: Vec<Row>,
    /// With `isolate`: each row's commit time and what it is, for the gap record that replaces
    /// it if the table refuses it.
    labels: Vec<(i64, String)>,
    /// What the rollups need of each row, and the categories it names.
    facts: Vec<Fact>,
    categories: Categories,
    /// Role names as text, looked up once per batch.
    users: HashMap<u32, pg_sys::Datum>,
    /// Texts made in this batch, by content. Most repeat from row to row (kind, status,
    /// application, command, the table's names), and rows can share one as the rows of a
    /// statement share their common columns; each text costs a guarded call into PostgreSQL.
    texts: HashMap<Vec<u8>, pg_sys::Datum>,
    /// The text each column got last, by [`Col`]: most rows repeat the row before them, and
    /// comparing the bytes costs much less than hashing them for `texts`.
    last_texts: Vec<(Vec<u8>, Option<pg_sys::Datum>)>,
    /// changed_columns arrays made in this batch, by content (see [`Rows::changed_columns`]).
    changed: Vec<(Vec<String>, pg_sys::Datum)>,
    /// A statement's relations as names, made in this batch, by the relations' OIDs (see
    /// [`Rows::relations`]).
    relations: Vec<(Vec<u32>, pg_sys::Datum)>,
}

/// The changed_columns and relations arrays a batch keeps, each: enough for the tables and
/// statement shapes of a busy batch, few enough that looking one up stays cheaper than making it.
const MAX_CACHED_ARRAYS: usize = 32;

/// cached is the array this batch made for `key` already, or the one `make` makes, kept for the
/// rest of the batch if `cache` has room.
fn cached<T: PartialEq + Clone>(
    cache: &mut Vec<(Vec<T>, pg_sys::Datum)>,
    key: &[T],
    make: impl FnOnce() -> pg_sys::Datum,
) -> pg_sys::Datum {
    if let Some(&(_, array)) = cache.iter().find(|(seen, _)| seen.as_slice() == key) {
        return array;
    }
    let array = make();
    if cache.len() < MAX_CACHED_ARRAYS {
        cache.push((key.to_vec(), array));
    }
    array
}

impl Rows {
    pub(super) fn new(isolate: bool) -> Rows {
        Rows {
            isolate,
            rows: Vec::new(),
            labels: Vec::new(),
            facts: Vec::new(),
            categories: Categories::default(),
            users: HashMap::new(),
            texts: HashMap::new(),
            changed: Vec::new(),
            relations: Vec::new(),
            last_texts: vec![(Vec::new(), None); store::NCOLS],
        }
    }

    /// from_batch builds the rows of a batch. A frame that is not valid ([`check_frame`])
    /// becomes a dead letter and a gap record at its place; the other frames are stored. With
    /// `isolate`, row images that cannot be decoded (their type was dropped, say) become a gap
    /// record instead of failing the batch.
    pub(super) fn from_batch<'a>(batch: &'a ring::Batch, isolate: bool) -> Rows {
        let mut r = Rows::new(isolate);
        let mut decoder = decode::Decoder::new();
        for frame in &batch.frames {
            if frame.staged.as_ref().is_some_and(suspects::condemned) {
                r.quarantine(frame, "the server crashed twice while the writer read it, the second time alone, so it is not read again (see the server log)");
                continue;
            }
            match check_frame(&mut decoder, frame) {
                // An announcement whose row with_staged_rows did not find: say so in the trail.
                Ok((info, records))
                    if records.is_empty() && frame.staged.is_none() && frame.nrecords > 0 =>
                {
                    let reason = format!(
                        "the records of transaction {} were announced in the ring but are missing from activity_log.durable_queue (deleted by hand?)",
                        info.xid
                    );
                    r.push_gap(
                        frame.commit_ts,
                        json!({ "reason": reason, "xid": info.xid, "records": frame.nrecords }),
                    );
                }
                Ok((info, mut records)) => {
                    order_changes(&mut records);
                    let push = |r: &mut Rows, decoder: &mut decode::Decoder<'a>| {
                        for rec in &records {
                            // Between records, even of one big frame (never in isolation,
                            // which is not paced).
                            if pace::due() {
                                pace::pause();
                            }
                            let c = Common {
                                committed_at: frame.commit_ts,
                                info: &info,
                                origin: &rec.origin,
                            };
                            r.push(decoder, c, &rec.body);
                        }
                    };
                    if !isolate {
                        push(&mut r, &mut decoder);
                        continue;
                    }
                    // The batch failed before: a frame whose records raise an ERROR (a value
                    // its type's functions refuse, in a frame whose seal was forged) is kept
                    // aside like an unreadable one, unless the error says nothing about it.
                    let mark = r.mark();
                    if let Err(e) = try_in_subtransaction(|| push(&mut r, &mut decoder)) {
                        if is_transient(&e) {
                            e.rethrow();
                        }
                        r.rewind(mark);
                        decoder.forget();
                        r.quarantine(frame, &error_message(&e));
                    }
                }
                Err(e) => r.quarantine(frame, &e),
            }
        }
        r
    }

    /// mark is where the rows end now, for [`Rows::rewind`].
    fn mark(&self) -> usize {
        self.rows.len()
    }

    /// rewind forgets the rows made since `mark`, in a subtransaction that was rolled back,
    /// and every value cached since, which went with it.
    fn rewind(&mut self, mark: usize) {
        self.rows.truncate(mark);
        self.facts.truncate(mark);
        self.labels.truncate(mark);
        self.users.clear();
        self.texts.clear();
        self.changed.clear();
        self.relations.clear();
        self.last_texts = vec![(Vec::new(), None); store::NCOLS];
    }

    /// quarantine keeps a frame that is not valid in activity_log.dead_letters, as it is, and
    /// records in the trail that its records are missing and why.
    fn quarantine(&mut self, frame: &ring::Frame, error: &str) {
        let what = match &frame.staged {
            Some(row) => match row.seq {
                None => format!(
                    "the records of transaction {} staged in activity_log.durable_queue",
                    row.xid
                ),
                Some(seq) => format!(
                    "the records of transaction {} staged in activity_log.durable_queue (piece {seq})",
                    row.xid
                ),
            },
            None => "the records of a frame in the ring".to_string(),
        };
        let letter = dead_letter_frame(frame, &what, error);
        let reason = match &letter {
            Ok(id) => format!(
                "{what} could not be read, and are not in the trail: {error}; the frame is kept as activity_log.dead_letters id {id}"
            ),
            Err(e) => format!(
                "{what} could not be read, and are not in the trail: {error}; the frame could not be kept either: {e}"
            ),
        };
        warning!("activity_log: {reason}");
        let mut details = json!({ "reason": reason, "records": frame.nrecords });
        if let Some(row) = &frame.staged {
            details["xid"] = json!(row.xid);
            details["seq"] = json!(row.seq);
        }
        if let Ok(id) = letter {
            details["dead_letter"] = json!(id);
        }
        self.push_gap(frame.commit_ts, details);
    }

    #[allow(clippy::too_many_arguments)]
    fn keep(
        &mut self,
        row: Row,
        ts: i64,
        committed_at: i64,
        kind: &'static str,
        category: &[u8],
        status: &'static str,
        duration_us: Option<i64>,
        command: Option<&[u8]>,
    ) {
        let category = self.categories.id(category);
        self.facts.push(Fact {
            ts,
            kind,
            category,
            status,
            duration_us,
        });
        if self.isolate {
            let command = text(command.unwrap_or(b"?"));
            self.labels
                .push((committed_at, format!("{kind} record \"{command}\"")));
        }
        self.rows.push(row);
    }

    fn user(&mut self, role: u32) -> pg_sys::Datum {
        *self
            .users
            .entry(role)
            .or_insert_with(|| store::text_value(store::user_name(role).as_bytes()))
    }

    /// text sets a column to a text this batch made already, or makes it.
    fn text(&mut self, row: &mut Row, c: Col, s: &[u8]) {
        let last = &mut self.last_texts[c as usize];
        let text = match last.1 {
            Some(text) if last.0 == s => text,
            _ => {
                let text = match self.texts.get(s) {
                    Some(&text) => text,
                    None => *self
                        .texts
                        .entry(s.to_vec())
                        .or_insert_with(|| store::text_value(s)),
                };
                last.0.clear();
                last.0.extend_from_slice(s);
                last.1 = Some(text);
                text
            }
        };
        row.shared(c, text);
    }

    /// changed_columns sets a change's changed_columns to an array this batch made already,
    /// or makes it: a table's updates mostly change the same columns, and an array costs a
    /// call into PostgreSQL per name and one more to build it.
    fn changed_columns(&mut self, row: &mut Row, names: &[String]) {
        let array = cached(&mut self.changed, names, || store::text_array(names));
        row.shared(Col::ChangedColumns, array);
    }

    /// relations sets a statement's relations to an array this batch made already, or makes
    /// it: a workload repeats a few statement shapes, and each name costs three catalog lookups
    /// and its quoting, the array one more call into PostgreSQL.
    fn relations(&mut self, row: &mut Row, oids: &[u32]) {
        let array = cached(&mut self.relations, oids, || {
            let names: Vec<String> = oids.iter().map(|&r| store::relation_name(r)).collect();
            store::text_array(&names)
        });
        row.shared(Col::Relations, array);
    }

    /// row starts a trail row with the columns every kind of record has.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        c: &Common,
        ts: i64,
        kind: &str,
        category: &[u8],
        severity: &[u8],
        status: &str,
        command: Option<&[u8]>,
        details: Option<&str>,
    ) -> Row {
        let o = c.origin;
        let mut row = Row::default();
        row.timestamp(Col::Ts, ts);
        row.timestamp(Col::CommittedAt, c.committed_at);
        self.text(&mut row, Col::Kind, kind.as_bytes());
        self.text(&mut row, Col::Category, category);
        self.text(&mut row, Col::Severity, severity);
        self.text(&mut row, Col::Status, status.as_bytes());
        let db_user = self.user(o.session_user);
        row.shared(Col::DbUser, db_user);
        let effective_user = self.user(o.current_user);
        row.shared(Col::EffectiveUser, effective_user);
        if let Some(actor) = o.actor.as_deref() {
            self.text(&mut row, Col::Actor, actor);
        }
        self.text(&mut row, Col::ApplicationName, &o.application_name);
        let json =
            |b: &Option<record::Bytes>| b.as_deref().map(|b| parse_json_or_string(b).to_string());
        if let Some(j) = json(&o.context) {
            row.json_text(Col::Context, &j);
        }
        if let Some(j) = json(&o.jwt_claims) {
            row.json_text(Col::JwtClaims, &j);
        }
        if let Some(addr) = &c.info.client_addr {
            row.inet(Col::ClientAddr, addr);
        }
        row.int4(Col::BackendPid, c.info.pid);
        if c.info.xid != 0 {
            row.int8(Col::Xid, c.info.xid as i64);
        }
        if let Some(command) = command {
            self.text(&mut row, Col::Command, command);
        }
        if let Some(d) = details {
            row.json_text(Col::Details, d);
        }
        row
    }

    fn push<'a>(&mut self, decoder: &mut decode::Decoder<'a>, c: Common, body: &Body<'a>) {
        match body {
            Body::Statement(s) => {
                let failed = s.sqlstate.is_some();
                let (kind, category) = match s.class {
                    StatementClass::Ddl => ("ddl", "schema_change"),
                    StatementClass::Mod => ("statement", "data_change"),
                    StatementClass::Other => ("statement", "data_access"),
                };
                let details = s
                    .error_message
                    .as_deref()
                    .map(|m| json!({ "error": text(m) }).to_string());
                let mut row = self.row(
                    &c,
                    s.ts,
                    kind,
                    category.as_bytes(),
                    if failed { b"error" } else { b"info" },
                    if failed { "error" } else { "success" },
                    (!s.command.is_empty()).then_some(&s.command[..]),
                    details.as_deref(),
                );
                if let Some(code) = &s.sqlstate {
                    row.text(Col::Sqlstate, code);
                }
                if !s.relations.is_empty() {
                    self.relations(&mut row, &s.relations);
                }
                if !s.query.is_empty() {
                    row.text(Col::Query, &s.query);
                }
                if s.query_id != 0 {
                    row.int8(Col::QueryId, s.query_id);
                }
                if let Some(n) = s.rows {
                    row.int8(Col::Rows, n);
                }
                let duration_us = (!failed).then_some(s.duration_us);
                if let Some(us) = duration_us {
                    row.float8(Col::DurationMs, us as f64 / 1000.0);
                }
                let status = if failed { "error" } else { "success" };
                self.keep(
                    row,
                    s.ts,
                    c.committed_at,
                    kind,
                    category.as_bytes(),
                    status,
                    duration_us,
                    Some(&s.command),
                );
            }
            Body::Event(e) => {
                // `data` is the jsonb text log_event got from jsonb_out, spliced in as it is:
                // parsed here (serde_json's numbers are f64) it would not stay exact.
                let mut details = Map::new();
                details.insert("action".into(), Value::String(text(&e.action)));
                if let Some(t) = &e.entity_type {
                    details.insert("entity_type".into(), Value::String(text(t)));
                }
                if let Some(id) = &e.entity_id {
                    details.insert("entity_id".into(), Value::String(text(id)));
                }
                let mut details = Value::Object(details).to_string();
                details.pop(); // the closing brace
                details.push_str(", \"data\": ");
                details.push_str(&String::from_utf8_lossy(&e.details));
                details.push('}');
                let row = self.row(
                    &c,
                    e.ts,
                    "event",
                    &e.category,
                    &e.severity,
                    "success",
                    Some(&e.action),
                    Some(&details),
                );
                self.keep(
                    row,
                    e.ts,
                    c.committed_at,
                    "event",
                    &e.category,
                    "success",
                    None,
                    Some(&e.action),
                );
            }
            Body::Change(ch) => {
                let op = match ch.op {
                    Op::Insert => "INSERT",
                    Op::Update => "UPDATE",
                    Op::Delete => "DELETE",
                    Op::Truncate => "TRUNCATE",
                    Op::TruncatePartition => "TRUNCATE PARTITION",
                    Op::Copy => "COPY",
                    Op::Gap => "GAP",
                };
                // TRUNCATE and COPY have no images: one record for the statement.
                let mut decode = || {
                    decoder.decode_change(
                        &ch.columns,
                        &ch.key_columns,
                        &ch.exclude_columns,
                        &ch.rows,
                    )
                };
                let images = if ch.rows.is_empty() {
                    vec![decode::ChangeRow::default()]
                } else if self.isolate {
                    let mut decoded = Vec::new();
                    if let Err(message) = in_subtransaction(|| decoded = decode()) {
                        // Row types made in the subtransaction went with it.
                        decoder.forget();
                        let what = format!("{}.{}", text(&ch.schema), text(&ch.table));
                        let reason = format!("{op} rows of {what} could not be decoded: {message}");
                        self.push_gap(c.committed_at, json!({ "reason": reason }));
                        return;
                    }
                    decoded
                } else {
                    decode()
                };
                let details = match ch.op {
                    Op::Copy => {
                        let note = if ch.note.is_empty() {
                            "COPY FROM bypassed row capture: the loaded rows are counted, not recorded".into()
                        } else {
                            text(&ch.note)
                        };
                        Some(json!({ "rows_captured": false, "note": note }).to_string())
                    }
                    Op::Gap => Some(gap_details(&ch.note)),
                    // A note on a row change is either the facts a logical replication worker's
                    // capture noted (a JSON object: the subscription and its owner,
                    // capture/replication.rs) or the text capture/rows.rs leaves on rows a MERGE
                    // moved to another partition that could not be paired (`moved_rows`).
                    Op::Insert | Op::Update | Op::Delete if !ch.note.is_empty() => {
                        Some(match parse_json_or_string(&ch.note) {
                            facts @ Value::Object(_) => facts.to_string(),
                            _ => json!({ "note": text(&ch.note) }).to_string(),
                        })
                    }
                    // What capture noted of the TRUNCATE (the partition, RESTART IDENTITY).
                    Op::Truncate | Op::TruncatePartition if !ch.note.is_empty() => {
                        Some(text(&ch.note))
                    }
                    _ => None,
                };
                // A gap is a system record about the table, not a change of it; so is a
                // change of what is tracked (capture/tracked.rs).
                let own = &ch.schema[..] == b"activity_log";
                let tracking = own && &ch.table[..] == b"tracked_tables";
                let redaction = own && &ch.table[..] == b"redactions";
                let (kind, category, severity, status) = if ch.op == Op::Gap {
                    ("system", "data_change", "critical", "gap")
                } else if tracking || redaction {
                    ("system", "configuration", "notice", "success")
                } else {
                    ("change", "data_change", "info", "success")
                };
                let op = match ch.op {
                    Op::Insert | Op::Copy if tracking => "TRACK",
                    Op::Update if tracking => "RETRACK",
                    Op::Delete | Op::Truncate if tracking => "UNTRACK",
                    Op::Insert if redaction => "REDACT",
                    _ => op,
                };
                // The parts all rows of the statement share.
                let mut first = self.row(
                    &c,
                    ch.ts,
                    kind,
                    category.as_bytes(),
                    severity.as_bytes(),
                    status,
                    Some(op.as_bytes()),
                    details.as_deref(),
                );
                if !ch.query.is_empty() {
                    first.text(Col::Query, &ch.query);
                }
                self.text(&mut first, Col::SchemaName, &ch.schema);
                self.text(&mut first, Col::TableName, &ch.table);
                first.oid(Col::TableOid, ch.relid);
                // COPY's rows loaded, a gap's rows known to be missing.
                if ch.op == Op::Copy || (ch.op == Op::Gap && ch.row_count > 0) {
                    first.int8(Col::Rows, ch.row_count);
                }
                for image in images {
                    let mut row = first.clone();
                    if let Some(key) = &image.new_key {
                        row.json_text(Col::Details, &format!("{{\"new_key\": {key}}}"));
                    }
                    row.jsonb(Col::OldRow, image.old_row);
                    row.jsonb(Col::NewRow, image.new_row);
                    row.jsonb(Col::RowKey, image.row_key);
                    if let Some(names) = image.changed_columns {
                        self.changed_columns(&mut row, &names);
                    }
                    self.keep(
                        row,
                        ch.ts,
                        c.committed_at,
                        kind,
                        category.as_bytes(),
                        status,
                        None,
                        Some(op.as_bytes()),
                    );
                }
            }
        }
    }

    pub(super) fn push_gap(&mut self, committed_at: i64, details: Value) {
        self.push_system(committed_at, "critical", "gap", b"GAP", details);
    }

    /// push_system adds a record of the pipeline itself (kind and category `system`).
    pub(super) fn push_system(
        &mut self,
        committed_at: i64,
        severity: &str,
        status: &'static str,
        command: &'static [u8],
        details: Value,
    ) {
        let info = record::FrameInfo::default();
        let origin = record::Origin::default();
        let c = Common {
            committed_at,
            info: &info,
            origin: &origin,
        };
        let details = details.to_string();
        let row = self.row(
            &c,
            committed_at,
            "system",
            b"system",
            severity.as_bytes(),
            status,
            Some(command),
            Some(&details),
        );
        self.keep(
            row,
            committed_at,
            committed_at,
            "system",
            b"system",
            status,
            None,
            Some(command),
        );
    }

    pub(super) fn insert(self) {
        let mut trail = Trail::open();
        let mut rollups = Rollups::default();
        for (i, (row, fact)) in self.rows.iter().zip(&self.facts).enumerate() {
            trail.insert(row);
            rollups.add(fact);
            // Checked every 16 rows (reading the clock costs), and the rows buffered so far are
            // stored before the pause: their multi-insert is work of this slice too.
            if i % 16 == 15 && pace::due() {
                trail.flush();
                pace::pause();
            }
        }
        trail.close();
        rollups.store(&self.categories);
    }

    /// insert_one_by_one stores each record in its own subtransaction; a record the table
    /// refuses is replaced by a `gap` record that says why and what it was.
    pub(super) fn insert_one_by_one(mut self) {
        let mut trail = Trail::open();
        trail.open_partitions(self.rows.iter());
        let mut rollups = Rollups::default();
        let stored = self.rows.iter().zip(&self.labels).zip(&self.facts);
        for ((row, (committed_at, what)), fact) in stored {
            // Nothing an index access method keeps between inserts (BRIN's pinned pages) may
            // outlive the subtransaction it was made in, nor enter one from outside.
            if let Err(message) = in_subtransaction(|| {
                trail.insert(row);
                trail.flush();
                trail.end_index_inserts();
            }) {
                trail.discard();
                let letter = dead_letter(&trail, row, what, &message);
                let mut gap = Rows::new(false);
                let reason = match letter {
                    Some(id) => format!(
                        "{what} could not be stored: {message} (kept as activity_log.dead_letters id {id})"
                    ),
                    None => format!("{what} could not be stored: {message}"),
                };
                gap.push_gap(*committed_at, json!({ "reason": reason }));
                trail.insert(&gap.rows[0]);
                trail.flush();
                trail.end_index_inserts();
                rollups.add(&Fact {
                    category: self.categories.id(b"system"),
                    ..gap.facts[0]
                });
            } else {
                rollups.add(fact);
            }
        }
        trail.close();
        rollups.store(&self.categories);
    }
}

/// order_changes puts a transaction's row changes in command-id order, keeping every other
/// record where it is. Statements report their changes when they finish, so a statement that
/// called a function which changed rows reports after that function's changes although it
/// started first; replaying in command-id order reproduces the table.
fn order_changes(records: &mut [record::Record]) {
    let cid = |r: &record::Record| match &r.body {
        Body::Change(c) => Some(c.command_id),
        _ => None,
    };
    let slots: Vec<usize> = (0..records.len())
        .filter(|&i| cid(&records[i]).is_some())
        .collect();
    let mut changes: Vec<record::Record> = slots.iter().map(|&i| records[i].clone()).collect();
    changes.sort_by_key(|r| cid(r).unwrap_or(0)); // stable: same command keeps its order
    for (slot, change) in slots.into_iter().zip(changes) {
        records[slot] = change;
    }
}

#[cfg(test)]
mod tests {
    use super::gap_details;
    use serde_json::{Value, json};

    #[test]
    fn a_gap_note_is_its_reason_or_carries_its_facts() {
        let plain: Value = serde_json::from_str(&gap_details(b"the statement stopped")).unwrap();
        assert_eq!(
            plain,
            json!({ "rows_captured": false, "reason": "the statement stopped" })
        );
        let facts = br#"{"reason": "3 rows inserted", "inserted": 3, "subscription": "s"}"#;
        let with: Value = serde_json::from_str(&gap_details(facts)).unwrap();
        assert_eq!(
            with,
            json!({ "rows_captured": false, "reason": "3 rows inserted", "inserted": 3, "subscription": "s" })
        );
        // A JSON object without a reason is a reason like any other text.
        let odd: Value = serde_json::from_str(&gap_details(br#"{"x": 1}"#)).unwrap();
        assert_eq!(odd["reason"], r#"{"x": 1}"#);
    }
}
