//! plpgsql: reads a PL/pgSQL function the way PostgreSQL does, for the trigger migration's
//! analyzer (issue 27; docs/design/issue-27-plpgsql-parser.md). plpgsql's own compiler turns
//! the body into statements, and each SQL statement in it goes through the core raw parser;
//! what they say is copied out as facts (jsonb) before anything is released.
//!
//! Must not link to plpgsql's symbols (activity_log is preloaded, plpgsql.so may not be loaded
//! yet, and 16+ hide most of them: plpgsql_compile is looked up when called), keep a pointer
//! into the compiled tree after the walk, or run any of the function's code (compiling
//! resolves names and types, it executes nothing). Everything happens in a subtransaction that
//! is always rolled back, so a body that does not compile is an error value, not an ERROR.

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::{Map, Value, json};
use std::ffi::CStr;

use crate::errors::raise;
use crate::worker::decode::catalog_row;
use crate::worker::subxact::undone_in_subtransaction;

type Compile =
    unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo, bool) -> *mut pg_sys::PLpgSQL_function;

/// facts reads `function`, a PL/pgSQL trigger function, and returns what it does, statement by
/// statement: {"trigger": true, "statements": [...]}, or {"error": "..."} when it cannot be
/// read (plpgsql cannot compile it; not a trigger function). `search_path` is the one names
/// the function does not pin are read under (the session firing the trigger's).
/// Each statement has "line", "kind" and, where it has one, "sql" (the text PostgreSQL runs),
/// "guards" (the IF / ELSIF / CASE / WHILE conditions of the branches around it, the outermost
/// MAX_GUARDS, 16 MB of them in all, "guards_truncated" when some are left out; "shadowed" when
/// TG_OP, TG_WHEN or TG_LEVEL in one may not be the trigger's own; "holds": false
/// means "is not true",
/// NULL included; a condition that ends a branch early — IF … THEN RETURN, EXIT WHEN — guards
/// nothing after it, so the list is a lower bound), "loop" (inside a loop), "handler" (inside
/// an EXCEPTION handler), "writes_new" / "writes_old" (it may change NEW / OLD; a CALL with
/// arguments may, through INOUT), "writes_protocol" (it may assign TG_OP, TG_WHEN or TG_LEVEL).
/// SQL statements add "command" (the command tag), "relation"
/// ({"schema", "name"} of INSERT / UPDATE / DELETE / MERGE), "upsert" (ON CONFLICT DO UPDATE),
/// "single_row" (INSERT … VALUES of one row)
/// and "writes_in_with" (a data-modifying WITH); RAISE adds "level"; RETURN adds "returns"
/// ("new", "old", "null", "variable", "expression" or "nothing"). At the top, "falls_off_end"
/// (a path reaches the end of the body without RETURN) and "not_null_variables".
///
/// Only trigger functions: a trigger function is compiled as for a trigger of OID 0, an entry
/// of plpgsql's cache no real call uses, while any other function's compiled tree would be the
/// one its later calls in this session run.
pub fn facts(function: pg_sys::Oid, search_path: Option<&str>) -> Value {
    let Some(proc) = Proc::read(function) else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
            format!("activity_log: no function has OID {}", u32::from(function)),
            None,
        )
    };
    if proc.language != "plpgsql" {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "activity_log: function {} is written in {}, not PL/pgSQL",
                proc.name, proc.language
            ),
            Some("Only PL/pgSQL bodies are read statement by statement."),
        )
    }
    if proc.rettype != pg_sys::TRIGGEROID {
        return json!({"error": "not a trigger function"});
    }
    // Up to 17 a body that fails to compile leaves its memory behind (plpgsql allocates the
    // function in TopMemoryContext): a failure is remembered for this version of the function
    // and this search_path until the transaction's next command (which may create the missing
    // type) or the next transaction.
    // SAFETY: reads of the transaction's start time and command counter.
    let command = unsafe {
        (
            pg_sys::GetCurrentTransactionStartTimestamp(),
            pg_sys::GetCurrentCommandId(false),
        )
    };
    let key = (
        u32::from(function),
        proc.xmin,
        search_path.map(str::to_owned),
    );
    if let Some(message) = FAILED.with(|failed| {
        let failed = failed.borrow();
        failed
            .0
            .eq(&Some(command))
            .then(|| failed.1.get(&key).cloned())
            .flatten()
    }) {
        return json!({ "error": message });
    }
    let read = undone_in_subtransaction(|| {
        // SAFETY: the compiled tree is the plpgsql cache's; it is only read, inside this
        // subtransaction, and nothing of it is kept (walk copies into owned values).
        unsafe {
            let compiled = compile(function, &proc.config, search_path);
            Walk::new(compiled).function()
        }
    });
    read.unwrap_or_else(|message| {
        FAILED.with(|failed| {
            let mut failed = failed.borrow_mut();
            if failed.0 != Some(command) {
                *failed = (Some(command), Default::default());
            }
            failed.1.insert(key, message.clone());
        });
        json!({ "error": message })
    })
}

type FailedKey = (u32, u32, Option<String>);
/// A command: its transaction's start time and its command id.
type Command = (pg_sys::TimestampTz, pg_sys::CommandId);

thread_local! {
    /// The functions plpgsql could not compile in this command (the transaction's start time
    /// and command id come first: the map is emptied when they change), by OID, xmin of their
    /// pg_proc row and search_path, and why.
    static FAILED: std::cell::RefCell<(
        Option<Command>,
        std::collections::HashMap<FailedKey, String>,
    )> = Default::default();
}

