//! record.rs: the byte format shared by capture (encodes) and the writer (decodes).
//!
//! Pure Rust, no `pg_sys`: an encoded record is plain bytes and numbers copied on the write
//! path — never a pointer into PostgreSQL memory. (A [`Record`] may borrow what it encodes, but
//! only for as long as the encoding takes.) Names (roles, relations) travel as OIDs and are
//! resolved by the writer. A frame payload is one [`FrameInfo`] followed by records, each a
//! `u32` length and its body; bump [`VERSION`] on any layout change.
//!
//! A frame staged in durable_queue outlives crashes, so it is followed by a seal (a CRC-32C,
//! [`seal`]), and the writer checks what it reads before anything trusts it: the seal
//! ([`unseal`]), the structure ([`decode_frame`], which bounds-checks every length), and the
//! row images, which PostgreSQL will read as minimal tuples ([`Change::check_images`]).

use std::borrow::Cow;

/// Bytes of a record: owned where capture builds one, borrowed from the frame where the writer
/// decodes one, so that a batch's records are read in place rather than copied field by field.
pub type Bytes<'a> = Cow<'a, [u8]>;

pub const MAGIC: u32 = 0x414C_5231; // "ALR1"
/// The frame format this build writes.
pub const VERSION: u32 = 1;
/// The oldest frame format this build reads. The policy (docs/src/operations/upgrades.md): a
/// writer reads every version a release has ever written, because a frame staged in
/// durable_queue outlives the restart that brings in a new library; a layout change bumps
/// [`VERSION`] and keeps decoding the versions before it, so this is never raised (the unit
/// test `every_version_ever_written_is_read` holds a frame of each). A frame of a version outside
/// `OLDEST_READ..=VERSION` (a newer release's, after a downgrade; or forged) is not guessed at:
/// the writer keeps it as a dead letter, bytes and all, with a gap record in the trail.
pub const OLDEST_READ: u32 = 1;

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

/// Why bytes are not a valid frame (or record, or seal); says what is wrong where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub Cow<'static, str>);

impl DecodeError {
    const fn new(what: &'static str) -> DecodeError {
        DecodeError(Cow::Borrowed(what))
    }
}

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
            .ok_or(DecodeError::new("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::new("truncated"))?;
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
        self.opt_bytes()?.ok_or(DecodeError::new("unexpected null"))
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
        return Err(DecodeError::new("bad magic"));
    }
    let version = d.u32()?;
    if !(OLDEST_READ..=VERSION).contains(&version) {
        return Err(DecodeError(unread_version(version).into()));
    }
    let info = FrameInfo {
        pid: d.i32()?,
        xid: d.u64()?,
        client_addr: d.opt_bytes()?.map(Cow::into_owned),
    };
    Ok((info, d.pos))
}

/// unread_version says why a frame of `version` is not read (see [`OLDEST_READ`]).
pub fn unread_version(version: u32) -> String {
    let reads = if OLDEST_READ == VERSION {
        format!("version {VERSION}")
    } else {
        format!("versions {OLDEST_READ} to {VERSION}")
    };
    let whose = if version > VERSION {
        "written by a newer version of activity_log"
    } else {
        "a version no release of activity_log wrote"
    };
    format!(
        "its record format is version {version} ({whose}); this version of activity_log reads {reads}"
    )
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
                _ => return Err(DecodeError::new("bad statement class")),
            },
            command: d.bytes()?,
            sqlstate: match d.opt_bytes()? {
                Some(s) => Some(
                    s[..]
                        .try_into()
                        .map_err(|_| DecodeError::new("bad sqlstate"))?,
                ),
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
                _ => return Err(DecodeError::new("bad change op")),
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
        _ => return Err(DecodeError::new("unknown record kind")),
    };
    if d.pos != buf.len() {
        return Err(DecodeError::new("trailing bytes"));
    }
    Ok(Record { origin, body })
}

/*---- sealing staged frames ----*/

/// The last four bytes of a frame staged in durable_queue.
pub const SEAL_MAGIC: u32 = 0x414C_5331; // "ALS1"
/// A seal's size: a staged frame is followed by the CRC-32C of the frame and its row (see
/// [`StagedRow`]), the frame's length and [`SEAL_MAGIC`], each a little-endian `u32`.
pub const SEAL_LEN: usize = 12;

/// The columns of a durable_queue row that the writer relies on besides the frame: its seal
/// covers them, so that an edited `records` or `staged_at` is caught like an edited frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedRow {
    pub xid: u64,
    /// The piece's place in the transaction's record stream; None for a transaction staged in
    /// one row.
    pub seq: Option<i64>,
    pub records: u32,
    /// PostgreSQL microseconds since 2000-01-01.
    pub staged_at: i64,
}

impl StagedRow {
    fn checksum(&self, frame: &[u8]) -> u32 {
        let mut crc = Crc32c::new();
        crc.update(frame);
        crc.update(&self.xid.to_le_bytes());
        crc.update(&self.seq.unwrap_or(-1).to_le_bytes());
        crc.update(&self.records.to_le_bytes());
        crc.update(&self.staged_at.to_le_bytes());
        crc.value()
    }
}

