//! worker/decode.rs: turns captured row images (raw minimal tuples) into the trail's values —
//! jsonb images without the excluded columns, the row key, the changed columns.
//!
//! Runs in the writer, inside its batch transaction (type output functions need the catalog).
//! The row type is rebuilt from the description captured with the images, not read from the
//! table: the table may have been altered or dropped since, and the images keep the shape they
//! were stored in. The jsonb values are exactly what `to_jsonb(row)` gives. When every column
//! is of a common scalar type ([`Scalar`]), the writer builds them from the deformed values
//! itself, in jsonb's binary layout ([`super::jsonb`]): `to_jsonb` prints each number and
//! parses it back, which made it the writer's largest cost after the inserts. Other rows go
//! through `to_jsonb`. Scratch allocations go into a context reset per row; only the finished
//! jsonb values go into the context that was current at the call (the batch transaction's),
//! where the insert finds them.
//!
//! Must not run code a non-superuser wrote: the writer runs as the bootstrap superuser, and
//! `to_jsonb` calls a type's `CAST (… AS json)` function, which its owner may write in
//! PL/pgSQL. Only type output functions (which only a superuser can create) and C casts run
//! here; a column whose type is owned by another role, or has any other cast to json, is
//! recorded as its text output ([`runs_user_code`]).

use pgrx::pg_sys;
use pgrx::varlena;
use std::cell::RefCell;
use std::ffi::{CString, c_char};

use super::jsonb;
use crate::record::{Bytes, Column, DecodeError, RowImages};
use crate::unguarded;

/// A jsonb value allocated in the batch transaction.
#[derive(Clone, Copy)]
pub struct Jsonb(pg_sys::Datum);

impl Jsonb {
    pub fn datum(self) -> pg_sys::Datum {
        self.0
    }
}

/// One change row as the trail stores it.
#[derive(Default)]
pub struct ChangeRow {
    pub old_row: Option<Jsonb>,
    pub new_row: Option<Jsonb>,
    /// The key columns of the old image (the new one for an INSERT); the whole row when the
    /// table has no key.
    pub row_key: Option<Jsonb>,
    /// For an UPDATE: the shown columns whose stored value differs, sorted by name.
    pub changed_columns: Option<Vec<String>>,
    /// For an UPDATE that changed the key: the new key, as JSON text (history() follows it).
    pub new_key: Option<String>,
}

/// Decoder decodes the changes of one batch. It lives in the batch transaction: the row types
/// it builds are reused by every statement of the same shape in the batch.
pub struct Decoder<'a> {
    to_jsonb: ToJsonb,
    per_row: pgrx::PgMemoryContexts,
    shapes: Vec<Shape<'a>>,
    /// Column lists [`Decoder::check_types`] found right.
    checked: Vec<Vec<Column<'a>>>,
}

// record.rs checks row images with its own copy of the minimal tuple's layout: the same as
// this server's.
const _: () = {
    use crate::record::tuple;
    use std::mem::offset_of;
    assert!(offset_of!(pg_sys::MinimalTupleData, t_infomask2) == tuple::INFOMASK2);
    assert!(offset_of!(pg_sys::MinimalTupleData, t_infomask) == tuple::INFOMASK);
    assert!(offset_of!(pg_sys::MinimalTupleData, t_hoff) == tuple::HOFF);
    assert!(offset_of!(pg_sys::MinimalTupleData, t_bits) == tuple::BITS);
    assert!(
        offset_of!(pg_sys::HeapTupleHeaderData, t_infomask2) - tuple::INFOMASK2
            == tuple::MINIMAL_TUPLE_OFFSET
    );
    assert!(pg_sys::MAXIMUM_ALIGNOF as usize == tuple::MAXALIGN);
    assert!(pg_sys::HEAP_HASNULL as u16 == tuple::HEAP_HASNULL);
    assert!(pg_sys::HEAP_NATTS_MASK as u16 == tuple::HEAP_NATTS_MASK);
};

/// The record types of one table's images, as captured.
struct Shape<'a> {
    columns: Vec<Column<'a>>,
    key_columns: Vec<Bytes<'a>>,
    exclude: Vec<Bytes<'a>>,
    full: pg_sys::TupleDesc,
    /// The columns shown in the trail: neither dropped nor excluded.
    shown: Vec<usize>,
    /// Per column: the output function of a column recorded as its text ([`runs_user_code`]).
    as_text: Vec<Option<pg_sys::Oid>>,
    /// Set when excluded columns need a narrower row than `full`, or columns become text.
    shown_type: Option<pg_sys::TupleDesc>,
    /// Key columns and whether each is shown (an excluded one shows as null).
    key: Vec<(usize, bool)>,
    key_type: Option<pg_sys::TupleDesc>,
    /// Set when every shown column is a [`Scalar`]: images are built without `to_jsonb`.
    direct: Option<Direct>,
}

