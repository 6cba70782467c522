//! record.rs: the byte format shared by capture (encodes) and the writer (decodes).
//!
//! Pure Rust, no `pg_sys`: an encoded record is plain bytes and numbers copied on the write
//! path — never a pointer into PostgreSQL memory. (A [`Record`] may borrow what it encodes, but
//! only for as long as the encoding takes.) Names (roles, relations) travel as OIDs and are
//! resolved by the writer. A frame payload is one [`FrameInfo`] followed by records, each a
//! `u32` length and its body; bump [`VERSION`] on any layout change.

use std::borrow::Cow;

/// Bytes of a record: owned where capture builds one, borrowed from the frame where the writer
/// decodes one, so that a batch's records are read in place rather than copied field by field.
pub type Bytes<'a> = Cow<'a, [u8]>;

pub const MAGIC: u32 = 0x414C_5231; // "ALR1"
pub const VERSION: u32 = 1;

/// Where a record came from: the parts that can change from statement to statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin<'a> {
    pub session_user: u32,
    pub current_user: u32,
    pub actor: Option<Bytes<'a>>,
    pub context: Option<Bytes<'a>>,
    pub jwt_claims: Option<Bytes<'a>>,
    pub application_name: Bytes<'a>,
}

/// Statement classes, as `log_statement` sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StatementClass {
    Ddl = 1,
    Mod = 2,
    Other = 3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    /// Start time, PostgreSQL microseconds since 2000-01-01.
    pub ts: i64,
    pub duration_us: i64,
    pub class: StatementClass,
    pub command: Bytes<'a>,
    /// Five-character SQLSTATE when the statement failed.
    pub sqlstate: Option<[u8; 5]>,
    pub error_message: Option<Bytes<'a>>,
    pub query: Bytes<'a>,
    pub query_id: i64,
    pub rows: Option<i64>,
    pub relations: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub ts: i64,
    pub action: Bytes<'a>,
    /// JSON text, validated by PostgreSQL's jsonb input before it got here.
    pub details: Bytes<'a>,
    pub entity_type: Option<Bytes<'a>>,
    pub entity_id: Option<Bytes<'a>>,
    pub category: Bytes<'a>,
    pub severity: Bytes<'a>,
}

/// What happened to the rows of a tracked table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Insert = 1,
    Update = 2,
    Delete = 3,
    /// All rows removed; no images.
    Truncate = 4,
    /// Rows loaded by COPY FROM; no images (see README).
    Copy = 5,
    /// Rows that changed but could not be captured; `query` says which statement.
    Gap = 6,
    /// The rows of one partition of the table removed (TRUNCATE of the partition); no images.
    /// `note` is a JSON object with the partition and its partition constraint.
    TruncatePartition = 7,
}

/// One row's (old, new) images as PostgreSQL minimal tuples (detoasted); INSERT has no old,
/// DELETE no new. The writer decodes them with the statement's [`Column`]s.
pub type RowImages<'a> = (Option<Bytes<'a>>, Option<Bytes<'a>>);

/// One attribute of the tracked table's row type at capture time, enough to rebuild its tuple
/// descriptor after the table has been altered (or dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column<'a> {
    pub name: Bytes<'a>,
    pub type_oid: u32,
    pub typmod: i32,
    pub len: i16,
    pub byval: bool,
    pub align: u8,
    pub dropped: bool,
}

/// One statement's changes to one tracked table: row images as minimal tuples, copied (and
/// detoasted) when the statement finished; the writer turns them into jsonb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<'a> {
    pub ts: i64,
    /// Command id of the statement; orders changes within a transaction.
    pub command_id: u32,
    pub op: Op,
    pub relid: u32,
    pub schema: Bytes<'a>,
    pub table: Bytes<'a>,
    pub key_columns: Vec<Bytes<'a>>,
    pub exclude_columns: Vec<Bytes<'a>>,
    /// The top-level statement that caused the change.
    pub query: Bytes<'a>,
    /// Why rows are missing (Gap), or empty.
    pub note: Bytes<'a>,
    /// Rows affected when there are no images (TRUNCATE, COPY).
    pub row_count: i64,
    /// The row type the images are in (empty when there are no images).
    pub columns: Vec<Column<'a>>,
    pub rows: Vec<RowImages<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Statement(Statement<'a>),
    Event(Event<'a>),
    Change(Change<'a>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub origin: Origin<'a>,
    pub body: Body<'a>,
}

/// Per-transaction facts, written once at the start of a frame payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrameInfo {
    pub pid: i32,
    /// Top-level transaction id (full 64-bit), 0 when the transaction wrote nothing.
    pub xid: u64,
    pub client_addr: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt activity_log record: {}", self.0)
    }
}

