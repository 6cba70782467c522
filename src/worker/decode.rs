//! worker/decode.rs: turns captured row images (raw minimal tuples) into JSON text.
//!
//! Runs in the writer, inside its batch transaction (type output functions need the catalog).
//! The row type is rebuilt from the description captured with the images, not read from the
//! table: the table may have been altered or dropped since, and the images keep the shape they
//! were stored in. Allocations go into a context reset per row.

use pgrx::pg_sys;
use std::ffi::{CStr, CString, c_char};

use crate::record::{Column, RowImages};

/// The (old, new) images of one row as JSON objects by column name.
pub type JsonImages = (Option<String>, Option<String>);

/// images_to_json decodes every image of one statement's change.
pub fn images_to_json(columns: &[Column], images: &[RowImages]) -> Vec<JsonImages> {
    // SAFETY: builds a tuple descriptor in the current (transaction) memory context and
    // decodes tuples that capture copied from PostgreSQL's own minimal tuples.
    unsafe {
        let desc = row_type(columns);
        let mut per_row = pgrx::PgMemoryContexts::new("activity_log decode");
        let mut one = |bytes: &Vec<u8>| {
            let json = per_row.switch_to(|_| tuple_to_json(bytes, desc));
            per_row.reset();
            json
        };
        images
            .iter()
            .map(|(old, new)| (old.as_ref().map(&mut one), new.as_ref().map(&mut one)))
            .collect()
    }
}

unsafe fn row_type(columns: &[Column]) -> pg_sys::TupleDesc {
    // SAFETY: a fresh descriptor with one entry per captured attribute, in attribute order.
    unsafe {
        let desc = pg_sys::CreateTemplateTupleDesc(columns.len() as i32);
        let attrs = (*desc).attrs.as_mut_slice(columns.len());
        for (i, c) in columns.iter().enumerate() {
            let name = CString::new(c.name.clone()).unwrap_or_default();
            let attno = (i + 1) as i16;
            if c.dropped {
                // A dropped column keeps its storage shape so that the columns after it are
                // found; its type may no longer exist.
                pg_sys::TupleDescInitEntry(desc, attno, name.as_ptr(), pg_sys::INT4OID, -1, 0);
                let a = &mut attrs[i];
                a.atttypid = pg_sys::InvalidOid;
                a.attlen = c.len;
                a.attbyval = c.byval;
                a.attalign = c.align as c_char;
                a.attisdropped = true;
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

unsafe fn tuple_to_json(bytes: &[u8], desc: pg_sys::TupleDesc) -> String {
    // SAFETY: bytes are a whole minimal tuple; the palloc'd copy gives it MAXALIGN alignment.
    unsafe {
        let copy = pg_sys::palloc(bytes.len()).cast::<u8>();
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), copy, bytes.len());
        let heap = pg_sys::heap_tuple_from_minimal_tuple(copy.cast());
        let datum = pg_sys::heap_copy_tuple_as_datum(heap, desc);
        let Some(text) = pgrx::direct_function_call_as_datum(pg_sys::row_to_json, &[Some(datum)])
        else {
            return "null".into();
        };
        let c = pg_sys::text_to_cstring(text.cast_mut_ptr());
        CStr::from_ptr(c).to_string_lossy().into_owned()
    }
}
