//! Upgrades (issue 28, item 9): `ALTER EXTENSION activity_log UPDATE` from the previous release
//! gives the catalog a fresh install of this version gives, and keeps the trail going; a staged
//! frame of a record format version this writer does not read becomes a dead letter, not a
//! loss. The previous release's install script is frozen in `sql/releases/` and installed next
//! to this version's by `./dev install` (docs/src/operations/upgrades.md).

mod common;

use common::{Cluster, hex, reseal, with_extension};
use std::collections::BTreeMap;

/// The previous release: its install script is sql/releases/activity_log--<PREVIOUS>.sql.
const PREVIOUS: &str = "0.1.0";
/// This version (Cargo.toml's, which `default_version` is).
const CURRENT: &str = env!("CARGO_PKG_VERSION");

/// CATALOG describes every object of the extension as `key<TAB>value` rows, one fact each, with
/// newlines and backslashes in values escaped (`\n`, `\\`): the members (pg_depend), each
/// function's definition, source, owner, privileges and comment, each relation's kind, options,
/// columns, constraints, indexes, triggers, policies, partition bounds, privileges and comments,
/// views' definitions, sequences' parameters, the aggregate's functions, the event trigger,
/// the schema, pg_init_privs, and the extension's configuration tables. Keys name the object, so a
/// difference says which object differs and in what.
const CATALOG: &str = r#"
WITH ext AS (SELECT * FROM pg_extension WHERE extname = 'activity_log'),
members AS (
    SELECT d.classid, d.objid, d.objsubid, i.type, i.identity
      FROM pg_depend d, ext, LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) i
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
rels AS (
    SELECT c.*, m.identity FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid),
procs AS (
    SELECT p.*, m.identity FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid),
