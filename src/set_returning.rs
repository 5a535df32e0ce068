//! Set-returning functions that return all their rows from one call (materialize mode).
//!
//! pgrx returns a set one row per call, plus one more call to say it is done. Every call of a
//! `SECURITY DEFINER ... SET search_path` function saves, sets and restores that setting, so a
//! hot function returning one row pays for it twice, and one returning 10,000 rows 10,001 times.
//! The functions that matter are written to the C calling convention instead, and hand their rows
//! to PostgreSQL here, in one tuplestore.

use pgrx::pg_sys;
use pgrx::PgMemoryContexts;

/// Puts `rows` (one datum or NULL per declared output column) into the tuplestore of the
/// set-returning function called with `fcinfo`, and returns the datum the function returns.
///
/// # Safety
/// `fcinfo` is the call of a set-returning function declared with exactly `COLUMNS` output
/// columns, and each row's datums have the declared types and live in the current memory context.
pub unsafe fn return_rows<const COLUMNS: usize>(
    fcinfo: pg_sys::FunctionCallInfo,
    rows: impl IntoIterator<Item = [Option<pg_sys::Datum>; COLUMNS]>,
) -> pg_sys::Datum {
    // SAFETY: as the caller promises.
    let result = unsafe { materialized_result(fcinfo) };
    for row in rows {
        // SAFETY: the tuplestore was built just now, for rows of this shape.
        unsafe { put_row(result, row) };
    }
    pg_sys::Datum::from(0)
}

/// Where a set-returning function puts its rows one at a time, as it makes them: each row goes
/// to the tuplestore (which spills to disk past work_mem), and the memory its datums took is
/// freed at once, so a function that returns a row per user needs no memory per user.
pub struct RowSink<const COLUMNS: usize> {
    result: *mut pg_sys::ReturnSetInfo,
    /// A child of the function's context, deleted when the sink is (or with its parent).
    scratch: PgMemoryContexts,
}

impl<const COLUMNS: usize> RowSink<COLUMNS> {
    /// # Safety
    /// `fcinfo` is the call of a set-returning function declared with exactly `COLUMNS` output
    /// columns, and every row put has the declared types.
    pub unsafe fn new(fcinfo: pg_sys::FunctionCallInfo) -> Self {
        RowSink {
            // SAFETY: as the caller promises.
            result: unsafe { materialized_result(fcinfo) },
            scratch: PgMemoryContexts::new("identity_bindings rows"),
        }
    }

    /// Builds one row's datums with `row`, in memory freed once the tuplestore has copied them.
    pub fn put(&mut self, row: impl FnOnce() -> [Option<pg_sys::Datum>; COLUMNS]) {
        // SAFETY: the scratch context is alive (the sink owns it); the datums made in it are
        // copied by tuplestore_putvalues, whose tuplestore is of rows of this shape (see `new`),
        // before the context is reset.
        unsafe {
            let datums = self.scratch.switch_to(|_| row());
            put_row(self.result, datums);
            self.scratch.reset();
        }
    }

    /// The datum the function returns, its rows all put (the scratch context goes with the sink).
    pub fn finish(self) -> pg_sys::Datum {
        pg_sys::Datum::from(0)
    }
}

/// Switches the call to materialize mode and returns its result info, with the tuplestore built.
///
/// # Safety
/// `fcinfo` is the call of a set-returning function.
unsafe fn materialized_result(fcinfo: pg_sys::FunctionCallInfo) -> *mut pg_sys::ReturnSetInfo {
    // SAFETY: as the caller promises; InitMaterializedSRF checks that the caller accepts
    // materialize mode and builds the tuplestore. Its descriptor is a copy of the one the caller
    // expects when there is one (a function scan's): building it from the function's declared
    // result type instead reads the catalog on every call.
    unsafe {
        let result = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
        let expects_desc = !result.is_null()
            && (*result).type_ == pg_sys::NodeTag::T_ReturnSetInfo
            && !(*result).expectedDesc.is_null();
        let flags = if expects_desc {
            pg_sys::MAT_SRF_USE_EXPECTED_DESC
        } else {
            0
        };
        pg_sys::InitMaterializedSRF(fcinfo, flags);
        result
    }
}

/// # Safety
/// `result`'s tuplestore holds rows of `COLUMNS` columns of the types of `row`'s datums.
unsafe fn put_row<const COLUMNS: usize>(
    result: *mut pg_sys::ReturnSetInfo,
    row: [Option<pg_sys::Datum>; COLUMNS],
) {
    let mut nulls = row.map(|column| column.is_none());
    let mut values = row.map(|column| column.unwrap_or(pg_sys::Datum::from(0)));
    // SAFETY: as the caller promises; tuplestore_putvalues copies the values into the store.
    unsafe {
        pg_sys::tuplestore_putvalues(
            (*result).setResult,
            (*result).setDesc,
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
    }
}

/// The `pg_finfo_<symbol>` record PostgreSQL looks up for every C-language function: version 1.
pub const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
