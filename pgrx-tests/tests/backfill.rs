//! Backfill over a real cluster: 100,000 users with duplicates, invalid rows and a conflicting
//! binding give exact counts; a second run changes nothing; the procedure commits per batch,
//! shares the work with background workers, and resumes an interrupted run exactly.

use identity_bindings_client_tests::{
    backend_pid, eventually, integrity_is_clean, server_message, sqlstate,
    transaction_with_snapshot, TestDatabase,
};
use postgres::{Client, GenericClient, IsolationLevel};

const USERS: i64 = 100_000;

/// An application's users table: every user has a wallet derived from its number, except
/// every 1000th (a duplicate of the previous user's wallet), every 997th (an invalid address),
/// every 991st (no wallet), and one row whose id is not a UUID.
fn application_users(client: &mut Client) {
    client
        .batch_execute(&format!(
            "CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);
             INSERT INTO public.users
             SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                    CASE WHEN i % 991 = 0 THEN NULL
                         WHEN i % 997 = 0 THEN '0xnot-an-address'
                         ELSE '0x' || lpad(to_hex(CASE WHEN i % 1000 = 0 THEN i - 1 ELSE i END), 40, '0')
                    END
               FROM generate_series(1, {USERS}) i;
             CREATE TABLE public.legacy_accounts (account_id text PRIMARY KEY, eth text);
             INSERT INTO public.legacy_accounts VALUES ('legacy-7', '0x' || lpad('ff', 40, '0'));"
        ))
        .unwrap();
}

/// The exact counts, by replaying the table's rules in id order (independently of the
/// extension): (created, conflicts, invalid). `pre_bound` is a wallet number owned by another user.
fn expected(pre_bound: i64) -> (i64, i64, i64) {
    let (mut created, mut conflicts, mut invalid) = (0, 0, 0);
    let mut owner = std::collections::HashMap::new();
    owner.insert(pre_bound, 0);
    for i in 1..=USERS {
        if i % 991 == 0 {
            continue;
        }
        if i % 997 == 0 {
            invalid += 1;
            continue;
        }
        let wallet = if i % 1000 == 0 { i - 1 } else { i };
        match owner.get(&wallet) {
            None => {
                owner.insert(wallet, i);
                created += 1;
            }
            Some(&holder) if holder == i => {}
            Some(_) => conflicts += 1,
        }
    }
    (created, conflicts, invalid)
}

/// The application's users, and one wallet (number 42) already bound to someone else: a conflict
/// the backfill must report, not move. Returns the exact (created, conflicts, invalid).
fn application_users_and_a_conflict(client: &mut Client) -> (i64, i64, i64) {
    application_users(client);
    client
        .execute(
            "SELECT identity.create_binding(gen_random_uuid(), 'wallet', '0x' || lpad(to_hex(42), 40, '0'))",
            &[],
        )
        .unwrap();
    expected(42)
}

