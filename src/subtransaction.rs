//! Subtransactions: run a step so that, if it fails, its effects are undone and the caller's
//! transaction goes on, as a PL/pgSQL EXCEPTION block does. The retry queue runs each job in one,
//! and a login runs its binding step in one, so that a failed binding never fails the login.

use crate::errors::IdentityError;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::{CaughtError, ErrorReportWithLevel};
use pgrx::{PgSqlErrorCode, PgTryBuilder};
use std::ffi::CStr;
use std::fmt;
use std::panic::AssertUnwindSafe;

/// SQLSTATE serialization_failure.
pub const SERIALIZATION_FAILURE: &str = "40001";

// utils/timeout.h, which pgrx does not bind. STATEMENT_TIMEOUT has been TimeoutId 3 since
// PostgreSQL 9.3.
const STATEMENT_TIMEOUT: std::ffi::c_int = 3;
unsafe extern "C-unwind" {
    fn get_timeout_active(id: std::ffi::c_int) -> bool;
}

/// Why a step failed: its error code (and the SQLSTATE text of it) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    pub code: PgSqlErrorCode,
    pub sqlstate: String,
    pub message: String,
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.sqlstate, self.message)
    }
}

impl From<StepFailure> for IdentityError {
    /// The failure raised again as it was: same SQLSTATE, same message.
    fn from(failure: StepFailure) -> Self {
        IdentityError::StepFailed {
            code: failure.code,
            message: failure.message,
        }
    }
}

impl StepFailure {
    /// A serialization failure: this transaction's snapshot is older than a change it met, so
    /// only a new transaction can see what is there.
    pub fn is_serialization_failure(&self) -> bool {
        self.sqlstate == SERIALIZATION_FAILURE
    }

    /// A cancel request or a statement timeout (57014). PostgreSQL raises it once, for the whole
    /// statement: caught and not raised again, the rest of the statement would run on, unbounded.
    pub fn is_query_canceled(&self) -> bool {
        self.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED
    }

    /// A 57014 sent by a cancel request (`pg_cancel_backend`, a client that gave up), not by
    /// `statement_timeout`: the statement's timer is spent once it has fired, and a cancel leaves
    /// it armed.
    pub fn is_cancel_request(&self) -> bool {
        // SAFETY: reads the setting and the state of this backend's statement timer.
        self.is_query_canceled()
            && unsafe { pg_sys::StatementTimeout == 0 || get_timeout_active(STATEMENT_TIMEOUT) }
    }

    /// Failures that are worth retrying later: lock and serialization conflicts, deadlocks,
    /// timeouts, exhausted resources, lost connections. Everything else (another user owns the
    /// id, invalid input, a broken invariant) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.sqlstate.as_str(),
            SERIALIZATION_FAILURE | "40P01" | "55P03" | "57014" | "57P01"
        ) || self.sqlstate.starts_with("53")
            || self.sqlstate.starts_with("08")
    }
}

impl From<IdentityError> for StepFailure {
    fn from(error: IdentityError) -> Self {
        StepFailure::new(error.sqlstate(), error.to_string())
    }
}

impl StepFailure {
    fn new(code: PgSqlErrorCode, message: String) -> Self {
        // SAFETY: unpack_sql_state returns a pointer to a static buffer holding a 5-character code.
        let sqlstate = unsafe { CStr::from_ptr(pg_sys::unpack_sql_state(code as i32)) };
        StepFailure {
            code,
            sqlstate: sqlstate.to_string_lossy().into_owned(),
            message,
        }
    }
}

/// Runs `step` in a subtransaction. `Ok`: its effects stay (released into the caller's
/// transaction). An `Err` it returns, or an ERROR it raises: its effects are rolled back and the
/// failure is returned; the caller's transaction is untouched.
pub fn in_subtransaction<T>(
    step: impl FnOnce() -> Result<T, IdentityError>,
) -> Result<T, StepFailure> {
    // SAFETY: the PL/pgSQL pattern: remember the memory context and resource owner, begin an
    // internal subtransaction, and on every path end it (release or roll back) and restore both.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);

        // Unwind-safe by construction: whatever the step left half-done is rolled back below.
        let outcome = PgTryBuilder::new(AssertUnwindSafe(|| step().map_err(StepFailure::from)))
            .catch_others(|caught| Err(failure_of(caught)))
            .execute();

        match outcome {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        outcome
    }
}

/// The SQLSTATE and message of an error caught by `PgTryBuilder`, whichever way it was raised.
pub(crate) fn failure_of(caught: CaughtError) -> StepFailure {
    let report = report_of(&caught);
    StepFailure::new(report.sql_error_code(), report.message().to_owned())
}

/// The report of an error caught by `PgTryBuilder`, whichever way it was raised.
pub(crate) fn report_of(caught: &CaughtError) -> &ErrorReportWithLevel {
    match caught {
        CaughtError::PostgresError(report)
        | CaughtError::ErrorReport(report)
        | CaughtError::RustPanic {
            ereport: report, ..
        } => report,
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn a_failed_step_is_undone_and_the_transaction_goes_on() {
        Spi::run("CREATE TEMP TABLE steps (n int PRIMARY KEY)").unwrap();
        let kept = in_subtransaction(|| {
            Spi::run("INSERT INTO steps VALUES (1)").map_err(IdentityError::from)?;
            Ok(())
        });
        assert_eq!(kept, Ok(()));
        let failed = in_subtransaction(|| {
            Spi::run("INSERT INTO steps VALUES (2)").map_err(IdentityError::from)?;
            Spi::run("INSERT INTO steps VALUES (1)").map_err(IdentityError::from)?; // duplicate key
            Ok(())
        });
        let failure = failed.unwrap_err();
        assert_eq!(failure.sqlstate, "23505");
        assert!(!failure.is_transient());
        assert_eq!(
            Spi::get_one::<String>("SELECT string_agg(n::text, ',') FROM steps"),
            Ok(Some("1".into()))
        );
    }

    #[pg_test]
    fn an_error_returned_by_the_step_also_rolls_it_back() {
        Spi::run("CREATE TEMP TABLE steps (n int)").unwrap();
        let failed = in_subtransaction(|| -> Result<(), IdentityError> {
            Spi::run("INSERT INTO steps VALUES (1)").map_err(IdentityError::from)?;
            Err(IdentityError::ChainAppendConflict)
        });
        let failure = failed.unwrap_err();
        assert_eq!(failure.sqlstate, "40001");
        assert!(failure.is_transient());
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM steps"),
            Ok(Some(0))
        );
    }
}
