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

#[test]
fn first_logins_of_a_wallet_racing_with_its_revokes_never_fail_as_bound_to_another_user() {
    let database = TestDatabase::create("siwe_revoke_race");
    let wallet = TestWallet::from_seed(7);
    let address = wallet.address();
    const LOGINS: usize = 300;

    // Three sessions log the wallet in again and again while a fourth revokes it as fast as it
    // can. A login never answers with a binding's 23505 (bound to another user): it did when its
    // binding step, a subtransaction, read on the statement's snapshot, taken before a revoke
    // committed, and took the revoked binding for another user's. A login that loses its
    // binding to another first login may fail with 40001, to be retried.
    let errors: Vec<String> = thread::scope(|scope| {
        let logins: Vec<_> = (0..3)
            .map(|_| {
                let (database, wallet) = (&database, &wallet);
                scope.spawn(move || {
                    let mut client = database.connect();
                    let mut errors = Vec::new();
                    for _ in 0..LOGINS {
                        let (message, signature) = signed_login(&mut client, wallet);
                        match login(&mut client, &message, &signature) {
                            Ok(_) => {}
                            Err(e) if sqlstate(&e) == "40001" => {}
                            Err(e) => {
                                errors.push(format!("{}: {}", sqlstate(&e), server_message(&e)))
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        let mut revoker = database.connect();
        while !logins.iter().all(|l| l.is_finished()) {
            match revoker.query(
                "SELECT * FROM identity.revoke_binding('wallet', $1, '{\"reason\": \"race\"}')",
                &[&address],
            ) {
                Ok(_) => {}
                Err(e) if sqlstate(&e) == "P0002" => {}
                Err(e) => panic!("revoke: {e:?}"),
            }
        }
        logins.into_iter().flat_map(|l| l.join().unwrap()).collect()
    });
    assert_eq!(errors, Vec::<String>::new());
    assert!(integrity_is_clean(&mut database.connect()));
}

/// What a sign-in may submit: `siwe::MAX_MESSAGE_BYTES` in the extension.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// A login message signed by `wallet`, its statement padded so that it is exactly `bytes` long.
fn signed_login_of_length(
    client: &mut postgres::Client,
    wallet: &TestWallet,
    bytes: usize,
) -> (String, String) {
    let (message, _) = signed_login(client, wallet);
    pad_statement(&message, wallet, bytes)
}

/// `message` with its statement (the fourth line) replaced to make it `bytes` long, signed again.
fn pad_statement(message: &str, wallet: &TestWallet, bytes: usize) -> (String, String) {
    let mut lines: Vec<&str> = message.split('\n').collect();
    let statement = "x".repeat(bytes - (message.len() - lines[3].len()));
    lines[3] = &statement;
    let message = lines.join("\n");
    assert_eq!(message.len(), bytes);
    let signature = wallet.personal_sign(&message);
    (message, signature)
}

#[test]
fn a_message_longer_than_a_sign_in_may_submit_is_refused_and_spends_nothing() {
    let database = TestDatabase::create("siwe_too_long");
    let mut client = database.connect();
    let wallet = TestWallet::from_seed(8);
    let (too_long, signature) = signed_login_of_length(&mut client, &wallet, MAX_MESSAGE_BYTES + 1);
    let submissions = [
        "SELECT identity.verify_siwe($1, $2, $3) IS NOT NULL".to_owned(),
        "SELECT true FROM identity.siwe_login($1, $2, $3)".to_owned(),
        format!(
            "SELECT true FROM identity.siwe_bind('{}', $1, $2, $3)",
            Uuid::new_v4()
        ),
    ];
    for submission in submissions {
        let error = client
            .query_one(&submission, &[&too_long, &signature, &DOMAIN])
            .expect_err("a message one byte over the limit is refused, though well signed");
        assert_eq!(sqlstate(&error), "22P02", "{submission}: {error:?}");
        assert!(
            server_message(&error).contains(&format!(
                "SIWE message too long: {} bytes, more than the {MAX_MESSAGE_BYTES}",
                MAX_MESSAGE_BYTES + 1
            )),
            "{submission}: {error:?}"
        );
    }
    let bindings: i64 = client
        .query_one("SELECT count(*) FROM identity.user_bindings", &[])
        .unwrap()
        .get(0);
    assert_eq!(bindings, 0);

    // The same nonce, in a message exactly at the limit: it was not spent, and the login binds.
    let (at_limit, signature) = pad_statement(&too_long, &wallet, MAX_MESSAGE_BYTES);
    let (_, status) = login(&mut client, &at_limit, &signature).expect("at the limit, accepted");
    assert_eq!(status, "created");
    assert_eq!(the_binding_reverifies(&mut client), Some(true));
}

#[test]
fn stored_evidence_longer_than_a_sign_in_may_submit_still_reverifies() {
    // Evidence from before the limit (0.1.0 had none): the limit is on what is submitted, and a
    // proof that was accepted stays a proof.
    let database = TestDatabase::create("siwe_long_evidence");
    let mut client = database.connect();
    let wallet = TestWallet::from_seed(9);
    let (message, signature) = signed_login_of_length(&mut client, &wallet, 3 * MAX_MESSAGE_BYTES);
    let nonce = message
        .lines()
        .find_map(|line| line.strip_prefix("Nonce: "))
        .unwrap();
    client
        .execute(
            "SELECT identity.create_binding(gen_random_uuid(), 'wallet', $1,
                    jsonb_build_object('method', 'siwe', 'message', $2::text,
                                       'signature', $3::text, 'domain', $4::text, 'nonce', $5::text))",
            &[&wallet.address(), &message, &signature, &DOMAIN, &nonce],
        )
        .unwrap();
    assert_eq!(the_binding_reverifies(&mut client), Some(true));
}