/// What facts needs of a pg_proc row, from the syscache (no SPI: a read, not a statement).
struct Proc {
    name: String,
    language: String,
    rettype: pg_sys::Oid,
    xmin: u32,
    /// proconfig: the function's SET clauses, "name=value".
    config: Vec<String>,
}

impl Proc {
    fn read(function: pg_sys::Oid) -> Option<Proc> {
        // SAFETY: a syscache lookup inside a transaction; the tuple is released before return
        // and everything kept is copied.
        unsafe {
            let tuple = pg_sys::SearchSysCache1(
                pg_sys::SysCacheIdentifier::PROCOID as i32,
                pg_sys::Datum::from(function),
            );
            if tuple.is_null() {
                return None;
            }
            let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tuple);
            let (prolang, rettype) = (form.prolang, form.prorettype);
            let xmin = (*(*tuple).t_data).t_choice.t_heap.t_xmin;
            let mut isnull = true;
            let config = pg_sys::SysCacheGetAttr(
                pg_sys::SysCacheIdentifier::PROCOID as i32,
                tuple,
                pg_sys::Anum_pg_proc_proconfig as pg_sys::AttrNumber,
                &mut isnull,
            );
            let config = <Vec<Option<String>> as FromDatum>::from_datum(config, isnull)
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect();
            pg_sys::ReleaseSysCache(tuple);
            Some(Proc {
                name: string(pg_sys::format_procedure(function)).unwrap_or_default(),
                language: string(pg_sys::get_language_name(prolang, true)).unwrap_or_default(),
                rettype,
                xmin: u32::from(xmin),
                config,
            })
        }
    }
}

/// apply_settings sets what decides how the body compiles, as a call would see it: the
/// reader's search_path (where the trigger fires, for names the function does not pin), then
/// the function's own SET clauses for search_path, standard_conforming_strings and plpgsql.*
/// (variable_conflict …). Nothing else of proconfig: other parameters do not change the
/// compile, the reader may not be allowed to set them (a failure would hide the body), and a
/// placeholder (SET myapp.user_id) would outlive the rollback. Set as PGC_SUSET: only the
/// compile inside the subtransaction sees them, and its rollback restores them.
unsafe fn apply_settings(config: &[String], search_path: Option<&str>) {
    let set = |name: &str, value: &str| {
        let (Ok(name), Ok(value)) = (std::ffi::CString::new(name), std::ffi::CString::new(value))
        else {
            return;
        };
        // SAFETY: a GUC assignment saved at the subtransaction's nest level (ERROR on a bad
        // value: the body is then not read).
        unsafe {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    };
    if let Some(path) = search_path {
        set("search_path", path);
    }
    for item in config {
        let Some((name, value)) = item.split_once('=') else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if lower == "search_path"
            || lower == "standard_conforming_strings"
            || lower.starts_with("plpgsql.")
        {
            set(name, value);
        }
    }
}

/// compile runs plpgsql_compile with a made-up trigger call, as plpgsql's validator does: a
/// TriggerData whose trigger has OID 0, so the tree is cached apart from every real trigger's.
/// Not forValidator: extra_errors the user set would fail bodies that run.
unsafe fn compile(
    function: pg_sys::Oid,
    config: &[String],
    search_path: Option<&str>,
) -> *mut pg_sys::PLpgSQL_function {
    // SAFETY: a call made up as plpgsql_validator makes it, in palloc'd memory.
    unsafe {
        let found = pg_sys::load_external_function(
            c"$libdir/plpgsql".as_ptr(),
            c"plpgsql_compile".as_ptr(),
            true,
            std::ptr::null_mut(),
        );
        // SAFETY: plpgsql_compile(FunctionCallInfo, bool) on 15-18 (plpgsql.h); signalNotFound
        // makes a missing plpgsql an ERROR, so the pointer is not NULL.
        let compile: Compile = std::mem::transmute::<*mut std::ffi::c_void, Compile>(found);
        let flinfo =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
        (*flinfo).fn_oid = function;
        (*flinfo).fn_mcxt = pg_sys::CurrentMemoryContext;
        let fcinfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>())
            as pg_sys::FunctionCallInfo;
        (*fcinfo).flinfo = flinfo;
        apply_settings(config, search_path);
        {
            let data = pg_sys::palloc0(std::mem::size_of::<pg_sys::TriggerData>())
                as *mut pg_sys::TriggerData;
            (*data).type_ = pg_sys::NodeTag::T_TriggerData;
            (*data).tg_trigger =
                pg_sys::palloc0(std::mem::size_of::<pg_sys::Trigger>()) as *mut pg_sys::Trigger;
            (*fcinfo).context = data as *mut pg_sys::Node;
        }
        // A function pointer from dfmgr is not wrapped by pgrx: its ERROR must become a panic here.
        pg_sys::ffi::pg_guard_ffi_boundary(|| compile(fcinfo, false))
    }
}

/// The conditions a statement runs under, innermost last, and whether it is in a loop or an
/// exception handler.
#[derive(Clone, Default)]
struct Context {
    guards: Vec<Value>,
    /// The length of the guards' conditions.
    guard_bytes: usize,
    guards_truncated: bool,
    in_loop: bool,
    in_handler: bool,
}

/// The outermost conditions kept per statement: each statement carries its own, so a body
/// nested n deep would otherwise make n² of them (2 500 IFs: 140 MB in 35 s). The ones kept
/// still prove a statement unreachable when they cannot all hold.
const MAX_GUARDS: usize = 32;