/// What building a shape's jsonb values directly needs: each column's conversion, and the
/// shown and key columns in jsonb's key order (shorter names first, then bytewise), the order
/// `to_jsonb` ends up with, so that the pairs are handed over already sorted.
struct Direct {
    scalars: Vec<Option<Scalar>>,
    shown: Vec<(usize, bool)>,
    key: Vec<(usize, bool)>,
    /// The object being built, kept from row to row for its capacity.
    bytes: RefCell<Vec<u8>>,
}

impl Direct {
    /// new is None when a shown column is not a [`Scalar`].
    unsafe fn new(columns: &[Column], shown: &[usize], key: &[(usize, bool)]) -> Option<Direct> {
        // SAFETY: catalog lookups inside the batch transaction.
        let scalars: Vec<Option<Scalar>> = columns
            .iter()
            .map(|c| match c.dropped {
                true => None,
                false => unsafe { Scalar::of(c.type_oid) },
            })
            .collect();
        if shown.iter().any(|&i| scalars[i].is_none()) {
            return None;
        }
        let key_order = |cols: &mut Vec<(usize, bool)>| {
            cols.sort_by(|a, b| {
                let (x, y) = (&columns[a.0].name, &columns[b.0].name);
                (x.len(), x).cmp(&(y.len(), y))
            })
        };
        let mut shown: Vec<(usize, bool)> = shown.iter().map(|&i| (i, true)).collect();
        key_order(&mut shown);
        let mut key = key.to_vec();
        key_order(&mut key);
        Some(Direct {
            scalars,
            shown,
            key,
            bytes: RefCell::new(Vec::new()),
        })
    }

    /// object is the jsonb object of the columns `cols` (index, shown) of `d`, allocated in
    /// `cxt`; a column that is not shown is null, as are NULL values.
    unsafe fn object(
        &self,
        d: &Deformed,
        columns: &[Column],
        cols: &[(usize, bool)],
        cxt: pg_sys::MemoryContext,
    ) -> pg_sys::Datum {
        // SAFETY: d's values are valid Datums of the columns' types; what the values point to
        // lives in the current context until the object is copied out of `bytes`.
        unsafe {
            let keys = cols.iter().map(|&(i, _)| &columns[i].name[..]);
            let values = cols.iter().map(|&(i, shown)| match self.scalars[i] {
                Some(scalar) if shown && !d.nulls[i] => scalar.jsonb(d.values[i]),
                _ => jsonb::Value::Null,
            });
            let mut bytes = self.bytes.borrow_mut();
            if jsonb::object(&mut bytes, keys, values).is_err() {
                pgrx::ereport!(
                    ERROR,
                    pgrx::PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "total size of jsonb object elements exceeds the maximum of {} bytes",
                        jsonb::MAX_LEN
                    )
                );
            }
            let datum = pg_sys::MemoryContextAlloc(cxt, bytes.len()).cast::<u8>();
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), datum, bytes.len());
            pg_sys::Datum::from(datum)
        }
    }
}

/// The column types whose jsonb value the writer makes itself, each the way `to_jsonb` makes
/// it (datum_to_jsonb in jsonb.c) for the type or a domain over it: numbers become jsonb
/// numerics without being printed, text is taken as stored.
#[derive(Clone, Copy)]
enum Scalar {
    Bool,
    Int2,
    Int4,
    Int8,
    Numeric,
    Text,
    DateTime(pg_sys::Oid),
}

impl Scalar {
    unsafe fn of(type_oid: u32) -> Option<Scalar> {
        // SAFETY: a catalog lookup; an unknown type is its own base type.
        let base = unsafe { pg_sys::getBaseType(pg_sys::Oid::from(type_oid)) };
        Some(match base {
            pg_sys::BOOLOID => Scalar::Bool,
            pg_sys::INT2OID => Scalar::Int2,
            pg_sys::INT4OID => Scalar::Int4,
            pg_sys::INT8OID => Scalar::Int8,
            pg_sys::NUMERICOID => Scalar::Numeric,
            pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => Scalar::Text,
            pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => {
                Scalar::DateTime(base)
            }
            _ => return None,
        })
    }

