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
    /// written, each execution takes a fresh snapshot, as a write does (pgrx's `select`).
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
            client.update(&*prepared, None, args)
        } else {
            client.select(&*prepared, None, args)
        }
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
