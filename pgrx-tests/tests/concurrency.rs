//! Concurrency: racing sessions, per-user chain serialization, isolation levels.

use identity_bindings_client_tests::{
    backend_pid, integrity_is_clean, run_behind, server_message, soon_waits_for_a_lock, sqlstate,
    transaction_with_snapshot, TestDatabase,
};
use postgres::GenericClient;
use postgres::IsolationLevel;
use std::sync::Barrier;
use std::thread;
use uuid::Uuid;

const SESSIONS: usize = 8;
const IDS: usize = 1000;

fn bind(
    client: &mut impl GenericClient,
    user: Uuid,
    external_id: &str,
) -> Result<bool, postgres::Error> {
    client
        .query_one(
            "SELECT created FROM identity.create_binding($1, 'github', $2, '{\"method\": \"race\"}')",
            &[&user, &external_id],
        )
        .map(|row| row.get(0))
}

#[test]
fn eight_sessions_racing_for_the_same_thousand_ids_bind_each_exactly_once() {
    let database = TestDatabase::create("race_ids");
    let ids: Vec<String> = (0..IDS).map(|i| (1_000_000 + i).to_string()).collect();
    let start = Barrier::new(SESSIONS);

    let per_session: Vec<(Uuid, Vec<String>)> = thread::scope(|scope| {
        let sessions: Vec<_> = (0..SESSIONS)
            .map(|session| {
                let (database, ids, start) = (&database, &ids, &start);
                scope.spawn(move || {
                    let mut client = database.connect();
                    let user = Uuid::new_v4();
                    // Every session walks all ids from its own starting point, half of them
                    // backwards, so each id is contended by several sessions at once.
                    let mut order: Vec<&String> = ids
                        .iter()
                        .cycle()
                        .skip(session * IDS / SESSIONS)
                        .take(IDS)
                        .collect();
                    if session % 2 == 1 {
                        order.reverse();
                    }
                    start.wait();
                    let mut won = Vec::new();
                    for id in order {
                        match bind(&mut client, user, id) {
                            Ok(true) => won.push(id.clone()),
                            Ok(false) => panic!("session {session} saw {id} as already its own"),
                            Err(e) if sqlstate(&e) == "23505" => {}
                            Err(e) => panic!("session {session}, id {id}: unexpected error {e:?}"),
                        }
                    }
                    (user, won)
                })
            })
            .collect();
        sessions
            .into_iter()
            .map(|s| s.join().expect("session thread"))
            .collect()
    });

    let mut won: Vec<&String> = per_session.iter().flat_map(|(_, ids)| ids).collect();
    won.sort();
    won.dedup();
    assert_eq!(
        won.len(),
        IDS,
        "each id is won exactly once across sessions"
    );
    assert_eq!(
        per_session.iter().map(|(_, ids)| ids.len()).sum::<usize>(),
        IDS
    );

    let mut client = database.connect();
    let bindings: i64 = client
        .query_one("SELECT count(*) FROM identity.user_bindings", &[])
        .unwrap()
        .get(0);
    assert_eq!(bindings, IDS as i64);
    // Exactly one bind event per id, for the user that holds the binding.
    let mismatched: i64 = client
        .query_one(
            "SELECT count(*) FROM identity.user_bindings b
              WHERE (SELECT count(*) FROM identity.identity_events e
                      WHERE e.event_type = 'bind' AND e.payload->>'external_id' = b.external_id
                        AND e.user_id = b.user_id) <> 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0);
    let events: i64 = client
        .query_one("SELECT count(*) FROM identity.identity_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(events, IDS as i64, "no event for a lost race");
    for (user, ids) in &per_session {
        let held: i64 = client
            .query_one(
                "SELECT count(*) FROM identity.user_bindings WHERE user_id = $1",
                &[user],
            )
            .unwrap()
            .get(0);
        assert_eq!(held, ids.len() as i64);
    }
    assert!(integrity_is_clean(&mut client));
}

#[test]
fn concurrent_appends_for_one_user_form_one_unforked_chain() {
    let database = TestDatabase::create("one_chain");
    let user = Uuid::new_v4();
    let start = Barrier::new(SESSIONS);
    thread::scope(|scope| {
        for session in 0..SESSIONS {
            let (database, start) = (&database, &start);
            scope.spawn(move || {
                let mut client = database.connect();
                start.wait();
                for i in 0..50 {
                    let id = (session * 1000 + i + 1).to_string();
                    assert!(bind(&mut client, user, &id).expect("bind"), "{id} is new");
                }
            });
        }
    });
    let mut client = database.connect();
    let (events, first, last, distinct): (i64, i64, i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*), min(seq), max(seq), count(DISTINCT seq) FROM identity.identity_events WHERE user_id = $1",
                &[&user],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    assert_eq!((events, first, last, distinct), (400, 1, 400, 400));
    let row = client
        .query_one(
            "SELECT events, ok FROM identity.verify_event_chain($1)",
            &[&user],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (400, true));
}

#[test]
fn appends_for_one_user_wait_for_each_other_but_never_for_other_users() {
    let database = TestDatabase::create("chain_locks");
    let (busy_user, other_user) = (Uuid::new_v4(), Uuid::new_v4());
    let mut first = database.connect();
    let mut second = database.connect();
    // Both users have a chain already, so the test is about appending, not starting chains.
    bind(&mut first, busy_user, "1").unwrap();
    bind(&mut first, other_user, "2").unwrap();

    let mut holder = first.transaction().unwrap();
    assert!(bind(&mut holder, busy_user, "3").unwrap());

    second.batch_execute("SET lock_timeout = '500ms'").unwrap();
    assert!(bind(&mut second, other_user, "4").expect("another user's append does not wait"));
    let blocked = bind(&mut second, busy_user, "5").expect_err("the same user's append waits");
    assert_eq!(sqlstate(&blocked), "55P03");

    holder.commit().unwrap();
    assert!(bind(&mut second, busy_user, "5").expect("after the commit the append goes through"));
    assert!(integrity_is_clean(&mut second));
}

#[test]
fn under_repeatable_read_a_stale_chain_append_is_a_serialization_failure() {
    let database = TestDatabase::create("chain_rr");
    let (existing_user, new_user) = (Uuid::new_v4(), Uuid::new_v4());
    let mut late = database.connect();
    let mut early = database.connect();
    bind(&mut early, existing_user, "1").unwrap();

    for (user, first_id, second_id) in [(existing_user, "2", "3"), (new_user, "4", "5")] {
        let mut stale = transaction_with_snapshot(&mut late, IsolationLevel::RepeatableRead);
        bind(&mut early, user, first_id).unwrap();
        let error =
            bind(&mut stale, user, second_id).expect_err("the snapshot predates the other append");
        assert_eq!(sqlstate(&error), "40001", "{error:?}");
        stale.rollback().unwrap();
        // Retried, as 40001 asks, it succeeds.
        assert!(bind(&mut late, user, second_id).unwrap());
    }
    assert!(integrity_is_clean(&mut late));
}

#[test]
fn under_repeatable_read_an_id_bound_after_the_snapshot_is_a_serialization_failure() {
    let database = TestDatabase::create("bind_rr");
    let (owner, other_user) = (Uuid::new_v4(), Uuid::new_v4());
    let mut late = database.connect();
    let mut early = database.connect();

    // The same id, by its owner and then by another user: neither stale transaction can tell,
    // on its snapshot, whether the binding it cannot see is its own, so both are asked to retry.
    for (external_id, binder) in [("10", owner), ("11", other_user)] {
        let mut stale = transaction_with_snapshot(&mut late, IsolationLevel::RepeatableRead);
        assert!(bind(&mut early, owner, external_id).unwrap());
        let error = bind(&mut stale, binder, external_id)
            .expect_err("the snapshot predates the other binding");
        assert_eq!(sqlstate(&error), "40001", "{error:?}");
        stale.rollback().unwrap();
    }
    // Retried, as 40001 asks: the owner's repeat is idempotent, the other user is refused.
    assert!(!bind(&mut late, owner, "10").unwrap());
    let refused = bind(&mut late, other_user, "11").unwrap_err();
    assert_eq!(sqlstate(&refused), "23505", "{refused:?}");
    let bindings: i64 = late
        .query_one("SELECT count(*) FROM identity.user_bindings", &[])
        .unwrap()
        .get(0);
    assert_eq!(bindings, 2, "each id bound once, to its owner");
    assert!(integrity_is_clean(&mut late));
}

/// Merges `from_user` into `into_user` on a new session while `bind_external_id` is being bound
/// to `from_user` in a transaction of `holder`'s, committed only once the merge is seen waiting.
/// The merge's outcome: how many bindings it moved.
fn merge_during_a_bind(
    database: &TestDatabase,
    holder: &mut postgres::Client,
    (from_user, into_user): (Uuid, Uuid),
    bind_external_id: &str,
) -> Result<i32, postgres::Error> {
    let mut merger = database.connect();
    let mut pending = holder.transaction().unwrap();
    assert!(bind(&mut pending, from_user, bind_external_id).unwrap());
    run_behind(database, &mut merger, pending, |merger| {
        merge(merger, from_user, into_user)
    })
}

fn merge(
    client: &mut impl GenericClient,
    from_user: Uuid,
    into_user: Uuid,
) -> Result<i32, postgres::Error> {
    client
        .query_one(
            "SELECT identity.merge_users($1, $2, '{\"ticket\": \"SUP-2\"}')",
            &[&from_user, &into_user],
        )
        .map(|row| row.get(0))
}

fn bindings_of(client: &mut postgres::Client, user: Uuid) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM identity.user_bindings WHERE user_id = $1",
            &[&user],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_merge_that_waits_for_an_append_to_the_merged_user_moves_what_that_append_bound() {
    let database = TestDatabase::create("merge_waits");
    let users @ (from_user, into_user) = (Uuid::new_v4(), Uuid::new_v4());
    let mut client = database.connect();
    bind(&mut client, from_user, "1").unwrap();
    bind(&mut client, into_user, "2").unwrap();

    // The bind holds the merged user's chain: the merge waits for it, then moves its binding with
    // the other, so the merged user keeps nothing and the merge event names both.
    let moved = merge_during_a_bind(&database, &mut client, users, "3");
    assert_eq!(moved.unwrap(), 2);
    assert_eq!(
        bindings_of(&mut client, from_user),
        0,
        "nothing stays behind"
    );
    let named: i32 = client
        .query_one(
            "SELECT jsonb_array_length(payload->'bindings') FROM identity.identity_events
              WHERE user_id = $1 AND event_type = 'merge'",
            &[&into_user],
        )
        .unwrap()
        .get(0);
    assert_eq!(named, 2);
    assert!(integrity_is_clean(&mut client));
}

#[test]
fn a_merge_that_meets_the_merged_users_first_bind_is_retried_and_then_moves_it() {
    let database = TestDatabase::create("merge_first_bind");
    let users @ (from_user, into_user) = (Uuid::new_v4(), Uuid::new_v4());
    let mut client = database.connect();
    bind(&mut client, into_user, "2").unwrap();

    // The merged user's first bind: there is no chain of theirs to lock, so the merge cannot see
    // the binding, and then meets the chain the bind is starting.
    let error = merge_during_a_bind(&database, &mut client, users, "3")
        .expect_err("the bind committed after the merge read the bindings");
    assert_eq!(sqlstate(&error), "40001", "{error:?}");
    assert!(
        server_message(&error).contains(&format!("could not merge user {from_user}")),
        "{error:?}"
    );

    // Retried, as 40001 asks, the merge moves the binding, and nothing stays behind.
    assert_eq!(merge(&mut client, from_user, into_user).unwrap(), 1);
    assert_eq!(
        bindings_of(&mut client, from_user),
        0,
        "nothing stays behind"
    );
    assert!(integrity_is_clean(&mut client));
}

#[test]
fn a_revoke_during_a_merge_waits_for_it_and_revokes_from_the_user_merged_into() {
    let database = TestDatabase::create("merge_revoke");
    let (from_user, into_user) = (Uuid::new_v4(), Uuid::new_v4());
    let (mut client, mut merger, mut revoker) =
        (database.connect(), database.connect(), database.connect());
    bind(&mut client, from_user, "1").unwrap();
    bind(&mut client, from_user, "2").unwrap();
    bind(&mut client, into_user, "3").unwrap();
    let (merger_pid, revoker_pid) = (backend_pid(&mut merger), backend_pid(&mut revoker));
    let mut observer = database.connect();

    // A session holding the row of binding 1 stops the merge after it has locked both chains,
    // while it moves the bindings; the revoke of binding 2 then starts.
    let mut row_holder = client.transaction().unwrap();
    row_holder
        .execute(
            "SELECT FROM identity.user_bindings WHERE external_id = '1' FOR UPDATE",
            &[],
        )
        .unwrap();
    let (merged, revoked) = thread::scope(|scope| {
        let merging = scope.spawn(|| merge(&mut merger, from_user, into_user));
        assert!(
            soon_waits_for_a_lock(&mut observer, merger_pid),
            "the merge waits for the held row"
        );
        let revoking = scope.spawn(|| {
            revoker
                .query_one(
                    "SELECT user_id FROM identity.revoke_binding('github', '2', '{}')",
                    &[],
                )
                .map(|row| row.get::<_, Uuid>(0))
        });
        assert!(
            soon_waits_for_a_lock(&mut observer, revoker_pid),
            "the revoke waits for the merge"
        );
        row_holder.commit().unwrap();
        (merging.join().unwrap(), revoking.join().unwrap())
    });

    // Neither deadlocks: the merge moves both bindings, and the revoke, once the merge is done,
    // revokes binding 2 from the user it was merged into.
    assert_eq!(merged.unwrap(), 2);
    assert_eq!(revoked.unwrap(), into_user);
    assert_eq!(bindings_of(&mut client, into_user), 2, "bindings 1 and 3");
    assert!(integrity_is_clean(&mut client));
}

#[test]
fn a_revoke_that_finds_the_binding_moved_lets_go_of_the_old_owners_chain() {
    let database = TestDatabase::create("revoke_moved");
    let mut users = [Uuid::new_v4(), Uuid::new_v4()];
    users.sort();
    let [lower, higher] = users;
    let (mut client, mut first_merger, mut second_merger, mut revoker, mut observer) = (
        database.connect(),
        database.connect(),
        database.connect(),
        database.connect(),
        database.connect(),
    );
    bind(&mut client, higher, "4").unwrap();
    bind(&mut client, lower, "5").unwrap();

    // A first merge moves binding 4 from the higher user to the lower one and stays open. The
    // revoke of binding 4 waits for the higher user's chain (whose binding it still sees), and a
    // second merge of the two for the lower user's chain, which merges take first. Once the first
    // merge commits, the revoke has the higher chain and finds the binding gone, and the second
    // merge has the lower chain and wants the higher: kept, the revoke would wait for the lower
    // chain while holding the higher one, a deadlock. It lets go of it and follows the binding.
    let mut first = first_merger.transaction().unwrap();
    assert_eq!(merge(&mut first, higher, lower).unwrap(), 1);
    let (revoker_pid, merger_pid) = (backend_pid(&mut revoker), backend_pid(&mut second_merger));
    let (revoked, merged) = thread::scope(|scope| {
        let revoking = scope.spawn(|| {
            revoker
                .query_one(
                    "SELECT user_id FROM identity.revoke_binding('github', '4', '{}')",
                    &[],
                )
                .map(|row| row.get::<_, Uuid>(0))
        });
        let revoke_waits = soon_waits_for_a_lock(&mut observer, revoker_pid);
        let merging = scope.spawn(|| merge(&mut second_merger, higher, lower));
        let merge_waits = soon_waits_for_a_lock(&mut observer, merger_pid);
        first.commit().unwrap();
        assert!(revoke_waits && merge_waits, "both wait for the first merge");
        (revoking.join().unwrap(), merging.join().unwrap())
    });

    assert_eq!(merged.expect("the merge is not a deadlock's victim"), 0);
    assert_eq!(
        revoked.expect("the revoke is not a deadlock's victim"),
        lower,
        "revoked from the user the binding was merged into"
    );
    assert_eq!(bindings_of(&mut client, lower), 1, "binding 5");
    assert!(integrity_is_clean(&mut client));
}