const NONE_LEN: u32 = u32::MAX;
const KIND_STATEMENT: u8 = 1;
const KIND_EVENT: u8 = 2;
const KIND_CHANGE: u8 = 3;

/*---- encoding ----*/

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(b) => self.bytes(b),
            None => self.u32(NONE_LEN),
        }
    }
}

impl FrameInfo {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Enc(out);
        e.u32(MAGIC);
        e.u32(VERSION);
        e.i32(self.pid);
        e.u64(self.xid);
        e.opt_bytes(self.client_addr.as_deref());
    }
}

/// RowSink appends a Change's row images one by one, straight from where the capture reads
/// them: a bulk statement's rows are copied once, not first into a `Vec` each.
pub struct RowSink<'a> {
    out: &'a mut Vec<u8>,
    count: u32,
}

impl RowSink<'_> {
    pub fn push(&mut self, old: Option<&[u8]>, new: Option<&[u8]>) {
        let mut e = Enc(self.out);
        e.opt_bytes(old);
        e.opt_bytes(new);
        self.count += 1;
    }

    /// bytes is the size of the buffer being appended to.
    pub fn bytes(&self) -> usize {
        self.out.len()
    }
}

impl Record<'_> {
    /// encode appends the record, length-prefixed, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_with_rows(out, |_| {});
    }

    /// encode_with_rows is [`Record::encode`] with the row images of a Change appended after
    /// its `rows` by `more` (ignored for other bodies).
    pub fn encode_with_rows(&self, out: &mut Vec<u8>, more: impl FnOnce(&mut RowSink)) {
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut e = Enc(out);
        let o = &self.origin;
        match &self.body {
            Body::Statement(_) => e.u8(KIND_STATEMENT),
            Body::Event(_) => e.u8(KIND_EVENT),
            Body::Change(_) => e.u8(KIND_CHANGE),
        }
        e.u32(o.session_user);
        e.u32(o.current_user);
        e.opt_bytes(o.actor.as_deref());
        e.opt_bytes(o.context.as_deref());
        e.opt_bytes(o.jwt_claims.as_deref());
        e.bytes(&o.application_name);
        match &self.body {
            Body::Statement(s) => {
                e.i64(s.ts);
                e.i64(s.duration_us);
                e.u8(s.class as u8);
                e.bytes(&s.command);
                e.opt_bytes(s.sqlstate.as_ref().map(|s| &s[..]));
                e.opt_bytes(s.error_message.as_deref());
                e.bytes(&s.query);
                e.i64(s.query_id);
                match s.rows {
                    Some(r) => {
                        e.u8(1);
                        e.i64(r);
                    }
                    None => e.u8(0),
                }
                e.u32(s.relations.len() as u32);
                for r in &s.relations {
                    e.u32(*r);
                }
            }
            Body::Event(ev) => {
                e.i64(ev.ts);
                e.bytes(&ev.action);
                e.bytes(&ev.details);
                e.opt_bytes(ev.entity_type.as_deref());
                e.opt_bytes(ev.entity_id.as_deref());
                e.bytes(&ev.category);
                e.bytes(&ev.severity);
            }
            Body::Change(c) => {
                e.i64(c.ts);
                e.u32(c.command_id);
                e.u8(c.op as u8);
                e.u32(c.relid);
                e.bytes(&c.schema);
                e.bytes(&c.table);
                e.u32(c.key_columns.len() as u32);
                for k in &c.key_columns {
                    e.bytes(k);
                }
                e.u32(c.exclude_columns.len() as u32);
                for k in &c.exclude_columns {
                    e.bytes(k);
                }
                e.bytes(&c.query);
                e.bytes(&c.note);
                e.i64(c.row_count);
                e.u32(c.columns.len() as u32);
                for col in &c.columns {
                    e.bytes(&col.name);
                    e.u32(col.type_oid);
                    e.i32(col.typmod);
                    e.u32(col.len as u16 as u32);
                    e.u8(col.byval as u8);
                    e.u8(col.align);
                    e.u8(col.dropped as u8);
                }
                let count_at = out.len();
                out.extend_from_slice(&[0; 4]);
                let mut sink = RowSink { out, count: 0 };
                for (old, new) in &c.rows {
                    sink.push(old.as_deref(), new.as_deref());
                }
                more(&mut sink);
                let count = sink.count;
                out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
            }
        }
        let len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/*---- decoding ----*/

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<Bytes<'a>, DecodeError> {
        self.opt_bytes()?.ok_or(DecodeError("unexpected null"))
    }
    fn opt_bytes(&mut self) -> Result<Option<Bytes<'a>>, DecodeError> {
        match self.u32()? {
            NONE_LEN => Ok(None),
            n => Ok(Some(Cow::Borrowed(self.take(n as usize)?))),
        }
    }
}

