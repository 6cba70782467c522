//! worker/chain.rs: the trail's hash chain. Each row the writer stores carries
//! `chain = sha256(chain of the row before || the row's bytes)`, so that a row changed, removed
//! or added by anybody but the writer breaks the chain from there on; `activity_log.verify()`
//! recomputes it.
//!
//! A row's bytes are its columns in table order (the `chain` column and dropped columns left
//! out): a NULL flag, then the value as PostgreSQL stores it — by-value types as their bytes,
//! varlena types (text, jsonb, inet, arrays …) detoasted with a length prefix — except the
//! columns redact() may empty ([`REDACTABLE`]), which count by the SHA-256 of their value: a
//! REDACT record keeps the digest of what it removed, and verify() recomputes the link of a
//! redacted row exactly, every other value of it included. The same bytes
//! come back from the table after compression, TOAST or a dump and restore, and nothing
//! depends on output formats or settings. Runs in the writer's batch transaction and in the
//! calling backend for verify(); touches no shared state.

use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::OnceCell;
use std::collections::BTreeMap;

/// The chain value before the first row of the trail.
pub const GENESIS: [u8; 0] = [];

/// varlena_bytes is the data of a varlena Datum, detoasted (a palloc'd copy when it was
/// compressed or out of line).
///
/// # Safety
/// `d` is a non-NULL varlena Datum.
unsafe fn varlena_bytes<'a>(d: pg_sys::Datum) -> &'a [u8] {
    unsafe {
        let v = super::detoast_packed(d.cast_mut_ptr());
        std::slice::from_raw_parts(pgrx::vardata_any(v).cast(), pgrx::varsize_any_exhdr(v))
    }
}

/// The trail columns activity_log.redact() may empty (see the module comment).
pub const REDACTABLE: [&str; 9] = [
    "actor",
    "application_name",
    "row_key",
    "old_row",
    "new_row",
    "query",
    "context",
    "jwt_claims",
    "details",
];

/// digested marks the attributes of `desc` the chain takes by their digest ([`REDACTABLE`]).
///
/// # Safety
/// `desc` is a valid tuple descriptor.
pub unsafe fn digested(desc: pg_sys::TupleDesc) -> Vec<bool> {
    unsafe {
        let attrs = crate::versions::attributes(desc);
        attrs
            .iter()
            .map(|a| {
                let name = std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes();
                !a.attisdropped && REDACTABLE.iter().any(|r| r.as_bytes() == name)
            })
            .collect()
    }
}

/// column_digest is how the chain takes a value of a [`REDACTABLE`] column: the SHA-256 of
/// its detoasted bytes.
pub fn column_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// row_bytes appends the bytes of one row (see the module comment) to `out`. `digested` marks
/// the columns taken by their digest; `replaced` gives, for some of them, the digest to use
/// instead of the value's (None: the value was NULL): what a redacted row held.
///
/// # Safety
/// `values` and `nulls` are a deformed row of `desc` (every non-NULL value a valid Datum of its
/// column's type), valid for the duration of the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn row_bytes(
    desc: pg_sys::TupleDesc,
    values: &[pg_sys::Datum],
    nulls: &[bool],
    skip: usize,
    digested: &[bool],
    replaced: &[(usize, Option<[u8; 32]>)],
    out: &mut Vec<u8>,
) {
    unsafe {
        let attrs = crate::versions::attributes(desc);
        for (i, att) in attrs.iter().enumerate() {
            if i == skip || att.attisdropped {
                continue;
            }
            if let Some((_, was)) = replaced.iter().find(|r| r.0 == i) {
                match was {
                    Some(digest) => {
                        out.push(1);
                        out.extend_from_slice(digest);
                    }
                    None => out.push(0),
                }
                continue;
            }
            if nulls[i] {
                out.push(0);
                continue;
            }
            out.push(1);
            let len = att.attlen as usize;
            if digested[i] && att.attlen == -1 {
                out.extend_from_slice(&column_digest(varlena_bytes(values[i])));
            } else if att.attbyval {
                out.extend_from_slice(&values[i].value().to_le_bytes()[..len]);
            } else if att.attlen == -1 {
                let data = varlena_bytes(values[i]);
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(data);
            } else {
                out.extend_from_slice(std::slice::from_raw_parts(
                    values[i].cast_mut_ptr::<u8>(),
                    len,
                ));
            }
        }
    }
}

