//! The binding queue over real connections: transient failures are queued and retried with the
//! policy's backoff, a SIWE login survives its binding step failing, runners never share a job.

use identity_bindings_client_tests::wallet::{signed_login, siwe_message, TestWallet};
use identity_bindings_client_tests::{
    backend_pid, eventually, integrity_is_clean, run_behind, soon_waits_for_a_lock, sqlstate,
    TestDatabase,
};
use postgres::Client;
use std::collections::HashSet;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;
use uuid::Uuid;

/// A session holding `user`'s event-chain lock (an open transaction that appended for them),
/// so any other append for that user waits: the way a real lock conflict looks.
fn hold_chain_lock(client: &mut Client, user: Uuid) {
    hold_chain_lock_binding(client, user, "999");
}

/// `hold_chain_lock`, the append being a binding of discord id `external_id` (one per holder).
fn hold_chain_lock_binding(client: &mut Client, user: Uuid, external_id: &str) {
    client.batch_execute("BEGIN").unwrap();
    client
        .execute(
            "SELECT identity.create_binding($1, 'discord', $2, '{\"method\": \"lock holder\"}')",
            &[&user, &external_id],
        )
        .unwrap();
}

/// A login of `wallet` for app.example, with a nonce just issued, as the user and status it
/// returns; `new_user_id` is the user a new wallet is bound to.
fn login(app: &mut Client, wallet: &TestWallet, new_user_id: Uuid) -> (Uuid, String) {
    let nonce: String = app
        .query_one("SELECT identity.issue_nonce()", &[])
        .unwrap()
        .get(0);
    let now: String = app
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            &[],
        )
        .unwrap()
        .get(0);
    let message = siwe_message(
        "app.example",
        &wallet.address(),
        &nonce,
        &now,
        "2100-01-01T00:00:00Z",
    );
    let signature = wallet.personal_sign(&message);
    let row = app
        .query_one(
            "SELECT user_id, status FROM identity.siwe_login($1, $2, 'app.example', $3)",
            &[&message, &signature, &new_user_id],
        )
        .expect("the login succeeds");
    (row.get(0), row.get(1))
}

/// A first login on `app` of a new wallet (from `seed`) whose binding step timed out behind
/// `holder`'s lock on the new user's chain, which `holder` keeps: the login's user, the wallet.
fn queued_first_login(holder: &mut Client, app: &mut Client, seed: u8) -> (Uuid, TestWallet) {
    let user = Uuid::new_v4();
    let wallet = TestWallet::from_seed(seed);
    hold_chain_lock(holder, user);
    app.batch_execute("SET lock_timeout = '300ms'").unwrap();
    assert_eq!(
        login(app, &wallet, user),
        (user, "queued".to_owned()),
        "the login succeeds although its binding step timed out"
    );
    app.batch_execute("RESET lock_timeout").unwrap();
    (user, wallet)
}

fn owner_of(client: &mut Client, wallet: &TestWallet) -> Option<Uuid> {
    client
        .query_one(
            "SELECT identity.resolve('wallet', $1)",
            &[&wallet.address()],
        )
        .unwrap()
        .get(0)
}

fn try_login(
    app: &mut Client,
    message: &str,
    signature: &str,
    new_user_id: Uuid,
) -> Result<(Uuid, String), postgres::Error> {
    app.query_one(
        "SELECT user_id, status FROM identity.siwe_login($1, $2, 'app.example', $3)",
        &[&message, &signature, &new_user_id],
    )
    .map(|row| (row.get(0), row.get(1)))
}

#[test]
fn a_statement_timeout_in_a_logins_binding_step_queues_the_binding() {
    let database = TestDatabase::create("login_statement_timeout");
    let (mut holder, mut app) = (database.connect(), database.connect());
    let (user, wallet) = (Uuid::new_v4(), TestWallet::from_seed(13));
    let (message, signature) = signed_login(&mut app, &wallet, "app.example");
    hold_chain_lock(&mut holder, user);
    app.batch_execute("SET statement_timeout = '1s'").unwrap();
    assert_eq!(
        try_login(&mut app, &message, &signature, user).unwrap(),
        (user, "queued".to_owned())
    );
    app.batch_execute("RESET statement_timeout").unwrap();
    holder.batch_execute("COMMIT").unwrap();
    let state: String = app
        .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
        .unwrap()
        .get(0);
    assert_eq!(state, "succeeded");
    assert_eq!(owner_of(&mut app, &wallet), Some(user));
}

