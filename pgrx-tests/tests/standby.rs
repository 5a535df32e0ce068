//! A hot standby (a streaming replica): it answers every read as its primary does, refuses every
//! write with 25006 and a hint that says to send it to the primary, and runs no background worker
//! until it is promoted; then the worker starts there and runs the queue the primary left.

use identity_bindings_client_tests::wallet::{signed_login, TestWallet};
use identity_bindings_client_tests::{eventually, server_message, sqlstate, Cluster};
use postgres::{Client, SimpleQueryMessage};
use std::time::Duration;
use uuid::Uuid;

const DOMAIN: &str = "standby.example";
const PRELOAD: &str = "shared_preload_libraries=identity_bindings";

/// Every row `sql` returns, as text.
fn rows_of(client: &mut Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Waits until `standby` has replayed everything `primary` has written so far.
fn caught_up(primary: &mut Client, standby: &mut Client) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    let replayed = eventually(Duration::from_secs(30), || {
        standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get(0)
    });
    assert!(replayed, "the standby replayed up to {lsn}");
}

fn workers_on(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'identity_bindings worker'",
            &[],
        )
        .unwrap()
        .get(0)
}

fn job_state(client: &mut Client, key: &str) -> Option<String> {
    client
        .query_opt(
            "SELECT state FROM identity.binding_jobs WHERE job_key = $1",
            &[&key],
        )
        .unwrap()
        .map(|row| row.get(0))
}

#[test]
fn a_standby_answers_reads_refuses_writes_and_runs_the_queue_once_promoted() {
    // The primary preloads the library, but its worker serves no database: the job stays queued.
    let primary_cluster = Cluster::start("primary", &[PRELOAD]);
    primary_cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE app")
        .unwrap();
    let mut primary = primary_cluster.connect("app");
    primary
        .batch_execute("CREATE EXTENSION identity_bindings")
        .unwrap();
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let wallet = TestWallet::from_seed(41);
    let (message, signature) = signed_login(&mut primary, &wallet, DOMAIN);
    primary
        .query_one(
            "SELECT * FROM identity.siwe_login($1, $2, $3, $4)",
            &[&message, &signature, &DOMAIN, &alice],
        )
        .unwrap();
    primary
        .batch_execute(&format!(
            "SELECT identity.create_binding('{alice}', 'github', '42', '{{\"via\": \"test\"}}');
             SELECT identity.enqueue_binding('{bob}', 'github', '7');
             CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);
             INSERT INTO public.users VALUES (gen_random_uuid(), '{}');",
            TestWallet::from_seed(42).address()
        ))
        .unwrap();
    // A login message whose nonce is still unspent, for a login tried on the standby.
    let (unspent_message, unspent_signature) =
        signed_login(&mut primary, &TestWallet::from_seed(43), DOMAIN);

    let standby_cluster = Cluster::standby_of(
        &primary_cluster,
        "standby",
        &[PRELOAD, "identity.worker_database=app"],
    );
    let mut standby = standby_cluster.connect("app");
    caught_up(&mut primary, &mut standby);
    let in_recovery: bool = standby
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery, "the standby is in recovery");

    // Reads: the same answers on both.
    let address = wallet.address();
    for read in [
        "SELECT identity.resolve('github', '42')".to_owned(),
        format!("SELECT * FROM identity.resolve_many('wallet', ARRAY['{address}', '0x0000000000000000000000000000000000000001'])"),
        "SELECT identity.canonical_external_id('wallet', lower(external_id)) FROM identity.user_bindings WHERE provider = 'wallet'".to_owned(),
        "SELECT * FROM identity.verify_event_chain() ORDER BY user_id".to_owned(),
        "SELECT check_name, ok FROM identity.check_integrity()".to_owned(),
        "SELECT identity.verify_binding(id) FROM identity.user_bindings WHERE provider = 'wallet'".to_owned(),
        format!("SELECT address FROM identity.verify_siwe($${message}$$, '{signature}', '{DOMAIN}')"),
    ] {
        let on_primary = rows_of(&mut primary, &read);
        assert!(!on_primary.is_empty(), "{read}");
        assert_eq!(rows_of(&mut standby, &read), on_primary, "{read}");
    }
    let verified = rows_of(
        &mut standby,
        "SELECT identity.verify_binding(id) FROM identity.user_bindings WHERE provider = 'wallet'",
    );
    assert_eq!(verified, vec![vec![Some("t".to_owned())]]);

    // Writes: every one refused the same way, whatever it would have found.
    let unspent_login = format!(
        "SELECT * FROM identity.siwe_login($${unspent_message}$$, '{unspent_signature}', '{DOMAIN}')"
    );
    for write in [
        format!("SELECT * FROM identity.create_binding('{bob}', 'github', '43')"),
        format!("SELECT * FROM identity.create_binding('{alice}', 'github', '42')"),
        "SELECT * FROM identity.revoke_binding('github', '42', '{}')".to_owned(),
        format!("SELECT identity.merge_users('{alice}', '{bob}', '{{}}')"),
        "SELECT identity.issue_nonce()".to_owned(),
        unspent_login,
        format!(
            "SELECT * FROM identity.siwe_bind('{bob}', $${message}$$, '{signature}', '{DOMAIN}')"
        ),
        format!("SELECT identity.enqueue_binding('{bob}', 'github', '43')"),
        "SELECT * FROM identity.run_binding_jobs()".to_owned(),
        "SELECT identity.register_provider('standby_test', '[a-z]+')".to_owned(),
        "SELECT identity.backstop()".to_owned(),
        "SELECT * FROM identity.backfill_wallet_bindings()".to_owned(),
        "CALL identity.backfill_wallet_bindings_in_batches()".to_owned(),
    ] {
        let error = standby.batch_execute(&write).unwrap_err();
        assert_eq!(sqlstate(&error), "25006", "{write}: {error}");
        assert_eq!(
            server_message(&error),
            "identity_bindings cannot write on a hot standby: this server is in recovery",
            "{write}"
        );
        let hint = error.as_db_error().and_then(|e| e.hint()).unwrap_or("");
        assert!(hint.starts_with("Send writes"), "{write}: {hint}");
    }

    // No worker on the standby: the queued job waits for a server that can write.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(workers_on(&mut standby), 0, "no worker while in recovery");
    assert_eq!(
        job_state(&mut standby, "bind:github:7").as_deref(),
        Some("pending")
    );

    // Promoted, it starts the worker, which binds the queued job; writes are taken.
    let promoted: bool = standby
        .query_one("SELECT pg_promote()", &[])
        .unwrap()
        .get(0);
    assert!(promoted, "the standby was promoted");
    let worked = eventually(Duration::from_secs(30), || {
        job_state(&mut standby, "bind:github:7").as_deref() == Some("succeeded")
    });
    assert!(worked, "the promoted server's worker ran the queued job");
    assert_eq!(workers_on(&mut standby), 1);
    let bound: Option<Uuid> = standby
        .query_one("SELECT identity.resolve('github', '7')", &[])
        .unwrap()
        .get(0);
    assert_eq!(bound, Some(bob));
    let created: bool = standby
        .query_one(
            &format!("SELECT created FROM identity.create_binding('{bob}', 'github', '43')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(created, "the promoted server writes");
}
