//! activity_log: a trigger-free audit trail for PostgreSQL.
//!
//! Data flow: `capture` (executor, utility and error hooks, transaction callbacks) →
//! `ring` (shared-memory rings, one per audited database) → `worker` (launcher and writers)
//! → `activity_log.events`, read through the SQL surface in `api` and `sql/`.
//! `record` is the byte format between capture and the writer; `gucs` holds every setting;
//! `shared` is the shared memory that is not a ring (crash state, launcher, staging table);
//! `process` says what kind of process this is (preloaded, one of our workers); `plpgsql`
//! reads PL/pgSQL bodies with plpgsql's own compiler for the trigger migration.

mod api;
mod capture;
mod errors;
mod gucs;
#[cfg(feature = "pg_test")]
mod pg_tests;
mod plpgsql;
mod process;
mod record;
mod ring;
mod shared;
mod unguarded;
mod versions;
mod worker;

pgrx::pg_module_magic!();

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Loaded later (CREATE EXTENSION without preloading): install nothing; every SQL function
    // then reports how to configure the server.
    // SAFETY: read of a postmaster global.
    if unsafe { !pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    gucs::init();
    shared::init();
    ring::init();
    capture::install();
    worker::launcher::register();
    process::mark_preloaded();
}

// The SQL, one file per topic. bootstrap.sql runs first (the trail's tables) and grants.sql last
// (who may run and read what, then this database's writer starts). pgrx places the others
// between them, each after the files and Rust functions its `requires` names.
pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!(
    "../sql/analytics.sql",
    name = "analytics",
    requires = [
        "bootstrap",
        api::queue,
        api::reset_metrics,
        worker::rollup::add_buckets_sql,
        worker::rollup::bucket_p95_sql
    ]
);
pgrx::extension_sql_file!(
    "../sql/trigger_migration.sql",
    name = "trigger_migration",
    requires = ["bootstrap", api::plpgsql_facts]
);
pgrx::extension_sql_file!(
    "../sql/partitions.sql",
    name = "partitions",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/tracking.sql",
    name = "tracking",
    requires = ["bootstrap", "trigger_migration"]
);
pgrx::extension_sql_file!(
    "../sql/trail_views.sql",
    name = "trail_views",
    requires = ["bootstrap", api::log_event, api::flush]
);
pgrx::extension_sql_file!(
    "../sql/health.sql",
    name = "health",
    requires = ["bootstrap", "analytics", api::queue]
);
pgrx::extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

/// What `#[pg_test]` (src/pg_tests.rs; `cargo pgrx test`, see CONTRIBUTING.md) needs: the
/// settings of its throwaway cluster. The library is preloaded, as on any server that uses it.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'activity_log'",
            "compute_query_id = on",
        ]
    }
}