/// Sha256 links rows: link = sha256(previous link || row bytes).
pub struct Sha256(sha2::Sha256);

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256(sha2::Sha256::default())
    }

    pub fn link(&mut self, prev: &[u8], row: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        self.0.update(prev);
        self.0.update(row);
        self.0.finalize_reset().into()
    }
}

/// bytea makes a palloc'd bytea Datum of `bytes`.
pub fn bytea(bytes: &[u8]) -> pg_sys::Datum {
    pg_sys::Datum::from(pgrx::rust_byte_slice_to_bytea(bytes).into_pg())
}

/// link_before is the chain value the row with id `id` links to: that of the newest writer row
/// before it, or of the newest row retention dropped before it (activity_log.chain_anchors),
/// whichever is newer; GENESIS when there is none. The writer continues from link_before(MAX).
pub fn link_before(id: i64) -> Vec<u8> {
    thread_local! {
        static PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
    }
    super::with_kept_plan(
        &PLAN,
        "SELECT (SELECT chain FROM (
                    (SELECT id, chain FROM activity_log.events WHERE id < $1 AND chain IS NOT NULL ORDER BY id DESC LIMIT 1)
                    UNION ALL
                    (SELECT id, chain FROM activity_log.chain_anchors WHERE id < $1 ORDER BY id DESC LIMIT 1)) s
                  ORDER BY id DESC LIMIT 1)",
        &[pg_sys::INT8OID],
        |client, plan| client.select(plan, Some(1), &[id.into()])?.first().get_one::<Vec<u8>>(),
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("activity_log: could not read the trail's chain: {e}"), None))
    .unwrap_or_else(|| GENESIS.to_vec())
}

/// What verify() found.
pub struct Verdict {
    pub rows_checked: i64,
    pub first_broken_id: Option<i64>,
    pub problem: Option<String>,
    pub head: Option<Vec<u8>>,
}