#[test]
fn a_cancelled_login_fails_whole_and_its_message_logs_in_afterwards() {
    let database = TestDatabase::create("login_cancel");
    let (mut holder, mut app, mut observer) =
        (database.connect(), database.connect(), database.connect());
    let (user, wallet) = (Uuid::new_v4(), TestWallet::from_seed(14));
    let (message, signature) = signed_login(&mut app, &wallet, "app.example");
    hold_chain_lock(&mut holder, user);
    // A statement_timeout far off is armed: the cancel must not be taken for it.
    app.batch_execute("SET statement_timeout = '5min'").unwrap();
    let pid = backend_pid(&mut app);
    let sent = (message.clone(), signature.clone());
    let login = thread::spawn(move || {
        let outcome =
            try_login(&mut app, &sent.0, &sent.1, user).map_err(|e| sqlstate(&e).to_owned());
        (app, outcome)
    });
    assert!(soon_waits_for_a_lock(&mut observer, pid));
    observer
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    let (mut app, outcome) = login.join().unwrap();
    assert_eq!(outcome, Err("57014".to_owned()), "the login was cancelled");
    let jobs: i64 = app
        .query_one("SELECT count(*) FROM identity.binding_jobs", &[])
        .unwrap()
        .get(0);
    assert_eq!(jobs, 0, "nothing was queued");

    holder.batch_execute("COMMIT").unwrap();
    assert_eq!(
        try_login(&mut app, &message, &signature, user).unwrap(),
        (user, "created".to_owned()),
        "the nonce was not spent"
    );
}

