//! The background worker, in a cluster that preloads the library: it binds queued jobs without
//! anyone calling a function, comes back after a crash, ends at SIGTERM or at a reload that moves
//! it even in a long pass, and calls none of the functions a database's owner puts in its
//! search_path, or in a schema identity of theirs where the extension is not installed. It waits,
//! quietly, for a database that does not exist yet or accepts no connections.

use identity_bindings_client_tests::{eventually, Cluster};
use std::time::Duration;
use uuid::Uuid;

fn bound_to(cluster: &Cluster, external_id: &str) -> Option<Uuid> {
    let mut client = cluster
        .config("worker_test")
        .connect(postgres::NoTls)
        .ok()?;
    client
        .query_one("SELECT identity.resolve('github', $1)", &[&external_id])
        .ok()
        .and_then(|row| row.get(0))
}

fn enqueue(cluster: &Cluster, user: Uuid, external_id: &str) {
    cluster
        .connect("worker_test")
        .execute(
            "SELECT identity.enqueue_binding($1, 'github', $2, '{\"method\": \"worker test\"}')",
            &[&user, &external_id],
        )
        .unwrap();
}

fn worker_pid(cluster: &Cluster) -> Option<i32> {
    let mut client = cluster.config("postgres").connect(postgres::NoTls).ok()?;
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'identity_bindings worker'",
            &[],
        )
        .ok()
        .flatten()
        .map(|row| row.get(0))
}

/// Whether `wallet` gets bound in `database` within 20 s (the worker's backstop queues it and its
/// queue binds it; the database may not exist yet when the wait starts).
fn wallet_bound_soon(cluster: &Cluster, database: &str, wallet: &str) -> bool {
    eventually(Duration::from_secs(20), || {
        let Ok(mut client) = cluster.config(database).connect(postgres::NoTls) else {
            return false;
        };
        client
            .query_one(
                "SELECT identity.resolve('wallet', $1) IS NOT NULL",
                &[&wallet],
            )
            .is_ok_and(|row| row.get(0))
    })
}

fn is_superuser(client: &mut postgres::Client, role: &str) -> bool {
    client
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0)
}

/// SQL for `role` to set a trap in its schema `schema`: a table `calls` and a function
/// `note(called)` that records who called it, tries to make `role` a superuser (which succeeds
/// only when a superuser is the caller) and returns true, so that a view's WHERE can call it.
fn trap(schema: &str, role: &str) -> String {
    format!(
        "CREATE TABLE {schema}.calls (caller name, called text);
         CREATE FUNCTION {schema}.note(called text) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO {schema}.calls VALUES (current_user, called);
             BEGIN
                 EXECUTE 'ALTER ROLE {role} SUPERUSER';
             EXCEPTION WHEN insufficient_privilege THEN
                 NULL;
             END;
             RETURN true;
         END $$;"
    )
}

/// Who called the trap in `schema`, and what for.
fn trap_calls(client: &mut postgres::Client, schema: &str) -> Vec<(String, String)> {
    client
        .query(
            &format!("SELECT caller::text, called FROM {schema}.calls"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Creates `database`, owned by a new ordinary role `owner`, with `set_up` run in it by a
/// superuser. It is built under another name and renamed when complete, so that the worker,
/// started there as soon as it exists, connects to it finished.
fn database_owned_by(cluster: &Cluster, database: &str, owner: &str, set_up: &str) {
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("CREATE ROLE {owner}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE staging OWNER {owner}"))
        .unwrap();
    cluster.connect("staging").batch_execute(set_up).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || admin
            .batch_execute(&format!("ALTER DATABASE staging RENAME TO {database}"))
            .is_ok()),
        "the database was renamed once its set-up session had left"
    );
}