#[test]
fn a_hundred_thousand_users_backfill_with_exact_counts_and_a_rerun_changes_nothing() {
    let database = TestDatabase::create("backfill_100k");
    let mut client = database.connect();
    let (created, conflicts, invalid) = application_users_and_a_conflict(&mut client);

    let first = client
        .query_one("SELECT * FROM identity.backfill_wallet_bindings()", &[])
        .unwrap();
    let counts = |row: &postgres::Row| (0..5).map(|i| row.get::<_, i64>(i)).collect::<Vec<_>>();
    assert_eq!(counts(&first), vec![USERS, created, 0, conflicts, invalid]);

    let events: i64 = client
        .query_one("SELECT count(*) FROM identity.identity_events WHERE payload->'evidence'->>'method' = 'backfill'", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        events, created,
        "one bind event per binding created, none for the rest"
    );

    let second = client
        .query_one("SELECT * FROM identity.backfill_wallet_bindings()", &[])
        .unwrap();
    assert_eq!(counts(&second), vec![USERS, 0, created, conflicts, invalid]);
    let events_after: i64 = client
        .query_one("SELECT count(*) FROM identity.identity_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(events_after, created + 1, "a rerun writes nothing");
    assert!(integrity_is_clean(&mut client));

    // Text ids and any column names.
    let legacy = client
        .query_one("SELECT scanned, invalid FROM identity.backfill_wallet_bindings('legacy_accounts', 'account_id', 'eth')", &[])
        .unwrap();
    assert_eq!(
        (legacy.get::<_, i64>(0), legacy.get::<_, i64>(1)),
        (1, 1),
        "a non-UUID id is counted invalid"
    );
}

#[test]
fn the_procedure_commits_each_batch_and_resumes_where_it_stopped() {
    let database = TestDatabase::create("backfill_batches");
    let mut client = database.connect();
    client
        .batch_execute(
            "CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);
             INSERT INTO public.users
             SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, '0x' || lpad(to_hex(i), 40, '0')
               FROM generate_series(1, 2500) i;",
        )
        .unwrap();
    // Resume after the 1000th user: only the rest is bound. In this session alone, so that its
    // batches are exactly three.
    client
        .batch_execute("SET identity.max_parallel_backfill_workers = 0")
        .unwrap();
    client
        .batch_execute(
            "CALL identity.backfill_wallet_bindings_in_batches(batch_size => 500,
                  resume_after_id => '00000000-0000-4000-8000-0000000003e8')",
        )
        .unwrap();
    let bound: i64 = client
        .query_one("SELECT count(*) FROM identity.user_bindings", &[])
        .unwrap()
        .get(0);
    assert_eq!(bound, 1500);
    // Each batch was its own transaction: the bind events carry three distinct transaction times.
    let transactions: i64 = client
        .query_one(
            "SELECT count(DISTINCT created_at) FROM identity.identity_events",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(transactions, 3);
    client
        .batch_execute("CALL identity.backfill_wallet_bindings_in_batches(batch_size => 1000)")
        .unwrap();
    let bound: i64 = client
        .query_one("SELECT count(*) FROM identity.user_bindings", &[])
        .unwrap()
        .get(0);
    assert_eq!(bound, 2500);
    assert!(integrity_is_clean(&mut client));
}

/// Backfill background workers running now.
fn backfill_workers_running(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'identity_bindings backfill'",
            &[],
        )
        .unwrap()
        .get(0)
}

/// The most backfill background workers `observer` saw in pg_stat_activity while `busy` ran.
fn workers_seen_while(mut observer: Client, busy: impl FnOnce()) -> usize {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(backfill_workers_running(&mut observer) as usize);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            most
        })
    };
    busy();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watching.join().unwrap()
}

/// The sums over a run's parts: (scanned, created, existing, conflicts, invalid), and whether
/// every part is done.
fn run_totals(client: &mut Client, run: i64) -> (Vec<i64>, bool) {
    let row = client
        .query_one(
            "SELECT sum(scanned)::int8, sum(created)::int8, sum(existing)::int8, sum(conflicts)::int8,
                    sum(invalid)::int8, bool_and(done)
               FROM identity.backfill_parts WHERE run_id = $1",
            &[&run],
        )
        .unwrap();
    ((0..5).map(|i| row.get::<_, i64>(i)).collect(), row.get(5))
}

/// There is one run, every part done, and its counts are the exact (created, conflicts, invalid)
/// of all USERS rows, each counted once.
fn assert_one_finished_run(
    client: &mut Client,
    (created, conflicts, invalid): (i64, i64, i64),
    why: &str,
) {
    let runs: i64 = client
        .query_one(
            "SELECT count(DISTINCT run_id) FROM identity.backfill_parts",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "{why}");
    let run: i64 = client
        .query_one("SELECT max(run_id) FROM identity.backfill_parts", &[])
        .unwrap()
        .get(0);
    let (totals, done) = run_totals(client, run);
    assert!(done);
    assert_eq!(totals, vec![USERS, created, 0, conflicts, invalid]);
}

