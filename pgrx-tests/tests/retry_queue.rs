//! The binding queue over real connections: transient failures are queued and retried with the
//! policy's backoff, a SIWE login survives its binding step failing, runners never share a job.

use identity_bindings_client_tests::wallet::{siwe_message, TestWallet};
use identity_bindings_client_tests::{
    backend_pid, integrity_is_clean, soon_waits_for_a_lock, TestDatabase,
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
    client.batch_execute("BEGIN").unwrap();
    client
        .execute(
            "SELECT identity.create_binding($1, 'discord', '999', '{\"method\": \"lock holder\"}')",
            &[&user],
        )
        .unwrap();
}

#[test]
fn a_login_whose_binding_times_out_is_queued_then_bound_by_the_queue() {
    let database = TestDatabase::create("queued_login");
    let (mut holder, mut app) = (database.connect(), database.connect());
    let user = Uuid::new_v4();
    let wallet = TestWallet::from_seed(9);
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

    hold_chain_lock(&mut holder, user);
    app.batch_execute("SET lock_timeout = '300ms'").unwrap();
    let row = app
        .query_one(
            "SELECT user_id, status FROM identity.siwe_login($1, $2, 'app.example', $3)",
            &[&message, &signature, &user],
        )
        .expect("the login succeeds although its binding step timed out");
    assert_eq!(
        (row.get::<_, Uuid>(0), row.get::<_, String>(1)),
        (user, "queued".to_owned())
    );
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
    let bound: Option<Uuid> = app
        .query_one(
            "SELECT identity.resolve('wallet', $1)",
            &[&wallet.address()],
        )
        .unwrap()
        .get(0);
    assert_eq!(bound, None, "nothing half-written by the failed step");

    holder.batch_execute("COMMIT").unwrap();
    let (state,): (String,) = {
        let row = app
            .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
            .unwrap();
        (row.get(0),)
    };
    assert_eq!(state, "succeeded");
    let bound: Option<Uuid> = app
        .query_one(
            "SELECT identity.resolve('wallet', $1)",
            &[&wallet.address()],
        )
        .unwrap()
        .get(0);
    assert_eq!(bound, Some(user));
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

#[test]
fn a_job_whose_user_is_merged_on_while_it_waits_binds_where_the_merges_end() {
    let database = TestDatabase::create("queue_merge");
    let (queued_for, merged_into, last) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (mut app, mut merger, mut runner, mut observer) = (
        database.connect(),
        database.connect(),
        database.connect(),
        database.connect(),
    );
    let merge = "SELECT identity.merge_users($1, $2, '{\"ticket\": \"SUP-4\"}')";
    app.execute(merge, &[&queued_for, &merged_into]).unwrap();
    app.execute(
        "SELECT identity.enqueue_binding($1, 'github', '5', '{\"method\": \"queued\"}')",
        &[&queued_for],
    )
    .unwrap();

    // The runner follows the committed merge to `merged_into`, who stands when it looks, and
    // waits for that user's chain, which a second merge holds; that merge then commits.
    let mut merging = merger.transaction().unwrap();
    merging.execute(merge, &[&merged_into, &last]).unwrap();
    let runner_pid = backend_pid(&mut runner);
    let state = thread::scope(|scope| {
        let running = scope.spawn(|| {
            runner
                .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
                .map(|row| row.get::<_, String>(0))
        });
        assert!(
            soon_waits_for_a_lock(&mut observer, runner_pid),
            "the runner waits for the chain of the user it found"
        );
        merging.commit().unwrap();
        running.join().unwrap()
    });

    assert_eq!(state.unwrap(), "succeeded");
    let bound = app
        .query_one(
            "SELECT user_id, payload->>'queued_for' FROM identity.identity_events
              WHERE event_type = 'bind' AND payload->>'external_id' = '5'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (bound.get::<_, Uuid>(0), bound.get::<_, String>(1)),
        (last, queued_for.to_string()),
        "bound to the user the merges end at, once the merge it waited for committed"
    );
    assert!(integrity_is_clean(&mut app));
}