impl Context {
    fn with_guard(&self, cond: Option<Condition>, holds: bool) -> Context {
        let mut inner = self.clone();
        if let Some(Condition { text, shadowed }) = cond {
            if inner.guards.len() < MAX_GUARDS {
                inner.guard_bytes += text.len();
                let mut guard = json!({"cond": text, "holds": holds});
                if shadowed {
                    guard["shadowed"] = true.into();
                }
                inner.guards.push(guard);
            } else {
                inner.guards_truncated = true;
            }
        }
        inner
    }

    fn in_loop(&self) -> Context {
        Context {
            in_loop: true,
            ..self.clone()
        }
    }
}

/// A condition's text, and whether TG_OP, TG_WHEN or TG_LEVEL in it may name something other
/// than the trigger's own (a variable or ALIAS of that name declared around it).
#[derive(Clone)]
struct Condition {
    text: String,
    shadowed: bool,
}

struct Walk {
    function: *mut pg_sys::PLpgSQL_function,
    /// The labels EXIT statements name: a block one of them leaves may end without RETURN.
    exit_labels: std::collections::HashSet<String>,
    statements: Vec<Value>,
    /// Bytes of guard conditions written so far (each statement carries its own copies).
    guard_bytes: usize,
}

/// Past this many bytes of guard conditions statements come without theirs (a 48 kB body of 32
/// nested 1 kB conditions around 2 000 statements would otherwise make 64 MB of facts).
const MAX_GUARD_BYTES: usize = 16 << 20;

impl Walk {
    unsafe fn new(function: *mut pg_sys::PLpgSQL_function) -> Walk {
        Walk {
            function,
            exit_labels: Default::default(),
            statements: Vec::new(),
            guard_bytes: 0,
        }
    }

    fn function(mut self) -> Value {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        let action = unsafe { (*self.function).action };
        self.block(action, &Context::default());
        json!({
            "trigger": self.trigger(),
            "statements": self.statements,
            "falls_off_end": !always_leaves(action.cast(), &self.exit_labels),
            "not_null_variables": self.not_null_variables(),
        })
    }