    /// jsonb is the value of a non-NULL datum of this type; what it points to is the datum's
    /// own bytes or allocated in the current context.
    unsafe fn jsonb<'v>(self, v: pg_sys::Datum) -> jsonb::Value<'v> {
        let c_string = |s: *mut c_char| {
            // SAFETY: a NUL-terminated string from PostgreSQL.
            jsonb::Value::String(unsafe { std::ffi::CStr::from_ptr(s) }.to_bytes())
        };
        // SAFETY: v is a valid Datum of this type (see the caller).
        unsafe {
            match self {
                Scalar::Bool => jsonb::Value::Bool(v.value() != 0),
                Scalar::Int2 => jsonb::Value::Int(v.value() as i16 as i64),
                Scalar::Int4 => jsonb::Value::Int(v.value() as i32 as i64),
                Scalar::Int8 => jsonb::Value::Int(v.value() as i64),
                Scalar::Numeric => {
                    let n = super::detoast_packed(v.cast_mut_ptr());
                    let payload = std::slice::from_raw_parts(
                        varlena::vardata_any(n).cast::<u8>(),
                        varlena::varsize_any_exhdr(n),
                    );
                    // NaN and the infinities (NUMERIC_SPECIAL in the first header bits) are not
                    // JSON numbers: to_jsonb gives their text.
                    match payload {
                        [a, b, ..] if u16::from_ne_bytes([*a, *b]) & 0xC000 == 0xC000 => {
                            c_string(pg_sys::OidOutputFunctionCall(
                                pg_sys::Oid::from(pg_sys::F_NUMERIC_OUT),
                                pg_sys::Datum::from(n),
                            ))
                        }
                        _ => jsonb::Value::Numeric(payload),
                    }
                }
                Scalar::Text => {
                    let t = super::detoast_packed(v.cast_mut_ptr());
                    let len = varlena::varsize_any_exhdr(t);
                    if len > jsonb::MAX_LEN {
                        too_long();
                    }
                    jsonb::Value::String(std::slice::from_raw_parts(
                        varlena::vardata_any(t).cast(),
                        len,
                    ))
                }
                Scalar::DateTime(oid) => c_string(pg_sys::JsonEncodeDateTime(
                    std::ptr::null_mut(),
                    v,
                    oid,
                    std::ptr::null(),
                )),
            }
        }
    }
}

/// too_long raises to_jsonb's error for a string jsonb cannot hold.
fn too_long() -> ! {
    pgrx::ereport!(
        ERROR,
        pgrx::PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        "string too long to represent as jsonb string",
        format!(
            "Due to an implementation restriction, jsonb strings cannot exceed {} bytes.",
            jsonb::MAX_LEN
        ),
    );
}

