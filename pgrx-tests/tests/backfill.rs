//! Backfill over a real cluster: 100,000 users with duplicates, invalid rows and a conflicting
//! binding give exact counts; a second run changes nothing; the procedure commits per batch.

use identity_bindings_client_tests::{integrity_is_clean, TestDatabase};
use postgres::Client;

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

#[test]
fn a_hundred_thousand_users_backfill_with_exact_counts_and_a_rerun_changes_nothing() {
    let database = TestDatabase::create("backfill_100k");
    let mut client = database.connect();
    application_users(&mut client);
    // One wallet already belongs to someone else: a conflict the backfill must report, not move.
    client
        .execute(
            "SELECT identity.create_binding(gen_random_uuid(), 'wallet', '0x' || lpad(to_hex(42), 40, '0'))",
            &[],
        )
        .unwrap();
    let (created, conflicts, invalid) = expected(42);

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
    // Resume after the 1000th user: only the rest is bound.
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