/// seal is what follows `frame` in its durable_queue row `row`.
pub fn seal(frame: &[u8], row: &StagedRow) -> [u8; SEAL_LEN] {
    let mut out = [0; SEAL_LEN];
    out[0..4].copy_from_slice(&row.checksum(frame).to_le_bytes());
    out[4..8].copy_from_slice(&(frame.len() as u32).to_le_bytes());
    out[8..12].copy_from_slice(&SEAL_MAGIC.to_le_bytes());
    out
}

/// unseal checks the bytes of a durable_queue row (a frame and its [`seal`]) against the row's
/// other columns, and returns the frame.
pub fn unseal<'a>(staged: &'a [u8], row: &StagedRow) -> Result<&'a [u8], DecodeError> {
    let u32_at = |at: usize| u32::from_le_bytes(staged[at..at + 4].try_into().unwrap());
    let Some(len) = staged.len().checked_sub(SEAL_LEN) else {
        return Err(DecodeError::new(
            "it is shorter than a seal (cut short, or staged by an older version)",
        ));
    };
    if u32_at(len + 8) != SEAL_MAGIC {
        return Err(DecodeError::new(
            "it does not end in a seal (cut short, or staged by an older version)",
        ));
    }
    let sealed_len = u32_at(len + 4) as usize;
    if sealed_len != len {
        return Err(DecodeError(
            format!("its seal gives a length of {sealed_len} bytes, but the frame has {len}")
                .into(),
        ));
    }
    let frame = &staged[..len];
    if u32_at(len) != row.checksum(frame) {
        return Err(DecodeError::new(
            "checksum mismatch: the frame, or its row's xid, seq, records or staged_at, changed after it was staged",
        ));
    }
    Ok(frame)
}

/// Crc32c is CRC-32C (Castagnoli), the checksum of PostgreSQL's WAL: with the CPU's crc32
/// instruction where there is one (SSE 4.2, about 8 bytes a cycle), else a byte at a time.
struct Crc32c(u32);

/// CRC-32C of every byte value, reflected (polynomial 0x82F63B78).
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32c {
    fn new() -> Crc32c {
        Crc32c(!0)
    }

    fn update(&mut self, data: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE 4.2.
            self.0 = unsafe { crc32c_sse42(self.0, data) };
            return;
        }
        self.0 = crc32c_bytes(self.0, data);
    }

    fn value(&self) -> u32 {
        !self.0
    }
}

fn crc32c_bytes(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc32c_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut words = data.chunks_exact(8);
    let mut crc = crc as u64;
    for w in &mut words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(w.try_into().unwrap()));
    }
    let mut crc = crc as u32;
    for &b in words.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    crc
}

/*---- row images ----*/

/// The layout of PostgreSQL's minimal tuple on a 64-bit server (MAXALIGN 8; htup_details.h),
/// checked against pg_sys in worker/decode.rs.
pub mod tuple {
    /// Where `t_infomask2`, `t_infomask`, `t_hoff` and the null bitmap are.
    pub const INFOMASK2: usize = 10;
    pub const INFOMASK: usize = 12;
    pub const HOFF: usize = 14;
    pub const BITS: usize = 15;
    /// `t_hoff` counts from a heap tuple header this many bytes before the minimal tuple.
    pub const MINIMAL_TUPLE_OFFSET: usize = 8;
    pub const MAXALIGN: usize = 8;
    pub const HEAP_HASNULL: u16 = 0x0001;
    pub const HEAP_NATTS_MASK: u16 = 0x07FF;
}

impl Column<'_> {
    /// alignment is the column's alignment in bytes, if its storage description is one that
    /// PostgreSQL can make.
    fn alignment(&self) -> Result<usize, String> {
        let align = match self.align {
            b'c' => 1,
            b's' => 2,
            b'i' => 4,
            b'd' => 8,
            other => return Err(format!("alignment {other}")),
        };
        match (self.len, self.byval) {
            (1 | 2 | 4 | 8, true) | (1.., false) | (-1 | -2, false) => Ok(align),
            (len, byval) => Err(format!("length {len} (by value: {byval})")),
        }
    }
}

impl Change<'_> {
    /// check_images checks every row image the way heap_deform_tuple will read it with the
    /// change's columns: the header, then each attribute's alignment and length (fixed, a
    /// varlena header, a C string's end) inside the image, which they must fill exactly. Values
    /// are detoasted at capture: an out-of-line pointer is refused too. A corrupt frame could
    /// otherwise send the writer reading far past a buffer.
    pub fn check_images(&self) -> Result<(), DecodeError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let name = |i: usize| String::from_utf8_lossy(&self.columns[i].name).into_owned();
        let aligns = (0..self.columns.len())
            .map(|i| {
                self.columns[i].alignment().map_err(|e| {
                    DecodeError(format!("column {} ({}) has {e}", i + 1, name(i)).into())
                })
            })
            .collect::<Result<Vec<usize>, DecodeError>>()?;
        for (n, (old, new)) in self.rows.iter().enumerate() {
            for (which, image) in [("old", old), ("new", new)] {
                let Some(image) = image else { continue };
                check_tuple(image, &self.columns, &aligns).map_err(|e| {
                    DecodeError(format!("the {which} image of row {}: {e}", n + 1).into())
                })?;
            }
        }
        Ok(())
    }
}

