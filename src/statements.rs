//! SQL statements prepared once per backend and kept, so the hot paths (create_binding, resolve)
//! never parse or plan SQL per call. PostgreSQL's plan cache re-validates a kept plan after DDL,
//! so a kept statement stays correct across ALTER/DROP/CREATE EXTENSION in the same session.
//!
//! Every statement names its tables schema-qualified, and the functions that run them pin
//! `search_path = pg_catalog, pg_temp`: nothing a caller creates can change what they mean.

use crate::errors::IdentityError;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiCursor, SpiResult, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// One statement of the extension: its text, its parameter types, and whether it writes.
pub struct Statement {
    sql: &'static str,
    params: &'static [pg_sys::Oid],
    writes: bool,
}

thread_local! {
    // Keyed by the address of the `Statement` static: each is prepared once per backend.
    static PREPARED: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

impl Statement {
    /// A read: while this transaction has written nothing, runs on the caller's snapshot (so a
    /// STABLE function sees one consistent state) and takes no transaction id; once it has
    /// written, each execution takes a fresh snapshot, as a write does (see `run`).
    pub const fn read(sql: &'static str, params: &'static [pg_sys::Oid]) -> Self {
        Statement {
            sql,
            params,
            writes: false,
        }
    }

    /// A write (or a locking read): each execution takes a fresh snapshot, which the chain-head
    /// locking in events.rs relies on under READ COMMITTED. Running one assigns this transaction
    /// an id (pgrx's `update`), even when it writes nothing: never use it for a plain read.
    pub const fn write(sql: &'static str, params: &'static [pg_sys::Oid]) -> Self {
        Statement {
            sql,
            params,
            writes: true,
        }
    }

    fn prepared(&'static self, client: &SpiClient<'_>) -> SpiResult<Rc<OwnedPreparedStatement>> {
        let key = self as *const Statement as usize;
        if let Some(kept) = PREPARED.with(|cache| cache.borrow().get(&key).cloned()) {
            return Ok(kept);
        }
        let params: Vec<PgOid> = self.params.iter().map(|&oid| PgOid::from(oid)).collect();
        let prepared = if self.writes {
            client.prepare_mut(self.sql, &params)?
        } else {
            client.prepare(self.sql, &params)?
        };
        let kept = Rc::new(prepared.keep());
        PREPARED.with(|cache| cache.borrow_mut().insert(key, Rc::clone(&kept)));
        Ok(kept)
    }

    /// Runs the statement with `args` (one per declared parameter, in order).
    pub fn run<'conn>(
        &'static self,
        client: &mut SpiClient<'conn>,
        args: &[DatumWithOid<'_>],
    ) -> SpiResult<SpiTupleTable<'conn>> {
        let prepared = self.prepared(client)?;
        if self.writes {
            return client.update(&*prepared, None, args);
        }
        // pgrx's `select` takes a fresh snapshot once the current subtransaction has written. In
        // one that has not, of a transaction that has (a job of a pass, a login's binding step),
        // it would read on the statement's snapshot: a job late in a pass would not see a merge
        // that committed after the pass began.
        // SAFETY: reads transaction state; the snapshot pushed here is popped after the read (an
        // ERROR instead aborts the subtransaction, which pops it).
        let behind = unsafe {
            transaction_has_written()
                && pg_sys::GetCurrentTransactionIdIfAny() == pg_sys::InvalidTransactionId
        };
        if !behind {
            return client.select(&*prepared, None, args);
        }
        unsafe { push_fresh_snapshot() };
        let rows = client.select(&*prepared, None, args);
        unsafe { pg_sys::PopActiveSnapshot() };
        rows
    }

    /// Runs the statement and returns the uuid in the first column of its first row: `None`
    /// when it returns no row (where `first().get_one()` would fail) or NULL there.
    pub fn first_uuid(
        &'static self,
        client: &mut SpiClient<'_>,
        args: &[DatumWithOid<'_>],
    ) -> Result<Option<pgrx::Uuid>, IdentityError> {
        let rows = self.run(client, args)?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(rows.first().get_one::<pgrx::Uuid>()?)
    }

    /// Runs the statement (a read) with `args` and hands its rows to `each_batch`, up to `batch`
    /// rows at a time (see `fetch_in_batches`).
    pub fn read_in_batches(
        &'static self,
        client: &mut SpiClient<'_>,
        args: &[DatumWithOid<'_>],
        batch: i64,
        each_batch: impl FnMut(SpiTupleTable<'_>) -> Result<(), IdentityError>,
    ) -> Result<(), IdentityError> {
        debug_assert!(!self.writes, "a write is never read in batches");
        let prepared = self.prepared(client)?;
        let cursor = client.try_open_cursor(&*prepared, args)?;
        fetch_in_batches(cursor, batch, each_batch)
    }
}

/// Whether this transaction has written, in any of its subtransactions (then it has an id).
pub fn transaction_has_written() -> bool {
    // SAFETY: reads the backend's transaction state; no preconditions.
    unsafe { pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId }
}

/// Makes a new snapshot the active one, as SPI does before a statement of a transaction that has
/// written: its own writes become visible, and (under READ COMMITTED) what others committed since.
///
/// # Safety
/// Inside a transaction; the caller pops the snapshot (`PopActiveSnapshot`) when it is done.
pub unsafe fn push_fresh_snapshot() {
    pg_sys::CommandCounterIncrement();
    pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
}

/// Refuses to write where the transaction is read-only, with PostgreSQL's own SQLSTATE for it
/// (25006) and a message that says where to write. Every function that writes calls it first, so
/// it is refused whatever it would find, as PostgreSQL refuses an `INSERT … ON CONFLICT DO
/// NOTHING` that would insert nothing: an idempotent repeat on a standby is refused too, not
/// answered from what the standby has replayed so far. Without it, a write on a hot standby,
/// where every transaction is read-only, failed as an internal error (XX000, "cannot assign
/// TransactionIds during recovery") that named neither the cause nor the fix: pgrx's `update`
/// takes a transaction id before PostgreSQL's own read-only check runs.
pub fn writable() -> Result<(), IdentityError> {
    // SAFETY: reads the backend's transaction state and the recovery flag; no preconditions.
    if unsafe { pg_sys::XactReadOnly } {
        let in_recovery = unsafe { pg_sys::RecoveryInProgress() };
        return Err(IdentityError::ReadOnly { in_recovery });
    }
    Ok(())
}

/// Hands the rows of `cursor` to `each_batch`, up to `batch` rows at a time, freeing each batch
/// before fetching the next. A large result is never held whole: its memory is reused from batch
/// to batch instead of being taken from the operating system (page faults and all) and given
/// back on every call.
pub fn fetch_in_batches(
    mut cursor: SpiCursor<'_>,
    batch: i64,
    mut each_batch: impl FnMut(SpiTupleTable<'_>) -> Result<(), IdentityError>,
) -> Result<(), IdentityError> {
    loop {
        let rows = cursor.fetch(batch)?;
        let fetched = rows.len();
        each_batch(rows)?;
        free_last_result();
        if fetched < batch as usize {
            return Ok(());
        }
    }
}

/// Frees the result of the last SPI statement. pgrx keeps every result until its connection ends,
/// so a loop that runs statements or fetches batches on one connection frees each result once it
/// has copied what it needs: memory then stays flat however many rows go through.
pub fn free_last_result() {
    // SAFETY: SPI_tuptable is the last result of this backend's current SPI connection; nothing
    // refers to it once the caller has copied its rows out.
    unsafe {
        if !pg_sys::SPI_tuptable.is_null() {
            pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable);
            pg_sys::SPI_tuptable = std::ptr::null_mut();
        }
    }
}

/// The rows of `rows`, which must be the last SPI result of two columns, text and uuid, as pairs
/// of the text's bytes and the uuid; rows with a NULL are left out. It reads the result directly:
/// pgrx's per-value access checks the type and copies each value, which for the 10,000 rows of a
/// resolve_many call cost a tenth of the call. The bytes live as long as `rows`.
pub fn text_uuid_rows<'conn>(
    rows: &SpiTupleTable<'conn>,
) -> Result<Vec<(&'conn [u8], pgrx::Uuid)>, IdentityError> {
    // SAFETY: SPI_tuptable is `rows`' result, which lives until its connection ends or, for a
    // batch of `read_in_batches`, until the batch has been handled; every row index is below its
    // row count; the two columns are checked to be text and uuid, and a non-NULL text datum is a
    // varlena (detoasted here if the heap stored it compressed or out of line), a uuid datum a
    // pointer to 16 bytes.
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() || (*table).numvals as usize != rows.len() {
            return Err(IdentityError::Internal("not the last SPI result".into()));
        }
        let desc = (*table).tupdesc;
        if pg_sys::SPI_gettypeid(desc, 1) != pg_sys::TEXTOID
            || pg_sys::SPI_gettypeid(desc, 2) != pg_sys::UUIDOID
        {
            return Err(IdentityError::Internal("expected (text, uuid) rows".into()));
        }
        let tuples = std::slice::from_raw_parts((*table).vals, rows.len());
        let mut pairs = Vec::with_capacity(tuples.len());
        for &tuple in tuples {
            let (mut text_is_null, mut uuid_is_null) = (false, false);
            let text = pg_sys::heap_getattr(tuple, 1, desc, &mut text_is_null);
            let uuid = pg_sys::heap_getattr(tuple, 2, desc, &mut uuid_is_null);
            if text_is_null || uuid_is_null {
                continue;
            }
            let text = pg_sys::pg_detoast_datum_packed(text.cast_mut_ptr());
            let bytes = std::slice::from_raw_parts(
                pgrx::varlena::vardata_any(text).cast::<u8>(),
                pgrx::varlena::varsize_any_exhdr(text),
            );
            pairs.push((
                bytes,
                pgrx::Uuid::from_bytes(*uuid.cast_mut_ptr::<[u8; 16]>()),
            ));
        }
        Ok(pairs)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{
        error_of, six_app_users, take_turns, ISSUE_EXAMPLE_NONCE, SIWE_EXAMPLE_MESSAGE,
        SIWE_EXAMPLE_SIGNATURE,
    };
    use pgrx::pg_sys;
    use pgrx::prelude::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::ffi::{c_char, c_int, CStr};

    const ALICE: &str = "00000000-0000-4000-8000-00000000a11c";
    const BOB: &str = "00000000-0000-4000-8000-000000000b0b";

    /// The SQLSTATE and message of `call` (an item of a SELECT list) in a read-only transaction.
    fn read_only_error_of(call: &str) -> (String, String) {
        error_of(&format!(
            "SELECT {call} FROM (SELECT set_config('transaction_read_only', 'on', true)) AS read_only"
        ))
    }

    fn bind_alice() {
        take_turns();
        Spi::run(&format!(
            "SELECT identity.create_binding('{ALICE}', 'github', '42', '{{}}')"
        ))
        .unwrap();
    }

    #[pg_test]
    fn every_write_in_a_read_only_transaction_is_25006_and_says_so() {
        bind_alice();
        six_app_users();
        let refused = (
            "25006".to_owned(),
            "identity_bindings cannot write in a read-only transaction".to_owned(),
        );
        for call in [
            format!("identity.create_binding('{BOB}', 'github', '43')"),
            // A repeat would write nothing, and is refused all the same.
            format!("identity.create_binding('{ALICE}', 'github', '42')"),
            "identity.revoke_binding('github', '42', '{}')".into(),
            format!("identity.merge_users('{ALICE}', '{BOB}', '{{}}')"),
            "identity.issue_nonce()".into(),
            format!("identity.enqueue_binding('{BOB}', 'github', '43')"),
            "identity.run_binding_jobs()".into(),
            "identity.register_provider('read_only_test', '[a-z]+')".into(),
            "identity.backfill_wallet_bindings('app_users', 'uid', 'eth')".into(),
            "identity.backstop('app_users', 'uid', 'eth')".into(),
            "identity.backfill_wallet_batch('app_users', 'uid', 'eth', 10, NULL)".into(),
            "identity.backfill_plan('app_users', 'uid', 'eth', 10, NULL)".into(),
            "identity.backfill_step(1)".into(),
            "identity.backfill_launch_workers(1)".into(),
            // Refused before the message is read: the login would spend its nonce.
            "identity.siwe_login('a message', '0x00', 'example.com')".into(),
            format!("identity.siwe_bind('{BOB}', 'a message', '0x00', 'example.com')"),
        ] {
            assert_eq!(read_only_error_of(&call), refused, "{call}");
        }
    }

    thread_local! {
        static PLANNED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        static PREVIOUS_PLANNER: Cell<pg_sys::planner_hook_type> = const { Cell::new(None) };
    }

    /// A planner hook that notes the text of every statement planned, then plans it as before.
    unsafe extern "C-unwind" fn noting_planner(
        parse: *mut pg_sys::Query,
        query_string: *const c_char,
        cursor_options: c_int,
        bound_params: pg_sys::ParamListInfo,
    ) -> *mut pg_sys::PlannedStmt {
        let text = if query_string.is_null() {
            String::new()
        } else {
            // SAFETY: the planner's query string is a NUL-terminated C string.
            unsafe { CStr::from_ptr(query_string) }
                .to_string_lossy()
                .into_owned()
        };
        PLANNED.with(|planned| planned.borrow_mut().push(text));
        // SAFETY: the arguments are the planner's own, passed on unchanged.
        unsafe {
            match PREVIOUS_PLANNER.get() {
                Some(previous) => previous(parse, query_string, cursor_options, bound_params),
                None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
            }
        }
    }

    /// The text of every statement this backend planned while `work` ran.
    fn statements_planned_during(work: impl FnOnce()) -> Vec<String> {
        struct Hooked;
        impl Drop for Hooked {
            fn drop(&mut self) {
                // SAFETY: the backend's planner hook is restored on every path out, panics too.
                unsafe { pg_sys::planner_hook = PREVIOUS_PLANNER.get() };
            }
        }
        PLANNED.with(|planned| planned.borrow_mut().clear());
        // SAFETY: a backend-local hook; this backend runs one statement at a time.
        unsafe {
            PREVIOUS_PLANNER.set(pg_sys::planner_hook);
            pg_sys::planner_hook = Some(noting_planner);
        }
        let hooked = Hooked;
        work();
        drop(hooked);
        PLANNED.with(|planned| planned.take())
    }

    /// One round of every call an application makes often, on ids of the round's own.
    fn everyday_calls(round: usize) -> Vec<String> {
        let user = |kind: usize| format!("00000000-0000-4000-8000-{:012x}", kind * 1000 + round);
        let (alice, bob, carol) = (user(1), user(2), user(3));
        let id = |kind: usize| (kind * 1000 + round).to_string();
        vec![
            format!(
                "SELECT identity.create_binding('{alice}', 'github', '{}', '{{}}')",
                id(1)
            ),
            format!(
                "SELECT identity.create_binding('{alice}', 'github', '{}', '{{}}')",
                id(1)
            ),
            format!(
                "SELECT identity.create_binding('{alice}', 'discord', '{}', '{{}}')",
                id(2)
            ),
            format!(
                "SELECT identity.create_binding('{bob}', 'github', '{}', '{{}}')",
                id(3)
            ),
            format!("SELECT identity.resolve('github', '{}')", id(3)),
            format!(
                "SELECT identity.revoke_binding('github', '{}', '{{}}')",
                id(1)
            ),
            format!("SELECT identity.merge_users('{alice}', '{bob}', '{{}}')"),
            format!(
                "SELECT identity.enqueue_binding('{carol}', 'github', '{}', '{{}}')",
                id(4)
            ),
            "SELECT identity.run_binding_jobs(1)".into(),
            "SELECT identity.issue_nonce()".into(),
            ISSUE_EXAMPLE_NONCE.into(),
            format!(
                "SELECT identity.siwe_login($m${SIWE_EXAMPLE_MESSAGE}$m$, \
                 '{SIWE_EXAMPLE_SIGNATURE}', 'login.xyz')"
            ),
        ]
    }

    #[pg_test]
    fn everyday_calls_run_their_kept_statements_without_planning_them_again() {
        take_turns();
        // Tables that have grown: the plan cache compares a generic plan with the custom ones by
        // their estimated cost, which follows a table's size on disk. A flood of nonce requests
        // or of queued jobs grows a table that way, and so does a rolled-back one (another
        // test's): the nonce cleanup was planned again on every issue after such a flood.
        Spi::run(
            "INSERT INTO identity.siwe_nonces (nonce, expires_at)
             SELECT 'flood' || lpad(i::text, 11, '0'), now() + interval '1 minute'
               FROM generate_series(1, 20000) i;
             DELETE FROM identity.siwe_nonces WHERE nonce LIKE 'flood%';
             INSERT INTO identity.binding_jobs (job_key, user_id, provider, external_id, evidence)
             SELECT 'bind:github:' || i, gen_random_uuid(), 'github', i::text, '{}'
               FROM generate_series(900000, 920000) i;
             DELETE FROM identity.binding_jobs WHERE external_id::bigint >= 900000",
        )
        .unwrap();
        // Past the five custom plans the plan cache makes of each statement before it decides
        // whether a generic plan will do.
        for round in 0..10 {
            everyday_calls(round)
                .iter()
                .for_each(|call| Spi::run(call).unwrap());
        }
        let mut sent = Vec::new();
        let planned = statements_planned_during(|| {
            for round in 10..20 {
                for call in everyday_calls(round) {
                    Spi::run(&call).unwrap();
                    sent.push(call);
                }
            }
        });
        // Each call is planned as it is sent. Any other statement was one of the extension's:
        // planned again on most rounds, the plan cache never keeps a plan for it (an ANALYZE
        // under way may make a statement plan once more, never ten times).
        let mut times: HashMap<String, usize> = HashMap::new();
        for text in planned.into_iter().filter(|text| !sent.contains(text)) {
            *times.entry(text).or_default() += 1;
        }
        let planned_again: Vec<_> = times.into_iter().filter(|(_, n)| *n >= 5).collect();
        assert!(
            planned_again.is_empty(),
            "planned again on most of 10 rounds: {planned_again:#?}"
        );
    }

    #[pg_test]
    fn reads_answer_in_a_read_only_transaction() {
        bind_alice();
        for call in [
            "identity.resolve('github', '42')",
            "identity.resolve_many('github', ARRAY['42', '43'])",
            "identity.canonical_external_id('github', '42')",
            "identity.verify_event_chain()",
            "identity.check_integrity()",
            "identity.verify_binding((SELECT id FROM identity.user_bindings WHERE external_id = '42'))",
        ] {
            assert_eq!(
                read_only_error_of(call),
                ("00000".to_owned(), String::new()),
                "{call}"
            );
        }
    }
}