#[test]
fn the_worker_binds_queued_jobs_and_comes_back_after_a_crash_or_a_sigterm_to_it_or_its_launcher() {
    let cluster = Cluster::start(
        "worker",
        &[
            "shared_preload_libraries=identity_bindings",
            "identity.worker_database=worker_test",
            "identity.worker_poll_interval=200ms",
        ],
    );
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE worker_test")
        .unwrap();
    cluster
        .connect("worker_test")
        .batch_execute("CREATE EXTENSION identity_bindings")
        .unwrap();

    // Nobody calls run_binding_jobs: the worker does.
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    enqueue(&cluster, first, "7001");
    assert!(
        eventually(Duration::from_secs(20), || bound_to(&cluster, "7001")
            == Some(first)),
        "the worker bound the job"
    );

    // A crash: the postmaster resets every backend, then starts the worker again.
    let crashed = worker_pid(&cluster).expect("the worker runs");
    let killed = std::process::Command::new("kill")
        .args(["-9", &crashed.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        another_worker_soon(&cluster, crashed),
        "the worker came back after the crash"
    );
    enqueue(&cluster, second, "7002");
    assert!(
        eventually(Duration::from_secs(20), || bound_to(&cluster, "7002")
            == Some(second)),
        "the restarted worker works"
    );

    // SIGTERM (pg_terminate_backend, or a shutdown) ends it as it ends any backend; outside a
    // shutdown the postmaster starts it again.
    let running = worker_pid(&cluster).unwrap();
    terminate(&cluster, running);
    assert!(
        another_worker_soon(&cluster, running),
        "the worker came back after SIGTERM"
    );
    assert!(cluster.server_log().contains(
        "terminating background worker \"identity_bindings worker\" due to administrator command"
    ));

    // Ending the launcher ends its worker too: the launcher the postmaster starts again starts
    // one worker, never a second beside one left running.
    let worker = pids_of(&cluster, "identity_bindings worker");
    let launcher = pids_of(&cluster, "identity_bindings launcher");
    assert_eq!(
        (worker.len(), launcher.len()),
        (1, 1),
        "one launcher, one worker"
    );
    terminate(&cluster, launcher[0]);
    let both_anew = eventually(Duration::from_secs(30), || {
        let (now_worker, now_launcher) = (
            pids_of(&cluster, "identity_bindings worker"),
            pids_of(&cluster, "identity_bindings launcher"),
        );
        now_launcher.len() == 1
            && now_launcher != launcher
            && now_worker.len() == 1
            && now_worker != worker
    });
    assert!(both_anew, "a new launcher and a new worker, alone");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pids_of(&cluster, "identity_bindings worker").len(), 1);
}