    /// not_null_variables: some variable is declared NOT NULL, or of a NOT NULL domain (giving it
    /// NULL is an ERROR).
    fn not_null_variables(&self) -> bool {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            let f = self.function;
            (0..(*f).ndatums).any(|dno| {
                let datum = *(*f).datums.add(dno as usize);
                use pg_sys::PLpgSQL_datum_type::*;
                let declared = matches!(
                    (*datum).dtype,
                    PLPGSQL_DTYPE_VAR | PLPGSQL_DTYPE_ROW | PLPGSQL_DTYPE_REC
                ) && (*(datum as *mut pg_sys::PLpgSQL_variable)).notnull;
                // a variable of a NOT NULL domain starts NULL: entering its block is an ERROR
                let domain = match (*datum).dtype {
                    PLPGSQL_DTYPE_VAR => {
                        let var = datum as *mut pg_sys::PLpgSQL_var;
                        !(*var).datatype.is_null() && domain_not_null((*(*var).datatype).typoid)
                    }
                    PLPGSQL_DTYPE_REC => {
                        domain_not_null((*(datum as *mut pg_sys::PLpgSQL_rec)).rectypeid)
                    }
                    _ => false,
                };
                declared || domain
            })
        }
    }

    fn block(&mut self, block: *mut pg_sys::PLpgSQL_stmt_block, cx: &Context) {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            // Its declarations run when the block is entered: a default calls what it calls,
            // a bound cursor's query is a statement.
            let f = self.function;
            for i in 0..(*block).n_initvars {
                let dno = *(*block).initvarnos.add(i as usize);
                let datum = *(*f).datums.add(dno as usize);
                use pg_sys::PLpgSQL_datum_type::*;
                let dtype = (*datum).dtype;
                if !matches!(
                    dtype,
                    PLPGSQL_DTYPE_VAR | PLPGSQL_DTYPE_ROW | PLPGSQL_DTYPE_REC
                ) {
                    continue;
                }
                let variable = datum as *mut pg_sys::PLpgSQL_variable;
                let line = (*variable).lineno;
                if let Some(sql) = text((*variable).default_val) {
                    self.push(line, "declare", cx, |o| {
                        o.insert("sql".into(), sql.into());
                    });
                }
                if dtype == PLPGSQL_DTYPE_VAR {
                    let var = datum as *mut pg_sys::PLpgSQL_var;
                    if let Some(sql) = text((*var).cursor_explicit_expr) {
                        self.push_sql(line, "cursor", cx, Some(sql), |_| {});
                    }
                }
            }
            self.list((*block).body, cx);
            let exceptions = (*block).exceptions;
            if !exceptions.is_null() {
                let handler = Context {
                    in_handler: true,
                    ..cx.clone()
                };
                for exception in cells::<pg_sys::PLpgSQL_exception>((*exceptions).exc_list) {
                    self.list((*exception).action, &handler);
                }
            }
        }
    }

    fn list(&mut self, list: *mut pg_sys::List, cx: &Context) {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            for stmt in cells::<pg_sys::PLpgSQL_stmt>(list) {
                self.statement(stmt, cx);
            }
        }
    }

    /// expression records an expression PostgreSQL evaluates (a condition, a bound, a RAISE
    /// parameter): what it calls runs.
    fn expression(&mut self, line: i32, expr: *mut pg_sys::PLpgSQL_expr, cx: &Context) {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            if let Some(sql) = text(expr) {
                self.push(line, "expression", cx, |s| {
                    s.insert("sql".into(), sql.into());
                });
            }
        }
    }

    fn statement(&mut self, stmt: *mut pg_sys::PLpgSQL_stmt, cx: &Context) {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            // Nesting is as deep as the body is: an ERROR past max_stack_depth, not a crash.
            pg_sys::check_stack_depth();
            pgrx::check_for_interrupts!();
            use pg_sys::PLpgSQL_stmt_type::*;
            let line = (*stmt).lineno;
            match (*stmt).cmd_type {
                PLPGSQL_STMT_BLOCK => self.block(stmt.cast(), cx),
                PLPGSQL_STMT_ASSIGN => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_assign;
                    let writes = self.writes((*s).varno);
                    let sql = text((*s).expr);
                    self.push(line, "assign", cx, |o| {
                        o.insert("sql".into(), sql.into());
                        writes.insert_into(o);
                    });
                }
                PLPGSQL_STMT_IF => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_if;
                    // Each branch runs when its condition holds and every earlier one did not.
                    let mut earlier = cx.clone();
                    let cond = self.condition((*s).cond);
                    self.expression(line, (*s).cond, cx);
                    self.list((*s).then_body, &earlier.with_guard(cond.clone(), true));
                    earlier = earlier.with_guard(cond, false);
                    for elsif in cells::<pg_sys::PLpgSQL_if_elsif>((*s).elsif_list) {
                        let cond = self.condition((*elsif).cond);
                        self.expression((*elsif).lineno, (*elsif).cond, &earlier);
                        self.list((*elsif).stmts, &earlier.with_guard(cond.clone(), true));
                        earlier = earlier.with_guard(cond, false);
                    }
                    self.list((*s).else_body, &earlier);
                }
                PLPGSQL_STMT_CASE => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_case;
                    self.expression(line, (*s).t_expr, cx);
                    // CASE x WHEN ... compares a variable plpgsql made for x: say x instead.
                    let case_value = text((*s).t_expr).map(|t| {
                        (
                            format!("\"__Case__Variable_{}__\"", (*s).t_varno),
                            format!("({t})"),
                        )
                    });
                    let mut earlier = cx.clone();
                    for when in cells::<pg_sys::PLpgSQL_case_when>((*s).case_when_list) {
                        let cond = self.condition((*when).expr).map(|c| match &case_value {
                            Some((variable, value)) => Condition {
                                text: c.text.replace(variable, value),
                                ..c
                            },
                            None => c,
                        });
                        if let Some(c) = &cond {
                            self.push((*when).lineno, "expression", &earlier, |o| {
                                o.insert("sql".into(), c.text.clone().into());
                            });
                        }
                        self.list((*when).stmts, &earlier.with_guard(cond.clone(), true));
                        earlier = earlier.with_guard(cond, false);
                    }
                    // Without ELSE, a value no WHEN matches raises CASE_NOT_FOUND.
                    if (*s).have_else {
                        self.list((*s).else_stmts, &earlier);
                    } else {
                        self.push(line, "raise", &earlier, |o| {
                            o.insert("level".into(), "exception".into());
                            o.insert("implicit".into(), "case not found".into());
                        });
                    }
                }
                PLPGSQL_STMT_LOOP => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_loop;
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_WHILE => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_while;
                    self.expression(line, (*s).cond, cx);
                    let cond = self.condition((*s).cond);
                    self.list((*s).body, &cx.in_loop().with_guard(cond, true));
                }
                PLPGSQL_STMT_FORI => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_fori;
                    for bound in [(*s).lower, (*s).upper, (*s).step] {
                        self.expression(line, bound, cx);
                    }
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_FORS => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_fors;
                    let writes = self.writes_variable((*s).var);
                    let sql = text((*s).query);
                    self.push_sql(line, "for", cx, sql, |o| {
                        writes.insert_into(o);
                    });
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_FORC => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_forc;
                    let writes = self.writes_variable((*s).var);
                    self.expression(line, (*s).argquery, cx);
                    self.push(line, "for", cx, |o| {
                        o.insert("opens_cursor".into(), true.into());
                        writes.insert_into(o);
                    });
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_DYNFORS => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_dynfors;
                    let writes = self.writes_variable((*s).var);
                    let sql = text((*s).query);
                    self.push(line, "execute", cx, |o| {
                        o.insert("sql".into(), sql.into());
                        writes.insert_into(o);
                    });
                    self.params((*s).params, line, cx);
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_FOREACH_A => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_foreach_a;
                    let writes = self.writes((*s).varno);
                    let sql = text((*s).expr);
                    self.push(line, "foreach", cx, |o| {
                        o.insert("sql".into(), sql.into());
                        writes.insert_into(o);
                    });
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_EXIT => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_exit;
                    if let Some(label) = string((*s).label) {
                        self.exit_labels.insert(label);
                    }
                    self.expression(line, (*s).cond, cx);
                }
                PLPGSQL_STMT_RETURN => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_return;
                    let f = self.function;
                    let sql = text((*s).expr);
                    let trigger = self.trigger();
                    let returns = match ((*s).retvarno, &sql) {
                        (v, _) if trigger && v == (*f).new_varno => "new",
                        (v, _) if trigger && v == (*f).old_varno => "old",
                        (v, _) if v >= 0 => "variable",
                        (_, None) => "nothing",
                        (_, Some(e)) if e.trim().eq_ignore_ascii_case("null") => "null",
                        _ => "expression",
                    };
                    self.push(line, "return", cx, |o| {
                        o.insert("returns".into(), returns.into());
                        o.insert("sql".into(), sql.into());
                    });
                }
                PLPGSQL_STMT_RETURN_NEXT => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_return_next;
                    self.expression(line, (*s).expr, cx);
                }
                PLPGSQL_STMT_RETURN_QUERY => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_return_query;
                    if let Some(sql) = text((*s).query) {
                        self.push_sql(line, "return query", cx, Some(sql), |_| {});
                    } else {
                        let sql = text((*s).dynquery);
                        self.push(line, "execute", cx, |o| {
                            o.insert("sql".into(), sql.into());
                        });
                        self.params((*s).params, line, cx);
                    }
                }
                PLPGSQL_STMT_RAISE => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_raise;
                    let level = level((*s).elog_level);
                    let condition = string((*s).condname);
                    self.push(line, "raise", cx, |o| {
                        o.insert("level".into(), level.into());
                        if let Some(c) = condition {
                            o.insert("condition".into(), c.into());
                        }
                    });
                    self.params((*s).params, line, cx);
                    for option in cells::<pg_sys::PLpgSQL_raise_option>((*s).options) {
                        self.expression(line, (*option).expr, cx);
                    }
                }
                PLPGSQL_STMT_ASSERT => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_assert;
                    let sql = text((*s).cond);
                    self.push(line, "assert", cx, |o| {
                        o.insert("sql".into(), sql.into());
                    });
                    self.expression(line, (*s).message, cx);
                }
                PLPGSQL_STMT_EXECSQL => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_execsql;
                    let writes = self.writes_variable(if (*s).into {
                        (*s).target
                    } else {
                        std::ptr::null_mut()
                    });
                    let (into, strict) = ((*s).into, (*s).strict);
                    self.push_sql(line, "sql", cx, text((*s).sqlstmt), |o| {
                        o.insert("into".into(), into.into());
                        o.insert("strict".into(), strict.into());
                        writes.insert_into(o);
                    });
                }
                PLPGSQL_STMT_DYNEXECUTE => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_dynexecute;
                    let writes = self.writes_variable(if (*s).into {
                        (*s).target
                    } else {
                        std::ptr::null_mut()
                    });
                    let (into, strict) = ((*s).into, (*s).strict);
                    let sql = text((*s).query);
                    self.push(line, "execute", cx, |o| {
                        o.insert("sql".into(), sql.into());
                        o.insert("into".into(), into.into());
                        o.insert("strict".into(), strict.into());
                        writes.insert_into(o);
                    });
                    self.params((*s).params, line, cx);
                }
                PLPGSQL_STMT_PERFORM => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_perform;
                    self.push_sql(line, "perform", cx, text((*s).expr), |_| {});
                }
                PLPGSQL_STMT_CALL => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_call;
                    // plpgsql learns which arguments are INOUT at the first run: until then any
                    // argument may be written back.
                    let sql = text((*s).expr);
                    let may_write = (*s).target.is_null()
                        && sql.as_deref().is_some_and(|q| call_has_arguments(q));
                    let writes = if may_write {
                        Writes {
                            new: true,
                            old: true,
                            protocol: true,
                        }
                    } else {
                        self.writes_variable((*s).target)
                    };
                    self.push_sql(line, "call", cx, sql, |o| {
                        writes.insert_into(o);
                    });
                }
                PLPGSQL_STMT_GETDIAG => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_getdiag;
                    let writes = cells::<pg_sys::PLpgSQL_diag_item>((*s).diag_items)
                        .map(|item| self.writes((*item).target))
                        .fold(Writes::default(), Writes::or);
                    let stacked = (*s).is_stacked;
                    self.push(line, "get diagnostics", cx, |o| {
                        o.insert("stacked".into(), stacked.into());
                        writes.insert_into(o);
                    });
                }
                PLPGSQL_STMT_OPEN => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_open;
                    self.expression(line, (*s).argquery, cx);
                    // An OPEN of a cursor already open is an ERROR: each says it opens one.
                    if let Some(sql) = text((*s).query) {
                        self.push_sql(line, "open", cx, Some(sql), |_| {});
                    } else if let Some(sql) = text((*s).dynquery) {
                        self.push(line, "execute", cx, |o| {
                            o.insert("sql".into(), sql.into());
                            o.insert("opens_cursor".into(), true.into());
                        });
                        self.params((*s).params, line, cx);
                    } else {
                        self.push(line, "open", cx, |_| {});
                    }
                }
                PLPGSQL_STMT_FETCH => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_fetch;
                    let is_move = (*s).is_move;
                    let target = if is_move {
                        std::ptr::null_mut()
                    } else {
                        (*s).target
                    };
                    let writes = self.writes_variable(target);
                    self.expression(line, (*s).expr, cx);
                    self.push(line, if is_move { "move" } else { "fetch" }, cx, |o| {
                        writes.insert_into(o);
                    });
                }
                PLPGSQL_STMT_CLOSE => self.push(line, "close", cx, |_| {}),
                PLPGSQL_STMT_COMMIT => self.push(line, "commit", cx, |_| {}),
                PLPGSQL_STMT_ROLLBACK => self.push(line, "rollback", cx, |_| {}),
                other => self.push(line, "unknown", cx, |o| {
                    o.insert("cmd_type".into(), other.into());
                }),
            }
        }
    }

    fn params(&mut self, params: *mut pg_sys::List, line: i32, cx: &Context) {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            for expr in cells::<pg_sys::PLpgSQL_expr>(params) {
                self.expression(line, expr, cx);
            }
        }
    }

    /// push_sql records a statement whose text is SQL, with what the raw parser says of it.
    fn push_sql(
        &mut self,
        line: i32,
        kind: &str,
        cx: &Context,
        sql: Option<String>,
        more: impl FnOnce(&mut Map<String, Value>),
    ) {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            let parsed = sql.as_deref().map(|q| parse_sql(q));
            self.push(line, kind, cx, |o| {
                o.insert("sql".into(), sql.into());
                if let Some(Value::Object(p)) = parsed {
                    o.extend(p);
                }
                more(o);
            });
        }
    }

    fn push(
        &mut self,
        line: i32,
        kind: &str,
        cx: &Context,
        more: impl FnOnce(&mut Map<String, Value>),
    ) {
        let mut o = Map::new();
        o.insert("line".into(), line.into());
        o.insert("kind".into(), kind.into());
        // Past the budget statements come without their guards (and say so): what a statement
        // does is never left out.
        self.guard_bytes += cx.guard_bytes;
        if self.guard_bytes > MAX_GUARD_BYTES {
            o.insert("guards".into(), Value::Array(Vec::new()));
            o.insert("guards_truncated".into(), true.into());
        } else {
            o.insert("guards".into(), Value::Array(cx.guards.clone()));
            if cx.guards_truncated {
                o.insert("guards_truncated".into(), true.into());
            }
        }
        o.insert("loop".into(), cx.in_loop.into());
        o.insert("handler".into(), cx.in_handler.into());
        more(&mut o);
        self.statements.push(Value::Object(o));
    }

    /// writes says whether assigning datum `dno` writes NEW or OLD (the record, or a field of
    /// it): a BEFORE UPDATE trigger that changes OLD and returns it writes the row.
    fn writes(&self, dno: i32) -> Writes {
        // SAFETY: the function is the compiled tree, valid for the whole walk (Walk::new).
        let (new, old) = unsafe { ((*self.function).new_varno, (*self.function).old_varno) };
        Writes {
            new: self.is_part_of(dno, new),
            old: self.is_part_of(dno, old),
            protocol: self.is_protocol(dno),
        }
    }

    /// is_protocol says whether datum `dno` is (or a list of targets holds) the trigger's own
    /// TG_OP, TG_WHEN or TG_LEVEL: plpgsql lets a body assign them.
    fn is_protocol(&self, dno: i32) -> bool {
        self.any_target(dno, &|_, datum| {
            // SAFETY: datum is one of the compiled tree's (any_target).
            unsafe {
                (*datum).dtype == pg_sys::PLpgSQL_datum_type::PLPGSQL_DTYPE_PROMISE && {
                    let promise = (*(datum as *mut pg_sys::PLpgSQL_var)).promise;
                    PROTOCOL.iter().any(|&(_, p)| p == promise)
                }
            }
        })
    }

    /// Whether `pred` accepts the datum `dno`, or for a list of targets (INTO a, new.x) any of
    /// them.
    fn any_target(&self, dno: i32, pred: &dyn Fn(i32, *mut pg_sys::PLpgSQL_datum) -> bool) -> bool {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            let f = self.function;
            if dno < 0 || dno >= (*f).ndatums {
                return false;
            }
            let datum = *(*f).datums.add(dno as usize);
            if (*datum).dtype == pg_sys::PLpgSQL_datum_type::PLPGSQL_DTYPE_ROW {
                let row = datum as *mut pg_sys::PLpgSQL_row;
                return (0..(*row).nfields)
                    .any(|i| self.any_target(*(*row).varnos.add(i as usize), pred));
            }
            pred(dno, datum)
        }
    }

    /// condition is a branch's condition as a guard: its text, and whether TG_OP, TG_WHEN and
    /// TG_LEVEL, looked up as plpgsql looks up a name where the condition is written (the
    /// innermost declaration of that name, labels skipped), fail to be the trigger's own.
    fn condition(&self, expr: *mut pg_sys::PLpgSQL_expr) -> Option<Condition> {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk
        // (Walk::new); a namespace item's name is NUL-terminated.
        unsafe {
            let text = text(expr)?;
            let f = self.function;
            let own = |name: &CStr, promise: pg_sys::PLpgSQL_promise_type::Type| {
                let mut item = (*expr).ns;
                while !item.is_null() {
                    if (*item).itemtype != pg_sys::PLpgSQL_nsitem_type::PLPGSQL_NSTYPE_LABEL
                        && CStr::from_ptr((*item).name.as_ptr()) == name
                    {
                        let dno = (*item).itemno;
                        if dno < 0 || dno >= (*f).ndatums {
                            return false;
                        }
                        let datum = *(*f).datums.add(dno as usize);
                        return (*datum).dtype == pg_sys::PLpgSQL_datum_type::PLPGSQL_DTYPE_PROMISE
                            && (*(datum as *mut pg_sys::PLpgSQL_var)).promise == promise;
                    }
                    item = (*item).prev;
                }
                false
            };
            let shadowed = !PROTOCOL.iter().all(|&(name, promise)| own(name, promise));
            Some(Condition { text, shadowed })
        }
    }

    /// writes_variable is [`Walk::writes`] of a statement's target (none: NULL).
    fn writes_variable(&self, variable: *mut pg_sys::PLpgSQL_variable) -> Writes {
        if variable.is_null() {
            return Writes::default();
        }
        // SAFETY: a target of the compiled tree, valid for the whole walk (Walk::new).
        self.writes(unsafe { (*variable).dno })
    }

    /// is_part_of says whether datum `dno` is the trigger's record `record` or a field of it.
    fn is_part_of(&self, dno: i32, record: i32) -> bool {
        if !self.trigger() || record < 0 {
            return false;
        }
        self.any_target(dno, &|dno, datum| {
            // SAFETY: datum is one of the compiled tree's (any_target).
            dno == record
                || unsafe {
                    (*datum).dtype == pg_sys::PLpgSQL_datum_type::PLPGSQL_DTYPE_RECFIELD
                        && (*(datum as *mut pg_sys::PLpgSQL_recfield)).recparentno == record
                }
        })
    }

    fn trigger(&self) -> bool {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe { (*self.function).fn_is_trigger == pg_sys::PLpgSQL_trigtype::PLPGSQL_DML_TRIGGER }
    }
}