impl<'a> Shape<'a> {
    unsafe fn new(
        columns: &[Column<'a>],
        key_columns: &[Bytes<'a>],
        exclude: &[Bytes<'a>],
    ) -> Shape<'a> {
        let shown: Vec<usize> = (0..columns.len())
            .filter(|&i| !columns[i].dropped && !exclude.contains(&columns[i].name))
            .collect();
        let key: Vec<(usize, bool)> = key_columns
            .iter()
            .filter_map(|k| columns.iter().position(|c| !c.dropped && &c.name == k))
            .map(|i| (i, shown.contains(&i)))
            .collect();
        // SAFETY: catalog lookups inside the batch transaction.
        let as_text: Vec<Option<pg_sys::Oid>> = columns
            .iter()
            .map(|c| match c.dropped {
                true => None,
                false => unsafe { text_output_if_untrusted(c.type_oid) },
            })
            .collect();
        // to_jsonb skips dropped columns itself; excluded ones need a narrower row, and text
        // columns a row type of their own.
        let hides = columns
            .iter()
            .any(|c| !c.dropped && exclude.contains(&c.name))
            || as_text.iter().any(Option::is_some);
        let key_idx: Vec<usize> = key.iter().map(|k| k.0).collect();
        // SAFETY: descriptors built in the batch transaction's memory context.
        unsafe {
            Shape {
                direct: Direct::new(columns, &shown, &key),
                full: row_type(columns, &(0..columns.len()).collect::<Vec<_>>(), &[]),
                shown_type: hides.then(|| row_type(columns, &shown, &as_text)),
                key_type: (!key.is_empty()).then(|| row_type(columns, &key_idx, &as_text)),
                as_text,
                columns: columns.to_vec(),
                key_columns: key_columns.to_vec(),
                exclude: exclude.to_vec(),
                shown,
                key,
            }
        }
    }
}

impl<'a> Decoder<'a> {
    /// new must be called inside the batch transaction.
    pub fn new() -> Decoder<'a> {
        Decoder {
            // SAFETY: fmgr lookup in the transaction's memory context.
            to_jsonb: unsafe { ToJsonb::new() },
            per_row: pgrx::PgMemoryContexts::new("activity_log decode"),
            shapes: Vec::new(),
            checked: Vec::new(),
        }
    }

    /// forget drops the row types made so far: after a rollback of the subtransaction they
    /// were made in, their memory is gone.
    pub fn forget(&mut self) {
        self.shapes.clear();
        self.checked.clear();
    }

    /// check_types checks that each column's storage (length, by value, alignment) is its
    /// type's: the images are checked with the columns' (record.rs), and deformed with the
    /// types'. A type that no longer exists is left to decode_change, whose error says so.
    pub fn check_types(&mut self, columns: &[Column<'a>]) -> Result<(), DecodeError> {
        if columns.is_empty() || self.checked.iter().any(|c| c == columns) {
            return Ok(());
        }
        for c in columns.iter().filter(|c| !c.dropped) {
            // SAFETY: a catalog lookup inside the batch transaction.
            let stored = unsafe {
                catalog_row(
                    pg_sys::SysCacheIdentifier::TYPEOID,
                    pg_sys::Oid::from(c.type_oid),
                    |t: &pg_sys::FormData_pg_type| (t.typlen, t.typbyval, t.typalign as u8),
                )
            };
            if let Some((len, byval, align)) = stored
                && (len, byval, align) != (c.len, c.byval, c.align)
            {
                return Err(DecodeError(
                    format!(
                        "column {} is of type {} (length {len}, by value: {byval}, alignment {}), but the frame describes it with length {}, by value: {}, alignment {}",
                        String::from_utf8_lossy(&c.name),
                        c.type_oid,
                        align as char,
                        c.len,
                        c.byval,
                        c.align as char
                    )
                    .into(),
                ));
            }
        }
        self.checked.push(columns.to_vec());
        Ok(())
    }

    /// decode_change decodes every image of one statement's change.
    pub fn decode_change(
        &mut self,
        columns: &[Column<'a>],
        key_columns: &[Bytes<'a>],
        exclude: &[Bytes<'a>],
        images: &[RowImages<'a>],
    ) -> Vec<ChangeRow> {
        let found = self.shapes.iter().position(|s| {
            s.columns == columns && s.key_columns == key_columns && s.exclude == exclude
        });
        let shape = match found {
            Some(i) => i,
            None => {
                // SAFETY: inside the batch transaction (see new).
                let shape = unsafe { Shape::new(columns, key_columns, exclude) };
                self.shapes.push(shape);
                self.shapes.len() - 1
            }
        };
        let shape = &self.shapes[shape];
        let to_jsonb = &self.to_jsonb;
        // SAFETY: tuples are PostgreSQL's own minimal tuples, copied at capture, decoded with
        // the descriptor of their shape; scratch memory is the per-row context, and the
        // finished values are made in, or copied into, the context current at this call.
        unsafe {
            let out = pg_sys::CurrentMemoryContext;
            let key_idx: Vec<usize> = shape.key.iter().map(|k| k.0).collect();
            let mut rows = Vec::with_capacity(images.len());
            let direct = shape.direct.is_some();
            for (old, new) in images {
                let row = self.per_row.switch_to(|_| {
                    // The whole row as a composite: only when it goes to to_jsonb as it is.
                    let composite = !direct && shape.shown_type.is_none();
                    let old = old
                        .as_ref()
                        .map(|b| Deformed::new(b, shape.full, composite));
                    let new = new
                        .as_ref()
                        .map(|b| Deformed::new(b, shape.full, composite));
                    // The shown columns, and the key columns, as jsonb objects.
                    let image = |d: &Deformed| match (&shape.direct, shape.shown_type) {
                        (Some(direct), _) => direct.object(d, columns, &direct.shown, out),
                        (None, Some(t)) => {
                            to_jsonb.call(d.form(t, &shape.shown, &shape.as_text, |_| false))
                        }
                        (None, None) => to_jsonb.call(d.datum),
                    };
                    let key = |d: &Deformed, t: pg_sys::TupleDesc| match &shape.direct {
                        Some(direct) => direct.object(d, columns, &direct.key, out),
                        None => {
                            to_jsonb.call(d.form(t, &key_idx, &shape.as_text, |n| !shape.key[n].1))
                        }
                    };
                    let old_row = old.as_ref().map(image);
                    let new_row = new.as_ref().map(image);
                    let row_key = match shape.key_type {
                        Some(t) => old.as_ref().or(new.as_ref()).map(|d| key(d, t)),
                        None => old_row.or(new_row),
                    };
                    let changed_columns = match (&old, &new) {
                        (Some(o), Some(n)) => {
                            let mut names: Vec<String> = shape
                                .shown
                                .iter()
                                .filter(|&&i| !o.same_value(n, i, shape.full))
                                .map(|&i| String::from_utf8_lossy(&columns[i].name).into_owned())
                                .collect();
                            names.sort();
                            Some(names)
                        }
                        _ => None,
                    };
                    let new_key = match (shape.key_type, &old, &new) {
                        (Some(t), Some(o), Some(n))
                            if key_idx.iter().any(|&i| !o.same_value(n, i, shape.full)) =>
                        {
                            Some(jsonb_text(key(n, t)))
                        }
                        _ => None,
                    };
                    // Direct objects are made in `out` already; to_jsonb's are copied there.
                    let keep = |j: Option<pg_sys::Datum>| {
                        j.map(|j| Jsonb(if direct { j } else { copy_to(out, j) }))
                    };
                    ChangeRow {
                        old_row: keep(old_row),
                        new_row: keep(new_row),
                        row_key: keep(row_key),
                        changed_columns,
                        new_key,
                    }
                });
                self.per_row.reset();
                rows.push(row);
            }
            rows
        }
    }
}

/// text_output_if_untrusted is the output function of `type_oid` when [`runs_user_code`]
/// says its values must be recorded as text.
unsafe fn text_output_if_untrusted(type_oid: u32) -> Option<pg_sys::Oid> {
    // SAFETY: catalog lookups (see the caller).
    unsafe {
        let typid = pg_sys::Oid::from(type_oid);
        if !runs_user_code(typid, false, 0) {
            return None;
        }
        let (mut output, mut varlena) = (pg_sys::InvalidOid, false);
        pg_sys::getTypeOutputInfo(typid, &mut output, &mut varlena);
        Some(output)
    }
}

/// relation_runs_user_code tells whether reading the rows of `relid` the way SQL does —
/// casting its values to text or json, or making values of its row type (a domain's CHECK) —
/// could run code of a role other than a superuser (see [`runs_user_code`]). Anything but a
/// table (a view's query) counts as code.
pub fn relation_runs_user_code(relid: pg_sys::Oid) -> bool {
    // SAFETY: a relation descriptor opened and closed around the catalog lookups.
    unsafe {
        let rel = pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as i32);
        if rel.is_null() {
            return false;
        }
        // Reading a view runs its query, functions and all: only tables are read as they are.
        let kind = (*(*rel).rd_rel).relkind as u8;
        if kind != pg_sys::RELKIND_RELATION && kind != pg_sys::RELKIND_PARTITIONED_TABLE {
            pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
            return true;
        }
        let desc = (*rel).rd_att;
        let attrs = crate::versions::attributes(desc);
        let any = attrs
            .iter()
            .any(|a| !a.attisdropped && runs_user_code(a.atttypid, true, 0));
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
        any
    }
}

/// runs_user_code tells whether `to_jsonb` could run, for a value of `typid`, code that a
/// role other than a superuser wrote or can change: a cast to json(b) of the type, of an
/// element type, or of a field of a composite. Types owned by a superuser (built-in ones,
/// and those of extensions: hstore's C cast stays in use) are looked into; a type owned by
/// any other role is untrusted as a whole, since its owner may add a cast, or fields, after
/// this check. Domains are looked through, as `to_jsonb` does; `strict` also counts a domain
/// owned by such a role (its CHECK runs when a value is made) and casts to text.
unsafe fn runs_user_code(typid: pg_sys::Oid, strict: bool, depth: u32) -> bool {
    // SAFETY: catalog lookups inside a transaction; the tuple and descriptor are released.
    unsafe {
        if strict
            && typid.to_u32() >= pg_sys::FirstNormalObjectId
            && pg_sys::get_typtype(typid) == pg_sys::TYPTYPE_DOMAIN as std::ffi::c_char
            && !owned_by_superuser(typid)
        {
            return true;
        }
        let base = pg_sys::getBaseType(typid);
        if base.to_u32() < pg_sys::FirstNormalObjectId {
            return false; // built in: no cast can be added to it by anybody but a superuser
        }
        if depth > 16 || !owned_by_superuser(base) {
            return true;
        }
        let element = pg_sys::get_element_type(base);
        if element != pg_sys::InvalidOid {
            return runs_user_code(element, strict, depth + 1);
        }
        if pg_sys::type_is_rowtype(base) {
            let desc = pg_sys::lookup_rowtype_tupdesc(base, -1);
            let attrs = crate::versions::attributes(desc);
            let any = attrs
                .iter()
                .any(|a| !a.attisdropped && runs_user_code(a.atttypid, strict, depth + 1));
            pg_sys::DecrTupleDescRefCount(desc);
            return any;
        }
        let targets: &[pg_sys::Oid] = match strict {
            true => &[pg_sys::JSONOID, pg_sys::JSONBOID, pg_sys::TEXTOID],
            false => &[pg_sys::JSONOID, pg_sys::JSONBOID],
        };
        targets.iter().any(|&target| {
            let mut cast = pg_sys::InvalidOid;
            let path = pg_sys::find_coercion_pathway(
                target,
                base,
                pg_sys::CoercionContext::COERCION_EXPLICIT,
                &mut cast,
            );
            path == pg_sys::CoercionPathType::COERCION_PATH_FUNC
                && cast != pg_sys::InvalidOid
                && !in_c(cast)
        })
    }
}

/// catalog_row reads `read` from the syscache row of `oid` in `cache` (None when it vanished).
pub(crate) unsafe fn catalog_row<T, R>(
    cache: pg_sys::SysCacheIdentifier::Type,
    oid: pg_sys::Oid,
    read: impl FnOnce(&T) -> R,
) -> Option<R> {
    // SAFETY: a syscache lookup whose tuple is of catalog struct T; released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(cache as i32, pg_sys::Datum::from(oid));
        if tuple.is_null() {
            return None;
        }
        let value = read(&*pg_sys::heap_tuple_get_struct::<T>(tuple));
        pg_sys::ReleaseSysCache(tuple);
        Some(value)
    }
}

/// owned_by_superuser: the type's owner is a superuser (a type that vanished is not).
unsafe fn owned_by_superuser(typid: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup inside a transaction.
    unsafe {
        catalog_row(
            pg_sys::SysCacheIdentifier::TYPEOID,
            typid,
            |t: &pg_sys::FormData_pg_type| t.typowner,
        )
        .is_some_and(|owner| pg_sys::superuser_arg(owner))
    }
}

/// in_c: the function is written in C or is internal, which only a superuser can create.
unsafe fn in_c(func: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup inside a transaction.
    let lang = unsafe {
        catalog_row(
            pg_sys::SysCacheIdentifier::PROCOID,
            func,
            |p: &pg_sys::FormData_pg_proc| p.prolang,
        )
    };
    // pg_language.dat: internal is 12, c is 13 (their OIDs are fixed).
    lang.is_some_and(|l| l == pg_sys::Oid::from(12) || l == pg_sys::Oid::from(13))
}

/// row_type describes the columns at `idx` (attribute order) as a blessed record type; a
/// column with an output function in `as_text` is of type text.
unsafe fn row_type(
    columns: &[Column],
    idx: &[usize],
    as_text: &[Option<pg_sys::Oid>],
) -> pg_sys::TupleDesc {
    // SAFETY: a fresh descriptor with one entry per chosen attribute.
    unsafe {
        let desc = pg_sys::CreateTemplateTupleDesc(idx.len() as i32);
        for (n, &i) in idx.iter().enumerate() {
            let c = &columns[i];
            let name = CString::new(c.name.clone()).unwrap_or_default();
            let attno = (n + 1) as i16;
            if c.dropped {
                // A dropped column keeps its storage shape so that the columns after it are
                // found; its type may no longer exist.
                pg_sys::TupleDescInitEntry(desc, attno, name.as_ptr(), pg_sys::INT4OID, -1, 0);
                let a = crate::versions::attribute_mut(desc, n);
                a.atttypid = pg_sys::InvalidOid;
                a.attlen = c.len;
                a.attbyval = c.byval;
                a.attalign = c.align as c_char;
                a.attisdropped = true;
                crate::versions::attribute_changed(desc, n);
            } else if as_text.get(i).is_some_and(Option::is_some) {
                pg_sys::TupleDescInitEntry(desc, attno, name.as_ptr(), pg_sys::TEXTOID, -1, 0);
            } else {
                pg_sys::TupleDescInitEntry(
                    desc,
                    attno,
                    name.as_ptr(),
                    pg_sys::Oid::from(c.type_oid),
                    c.typmod,
                    0,
                );
            }
        }
        pg_sys::BlessTupleDesc(desc)
    }
}

/// One image's attribute values, and the image as a composite datum (for `to_jsonb`).
struct Deformed {
    datum: pg_sys::Datum,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Deformed {
    /// new deforms `bytes`; `composite` also makes the datum (otherwise it is 0).
    unsafe fn new(bytes: &[u8], desc: pg_sys::TupleDesc, composite: bool) -> Deformed {
        // SAFETY: bytes are a whole minimal tuple of `desc`; the palloc'd copy gives it
        // MAXALIGN alignment. Values were detoasted at capture, so the datum needs no toast.
        unsafe {
            let natts = (*desc).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![true; natts];
            let (v, n) = (values.as_mut_ptr(), nulls.as_mut_ptr());
            // One guard for the three calls (see crate::unguarded).
            let heap = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                let copy = unguarded::palloc(bytes.len()).cast::<u8>();
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), copy, bytes.len());
                let heap = unguarded::heap_tuple_from_minimal_tuple(copy.cast());
                unguarded::heap_deform_tuple(heap, desc, v, n);
                heap
            });
            Deformed {
                datum: if composite {
                    pg_sys::heap_copy_tuple_as_datum(heap, desc)
                } else {
                    pg_sys::Datum::from(0)
                },
                values,
                nulls,
            }
        }
    }

    /// form builds a composite of the attributes at `idx` in the record type `desc`;
    /// `hide(n)` nulls the n-th one, and a column with an output function in `as_text`
    /// becomes its text.
    unsafe fn form(
        &self,
        desc: pg_sys::TupleDesc,
        idx: &[usize],
        as_text: &[Option<pg_sys::Oid>],
        hide: impl Fn(usize) -> bool,
    ) -> pg_sys::Datum {
        let mut values: Vec<pg_sys::Datum> = idx
            .iter()
            .map(|&i| match as_text[i] {
                // SAFETY: a valid non-NULL Datum of the column's type, printed by its type's
                // own output function.
                Some(output) if !self.nulls[i] => unsafe {
                    let text = pg_sys::OidOutputFunctionCall(output, self.values[i]);
                    pg_sys::Datum::from(pg_sys::cstring_to_text(text))
                },
                _ => self.values[i],
            })
            .collect();
        let mut nulls: Vec<bool> = idx
            .iter()
            .enumerate()
            .map(|(n, &i)| self.nulls[i] || hide(n))
            .collect();
        // SAFETY: values and nulls match desc's attributes one to one.
        unsafe {
            let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::heap_copy_tuple_as_datum(tuple, desc)
        }
    }

    /// same_value compares attribute `i` of two images by its stored bytes.
    unsafe fn same_value(&self, other: &Deformed, i: usize, desc: pg_sys::TupleDesc) -> bool {
        if self.nulls[i] || other.nulls[i] {
            return self.nulls[i] == other.nulls[i];
        }
        // SAFETY: both values are attribute i of tuples of desc.
        unsafe {
            let a = &crate::versions::attributes(desc)[i];
            let (x, y) = (self.values[i], other.values[i]);
            let bytes = |d: pg_sys::Datum, len: usize| {
                std::slice::from_raw_parts(d.cast_mut_ptr::<u8>().cast_const(), len)
            };
            match a.attlen {
                _ if a.attbyval => x == y, // both read by fetch_att: same width, same extension
                -1 => {
                    // Varlena values may differ only in their header (short or compressed).
                    let x = super::detoast_packed(x.cast_mut_ptr());
                    let y = super::detoast_packed(y.cast_mut_ptr());
                    let (lx, ly) = (varlena::varsize_any_exhdr(x), varlena::varsize_any_exhdr(y));
                    lx == ly
                        && std::slice::from_raw_parts(varlena::vardata_any(x).cast::<u8>(), lx)
                            == std::slice::from_raw_parts(varlena::vardata_any(y).cast::<u8>(), ly)
                }
                -2 => {
                    let cstr =
                        |d: pg_sys::Datum| std::ffi::CStr::from_ptr(d.cast_mut_ptr::<c_char>());
                    cstr(x) == cstr(y)
                }
                len => bytes(x, len as usize) == bytes(y, len as usize),
            }
        }
    }
}

/// ToJsonb calls `to_jsonb(record)`: the function reads its argument's type from the call's
/// expression, so the call carries one that says `record`.
struct ToJsonb {
    flinfo: pg_sys::FmgrInfo,
}

impl ToJsonb {
    unsafe fn new() -> ToJsonb {
        // SAFETY: plain fmgr setup in the current (transaction) memory context.
        unsafe {
            let mut flinfo = pg_sys::FmgrInfo::default();
            pg_sys::fmgr_info(pg_sys::Oid::from(pg_sys::F_TO_JSONB), &mut flinfo);
            let arg = pg_sys::makeNullConst(pg_sys::RECORDOID, -1, pg_sys::InvalidOid);
            let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
            flinfo.fn_expr = pg_sys::makeFuncExpr(
                pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                pg_sys::JSONBOID,
                args,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
                pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
            )
            .cast();
            ToJsonb { flinfo }
        }
    }