/// The processes of one `backend_type` (`identity_bindings worker`, `... launcher`).
fn pids_of(cluster: &Cluster, backend_type: &str) -> Vec<i32> {
    cluster
        .connect("postgres")
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = $1",
            &[&backend_type],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Whether a worker other than `gone` runs within 30 s: the postmaster started it again.
fn another_worker_soon(cluster: &Cluster, gone: i32) -> bool {
    eventually(Duration::from_secs(30), || {
        worker_pid(cluster).is_some_and(|pid| pid != gone)
    })
}

fn terminate(cluster: &Cluster, pid: i32) {
    cluster
        .connect("postgres")
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
}

#[test]
fn sigterm_or_a_reload_ends_the_worker_in_the_middle_of_a_long_pass() {
    let cluster = Cluster::start(
        "worker_sigterm",
        &[
            "shared_preload_libraries=identity_bindings",
            "identity.worker_poll_interval=200ms",
        ],
    );
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE worker_sigterm")
        .unwrap();
    // Reading public.users takes ten minutes, and the worker's first backstop reads it: a pass
    // as long as a backstop over tens of millions of users. A shutdown must not wait for it.
    cluster
        .connect("worker_sigterm")
        .batch_execute(
            "CREATE EXTENSION identity_bindings;
             CREATE FUNCTION public.slow_users() RETURNS TABLE (id uuid, wallet_address text)
                 LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(600); END $$;
             CREATE VIEW public.users AS SELECT * FROM public.slow_users();",
        )
        .unwrap();
    set_worker_database(&cluster, "SET identity.worker_database = 'worker_sigterm'");
    let mut observer = cluster.connect("postgres");
    let mut in_the_pass = || {
        eventually(Duration::from_secs(30), || {
            observer
                .query_opt(
                    "SELECT 1 FROM pg_stat_activity
                      WHERE backend_type = 'identity_bindings worker' AND wait_event = 'PgSleep'",
                    &[],
                )
                .unwrap()
                .is_some()
        })
    };
    assert!(in_the_pass(), "the worker's backstop reads the slow table");

    let reading = worker_pid(&cluster).unwrap();
    terminate(&cluster, reading);
    assert!(
        another_worker_soon(&cluster, reading),
        "the worker left its pass at SIGTERM (and was started again)"
    );

    // The worker started again reads the slow table in its first backstop. A reload that names
    // another database ends it there too, not ten minutes later.
    assert!(
        in_the_pass(),
        "the new worker's backstop reads the slow table"
    );
    set_worker_database(&cluster, "SET identity.worker_database = 'postgres'");
    assert!(
        eventually(Duration::from_secs(10), || worker_database(&cluster)
            .as_deref()
            == Some("postgres")),
        "the worker left its pass for the database the reload names"
    );
}

#[test]
fn sessions_work_when_the_library_is_not_preloaded() {
    // The shared cluster of the other tests does not preload: loading the library in a session
    // defines its settings without breaking anything, and they can be read and set.
    let cluster = Cluster::start("no_preload", &[]);
    let mut client = cluster.connect("postgres");
    client
        .batch_execute("CREATE EXTENSION identity_bindings; SET identity.retry_max_attempts = 5")
        .unwrap();
    let setting: String = client
        .query_one("SHOW identity.retry_max_attempts", &[])
        .unwrap()
        .get(0);
    assert_eq!(setting, "5");
    let workers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'identity_bindings worker'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(workers, 0);
}

#[test]
fn the_workers_backstop_reads_the_users_table_as_its_owner_not_as_a_superuser() {
    let cluster = Cluster::start(
        "worker_backstop",
        &[
            "shared_preload_libraries=identity_bindings",
            "identity.worker_database=worker_backstop",
            "identity.worker_poll_interval=200ms",
            "identity.backstop_interval=1s",
        ],
    );
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE worker_backstop")
        .unwrap();
    // The application's role owns public.users, here a view whose function notes who reads it
    // and tries to make its owner a superuser: the worker (a superuser) must read it as its owner.
    cluster
        .connect("worker_backstop")
        .batch_execute(&format!(
            "CREATE EXTENSION identity_bindings;
             CREATE ROLE app_owner;
             GRANT CREATE ON SCHEMA public TO app_owner;
             SET ROLE app_owner;
             {}
             CREATE VIEW public.users AS
                 SELECT '00000000-0000-4000-8000-0000000000b5'::uuid AS id,
                        '0x00000000000000000000000000000000000000b5' AS wallet_address
                  WHERE public.note('users')",
            trap("public", "app_owner")
        ))
        .unwrap();
    assert!(
        wallet_bound_soon(
            &cluster,
            "worker_backstop",
            "0x00000000000000000000000000000000000000B5"
        ),
        "the worker's backstop queued the wallet and its queue bound it"
    );
    let mut client = cluster.connect("worker_backstop");
    let mut readers: Vec<String> = trap_calls(&mut client, "public")
        .into_iter()
        .map(|(caller, _)| caller)
        .collect();
    readers.sort();
    readers.dedup();
    assert_eq!(readers, ["app_owner"]);
    assert!(
        !is_superuser(&mut client, "app_owner"),
        "the view's owner stayed an ordinary role"
    );
}

#[test]
fn a_database_owners_search_path_does_not_reach_the_worker() {
    let cluster = Cluster::start(
        "worker_search_path",
        &[
            "shared_preload_libraries=identity_bindings",
            "identity.worker_database=worker_search_path",
            "identity.worker_poll_interval=200ms",
        ],
    );
    // The database's owner, an ordinary role, lists a schema of theirs before pg_catalog in the
    // database's search_path, with a count(*) and a to_regclass that note who calls them and try
    // to make the owner a superuser. The worker (a superuser) connects with the database's
    // settings, and its passes call count(*) and to_regclass: it must call PostgreSQL's own.
    database_owned_by(
        &cluster,
        "worker_search_path",
        "app_owner",
        &format!(
            "CREATE EXTENSION identity_bindings;
             SET ROLE app_owner;
             CREATE SCHEMA app;
             {}
             CREATE FUNCTION app.count_row(bigint) RETURNS bigint LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM app.note('count');
                 RETURN $1 + 1;
             END $$;
             CREATE AGGREGATE app.count(*) (sfunc = app.count_row, stype = bigint, initcond = '0');
             CREATE FUNCTION app.to_regclass(text) RETURNS regclass LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM app.note('to_regclass');
                 RETURN pg_catalog.to_regclass($1);
             END $$;
             CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);
             INSERT INTO public.users
             VALUES ('00000000-0000-4000-8000-0000000000c6', '0x00000000000000000000000000000000000000c6');
             ALTER DATABASE staging SET search_path = app, pg_catalog;",
            trap("app", "app_owner")
        ),
    );

    // The worker's backstop queued the wallet (to_regclass), its queue bound it (count).
    assert!(
        wallet_bound_soon(
            &cluster,
            "worker_search_path",
            "0x00000000000000000000000000000000000000C6"
        ),
        "the worker's backstop and queue bound the wallet"
    );
    let mut client = cluster.connect("worker_search_path");
    assert_eq!(
        trap_calls(&mut client, "app"),
        [],
        "the worker called none of the owner's functions"
    );
    assert!(
        !is_superuser(&mut client, "app_owner"),
        "the database's owner stayed an ordinary role"
    );
    // While a session of that database, which has its search_path, does call them (as the owner
    // here, whom the attempt to become a superuser fails).
    client
        .batch_execute("SET ROLE app_owner; SELECT count(*) FROM (VALUES (1)) v; RESET ROLE")
        .unwrap();
    let noted: i64 = client
        .query_one(
            "SELECT pg_catalog.count(*) FROM app.calls WHERE called = 'count'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(noted, 1, "the owner's count(*) is live for a session");
}

#[test]
fn a_backlog_drains_in_passes_that_follow_each_other_not_one_pass_per_poll() {
    // Polls an hour apart: after the first pass, only a full pass's own follow-up can run more.
    let cluster = Cluster::start(
        "worker_backlog",
        &[
            "shared_preload_libraries=identity_bindings",
            "identity.worker_database=worker_backlog",
            "identity.worker_poll_interval=1h",
        ],
    );
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE worker_backlog")
        .unwrap();
    cluster
        .connect("worker_backlog")
        .batch_execute("CREATE EXTENSION identity_bindings")
        .unwrap();
    let mut observer = cluster.connect("postgres");
    assert!(
        eventually(Duration::from_secs(30), || observer
            .query_opt(
                "SELECT 1 FROM pg_stat_activity
                  WHERE backend_type = 'identity_bindings worker' AND wait_event = 'Extension'",
                &[],
            )
            .unwrap()
            .is_some()),
        "the worker waits for its first poll, an hour away"
    );

    // A backlog of two and a half passes, then a reload, which wakes the worker for one poll.
    cluster
        .connect("worker_backlog")
        .batch_execute(
            "SELECT identity.enqueue_binding(gen_random_uuid(), 'github', (8000 + i)::text,
                                             '{\"method\": \"backlog\"}')
               FROM generate_series(1, 250) i",
        )
        .unwrap();
    observer.batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut client = cluster.connect("worker_backlog");
    assert!(
        eventually(Duration::from_secs(30), || client
            .query_one("SELECT count(*) FROM identity.user_bindings", &[])
            .unwrap()
            .get::<_, i64>(0)
            == 250),
        "one wake-up bound the whole backlog"
    );
}