/// What a statement may assign: NEW, OLD (a field of either counts), TG_OP / TG_WHEN / TG_LEVEL.
#[derive(Clone, Copy, Default)]
struct Writes {
    new: bool,
    old: bool,
    protocol: bool,
}

impl Writes {
    fn or(self, other: Writes) -> Writes {
        Writes {
            new: self.new || other.new,
            old: self.old || other.old,
            protocol: self.protocol || other.protocol,
        }
    }

    fn insert_into(self, o: &mut Map<String, Value>) {
        o.insert("writes_new".into(), self.new.into());
        o.insert("writes_old".into(), self.old.into());
        if self.protocol {
            o.insert("writes_protocol".into(), true.into());
        }
    }
}

/// parse_sql says what a SQL statement is, from the core raw parser: its command tag, the
/// table an INSERT / UPDATE / DELETE / MERGE writes, an upsert, a data-modifying WITH.
unsafe fn parse_sql(sql: &str) -> Value {
    // SAFETY: the caller passes a valid node (or NULL where checked).
    unsafe {
        let Ok(c) = std::ffi::CString::new(sql) else {
            return json!({"parse_error": "a NUL byte"});
        };
        let mut o = Map::new();
        let parsed = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        let stmts: Vec<_> = cells::<pg_sys::RawStmt>(parsed).collect();
        if stmts.len() != 1 {
            o.insert("statements".into(), stmts.len().into());
        }
        let Some(&raw) = stmts.first() else {
            return Value::Object(o);
        };
        let node = (*raw).stmt;
        let tag = pg_sys::GetCommandTagName(pg_sys::CreateCommandTag(node));
        o.insert("command".into(), string(tag).unwrap_or_default().into());
        let (relation, with) = match (*node).type_ {
            pg_sys::NodeTag::T_InsertStmt => {
                let s = node as *mut pg_sys::InsertStmt;
                let conflict = (*s).onConflictClause;
                let upsert = !conflict.is_null()
                    && (*conflict).action == pg_sys::OnConflictAction::ONCONFLICT_UPDATE;
                o.insert("upsert".into(), upsert.into());
                // INSERT … VALUES of one row: RETURNING … INTO cannot get a second one.
                let select = (*s).selectStmt as *mut pg_sys::SelectStmt;
                let single_row = !select.is_null()
                    && (*select).type_ == pg_sys::NodeTag::T_SelectStmt
                    && !(*select).valuesLists.is_null()
                    && (*(*select).valuesLists).length == 1;
                o.insert("single_row".into(), single_row.into());
                ((*s).relation, (*s).withClause)
            }
            pg_sys::NodeTag::T_UpdateStmt => {
                let s = node as *mut pg_sys::UpdateStmt;
                ((*s).relation, (*s).withClause)
            }
            pg_sys::NodeTag::T_DeleteStmt => {
                let s = node as *mut pg_sys::DeleteStmt;
                ((*s).relation, (*s).withClause)
            }
            pg_sys::NodeTag::T_MergeStmt => {
                let s = node as *mut pg_sys::MergeStmt;
                ((*s).relation, (*s).withClause)
            }
            pg_sys::NodeTag::T_SelectStmt => {
                let s = node as *mut pg_sys::SelectStmt;
                (std::ptr::null_mut(), (*s).withClause)
            }
            _ => (std::ptr::null_mut(), std::ptr::null_mut()),
        };
        if !relation.is_null() {
            o.insert(
                "relation".into(),
                json!({"schema": string((*relation).schemaname), "name": string((*relation).relname)}),
            );
        }
        o.insert("writes_in_with".into(), writes_in_with(with).into());
        Value::Object(o)
    }
}

