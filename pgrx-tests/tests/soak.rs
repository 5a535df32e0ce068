//! Soak: a mixed load of binds, resolves, SIWE logins and revokes from several sessions for
//! IDENTITY_BINDINGS_SOAK_SECONDS (default 20; `make soak` runs 1,800). Only the expected errors
//! occur, each backend's private memory stays flat after warm-up, and the log is whole at the end.

use identity_bindings_client_tests::wallet::{signed_login, TestWallet};
use identity_bindings_client_tests::{backend_pid, integrity_is_clean, sqlstate, TestDatabase};
use postgres::Client;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const SESSIONS: usize = 4;
const DOMAIN: &str = "soak.example";
/// Growth of a backend's private memory (RssAnon) allowed between warm-up and the end.
const FLAT_MEMORY_KIB: i64 = 16 * 1024;

fn soak_duration() -> Duration {
    let seconds = std::env::var("IDENTITY_BINDINGS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(seconds)
}

/// The backend's private resident memory, KiB (not the shared buffers it maps).
fn backend_rss_anon_kib(client: &mut Client) -> i64 {
    let pid = backend_pid(client);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/<pid>/status")
}

/// What one session did: operations by kind, errors by SQLSTATE (expected or not).
#[derive(Default)]
struct Tally {
    operations: BTreeMap<&'static str, u64>,
    expected_errors: BTreeMap<String, u64>,
    unexpected_errors: Vec<String>,
    memory_after_warm_up: i64,
    memory_at_end: i64,
}

impl Tally {
    fn record(
        &mut self,
        kind: &'static str,
        outcome: Result<(), postgres::Error>,
        expected: &[&str],
    ) {
        *self.operations.entry(kind).or_default() += 1;
        if let Err(error) = outcome {
            let code = sqlstate(&error).to_owned();
            if expected.contains(&code.as_str()) {
                *self
                    .expected_errors
                    .entry(format!("{kind} {code}"))
                    .or_default() += 1;
            } else {
                self.unexpected_errors.push(format!("{kind}: {error:?}"));
            }
        }
    }
}

/// One session's loop: a deterministic mix over a small id space, so binds, repeats, conflicts
/// and revokes of the same ids meet across sessions.
fn session(database: &TestDatabase, index: usize, run_for: Duration) -> Tally {
    let mut client = database.connect();
    let mut tally = Tally::default();
    let wallet = TestWallet::from_seed(10 + index as u8);
    let started = Instant::now();
    let warm_up = run_for / 4;
    let mut warmed_up = false;
    let mut step: u64 = 0;
    while started.elapsed() < run_for {
        step += 1;
        let external_id = format!("{}", 1 + (step * 7919 + index as u64 * 104_729) % 2000);
        let user = Uuid::from_u128(1 + (step % 500) as u128);
        match step % 10 {
            // Binds: new ids, repeats, and ids another user holds (23505, expected).
            0..=3 => {
                let outcome = client
                    .execute(
                        "SELECT identity.create_binding($1, 'github', $2, '{\"method\": \"soak\"}')",
                        &[&user, &external_id],
                    )
                    .map(drop);
                tally.record("bind", outcome, &["23505"]);
            }
            4..=6 => {
                let outcome = client
                    .query_one("SELECT identity.resolve('github', $1)", &[&external_id])
                    .map(drop);
                tally.record("resolve", outcome, &[]);
                let many: Vec<String> = (0..50).map(|i| format!("{}", 1 + i * 40)).collect();
                let outcome = client
                    .query(
                        "SELECT * FROM identity.resolve_many('github', $1)",
                        &[&many],
                    )
                    .map(drop);
                tally.record("resolve_many", outcome, &[]);
            }
            // A login, then a replay of the same message (refused: 28000, expected).
            7 | 8 => {
                let (message, signature) = signed_login(&mut client, &wallet, DOMAIN);
                for kind in ["login", "replayed login"] {
                    let outcome = client
                        .query_one(
                            "SELECT user_id FROM identity.siwe_login($1, $2, $3)",
                            &[&message, &signature, &DOMAIN],
                        )
                        .map(drop);
                    let expected: &[&str] = if kind == "login" { &[] } else { &["28000"] };
                    tally.record(kind, outcome, expected);
                }
            }
            // Revokes: of a bound id, or of one that is not bound (P0002, expected).
            _ => {
                let outcome = client
                    .execute(
                        "SELECT identity.revoke_binding('github', $1, '{\"reason\": \"soak\"}')",
                        &[&external_id],
                    )
                    .map(drop);
                tally.record("revoke", outcome, &["P0002"]);
            }
        }
        if !warmed_up && started.elapsed() >= warm_up {
            warmed_up = true;
            tally.memory_after_warm_up = backend_rss_anon_kib(&mut client);
        }
    }
    tally.memory_at_end = backend_rss_anon_kib(&mut client);
    tally
}

#[test]
fn a_mixed_load_keeps_memory_flat_errors_expected_and_the_log_whole() {
    let database = TestDatabase::create("soak");
    let run_for = soak_duration();
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let sessions: Vec<_> = (0..SESSIONS)
            .map(|index| {
                let database = &database;
                scope.spawn(move || session(database, index, run_for))
            })
            .collect();
        sessions.into_iter().map(|s| s.join().unwrap()).collect()
    });

    let mut operations: BTreeMap<&str, u64> = BTreeMap::new();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for tally in &tallies {
        for (kind, n) in &tally.operations {
            *operations.entry(kind).or_default() += n;
        }
        for (kind, n) in &tally.expected_errors {
            *expected.entry(kind.clone()).or_default() += n;
        }
    }
    eprintln!("soak for {run_for:?}: operations {operations:?}, expected errors {expected:?}");
    for (index, tally) in tallies.iter().enumerate() {
        assert!(
            tally.unexpected_errors.is_empty(),
            "session {index}: {:?}",
            tally.unexpected_errors
        );
        let growth = tally.memory_at_end - tally.memory_after_warm_up;
        eprintln!(
            "session {index}: RssAnon {} KiB after warm-up, {} KiB at the end",
            tally.memory_after_warm_up, tally.memory_at_end
        );
        assert!(
            growth <= FLAT_MEMORY_KIB,
            "session {index}'s backend grew by {growth} KiB after warm-up"
        );
    }
    // Every kind of operation ran, and the expected refusals happened.
    for kind in [
        "bind",
        "resolve",
        "resolve_many",
        "login",
        "replayed login",
        "revoke",
    ] {
        assert!(operations.get(kind).copied().unwrap_or(0) > 0, "{kind} ran");
    }
    assert!(expected.contains_key("replayed login 28000"));
    assert!(integrity_is_clean(&mut database.connect()));
}
