//! plpgsql: reads a PL/pgSQL function the way PostgreSQL does, for the trigger migration's
//! analyzer (issue 27; docs/design/issue-27-plpgsql-parser.md). plpgsql's own compiler turns
//! the body into statements, and each SQL statement in it goes through the core raw parser;
//! what they say is copied out as facts (jsonb) before anything is released.
//!
//! Must not: link to plpgsql's symbols (activity_log is preloaded, plpgsql.so may not be
//! loaded yet, and 16+ hide most of them): plpgsql_compile is looked up when called. Keep any
//! pointer into the compiled tree after the walk, or run any of the function's code: compiling
//! resolves names and types, it executes nothing. Everything happens in a subtransaction that
//! is always rolled back, so a body that does not compile is an error value, not an ERROR.

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::{Map, Value, json};
use std::ffi::CStr;

use crate::errors::raise;
use crate::worker::subxact::undone_in_subtransaction;

type Compile =
    unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo, bool) -> *mut pg_sys::PLpgSQL_function;

/// facts reads `function`, a PL/pgSQL function, and returns what it does, statement by
/// statement: {"trigger": bool, "statements": [...]}, or {"error": "..."} when plpgsql cannot
/// compile it (a syntax error, a type that does not exist under the current search_path).
/// Each statement has "line", "kind" and, where it has one, "sql" (the text PostgreSQL runs),
/// "guards" (the IF / ELSIF / CASE / WHILE conditions it runs under, each with the value it
/// must have; the outermost MAX_GUARDS, and "guards_truncated" when there are more), "loop" (inside a loop), "handler" (inside an EXCEPTION handler) and
/// "writes_new" (it changes NEW). SQL statements add "command" (the command tag), "relation"
/// ({"schema", "name"} of INSERT / UPDATE / DELETE / MERGE), "upsert" (ON CONFLICT DO UPDATE)
/// and "writes_in_with" (a data-modifying WITH); RAISE adds "level"; RETURN adds "returns"
/// ("new", "old", "null", "variable", "expression" or "nothing").
pub fn facts(function: pg_sys::Oid) -> Value {
    let (name, language, rettype) = Spi::get_three_with_args::<String, String, pg_sys::Oid>(
        "SELECT p.oid::pg_catalog.regprocedure::pg_catalog.text, l.lanname::pg_catalog.text, p.prorettype \
           FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang WHERE p.oid = $1",
        &[function.into()],
    )
    .unwrap_or((None, None, None));
    let (Some(name), Some(language), Some(rettype)) = (name, language, rettype) else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
            format!("activity_log: no function has OID {}", u32::from(function)),
            None,
        )
    };
    if language != "plpgsql" {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("activity_log: function {name} is written in {language}, not PL/pgSQL"),
            Some("Only PL/pgSQL bodies are read statement by statement."),
        )
    }
    if rettype == pg_sys::EVENT_TRIGGEROID {
        return json!({"error": "an event trigger function"});
    }
    let trigger = rettype == pg_sys::TRIGGEROID;
    undone_in_subtransaction(|| {
        // SAFETY: the compiled tree is the plpgsql cache's; it is only read, inside this
        // subtransaction, and nothing of it is kept (walk copies into owned values).
        unsafe {
            let compiled = compile(function, trigger);
            Walk::new(compiled).function()
        }
    })
    .unwrap_or_else(|message| json!({ "error": message }))
}

