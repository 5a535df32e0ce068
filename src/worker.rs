//! The background worker: with `shared_preload_libraries = 'identity_bindings'` and
//! `identity.worker_database` set, it runs due binding jobs every `identity.worker_poll_interval`
//! (at once again after a pass that took its full 64) and the backstop every
//! `identity.backstop_interval`, where the extension is installed (elsewhere it runs nothing).
//! Each pass is its own transaction; a pass that fails is rolled back and logged, and the worker
//! goes on. SIGTERM ends it as it ends any backend, even in the middle of a pass (rolled back).
//!
//! A launcher, connected to no database, starts it: a backend cannot leave the database it
//! connected to, and connecting to one that does not exist is a `FATAL`. The launcher looks the
//! setting's database up in `pg_database` and starts the worker there once it exists, again 5 s
//! after the worker ended (a crash, a SIGTERM, its database dropped), and in another database at
//! once when a reload changes the setting; unset, it stops the worker and waits.

use crate::gucs::{BACKSTOP_INTERVAL_S, WORKER_DATABASE, WORKER_POLL_INTERVAL_MS};
use crate::subtransaction::failure_of;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use std::ffi::{CStr, CString};
use std::panic::AssertUnwindSafe;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::{Duration, Instant};

/// Registers the launcher; only possible while shared_preload_libraries is being processed. Not
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
    BackgroundWorkerBuilder::new("identity_bindings launcher")
        .set_type("identity_bindings launcher")
        .set_library("identity_bindings")
        .set_function("identity_bindings_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(RESTART_DELAY))
        .load();
}

/// How long after a worker ended the next one starts (the launcher's own restart too), as the
/// postmaster spaces the restarts of a worker that keeps failing.
const RESTART_DELAY: Duration = Duration::from_secs(5);

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