#[test]
fn the_worker_calls_nothing_in_a_database_without_the_extension() {
    let cluster = Cluster::start(
        "worker_no_extension",
        &[
            "shared_preload_libraries=identity_bindings",
            "identity.worker_database=worker_no_extension",
            "identity.worker_poll_interval=200ms",
        ],
    );
    // identity.worker_database names a database where the extension is not installed (yet, or
    // any more). Its owner, an ordinary role, creates a schema identity there with the two
    // functions the worker calls, which note who calls them and try to make the owner a
    // superuser, and a users table for the backstop.
    database_owned_by(
        &cluster,
        "worker_no_extension",
        "squatter",
        &format!(
            "SET ROLE squatter;
             CREATE SCHEMA identity;
             {}
             CREATE FUNCTION identity.run_binding_jobs(integer) RETURNS SETOF integer
             LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM identity.note('run_binding_jobs');
             END $$;
             CREATE FUNCTION identity.backstop() RETURNS bigint LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM identity.note('backstop');
                 RETURN 0;
             END $$;
             CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);",
            trap("identity", "squatter")
        ),
    );

    // The worker comes, finds no extension, says so once, and calls nothing.
    let refusal = "the extension is not installed in this database";
    assert!(
        eventually(Duration::from_secs(20), || cluster
            .server_log()
            .contains(refusal)),
        "the worker said why it runs nothing"
    );
    std::thread::sleep(Duration::from_secs(1)); // five more polls
    let mut client = cluster.connect("worker_no_extension");
    assert_eq!(
        trap_calls(&mut client, "identity"),
        [],
        "the worker called none of the squatter's functions"
    );
    assert!(
        !is_superuser(&mut client, "squatter"),
        "the database's owner stayed an ordinary role"
    );
    assert_eq!(
        cluster.server_log().matches(refusal).count(),
        2,
        "said once for the jobs and once for the backstop, not once a poll"
    );
}