/// compile runs plpgsql_compile with a made-up call, as plpgsql's validator does: a trigger
/// function gets a TriggerData whose trigger has OID 0, so the tree is cached apart from every
/// real trigger's. Not forValidator: extra_errors the user set would fail bodies that run.
unsafe fn compile(function: pg_sys::Oid, trigger: bool) -> *mut pg_sys::PLpgSQL_function {
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
        if trigger {
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
    guards_truncated: bool,
    in_loop: bool,
    in_handler: bool,
}

/// The outermost conditions kept per statement: each statement carries its own, so a body
/// nested n deep would otherwise make n² of them (2 500 IFs: 140 MB in 35 s). The ones kept
/// still prove a statement unreachable when they cannot all hold.
const MAX_GUARDS: usize = 32;

impl Context {
    fn with_guard(&self, cond: Option<String>, holds: bool) -> Context {
        let mut inner = self.clone();
        if let Some(cond) = cond {
            if inner.guards.len() < MAX_GUARDS {
                inner.guards.push(json!({"cond": cond, "holds": holds}));
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

struct Walk {
    function: *mut pg_sys::PLpgSQL_function,
    statements: Vec<Value>,
}

impl Walk {
    unsafe fn new(function: *mut pg_sys::PLpgSQL_function) -> Walk {
        Walk {
            function,
            statements: Vec::new(),
        }
    }

    fn function(mut self) -> Value {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            let f = self.function;
            // Declarations run too: a DECLARE default calls what it calls, a bound cursor's query
            // is a statement.
            for dno in 0..(*f).ndatums {
                let datum = *(*f).datums.add(dno as usize);
                let dtype = (*datum).dtype;
                use pg_sys::PLpgSQL_datum_type::*;
                if matches!(
                    dtype,
                    PLPGSQL_DTYPE_VAR | PLPGSQL_DTYPE_ROW | PLPGSQL_DTYPE_REC
                ) {
                    let variable = datum as *mut pg_sys::PLpgSQL_variable;
                    let line = (*variable).lineno;
                    if let Some(sql) = text((*variable).default_val) {
                        self.push(line, "declare", &Context::default(), |s| {
                            s.insert("sql".into(), sql.into());
                        });
                    }
                    if dtype == PLPGSQL_DTYPE_VAR {
                        let var = datum as *mut pg_sys::PLpgSQL_var;
                        if let Some(sql) = text((*var).cursor_explicit_expr) {
                            self.push_sql(line, "cursor", &Context::default(), Some(sql), |_| {});
                        }
                    }
                }
            }
            let action = (*f).action;
            self.block(action, &Context::default());
            json!({
                "trigger": self.trigger(),
                "statements": self.statements,
            })
        }
    }

    fn block(&mut self, block: *mut pg_sys::PLpgSQL_stmt_block, cx: &Context) {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
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
            use pg_sys::PLpgSQL_stmt_type::*;
            let line = (*stmt).lineno;
            match (*stmt).cmd_type {
                PLPGSQL_STMT_BLOCK => self.block(stmt.cast(), cx),
                PLPGSQL_STMT_ASSIGN => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_assign;
                    let writes_new = self.is_new((*s).varno);
                    let sql = text((*s).expr);
                    self.push(line, "assign", cx, |o| {
                        o.insert("sql".into(), sql.into());
                        o.insert("writes_new".into(), writes_new.into());
                    });
                }
                PLPGSQL_STMT_IF => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_if;
                    // Each branch runs when its condition holds and every earlier one did not.
                    let mut earlier = cx.clone();
                    let cond = text((*s).cond);
                    self.expression(line, (*s).cond, cx);
                    self.list((*s).then_body, &earlier.with_guard(cond.clone(), true));
                    earlier = earlier.with_guard(cond, false);
                    for elsif in cells::<pg_sys::PLpgSQL_if_elsif>((*s).elsif_list) {
                        let cond = text((*elsif).cond);
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
                        let cond = text((*when).expr).map(|c| match &case_value {
                            Some((variable, value)) => c.replace(variable, value),
                            None => c,
                        });
                        self.expression((*when).lineno, (*when).expr, &earlier);
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
                    let cond = text((*s).cond);
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
                    let writes_new = self.variable_is_new((*s).var);
                    let sql = text((*s).query);
                    self.push_sql(line, "for", cx, sql, |o| {
                        o.insert("writes_new".into(), writes_new.into());
                    });
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_FORC => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_forc;
                    let writes_new = self.variable_is_new((*s).var);
                    self.expression(line, (*s).argquery, cx);
                    self.push(line, "for", cx, |o| {
                        o.insert("writes_new".into(), writes_new.into());
                    });
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_DYNFORS => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_dynfors;
                    let writes_new = self.variable_is_new((*s).var);
                    let sql = text((*s).query);
                    self.push(line, "execute", cx, |o| {
                        o.insert("sql".into(), sql.into());
                        o.insert("writes_new".into(), writes_new.into());
                    });
                    self.params((*s).params, line, cx);
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_FOREACH_A => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_foreach_a;
                    let writes_new = self.is_new((*s).varno);
                    let sql = text((*s).expr);
                    self.push(line, "foreach", cx, |o| {
                        o.insert("sql".into(), sql.into());
                        o.insert("writes_new".into(), writes_new.into());
                    });
                    self.list((*s).body, &cx.in_loop());
                }
                PLPGSQL_STMT_EXIT => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_exit;
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
                    let writes_new = (*s).into && self.variable_is_new((*s).target);
                    let (into, strict) = ((*s).into, (*s).strict);
                    self.push_sql(line, "sql", cx, text((*s).sqlstmt), |o| {
                        o.insert("into".into(), into.into());
                        o.insert("strict".into(), strict.into());
                        o.insert("writes_new".into(), writes_new.into());
                    });
                }
                PLPGSQL_STMT_DYNEXECUTE => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_dynexecute;
                    let writes_new = (*s).into && self.variable_is_new((*s).target);
                    let (into, strict) = ((*s).into, (*s).strict);
                    let sql = text((*s).query);
                    self.push(line, "execute", cx, |o| {
                        o.insert("sql".into(), sql.into());
                        o.insert("into".into(), into.into());
                        o.insert("strict".into(), strict.into());
                        o.insert("writes_new".into(), writes_new.into());
                    });
                    self.params((*s).params, line, cx);
                }
                PLPGSQL_STMT_PERFORM => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_perform;
                    self.push_sql(line, "perform", cx, text((*s).expr), |_| {});
                }
                PLPGSQL_STMT_CALL => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_call;
                    let writes_new = self.variable_is_new((*s).target);
                    self.push_sql(line, "call", cx, text((*s).expr), |o| {
                        o.insert("writes_new".into(), writes_new.into());
                    });
                }
                PLPGSQL_STMT_GETDIAG => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_getdiag;
                    let writes_new = cells::<pg_sys::PLpgSQL_diag_item>((*s).diag_items)
                        .any(|item| self.is_new((*item).target));
                    self.push(line, "get diagnostics", cx, |o| {
                        o.insert("writes_new".into(), writes_new.into());
                    });
                }
                PLPGSQL_STMT_OPEN => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_open;
                    self.expression(line, (*s).argquery, cx);
                    if let Some(sql) = text((*s).query) {
                        self.push_sql(line, "open", cx, Some(sql), |_| {});
                    } else if let Some(sql) = text((*s).dynquery) {
                        self.push(line, "execute", cx, |o| {
                            o.insert("sql".into(), sql.into());
                        });
                        self.params((*s).params, line, cx);
                    }
                }
                PLPGSQL_STMT_FETCH => {
                    let s = stmt as *mut pg_sys::PLpgSQL_stmt_fetch;
                    let writes_new = !(*s).is_move && self.variable_is_new((*s).target);
                    self.expression(line, (*s).expr, cx);
                    self.push(line, "fetch", cx, |o| {
                        o.insert("writes_new".into(), writes_new.into());
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
        o.insert("guards".into(), Value::Array(cx.guards.clone()));
        if cx.guards_truncated {
            o.insert("guards_truncated".into(), true.into());
        }
        o.insert("loop".into(), cx.in_loop.into());
        o.insert("handler".into(), cx.in_handler.into());
        more(&mut o);
        self.statements.push(Value::Object(o));
    }

    /// is_new says whether datum `dno` is NEW or one of its fields.
    fn is_new(&self, dno: i32) -> bool {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe {
            let f = self.function;
            let new = (*f).new_varno;
            if !self.trigger() || dno < 0 || dno >= (*f).ndatums {
                return false;
            }
            if dno == new {
                return true;
            }
            let datum = *(*f).datums.add(dno as usize);
            match (*datum).dtype {
                pg_sys::PLpgSQL_datum_type::PLPGSQL_DTYPE_RECFIELD => {
                    (*(datum as *mut pg_sys::PLpgSQL_recfield)).recparentno == new
                }
                // A list of targets (INTO a, new.x): any of them.
                pg_sys::PLpgSQL_datum_type::PLPGSQL_DTYPE_ROW => {
                    let row = datum as *mut pg_sys::PLpgSQL_row;
                    (0..(*row).nfields).any(|i| self.is_new(*(*row).varnos.add(i as usize)))
                }
                _ => false,
            }
        }
    }

    fn trigger(&self) -> bool {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe { (*self.function).fn_is_trigger == pg_sys::PLpgSQL_trigtype::PLPGSQL_DML_TRIGGER }
    }

    fn variable_is_new(&self, variable: *mut pg_sys::PLpgSQL_variable) -> bool {
        // SAFETY: the pointers come from the compiled tree, valid for the whole walk (Walk::new).
        unsafe { !variable.is_null() && self.is_new((*variable).dno) }
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
