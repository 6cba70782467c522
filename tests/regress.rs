//! The pg_regress suite (tests/regress): the SQL surface's output, compared with the expected
//! files. The harness is in tests/common.

mod common;

use common::*;
use std::process::Command;

#[test]
fn pg_regress_suite() {
    let c = Cluster::start("regress", &["activity_log.capture_statements = 'all'"]);
    c.sql("postgres", "CREATE DATABASE al_regress");
    let out_dir = format!("{}/target/regress", env!("CARGO_MANIFEST_DIR"));
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(format!("{}/../lib/pgxs/src/test/regress/pg_regress", *BIN))
        .args([
            "--use-existing",
            &format!("--host={}", c.dir),
            &format!("--port={}", c.port),
        ])
        .args([
            "--user=postgres",
            "--dbname=al_regress",
            "--inputdir=tests/regress",
        ])
        .arg(format!("--outputdir={out_dir}"))
        .arg(format!("--bindir={}", *BIN))
        .args([
            "setup",
            "log_event",
            "flush_and_recent",
            "settings",
            "health",
            "analytics",
            "migration",
            "hostile",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let diffs = std::fs::read_to_string(format!("{out_dir}/regression.diffs")).unwrap_or_default();
    assert!(
        out.status.success(),
        "pg_regress failed:\n{}\n{diffs}",
        String::from_utf8_lossy(&out.stdout)
    );
}
