//! Helpers for `#[pg_test]`s: run a statement and capture the error it raises, inside a
//! PL/pgSQL exception block (a subtransaction), so the test's own transaction goes on.

use pgrx::prelude::*;

const CAPTURE_ERROR: &str = "
CREATE OR REPLACE FUNCTION pg_temp.error_of(statement text, OUT code text, OUT message text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    code := '00000';
    message := '';
EXCEPTION WHEN OTHERS THEN
    code := SQLSTATE;
    message := SQLERRM;
END $$";

/// The SQLSTATE and message `statement` raises, or ("00000", "") when it succeeds.
pub fn error_of(statement: &str) -> (String, String) {
    Spi::run(CAPTURE_ERROR).expect("pg_temp.error_of is created");
    let (sqlstate, message) = Spi::get_two_with_args::<String, String>(
        "SELECT code, message FROM pg_temp.error_of($1)",
        &[statement.into()],
    )
    .expect("pg_temp.error_of runs");
    (sqlstate.unwrap_or_default(), message.unwrap_or_default())
}

/// The SQLSTATE `statement` raises, or "00000" when it succeeds.
pub fn sqlstate_of(statement: &str) -> String {
    error_of(statement).0
}
