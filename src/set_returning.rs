//! Set-returning functions that return all their rows from one call (materialize mode).
//!
//! pgrx returns a set one row per call, plus one more call to say it is done. Every call of a
//! `SECURITY DEFINER ... SET search_path` function saves, sets and restores that setting, so a
//! hot function returning one row pays for it twice, and one returning 10,000 rows 10,001 times.
//! The functions that matter are written to the C calling convention instead, and hand their rows
//! to PostgreSQL here, in one tuplestore.

use pgrx::pg_sys;

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
        for row in rows {
            let mut nulls = row.map(|column| column.is_none());
            let mut values = row.map(|column| column.unwrap_or(pg_sys::Datum::from(0)));
            pg_sys::tuplestore_putvalues(
                (*result).setResult,
                (*result).setDesc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
        }
    }
    pg_sys::Datum::from(0)
}

/// The `pg_finfo_<symbol>` record PostgreSQL looks up for every C-language function: version 1.
pub const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