/// call_has_arguments says whether a CALL passes any argument (one may be INOUT).
unsafe fn call_has_arguments(sql: &str) -> bool {
    // SAFETY: the raw parser's own nodes, read right after it made them.
    unsafe {
        let Ok(c) = std::ffi::CString::new(sql) else {
            return true;
        };
        let parsed = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        cells::<pg_sys::RawStmt>(parsed).any(|raw| {
            let node = (*raw).stmt;
            if (*node).type_ != pg_sys::NodeTag::T_CallStmt {
                return true;
            }
            let call = (*(node as *mut pg_sys::CallStmt)).funccall;
            call.is_null() || !(*call).args.is_null()
        })
    }
}

/// writes_in_with says whether a WITH clause has a query other than SELECT (at any depth).
unsafe fn writes_in_with(with: *mut pg_sys::WithClause) -> bool {
    // SAFETY: the caller passes a valid node (or NULL where checked).
    unsafe {
        if with.is_null() {
            return false;
        }
        pg_sys::check_stack_depth();
        cells::<pg_sys::CommonTableExpr>((*with).ctes).any(|cte| {
            let query = (*cte).ctequery;
            if query.is_null() || (*query).type_ != pg_sys::NodeTag::T_SelectStmt {
                return !query.is_null();
            }
            writes_in_with((*(query as *mut pg_sys::SelectStmt)).withClause)
        })
    }
}

