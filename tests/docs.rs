//! The reference is complete: every object of the extension and every `activity_log.*` setting
//! has an entry in docs/src/reference/*.md — a heading or a table row naming it.
//!
//! The objects come from a live install (a throwaway cluster, the extension created), so a
//! function, view, table, sequence or type added to the SQL without a reference entry fails
//! here. Settings come from `pg_settings` and, for any hidden one (`GUC_NO_SHOW_ALL`, which
//! `pg_settings` leaves out), from the names defined in src/.

mod common;

use common::{Cluster, with_extension};
use std::collections::BTreeSet;
use std::path::Path;

const DB: &str = "postgres";

/// The text of every heading and table row of the reference pages.
fn reference_entries() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/reference");
    let mut entries = String::new();
    let mut pages = 0;
    for page in std::fs::read_dir(&dir).expect("docs/src/reference") {
        let path = page.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        pages += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let line = line.trim_start();
            if line.starts_with('#') || line.starts_with('|') {
                entries.push_str(line);
                entries.push('\n');
            }
        }
    }
    assert!(pages > 0, "no reference pages in {}", dir.display());
    entries
}

/// Whether `name` appears in `text` as a whole name: not as part of a longer identifier
/// (`activity_log.metrics` inside `activity_log.metrics_text` does not count).
fn names(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(|c| ident(c) || c == '.') && !after.is_some_and(ident)
    })
}

/// Setting names defined in the source (`c"activity_log.name"`), hidden ones included.
fn settings_in_source() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (at, _) in text.match_indices("c\"activity_log.") {
                    let rest = &text[at + 2..];
                    let Some(end) = rest.find('"') else { continue };
                    let name = &rest[..end];
                    let bare = &name["activity_log.".len()..];
                    if !bare.is_empty() && bare.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        out.insert(name.to_string());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

#[test]
fn every_object_and_setting_has_a_reference_entry() {
    let c = Cluster::start("docs", &[]);
    with_extension(&c, DB);
    let entries = reference_entries();

    // Objects of the schema: functions (one entry covers every overload), relations but the
    // trail's day partitions (documented together as activity_log.events_YYYYMMDD), and types
    // that are not a relation's row type or an array.
    let schema_objects = c.sql(
        DB,
        "SELECT DISTINCT 'function ' || proname FROM pg_proc
          WHERE pronamespace = 'activity_log'::regnamespace
         UNION
         SELECT CASE relkind WHEN 'v' THEN 'view ' WHEN 'S' THEN 'sequence ' WHEN 'm' THEN 'materialized view '
                             ELSE 'table ' END || relname
           FROM pg_class
          WHERE relnamespace = 'activity_log'::regnamespace AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
            AND relname !~ '^events_[0-9]{8}$'
         UNION
         SELECT 'type ' || typname FROM pg_type
          WHERE typnamespace = 'activity_log'::regnamespace AND typrelid = 0 AND typcategory <> 'A'
         ORDER BY 1",
    );
    // Members of the extension outside its schema (activity_health() in public, the event
    // trigger), by their own names.
    let other_objects = c.sql(
        DB,
        "SELECT pg_describe_object(classid, objid, 0) FROM pg_depend d
           JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'activity_log'
          WHERE d.deptype = 'e' AND d.classid IN ('pg_proc'::regclass, 'pg_event_trigger'::regclass)
            AND NOT EXISTS (SELECT 1 FROM pg_proc p WHERE d.classid = 'pg_proc'::regclass AND p.oid = d.objid
                                                      AND p.pronamespace = 'activity_log'::regnamespace)
         ORDER BY 1",
    );
    let mut settings: BTreeSet<String> = c
        .sql(
            DB,
            "SELECT name FROM pg_settings WHERE name LIKE 'activity_log.%' ORDER BY 1",
        )
        .into_iter()
        .collect();
    settings.extend(settings_in_source());

    assert!(
        schema_objects.len() > 50,
        "too few objects found: {schema_objects:?}"
    );
    assert!(
        settings.contains("activity_log.debug_hold_staged_commit"),
        "the developers' setting was not found: {settings:?}"
    );

    let mut missing = Vec::new();
    for object in &schema_objects {
        let (kind, name) = object.split_once(' ').unwrap();
        if !names(&entries, &format!("activity_log.{name}")) {
            missing.push(format!("{kind} activity_log.{name}"));
        }
    }
    for object in &other_objects {
        // "function activity_health()", "event trigger activity_log_untrack_dropped"
        let name = object
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_end_matches("()")
            .rsplit('.')
            .next()
            .unwrap();
        if !names(&entries, name) {
            missing.push(object.clone());
        }
    }
    for setting in &settings {
        if !names(&entries, setting) {
            missing.push(format!("setting {setting}"));
        }
    }
    assert!(
        missing.is_empty(),
        "no heading or table row in docs/src/reference/*.md names:\n  {}",
        missing.join("\n  ")
    );
}