/// Re-reads the configuration if a reload (SIGHUP) came since the last call; whether one came.
fn reload_if_asked() -> bool {
    let asked = BackgroundWorker::sighup_received();
    if asked {
        // SAFETY: re-reads postgresql.conf, as any backend does on SIGHUP.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
    asked
}

const NOT_SET: &str =
    "identity.worker_database is not set; the worker waits until a reload sets it";

/// The database the worker should serve, by `identity.worker_database`'s name, or why there is
/// none (unset, or no such database yet).
fn wanted_database() -> Result<(String, DatabaseEntry), String> {
    let name = configured_database().ok_or(NOT_SET)?;
    let c_name = CString::new(name.as_str()).map_err(|e| e.to_string())?;
    match in_transaction(|| Ok(database_entry(&c_name)))? {
        Some(entry) => Ok((name, entry)),
        None => Err(format!(
            "identity.worker_database names \"{name}\", a database that does not exist; the worker starts there once it is created"
        )),
    }
}

/// A database as pg_database has it: its oid, and why it accepts no new connection, if it does
/// not (each start of a worker there would be a `FATAL`).
struct DatabaseEntry {
    oid: pg_sys::Oid,
    refusal: Option<&'static str>,
}

/// The database called `name`, if there is one: a heap scan of pg_database, as autovacuum's
/// launcher reads it. Connected to no database, a process cannot use that catalog's indexes
/// (PostgreSQL would read their descriptions from a database's pg_class).
fn database_entry(name: &CStr) -> Option<DatabaseEntry> {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // SAFETY: a catalog scan in the caller's transaction, ended and closed before returning; each
    // tuple is read while the scan holds it.
    unsafe {
        let pg_database = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
        let scan = pg_sys::table_beginscan_catalog(pg_database, 0, null_mut());
        let mut found = None;
        while found.is_none() {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let database = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if CStr::from_ptr(database.datname.data.as_ptr()) == name {
                found = Some(DatabaseEntry {
                    oid: database.oid,
                    refusal: refusal_of(database),
                });
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(pg_database, lock);
        found
    }
}

/// Why PostgreSQL refuses a background worker's new connection to `database`, if it does.
fn refusal_of(database: &pg_sys::FormData_pg_database) -> Option<&'static str> {
    if database.datconnlimit == pg_sys::DATCONNLIMIT_INVALID_DB {
        Some("an interrupted DROP DATABASE left invalid; drop it again, or name another database")
    } else if !database.datallowconn {
        Some("does not allow connections; the worker starts there once ALTER DATABASE ... ALLOW_CONNECTIONS true lets it")
    } else {
        None
    }
}

/// The worker the launcher runs, for `stop_worker_at_exit`; null while none runs.
static RUNNING_WORKER: AtomicPtr<pg_sys::BackgroundWorkerHandle> = AtomicPtr::new(null_mut());

/// A worker the launcher started in a database, known by PostgreSQL's handle of it.
struct DatabaseWorker {
    handle: *mut pg_sys::BackgroundWorkerHandle,
    database: pg_sys::Oid,
    name: String,
}

impl DatabaseWorker {
    /// Asks the postmaster to start a worker in `database`; why not, when no slot is free.
    fn start(name: String, database: pg_sys::Oid) -> Result<DatabaseWorker, String> {
        let builder = BackgroundWorkerBuilder::new("identity_bindings worker")
            .set_type("identity_bindings worker")
            .set_library("identity_bindings")
            .set_function("identity_bindings_worker_main")
            .enable_spi_access()
            .set_restart_time(None)
            .set_argument(Some(pg_sys::Datum::from(database)))
            .set_extra(&name)
            // SAFETY: reads this process's pid: the postmaster tells the launcher when the worker
            // starts or ends, by setting its latch.
            .set_notify_pid(unsafe { pg_sys::MyProcPid });
        let mut worker = pg_sys::BackgroundWorker::from(&builder);
        let mut handle = null_mut();
        // SAFETY: registers a fully built worker; the handle is allocated in the launcher's
        // top memory context, so that it outlives every transaction (freed in `drop`).
        let registered = unsafe {
            PgMemoryContexts::TopMemoryContext
                .switch_to(|_| pg_sys::RegisterDynamicBackgroundWorker(&mut worker, &mut handle))
        };
        if !registered {
            return Err("no background worker slot is free (raise max_worker_processes); the launcher tries again".into());
        }
        RUNNING_WORKER.store(handle, Ordering::Relaxed);
        Ok(DatabaseWorker {
            handle,
            database,
            name,
        })
    }

    /// Whether it runs, or is about to: not once it has exited.
    fn running(&self) -> bool {
        let mut pid = 0;
        // SAFETY: asks the postmaster's registry about a handle this process got from it.
        let status = unsafe { pg_sys::GetBackgroundWorkerPid(self.handle, &mut pid) };
        matches!(
            status,
            pg_sys::BgwHandleStatus::BGWH_STARTED | pg_sys::BgwHandleStatus::BGWH_NOT_YET_STARTED
        )
    }

    /// Ends it (SIGTERM, in the middle of a pass too) and waits until it has exited.
    fn stop(self) {
        // SAFETY: signals and waits for the worker this handle names; a handle whose worker has
        // already exited is answered at once.
        unsafe {
            pg_sys::TerminateBackgroundWorker(self.handle);
            pg_sys::WaitForBackgroundWorkerShutdown(self.handle);
        }
    }
}

impl Drop for DatabaseWorker {
    fn drop(&mut self) {
        RUNNING_WORKER.store(null_mut(), Ordering::Relaxed);
        // SAFETY: the handle was allocated by RegisterDynamicBackgroundWorker for this worker only.
        unsafe { pg_sys::pfree(self.handle.cast()) };
    }
}

/// Run when the launcher exits (a SIGTERM, an error): ends its worker too, so that the launcher
/// the postmaster starts again never finds one still running and starts a second.
#[pg_guard]
unsafe extern "C-unwind" fn stop_worker_at_exit(_code: std::ffi::c_int, _argument: pg_sys::Datum) {
    let handle = RUNNING_WORKER.load(Ordering::Relaxed);
    if !handle.is_null() {
        // SAFETY: a live handle of this process's worker (reset when the worker is dropped).
        unsafe { pg_sys::TerminateBackgroundWorker(handle) };
    }
}

/// What the launcher knows between two looks: the worker it runs, when the last one ended, and
/// why none runs as last logged (each reason is logged once, not once a poll).
#[derive(Default)]
struct Launcher {
    worker: Option<DatabaseWorker>,
    last_ended: Option<Instant>,
    logged_wait: Option<String>,
}

impl Launcher {
    /// Brings the worker in line with `identity.worker_database` and the databases that exist.
    /// A running worker's database can change only by a reload (its database cannot be renamed
    /// while it is connected, and dropping it ends the worker): without one, nothing is read.
    fn tend(&mut self, reloaded: bool) {
        if !reloaded && self.worker.as_ref().is_some_and(DatabaseWorker::running) {
            return;
        }
        let wanted = wanted_database();
        if let Some(worker) = self.worker.take() {
            if !worker.running() {
                self.last_ended = Some(Instant::now());
            } else if wanted.as_ref().map(|(_, entry)| entry.oid).ok() != Some(worker.database) {
                log!(
                    "identity_bindings launcher: identity.worker_database no longer names \"{}\"; its worker stops",
                    worker.name
                );
                worker.stop();
                self.last_ended = None;
            } else {
                // Still wanted there, whether or not it would be let in now: it is in.
                self.worker = Some(worker);
                return;
            }
        }
        match wanted {
            Ok((name, entry)) => self.start_in(name, entry),
            Err(reason) => self.waits_because(reason),
        }
    }

    /// Starts the worker in a database that exists, unless it refuses connections or the last
    /// worker ended less than `RESTART_DELAY` ago.
    fn start_in(&mut self, name: String, database: DatabaseEntry) {
        if let Some(refusal) = database.refusal {
            let reason =
                format!("identity.worker_database names \"{name}\", a database that {refusal}");
            return self.waits_because(reason);
        }
        if self
            .last_ended
            .is_some_and(|at| at.elapsed() < RESTART_DELAY)
        {
            return;
        }
        match DatabaseWorker::start(name, database.oid) {
            Ok(worker) => {
                self.worker = Some(worker);
                self.logged_wait = None;
            }
            Err(reason) => {
                self.last_ended = Some(Instant::now());
                self.waits_because(reason);
            }
        }
    }

    fn waits_because(&mut self, reason: String) {
        if self.logged_wait.as_ref() != Some(&reason) {
            log!("identity_bindings launcher: {reason}");
            self.logged_wait = Some(reason);
        }
    }
}

/// `identity.worker_poll_interval`: how often the worker runs due jobs.
fn poll_interval() -> Duration {
    Duration::from_millis(u64::try_from(WORKER_POLL_INTERVAL_MS.get()).unwrap_or(1000))
}

/// How often the launcher looks again, besides when a reload or its worker's start or end wakes
/// it: a database named by the setting may be created at any time.
fn launcher_poll() -> Duration {
    poll_interval().min(Duration::from_secs(1))
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn identity_bindings_launcher_main(_argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    exit_on_sigterm();
    // No database: the shared catalogs (pg_database) are all it reads, and it holds no database
    // a DROP DATABASE would have to wait for.
    BackgroundWorker::connect_worker_to_spi(None, None);
    // SAFETY: registers a callback run as this process exits, while it can still signal.
    unsafe { pg_sys::before_shmem_exit(Some(stop_worker_at_exit), pg_sys::Datum::from(0)) };
    let mut launcher = Launcher::default();
    loop {
        let reloaded = reload_if_asked();
        launcher.tend(reloaded);
        // Returns false only when the postmaster has died.
        if !BackgroundWorker::wait_latch(Some(launcher_poll())) {
            return;
        }
    }
}

/// The worker in one database, started by the launcher (which ends it when the setting moves).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn identity_bindings_worker_main(argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    exit_on_sigterm();
    let database = pg_sys::Oid::from(argument.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    pin_search_path();
    log!(
        "identity_bindings worker: started in database \"{}\"",
        BackgroundWorker::get_extra()
    );

    let mut last_backstop: Option<Instant> = None;
    let (mut jobs_error, mut backstop_error) = (None, None);
    // A pass that took all it may take leaves more jobs due, most likely: the next pass follows
    // at once, so a backlog (the bindings queued while logins could not bind, a backstop's)
    // drains at the speed of binding, not at one pass per poll interval.
    let mut more_due = false;
    // Returns only when the postmaster has died.
    while BackgroundWorker::wait_latch(Some(if more_due {
        Duration::ZERO
    } else {
        poll_interval()
    })) {
        // A SIGTERM that came while waiting ends the worker here.
        pgrx::check_for_interrupts!();
        reload_if_asked();
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
