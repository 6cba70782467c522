//! worker/images.rs: what the trail derives from a change's row images — the excluded columns
//! removed, the row key, the changed columns — computed on the JSON text.
//!
//! Values are kept as raw JSON text (serde_json's RawValue): nothing passes through a float, so
//! numerics keep every digit. A column counts as changed when its JSON text differs.

use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// One change row as the trail stores it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Derived {
    pub old_row: Option<String>,
    pub new_row: Option<String>,
    pub row_key: Option<String>,
    pub changed_columns: Option<Vec<String>>,
}

type Row<'a> = BTreeMap<String, &'a RawValue>;

fn parse(json: &str) -> Row<'_> {
    serde_json::from_str(json).unwrap_or_default()
}

fn strip<'a>(json: &'a str, exclude: &[String]) -> Row<'a> {
    let mut row = parse(json);
    for e in exclude {
        row.remove(e);
    }
    row
}

fn render(row: &Row, keys: impl Iterator<Item = String>) -> String {
    let mut out = String::from("{");
    for (i, k) in keys.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(&k).unwrap_or_default());
        out.push(':');
        out.push_str(row.get(&k).map(|v| v.get()).unwrap_or("null"));
    }
    out.push('}');
    out
}

/// derive prepares one change row; `key_columns` empty means the whole row is the key.
pub fn derive(
    old: Option<&str>,
    new: Option<&str>,
    key_columns: &[String],
    exclude: &[String],
) -> Derived {
    let old = old.map(|o| strip(o, exclude));
    let new = new.map(|n| strip(n, exclude));
    let whole = |r: &Row| render(r, r.keys().cloned());
    let key_source = old.as_ref().or(new.as_ref());
    let row_key = key_source.map(|r| {
        if key_columns.is_empty() {
            whole(r)
        } else {
            render(r, key_columns.iter().cloned())
        }
    });
    let changed_columns = match (&old, &new) {
        (Some(o), Some(n)) => {
            let mut names: Vec<String> = o
                .keys()
                .chain(n.keys())
                .filter(|k| o.get(*k).map(|v| v.get()) != n.get(*k).map(|v| v.get()))
                .cloned()
                .collect();
            names.sort();
            names.dedup();
            Some(names)
        }
        _ => None,
    };
    Derived {
        old_row: old.as_ref().map(whole),
        new_row: new.as_ref().map(whole),
        row_key,
        changed_columns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn update_derives_key_changes_and_drops_excluded_columns() {
        let d = derive(
            Some(r#"{"id":1,"total":12345678901234567890.123456789,"pw":"x","note":null}"#),
            Some(r#"{"id":2,"total":12345678901234567890.123456789,"pw":"y","note":"n"}"#),
            &strings(&["id"]),
            &strings(&["pw"]),
        );
        assert_eq!(d.row_key.as_deref(), Some(r#"{"id":1}"#));
        assert_eq!(d.changed_columns, Some(strings(&["id", "note"])));
        assert_eq!(
            d.old_row.as_deref(),
            Some(r#"{"id":1,"note":null,"total":12345678901234567890.123456789}"#)
        );
    }

    #[test]
    fn insert_and_delete_without_a_key_use_the_whole_row() {
        let ins = derive(None, Some(r#"{"a":"é","b":[1,2]}"#), &[], &[]);
        assert_eq!(ins.row_key, ins.new_row);
        assert_eq!(ins.changed_columns, None);
        let del = derive(Some(r#"{"a":1}"#), None, &strings(&["a"]), &[]);
        assert_eq!(del.row_key.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(del.new_row, None);
    }
}