    unsafe fn call(&self, composite: pg_sys::Datum) -> pg_sys::Datum {
        // SAFETY: composite is a blessed record datum; to_jsonb never returns NULL for one.
        unsafe {
            let flinfo = std::ptr::from_ref(&self.flinfo).cast_mut();
            pg_sys::FunctionCall1Coll(flinfo, pg_sys::InvalidOid, composite)
        }
    }
}

/// jsonb_text prints a jsonb value.
unsafe fn jsonb_text(datum: pg_sys::Datum) -> String {
    // SAFETY: datum is a jsonb value; jsonb_out returns a palloc'd C string.
    unsafe {
        let text = pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(datum)])
            .unwrap_or(pg_sys::Datum::from(c"null".as_ptr()));
        std::ffi::CStr::from_ptr(text.cast_mut_ptr::<c_char>())
            .to_string_lossy()
            .into_owned()
    }
}

/// copy_to copies a varlena datum into `cxt`.
unsafe fn copy_to(cxt: pg_sys::MemoryContext, datum: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: datum is a plain (untoasted) varlena; the copy has its length.
    unsafe {
        let len = varlena::varsize_any(datum.cast_mut_ptr());
        let copy = pg_sys::MemoryContextAlloc(cxt, len);
        std::ptr::copy_nonoverlapping(datum.cast_mut_ptr::<u8>(), copy.cast::<u8>(), len);
        pg_sys::Datum::from(copy)
    }
}

