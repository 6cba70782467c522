//! worker/jsonb.rs: jsonb's binary layout (PostgreSQL's `utils/jsonb.h`) for a flat object of
//! scalars, the shape of every row image whose columns are common scalars. The bytes are those
//! `convertToJsonb` makes of the same pairs, so the trail's values cannot be told from
//! `to_jsonb`'s, down to the byte (tests/rows.rs compares them as bytea).
//!
//! Pure Rust, no PostgreSQL calls: the writer built these objects through `JsonbValueToJsonb`
//! with a palloc'd numeric per integer column, a large share of its instructions per row
//! (bench/writer_cost.py). It must not change a byte of the layout; the caller checks sizes
//! PostgreSQL would refuse.

/// One value of an object.
#[derive(Clone, Copy, Debug)]
pub enum Value<'v> {
    Null,
    Bool(bool),
    /// An integer, stored as the numeric `int64_to_numeric` makes of it.
    Int(i64),
    /// A finite numeric: its bytes after the varlena header.
    Numeric(&'v [u8]),
    String(&'v [u8]),
}

/// The largest length or offset a JEntry holds (`JENTRY_OFFLENMASK`).
pub const MAX_LEN: usize = 0x0FFF_FFFF;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_OFFSET_STRIDE: usize = 32;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const NUMERIC_SHORT: u16 = 0x8000;
const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
const NBASE: u64 = 10_000;

/// The object's data exceed what a JEntry can address (PostgreSQL's "total size of jsonb
/// object elements exceeds the maximum").
#[derive(Debug, PartialEq)]
pub struct TooBig;

/// object writes the jsonb datum (varlena header included) of the pairs of `keys` and
/// `values` into `out`, which it clears first. The keys must be unique and in jsonb's order:
/// shorter first, then bytewise. Values are taken as they are written, after all the keys.
pub fn object<'k, 'v>(
    out: &mut Vec<u8>,
    keys: impl ExactSizeIterator<Item = &'k [u8]> + Clone,
    values: impl Iterator<Item = Value<'v>>,
) -> Result<(), TooBig> {
    debug_assert!(
        keys.clone()
            .zip(keys.clone().skip(1))
            .all(|(a, b)| (a.len(), a) < (b.len(), b))
    );
    let n = keys.len();
    out.clear();
    out.extend_from_slice(&[0; 4]); // the varlena header, set at the end
    out.extend_from_slice(&(n as u32 | JB_FOBJECT).to_ne_bytes());
    let entries = out.len();
    out.resize(entries + 8 * n, 0);
    // Keys, then values; every JB_OFFSET_STRIDE'th entry holds the end offset of its data
    // (counted from the first key) instead of its length.
    let mut total = 0usize;
    let mut entry = |out: &mut Vec<u8>, i: usize, meta: u32, len: usize| {
        total += len;
        if total > MAX_LEN {
            return Err(TooBig);
        }
        let meta = match i % JB_OFFSET_STRIDE {
            0 => (meta & JENTRY_TYPEMASK) | total as u32 | JENTRY_HAS_OFF,
            _ => meta | len as u32,
        };
        out[entries + 4 * i..entries + 4 * i + 4].copy_from_slice(&meta.to_ne_bytes());
        Ok(())
    };
    for (i, key) in keys.enumerate() {
        out.extend_from_slice(key);
        entry(out, i, 0, key.len())?;
    }
    let mut written = 0;
    for (i, value) in values.enumerate() {
        written += 1;
        let start = out.len();
        let meta = match value {
            Value::Null => JENTRY_ISNULL,
            Value::Bool(false) => JENTRY_ISBOOL_FALSE,
            Value::Bool(true) => JENTRY_ISBOOL_TRUE,
            Value::String(s) => {
                out.extend_from_slice(s);
                0
            }
            Value::Int(v) => {
                pad_to_int(out);
                numeric_of_i64(out, v);
                JENTRY_ISNUMERIC
            }
            Value::Numeric(payload) => {
                pad_to_int(out);
                push_varlena_header(out, payload.len());
                out.extend_from_slice(payload);
                JENTRY_ISNUMERIC
            }
        };
        entry(out, n + i, meta, out.len() - start)?;
    }
    debug_assert_eq!(written, n, "one value per key");
    let len = out.len();
    out[..4].copy_from_slice(&varlena_header(len));
    Ok(())
}

/// pad_to_int pads `out` to a multiple of 4 bytes, as the numeric that follows expects.
fn pad_to_int(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

/// varlena_header is SET_VARSIZE's 4-byte header for a value of `len` bytes (header included).
fn varlena_header(len: usize) -> [u8; 4] {
    let len = len as u32;
    if cfg!(target_endian = "little") {
        (len << 2).to_ne_bytes()
    } else {
        (len & 0x3FFF_FFFF).to_ne_bytes()
    }
}

fn push_varlena_header(out: &mut Vec<u8>, payload: usize) {
    out.extend_from_slice(&varlena_header(4 + payload));
}

/// numeric_of_i64 appends what `int64_to_numeric(v)` returns: base-10000 digits without
/// trailing zero digits, in the short format (every integer fits it), zero as no digits.
fn numeric_of_i64(out: &mut Vec<u8>, v: i64) {
    let mut rest = v.unsigned_abs();
    let mut digits = [0u16; 5]; // least significant first
    let mut n = 0;
    while rest != 0 {
        digits[n] = (rest % NBASE) as u16;
        rest /= NBASE;
        n += 1;
    }
    let weight = n.saturating_sub(1) as u16; // at most 4: no sign bit needed
    let low = digits[..n].iter().take_while(|&&d| d == 0).count();
    let sign = if v < 0 { NUMERIC_SHORT_SIGN_MASK } else { 0 };
    push_varlena_header(out, 2 + 2 * (n - low));
    out.extend_from_slice(&(NUMERIC_SHORT | sign | weight).to_ne_bytes());
    for &d in digits[low..n].iter().rev() {
        out.extend_from_slice(&(d as i16).to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::{TooBig, Value, numeric_of_i64};

    fn object(out: &mut Vec<u8>, pairs: &[(&[u8], Value)]) -> Result<(), TooBig> {
        super::object(out, pairs.iter().map(|p| p.0), pairs.iter().map(|p| p.1))
    }

    fn numeric(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        numeric_of_i64(&mut out, v);
        out
    }

    fn u32s(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn integers_are_numerics_in_the_short_format() {
        // Header (size << 2), then n_header: 0x8000 | sign 0x2000 | weight; digits base 10000.
        assert_eq!(numeric(0), [24, 0, 0, 0, 0x00, 0x80]);
        assert_eq!(numeric(1), [32, 0, 0, 0, 0x00, 0x80, 1, 0]);
        assert_eq!(numeric(-5), [32, 0, 0, 0, 0x00, 0xA0, 5, 0]);
        // 10000 is one digit of weight 1: the trailing zero digit is not stored.
        assert_eq!(numeric(10_000), [32, 0, 0, 0, 0x01, 0x80, 1, 0]);
        assert_eq!(numeric(10_001), [40, 0, 0, 0, 0x01, 0x80, 1, 0, 1, 0]);
        // 922 3372 0368 5477 5808 and ...5807, most significant first.
        let digits = |last: u16| {
            let mut v = vec![64, 0, 0, 0, 0x04, 0xA0];
            for d in [922u16, 3372, 368, 5477, last] {
                v.extend_from_slice(&d.to_le_bytes());
            }
            v
        };
        assert_eq!(numeric(i64::MIN), digits(5808));
        let mut max = digits(5807);
        max[5] = 0x80;
        assert_eq!(numeric(i64::MAX), max);
    }

    #[test]
    fn an_object_lays_out_keys_then_values_with_numerics_int_aligned() {
        let mut out = Vec::new();
        let pairs = [
            (&b"a"[..], Value::Int(7)),
            (&b"bb"[..], Value::String(b"xyz")),
            (&b"cc"[..], Value::Null),
            (&b"dddd"[..], Value::Bool(true)),
        ];
        object(&mut out, &pairs).unwrap();
        // Varlena header, container header, 8 entries: the data start at byte 40.
        let head = u32s(&out[..40]);
        assert_eq!(head[1], 0x2000_0004, "object of 4 pairs");
        // Key entries: the first holds its end offset, the others their lengths.
        assert_eq!(&head[2..6], [0x8000_0001, 2, 2, 4]);
        assert_eq!(&out[40..49], b"abbccdddd");
        // The numeric starts at a multiple of 4, and its entry's length counts the padding.
        assert_eq!(&head[6..10], [0x1000_000B, 3, 0x4000_0000, 0x3000_0000]);
        assert_eq!(&out[49..52], [0, 0, 0]);
        assert_eq!(out[52..60], numeric(7));
        assert_eq!(&out[60..], b"xyz");
        assert_eq!(out[..4], super::varlena_header(63));
    }

    #[test]
    fn every_32nd_entry_holds_an_offset_and_the_total_is_bounded() {
        let keys: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
        let pairs: Vec<(&[u8], Value)> = keys
            .iter()
            .map(|k| (k.as_bytes(), Value::String(b"v")))
            .collect();
        let mut out = Vec::new();
        object(&mut out, &pairs).unwrap();
        let entries = u32s(&out[8..8 + 80 * 4]);
        assert_eq!(entries[0], 0x8000_0000 | 3);
        assert_eq!(entries[32], 0x8000_0000 | (33 * 3));
        // Entry 64 (value 24) is a stride: 40 keys of 3 bytes and 25 values of 1 end there.
        assert_eq!(entries[64], 0x8000_0000 | (120 + 25));
        assert_eq!(entries[63], 1);
        let big = vec![b'x'; super::MAX_LEN];
        let pairs = [(&b"a"[..], Value::String(&big))];
        assert_eq!(object(&mut out, &pairs), Err(TooBig));
    }
}
