//! worker/store.rs: puts trail rows into `activity_log.events` the way COPY FROM does — each
//! row routed to its day partition by PostgreSQL's own tuple routing, heap multi-insert per
//! partition, then the partition's indexes — with the table's NOT NULL and CHECK constraints
//! checked, `id` drawn from its sequence and each row linked into the hash chain
//! (worker/chain.rs).
//!
//! Runs in the writer, inside its batch transaction; nothing is parsed or planned per batch.
//! What it does not do: fire triggers on the trail (the trail has none; one added by hand is
//! not run), or store into a partition whose columns are laid out differently from the trail's
//! (one attached by hand after a column was dropped): that is an error. Values are Datums
//! allocated in the batch transaction, valid until it ends.

use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString, c_void};

use crate::unguarded::{self, clear_slot};
use crate::unguarded::{
    ExecCleanupTupleRouting, ExecFindPartition, ExecSetupPartitionTupleRouting, nextval_internal,
};
use crate::worker::chain;
use crate::worker::decode::Jsonb;

/// The trail's columns that the writer fills; `id` comes from the identity sequence.
#[derive(Clone, Copy)]
pub enum Col {
    Ts,
    CommittedAt,
    Kind,
    Category,
    Severity,
    Status,
    Sqlstate,
    DbUser,
    EffectiveUser,
    Actor,
    ApplicationName,
    ClientAddr,
    BackendPid,
    Xid,
    Command,
    SchemaName,
    TableName,
    TableOid,
    Relations,
    RowKey,
    OldRow,
    NewRow,
    ChangedColumns,
    Query,
    QueryId,
    Rows,
    DurationMs,
    Context,
    JwtClaims,
    Details,
}

pub const NCOLS: usize = Col::Details as usize + 1;

const NAMES: [&CStr; NCOLS] = [
    c"ts",
    c"committed_at",
    c"kind",
    c"category",
    c"severity",
    c"status",
    c"sqlstate",
    c"db_user",
    c"effective_user",
    c"actor",
    c"application_name",
    c"client_addr",
    c"backend_pid",
    c"xid",
    c"command",
    c"schema_name",
    c"table_name",
    c"table_oid",
    c"relations",
    c"row_key",
    c"old_row",
    c"new_row",
    c"changed_columns",
    c"query",
    c"query_id",
    c"rows",
    c"duration_ms",
    c"context",
    c"jwt_claims",
    c"details",
];

/// One trail row; every column starts NULL.
#[derive(Clone)]
pub struct Row {
    values: [pg_sys::Datum; NCOLS],
    nulls: [bool; NCOLS],
}

impl Default for Row {
    fn default() -> Row {
        Row {
            values: [pg_sys::Datum::from(0); NCOLS],
            nulls: [true; NCOLS],
        }
    }
}

impl Row {
    fn set(&mut self, c: Col, d: pg_sys::Datum) {
        self.values[c as usize] = d;
        self.nulls[c as usize] = false;
    }

    pub fn text(&mut self, c: Col, s: &[u8]) {
        self.set(c, text_value(s));
    }

    /// shared sets a value made once for several rows ([`text_value`], [`text_array`]): a
    /// row's values are copied into its tuple, never freed one by one.
    pub fn shared(&mut self, c: Col, value: pg_sys::Datum) {
        self.set(c, value);
    }

    pub fn int8(&mut self, c: Col, v: i64) {
        self.set(c, pg_sys::Datum::from(v));
    }

    pub fn int4(&mut self, c: Col, v: i32) {
        self.set(c, pg_sys::Datum::from(v));
    }

    pub fn float8(&mut self, c: Col, v: f64) {
        self.set(c, pg_sys::Datum::from(v.to_bits()));
    }

    /// timestamptz from microseconds since 2000-01-01 UTC (PostgreSQL's own representation).
    pub fn timestamp(&mut self, c: Col, micros: i64) {
        self.int8(c, micros);
    }

    pub fn oid(&mut self, c: Col, v: u32) {
        self.set(c, pg_sys::Datum::from(v));
    }

    pub fn jsonb(&mut self, c: Col, v: Option<Jsonb>) {
        if let Some(v) = v {
            self.set(c, v.datum());
        }
    }

    /// jsonb from JSON text (validated when it was built).
    pub fn json_text(&mut self, c: Col, json: &str) {
        self.set(c, call_in(pg_sys::jsonb_in, json));
    }