#[test]
fn background_workers_share_the_batched_backfill_with_exact_counts() {
    let database = TestDatabase::create("backfill_parallel");
    let mut client = database.connect();
    let (created, conflicts, invalid) = application_users_and_a_conflict(&mut client);

    let workers = workers_seen_while(database.connect(), || {
        client
            .batch_execute("SET identity.max_parallel_backfill_workers = 2")
            .unwrap();
        client
            .batch_execute("CALL identity.backfill_wallet_bindings_in_batches(batch_size => 1000)")
            .unwrap();
    });
    assert!(
        workers >= 1,
        "background workers bound parts beside the session"
    );
    assert_one_finished_run(
        &mut client,
        (created, conflicts, invalid),
        "one CALL, one run",
    );
    let parts: i64 = client
        .query_one("SELECT count(*) FROM identity.backfill_parts", &[])
        .unwrap()
        .get(0);
    assert!(parts > 1, "the table was split into parts");
    let events: i64 = client
        .query_one("SELECT count(*) FROM identity.identity_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(events, created + 1, "one bind event per binding created");
    assert!(integrity_is_clean(&mut client));
}

/// Who called which of the `shadow` schema's operators so far: (caller, operator), each once.
fn shadow_calls(client: &mut Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT DISTINCT caller::text, operator FROM shadow.calls ORDER BY 1, 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[test]
fn operators_a_search_path_puts_before_pg_catalog_reach_neither_the_procedure_nor_its_workers() {
    let database = TestDatabase::create("backfill_search_path");
    let mut client = database.connect();
    let (created, conflicts, invalid) = application_users_and_a_conflict(&mut client);
    // The database's search_path lists a schema before pg_catalog whose `=` for text and for oid
    // note who calls them. The procedure runs with its caller's search_path (it cannot pin one);
    // its workers connect with the database's. Both compare with `=`: a text, an oid. The test's
    // own sessions connect before the search_path is set.
    let runner = format!("{}_runner", database.name());
    let observer = database.connect();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA shadow;
             CREATE TABLE shadow.calls (caller name, operator text);
             CREATE FUNCTION shadow.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO shadow.calls VALUES (current_user, 'text = text');
                 RETURN $1 OPERATOR(pg_catalog.=) $2;
             END $$;
             CREATE OPERATOR shadow.= (leftarg = text, rightarg = text, function = shadow.text_eq);
             CREATE FUNCTION shadow.oid_eq(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO shadow.calls VALUES (current_user, 'oid = oid');
                 RETURN $1 OPERATOR(pg_catalog.=) $2;
             END $$;
             CREATE OPERATOR shadow.= (leftarg = oid, rightarg = oid, function = shadow.oid_eq);
             CREATE ROLE {runner};
             GRANT USAGE ON SCHEMA shadow TO {runner};
             GRANT INSERT ON shadow.calls TO {runner};
             GRANT SELECT ON public.users TO {runner};
             GRANT USAGE ON SCHEMA identity TO {runner};
             GRANT EXECUTE ON PROCEDURE identity.backfill_wallet_bindings_in_batches TO {runner};
             GRANT EXECUTE ON FUNCTION identity.backfill_plan, identity.backfill_launch_workers,
                 identity.backfill_step TO {runner};
             ALTER DATABASE {} SET search_path = shadow, pg_catalog;",
            database.name()
        ))
        .unwrap();

    // A superuser runs the backfill as the role, in a session with the database's search_path,
    // and that search_path does reach the role's own comparisons.
    let mut caller = database.connect();
    caller
        .batch_execute(&format!(
            "SET ROLE {runner};
             SET identity.max_parallel_backfill_workers = 2;
             SELECT 'a'::text = 'a', 1::oid = 1;"
        ))
        .unwrap();
    assert_eq!(
        shadow_calls(&mut client).len(),
        2,
        "the shadowing operators are live"
    );
    client.batch_execute("TRUNCATE shadow.calls").unwrap();

    let workers = workers_seen_while(observer, || {
        caller
            .batch_execute("CALL identity.backfill_wallet_bindings_in_batches(batch_size => 1000)")
            .unwrap();
    });
    assert!(workers >= 1, "background workers bound parts");
    assert_eq!(
        shadow_calls(&mut client),
        [],
        "neither the procedure nor its workers called the shadowing operators"
    );
    assert_one_finished_run(
        &mut client,
        (created, conflicts, invalid),
        "the backfill ran to its end",
    );
    assert!(integrity_is_clean(&mut client));
}

#[test]
fn an_interrupted_parallel_backfill_resumes_and_counts_each_row_once() {
    let database = TestDatabase::create("backfill_resume");
    let mut client = database.connect();
    application_users(&mut client);
    let (created, conflicts, invalid) = expected(0);

    // Stop the run in the middle: end the calling session and its workers once some batches
    // are committed.
    let caller_pid = backend_pid(&mut client);
    let mut observer = database.connect();
    let interrupted = std::thread::spawn(move || {
        client.batch_execute("SET identity.max_parallel_backfill_workers = 2")?;
        client.batch_execute("CALL identity.backfill_wallet_bindings_in_batches(batch_size => 500)")
    });
    assert!(eventually(std::time::Duration::from_secs(60), || {
        let bound: i64 = observer
            .query_one(
                "SELECT coalesce(sum(created), 0)::int8 FROM identity.backfill_parts",
                &[],
            )
            .unwrap()
            .get(0);
        bound >= 10_000
    }));
    observer
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE pid = $1 OR backend_type = 'identity_bindings backfill'",
            &[&caller_pid],
        )
        .unwrap();
    assert!(
        interrupted.join().unwrap().is_err(),
        "the CALL was cut short"
    );
    assert!(eventually(std::time::Duration::from_secs(30), || {
        backfill_workers_running(&mut observer) == 0
    }));

    let unfinished: i64 = observer
        .query_one(
            "SELECT count(*) FROM identity.backfill_parts WHERE NOT done",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(unfinished > 0, "the run stopped before its end");

    // Calling it again resumes the same run; its counts are exact, as if it had never stopped.
    let mut client = database.connect();
    client
        .batch_execute("SET identity.max_parallel_backfill_workers = 2")
        .unwrap();
    client
        .batch_execute("CALL identity.backfill_wallet_bindings_in_batches(batch_size => 500)")
        .unwrap();
    assert_one_finished_run(
        &mut client,
        (created, conflicts, invalid),
        "the interrupted run was resumed, not replaced",
    );
    let bound: i64 = client
        .query_one("SELECT count(*) FROM identity.user_bindings", &[])
        .unwrap()
        .get(0);
    assert_eq!(bound, created);
    assert!(integrity_is_clean(&mut client));
}

#[test]
fn parts_that_share_wallets_in_opposite_orders_bind_each_wallet_once() {
    let database = TestDatabase::create("backfill_shared_wallets");
    let mut client = database.connect();
    // The second half of the users holds the first half's wallets in reverse order, so parallel
    // parts insert the same wallets in opposite orders (the shape of a deadlock, which a batch
    // survives by being tried again).
    client
        .batch_execute(
            "CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);
             INSERT INTO public.users
             SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                    '0x' || lpad(to_hex(CASE WHEN i <= 10000 THEN i ELSE 20001 - i END), 40, '0')
               FROM generate_series(1, 20000) i;
             SET identity.max_parallel_backfill_workers = 2;",
        )
        .unwrap();
    client
        .batch_execute("CALL identity.backfill_wallet_bindings_in_batches(batch_size => 500)")
        .unwrap();
    let (totals, done) = run_totals(&mut client, 1);
    assert!(done);
    assert_eq!(totals, vec![20_000, 10_000, 0, 10_000, 0]);
    let wrong_owner: i64 = client
        .query_one(
            "SELECT count(*) FROM identity.user_bindings b
              WHERE NOT EXISTS (SELECT FROM public.users u
                                 WHERE u.id = b.user_id
                                   AND lower(u.wallet_address) = lower(b.external_id))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        wrong_owner, 0,
        "each wallet went to one of the users that hold it"
    );
    assert!(integrity_is_clean(&mut client));
}

#[test]
fn two_calls_started_together_share_one_run() {
    let database = TestDatabase::create("backfill_two_calls");
    let mut client = database.connect();
    application_users(&mut client);
    let (created, conflicts, invalid) = expected(0);
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let mut session = database.connect();
            std::thread::spawn(move || {
                session.batch_execute(
                    "CALL identity.backfill_wallet_bindings_in_batches(batch_size => 1000)",
                )
            })
        })
        .collect();
    for call in calls {
        call.join().unwrap().unwrap();
    }
    assert_one_finished_run(
        &mut client,
        (created, conflicts, invalid),
        "the second CALL joined the first one's run",
    );
    assert!(integrity_is_clean(&mut client));
}

