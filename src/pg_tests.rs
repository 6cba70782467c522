//! pg_tests.rs: the `#[pg_test]` tier — what needs a backend but not a cluster of its own:
//! the SQL functions' argument checks (SQLSTATE, message and hint, as a caller sees them), the
//! settings' checks, the trail's index classification.
//!
//! Runs in pgrx's throwaway cluster (`cargo pgrx test`; `./dev test` runs it), where the library
//! is preloaded and `CREATE EXTENSION activity_log` ran in the database `pgrx_tests`. Each test
//! is one transaction that is rolled back: nothing here may need the writer to store a record
//! (that is tests/*.rs's job). The decoder's test lives next to it (worker/decode.rs).

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// error_of runs `sql` in a subtransaction (a PL/pgSQL exception block) and returns the
    /// error it raised — SQLSTATE, message, detail and hint — or None when it succeeded. Only
    /// the detail's first line: an error that unwound through Rust frames carries a backtrace
    /// after it when RUST_BACKTRACE is set, as it is here.
    fn error_of(sql: &str) -> Option<[String; 4]> {
        // Made once per test, by the role the test starts as (a later SET ROLE may call it).
        let exists =
            Spi::get_one::<bool>("SELECT to_regprocedure('pg_temp.error_of(text)') IS NOT NULL");
        if exists != Ok(Some(true)) {
            make_error_of();
        }
        let got =
            Spi::get_one_with_args::<Vec<String>>("SELECT pg_temp.error_of($1)", &[sql.into()])
                .unwrap();
        got.map(|mut v| {
            v[2] = v[2].lines().next().unwrap_or_default().to_string();
            v.try_into().expect("four fields")
        })
    }

    fn make_error_of() {
        Spi::run(
            "CREATE OR REPLACE FUNCTION pg_temp.error_of(q text) RETURNS text[] LANGUAGE plpgsql AS $$
             DECLARE state text; message text; detail text; hint text;
             BEGIN
                 EXECUTE q;
                 RETURN NULL;
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                                         detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
                 RETURN ARRAY[state, message, detail, hint];
             END $$",
        )
        .unwrap();
    }

    /// assert_error checks the SQLSTATE, message and hint of the error `sql` raises.
    #[track_caller]
    fn assert_error(sql: &str, state: &str, message: &str, hint: &str) {
        let [got_state, got_message, _, got_hint] =
            error_of(sql).unwrap_or_else(|| panic!("no error from {sql}"));
        assert_eq!(
            (got_state.as_str(), got_message.as_str(), got_hint.as_str()),
            (state, message, hint),
            "{sql}"
        );
    }

    #[track_caller]
    fn assert_ok(sql: &str) {
        assert_eq!(error_of(sql), None, "{sql}");
    }

    #[pg_test]
    fn track_refuses_what_it_cannot_audit_and_untrack_what_is_not_tracked() {
        Spi::run(
            "CREATE TABLE public.pgt_orders (id int PRIMARY KEY, note text);
             CREATE TEMP TABLE pgt_scratch (id int);
             CREATE VIEW public.pgt_view AS SELECT 1 AS one;",
        )
        .unwrap();
        assert_error(
            "SELECT activity_log.track('pgt_scratch')",
            "42809",
            "cannot track temporary table \"pgt_scratch\"",
            "Temporary tables are private to their session and not audited.",
        );
        assert_error(
            "SELECT activity_log.track('public.pgt_view')",
            "42809",
            "\"public.pgt_view\" is not a table",
            "Only ordinary and partitioned tables can be tracked; track the tables behind a view.",
        );
        assert_error(
            "SELECT activity_log.track('public.pgt_orders', '{id}')",
            "22023",
            "cannot exclude primary-key column id of \"public.pgt_orders\"",
            "Changes name their row by its primary key (row_key, history()); exclude other columns.",
        );
        assert_error(
            "SELECT activity_log.track('public.pgt_orders', durability => 'later')",
            "22023",
            "durability must be 'async' or 'sync', not 'later'",
            "'sync' writes the records inside the transaction, so that they survive any crash the transaction survives.",
        );
        assert_error(
            "SELECT activity_log.untrack('public.pgt_orders')",
            "42704",
            "relation \"public.pgt_orders\" is not tracked",
            "See SELECT * FROM activity_log.tracked_tables.",
        );
        // What is refused is not half done; what is allowed is, and can be undone.
        assert_ok("SELECT activity_log.track('public.pgt_orders', '{note}', 'sync')");
        let tracked = Spi::get_one::<String>(
            "SELECT exclude_columns::text || ' ' || durability FROM activity_log.tracked_tables
              WHERE relid = 'public.pgt_orders'::regclass",
        );
        assert_eq!(tracked, Ok(Some("{note} sync".into())));
        assert_ok("SELECT activity_log.untrack('public.pgt_orders')");
        let left = Spi::get_one::<i64>("SELECT count(*) FROM activity_log.tracked_tables");
        assert_eq!(left, Ok(Some(0)));
    }

    #[pg_test]
    fn log_event_validates_its_arguments_and_limits_other_roles_details() {
        assert_error(
            "SELECT activity_log.log_event('  ')",
            "22023",
            "action must not be empty",
            "",
        );
        assert_error(
            "SELECT activity_log.log_event('paid', '[1]')",
            "22023",
            "details must be a JSON object",
            "Wrap other values, for example jsonb_build_object('value', ...).",
        );
        assert_error(
            "SELECT activity_log.log_event('paid', category => 'gossip')",
            "22023",
            "invalid category \"gossip\"",
            &format!("Valid values are: {}.", crate::api::CATEGORIES.join(", ")),
        );
        // 2 009 bytes of details: {"x": "aaa…"}.
        let big =
            "SELECT activity_log.log_event('upload', jsonb_build_object('x', repeat('a', 2000)))";
        Spi::run(
            "CREATE ROLE pgt_app;
             SET LOCAL activity_log.max_event_size = 1024;
             SET LOCAL ROLE pgt_app;",
        )
        .unwrap();
        assert_error(
            big,
            "54000",
            "details of 2009 bytes exceed activity_log.max_event_size (1024 bytes)",
            "Store large documents in a table and log their key; a superuser may raise the limit.",
        );
        assert_ok(
            "SELECT activity_log.log_event('upload', jsonb_build_object('x', repeat('a', 1000)))",
        );
        // The role cannot raise its own limit.
        let [state, message, ..] =
            error_of("SET activity_log.max_event_size = '1MB'").expect("an error");
        assert_eq!(
            (state.as_str(), message.as_str()),
            (
                "42501",
                "permission denied to set parameter \"activity_log.max_event_size\""
            )
        );
        // A superuser is not limited.
        Spi::run("RESET ROLE").unwrap();
        assert_ok(big);
    }

    #[pg_test]
    fn redact_validates_its_arguments_before_touching_the_trail() {
        assert_error(
            "SELECT activity_log.redact(1, '{query}', '  ')",
            "22023",
            "reason must not be empty",
            "Say why the values are removed; the trail keeps the reason.",
        );
        assert_error(
            "SELECT activity_log.redact(1, '{}', 'password typed into a query')",
            "22023",
            "columns must list the columns to empty, for example '{query}'",
            "",
        );
        assert_error(
            "SELECT activity_log.redact(1, '{ts}', 'password typed into a query')",
            "22023",
            "cannot redact \"ts\"",
            "Redact one of query, details, old_row, new_row, row_key, context, jwt_claims, actor, application_name.",
        );
        assert_error(
            "SELECT activity_log.redact(1, '{query,query}', 'password typed into a query')",
            "22023",
            "columns must not name a column twice",
            "",
        );
        assert_error(
            "SELECT activity_log.redact(NULL, '{query}', 'password typed into a query')",
            "22004",
            "id, columns and reason must not be null",
            "",
        );
        assert_error(
            "SELECT activity_log.redact(-1, '{query}', 'password typed into a query')",
            "P0002",
            "trail row -1 does not exist",
            "",
        );
    }

    #[pg_test]
    fn history_validates_its_arguments_and_is_empty_for_an_untracked_table() {
        Spi::run("CREATE TABLE public.pgt_accounts (id int PRIMARY KEY)").unwrap();
        assert_error(
            "SELECT * FROM activity_log.history('public.pgt_accounts', NULL)",
            "22004",
            "relation and key must not be null",
            "",
        );
        assert_error(
            "SELECT * FROM activity_log.history('public.pgt_accounts', '42')",
            "22023",
            "key must be a JSON object of key columns, for example {\"id\": 42}",
            "",
        );
        // A table that was never tracked has no story (no error: it may have been tracked
        // once, and untracking keeps the trail).
        let rows = Spi::get_one::<i64>(
            "SELECT count(*) FROM activity_log.history('public.pgt_accounts', '{\"id\": 1}')",
        );
        assert_eq!(rows, Ok(Some(0)));
    }

    #[pg_test]
    fn trail_indexes_are_classified_by_what_they_are_not_by_name() {
        let kinds = |table: &str| {
            Spi::get_one::<Vec<Option<String>>>(&format!(
                "SELECT array_agg(activity_log._trail_index_kind(indexrelid)
                                  ORDER BY activity_log._trail_index_kind(indexrelid) NULLS LAST)
                   FROM pg_index WHERE indrelid = '{table}'::regclass"
            ))
            .unwrap()
            .unwrap()
        };
        let all: Vec<Option<String>> = [
            "events_gap_idx",
            "events_new_key_idx",
            "events_pkey",
            "events_row_key_idx",
            "events_table_idx",
            "events_ts_brin",
        ]
        .map(|k| Some(k.to_string()))
        .to_vec();
        assert_eq!(kinds("activity_log.events_default"), all);
        // Renamed indexes keep their kind; an index made by hand has none.
        Spi::run(
            "ALTER INDEX activity_log.events_default_gap_idx RENAME TO pgt_renamed;
             CREATE INDEX pgt_by_hand ON activity_log.events_default (actor);",
        )
        .unwrap();
        let mut with_hand_made = all.clone();
        with_hand_made.push(None);
        assert_eq!(kinds("activity_log.events_default"), with_hand_made);
        // A partition indexed the way day partitions are, where a name it would take is taken.
        Spi::run(
            "CREATE TABLE activity_log.pgt_part (LIKE activity_log.events INCLUDING DEFAULTS);
             CREATE TABLE activity_log.pgt_holder (id int);
             CREATE INDEX pgt_part_ts_brin ON activity_log.pgt_holder (id);
             SELECT activity_log._index_trail_partition('activity_log.pgt_part');",
        )
        .unwrap();
        assert_eq!(kinds("activity_log.pgt_part"), all);
    }

    #[pg_test]
    fn activity_log_context_accepts_only_a_json_object() {
        for value in ["[1]", "\"r1\"", "abc", "{\"a\":"] {
            let set = format!("SET activity_log.context = '{value}'");
            let [state, message, detail, _] = error_of(&set).unwrap_or_else(|| panic!("{set}"));
            assert_eq!(
                (state.as_str(), message.as_str(), detail.as_str()),
                (
                    "22023",
                    format!("invalid value for parameter \"activity_log.context\": \"{value}\"")
                        .as_str(),
                    "activity_log.context must be a JSON object, for example '{\"request_id\": \"abc\"}'."
                ),
                "{set}"
            );
        }
        for value in ["{\"request_id\": \"abc\"}", "{}", ""] {
            assert_ok(&format!("SET activity_log.context = '{value}'"));
        }
        // A misspelt setting of ours is an error, not a silently ignored placeholder.
        let [state, message, detail, _] =
            error_of("SET activity_log.contxt = '{}'").expect("an error");
        assert_eq!(
            (state.as_str(), message.as_str(), detail.as_str()),
            (
                "42602",
                "invalid configuration parameter name \"activity_log.contxt\"",
                "\"activity_log\" is a reserved prefix."
            )
        );
    }
}