/// The decoder against PostgreSQL's own `to_jsonb`: it needs the catalog and the types' output
/// functions, so it runs in the `#[pg_test]` tier (see src/pg_tests.rs), on images made the
/// way capture makes them.
#[cfg(feature = "pg_test")]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    /// image is a minimal tuple of `table`'s row type holding `literals` (one per attribute,
    /// dropped ones included, in each type's text input; None is NULL), and the columns as
    /// capture describes them.
    fn image(table: &str, literals: &[Option<&str>]) -> (Vec<Column<'static>>, Vec<u8>) {
        let relid = Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{table}'::regclass::oid"))
            .unwrap()
            .unwrap();
        // SAFETY: the relation is open while its descriptor is read; the tuple is copied.
        unsafe {
            let rel = pg_sys::relation_open(relid, pg_sys::AccessShareLock as i32);
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            assert_eq!(natts, literals.len());
            let attrs = crate::versions::attributes(desc);
            let columns = attrs
                .iter()
                .map(|a| Column {
                    name: std::ffi::CStr::from_ptr(a.attname.data.as_ptr())
                        .to_bytes()
                        .to_vec()
                        .into(),
                    type_oid: a.atttypid.to_u32(),
                    typmod: a.atttypmod,
                    len: a.attlen,
                    byval: a.attbyval,
                    align: a.attalign as u8,
                    dropped: a.attisdropped,
                })
                .collect();
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![true; natts];
            for (i, (a, literal)) in attrs.iter().zip(literals).enumerate() {
                if let Some(literal) = literal {
                    let (mut input, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
                    pg_sys::getTypeInputInfo(a.atttypid, &mut input, &mut ioparam);
                    let literal = CString::new(*literal).unwrap();
                    values[i] = pg_sys::OidInputFunctionCall(
                        input,
                        literal.as_ptr().cast_mut(),
                        ioparam,
                        a.atttypmod,
                    );
                    nulls[i] = false;
                }
            }
            let t = crate::versions::form_minimal_tuple(desc, values.as_ptr(), nulls.as_ptr());
            let bytes = std::slice::from_raw_parts(t.cast::<u8>(), (*t).t_len as usize).to_vec();
            pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
            (columns, bytes)
        }
    }

    fn text(j: Option<Jsonb>) -> Option<String> {
        // SAFETY: a jsonb value of the current transaction.
        j.map(|j| unsafe { jsonb_text(j.datum()) })
    }

    fn to_jsonb(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap()
    }

    #[pg_test]
    fn decoded_images_are_what_to_jsonb_gives() {
        // Every column a common scalar (the writer builds the jsonb itself), one dropped, one
        // excluded, a primary key.
        Spi::run(
            "SET LOCAL TimeZone = 'Europe/Paris';
             CREATE TABLE public.pgt_dec (id int PRIMARY KEY, gone int, name text, amount numeric,
                                          at timestamptz, ok boolean, big bigint, secret varchar(9));
             ALTER TABLE public.pgt_dec DROP COLUMN gone;
             INSERT INTO public.pgt_dec (id, name, amount, at, ok, big, secret) VALUES
                 (1, 'Zoë \"z\"', 12.50, '2026-11-25 10:00:00+00', true, 9007199254740993, 's1'),
                 (2, 'Zoë \"z\"', 'NaN', NULL, false, -1, 's2');",
        )
        .unwrap();
        let (columns, old) = image(
            "public.pgt_dec",
            &[
                Some("1"),
                None,
                Some("Zoë \"z\""),
                Some("12.50"),
                Some("2026-11-25 10:00:00+00"),
                Some("true"),
                Some("9007199254740993"),
                Some("s1"),
            ],
        );
        let (_, new) = image(
            "public.pgt_dec",
            &[
                Some("2"),
                None,
                Some("Zoë \"z\""),
                Some("NaN"),
                None,
                Some("false"),
                Some("-1"),
                Some("s2"),
            ],
        );
        let mut decoder = Decoder::new();
        assert_eq!(decoder.check_types(&columns), Ok(()));
        let key = [Bytes::from(&b"id"[..])];
        let exclude = [Bytes::from(&b"secret"[..])];
        let images = [(Some(old.into()), Some(new.into()))];
        let [row] = &mut decoder.decode_change(&columns, &key, &exclude, &images)[..] else {
            panic!("one row")
        };
        let expected = |id: i32| {
            to_jsonb(&format!(
                "SELECT (to_jsonb(t) - 'secret')::text FROM public.pgt_dec t WHERE id = {id}"
            ))
        };
        assert_eq!(text(row.old_row), expected(1));
        assert_eq!(text(row.new_row), expected(2));
        assert_eq!(text(row.row_key).as_deref(), Some("{\"id\": 1}"));
        // The excluded column changed too, but is not shown.
        let changed = ["amount", "at", "big", "id", "ok"]
            .map(String::from)
            .to_vec();
        assert_eq!(row.changed_columns.take(), Some(changed));
        assert_eq!(row.new_key.take().as_deref(), Some("{\"id\": 2}"));

        // A column that is not (an array): the whole row goes through to_jsonb. No key: the
        // row is its own key. An INSERT: no old image, nothing changed.
        Spi::run(
            "CREATE TABLE public.pgt_dec2 (k text, gone text, tags text[], doc jsonb, n int);
             ALTER TABLE public.pgt_dec2 DROP COLUMN gone;
             INSERT INTO public.pgt_dec2 VALUES ('a', '{x,NULL}', '{\"b\": [1, 2.0]}', NULL);",
        )
        .unwrap();
        let (columns, new) = image(
            "public.pgt_dec2",
            &[
                Some("a"),
                None,
                Some("{x,NULL}"),
                Some("{\"b\": [1, 2.0]}"),
                None,
            ],
        );
        assert_eq!(decoder.check_types(&columns), Ok(()));
        let images = [(None, Some(new.into()))];
        let [row] = &mut decoder.decode_change(&columns, &[], &[], &images)[..] else {
            panic!("one row")
        };
        let expected = to_jsonb("SELECT to_jsonb(t)::text FROM public.pgt_dec2 t");
        assert!(row.old_row.is_none() && row.changed_columns.is_none() && row.new_key.is_none());
        assert_eq!(text(row.new_row), expected);
        assert_eq!(text(row.row_key), expected);

        // A frame whose columns do not describe their types' storage is refused before any
        // image is read.
        let mut wrong = columns.clone();
        wrong[4].len = 8;
        assert_eq!(
            decoder.check_types(&wrong),
            Err(DecodeError(
                "column n is of type 23 (length 4, by value: true, alignment i), but the frame describes it with length 8, by value: true, alignment i".into()
            ))
        );
    }
}