    pub fn inet(&mut self, c: Col, addr: &[u8]) {
        self.set(c, call_in(pg_sys::inet_in, &String::from_utf8_lossy(addr)));
    }
}

/// text_array is `items` as a palloc'd text[].
pub fn text_array(items: &[String]) -> pg_sys::Datum {
    // SAFETY: an array of fresh text values, built like construct_array's callers do.
    unsafe {
        let mut elems: Vec<pg_sys::Datum> = items
            .iter()
            .map(|i| {
                pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
                    i.as_ptr().cast(),
                    i.len() as i32,
                ))
            })
            .collect();
        let array = pg_sys::construct_array(
            elems.as_mut_ptr(),
            elems.len() as i32,
            pg_sys::TEXTOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        );
        pg_sys::Datum::from(array)
    }
}

/// text_value is `s` as a palloc'd text.
pub fn text_value(s: &[u8]) -> pg_sys::Datum {
    // Query text cut at max_query_length may end mid-character.
    let s = String::from_utf8_lossy(s);
    // SAFETY: copies the bytes into a palloc'd text.
    let t = unsafe { pg_sys::cstring_to_text_with_len(s.as_ptr().cast(), s.len() as i32) };
    pg_sys::Datum::from(t)
}

/// call_in runs a type input function on `s`.
fn call_in(f: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum, s: &str) -> pg_sys::Datum {
    let s = CString::new(s.replace('\0', "")).unwrap_or_default();
    // SAFETY: a type input function with a NUL-terminated string; ERRORs propagate.
    unsafe {
        pgrx::direct_function_call_as_datum(f, &[Some(pg_sys::Datum::from(s.as_ptr()))])
            .unwrap_or(pg_sys::Datum::from(0))
    }
}

/// user_name is pg_get_userbyid's answer for a role OID.
pub fn user_name(role: u32) -> String {
    // SAFETY: syscache lookup; with noerr a missing role gives NULL.
    let name = unsafe { pg_sys::GetUserNameFromId(pg_sys::Oid::from(role), true) };
    if name.is_null() {
        format!("unknown (OID={role})")
    } else {
        // SAFETY: a palloc'd NUL-terminated name.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    }
}

/// relation_name is a relation's schema-qualified, quoted name, or its OID when it is gone.
pub fn relation_name(relid: u32) -> String {
    let oid = pg_sys::Oid::from(relid);
    // SAFETY: syscache lookups; NULL when the relation or schema no longer exists.
    unsafe {
        let rel = pg_sys::get_rel_name(oid);
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(oid));
        if rel.is_null() || nsp.is_null() {
            return relid.to_string();
        }
        let quoted = |p: *const std::ffi::c_char| {
            CStr::from_ptr(pg_sys::quote_identifier(p))
                .to_string_lossy()
                .into_owned()
        };
        format!("{}.{}", quoted(nsp), quoted(rel))
    }
}

/// Rows wait here until a multi-insert takes them.
const BUFFERED: usize = 1000;

/// The trail opened for one batch.
pub struct Trail {
    /// The partitioned trail, its result relation (for constraints) and the routing state.
    rel: pg_sys::Relation,
    rri: *mut pg_sys::ResultRelInfo,
    estate: *mut pg_sys::EState,
    mtstate: *mut pg_sys::ModifyTableState,
    proute: *mut c_void,
    /// The partition the buffered rows go to.
    target: *mut pg_sys::ResultRelInfo,
    /// An unpinned copy of the trail's row type for the slots. A slot of the relation's own
    /// descriptor pins it in the resource owner, and a batch makes up to BUFFERED slots: the
    /// pins cost about 10 000 instructions per slot, a seventh of storing its row.
    slot_desc: pg_sys::TupleDesc,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    /// Attribute index (0-based) of each `Col`, and of `id`.
    attr: [usize; NCOLS],
    id_attr: usize,
    id_sequence: pg_sys::Oid,
    has_constraints: bool,
    chain_attr: usize,
    /// The chain value of the last row inserted, and of the last row flushed (a discarded
    /// row's link is undone).
    chain: Vec<u8>,
    chain_flushed: Vec<u8>,
    /// Scratch: the row's bytes, hashed after the previous chain value.
    row_bytes: Vec<u8>,
    sha: chain::Sha256,
    /// The columns the chain takes by their digest (chain::REDACTABLE).
    digested: Vec<bool>,
}