/// decode_info reads the [`FrameInfo`] that opens a frame payload, and how many bytes it took.
pub fn decode_info(payload: &[u8]) -> Result<(FrameInfo, usize), DecodeError> {
    let mut d = Dec {
        buf: payload,
        pos: 0,
    };
    if d.u32()? != MAGIC {
        return Err(DecodeError("bad magic"));
    }
    if d.u32()? != VERSION {
        return Err(DecodeError("unknown version"));
    }
    let info = FrameInfo {
        pid: d.i32()?,
        xid: d.u64()?,
        client_addr: d.opt_bytes()?.map(Cow::into_owned),
    };
    Ok((info, d.pos))
}

/// decode_frame splits a frame payload into its [`FrameInfo`] and records.
pub fn decode_frame(payload: &[u8]) -> Result<(FrameInfo, Vec<Record<'_>>), DecodeError> {
    let (info, pos) = decode_info(payload)?;
    let mut d = Dec { buf: payload, pos };
    let mut records = Vec::new();
    while d.pos < payload.len() {
        let len = d.u32()? as usize;
        let body = d.take(len)?;
        records.push(decode_record(body)?);
    }
    Ok((info, records))
}

pub(crate) fn decode_record(buf: &[u8]) -> Result<Record<'_>, DecodeError> {
    let mut d = Dec { buf, pos: 0 };
    let kind = d.u8()?;
    let origin = Origin {
        session_user: d.u32()?,
        current_user: d.u32()?,
        actor: d.opt_bytes()?,
        context: d.opt_bytes()?,
        jwt_claims: d.opt_bytes()?,
        application_name: d.bytes()?,
    };
    let body = match kind {
        KIND_STATEMENT => Body::Statement(Statement {
            ts: d.i64()?,
            duration_us: d.i64()?,
            class: match d.u8()? {
                1 => StatementClass::Ddl,
                2 => StatementClass::Mod,
                3 => StatementClass::Other,
                _ => return Err(DecodeError("bad statement class")),
            },
            command: d.bytes()?,
            sqlstate: match d.opt_bytes()? {
                Some(s) => Some(s[..].try_into().map_err(|_| DecodeError("bad sqlstate"))?),
                None => None,
            },
            error_message: d.opt_bytes()?,
            query: d.bytes()?,
            query_id: d.i64()?,
            rows: match d.u8()? {
                0 => None,
                _ => Some(d.i64()?),
            },
            relations: {
                let n = d.u32()? as usize;
                (0..n).map(|_| d.u32()).collect::<Result<_, _>>()?
            },
        }),
        KIND_EVENT => Body::Event(Event {
            ts: d.i64()?,
            action: d.bytes()?,
            details: d.bytes()?,
            entity_type: d.opt_bytes()?,
            entity_id: d.opt_bytes()?,
            category: d.bytes()?,
            severity: d.bytes()?,
        }),
        KIND_CHANGE => Body::Change(Change {
            ts: d.i64()?,
            command_id: d.u32()?,
            op: match d.u8()? {
                1 => Op::Insert,
                2 => Op::Update,
                3 => Op::Delete,
                4 => Op::Truncate,
                5 => Op::Copy,
                6 => Op::Gap,
                7 => Op::TruncatePartition,
                _ => return Err(DecodeError("bad change op")),
            },
            relid: d.u32()?,
            schema: d.bytes()?,
            table: d.bytes()?,
            key_columns: {
                let n = d.u32()? as usize;
                (0..n).map(|_| d.bytes()).collect::<Result<_, _>>()?
            },
            exclude_columns: {
                let n = d.u32()? as usize;
                (0..n).map(|_| d.bytes()).collect::<Result<_, _>>()?
            },
            query: d.bytes()?,
            note: d.bytes()?,
            row_count: d.i64()?,
            columns: {
                let n = d.u32()? as usize;
                (0..n)
                    .map(|_| {
                        Ok(Column {
                            name: d.bytes()?,
                            type_oid: d.u32()?,
                            typmod: d.i32()?,
                            len: d.u32()? as u16 as i16,
                            byval: d.u8()? != 0,
                            align: d.u8()?,
                            dropped: d.u8()? != 0,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?
            },
            rows: {
                let n = d.u32()? as usize;
                (0..n)
                    .map(|_| Ok((d.opt_bytes()?, d.opt_bytes()?)))
                    .collect::<Result<_, DecodeError>>()?
            },
        }),
        _ => return Err(DecodeError("unknown record kind")),
    };
    if d.pos != buf.len() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(Record { origin, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record<'static>> {
        let origin = Origin {
            session_user: 10,
            current_user: 16384,
            actor: Some(b"alice@example.com"[..].into()),
            context: Some(br#"{"request_id":"r1"}"#[..].into()),
            jwt_claims: None,
            application_name: b"psql"[..].into(),
        };
        vec![
            Record {
                origin: origin.clone(),
                body: Body::Statement(Statement {
                    ts: 123,
                    duration_us: 45,
                    class: StatementClass::Mod,
                    command: b"UPDATE"[..].into(),
                    sqlstate: Some(*b"23505"),
                    error_message: Some("dupe é".as_bytes().into()),
                    query: b"update t set a = 1"[..].into(),
                    query_id: -7,
                    rows: None,
                    relations: vec![16385, 16390],
                }),
            },
            Record {
                origin: origin.clone(),
                body: Body::Change(Change {
                    ts: 5,
                    command_id: 3,
                    op: Op::Update,
                    relid: 16400,
                    schema: b"public"[..].into(),
                    table: b"orders"[..].into(),
                    key_columns: vec![b"id"[..].into()],
                    exclude_columns: vec![],
                    query: b"update orders set total = 2"[..].into(),
                    note: Bytes::default(),
                    row_count: 1,
                    columns: vec![Column {
                        name: b"id"[..].into(),
                        type_oid: 23,
                        typmod: -1,
                        len: 4,
                        byval: true,
                        align: b'i',
                        dropped: false,
                    }],
                    rows: vec![(
                        Some(br#"{"id":1,"total":1}"#[..].into()),
                        Some(br#"{"id":1,"total":2}"#[..].into()),
                    )],
                }),
            },
            Record {
                origin,
                body: Body::Event(Event {
                    ts: -1,
                    action: b"user_login"[..].into(),
                    details: b"{}"[..].into(),
                    entity_type: Some(b"user"[..].into()),
                    entity_id: None,
                    category: b"authentication"[..].into(),
                    severity: b"info"[..].into(),
                }),
            },
        ]
    }

    #[test]
    fn frame_round_trips() {
        let info = FrameInfo {
            pid: 42,
            xid: 1 << 40,
            client_addr: Some(b"127.0.0.1"[..].into()),
        };
        let mut buf = Vec::new();
        info.encode(&mut buf);
        for r in sample() {
            r.encode(&mut buf);
        }
        let (got_info, got) = decode_frame(&buf).unwrap();
        assert_eq!(got_info, info);
        assert_eq!(got, sample());
    }

    #[test]
    fn corrupt_frames_are_rejected_not_misread() {
        let mut buf = Vec::new();
        FrameInfo::default().encode(&mut buf);
        sample()[0].encode(&mut buf);
        for cut in [3, 10, buf.len() - 1] {
            assert!(decode_frame(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = buf.clone();
        bad[0] ^= 0xff;
        assert_eq!(decode_frame(&bad).unwrap_err(), DecodeError("bad magic"));
    }
}