/// verify recomputes the chain of the rows with from <= id <= to, starting from the stored
/// chain of the writer's row before `from`, and stops at the first row whose chain differs or
/// is missing. Rows dropped by retention left their chain values in activity_log.chain_anchors:
/// a row whose predecessor was dropped links to the anchor before it.
///
/// A row redacted with activity_log.redact() no longer has the bytes its link was made of.
/// redact() checked that link, and its REDACT record — a row of the chain itself, written
/// later — holds the SHA-256 of the row as redacted and the chain value the row linked to: the
/// row must still hash to the one and follow the other, and its stored link carries the chain
/// on. A row listed in activity_log.redactions (only a table) without a REDACT record is broken.
pub fn verify(from: i64, to: i64) -> Verdict {
    let prev = link_before(from);
    let anchors = Spi::connect(|client| {
        let rows = client.select(
            "SELECT id, chain FROM activity_log.chain_anchors WHERE id BETWEEN $1 AND $2",
            None,
            &[from.into(), to.into()],
        )?;
        rows.map(|r| {
            Ok((
                r.get::<i64>(1)?.unwrap_or(0),
                r.get::<Vec<u8>>(2)?.unwrap_or_default(),
            ))
        })
        .collect::<Result<BTreeMap<_, _>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("activity_log: verify could not read activity_log.chain_anchors: {e}"),
            None,
        )
    });
    let redacted = Spi::connect(|client| {
        let rows = client.select(
            "SELECT (new_row->>'id')::int8, new_row->'columns', new_row->'originals'
               FROM activity_log.events
              WHERE table_oid = 'activity_log.redactions'::regclass::oid AND kind = 'system'
                AND command = 'REDACT' AND (new_row->>'id')::int8 BETWEEN $1 AND $2",
            None,
            &[from.into(), to.into()],
        )?;
        rows.map(|r| {
            let id = r.get::<i64>(1)?.unwrap_or(0);
            let columns = r.get::<pgrx::JsonB>(2)?.map(|j| j.0).unwrap_or_default();
            let originals = r.get::<pgrx::JsonB>(3)?.map(|j| j.0).unwrap_or_default();
            Ok((id, Redaction::from_record(&columns, &originals)))
        })
        .collect::<Result<BTreeMap<_, _>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("activity_log: verify could not read the REDACT records: {e}"),
            None,
        )
    });
    let listed: Vec<i64> = Spi::connect(|client| {
        client
            .select(
                "SELECT id FROM activity_log.redactions WHERE id BETWEEN $1 AND $2",
                None,
                &[from.into(), to.into()],
            )?
            .map(|r| Ok(r.get::<i64>(1)?.unwrap_or(0)))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("activity_log: verify could not read activity_log.redactions: {e}"),
            None,
        )
    });
    // The anchors retention kept, as the trail's own RETENTION records name them (not
    // chain_anchors or retention_log alone: only a row of the chain proves it). No index finds
    // those records, so they are read only when an anchor lies in the range: not for the one
    // row redact() verifies, nor for a range retention never cut.
    if anchors.is_empty() {
        return walk(prev, from, to, &anchors, &redacted, &listed, &[]);
    }
    let dropped: Vec<i64> = Spi::connect(|client| {
        client
            .select(
                "SELECT a::int8 FROM activity_log.events e,
                        jsonb_array_elements_text(CASE jsonb_typeof(e.details->'anchors')
                                                  WHEN 'array' THEN e.details->'anchors' ELSE '[]' END) a
                  WHERE e.kind = 'system' AND e.command = 'RETENTION'",
                None,
                &[],
            )?
            .map(|r| Ok(r.get::<i64>(1)?.unwrap_or(i64::MIN)))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("activity_log: verify could not read the RETENTION records: {e}"),
            None,
        )
    });
    walk(prev, from, to, &anchors, &redacted, &listed, &dropped)
}

/// What a REDACT record of the trail says about the row it redacted: each column emptied, and
/// the digest of the value it held (None: NULL). A record that does not read so names no
/// column, and then proves nothing.
struct Redaction {
    columns: Vec<(String, Option<[u8; 32]>)>,
}

impl Redaction {
    fn from_record(columns: &serde_json::Value, originals: &serde_json::Value) -> Redaction {
        let hex = |s: &str| -> Option<[u8; 32]> {
            let s = s.strip_prefix("\\x")?;
            let mut out = [0u8; 32];
            for (n, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(s.get(2 * n..2 * n + 2)?, 16).ok()?;
            }
            (s.len() == 64).then_some(out)
        };
        let columns = columns
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .filter_map(|c| match originals.get(c) {
                Some(serde_json::Value::Null) => Some((c.to_string(), None)),
                Some(serde_json::Value::String(d)) => hex(d).map(|d| (c.to_string(), Some(d))),
                _ => None,
            })
            .collect();
        Redaction { columns }
    }
}

/// The value redact() leaves in a column it empties, as the chain takes it: '<REDACTED>' in a
/// text column, the JSON string "<REDACTED>" in a jsonb one.
fn marker_digests() -> ([u8; 32], [u8; 32]) {
    // SAFETY: jsonb_in of a constant; the result is a plain varlena in the current context.
    let jsonb = unsafe {
        let datum = pg_sys::OidInputFunctionCall(
            pg_sys::Oid::from(pg_sys::F_JSONB_IN),
            c"\"<REDACTED>\"".as_ptr().cast_mut(),
            pg_sys::InvalidOid,
            -1,
        );
        column_digest(varlena_bytes(datum))
    };
    (column_digest(b"<REDACTED>"), jsonb)
}

