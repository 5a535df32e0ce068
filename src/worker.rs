//! The background worker: with `shared_preload_libraries = 'identity_bindings'` and
//! `identity.worker_database` set, it runs due binding jobs every `identity.worker_poll_interval`
//! (at once again after a pass that took its full 64) and the backstop every
//! `identity.backstop_interval`, where the extension is installed (elsewhere it runs nothing).
//! Each pass is its own transaction; a pass that fails is rolled back and logged, and the worker
//! goes on. SIGTERM ends it as it ends any backend, even in the middle of a pass (rolled back);
//! the postmaster starts it again 5 s after that or a crash, unless the server is shutting down.
//! It follows `identity.worker_database` on a reload: to another database (by a restart), or,
//! unset, to waiting until a reload sets it again.

use crate::gucs::{BACKSTOP_INTERVAL_S, WORKER_DATABASE, WORKER_POLL_INTERVAL_MS};
use crate::subtransaction::failure_of;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// Registers the worker; only possible while shared_preload_libraries is being processed. Not
/// when the server runs for pg_upgrade (binary upgrade mode): there the worker's connection kept
/// pg_upgrade from dropping and re-creating its database (`postgres`, say), so the upgrade
/// failed, and on the new server whatever it wrote would be lost under the old cluster's files.
/// PostgreSQL keeps autovacuum off in that mode for the same reasons.
pub fn register() {
    // SAFETY: reads a flag the postmaster sets from its command line before it loads libraries.
    if unsafe { pg_sys::IsBinaryUpgrade } {
        log!("identity_bindings worker: not started: the server runs for pg_upgrade");
        return;
    }
    BackgroundWorkerBuilder::new("identity_bindings worker")
        .set_type("identity_bindings worker")
        .set_library("identity_bindings")
        .set_function("identity_bindings_worker_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Jobs one pass takes at most. A pass is one transaction, and each job a subtransaction with
/// an id of its own: PostgreSQL caches 64 such ids per backend, and past them every snapshot
/// taken while the pass runs is marked overflowed, so other sessions' visibility checks of recent
/// rows go to pg_subtrans (PostgreSQL's docs, "Subtransactions"). Passes that follow each other
/// while a backlog drains would keep that so.
const JOBS_PER_PASS: i32 = 64;
// Every name qualified, as well as the search_path pinned (`pin_search_path`).
const RUN_JOBS: &str = "SELECT pg_catalog.count(*) FROM identity.run_binding_jobs($1)";
// The backstop's defaults read public.users; without that table there is nothing to check.
const BACKSTOP: &str =
    "SELECT identity.backstop() WHERE pg_catalog.to_regclass('public.users') IS NOT NULL";

// The worker runs as a superuser and calls the extension's functions by name. In a database
// without the extension, schema identity may be anyone's (a database's owner can create one), and
// the functions found there would run as that superuser: a pass runs only where schema identity
// is the extension's own.
const EXTENSION_INSTALLED: &str = "SELECT EXISTS (
    SELECT FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
     WHERE e.extname OPERATOR(pg_catalog.=) 'identity_bindings'
       AND n.nspname OPERATOR(pg_catalog.=) 'identity')";

const NOT_INSTALLED: &str = "the extension is not installed in this database, so nothing of \
    schema identity is run: CREATE EXTENSION identity_bindings there, or set \
    identity.worker_database to a database that has it";

/// Refuses to go on in a database where schema identity is not the extension's.
fn require_extension() -> Result<(), String> {
    match Spi::get_one::<bool>(EXTENSION_INSTALLED) {
        Ok(Some(true)) => Ok(()),
        Ok(_) => Err(NOT_INSTALLED.into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `sql` in a transaction of its own: committed if it succeeds, rolled back if it raises.
fn run_pass(sql: &str) -> Result<(), String> {
    in_transaction(|| {
        require_extension()?;
        Spi::run(sql).map_err(|e| e.to_string())
    })
}

/// Runs one pass of due jobs in a transaction of its own; how many jobs it took.
fn run_jobs_pass() -> Result<i64, String> {
    in_transaction(|| {
        require_extension()?;
        Spi::get_one_with_args::<i64>(RUN_JOBS, &[JOBS_PER_PASS.into()])
            .map(Option::unwrap_or_default)
            .map_err(|e| e.to_string())
    })
}

/// Runs `body` in a transaction of its own (a background worker's unit of work): committed if it
/// succeeds, rolled back if it returns an error or raises one, whose message it returns.
pub(crate) fn in_transaction<T>(body: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    // SAFETY: the transaction protocol of a background worker, as BackgroundWorker::transaction
    // does it, with an abort instead of a rethrow when the body fails.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let outcome = PgTryBuilder::new(AssertUnwindSafe(body))
        .catch_others(|caught| Err(failure_of(caught).message))
        .execute();
    // SAFETY: ends the transaction started above, on both paths.
    unsafe {
        if outcome.is_ok() {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        } else {
            pg_sys::AbortCurrentTransaction();
        }
    }
    outcome
}

/// SIGTERM (a shutdown, `pg_terminate_backend`) is handled by PostgreSQL's own handler for
/// backends, as its worker_spi example does: a worker of this library exits at its next interrupt
/// check, in the middle of a pass or a backfill batch too. pgrx's handler only sets a flag read
/// between passes, and a shutdown waited for the pass: 32 s for a backstop that queued a million
/// users.
pub(crate) fn exit_on_sigterm() {
    // pg_sys::die is pgrx's Rust wrapper for calling it; a signal handler must be the C function.
    unsafe extern "C-unwind" {
        /// tcop/postgres.c: notes the request to die and sets the latch.
        #[link_name = "die"]
        fn postgres_die(signal: std::ffi::c_int);
    }
    // SAFETY: installs the signal handler PostgreSQL provides for this purpose, then lets signals
    // in (a background worker starts with them blocked).
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// A worker starts with the settings `ALTER DATABASE … SET` and `ALTER ROLE … SET` gave its
/// database and role, and a database's owner may give it any search_path. One listing a schema of
/// theirs before pg_catalog would put their functions and operators (a `count`, an `=`) in the
/// worker's queries, and the main worker is a superuser: a database owner made themselves one at
/// its next start. The search_path is pinned past those settings, as autovacuum pins its own.
pub(crate) fn pin_search_path() {
    // SAFETY: sets a GUC, as autovacuum does at its start; PGC_S_OVERRIDE outranks every setting
    // a database, a role or a reload of postgresql.conf may give.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// Logs a failed pass once, not once a second while the cause lasts.
fn report<T>(what: &str, outcome: Result<T, String>, last_error: &mut Option<String>) {
    match outcome {
        Ok(_) => *last_error = None,
        Err(error) if last_error.as_deref() != Some(error.as_str()) => {
            warning!("identity_bindings worker: {what} failed: {error}");
            *last_error = Some(error);
        }
        Err(_) => {}
    }
}

/// `identity.worker_database` as the configuration now has it; `None` when unset or empty.
fn configured_database() -> Option<String> {
    WORKER_DATABASE
        .get()
        .and_then(|d| d.into_string().ok())
        .filter(|d| !d.is_empty())
}

/// Re-reads the configuration if a reload (SIGHUP) came since the last call.
fn reload_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: re-reads postgresql.conf, as any backend does on SIGHUP.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

/// The database to work in: `identity.worker_database`, or, while it is unset, the one a reload
/// sets it to. `None` when the postmaster died first.
fn database_to_work_in() -> Option<String> {
    let mut logged = false;
    loop {
        reload_if_asked();
        if let Some(database) = configured_database() {
            return Some(database);
        }
        if !logged {
            log!("identity_bindings worker: identity.worker_database is not set; the worker waits until a reload sets it");
            logged = true;
        }
        if !BackgroundWorker::wait_latch(None) {
            return None;
        }
        pgrx::check_for_interrupts!();
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn identity_bindings_worker_main(_argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    exit_on_sigterm();
    let Some(database) = database_to_work_in() else {
        return;
    };
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    pin_search_path();
    log!("identity_bindings worker: started in database \"{database}\"");

    let mut last_backstop: Option<Instant> = None;
    let (mut jobs_error, mut backstop_error) = (None, None);
    let poll =
        || Duration::from_millis(u64::try_from(WORKER_POLL_INTERVAL_MS.get()).unwrap_or(1000));
    // A pass that took all it may take leaves more jobs due, most likely: the next pass follows
    // at once, so a backlog (the bindings queued while logins could not bind, a backstop's)
    // drains at the speed of binding, not at one pass per poll interval.
    let mut more_due = false;
    // Returns only when the postmaster has died.
    while BackgroundWorker::wait_latch(Some(if more_due { Duration::ZERO } else { poll() })) {
        // A SIGTERM that came while waiting ends the worker here.
        pgrx::check_for_interrupts!();
        reload_if_asked();
        if configured_database().as_deref() != Some(database.as_str()) {
            // A backend cannot change databases: exit, and the postmaster starts the worker
            // again 5 s later, to work where the setting now says (or to wait while it is unset).
            log!("identity_bindings worker: identity.worker_database no longer names \"{database}\"; restarting");
            // SAFETY: ends this process as any backend ends; exit code 1 asks for a restart.
            unsafe { pg_sys::proc_exit(1) };
        }
        let jobs = run_jobs_pass();
        more_due = jobs
            .as_ref()
            .is_ok_and(|&taken| taken == i64::from(JOBS_PER_PASS));
        report("running binding jobs", jobs, &mut jobs_error);
        let backstop_every =
            Duration::from_secs(u64::try_from(BACKSTOP_INTERVAL_S.get()).unwrap_or(3600));
        if last_backstop.is_none_or(|at| at.elapsed() >= backstop_every) {
            report("the backstop", run_pass(BACKSTOP), &mut backstop_error);
            last_backstop = Some(Instant::now());
        }
    }
}