/// The level of a RAISE, as written.
fn level(elog_level: i32) -> &'static str {
    let level = elog_level as u32;
    if level >= pg_sys::PGERROR {
        "exception"
    } else if level >= pg_sys::WARNING {
        "warning"
    } else if level >= pg_sys::NOTICE {
        "notice"
    } else if level >= pg_sys::INFO {
        "info"
    } else if level >= pg_sys::LOG {
        "log"
    } else {
        "debug"
    }
}

/// domain_not_null says whether `typid` is a domain that (or whose base domain) is NOT NULL.
fn domain_not_null(mut typid: pg_sys::Oid) -> bool {
    // Domains over domains: a chain as long as the catalog's, bounded for safety.
    for _ in 0..64 {
        // SAFETY: a syscache lookup inside a transaction.
        let Some((typtype, notnull, base)) = (unsafe {
            catalog_row(
                pg_sys::SysCacheIdentifier::TYPEOID,
                typid,
                |t: &pg_sys::FormData_pg_type| (t.typtype as u8, t.typnotnull, t.typbasetype),
            )
        }) else {
            return false;
        };
        if typtype != b'd' {
            return false;
        }
        if notnull {
            return true;
        }
        typid = base;
    }
    true
}

/// always_leaves says whether running `stmt` always ends in a RETURN or an ERROR; a trigger
/// function that can reach the end of its body fails there ("control reached end of trigger
/// procedure without RETURN"). A loop, a block some EXIT names (`exit_labels`), or anything this
/// does not follow, may not.
fn always_leaves(
    stmt: *mut pg_sys::PLpgSQL_stmt,
    exit_labels: &std::collections::HashSet<String>,
) -> bool {
    // SAFETY: the pointers come from the compiled tree, valid while it is walked.
    unsafe {
        let last = |list: *mut pg_sys::List| {
            cells::<pg_sys::PLpgSQL_stmt>(list)
                .last()
                .is_some_and(|s| always_leaves(s, exit_labels))
        };
        use pg_sys::PLpgSQL_stmt_type::*;
        match (*stmt).cmd_type {
            PLPGSQL_STMT_RETURN => true,
            PLPGSQL_STMT_RAISE => {
                (*(stmt as *mut pg_sys::PLpgSQL_stmt_raise)).elog_level as u32 >= pg_sys::PGERROR
            }
            PLPGSQL_STMT_BLOCK => {
                let b = stmt as *mut pg_sys::PLpgSQL_stmt_block;
                // EXIT label leaves the block labelled so and goes on after it
                !string((*b).label).is_some_and(|l| exit_labels.contains(&l))
                    && last((*b).body)
                    && ((*b).exceptions.is_null()
                        || cells::<pg_sys::PLpgSQL_exception>((*(*b).exceptions).exc_list)
                            .all(|e| last((*e).action)))
            }
            PLPGSQL_STMT_IF => {
                let s = stmt as *mut pg_sys::PLpgSQL_stmt_if;
                last((*s).then_body)
                    && cells::<pg_sys::PLpgSQL_if_elsif>((*s).elsif_list).all(|e| last((*e).stmts))
                    && last((*s).else_body)
            }
            PLPGSQL_STMT_CASE => {
                let s = stmt as *mut pg_sys::PLpgSQL_stmt_case;
                cells::<pg_sys::PLpgSQL_case_when>((*s).case_when_list).all(|w| last((*w).stmts))
                    // without ELSE, no match is an ERROR
                    && (!(*s).have_else || last((*s).else_stmts))
            }
            _ => false,
        }
    }
}