impl Trail {
    /// open locks the trail for inserting; call inside the batch transaction.
    pub fn open() -> Trail {
        // SAFETY: the executor's own set-up for a single-table insert (as COPY FROM does),
        // in the transaction's memory context.
        unsafe {
            let nsp = pg_sys::get_namespace_oid(c"activity_log".as_ptr(), false);
            let relid = pg_sys::get_relname_relid(c"events".as_ptr(), nsp);
            if relid == pg_sys::InvalidOid {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                    "activity_log: the table activity_log.events does not exist",
                    None,
                );
            }
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
            let desc = (*rel).rd_att;
            let attnum = |name: &CStr| {
                let n = pg_sys::get_attnum(relid, name.as_ptr());
                if n <= 0 {
                    raise(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                        format!(
                            "activity_log: column {} of activity_log.events is missing",
                            name.to_string_lossy()
                        ),
                        None,
                    );
                }
                n
            };
            let mut attr = [0; NCOLS];
            for (i, name) in NAMES.iter().enumerate() {
                attr[i] = (attnum(name) - 1) as usize;
            }
            let id = attnum(c"id");
            let id_sequence = pg_sys::get_relname_relid(c"events_id_seq".as_ptr(), nsp);
            if id_sequence == pg_sys::InvalidOid {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                    "activity_log: the sequence activity_log.events_id_seq does not exist",
                    None,
                );
            }