/// The digests of the values of `columns` of trail row `id` as the chain takes them, as a
/// JSON object (hex, or null for NULL), for redact() to keep before it empties them; None when
/// there is no such row.
pub fn column_digests(id: i64, columns: &[String]) -> Option<serde_json::Value> {
    let mut out = None;
    // SAFETY: SPI as its C API documents it; the tuple is read before SPI_finish frees it.
    unsafe {
        pg_sys::SPI_connect();
        let mut types = [pg_sys::INT8OID];
        let mut args = [pg_sys::Datum::from(id)];
        pg_sys::SPI_execute_with_args(
            c"SELECT * FROM activity_log.events WHERE id = $1".as_ptr(),
            1,
            types.as_mut_ptr(),
            args.as_mut_ptr(),
            c" ".as_ptr(),
            true,
            1,
        );
        if pg_sys::SPI_processed == 1 {
            let table = pg_sys::SPI_tuptable;
            let desc = (*table).tupdesc;
            let tuple = *(*table).vals;
            let mut map = serde_json::Map::new();
            for c in columns {
                let name = std::ffi::CString::new(c.as_str()).unwrap_or_default();
                let attno = pg_sys::SPI_fnumber(desc, name.as_ptr());
                if attno <= 0 {
                    continue;
                }
                let mut isnull = false;
                let datum = pg_sys::SPI_getbinval(tuple, desc, attno, &mut isnull);
                map.insert(
                    c.clone(),
                    match isnull {
                        true => serde_json::Value::Null,
                        false => serde_json::Value::String(format!(
                            "\\x{}",
                            column_digest(varlena_bytes(datum))
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<String>()
                        )),
                    },
                );
            }
            out = Some(serde_json::Value::Object(map));
        }
        pg_sys::SPI_finish();
    }
    out
}

/// The SQL face of [`column_digests`], for redact() (not executable by PUBLIC).
#[pg_extern(name = "_column_digests")]
fn column_digests_sql(id: i64, columns: Vec<String>) -> Option<pgrx::JsonB> {
    column_digests(id, &columns).map(pgrx::JsonB)
}