/// The trigger variables a protocol guard tests, by name and by the promise that fills them.
const PROTOCOL: [(&CStr, pg_sys::PLpgSQL_promise_type::Type); 3] = [
    (
        c"tg_op",
        pg_sys::PLpgSQL_promise_type::PLPGSQL_PROMISE_TG_OP,
    ),
    (
        c"tg_when",
        pg_sys::PLpgSQL_promise_type::PLPGSQL_PROMISE_TG_WHEN,
    ),
    (
        c"tg_level",
        pg_sys::PLpgSQL_promise_type::PLPGSQL_PROMISE_TG_LEVEL,
    ),
];

/// The text of an expression, as PostgreSQL runs it.
unsafe fn text(expr: *mut pg_sys::PLpgSQL_expr) -> Option<String> {
    // SAFETY: the caller passes a valid node (or NULL where checked).
    unsafe {
        if expr.is_null() {
            None
        } else {
            string((*expr).query)
        }
    }
}

unsafe fn string(s: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: the caller passes a valid node (or NULL where checked).
    unsafe { (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned()) }
}

/// cells iterates over a List of pointers (NIL is empty).
unsafe fn cells<T>(list: *mut pg_sys::List) -> impl Iterator<Item = *mut T> {
    // SAFETY: the caller passes a valid node (or NULL where checked).
    unsafe {
        let n = if list.is_null() {
            0
        } else {
            (*list).length as usize
        };
        (0..n).map(move |i| (*(*list).elements.add(i)).ptr_value as *mut T)
    }
}