            let estate = pg_sys::CreateExecutorState();
            let rri = pg_sys::palloc0(size_of::<pg_sys::ResultRelInfo>()).cast();
            // Range-table index 0: the executor state has no range table, and an error report
            // of a refused row then shows the whole row (the writer may read every column).
            pg_sys::InitResultRelInfo(rri, rel, 0, std::ptr::null_mut(), 0);
            // The ModifyTableState COPY FROM makes for routing: no plan, one result relation.
            let mtstate: *mut pg_sys::ModifyTableState =
                pg_sys::palloc0(size_of::<pg_sys::ModifyTableState>()).cast();
            (*mtstate).ps.type_ = pg_sys::NodeTag::T_ModifyTableState;
            (*mtstate).ps.state = estate;
            (*mtstate).operation = pg_sys::CmdType::CMD_INSERT;
            (*mtstate).mt_nrels = 1;
            (*mtstate).resultRelInfo = rri;
            (*mtstate).rootResultRelInfo = rri;
            let proute =
                pg_sys::ffi::pg_guard_ffi_boundary(|| ExecSetupPartitionTupleRouting(estate, rel));
            let constr = (*desc).constr;
            // The first slot now, in the batch transaction's memory context: insert_one_by_one
            // uses only it, inside subtransactions.
            let slot_desc = pg_sys::CreateTupleDescCopy(desc);
            let first =
                pg_sys::MakeSingleTupleTableSlot(slot_desc, pg_sys::table_slot_callbacks(rel));
            // The chain links the writer's rows in id order and continues from its newest (or,
            // when retention dropped every row, from the newest dropped one); rows added by
            // others have no chain value and are not links (verify reports them).
            let last = chain::link_before(i64::MAX);
            Trail {
                rel,
                rri,
                estate,
                mtstate,
                proute,
                target: std::ptr::null_mut(),
                slot_desc,
                slots: vec![first],
                used: 0,
                attr,
                id_attr: (id - 1) as usize,
                id_sequence,
                has_constraints: !constr.is_null()
                    && ((*constr).has_not_null || (*constr).num_check > 0),
                chain_attr: (attnum(c"chain") - 1) as usize,
                chain: last.clone(),
                chain_flushed: last,
                row_bytes: Vec::new(),
                sha: chain::Sha256::new(),
                digested: chain::digested(desc),
            }
        }
    }

    /// insert adds one row; it reaches the table at the next multi-insert.
    pub fn insert(&mut self, row: &Row) {
        if self.used == self.slots.len() {
            // SAFETY: a new slot of the trail's own type.
            self.slots.push(unsafe {
                pg_sys::MakeSingleTupleTableSlot(
                    self.slot_desc,
                    pg_sys::table_slot_callbacks(self.rel),
                )
            });
        }
        let slot = self.slots[self.used];
        self.fill(slot, row);
        // SAFETY: the slot holds a stored virtual tuple of the trail's type; routing may open
        // the partition (kept in the routing state until close()).
        let partition = unsafe { self.route(slot) };
        if partition != self.target {
            // The buffer holds one partition's rows: store them, and move this row's slot first.
            let at = self.used;
            self.flush();
            self.slots.swap(0, at);
            self.target = partition;
        }
        // SAFETY: values and nulls of a stored virtual tuple of the trail's descriptor; the
        // Datums live in the batch transaction, longer than the slot needs them.
        unsafe {
            let (values, nulls) = self.columns(slot);
            self.row_bytes.clear();
            chain::row_bytes(
                (*self.rel).rd_att,
                values,
                nulls,
                self.chain_attr,
                &self.digested,
                &[],
                &mut self.row_bytes,
            );
            let link = self.sha.link(&self.chain, &self.row_bytes);
            values[self.chain_attr] = chain::bytea(&link);
            nulls[self.chain_attr] = false;
            self.chain = link.to_vec();
            if self.has_constraints {
                pg_sys::ExecConstraints(self.rri, slot, self.estate);
            }
        }
        self.used += 1;
        if self.used == BUFFERED {
            self.flush();
        }
    }

    /// columns lends a slot's values and nulls arrays.
    ///
    /// # Safety
    /// `slot` is a slot of the trail's own descriptor, not otherwise borrowed meanwhile.
    unsafe fn columns<'s>(
        &self,
        slot: *mut pg_sys::TupleTableSlot,
    ) -> (&'s mut [pg_sys::Datum], &'s mut [bool]) {
        unsafe {
            let natts = (*(*self.rel).rd_att).natts as usize;
            (
                std::slice::from_raw_parts_mut((*slot).tts_values, natts),
                std::slice::from_raw_parts_mut((*slot).tts_isnull, natts),
            )
        }
    }

    /// fill stores `row` with a fresh id and no chain value in `slot` as a virtual tuple.
    fn fill(&self, slot: *mut pg_sys::TupleTableSlot, row: &Row) {
        // SAFETY: a slot of the trail's own type; its values/isnull arrays have natts entries.
        // id_sequence is the trail's sequence, looked up when the trail was opened.
        unsafe {
            let sequence = self.id_sequence;
            // One guard for the two calls (see crate::unguarded).
            let id = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                clear_slot(slot);
                nextval_internal(sequence, false)
            });
            let (values, nulls) = self.columns(slot);
            nulls.fill(true);
            for (c, &a) in self.attr.iter().enumerate() {
                values[a] = row.values[c];
                nulls[a] = row.nulls[c];
            }
            values[self.id_attr] = pg_sys::Datum::from(id);
            nulls[self.id_attr] = false;
            pg_sys::ExecStoreVirtualTuple(slot);
        }
    }

    /// route finds (opening it the first time) the partition a filled slot belongs to.
    ///
    /// # Safety
    /// `slot` holds a stored tuple of the trail's descriptor.
    unsafe fn route(&self, slot: *mut pg_sys::TupleTableSlot) -> *mut pg_sys::ResultRelInfo {
        unsafe {
            let partition = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                ExecFindPartition(self.mtstate, self.rri, self.proute, slot, self.estate)
            });
            if !crate::versions::root_to_partition_map(partition, self.estate).is_null() {
                let name =
                    CStr::from_ptr(pg_sys::get_rel_name((*(*partition).ri_RelationDesc).rd_id));
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
                    format!(
                        "activity_log: partition {} of activity_log.events has its columns laid out differently from the trail",
                        name.to_string_lossy()
                    ),
                    None,
                );
            }
            partition
        }
    }

    /// open_partitions opens the partitions `rows` go to before any of them is inserted, so
    /// that none is opened inside a subtransaction that may roll back (insert_one_by_one):
    /// the partition stays in the routing state after the subtransaction is gone.
    pub fn open_partitions<'a>(&mut self, rows: impl Iterator<Item = &'a Row>) {
        let probe = self.slots[0];
        let mut committed_at = None;
        for row in rows {
            let at = row.values[Col::CommittedAt as usize];
            if committed_at == Some(at) {
                continue;
            }
            committed_at = Some(at);
            // SAFETY: a virtual tuple with only the partition key set, cleared again before
            // any insert uses the slot.
            unsafe {
                pg_sys::ExecClearTuple(probe);
                let (values, nulls) = self.columns(probe);
                nulls.fill(true);
                values[self.attr[Col::CommittedAt as usize]] = at;
                nulls[self.attr[Col::CommittedAt as usize]] = row.nulls[Col::CommittedAt as usize];
                pg_sys::ExecStoreVirtualTuple(probe);
                self.route(probe);
                pg_sys::ExecClearTuple(probe);
            }
        }
    }

    /// as_text prints a row as the trail's row type does (id NULL): what the dead-letter
    /// table keeps of a row the trail refused.
    pub fn as_text(&self, row: &Row) -> String {
        // SAFETY: a tuple formed from the row's Datums with the trail's own descriptor and
        // printed by record_out, all palloc'd in the current (sub)transaction.
        unsafe {
            let desc = (*self.rel).rd_att;
            let natts = (*desc).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![true; natts];
            for (c, &a) in self.attr.iter().enumerate() {
                values[a] = row.values[c];
                nulls[a] = row.nulls[c];
            }
            let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            let datum = pg_sys::heap_copy_tuple_as_datum(tuple, desc);
            let text =
                pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_RECORD_OUT), datum);
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    }

    /// flush writes the buffered rows and their index entries.
    pub fn flush(&mut self) {
        if self.used == 0 {
            return;
        }
        // SAFETY: table_multi_insert as COPY FROM calls it, then each slot's index entries
        // (the multi-insert set every slot's tts_tid).
        unsafe {
            let partition = (*self.target).ri_RelationDesc;
            let am = (*partition).rd_tableam;
            let multi_insert = (*am).multi_insert.expect("table AM without multi_insert");
            let cid = pg_sys::GetCurrentCommandId(true);
            let slots = self.slots.as_mut_ptr();
            let n = self.used as i32;
            // A table AM callback is a raw C function pointer: its ERRORs (a full disk, say)
            // must become Rust panics here, or they would jump past every catch of ours. One
            // guard for the whole flush (see crate::unguarded).
            let (target, estate) = (self.target, self.estate);
            let buffered = &self.slots[..self.used];
            pg_sys::ffi::pg_guard_ffi_boundary(|| {
                multi_insert(partition, slots, n, cid, 0, std::ptr::null_mut());
                for &slot in buffered {
                    let econtext = (*estate).es_per_tuple_exprcontext;
                    if !econtext.is_null() {
                        unguarded::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
                    }
                    if (*target).ri_NumIndices > 0 {
                        unguarded::insert_index_tuples(target, slot, estate);
                    }
                    clear_slot(slot);
                }
            });
        }
        self.used = 0;
        self.chain_flushed.clone_from(&self.chain);
    }

    /// discard forgets buffered rows (their subtransaction rolled back), and what the index
    /// access methods kept of their inserts (crate::versions::forget_index_inserts).
    pub fn discard(&mut self) {
        self.used = 0;
        self.chain.clone_from(&self.chain_flushed);
        if !self.target.is_null() {
            // SAFETY: the target's indexes are open; the subtransaction has rolled back.
            unsafe { crate::versions::forget_index_inserts(self.target) };
        }
    }

    /// end_index_inserts releases what the index access methods keep between inserts into
    /// the last target (crate::versions::end_index_inserts): call it before the
    /// subtransaction the rows were flushed in ends, and before one begins.
    pub fn end_index_inserts(&mut self) {
        if !self.target.is_null() {
            let target = self.target;
            // SAFETY: the target's indexes are open until close(); an index AM's callback is a
            // raw C function pointer, hence the guard (as in flush).
            unsafe {
                pg_sys::ffi::pg_guard_ffi_boundary(|| crate::versions::end_index_inserts(target))
            };
        }
    }

    /// close writes what is buffered and releases the table; call before commit.
    pub fn close(mut self) {
        self.flush();
        // SAFETY: releasing what open() acquired, in reverse order; the lock stays until
        // commit, as for any insert.
        unsafe {
            for &slot in &self.slots {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            // Closes every partition routing opened, with its indexes.
            pg_sys::ffi::pg_guard_ffi_boundary(|| {
                ExecCleanupTupleRouting(self.mtstate, self.proute)
            });
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::table_close(self.rel, pg_sys::NoLock as i32);
        }
    }
}