/// 2,500 users, to be bound in one part of batches of 1,000 (no workers in this session).
fn one_part_users(client: &mut Client) {
    client
        .batch_execute(
            "CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);
             INSERT INTO public.users
             SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, '0x' || lpad(to_hex(i), 40, '0')
               FROM generate_series(1, 2500) i;
             SET identity.max_parallel_backfill_workers = 0",
        )
        .unwrap();
}

/// The run a CALL on `public.users` would work on (batches of 1,000), after `resume_after_id`.
fn plan(
    client: &mut impl GenericClient,
    resume_after_id: Option<&str>,
) -> Result<i64, postgres::Error> {
    client
        .query_one(
            "SELECT identity.backfill_plan('users', 'id', 'wallet_address', 1000, $1)",
            &[&resume_after_id],
        )
        .map(|row| row.get(0))
}

/// A run of 2,500 users in one part of batches of 1,000 (no workers), planned and committed.
fn one_part_run(client: &mut Client) -> i64 {
    one_part_users(client);
    plan(client, None).unwrap()
}

/// Steps `run` in this session, one transaction per step, until it is done.
fn step_until_done(client: &mut Client, run: i64) {
    let mut steps = 0;
    loop {
        let outcome: String = client
            .query_one("SELECT identity.backfill_step($1)", &[&run])
            .unwrap()
            .get(0);
        steps += 1;
        assert!(steps < 10, "the run never finished");
        if outcome == "done" {
            return;
        }
    }
}

