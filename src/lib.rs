//! identity_bindings: one canonical, auth-method-agnostic identity per user, with the proof of
//! every account link kept inside PostgreSQL.
//!
//! `users.id` (a UUID) is the only identity; wallets, Discord and GitHub accounts are bindings
//! attached to it, each proven by an event in an append-only, hash-chained log.

// SQL-facing functions return pgrx's `ErrorReport` (SQLSTATE, message, hint): it is built only on
// the error path, where it becomes a PostgreSQL ERROR at once, so its size costs nothing.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod backfill;
mod backfill_run;
mod binding_index;
mod bindings;
pub mod eip55;
mod errors;
mod events;
mod evidence;
mod gucs;
mod integrity;
mod nonces;
mod providers;
mod retry;
mod set_returning;
pub mod siwe;
mod siwe_login;
mod statements;
mod subtransaction;
#[cfg(any(test, feature = "pg_test"))]
mod testing;
mod worker;

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/siwe.sql",
    name = "siwe_schema",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/retry.sql",
    name = "retry_schema",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/backfill.sql",
    name = "backfill_schema",
    requires = ["schema"]
);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

/// Runs when a backend loads the library: registers the settings (never postmaster-only ones,
/// so loading without shared_preload_libraries never breaks a session), and, when preloaded,
/// the background worker.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    // SAFETY: reads a postmaster flag. Workers can only be registered during preload.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        worker::register();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