facts(key, value) AS (
    SELECT 'extension', format('version %s, relocatable %s, schema %s, owner %s', extversion, extrelocatable,
                               extnamespace::regnamespace, extowner::regrole) FROM ext
    UNION ALL
    SELECT 'extension configuration table ' || u.tbl::regclass, coalesce(u.cond, '<null>')
      FROM ext, unnest(ext.extconfig, ext.extcondition) u(tbl, cond)
    UNION ALL
    SELECT format('member %s %s', m.type, m.identity), 'member' FROM members m
    UNION ALL
    -- comments and initial privileges of every member and its columns
    SELECT format('%s %s comment', m.type, m.identity), d.description
      FROM members m JOIN pg_description d ON d.classoid = m.classid AND d.objoid = m.objid AND d.objsubid = 0
    UNION ALL
    SELECT format('initial privileges %s %s', i.type, i.identity), format('%s %s', ip.privtype, ip.initprivs)
      FROM members m JOIN pg_init_privs ip ON ip.classoid = m.classid AND ip.objoid = m.objid,
           LATERAL pg_identify_object(ip.classoid, ip.objoid, ip.objsubid) i
    UNION ALL
    -- functions, procedures and the aggregate
    SELECT format('function %s %s', p.identity, f.k), f.v
      FROM procs p, LATERAL (VALUES
          ('definition', CASE WHEN p.prokind = 'a' THEN NULL
                              ELSE replace(pg_get_functiondef(p.oid), p.prosrc, '<source>') END),
          ('source', p.prosrc),
          ('attributes', format('kind %s, language %s, returns %s, arguments (%s), volatility %s, strict %s, security definer %s, leakproof %s, parallel %s, cost %s, rows %s, binary %s',
                                p.prokind, (SELECT lanname FROM pg_language l WHERE l.oid = p.prolang),
                                pg_get_function_result(p.oid), pg_get_function_arguments(p.oid), p.provolatile,
                                p.proisstrict, p.prosecdef, p.proleakproof, p.proparallel, p.procost, p.prorows, p.probin)),
          ('configuration', coalesce(p.proconfig::text, '<none>')),
          ('owner', p.proowner::regrole::text),
          ('privileges', coalesce(p.proacl::text, '<default>'))) f(k, v)
     WHERE f.v IS NOT NULL
    UNION ALL
    SELECT format('function %s aggregate', p.identity),
           format('transition %s (%s, initially %s), final %s, combine %s, serialize %s, deserialize %s, sort operator %s, kind %s',
                  a.aggtransfn::regprocedure, format_type(a.aggtranstype, NULL), coalesce(a.agginitval, '<null>'),
                  a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn, a.aggsortop, a.aggkind)
      FROM procs p JOIN pg_aggregate a ON a.aggfnoid = p.oid
    UNION ALL
    -- relations: tables, partitions, views, sequences, indexes
    SELECT format('relation %s %s', r.identity, f.k), f.v
      FROM rels r, LATERAL (VALUES
          ('kind', format('kind %s, persistence %s, row security %s (forced %s), options %s, partitioned by %s, partition of %s %s',
                          r.relkind, r.relpersistence, r.relrowsecurity, r.relforcerowsecurity, r.reloptions,
                          CASE WHEN r.relkind = 'p' THEN pg_get_partkeydef(r.oid) END,
                          (SELECT i.inhparent::regclass FROM pg_inherits i WHERE i.inhrelid = r.oid),
                          pg_get_expr(r.relpartbound, r.oid))),
          ('owner', r.relowner::regrole::text),
          ('privileges', coalesce(r.relacl::text, '<default>')),
          ('view', CASE WHEN r.relkind IN ('v', 'm') THEN pg_get_viewdef(r.oid, true) END),
          ('sequence', (SELECT format('type %s, start %s, increment %s, min %s, max %s, cache %s, cycle %s, owned by %s',
                                      format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                                      s.seqcache, s.seqcycle,
                                      (SELECT d.refobjid::regclass || '.' || a.attname FROM pg_depend d
                                         JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                                        WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid
                                          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
                          FROM pg_sequence s WHERE s.seqrelid = r.oid))) f(k, v)
     WHERE f.v IS NOT NULL
    UNION ALL
    SELECT format('relation %s column %s', r.identity, a.attname),
           format('position %s, %s%s%s%s%s%s, privileges %s',
                  row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum), format_type(a.atttypid, a.atttypmod),
                  CASE WHEN a.attnotnull THEN ' not null' END,
                  ' default ' || pg_get_expr(ad.adbin, ad.adrelid),
                  CASE a.attidentity WHEN 'a' THEN ' generated always as identity' WHEN 'd' THEN ' generated by default as identity' END,
                  CASE a.attgenerated WHEN 's' THEN ' generated (stored)' END,
                  CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN ' collate ' || a.attcollation::regcollation END,
                  coalesce(a.attacl::text, '<default>'))
      FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
      JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT format('relation %s column %s comment', r.identity, a.attname), d.description
      FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0
      JOIN pg_description d ON d.classoid = 'pg_class'::regclass AND d.objoid = r.oid AND d.objsubid = a.attnum
    UNION ALL
    SELECT format('relation %s constraint %s', r.identity, c.conname),
           format('%s%s', pg_get_constraintdef(c.oid), CASE WHEN c.condeferrable THEN ' deferrable' END)
      FROM rels r JOIN pg_constraint c ON c.conrelid = r.oid
    UNION ALL
    SELECT format('relation %s index %s', r.identity, i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
      FROM rels r JOIN pg_index i ON i.indrelid = r.oid
    UNION ALL
    SELECT format('relation %s trigger %s', r.identity, t.tgname), format('%s (enabled %s)', pg_get_triggerdef(t.oid), t.tgenabled)
      FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT format('relation %s policy %s', r.identity, p.polname),
           format('%s for %s to %s using (%s) with check (%s)', CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END,
                  p.polcmd, (SELECT string_agg(CASE WHEN x = 0 THEN 'public' ELSE x::regrole::text END, ', ' ORDER BY x)
                               FROM unnest(p.polroles) x),
                  pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
      FROM rels r JOIN pg_policy p ON p.polrelid = r.oid
    UNION ALL
    SELECT format('relation %s rule %s', r.identity, w.rulename), pg_get_ruledef(w.oid)
      FROM rels r JOIN pg_rewrite w ON w.ev_class = r.oid AND w.rulename <> '_RETURN'
    UNION ALL
    -- types, the event trigger, the schema
    SELECT format('type %s', m.identity),
           format('type %s, owner %s, privileges %s, labels %s, base %s, not null %s, default %s', t.typtype, t.typowner::regrole,
                  coalesce(t.typacl::text, '<default>'),
                  (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
                  format_type(NULLIF(t.typbasetype, 0), NULLIF(t.typtypmod, -1)), t.typnotnull, t.typdefault)
      FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
    UNION ALL
    SELECT format('event trigger %s', e.evtname),
           format('on %s, tags %s, enabled %s, runs %s, owner %s', e.evtevent, e.evttags, e.evtenabled,
                  e.evtfoid::regprocedure, e.evtowner::regrole)
      FROM members m JOIN pg_event_trigger e ON m.classid = 'pg_event_trigger'::regclass AND e.oid = m.objid
    UNION ALL
    SELECT format('schema %s', n.nspname), format('owner %s, privileges %s', n.nspowner::regrole, coalesce(n.nspacl::text, '<default>'))
      FROM pg_namespace n WHERE n.nspname = 'activity_log')
SELECT key || E'\t' || replace(replace(coalesce(value, '<null>'), E'\\', E'\\\\'), E'\n', E'\\n') FROM facts ORDER BY 1
"#;

/// catalog is [`CATALOG`] in `db` as a map; two facts under one key would hide one of them.
fn catalog(c: &Cluster, db: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for row in c.sql(db, CATALOG) {
        let (key, value) = row.split_once('\t').unwrap_or((&row, ""));
        let value = value.replace("\\n", "\n").replace("\\\\", "\\");
        if let Some(old) = map.insert(key.to_string(), value.clone()) {
            panic!("two facts under one key, {key}: {old:?} and {value:?}");
        }
    }
    map
}

/// differences lists, one line each, what differs between an updated install and a fresh one:
/// what only one has, and for a fact both have, the first line where they differ.
fn differences(
    updated: &BTreeMap<String, String>,
    fresh: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in updated {
        match fresh.get(key) {
            None => out.push(format!(
                "only after the update: {key}: {}",
                first_line(value)
            )),
            Some(other) if other != value => {
                let (a, b): (Vec<&str>, Vec<&str>) =
                    (value.lines().collect(), other.lines().collect());
                let at = (0..a.len().max(b.len()))
                    .find(|&i| a.get(i) != b.get(i))
                    .unwrap_or(0);
                out.push(format!(
                    "differs: {key}, line {} of {} after the update / {} in a fresh install:\n      updated: {}\n      fresh:   {}",
                    at + 1,
                    a.len(),
                    b.len(),
                    a.get(at).unwrap_or(&"<end>"),
                    b.get(at).unwrap_or(&"<end>")
                ))
            }
            Some(_) => {}
        }
    }
    for (key, value) in fresh {
        if !updated.contains_key(key) {
            out.push(format!(
                "only in a fresh install: {key}: {}",
                first_line(value)
            ));
        }
    }
    out
}

fn first_line(value: &str) -> String {
    let line = value.lines().next().unwrap_or("");
    if value.lines().count() > 1 {
        format!("{line} …")
    } else {
        line.to_string()
    }
}

/// The trail and the extension's state, row by row, as jsonb text: what an update must keep.
fn data(c: &Cluster, db: &str) -> BTreeMap<&'static str, Vec<String>> {
    let tables = [
        ("events", "id"),
        ("tracked_tables", "relid::text"),
        ("migration", "relid::text"),
        ("migration_backup", "1"),
        ("dead_letters", "id"),
        ("chain_anchors", "1"),
        ("redactions", "1"),
        ("durable_queue", "1"),
        ("retention_log", "1"),
    ];
    tables
        .into_iter()
        .map(|(t, order)| {
            (
                t,
                c.sql(
                    db,
                    &format!(
                        "SELECT to_jsonb(x)::text FROM activity_log.{t} x ORDER BY {order}, 1"
                    ),
                ),
            )
        })
        .collect()
}

/// Issue 28, item 9: a database made by the previous release (its install script, frozen in
/// sql/releases/, run against this library as between replacing the package and updating),
/// with tracked tables (async and sync), changes, events and a legacy audit trigger in phase 1
/// of the migration, is restarted and updated; then its catalog equals a fresh install's in
/// another database — the same objects with the same definitions, sources, settings,
/// privileges, comments and membership — every row of the trail and of the extension's tables
/// is still there as it was, verify() holds, and the trail goes on: new changes are captured
/// (history() shows the old and the new) and the migration carries on.
#[test]
fn an_update_from_the_previous_release_equals_a_fresh_install_and_keeps_the_trail() {
    let c = Cluster::start("upgrade", &["activity_log.capture_statements = 'none'"]);
    let db = "updated";
    c.sql("postgres", &format!("CREATE DATABASE {db}"));
    c.sql(
        db,
        &format!("CREATE EXTENSION activity_log VERSION '{PREVIOUS}'"),
    );
    c.wait_for_writer(db, None);
    assert_eq!(
        c.one(
            db,
            "SELECT extversion FROM pg_extension WHERE extname = 'activity_log'"
        ),
        PREVIOUS
    );
    c.sql(
        db,
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE s (id int PRIMARY KEY, v text);
         SELECT activity_log.track('a');
         SELECT activity_log.track('s', durability => 'sync');
         INSERT INTO a VALUES (1, 'one'), (2, 'two');
         UPDATE a SET v = 'uno' WHERE id = 1;
         DELETE FROM a WHERE id = 2;
         INSERT INTO s VALUES (1, 'sync one');
         UPDATE s SET v = 'sync uno' WHERE id = 1;
         SELECT activity_log.log_event('deployed', '{\"version\": \"0.1.0\"}');
         -- a legacy audit trigger, taken over in phase 1 (both capture)
         CREATE TABLE legacy (id int PRIMARY KEY, v text);
         CREATE TABLE legacy_audit (id bigserial PRIMARY KEY, op text NOT NULL, at timestamptz NOT NULL DEFAULT now(),
                                    old_row jsonb, new_row jsonb);
         CREATE FUNCTION legacy_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO legacy_audit (op, old_row, new_row)
             VALUES (TG_OP, CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
                     CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
             RETURN NULL;
         END $$;
         CREATE TRIGGER legacy_audit AFTER INSERT OR UPDATE OR DELETE ON legacy
             FOR EACH ROW EXECUTE FUNCTION legacy_audit_fn();
         INSERT INTO legacy VALUES (1, 'before');",
    );
    assert_eq!(
        c.sql(
            db,
            "SELECT relation, trigger_name, verdict FROM activity_log.migration_plan()"
        ),
        ["legacy|legacy_audit|audit"]
    );
    assert!(
        !c.sql(
            db,
            "SELECT activity_log.migrate_triggers(phase => 1, tables => '{legacy}')"
        )
        .is_empty()
    );
    c.sql(db, "UPDATE legacy SET v = 'in phase 1' WHERE id = 1");
    c.flush(db);
    let before = data(&c, db);
    assert!(before["events"].len() >= 8, "{:?}", before["events"]);

    // The procedure: install the new package, restart (the library is preloaded), update.
    assert!(
        c.pg_ctl(&["-m", "fast", "restart"]),
        "restart failed:\n{}",
        c.log()
    );
    c.wait_for_writer(db, None);
    c.sql(db, "ALTER EXTENSION activity_log UPDATE");
    assert_eq!(
        c.one(
            db,
            "SELECT extversion FROM pg_extension WHERE extname = 'activity_log'"
        ),
        CURRENT
    );

    // (a) The catalog of the updated database is a fresh install's.
    with_extension(&c, "fresh");
    let (updated, fresh) = (catalog(&c, db), catalog(&c, "fresh"));
    assert!(
        fresh.len() > 400,
        "the catalog query found only {} facts",
        fresh.len()
    );
    let diff = differences(&updated, &fresh);
    assert!(
        diff.is_empty(),
        "after ALTER EXTENSION activity_log UPDATE from {PREVIOUS}, {} of the extension's catalog facts differ from a fresh install of {CURRENT}'s; complete sql/activity_log--{PREVIOUS}--{CURRENT}.sql:\n  {}",
        diff.len(),
        diff.join("\n  ")
    );

    // (b) What was there is still there, and the trail goes on.
    c.flush(db);
    let after = data(&c, db);
    for (table, rows) in &before {
        if *table == "events" {
            // The trail only grows: its rows before the update, unchanged, then new ones.
            assert_eq!(
                &after[table][..rows.len()],
                &rows[..],
                "activity_log.events"
            );
        } else if *table != "durable_queue" {
            assert_eq!(&after[table], rows, "activity_log.{table}");
        }
    }
    assert_eq!(after["durable_queue"], Vec::<String>::new());
    c.sql(
        db,
        "UPDATE a SET v = 'one again' WHERE id = 1;
         INSERT INTO a VALUES (3, 'three');
         UPDATE s SET v = 'sync again' WHERE id = 1;
         UPDATE legacy SET v = 'after the update' WHERE id = 1;",
    );
    c.flush(db);
    let history = |table: &str| {
        c.sql(
            db,
            &format!(
                "SELECT op, old_row->>'v', new_row->>'v' FROM activity_log.history('{table}', '{{\"id\": 1}}') ORDER BY id"
            ),
        )
    };
    assert_eq!(
        history("a"),
        ["INSERT||one", "UPDATE|one|uno", "UPDATE|uno|one again"]
    );
    assert_eq!(
        history("s"),
        [
            "INSERT||sync one",
            "UPDATE|sync one|sync uno",
            "UPDATE|sync uno|sync again"
        ]
    );
    assert_eq!(
        history("legacy"),
        [
            "UPDATE|before|in phase 1",
            "UPDATE|in phase 1|after the update"
        ]
    );
    assert_eq!(
        c.sql(db, "SELECT count(*) FROM legacy_audit"),
        ["3"],
        "the legacy trigger still writes in phase 1"
    );
    assert_eq!(
        c.sql(
            db,
            "SELECT relation, phase FROM activity_log.migration_status()"
        ),
        ["legacy|1"]
    );
    assert_eq!(
        c.one(db, "SELECT intact FROM activity_log.verify()"),
        "t",
        "verify() after the update"
    );
    assert!(
        !c.log().contains("could not be read"),
        "a frame was not read:\n{}",
        c.log()
    );
}

/// Issue 28, item 9, the frame version policy: a writer reads every record format version
/// ever written (record::OLDEST_READ..=record::VERSION, today 1 alone); a staged frame of
/// another version — a newer release's, left in durable_queue by a downgrade, or one no release
/// wrote — is not guessed at: it becomes a dead letter holding its bytes and its row, with a
/// critical gap record at its place in the trail naming it, and the transactions around it
/// are stored, as is what comes after.
#[test]
fn staged_frames_of_a_version_not_read_become_dead_letters_and_the_trail_goes_on() {
    let c = Cluster::start(
        "upgrade-frames",
        &["activity_log.capture_statements = 'none'"],
    );
    let db = "frames";
    with_extension(&c, db);
    c.sql(
        db,
        "CREATE TABLE s (id int PRIMARY KEY, v text);
         SELECT activity_log.track('s', durability => 'sync');",
    );
    c.flush(db);
    let before = c.one(db, "SELECT max(id) FROM activity_log.events");
    let signal = |pid: i32, sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        )
    };
    let pid = c.wait_for_writer(db, None);
    signal(pid, "-STOP");
    let stage = |id: i32, v: &str| {
        c.one(
            db,
            &format!(
                "BEGIN; INSERT INTO s VALUES ({id}, '{v}'); SELECT pg_current_xact_id(); COMMIT;"
            ),
        )
    };
    stage(1, "one");
    let x2 = stage(2, "two");
    stage(3, "three");
    let x4 = stage(4, "four");
    stage(5, "five");
    // The version follows the magic number "ALR1"; the seal is made again, as the release
    // that wrote the frame would have made it.
    let set_version = |version: u32| {
        move |frame: &mut Vec<u8>| {
            assert_eq!(frame[..8], [0x31, 0x52, 0x4c, 0x41, 1, 0, 0, 0]);
            frame[4..8].copy_from_slice(&version.to_le_bytes());
        }
    };
    let newer = reseal(&c, db, &x2, set_version(2));
    let never = reseal(&c, db, &x4, set_version(0));
    signal(pid, "-CONT");
    c.flush(db);
    assert_eq!(
        c.one(db, "SELECT count(*) FROM activity_log.durable_queue"),
        "0"
    );
    let what = |xid: &str| {
        format!("the records of transaction {xid} staged in activity_log.durable_queue")
    };
    let error2 = "its record format is version 2 (written by a newer version of activity_log); this version of activity_log reads version 1";
    let error0 = "its record format is version 0 (a version no release of activity_log wrote); this version of activity_log reads version 1";
    assert_eq!(
        c.sql(
            db,
            "SELECT id, what, error, record->>'xid', record->>'seq', record->>'records', encode(frame, 'hex')
               FROM activity_log.dead_letters ORDER BY id"
        ),
        [
            format!("1|{}|{error2}|{x2}||1|{newer}", what(&x2)),
            format!("2|{}|{error0}|{x4}||1|{never}", what(&x4)),
        ]
    );
    // Each a critical gap at its place in commit order, naming its dead letter.
    assert_eq!(
        c.sql(
            db,
            &format!(
                "SELECT CASE WHEN status = 'gap'
                             THEN format('%s|%s|%s|%s|%s|%s', kind, severity, command, details->>'reason', details->>'xid', details->>'dead_letter')
                             ELSE new_row->>'v' END
                   FROM activity_log.events WHERE id > {before} ORDER BY id"
            )
        ),
        [
            "one".to_string(),
            format!(
                "system|critical|GAP|{} could not be read, and are not in the trail: {error2}; the frame is kept as activity_log.dead_letters id 1|{x2}|1",
                what(&x2)
            ),
            "three".to_string(),
            format!(
                "system|critical|GAP|{} could not be read, and are not in the trail: {error0}; the frame is kept as activity_log.dead_letters id 2|{x4}|2",
                what(&x4)
            ),
            "five".to_string(),
        ]
    );
    // The trail goes on; the writer did not fail.
    c.sql(db, "INSERT INTO s VALUES (6, 'six')");
    c.flush(db);
    assert_eq!(
        c.sql(
            db,
            &format!("SELECT new_row->>'v' FROM activity_log.events WHERE id > {before} AND kind = 'change' ORDER BY id")
        ),
        ["one", "three", "five", "six"]
    );
    assert_eq!(
        c.one(
            db,
            "SELECT writer_failures FROM activity_log.queue WHERE database = current_database()"
        ),
        "0"
    );
    // The frames' bytes are kept as they were staged: the edited version is what is in them.
    assert!(newer.starts_with(&format!("31524c41{}", hex(&2u32.to_le_bytes()))));
}