/// The database the worker is connected to, if it is connected to one.
fn worker_database(cluster: &Cluster) -> Option<String> {
    let mut client = cluster.config("postgres").connect(postgres::NoTls).ok()?;
    client
        .query_opt(
            "SELECT datname::text FROM pg_stat_activity
              WHERE backend_type = 'identity_bindings worker'",
            &[],
        )
        .ok()
        .flatten()
        .and_then(|row| row.get(0))
}

/// `ALTER SYSTEM <change>`, then a reload.
fn set_worker_database(cluster: &Cluster, change: &str) {
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("ALTER SYSTEM {change}"))
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
}

#[test]
fn the_worker_follows_worker_database_on_a_reload() {
    // identity.worker_database only by ALTER SYSTEM: a setting on the command line outranks it.
    let cluster = Cluster::start(
        "worker_follows",
        &[
            "shared_preload_libraries=identity_bindings",
            "identity.worker_poll_interval=200ms",
        ],
    );
    for database in ["follow_a", "follow_b"] {
        cluster
            .connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
        cluster
            .connect(database)
            .batch_execute("CREATE EXTENSION identity_bindings")
            .unwrap();
    }
    let queued_in = |database: &str, external_id: &str| {
        cluster
            .connect(database)
            .execute(
                "SELECT identity.enqueue_binding(gen_random_uuid(), 'github', $1, '{}')",
                &[&external_id],
            )
            .unwrap();
    };
    let bound_in = |database: &str, external_id: &str| {
        cluster
            .connect(database)
            .query_one(
                "SELECT identity.resolve('github', $1) IS NOT NULL",
                &[&external_id],
            )
            .unwrap()
            .get::<_, bool>(0)
    };
    let soon = |check: &dyn Fn() -> bool| eventually(Duration::from_secs(30), check);

    // Started with the setting unset, the worker waits; a reload that sets it puts it to work.
    queued_in("follow_a", "9001");
    set_worker_database(&cluster, "SET identity.worker_database = 'follow_a'");
    assert!(
        soon(&|| bound_in("follow_a", "9001")),
        "the worker serves follow_a"
    );

    // Another database, by a reload alone.
    set_worker_database(&cluster, "SET identity.worker_database = 'follow_b'");
    assert!(
        soon(&|| worker_database(&cluster).as_deref() == Some("follow_b")),
        "the worker moved to follow_b"
    );
    queued_in("follow_b", "9002");
    assert!(
        soon(&|| bound_in("follow_b", "9002")),
        "the worker serves follow_b"
    );

    // Unset: it stops working, and waits.
    set_worker_database(&cluster, "RESET identity.worker_database");
    assert!(
        soon(&|| worker_database(&cluster).is_none()),
        "the worker left follow_b"
    );
    queued_in("follow_b", "9003");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !bound_in("follow_b", "9003"),
        "no worker runs the queue while unset"
    );
    assert!(cluster
        .server_log()
        .contains("identity.worker_database is not set; the worker waits until a reload sets it"));

    // Set again: the waiting worker goes to work, no restart of the server needed.
    set_worker_database(&cluster, "SET identity.worker_database = 'follow_b'");
    assert!(
        soon(&|| bound_in("follow_b", "9003")),
        "the worker came back to follow_b and ran what was queued meanwhile"
    );
}