fn align_to(off: usize, align: usize) -> usize {
    off.next_multiple_of(align)
}

/// check_tuple: see [`Change::check_images`]. `aligns` are the columns' alignments.
fn check_tuple(t: &[u8], columns: &[Column], aligns: &[usize]) -> Result<(), String> {
    use tuple::*;
    if t.len() < BITS {
        return Err(format!("{} bytes, shorter than a tuple header", t.len()));
    }
    let u16_at = |at: usize| u16::from_le_bytes([t[at], t[at + 1]]);
    let t_len = u32::from_le_bytes(t[0..4].try_into().unwrap()) as usize;
    if t_len != t.len() {
        return Err(format!("its tuple length is {t_len}, its size {}", t.len()));
    }
    let natts = (u16_at(INFOMASK2) & HEAP_NATTS_MASK) as usize;
    if natts > columns.len() {
        return Err(format!(
            "it has {natts} attributes, its row type {}",
            columns.len()
        ));
    }
    let nulls = u16_at(INFOMASK) & HEAP_HASNULL != 0;
    let bitmap = if nulls { natts.div_ceil(8) } else { 0 };
    let hoff = align_to(BITS + bitmap, MAXALIGN) + MINIMAL_TUPLE_OFFSET;
    if t[HOFF] as usize != hoff {
        return Err(format!("its header length is {}, not {hoff}", t[HOFF]));
    }
    let Some(data) = t.get(hoff - MINIMAL_TUPLE_OFFSET..) else {
        return Err(format!("its {} bytes end inside its header", t.len()));
    };
    let mut off = 0;
    for (i, c) in columns[..natts].iter().enumerate() {
        if nulls && t[BITS + i / 8] & (1 << (i % 8)) == 0 {
            continue; // NULL
        }
        let at = |what: String| {
            let name = String::from_utf8_lossy(&c.name);
            format!("column {} ({name}) {what}", i + 1)
        };
        let len = match c.len {
            len if len > 0 => {
                off = align_to(off, aligns[i]);
                len as usize
            }
            -1 => {
                // A byte other than 0 starts a 1-byte header, which is not aligned
                // (att_align_pointer); a 4-byte header is, after pad bytes of 0.
                if data.get(off).is_none_or(|&b| b == 0) {
                    off = align_to(off, aligns[i]);
                }
                match data.get(off) {
                    None => return Err(at("starts past the end of the tuple".into())),
                    Some(0x01) => {
                        return Err(at(
                            "is an out-of-line (TOAST) pointer, which a captured image never holds"
                                .into(),
                        ));
                    }
                    Some(&b) if b & 0x01 == 0x01 => (b >> 1) as usize,
                    Some(&b) => {
                        let Some(header) = data.get(off..off + 4) else {
                            return Err(at("starts past the end of the tuple".into()));
                        };
                        let len = (u32::from_le_bytes(header.try_into().unwrap()) >> 2) as usize;
                        // Compressed values have their raw size after the header.
                        let least = if b & 0x03 == 0x02 { 8 } else { 4 };
                        if len < least {
                            return Err(at(format!("has a length of {len} bytes")));
                        }
                        len
                    }
                }
            }
            _ => {
                off = align_to(off, aligns[i]);
                match data.get(off..).and_then(|d| d.iter().position(|&b| b == 0)) {
                    Some(end) => end + 1,
                    None => return Err(at("is a C string without an end".into())),
                }
            }
        };
        if off + len > data.len() {
            return Err(at(format!(
                "ends past the end of the tuple ({len} bytes at {off} of {})",
                data.len()
            )));
        }
        off += len;
    }
    if off != data.len() {
        return Err(format!(
            "{} bytes follow its last attribute",
            data.len() - off
        ));
    }
    Ok(())
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

    /// The frame of [`frame_round_trips`] as each format version wrote it
    /// (`tests/frames/record-v<N>.hex`, written by the release that introduced the version; never
    /// edited). Staged frames outlive an upgrade, so a writer reads every version ever written
    /// (docs/src/operations/upgrades.md): a layout change adds its version's file here and keeps
    /// these decoding to what they held.
    #[test]
    fn every_version_ever_written_is_read() {
        let info = FrameInfo {
            pid: 42,
            xid: 1 << 40,
            client_addr: Some(b"127.0.0.1"[..].into()),
        };
        let written = [(1, include_str!("../tests/frames/record-v1.hex"))];
        assert_eq!(written.len() as u32, VERSION, "a file for every version");
        for (version, text) in written {
            let text: String = text.split_whitespace().collect();
            let bytes: Vec<u8> = (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
                .collect();
            assert_eq!(bytes[4..8], u32::to_le_bytes(version));
            let (got_info, got) = decode_frame(&bytes)
                .unwrap_or_else(|e| panic!("a frame of version {version} is not read: {e}"));
            assert_eq!(got_info, info, "version {version}");
            assert_eq!(got, sample(), "version {version}");
        }
        assert_eq!(OLDEST_READ, 1, "every version ever written is read");
    }

    #[test]
    fn frames_of_versions_not_read_are_refused_with_their_version() {
        let mut buf = Vec::new();
        FrameInfo::default().encode(&mut buf);
        sample()[0].encode(&mut buf);
        for version in [0, VERSION + 1, u32::MAX] {
            let mut other = buf.clone();
            other[4..8].copy_from_slice(&version.to_le_bytes());
            assert_eq!(
                decode_frame(&other).unwrap_err(),
                DecodeError(unread_version(version).into())
            );
        }
        assert_eq!(
            unread_version(2),
            "its record format is version 2 (written by a newer version of activity_log); this version of activity_log reads version 1"
        );
        assert_eq!(
            unread_version(0),
            "its record format is version 0 (a version no release of activity_log wrote); this version of activity_log reads version 1"
        );
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
        assert_eq!(
            decode_frame(&bad).unwrap_err(),
            DecodeError::new("bad magic")
        );
    }

    #[test]
    fn no_byte_of_a_frame_makes_decoding_panic() {
        let mut buf = Vec::new();
        FrameInfo::default().encode(&mut buf);
        for r in sample() {
            r.encode(&mut buf);
        }
        // A cut between records leaves a valid frame of fewer records: the seal of a staged
        // frame (its length, its row's record count) is what catches that.
        for cut in 0..buf.len() {
            let _ = decode_frame(&buf[..cut]);
        }
        for at in 0..buf.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff] {
                let mut bad = buf.clone();
                bad[at] = v;
                let _ = decode_frame(&bad);
            }
        }
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // The check value of CRC-32C (RFC 3720, appendix B.4 gives the same polynomial).
        let mut crc = Crc32c::new();
        crc.update(b"123456789");
        assert_eq!(crc.value(), 0xE306_9283);
        assert_eq!(!crc32c_bytes(!0, b"123456789"), 0xE306_9283);
        // The instruction and the table agree at every length and split.
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for len in 0..data.len() {
            let mut crc = Crc32c::new();
            crc.update(&data[..len / 3]);
            crc.update(&data[len / 3..len]);
            assert_eq!(crc.value(), !crc32c_bytes(!0, &data[..len]), "length {len}");
        }
    }

    fn staged() -> (Vec<u8>, StagedRow) {
        let mut frame = Vec::new();
        FrameInfo {
            pid: 7,
            xid: 745,
            client_addr: None,
        }
        .encode(&mut frame);
        sample()[2].encode(&mut frame);
        let row = StagedRow {
            xid: 745,
            seq: None,
            records: 1,
            staged_at: 831_000_000_000_000,
        };
        let mut bytes = frame.clone();
        bytes.extend_from_slice(&seal(&frame, &row));
        (bytes, row)
    }

    #[test]
    fn a_sealed_frame_unseals_to_itself() {
        let (bytes, row) = staged();
        assert_eq!(unseal(&bytes, &row), Ok(&bytes[..bytes.len() - SEAL_LEN]));
        let (info, records) = decode_frame(unseal(&bytes, &row).unwrap()).unwrap();
        assert_eq!((info.xid, records), (745, vec![sample()[2].clone()]));
    }

    #[test]
    fn any_change_to_a_sealed_frame_or_its_row_is_caught() {
        let (bytes, row) = staged();
        let checksum = DecodeError::new(
            "checksum mismatch: the frame, or its row's xid, seq, records or staged_at, changed after it was staged",
        );
        // Every bit of the frame and of its checksum.
        for at in 0..bytes.len() - 8 {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[at] ^= 1 << bit;
                assert_eq!(
                    unseal(&bad, &row),
                    Err(checksum.clone()),
                    "byte {at} bit {bit}"
                );
            }
        }
        // The row's columns.
        for other in [
            StagedRow { xid: 746, ..row },
            StagedRow {
                seq: Some(0),
                ..row
            },
            StagedRow { records: 2, ..row },
            StagedRow {
                staged_at: row.staged_at + 1,
                ..row
            },
        ] {
            assert_eq!(unseal(&bytes, &other), Err(checksum.clone()), "{other:?}");
        }
        // Its length.
        let len = bytes.len() - SEAL_LEN;
        let mut bad = bytes.clone();
        bad[len + 4..len + 8].copy_from_slice(&(len as u32 + 1).to_le_bytes());
        assert_eq!(
            unseal(&bad, &row),
            Err(DecodeError(
                format!(
                    "its seal gives a length of {} bytes, but the frame has {len}",
                    len + 1
                )
                .into()
            ))
        );
        // Cut short anywhere, or never sealed (a frame of an older version).
        for cut in 0..bytes.len() {
            assert!(unseal(&bytes[..cut], &row).is_err(), "cut at {cut}");
        }
        assert_eq!(
            unseal(&bytes[..len], &row),
            Err(DecodeError::new(
                "it does not end in a seal (cut short, or staged by an older version)"
            ))
        );
        assert_eq!(
            unseal(&bytes[..5], &row),
            Err(DecodeError::new(
                "it is shorter than a seal (cut short, or staged by an older version)"
            ))
        );
    }

    /// The columns (id int, v text, n bigint), and a minimal tuple of them as PostgreSQL makes
    /// it: (9, 'ZZZZZZZZ', NULL) when `null_n`, else (9, 'ZZZZZZZZ') of a two-column row.
    fn columns() -> Vec<Column<'static>> {
        let col = |name: &'static str, type_oid, len, byval, align| Column {
            name: name.as_bytes().into(),
            type_oid,
            typmod: -1,
            len,
            byval,
            align,
            dropped: false,
        };
        vec![
            col("id", 23, 4, true, b'i'),
            col("v", 25, -1, false, b'i'),
            col("n", 20, 8, true, b'd'),
        ]
    }

    fn tuple(null_n: bool) -> Vec<u8> {
        let mut t = vec![0; 16];
        let natts: u16 = if null_n { 3 } else { 2 };
        t[tuple::INFOMASK2..tuple::INFOMASK2 + 2].copy_from_slice(&natts.to_le_bytes());
        if null_n {
            t[tuple::INFOMASK] = tuple::HEAP_HASNULL as u8;
            t[tuple::BITS] = 0b011;
        }
        t[tuple::HOFF] = 24;
        t.extend_from_slice(&9i32.to_le_bytes());
        t.push((9 << 1) | 1); // 1-byte varlena header: 9 bytes with itself
        t.extend_from_slice(b"ZZZZZZZZ");
        let len = t.len() as u32;
        t[0..4].copy_from_slice(&len.to_le_bytes());
        t
    }

    fn check(t: &[u8]) -> Result<(), String> {
        let cols = columns();
        let aligns: Vec<usize> = cols.iter().map(|c| c.alignment().unwrap()).collect();
        check_tuple(t, &cols, &aligns)
    }

    #[test]
    fn row_images_are_walked_within_their_bytes() {
        assert_eq!(check(&tuple(false)), Ok(()));
        assert_eq!(check(&tuple(true)), Ok(()));
        let with = |at: usize, bytes: &[u8]| {
            let mut t = tuple(false);
            t[at..at + bytes.len()].copy_from_slice(bytes);
            check(&t)
        };
        // The reproductions of issue 25: a tuple length of 64 MiB; a varlena header turned
        // into a 4-byte one of 379 MB.
        assert_eq!(
            with(0, &(64u32 << 20).to_le_bytes()),
            Err("its tuple length is 67108864, its size 29".into())
        );
        assert_eq!(
            with(20, &[0x00]),
            Err("column 2 (v) ends past the end of the tuple (378967680 bytes at 4 of 13)".into())
        );
        assert_eq!(
            with(20, &[0x01]),
            Err("column 2 (v) is an out-of-line (TOAST) pointer, which a captured image never holds".into())
        );
        assert_eq!(
            with(20, &[0x15]),
            Err("column 2 (v) ends past the end of the tuple (10 bytes at 4 of 13)".into())
        );
        assert_eq!(
            with(20, &[0x11]),
            Err("1 bytes follow its last attribute".into())
        );
        assert_eq!(
            with(tuple::HOFF, &[16]),
            Err("its header length is 16, not 24".into())
        );
        assert_eq!(
            with(tuple::INFOMASK2, &[4, 0]),
            Err("it has 4 attributes, its row type 3".into())
        );
        // Three attributes, n not null: its 8 bytes are not there.
        assert_eq!(
            with(tuple::INFOMASK2, &[3, 0]),
            Err("column 3 (n) ends past the end of the tuple (8 bytes at 16 of 13)".into())
        );
        assert_eq!(
            check(&tuple(false)[..14]),
            Err("14 bytes, shorter than a tuple header".into())
        );
        // A 4-byte header that says less than itself; a compressed one without its raw size.
        let mut t = tuple(false);
        t.truncate(20);
        t.extend_from_slice(&(3u32 << 2).to_le_bytes());
        t[0] = 24;
        assert_eq!(
            check(&t),
            Err("column 2 (v) has a length of 3 bytes".into())
        );
        t[20] = (6 << 2) | 0x02;
        assert_eq!(
            check(&t),
            Err("column 2 (v) has a length of 6 bytes".into())
        );
        // A C string must end inside the tuple.
        let mut cols = columns();
        cols[1].len = -2;
        cols[1].align = b'c';
        let aligns: Vec<usize> = cols.iter().map(|c| c.alignment().unwrap()).collect();
        assert_eq!(
            check_tuple(&tuple(false), &cols, &aligns),
            Err("column 2 (v) is a C string without an end".into())
        );
    }

    #[test]
    fn no_byte_of_a_row_image_makes_the_walk_read_outside_it() {
        // check_tuple indexes slices only where it checked they reach: any byte value at any
        // place, and any cut, gives Ok or an error, never a panic.
        for t in [tuple(false), tuple(true)] {
            for at in 0..t.len() {
                for v in 0..=255 {
                    let mut bad = t.clone();
                    bad[at] = v;
                    let _ = check(&bad);
                }
            }
            for cut in 0..t.len() {
                let mut bad = t[..cut].to_vec();
                if cut >= 4 {
                    bad[0..4].copy_from_slice(&(cut as u32).to_le_bytes());
                }
                let _ = check(&bad);
            }
        }
    }

    #[test]
    fn columns_must_describe_storage_postgresql_can_make() {
        let change = |columns: Vec<Column<'static>>| Change {
            ts: 0,
            command_id: 0,
            op: Op::Insert,
            relid: 1,
            schema: b"public"[..].into(),
            table: b"t"[..].into(),
            key_columns: vec![],
            exclude_columns: vec![],
            query: Bytes::default(),
            note: Bytes::default(),
            row_count: 1,
            columns,
            rows: vec![(None, Some(tuple(false).into()))],
        };
        assert_eq!(change(columns()).check_images(), Ok(()));
        let mut cols = columns();
        cols[0].len = 3;
        assert_eq!(
            change(cols).check_images(),
            Err(DecodeError::new(
                "column 1 (id) has length 3 (by value: true)"
            ))
        );
        let mut cols = columns();
        cols[1].align = b'x';
        assert_eq!(
            change(cols).check_images(),
            Err(DecodeError::new("column 2 (v) has alignment 120"))
        );
        let mut cols = columns();
        cols[1].len = -3;
        assert_eq!(
            change(cols).check_images(),
            Err(DecodeError::new(
                "column 2 (v) has length -3 (by value: false)"
            ))
        );
        let mut bad = change(columns());
        bad.rows[0].1 = Some(tuple(false)[..20].to_vec().into());
        assert_eq!(
            bad.check_images(),
            Err(DecodeError::new(
                "the new image of row 1: its tuple length is 29, its size 20"
            ))
        );
    }

    /*---- the decoder: every record kind, every way a frame can be wrong ----*/

    /// frame encodes `records` after a FrameInfo, and the offsets where each record starts and
    /// where the frame ends.
    fn frame(info: &FrameInfo, records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        info.encode(&mut buf);
        let mut bounds = vec![buf.len()];
        for r in records {
            r.encode(&mut buf);
            bounds.push(buf.len());
        }
        (buf, bounds)
    }

    /// one_record is the frame of `r` alone and the offset of its body (after its length).
    fn one_record(r: &Record) -> (Vec<u8>, usize) {
        let (buf, bounds) = frame(&FrameInfo::default(), std::slice::from_ref(r));
        (buf, bounds[0] + 4)
    }

    fn err(what: &'static str) -> Result<(FrameInfo, Vec<Record<'static>>), DecodeError> {
        Err(DecodeError::new(what))
    }

    fn bare_origin() -> Origin<'static> {
        Origin {
            session_user: 0,
            current_user: u32::MAX,
            actor: None,
            context: None,
            jwt_claims: None,
            application_name: Bytes::default(),
        }
    }

    fn change(op: Op, rows: Vec<RowImages<'static>>) -> Record<'static> {
        let mut cols = columns();
        cols.push(Column {
            name: b"........pg.dropped.4........"[..].into(),
            type_oid: 0,
            typmod: -1,
            len: -2,
            byval: false,
            align: b'c',
            dropped: true,
        });
        Record {
            origin: bare_origin(),
            body: Body::Change(Change {
                ts: i64::MIN,
                command_id: u32::MAX,
                op,
                relid: 16400,
                schema: "schéma".as_bytes().into(),
                table: b"t"[..].into(),
                key_columns: vec![b"id"[..].into(), b"v"[..].into()],
                exclude_columns: vec![b"n"[..].into()],
                query: b"delete from t"[..].into(),
                note: br#"{"partition":"t_1"}"#[..].into(),
                row_count: i64::MAX,
                columns: if rows.is_empty() { vec![] } else { cols },
                rows,
            }),
        }
    }

    /// Every kind of record, each optional field both present and absent, every op, class and
    /// extreme number: the decoder gives back exactly what the encoder was given.
    fn every_kind() -> Vec<Record<'static>> {
        let mut records = sample();
        for (class, rows, sqlstate) in [
            (StatementClass::Ddl, Some(0), None),
            (StatementClass::Other, Some(i64::MIN), Some(*b"XX000")),
            (StatementClass::Mod, None, None),
        ] {
            records.push(Record {
                origin: bare_origin(),
                body: Body::Statement(Statement {
                    ts: i64::MAX,
                    duration_us: 0,
                    class,
                    command: Bytes::default(),
                    sqlstate,
                    error_message: None,
                    query: Bytes::default(),
                    query_id: 0,
                    rows,
                    relations: vec![],
                }),
            });
        }
        records.push(Record {
            origin: Origin {
                jwt_claims: Some(br#"{"sub":"u1"}"#[..].into()),
                actor: Some(Bytes::default()),
                ..bare_origin()
            },
            body: Body::Event(Event {
                ts: 0,
                action: b"a"[..].into(),
                details: br#"{"n":123456789012345678901234567890}"#[..].into(),
                entity_type: None,
                entity_id: Some(b"42"[..].into()),
                category: b"system"[..].into(),
                severity: b"critical"[..].into(),
            }),
        });
        let image = || Some(Bytes::from(tuple(false)));
        records.extend([
            change(
                Op::Insert,
                vec![(None, image()), (None, Some(tuple(true).into()))],
            ),
            change(Op::Update, vec![(image(), image())]),
            change(Op::Delete, vec![(image(), None)]),
            change(Op::Truncate, vec![]),
            change(Op::Copy, vec![]),
            change(Op::Gap, vec![]),
            change(Op::TruncatePartition, vec![]),
        ]);
        records
    }

    #[test]
    fn every_record_kind_round_trips() {
        let info = FrameInfo {
            pid: i32::MIN,
            xid: u64::MAX,
            client_addr: Some(b"::1"[..].into()),
        };
        let records = every_kind();
        let (buf, _) = frame(&info, &records);
        assert_eq!(decode_frame(&buf), Ok((info, records.clone())));
        // One at a time too: each record is its own frame's only record.
        for r in &records {
            let (buf, _) = one_record(r);
            assert_eq!(decode_frame(&buf).unwrap().1, vec![r.clone()]);
        }
        // Decoded records borrow the frame: nothing is copied.
        let (_, got) = decode_frame(&buf).unwrap();
        assert!(matches!(got[0].origin.application_name, Cow::Borrowed(_)));
        // The storage of every column survives, -1 and -2 lengths included.
        let Body::Change(c) = &got[got.len() - 6].body else {
            panic!("not a change")
        };
        let lens: Vec<i16> = c.columns.iter().map(|c| c.len).collect();
        assert_eq!(lens, [4, -1, 8, -2]);
        assert!(c.columns[3].dropped && !c.columns[2].dropped);
    }

    #[test]
    fn absent_and_empty_are_different_values() {
        let mut with_empty = bare_origin();
        with_empty.actor = Some(Bytes::default());
        with_empty.context = Some(Bytes::default());
        for origin in [bare_origin(), with_empty] {
            let r = Record {
                origin,
                body: sample()[2].body.clone(),
            };
            let (buf, _) = one_record(&r);
            assert_eq!(decode_frame(&buf).unwrap().1[0].origin, r.origin);
        }
    }

    #[test]
    fn an_empty_frame_has_no_records_and_info_says_where_records_start() {
        let info = FrameInfo {
            pid: 7,
            xid: 0,
            client_addr: None,
        };
        let (buf, bounds) = frame(&info, &[]);
        assert_eq!(decode_frame(&buf), Ok((info.clone(), vec![])));
        // magic, version, pid, xid, client_addr's length (none)
        assert_eq!(decode_info(&buf), Ok((info.clone(), 4 + 4 + 4 + 8 + 4)));
        let (buf, bounds2) = frame(&info, &sample());
        assert_eq!(decode_info(&buf).unwrap().1, bounds[0]);
        assert_eq!(bounds2[0], bounds[0]);
    }

    #[test]
    fn rows_appended_through_the_sink_follow_the_change_rows() {
        let r = change(Op::Insert, vec![(None, Some(tuple(false).into()))]);
        let mut buf = Vec::new();
        FrameInfo::default().encode(&mut buf);
        let mut sizes = Vec::new();
        r.encode_with_rows(&mut buf, |sink| {
            sink.push(None, Some(&tuple(true)));
            sizes.push(sink.bytes());
            sink.push(Some(&tuple(false)), None);
            sizes.push(sink.bytes());
        });
        assert_eq!(sizes[1] - sizes[0], 4 + tuple(false).len() + 4);
        let (_, got) = decode_frame(&buf).unwrap();
        let Body::Change(c) = &got[0].body else {
            panic!("not a change")
        };
        assert_eq!(
            c.rows,
            vec![
                (None, Some(tuple(false).into())),
                (None, Some(tuple(true).into())),
                (Some(tuple(false).into()), None),
            ]
        );
        // Other bodies ignore the sink.
        let mut plain = Vec::new();
        sample()[0].encode(&mut plain);
        let mut with = Vec::new();
        sample()[0].encode_with_rows(&mut with, |sink| sink.push(None, Some(b"x")));
        assert_eq!(plain, with);
    }

    #[test]
    fn a_frame_cut_anywhere_is_truncated_unless_cut_between_records() {
        let info = FrameInfo {
            pid: 1,
            xid: 2,
            client_addr: Some(b"10.0.0.1"[..].into()),
        };
        let records = every_kind();
        let (buf, bounds) = frame(&info, &records);
        for cut in 0..buf.len() {
            let got = decode_frame(&buf[..cut]);
            match bounds.iter().position(|&b| b == cut) {
                Some(n) => assert_eq!(got, Ok((info.clone(), records[..n].to_vec())), "cut {cut}"),
                None => assert_eq!(got, err("truncated"), "cut at {cut}"),
            }
        }
    }

    #[test]
    fn the_frame_header_is_checked_first() {
        let (buf, _) = frame(&FrameInfo::default(), &sample());
        let with_u32 = |at: usize, v: u32| {
            let mut b = buf.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            b
        };
        assert_eq!(decode_frame(&with_u32(0, MAGIC + 1)), err("bad magic"));
        assert_eq!(decode_frame(&with_u32(0, SEAL_MAGIC)), err("bad magic"));
        // A frame of a version not read is refused whole, before anything after its version is
        // read (the messages: frames_of_versions_not_read_are_refused_with_their_version).
        for version in [0, VERSION + 1, u32::MAX] {
            let refused = Err(DecodeError(unread_version(version).into()));
            let b = with_u32(4, version);
            assert_eq!(decode_frame(&b).map(|_| ()), refused);
            assert_eq!(decode_frame(&b[..8]).map(|_| ()), refused);
            assert_eq!(decode_info(&b).map(|_| ()), refused);
        }
        assert_eq!(&buf[0..4], b"1RLA", "MAGIC is \"ALR1\" little-endian");
        assert_eq!(decode_frame(&[]), err("truncated"));
        assert_eq!(decode_frame(&buf[..4]), err("truncated"));
    }

    #[test]
    fn corrupt_records_give_the_exact_error() {
        // Each kind's discriminant byte, then the first byte after the origin.
        let statement = one_record(&sample()[0]);
        let change = one_record(&sample()[1]);
        let origin_len = {
            let mut o = Vec::new();
            let mut e = Enc(&mut o);
            let s = &sample()[0].origin;
            e.u32(s.session_user);
            e.u32(s.current_user);
            e.opt_bytes(s.actor.as_deref());
            e.opt_bytes(s.context.as_deref());
            e.opt_bytes(s.jwt_claims.as_deref());
            e.bytes(&s.application_name);
            o.len()
        };
        let set = |(buf, body): &(Vec<u8>, usize), at: usize, bytes: &[u8]| {
            let mut b = buf.clone();
            b[body + at..body + at + bytes.len()].copy_from_slice(bytes);
            decode_frame(&b).map(|_| ())
        };
        let err = |what| Err(DecodeError::new(what));
        for kind in [0, 4, 0xff] {
            assert_eq!(set(&statement, 0, &[kind]), err("unknown record kind"));
        }
        // Statement: ts, duration, then the class.
        let class_at = 1 + origin_len + 16;
        for class in [0, 4, 0xff] {
            assert_eq!(
                set(&statement, class_at, &[class]),
                err("bad statement class")
            );
        }
        // The sqlstate's length (its command is "UPDATE": 4 + 6 bytes): 5 bytes or nothing.
        let sqlstate_at = class_at + 1 + 4 + 6;
        assert_eq!(
            set(&statement, sqlstate_at, &4u32.to_le_bytes()),
            err("bad sqlstate")
        );
        // The command is required: its length may not say "none".
        assert_eq!(
            set(&statement, class_at + 1, &NONE_LEN.to_le_bytes()),
            err("unexpected null")
        );
        // Change: ts, command_id, then the op.
        let op_at = 1 + origin_len + 12;
        for op in [0, 8, 0xff] {
            assert_eq!(set(&change, op_at, &[op]), err("bad change op"));
        }
        // The application name is required.
        let app_at = 1 + origin_len - 4 - 4;
        assert_eq!(
            set(&statement, app_at, &NONE_LEN.to_le_bytes()),
            err("unexpected null")
        );
        // A record longer than its fields.
        let mut long = statement.0.clone();
        let body = statement.1;
        let len = u32::from_le_bytes(long[body - 4..body].try_into().unwrap());
        long[body - 4..body].copy_from_slice(&(len + 1).to_le_bytes());
        long.push(0);
        assert_eq!(decode_frame(&long).map(|_| ()), err("trailing bytes"));
        // A record of no bytes at all.
        let (mut empty, _) = frame(&FrameInfo::default(), &[]);
        empty.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_frame(&empty).map(|_| ()), err("truncated"));
    }

    #[test]
    fn lengths_and_counts_are_limited_by_the_frame_not_trusted() {
        // A length or a count near 4 GiB makes the decoder read past the frame's end, which it
        // refuses before allocating anything of that size.
        let (buf, bounds) = frame(&FrameInfo::default(), &[sample()[0].clone()]);
        let mut huge_record = buf.clone();
        huge_record[bounds[0]..bounds[0] + 4].copy_from_slice(&(NONE_LEN - 1).to_le_bytes());
        assert_eq!(decode_frame(&huge_record), err("truncated"));
        let huge_addr = FrameInfo {
            client_addr: Some(vec![1, 2, 3, 4]),
            ..FrameInfo::default()
        };
        let (mut b, _) = frame(&huge_addr, &[]);
        b[20..24].copy_from_slice(&(NONE_LEN - 1).to_le_bytes());
        assert_eq!(decode_frame(&b), err("truncated"));
        // The relations count of a statement, the columns and rows counts of a change: the
        // last u32 of a statement record is a relation; before them, their count.
        let Body::Statement(s) = &sample()[0].body else {
            unreachable!()
        };
        let count_at = buf.len() - 4 * s.relations.len() - 4;
        let mut many = buf.clone();
        many[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_frame(&many), err("truncated"));
        let r = change(Op::Insert, vec![(None, Some(tuple(false).into()))]);
        let (buf, _) = one_record(&r);
        let rows_at = buf.len() - 4 - 4 - tuple(false).len() - 4;
        assert_eq!(
            u32::from_le_bytes(buf[rows_at..rows_at + 4].try_into().unwrap()),
            1,
            "the rows count"
        );
        let mut many = buf.clone();
        many[rows_at..rows_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_frame(&many), err("truncated"));
        let mut none = buf.clone();
        none[rows_at..rows_at + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_frame(&none), err("trailing bytes"));
    }

    #[test]
    fn decode_errors_name_the_record_as_corrupt() {
        assert_eq!(
            DecodeError::new("truncated").to_string(),
            "corrupt activity_log record: truncated"
        );
    }
}