#[allow(clippy::too_many_arguments)]
fn walk(
    mut prev: Vec<u8>,
    from: i64,
    to: i64,
    anchors: &BTreeMap<i64, Vec<u8>>,
    redacted: &BTreeMap<i64, Redaction>,
    listed: &[i64],
    dropped: &[i64],
) -> Verdict {
    let (text_marker, jsonb_marker) = marker_digests();
    let mut digested: Option<Vec<bool>> = None;
    let mut verdict = Verdict {
        rows_checked: 0,
        first_broken_id: None,
        problem: None,
        head: None,
    };
    // Ids above this one and below the next row may be dropped rows it links to.
    let mut last_id = from.saturating_sub(1);
    let query = c"SELECT * FROM activity_log.events WHERE id BETWEEN $1 AND $2 ORDER BY id";
    // SAFETY: SPI as its C API documents it: a read-only cursor over the trail, fetched in
    // chunks; each tuple is deformed with the result's descriptor and read before the next
    // fetch frees it.
    unsafe {
        pg_sys::SPI_connect();
        let mut types = [pg_sys::INT8OID, pg_sys::INT8OID];
        let mut args = [pg_sys::Datum::from(from), pg_sys::Datum::from(to)];
        let nulls = c"  ";
        let portal = pg_sys::SPI_cursor_open_with_args(
            std::ptr::null(),
            query.as_ptr(),
            2,
            types.as_mut_ptr(),
            args.as_mut_ptr(),
            nulls.as_ptr(),
            true,
            0,
        );
        let mut bytes = Vec::new();
        let mut sha = Sha256::new();
        // Detoasted values and hashes of one row live until the next: a whole trail can be
        // verified in one call.
        let per_row = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"activity_log verify".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        'fetch: loop {
            pg_sys::SPI_cursor_fetch(portal, true, 10_000);
            let n = pg_sys::SPI_processed as usize;
            if n == 0 {
                break;
            }
            let table = pg_sys::SPI_tuptable;
            let desc = (*table).tupdesc;
            let natts = (*desc).natts as usize;
            let id_col = pg_sys::SPI_fnumber(desc, c"id".as_ptr()) as usize - 1;
            let chain_col = pg_sys::SPI_fnumber(desc, c"chain".as_ptr()) as usize - 1;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut isnull = vec![true; natts];
            for i in 0..n {
                pg_sys::MemoryContextReset(per_row);
                let caller = pg_sys::MemoryContextSwitchTo(per_row);
                let tuple = *(*table).vals.add(i);
                pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), isnull.as_mut_ptr());
                let id = values[id_col].value() as i64;
                // (A hand-inserted duplicate id would make an empty, reversed range.) An
                // anchor stands for rows retention dropped: one that no RETENTION record of
                // the trail names was made by hand, and the rows it skips are missing.
                let mut unexplained = None;
                if last_id < id
                    && let Some((&at, chain)) = anchors.range(last_id + 1..id).next_back()
                {
                    if dropped.contains(&at) {
                        prev.clone_from(chain);
                    } else {
                        unexplained = Some(at);
                    }
                }
                last_id = id;
                let redaction = redacted.get(&id);
                let digested = digested.get_or_insert_with(|| super::chain::digested(desc));
                // A redacted row: each emptied column holds what redact() leaves, and counts
                // by the digest of the value it held.
                let mut replaced = Vec::new();
                let mut emptied_right = true;
                for (column, was) in redaction.map(|r| &r.columns[..]).unwrap_or_default() {
                    let name = std::ffi::CString::new(column.as_str()).unwrap_or_default();
                    let attno = pg_sys::SPI_fnumber(desc, name.as_ptr());
                    if attno <= 0 || !digested[attno as usize - 1] {
                        emptied_right = false;
                        continue;
                    }
                    let i = attno as usize - 1;
                    let now = (!isnull[i]).then(|| column_digest(varlena_bytes(values[i])));
                    emptied_right &= match was {
                        None => now.is_none(),
                        Some(_) => now == Some(text_marker) || now == Some(jsonb_marker),
                    };
                    replaced.push((i, *was));
                }
                bytes.clear();
                row_bytes(
                    desc, &values, &isnull, chain_col, digested, &replaced, &mut bytes,
                );
                let stored =
                    (!isnull[chain_col]).then(|| varlena_bytes(values[chain_col]).to_vec());
                let expected = sha.link(&prev, &bytes).to_vec();
                pg_sys::MemoryContextSwitchTo(caller);
                verdict.rows_checked += 1;
                let unrecorded = redaction.is_none() && listed.contains(&id);
                if unexplained.is_some()
                    || unrecorded
                    || !emptied_right
                    || stored.as_deref() != Some(&expected[..])
                {
                    verdict.first_broken_id = Some(id);
                    verdict.problem = Some(match stored {
                        _ if unexplained.is_some() => format!(
                            "rows before row {id} are missing: chain_anchors has a value for row {}, but no RETENTION record of the trail kept it",
                            unexplained.unwrap_or_default()
                        ),
                        None => format!("row {id} has no chain value: the writer did not store it"),
                        Some(_) if unrecorded => format!(
                            "row {id} is listed in activity_log.redactions, but the trail holds no REDACT record of it (yet: flush() first)"
                        ),
                        Some(_) if !emptied_right => format!(
                            "row {id} was redacted, and a column its REDACT record names does not hold what redact() left"
                        ),
                        Some(_) => format!(
                            "the chain breaks at row {id}: the row was changed, or a row just before it was removed or added"
                        ),
                    });
                    break 'fetch;
                }
                prev = expected;
            }
            pg_sys::SPI_freetuptable(table);
        }
        pg_sys::SPI_cursor_close(portal);
        pg_sys::SPI_finish();
    }
    if verdict.first_broken_id.is_none() && verdict.rows_checked > 0 {
        verdict.head = Some(prev);
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::Sha256;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn a_link_is_sha256_of_the_previous_link_and_the_row() {
        let mut sha = Sha256::new();
        // FIPS 180-2 test vectors; the context is reused, as the writer does.
        assert_eq!(
            hex(&sha.link(b"", b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha.link(
                b"abcdbcdecdefdefgefghfghighij",
                b"hijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hex(&sha.link(b"", b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