#[test]
fn the_worker_waits_quietly_until_its_database_exists_and_accepts_connections() {
    let cluster = Cluster::start(
        "worker_waits",
        &[
            "shared_preload_libraries=identity_bindings",
            "identity.worker_poll_interval=200ms",
        ],
    );
    set_worker_database(&cluster, "SET identity.worker_database = 'worker_waits'");
    let waiting = "identity.worker_database names \"worker_waits\", a database that does not exist";
    // Long enough for two restarts, 5 s apart, of a worker that fails to connect.
    let log_a_while_later = || {
        std::thread::sleep(Duration::from_secs(12));
        cluster.server_log()
    };
    let log = log_a_while_later();
    assert_eq!(log.matches(waiting).count(), 1, "said once:\n{log}");
    assert!(
        !log.contains("FATAL:  database"),
        "no worker tried to connect:\n{log}"
    );

    // Created, with no reload: the worker starts there and runs its queue.
    let create = || {
        cluster
            .connect("postgres")
            .batch_execute("CREATE DATABASE worker_waits")
            .unwrap();
    };
    create();
    let mut database = cluster.connect("worker_waits");
    database
        .batch_execute(
            "CREATE EXTENSION identity_bindings;
             SELECT identity.enqueue_binding(gen_random_uuid(), 'github', '9101', '{}');",
        )
        .unwrap();
    let bound = eventually(Duration::from_secs(20), || {
        database
            .query_one("SELECT identity.resolve('github', '9101') IS NOT NULL", &[])
            .unwrap()
            .get(0)
    });
    assert!(bound, "the worker serves the database once it exists");
    drop(database);

    // Dropped under it (WITH (FORCE) ends the worker): the launcher waits again, as quietly.
    cluster
        .connect("postgres")
        .batch_execute("DROP DATABASE worker_waits WITH (FORCE)")
        .unwrap();
    let log = log_a_while_later();
    assert_eq!(log.matches(waiting).count(), 2, "said again, once:\n{log}");
    assert!(
        !log.contains("FATAL:  database"),
        "no worker tried to connect:\n{log}"
    );

    // Moved away by a reload, the worker leaves at once: a plain DROP DATABASE goes through.
    create();
    assert!(
        eventually(Duration::from_secs(20), || worker_database(&cluster)
            .as_deref()
            == Some("worker_waits")),
        "the worker serves the database created again"
    );

    // Closed to new connections, the database keeps the worker it has; one started again (after
    // a SIGTERM) waits, as quietly, until connections are allowed.
    let allow_connections = |allowed: bool| {
        cluster
            .connect("postgres")
            .batch_execute(&format!(
                "ALTER DATABASE worker_waits ALLOW_CONNECTIONS {allowed}"
            ))
            .unwrap();
    };
    let serving = worker_pid(&cluster).unwrap();
    allow_connections(false);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(worker_pid(&cluster), Some(serving), "the worker stays");
    terminate(&cluster, serving);
    let log = log_a_while_later();
    let closed = "names \"worker_waits\", a database that does not allow connections";
    assert_eq!(log.matches(closed).count(), 1, "said once:\n{log}");
    assert!(
        !log.contains("FATAL:  database"),
        "no worker tried to connect:\n{log}"
    );
    assert_eq!(worker_pid(&cluster), None);
    allow_connections(true);
    assert!(
        eventually(Duration::from_secs(20), || worker_pid(&cluster).is_some()),
        "the worker starts once connections are allowed"
    );

    set_worker_database(&cluster, "RESET identity.worker_database");
    cluster
        .connect("postgres")
        .batch_execute("DROP DATABASE worker_waits")
        .unwrap();
}