/// The totals of `run`: scanned, created, existing (conflicts and invalid are none here).
fn scanned_created_existing(client: &mut Client, run: i64) -> Vec<i64> {
    run_totals(client, run).0[..3].to_vec()
}

#[test]
fn a_step_whose_snapshot_predates_a_finished_part_does_not_bind_it_again() {
    let database = TestDatabase::create("backfill_stale_step");
    let mut client = database.connect();
    let run = one_part_run(&mut client);

    // The late step's statement takes its snapshot, then waits at a gate (an advisory lock held
    // here) while this session binds the whole part and, with its last step, lets go of it.
    let mut gate = database.connect();
    gate.execute("SELECT pg_advisory_lock(4242)", &[]).unwrap();
    let mut late = database.connect();
    let late_step = std::thread::spawn(move || {
        late.query_one(
            "SELECT identity.backfill_step($1)
               FROM (SELECT pg_advisory_lock(4242) OFFSET 0) AS waits_at_the_gate",
            &[&run],
        )
        .map(|row| row.get::<_, String>(0))
    });
    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            client
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }),
        "the late step never reached the gate"
    );
    step_until_done(&mut client, run);
    assert_eq!(
        scanned_created_existing(&mut client, run),
        vec![2500, 2500, 0]
    );

    gate.execute("SELECT pg_advisory_unlock(4242)", &[])
        .unwrap();
    let outcome = late_step.join().unwrap().unwrap();
    assert_eq!(
        outcome, "more",
        "the late step found the part done, and looks again"
    );
    assert_eq!(
        scanned_created_existing(&mut client, run),
        vec![2500, 2500, 0],
        "no batch was bound or counted twice"
    );
    assert!(integrity_is_clean(&mut client));
}

#[test]
fn a_repeatable_read_step_that_started_before_a_part_finished_waits_and_binds_nothing() {
    let database = TestDatabase::create("backfill_stale_rr_step");
    let mut client = database.connect();
    let run = one_part_run(&mut client);

    let mut late = database.connect();
    let mut stale = transaction_with_snapshot(&mut late, IsolationLevel::RepeatableRead);
    step_until_done(&mut client, run);

    let outcome: String = stale
        .query_one("SELECT identity.backfill_step($1)", &[&run])
        .unwrap()
        .get(0);
    assert_eq!(
        outcome, "waiting",
        "its snapshot cannot see the part's last batch: it leaves the part to a later step"
    );
    stale.commit().unwrap();
    let outcome: String = late
        .query_one("SELECT identity.backfill_step($1)", &[&run])
        .unwrap()
        .get(0);
    assert_eq!(outcome, "done");
    assert_eq!(
        scanned_created_existing(&mut client, run),
        vec![2500, 2500, 0]
    );
    assert!(integrity_is_clean(&mut client));
}

