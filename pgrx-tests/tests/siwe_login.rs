//! Sign-In with Ethereum over real connections: replays, and logins that must commit.

use identity_bindings_client_tests::wallet::{siwe_message, TestWallet};
use identity_bindings_client_tests::{
    integrity_is_clean, server_message, sqlstate, transaction_with_snapshot, TestDatabase,
};
use postgres::IsolationLevel;
use std::sync::Barrier;
use std::thread;
use uuid::Uuid;

const DOMAIN: &str = "app.example";
const SESSIONS: usize = 8;

fn signed_login(client: &mut postgres::Client, wallet: &TestWallet) -> (String, String) {
    identity_bindings_client_tests::wallet::signed_login(client, wallet, DOMAIN)
}

fn login(
    client: &mut impl postgres::GenericClient,
    message: &str,
    signature: &str,
) -> Result<(Uuid, String), postgres::Error> {
    client
        .query_one(
            "SELECT user_id, status FROM identity.siwe_login($1, $2, $3)",
            &[&message, &signature, &DOMAIN],
        )
        .map(|row| (row.get(0), row.get(1)))
}

/// `verify_binding` of the database's one binding.
fn the_binding_reverifies(client: &mut postgres::Client) -> Option<bool> {
    client
        .query_one(
            "SELECT identity.verify_binding(id) FROM identity.user_bindings",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn eight_concurrent_replays_of_one_signed_message_log_in_exactly_once() {
    let database = TestDatabase::create("siwe_replay");
    let wallet = TestWallet::from_seed(1);
    let (message, signature) = signed_login(&mut database.connect(), &wallet);
    let start = Barrier::new(SESSIONS);

    let outcomes: Vec<Result<(Uuid, String), String>> = thread::scope(|scope| {
        let sessions: Vec<_> = (0..SESSIONS)
            .map(|_| {
                let (database, start, message, signature) =
                    (&database, &start, &message, &signature);
                scope.spawn(move || {
                    let mut client = database.connect();
                    start.wait();
                    login(&mut client, message, signature).map_err(|e| sqlstate(&e).to_owned())
                })
            })
            .collect();
        sessions.into_iter().map(|s| s.join().unwrap()).collect()
    });

    let successes: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(successes.len(), 1, "{outcomes:?}");
    assert_eq!(successes[0].1, "created");
    let refusals = outcomes
        .iter()
        .filter(|o| o.as_ref().err().map(String::as_str) == Some("28000"))
        .count();
    assert_eq!(
        refusals,
        SESSIONS - 1,
        "every replay is refused as such: {outcomes:?}"
    );

    let mut client = database.connect();
    let bindings: i64 = client
        .query_one("SELECT count(*) FROM identity.user_bindings", &[])
        .unwrap()
        .get(0);
    assert_eq!(bindings, 1);
    assert!(integrity_is_clean(&mut client));
}

#[test]
fn a_wallet_logs_in_again_as_the_same_user_and_its_evidence_reverifies() {
    let database = TestDatabase::create("siwe_again");
    let mut client = database.connect();
    let wallet = TestWallet::from_seed(2);
    let (message, signature) = signed_login(&mut client, &wallet);
    let (user, status) = login(&mut client, &message, &signature).unwrap();
    assert_eq!(status, "created");
    let (message, signature) = signed_login(&mut client, &wallet);
    assert_eq!(
        login(&mut client, &message, &signature).unwrap(),
        (user, "existing".to_owned())
    );

    let resolved: Option<Uuid> = client
        .query_one(
            "SELECT identity.resolve('wallet', $1)",
            &[&wallet.address().to_lowercase()],
        )
        .unwrap()
        .get(0);
    assert_eq!(resolved, Some(user));
    assert_eq!(the_binding_reverifies(&mut client), Some(true));
}

#[test]
fn a_login_in_a_transaction_begun_before_its_not_before_reverifies() {
    let database = TestDatabase::create("siwe_not_before");
    let mut client = database.connect();
    let wallet = TestWallet::from_seed(7);
    let mut transaction = client.transaction().unwrap();
    // The bind event is stamped with the transaction's start; the login checks at its statement's
    // start, a second later, after the message's Not Before.
    let rfc3339 = |instant: &str| {
        format!("to_char(({instant}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    };
    let row = transaction
        .query_one(
            &format!(
                "SELECT identity.issue_nonce(), {}, {}, {}",
                rfc3339("now()"),
                rfc3339("now() + interval '5 minutes'"),
                rfc3339("now() + interval '500 ms'")
            ),
            &[],
        )
        .unwrap();
    let message = format!(
        "{}\nNot Before: {}",
        siwe_message(
            DOMAIN,
            &wallet.address(),
            row.get(0),
            row.get(1),
            row.get(2)
        ),
        row.get::<_, &str>(3)
    );
    let signature = wallet.personal_sign(&message);
    transaction.execute("SELECT pg_sleep(1)", &[]).unwrap();
    let (_, status) = login(&mut transaction, &message, &signature).unwrap();
    assert_eq!(status, "created");
    transaction.commit().unwrap();

    assert_eq!(the_binding_reverifies(&mut client), Some(true));
}

#[test]
fn a_message_signed_by_another_key_is_refused_and_keeps_its_nonce() {
    let database = TestDatabase::create("siwe_wrong_signer");
    let mut client = database.connect();
    let (claimed, signer) = (TestWallet::from_seed(3), TestWallet::from_seed(4));
    let (message, _) = signed_login(&mut client, &claimed);
    let forged = signer.personal_sign(&message);
    let error = login(&mut client, &message, &forged).unwrap_err();
    assert_eq!(sqlstate(&error), "28000");
    assert!(server_message(&error).contains("wrong signer"), "{error:?}");
    let genuine = claimed.personal_sign(&message);
    let (_, status) =
        login(&mut client, &message, &genuine).expect("the nonce survived the forgery");
    assert_eq!(status, "created");
}

/// The refused login, retried with the same signed message (its nonce was not spent), logs in as
/// the wallet's owner, and no binding of the wallet to another user was queued.
fn assert_the_retry_logs_in_as_the_owner(
    late: &mut postgres::Client,
    client: &mut postgres::Client,
    (message, signature): (&str, &str),
    owner: Uuid,
) {
    let (user, status) = login(late, message, signature)
        .expect("retried, the same signed message logs in: its nonce was not spent");
    assert_eq!((user, status.as_str()), (owner, "existing"));
    let queued: i64 = client
        .query_one("SELECT count(*) FROM identity.binding_jobs", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        queued, 0,
        "no binding of the wallet to another user was queued"
    );
    assert!(integrity_is_clean(client));
}

#[test]
fn a_repeatable_read_first_login_that_loses_a_race_is_retried_not_given_a_new_user() {
    let database = TestDatabase::create("siwe_rr_race");
    let mut client = database.connect();
    let wallet = TestWallet::from_seed(5);
    let (first_message, first_signature) = signed_login(&mut client, &wallet);
    let (late_message, late_signature) = signed_login(&mut client, &wallet);

    // The late login's snapshot predates the first login, which binds the wallet to its user.
    let mut late = database.connect();
    let mut stale = transaction_with_snapshot(&mut late, IsolationLevel::RepeatableRead);
    let (owner, status) = login(&mut client, &first_message, &first_signature).unwrap();
    assert_eq!(status, "created");

    let error = login(&mut stale, &late_message, &late_signature)
        .expect_err("its snapshot cannot see whose wallet it is: only a retry can");
    assert_eq!(sqlstate(&error), "40001", "{error:?}");
    assert!(
        server_message(&error).contains("could not log in wallet"),
        "{error:?}"
    );
    stale.rollback().unwrap();

    let retry = (late_message.as_str(), late_signature.as_str());
    assert_the_retry_logs_in_as_the_owner(&mut late, &mut client, retry, owner);
}

#[test]
fn a_first_login_that_times_out_behind_another_first_login_is_retried_not_given_a_new_user() {
    let database = TestDatabase::create("siwe_timeout_race");
    let mut client = database.connect();
    let wallet = TestWallet::from_seed(6);
    let (first_message, first_signature) = signed_login(&mut client, &wallet);
    let (late_message, late_signature) = signed_login(&mut client, &wallet);

    // The first login has bound the wallet but not committed: the late login's insert waits
    // for it, and its lock_timeout ends the wait before the first login's fate is known.
    let mut first = database.connect();
    let mut pending = first.transaction().unwrap();
    let (owner, status) = login(&mut pending, &first_message, &first_signature).unwrap();
    assert_eq!(status, "created");
    let mut late = database.connect();
    late.batch_execute("SET lock_timeout = '200ms'").unwrap();
    let error = login(&mut late, &late_message, &late_signature)
        .expect_err("whose wallet it is depends on a login that has not finished");
    assert_eq!(sqlstate(&error), "40001", "{error:?}");
    assert!(
        server_message(&error).contains("another first login of the same wallet"),
        "{error:?}"
    );

    pending.commit().unwrap();
    let retry = (late_message.as_str(), late_signature.as_str());
    assert_the_retry_logs_in_as_the_owner(&mut late, &mut client, retry, owner);
}
