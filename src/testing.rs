//! Helpers for `#[pg_test]`s: run a statement and capture the error it raises, inside a
//! PL/pgSQL exception block (a subtransaction), so the test's own transaction goes on; and the
//! users table the backfill tests read.

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

/// Called first by every `#[pg_test]` that calls a function writing the extension's tables. pgrx
/// runs the tests side by side, each in a transaction of its own, and many bind the same ids for
/// the same users (ALICE, WALLET_A). Two such transactions binding overlapping ids in different
/// orders deadlock on each other's uncommitted rows, as any two application transactions would.
/// Taking turns on one advisory lock (released when the test's transaction ends) keeps the suite
/// free of that flake.
pub fn take_turns() {
    Spi::run("SELECT pg_advisory_xact_lock(hashtext('identity_bindings pg_tests'))")
        .expect("the pg_tests' advisory lock is taken");
}

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

/// Whether every check of `identity.check_integrity()` passes.
pub fn integrity_is_clean() -> bool {
    Spi::get_one::<bool>("SELECT bool_and(ok) FROM identity.check_integrity()")
        .expect("identity.check_integrity() runs")
        == Some(true)
}

/// The spruceid "example message" (signer 0x9D85…37D4, nonce bTyXgcQxn2htgkjJn, expires 2100).
pub const SIWE_EXAMPLE_MESSAGE: &str = "login.xyz wants you to sign in with your Ethereum account:\n0x9D85ca56217D2bb651b00f15e694EB7E713637D4\n\nSign-In With Ethereum Example Statement\n\nURI: https://login.xyz\nVersion: 1\nChain ID: 1\nNonce: bTyXgcQxn2htgkjJn\nIssued At: 2022-01-27T17:09:38.578Z\nExpiration Time: 2100-01-07T14:31:43.952Z";
pub const SIWE_EXAMPLE_SIGNATURE: &str = "0xdc35c7f8ba2720df052e0092556456127f00f7707eaa8e3bbff7e56774e7f2e05a093cfc9e02964c33d86e8e066e221b7d153d27e5a2e97ccd5ca7d3f2ce06cb1b";
/// Stores the example's nonce as if identity.issue_nonce had issued it.
pub const ISSUE_EXAMPLE_NONCE: &str = "INSERT INTO identity.siwe_nonces (nonce, expires_at) VALUES ('bTyXgcQxn2htgkjJn', now() + interval '10 minutes')";

pub const WALLET_A: &str = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed";
const WALLET_B: &str = "0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359";

/// An application's users table for the backfill tests, `app_users (uid text, eth text)`: two
/// users with wallets of their own, a third with the first one's wallet, a non-UUID id, an
/// invalid wallet and a user without one. Backfilled in id order: scanned 6, created 2,
/// existing 0, conflicts 1, invalid 2.
pub fn six_app_users() {
    Spi::run(&format!(
        "CREATE TABLE app_users (uid text PRIMARY KEY, eth text);
         INSERT INTO app_users VALUES
           ('00000000-0000-4000-8000-000000000001', '{WALLET_A}'),
           ('00000000-0000-4000-8000-000000000002', '{WALLET_B}'),
           ('00000000-0000-4000-8000-000000000003', '{WALLET_A}'),  -- duplicate wallet
           ('not-a-uuid',                           '{WALLET_B}'),
           ('00000000-0000-4000-8000-000000000004', '0x1234'),      -- invalid wallet
           ('00000000-0000-4000-8000-000000000005', NULL)"
    ))
    .unwrap();
}