/// The ids of the runs recorded, in order.
fn runs(client: &mut Client) -> Vec<i64> {
    client
        .query(
            "SELECT DISTINCT run_id FROM identity.backfill_parts ORDER BY run_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn a_repeatable_read_or_serializable_plan_joins_a_run_planned_after_its_snapshot() {
    for (isolation, name) in [
        (IsolationLevel::RepeatableRead, "backfill_rr_plan_joins"),
        (
            IsolationLevel::Serializable,
            "backfill_serializable_plan_joins",
        ),
    ] {
        let database = TestDatabase::create(name);
        let mut client = database.connect();
        one_part_users(&mut client);
        let mut late = database.connect();
        late.batch_execute("SET identity.max_parallel_backfill_workers = 0")
            .unwrap();
        let mut stale = transaction_with_snapshot(&mut late, isolation);
        let run = plan(&mut client, None).unwrap();

        let joined = plan(&mut stale, None).unwrap();
        assert_eq!(
            joined, run,
            "{isolation:?}: its snapshot cannot see the run, and it joins it instead of planning a second"
        );
        stale.commit().unwrap();
        assert_eq!(runs(&mut client), vec![run], "{isolation:?}");
        step_until_done(&mut late, run);
        assert_eq!(
            scanned_created_existing(&mut client, run),
            vec![2500, 2500, 0],
            "{isolation:?}"
        );
        assert!(integrity_is_clean(&mut client));
    }
}

#[test]
fn a_repeatable_read_plan_cannot_replace_a_run_planned_after_its_snapshot() {
    let database = TestDatabase::create("backfill_rr_plan_replaces");
    let mut client = database.connect();
    one_part_users(&mut client);
    let resume_after = Some("00000000-0000-4000-8000-000000000100");
    let mut late = database.connect();
    late.batch_execute("SET identity.max_parallel_backfill_workers = 0")
        .unwrap();
    let mut stale = transaction_with_snapshot(&mut late, IsolationLevel::RepeatableRead);
    let run = plan(&mut client, None).unwrap();

    let refused = plan(&mut stale, resume_after).unwrap_err();
    assert_eq!(sqlstate(&refused), "40001", "{refused:?}");
    assert!(
        server_message(&refused).contains(&format!("backfill run {run}")),
        "{refused:?}"
    );
    stale.rollback().unwrap();
    assert_eq!(runs(&mut client), vec![run], "nothing was planned");

    let replacing = plan(&mut late, resume_after).unwrap();
    assert_eq!(
        runs(&mut client),
        vec![replacing],
        "called again, the new run replaces the unfinished one, as under READ COMMITTED"
    );
    step_until_done(&mut client, replacing);
    assert_eq!(
        scanned_created_existing(&mut client, replacing),
        vec![2244, 2244, 0]
    );
}

#[test]
fn two_repeatable_read_calls_started_together_share_one_run() {
    let database = TestDatabase::create("backfill_rr_two_calls");
    let mut client = database.connect();
    one_part_users(&mut client);
    // A gate on the table of runs: the first CALL takes the planning lock and waits here; the
    // second, its snapshot already taken, waits for the planning lock. Opened, the first plans
    // and commits its run, which the second's snapshot cannot see.
    let mut gate = database.connect();
    gate.batch_execute("BEGIN; LOCK TABLE identity.backfill_parts IN EXCLUSIVE MODE")
        .unwrap();
    let call = |database: &TestDatabase| {
        let mut session = database.connect();
        session
            .batch_execute(
                "SET default_transaction_isolation = 'repeatable read';
                 SET identity.max_parallel_backfill_workers = 0",
            )
            .unwrap();
        std::thread::spawn(move || {
            // Sent alone: in a string of several statements, the procedure could not COMMIT.
            session.batch_execute(
                "CALL identity.backfill_wallet_bindings_in_batches(batch_size => 1000)",
            )
        })
    };
    let waiting = |client: &mut Client, count: i64| {
        eventually(std::time::Duration::from_secs(10), || {
            client
                .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
                .unwrap()
                .get::<_, i64>(0)
                == count
        })
    };
    let first = call(&database);
    assert!(
        waiting(&mut client, 1),
        "the first CALL never reached the gate"
    );
    let second = call(&database);
    assert!(
        waiting(&mut client, 2),
        "the second CALL never waited to plan"
    );
    gate.batch_execute("COMMIT").unwrap();
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();

    let runs = runs(&mut client);
    assert_eq!(runs.len(), 1, "the second CALL joined the first one's run");
    assert_eq!(
        scanned_created_existing(&mut client, runs[0]),
        vec![2500, 2500, 0]
    );
    assert!(integrity_is_clean(&mut client));
}