#[test]
fn a_login_whose_binding_times_out_is_queued_then_bound_by_the_queue() {
    let database = TestDatabase::create("queued_login");
    let (mut holder, mut app) = (database.connect(), database.connect());
    let (user, wallet) = queued_first_login(&mut holder, &mut app, 9);
    let job: (String, String, i32) = {
        let row = app
            .query_one(
                "SELECT job_key, state, attempts FROM identity.binding_jobs",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        job,
        (
            format!("bind:wallet:{}", wallet.address()),
            "pending".to_owned(),
            0
        )
    );
    assert_eq!(
        owner_of(&mut app, &wallet),
        None,
        "nothing half-written by the failed step"
    );

    holder.batch_execute("COMMIT").unwrap();
    let (state,): (String,) = {
        let row = app
            .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
            .unwrap();
        (row.get(0),)
    };
    assert_eq!(state, "succeeded");
    assert_eq!(owner_of(&mut app, &wallet), Some(user));
    let reverifies: Option<bool> = app
        .query_one("SELECT identity.verify_binding(id) FROM identity.user_bindings WHERE provider = 'wallet'", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        reverifies,
        Some(true),
        "the queued binding keeps the login's evidence"
    );
    assert!(integrity_is_clean(&mut app));
}

#[test]
fn a_second_login_before_the_queue_runs_is_the_first_logins_user() {
    let database = TestDatabase::create("queued_login_again");
    let (mut holder, mut app) = (database.connect(), database.connect());
    let (user, wallet) = queued_first_login(&mut holder, &mut app, 10);
    holder.batch_execute("COMMIT").unwrap();

    // Another tab, before the queue has run: the wallet is not bound yet, but promised.
    assert_eq!(
        login(&mut app, &wallet, Uuid::new_v4()),
        (user, "existing".to_owned()),
        "the user the first login was given, not a new one"
    );
    assert_eq!(
        owner_of(&mut app, &wallet),
        Some(user),
        "bound by the second login"
    );
    let state: String = app
        .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
        .unwrap()
        .get(0);
    assert_eq!(state, "succeeded", "the job finds its binding made");
    assert!(integrity_is_clean(&mut app));
}

#[test]
fn a_transiently_failing_job_waits_its_backoff_then_succeeds() {
    let database = TestDatabase::create("retry_backoff");
    let (mut holder, mut runner) = (database.connect(), database.connect());
    let user = Uuid::new_v4();
    runner
        .execute(
            "SELECT identity.enqueue_binding($1, 'github', '4242', '{\"method\": \"test\"}')",
            &[&user],
        )
        .unwrap();

    hold_chain_lock(&mut holder, user);
    runner
        .batch_execute("SET lock_timeout = '200ms'; SET identity.retry_initial_interval = '1s'")
        .unwrap();
    let row = runner
        .query_one(
            "SELECT state, attempts, last_error FROM identity.run_binding_jobs()",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("pending".to_owned(), 1)
    );
    assert!(
        row.get::<_, String>(2).starts_with("55P03: "),
        "{}",
        row.get::<_, String>(2)
    );
    // First retry: 1 s, ±10% jitter.
    let delay_ms: f64 = runner
        .query_one(
            "SELECT extract(epoch FROM next_attempt_at - updated_at)::float8 * 1000 FROM identity.binding_jobs",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        (900.0..=1100.0).contains(&delay_ms),
        "first retry after {delay_ms} ms"
    );
    let early: i64 = runner
        .query_one("SELECT count(*) FROM identity.run_binding_jobs()", &[])
        .unwrap()
        .get(0);
    assert_eq!(early, 0, "a job is not retried before its time");

    holder.batch_execute("COMMIT").unwrap();
    thread::sleep(Duration::from_millis(1200));
    let row = runner
        .query_one(
            "SELECT state, attempts FROM identity.run_binding_jobs()",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("succeeded".to_owned(), 2)
    );
    assert!(integrity_is_clean(&mut runner));
}

#[test]
fn concurrent_runners_never_take_the_same_job() {
    const JOBS: i64 = 200;
    const RUNNERS: usize = 4;
    let database = TestDatabase::create("runners");
    database
        .connect()
        .execute(
            "SELECT identity.enqueue_binding(gen_random_uuid(), 'github', (100000 + i)::text)
               FROM generate_series(1, $1::int8) i",
            &[&JOBS],
        )
        .unwrap();
    let start = Barrier::new(RUNNERS);
    let taken: Vec<String> = thread::scope(|scope| {
        let runners: Vec<_> = (0..RUNNERS)
            .map(|_| {
                let (database, start) = (&database, &start);
                scope.spawn(move || {
                    let mut client = database.connect();
                    start.wait();
                    let mut keys = Vec::new();
                    loop {
                        let rows = client
                            .query(
                                "SELECT job_key, state FROM identity.run_binding_jobs(10)",
                                &[],
                            )
                            .unwrap();
                        if rows.is_empty() {
                            break keys;
                        }
                        for row in rows {
                            assert_eq!(row.get::<_, String>(1), "succeeded");
                            keys.push(row.get::<_, String>(0));
                        }
                    }
                })
            })
            .collect();
        runners
            .into_iter()
            .flat_map(|r| r.join().unwrap())
            .collect()
    });
    let distinct: HashSet<&String> = taken.iter().collect();
    assert_eq!(
        (taken.len() as i64, distinct.len() as i64),
        (JOBS, JOBS),
        "each job run exactly once"
    );
    let mut client = database.connect();
    let bound: i64 = client
        .query_one("SELECT count(*) FROM identity.user_bindings", &[])
        .unwrap()
        .get(0);
    assert_eq!(bound, JOBS);
    assert!(integrity_is_clean(&mut client));
}

const MERGE: &str = "SELECT identity.merge_users($1, $2, '{\"ticket\": \"SUP-4\"}')";

/// Runs the due jobs on `runner` while `holder`, an open transaction, holds what the first job
/// needs, and commits it once the runner is seen waiting. The first job's state and last error.
fn run_jobs_behind(
    database: &TestDatabase,
    runner: &mut Client,
    holder: postgres::Transaction<'_>,
) -> (String, Option<String>) {
    run_behind(database, runner, holder, |runner| {
        runner
            .query_one(
                "SELECT state, last_error FROM identity.run_binding_jobs()",
                &[],
            )
            .map(|row| (row.get(0), row.get(1)))
            .unwrap()
    })
}

/// The user the bind event of github id `external_id` went to, and its `queued_for`.
fn bound_by_job(client: &mut Client, external_id: &str) -> (Uuid, Option<String>) {
    let row = client
        .query_one(
            "SELECT user_id, payload->>'queued_for' FROM identity.identity_events
              WHERE event_type = 'bind' AND payload->>'external_id' = $1",
            &[&external_id],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn enqueue(client: &mut Client, user: Uuid, external_id: &str) {
    client
        .execute(
            "SELECT identity.enqueue_binding($1, 'github', $2, '{\"method\": \"queued\"}')",
            &[&user, &external_id],
        )
        .unwrap();
}

#[test]
fn a_statement_timeout_ends_the_whole_pass_and_every_job_stays_due() {
    let database = TestDatabase::create("queue_timeout");
    let (mut holder, mut runner) = (database.connect(), database.connect());
    let users = [Uuid::new_v4(), Uuid::new_v4()];
    for (user, external_id) in users.iter().zip(["81", "82"]) {
        enqueue(&mut runner, *user, external_id);
    }
    holder.batch_execute("BEGIN").unwrap();
    for (user, discord_id) in users.iter().zip(["91", "92"]) {
        holder
            .execute(
                "SELECT identity.create_binding($1, 'discord', $2, '{\"method\": \"lock holder\"}')",
                &[user, &discord_id],
            )
            .unwrap();
    }
    // The first job waits for its user's chain until the statement times out. Were that caught as
    // the job's failure, the second job would wait on, unbounded (here until lock_timeout).
    runner
        .batch_execute("SET statement_timeout = '500ms'; SET lock_timeout = '3s'")
        .unwrap();
    let error = runner
        .query("SELECT * FROM identity.run_binding_jobs()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&error), "57014", "{error:?}");
    runner
        .batch_execute("RESET statement_timeout; RESET lock_timeout")
        .unwrap();
    holder.batch_execute("COMMIT").unwrap();

    let jobs: Vec<(String, i32)> = runner
        .query(
            "SELECT state, attempts FROM identity.binding_jobs ORDER BY job_key",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(jobs, vec![("pending".to_owned(), 0); 2]);
    let made = runner
        .query("SELECT state FROM identity.run_binding_jobs()", &[])
        .unwrap()
        .iter()
        .filter(|row| row.get::<_, &str>(0) == "succeeded")
        .count();
    assert_eq!(made, 2);
    assert!(integrity_is_clean(&mut runner));
}

/// The pass `first_pass` (the job's state and last error) met a merge that took the job's user
/// away while its bind waited for that user's chain: the bind was undone, and the job waits for
/// its retry, which binds github `external_id` to `bound_to`, where the merges end.
fn assert_the_retry_follows_the_merge(
    app: &mut Client,
    runner: &mut Client,
    first_pass: (String, Option<String>),
    external_id: &str,
    (queued_for, bound_to): (Uuid, Uuid),
) {
    let (state, last_error) = first_pass;
    assert_eq!(state, "pending");
    let last_error = last_error.unwrap();
    assert!(
        last_error.starts_with("40001: ") && last_error.contains("a merge took that user away"),
        "{last_error}"
    );
    let bound: i64 = app
        .query_one(
            "SELECT count(*) FROM identity.user_bindings WHERE external_id = $1",
            &[&external_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(bound, 0, "the bind was undone");

    thread::sleep(Duration::from_millis(50));
    let state: String = runner
        .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
        .unwrap()
        .get(0);
    assert_eq!(state, "succeeded");
    assert_eq!(
        bound_by_job(app, external_id),
        (bound_to, Some(queued_for.to_string()))
    );
    assert!(integrity_is_clean(app));
}

#[test]
fn a_job_whose_user_is_merged_on_while_it_waits_is_retried_and_binds_where_the_merges_end() {
    let database = TestDatabase::create("queue_merge");
    let (queued_for, merged_into, last) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (mut app, mut merger, mut runner) =
        (database.connect(), database.connect(), database.connect());
    app.execute(MERGE, &[&queued_for, &merged_into]).unwrap();
    enqueue(&mut app, queued_for, "5");
    runner
        .batch_execute("SET identity.retry_initial_interval = '1ms'")
        .unwrap();

    // The runner follows the committed merge to `merged_into`, who stands when it looks, binds
    // to them and waits for their chain, which a second merge holds until it commits.
    let mut merging = merger.transaction().unwrap();
    merging.execute(MERGE, &[&merged_into, &last]).unwrap();
    let first_pass = run_jobs_behind(&database, &mut runner, merging);
    assert_the_retry_follows_the_merge(&mut app, &mut runner, first_pass, "5", (queued_for, last));
}

#[test]
fn a_job_whose_bind_meets_the_first_merge_of_its_user_is_retried_and_then_follows_it() {
    let database = TestDatabase::create("queue_merge_first");
    let (queued_for, merged_into) = (Uuid::new_v4(), Uuid::new_v4());
    let (mut app, mut merger, mut runner) =
        (database.connect(), database.connect(), database.connect());
    enqueue(&mut app, queued_for, "6");
    runner
        .batch_execute("SET identity.retry_initial_interval = '1ms'")
        .unwrap();

    // The user has no chain: the merge starts one, uncommitted, and the runner's bind waits for
    // it. It then appends after the merge: bound to a user merged away.
    let mut merging = merger.transaction().unwrap();
    merging
        .execute(MERGE, &[&queued_for, &merged_into])
        .unwrap();
    let first_pass = run_jobs_behind(&database, &mut runner, merging);
    assert_the_retry_follows_the_merge(
        &mut app,
        &mut runner,
        first_pass,
        "6",
        (queued_for, merged_into),
    );
}

/// The sessions `pid` waits for, as PostgreSQL sees it now.
fn blockers_of(observer: &mut Client, pid: i32) -> Vec<i32> {
    observer
        .query_one("SELECT pg_blocking_pids($1)", &[&pid])
        .unwrap()
        .get(0)
}

/// Waits (a few seconds at most) until `pid` waits for `blocker`.
fn soon_waits_for(observer: &mut Client, pid: i32, blocker: i32) -> bool {
    eventually(Duration::from_secs(10), || {
        blockers_of(observer, pid).contains(&blocker)
    })
}

#[test]
fn a_job_writes_its_binding_before_it_waits_for_the_users_chain_as_create_binding_does() {
    let database = TestDatabase::create("queue_direct_order");
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let (mut app, mut holder, mut runner, mut binder, mut observer) = (
        database.connect(),
        database.connect(),
        database.connect(),
        database.connect(),
        database.connect(),
    );
    app.execute(
        "SELECT identity.create_binding($1, 'github', '90')",
        &[&user],
    )
    .unwrap();
    enqueue(&mut app, user, "9");

    // The pass writes the job's binding and then waits for the user's chain, which `holder`
    // keeps: a create_binding of the same id (here for another user) waits for the pass. The
    // other order, the chain first, was create_binding's reversed: a pass and a create_binding
    // of the same binding could each wait for what the other held, a deadlock whose victim
    // could be the application's call.
    hold_chain_lock(&mut holder, user);
    let holder_pid = backend_pid(&mut holder);
    let (runner_pid, binder_pid) = (backend_pid(&mut runner), backend_pid(&mut binder));
    let (pass, bound) = thread::scope(|scope| {
        let running = scope.spawn(|| {
            runner
                .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
                .map(|row| row.get::<_, String>(0))
        });
        assert!(soon_waits_for(&mut observer, runner_pid, holder_pid));
        let binding = scope.spawn(|| {
            binder.query_one(
                "SELECT created FROM identity.create_binding($1, 'github', '9')",
                &[&other],
            )
        });
        let waits = soon_waits_for(&mut observer, binder_pid, runner_pid);
        holder.batch_execute("COMMIT").unwrap();
        assert!(waits, "create_binding waits for the binding the pass wrote");
        (running.join().unwrap(), binding.join().unwrap())
    });

    assert_eq!(pass.unwrap(), "succeeded");
    assert_eq!(
        sqlstate(&bound.unwrap_err()),
        "23505",
        "the pass bound it first"
    );
    assert_eq!(bound_by_job(&mut app, "9"), (user, None));
    assert!(integrity_is_clean(&mut app));
}

#[test]
fn a_pass_leaves_a_job_whose_id_another_transaction_is_binding_for_its_retry() {
    let database = TestDatabase::create("queue_id_in_use");
    let mut users = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    users.sort();
    let [first, second, third] = users;
    let (mut app, mut holders, mut runner, mut binder, mut observer) = (
        database.connect(),
        [database.connect(), database.connect()],
        database.connect(),
        database.connect(),
        database.connect(),
    );
    for (user, external_id) in [(first, "1"), (second, "2"), (third, "3")] {
        enqueue(&mut app, user, external_id);
    }

    // The pass runs the first user's job and keeps their chain; its second job waits for the
    // second user's chain, which a holder keeps. Meanwhile the application binds the third job's
    // id to the first user: create_binding writes the binding and waits for the pass, for that
    // chain. Had the pass then written the third job's binding, it would wait for create_binding,
    // and create_binding for it: a deadlock. It leaves that job for its retry instead.
    hold_chain_lock_binding(&mut holders[0], first, "998");
    hold_chain_lock_binding(&mut holders[1], second, "999");
    let holder_pids = [backend_pid(&mut holders[0]), backend_pid(&mut holders[1])];
    let (runner_pid, binder_pid) = (backend_pid(&mut runner), backend_pid(&mut binder));
    let [holds_first, holds_second] = &mut holders;
    let (pass, bound) = thread::scope(|scope| {
        let running = scope.spawn(|| {
            runner.query(
                "SELECT job_key, state, last_error FROM identity.run_binding_jobs() ORDER BY job_key",
                &[],
            )
        });
        assert!(soon_waits_for(&mut observer, runner_pid, holder_pids[0]));
        holds_first.batch_execute("COMMIT").unwrap();
        assert!(soon_waits_for(&mut observer, runner_pid, holder_pids[1]));
        let binding = scope.spawn(|| {
            binder
                .query_one(
                    "SELECT created FROM identity.create_binding($1, 'github', '3')",
                    &[&first],
                )
                .map(|row| row.get::<_, bool>(0))
        });
        assert!(soon_waits_for(&mut observer, binder_pid, runner_pid));
        holds_second.batch_execute("COMMIT").unwrap();
        (running.join().unwrap(), binding.join().unwrap())
    });

    assert!(bound.expect("create_binding is not a deadlock's victim"));
    let outcomes: Vec<(String, String, Option<String>)> = pass
        .expect("the pass is not a deadlock's victim")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        outcomes[0],
        ("bind:github:1".into(), "succeeded".into(), None)
    );
    assert_eq!(
        outcomes[1],
        ("bind:github:2".into(), "succeeded".into(), None)
    );
    let (key, state, last_error) = &outcomes[2];
    assert_eq!((key.as_str(), state.as_str()), ("bind:github:3", "pending"));
    assert!(
        last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("55P03: ")),
        "{last_error:?}"
    );
    assert!(integrity_is_clean(&mut app));
}

#[test]
fn a_job_that_a_merge_during_the_pass_puts_before_a_chain_the_pass_holds_waits_for_its_retry() {
    let database = TestDatabase::create("queue_out_of_order");
    let mut users = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    users.sort();
    let [low, middle, high] = users;
    let (mut app, mut holder, mut runner, mut merger, mut observer) = (
        database.connect(),
        database.connect(),
        database.connect(),
        database.connect(),
        database.connect(),
    );
    enqueue(&mut app, middle, "21");
    enqueue(&mut app, high, "22");
    runner
        .batch_execute("SET identity.retry_initial_interval = '1ms'")
        .unwrap();

    // The pass runs the middle user's job first and waits for their chain, which `holder`
    // keeps. Meanwhile the high user is merged into the low one: the second job now binds for a
    // user whose chain comes before the middle one's, which the pass holds once the holder lets
    // go. Taking it then, out of the order merges take chains in, could deadlock with a merge;
    // the job is left for its retry instead.
    hold_chain_lock(&mut holder, middle);
    let (holder_pid, runner_pid) = (backend_pid(&mut holder), backend_pid(&mut runner));
    let pass = thread::scope(|scope| {
        let running = scope.spawn(|| {
            runner.query(
                "SELECT job_key, state, last_error FROM identity.run_binding_jobs() ORDER BY job_key",
                &[],
            )
        });
        let waits = soon_waits_for(&mut observer, runner_pid, holder_pid);
        let merged = merger.execute(MERGE, &[&high, &low]);
        holder.batch_execute("COMMIT").unwrap();
        assert!(waits, "the pass waits for the middle user's chain");
        merged.expect("the merge waits for nothing the pass holds");
        running.join().unwrap()
    });

    let outcomes: Vec<(String, String, Option<String>)> = pass
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        outcomes[0],
        ("bind:github:21".into(), "succeeded".into(), None)
    );
    let (key, state, last_error) = &outcomes[1];
    assert_eq!(
        (key.as_str(), state.as_str()),
        ("bind:github:22", "pending")
    );
    assert!(
        last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("55P03: ") && e.contains("user order")),
        "{last_error:?}"
    );

    thread::sleep(Duration::from_millis(50));
    let retried: String = runner
        .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
        .unwrap()
        .get(0);
    assert_eq!(retried, "succeeded");
    assert_eq!(
        bound_by_job(&mut app, "22"),
        (low, Some(high.to_string())),
        "the retry binds for the user the merge ended at"
    );
    assert!(integrity_is_clean(&mut app));
}

#[test]
fn a_pass_and_a_merge_take_the_users_chains_in_the_same_order() {
    let database = TestDatabase::create("queue_lock_order");
    let mut users = [Uuid::new_v4(), Uuid::new_v4()];
    users.sort();
    let [low, high] = users;
    let (mut app, mut holder, mut merger, mut runner, mut observer) = (
        database.connect(),
        database.connect(),
        database.connect(),
        database.connect(),
        database.connect(),
    );
    for (user, external_id) in [(high, "70"), (low, "80")] {
        app.execute(
            "SELECT identity.create_binding($1, 'github', $2)",
            &[&user, &external_id],
        )
        .unwrap();
    }
    // The higher user's job is due first.
    enqueue(&mut app, high, "7");
    enqueue(&mut app, low, "8");

    // A merge of the two waits for the lower user's chain, which `holder` keeps; the pass then
    // queues behind it. Had the pass locked the higher chain first (the first job due), the
    // merge would wait for it once it had the lower one, and the pass for the lower: a deadlock.
    hold_chain_lock(&mut holder, low);
    let (merger_pid, runner_pid) = (backend_pid(&mut merger), backend_pid(&mut runner));
    let (merged, pass) = thread::scope(|scope| {
        let merging = scope.spawn(|| merger.execute(MERGE, &[&high, &low]));
        assert!(soon_waits_for_a_lock(&mut observer, merger_pid));
        let running = scope.spawn(|| {
            runner.query(
                "SELECT job_key, state, last_error FROM identity.run_binding_jobs() ORDER BY job_key",
                &[],
            )
        });
        assert!(soon_waits_for_a_lock(&mut observer, runner_pid));
        holder.batch_execute("COMMIT").unwrap();
        (merging.join().unwrap(), running.join().unwrap())
    });

    merged.expect("the merge is not a deadlock's victim");
    let outcomes: Vec<(String, String, Option<String>)> = pass
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("bind:github:7".to_owned(), "succeeded".to_owned(), None),
            ("bind:github:8".to_owned(), "succeeded".to_owned(), None),
        ]
    );
    assert_eq!(bound_by_job(&mut app, "7"), (low, Some(high.to_string())));
    assert!(integrity_is_clean(&mut app));
}
