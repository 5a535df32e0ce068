//! Concurrent sessions making random calls (binds, revokes, merges, queued binds and runs of the
//! queue, logins and replays, siwe_bind, look-ups) over a few shared users, ids and wallets. No
//! order of their commits can be predicted, so instead of a model the test checks what must hold
//! in every order:
//! - every call that succeeded has its events in the log, and every event in the log comes from a
//!   call that succeeded (each call's evidence carries a tag of its own): nothing is lost, nothing
//!   is written twice, and a call that failed wrote nothing;
//! - replaying the log, binding by binding along the users' chains (bound, moved by merges,
//!   revoked), gives exactly the live bindings: the log explains the state;
//! - the only errors are those the contract names for such calls, and the integrity checks pass.

use identity_bindings_client_tests::wallet::{signed_login, TestWallet};
use identity_bindings_client_tests::{sqlstate, TestDatabase};
use postgres::Client;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Barrier;
use std::thread;
use uuid::Uuid;

const DOMAIN: &str = "app.example";
const SESSIONS: usize = 4;
const CALLS_PER_SESSION: usize = 800;
const USERS: usize = 6;
const WALLETS: u8 = 3;
const NUMERIC_IDS: [&str; 4] = ["1", "2", "3", "40"];

/// What a call that succeeded wrote, known by the tag its evidence carries.
#[derive(Debug)]
enum Success {
    /// create_binding or siwe_bind: one bind event if it created the binding, none otherwise.
    Bind {
        binding_id: Uuid,
        created: bool,
    },
    Revoke {
        binding_id: Uuid,
        user: Uuid,
    },
    /// Two merge events, each naming the bindings moved.
    Merge {
        moved: usize,
    },
    /// A queued binding: at most one bind event, when a pass of the queue makes it.
    Enqueue,
    /// A login: at most one bind event (a first login, or a wallet a pending job promised), or a
    /// queued binding that a pass makes later.
    Login,
}

/// One session's calls: what succeeded, by tag, and the errors the contract does not name.
#[derive(Default)]
struct Session {
    successes: HashMap<String, Success>,
    /// How often each call met each SQLSTATE the contract names for it.
    refusals: BTreeMap<(&'static str, String), usize>,
    unexpected: Vec<String>,
}

impl Session {
    /// Keeps a success, or files an error as named (`expected`) or not.
    fn record<T>(
        &mut self,
        call: &'static str,
        outcome: Result<T, postgres::Error>,
        expected: &[&str],
        success: impl FnOnce(T) -> Option<(String, Success)>,
    ) {
        match outcome {
            Ok(value) => {
                if let Some((tag, done)) = success(value) {
                    self.successes.insert(tag, done);
                }
            }
            Err(e) if expected.contains(&sqlstate(&e)) => {
                *self
                    .refusals
                    .entry((call, sqlstate(&e).to_owned()))
                    .or_default() += 1;
            }
            Err(e) => self.unexpected.push(format!("{call}: {e:?}")),
        }
    }
}

/// The errors every writing call may meet under concurrency: a retry the contract asks for.
const RETRY: &str = "40001";

struct Caller<'a> {
    index: usize,
    rng: fastrand::Rng,
    client: Client,
    users: &'a [Uuid],
    wallets: &'a [TestWallet],
    messages: Vec<(String, String)>,
    session: Session,
}

impl Caller<'_> {
    fn tag(&self, call: usize) -> (String, Value) {
        let tag = format!("{}:{call}", self.index);
        let evidence = serde_json::json!({ "op": tag });
        (tag, evidence)
    }

    fn user(&mut self) -> Uuid {
        self.users[self.rng.usize(..self.users.len())]
    }

    fn provider_and_id(&mut self) -> (&'static str, String) {
        match self.rng.u32(..3) {
            0 => (
                "github",
                NUMERIC_IDS[self.rng.usize(..NUMERIC_IDS.len())].into(),
            ),
            1 => (
                "discord",
                NUMERIC_IDS[self.rng.usize(..NUMERIC_IDS.len())].into(),
            ),
            _ => {
                let address = self.wallets[self.rng.usize(..self.wallets.len())].address();
                match self.rng.bool() {
                    true => ("wallet", address),
                    false => ("wallet", address.to_lowercase()),
                }
            }
        }
    }

    /// A new signed message, or (one time in four) one this session signed before.
    fn signed_message(&mut self) -> (String, String) {
        if !self.messages.is_empty() && self.rng.u32(..4) == 0 {
            return self.messages[self.rng.usize(..self.messages.len())].clone();
        }
        let wallet = &self.wallets[self.rng.usize(..self.wallets.len())];
        let signed = signed_login(&mut self.client, wallet, DOMAIN);
        self.messages.push(signed.clone());
        signed
    }

    fn call(&mut self, call: usize) {
        let (tag, evidence) = self.tag(call);
        match self.rng.u32(..100) {
            0..=29 => {
                let (user, (provider, id)) = (self.user(), self.provider_and_id());
                let outcome = self.client.query_one(
                    "SELECT binding_id, created FROM identity.create_binding($1, $2, $3, $4)",
                    &[&user, &provider, &id, &evidence],
                );
                self.session
                    .record("create_binding", outcome, &["23505", RETRY], |row| {
                        let (binding_id, created) = (row.get(0), row.get(1));
                        Some((
                            tag,
                            Success::Bind {
                                binding_id,
                                created,
                            },
                        ))
                    });
            }
            30..=41 => {
                let (provider, id) = self.provider_and_id();
                let outcome = self.client.query_one(
                    "SELECT binding_id, user_id FROM identity.revoke_binding($1, $2, $3)",
                    &[&provider, &id, &evidence],
                );
                self.session
                    .record("revoke_binding", outcome, &["P0002", RETRY], |row| {
                        let (binding_id, user) = (row.get(0), row.get(1));
                        Some((tag, Success::Revoke { binding_id, user }))
                    });
            }
            42..=51 => {
                let (from, into) = (self.user(), self.user());
                let outcome = self.client.query_one(
                    "SELECT identity.merge_users($1, $2, $3)",
                    &[&from, &into, &evidence],
                );
                self.session
                    .record("merge_users", outcome, &["22023", RETRY], |row| {
                        let moved = row.get::<_, i32>(0) as usize;
                        Some((tag, Success::Merge { moved }))
                    });
            }
            52..=59 => {
                let (user, (provider, id)) = (self.user(), self.provider_and_id());
                let outcome = self.client.query_one(
                    "SELECT identity.enqueue_binding($1, $2, $3, $4)",
                    &[&user, &provider, &id, &evidence],
                );
                self.session.record("enqueue_binding", outcome, &[], |_| {
                    Some((tag, Success::Enqueue))
                });
            }
            60..=66 => {
                let outcome = self
                    .client
                    .query("SELECT * FROM identity.run_binding_jobs(64)", &[]);
                self.session
                    .record("run_binding_jobs", outcome, &[], |_| None);
            }
            67..=76 => {
                let (provider, id) = self.provider_and_id();
                let outcome = self.client.query(
                    "SELECT * FROM identity.resolve_many($1, ARRAY[$2, $2])",
                    &[&provider, &id],
                );
                self.session.record("resolve_many", outcome, &[], |_| None);
            }
            77..=90 => {
                let (message, signature) = self.signed_message();
                let outcome = self.client.query_one(
                    "SELECT user_id FROM identity.siwe_login($1, $2, $3)",
                    &[&message, &signature, &DOMAIN],
                );
                self.session
                    .record("siwe_login", outcome, &["28000", RETRY], |_| {
                        Some((message, Success::Login))
                    });
            }
            _ => {
                let user = self.user();
                let (message, signature) = self.signed_message();
                let outcome = self.client.query_one(
                    "SELECT binding_id, created FROM identity.siwe_bind($1, $2, $3, $4)",
                    &[&user, &message, &signature, &DOMAIN],
                );
                self.session
                    .record("siwe_bind", outcome, &["28000", "23505", RETRY], |row| {
                        let (binding_id, created) = (row.get(0), row.get(1));
                        Some((
                            message,
                            Success::Bind {
                                binding_id,
                                created,
                            },
                        ))
                    });
            }
        }
    }
}

/// One event of the log, as the replay reads it.
#[derive(Debug)]
struct Event {
    user: Uuid,
    seq: i64,
    event_type: String,
    payload: Value,
}

impl Event {
    /// The tag of the call that wrote it: its evidence's `op`, or the signed message.
    fn tag(&self) -> String {
        let evidence = &self.payload["evidence"];
        match (&evidence["op"], &evidence["message"]) {
            (Value::String(op), _) => op.clone(),
            (_, Value::String(message)) => message.clone(),
            _ => panic!("an event without a tag: {self:?}"),
        }
    }

    fn binding_id(&self) -> Uuid {
        self.payload["binding_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// For a merge: the bindings it moved.
    fn moved(&self) -> Vec<Uuid> {
        let bindings = self.payload["bindings"].as_array().unwrap();
        (bindings.iter())
            .map(|b| b["binding_id"].as_str().unwrap().parse().unwrap())
            .collect()
    }
}

fn the_log(client: &mut Client) -> Vec<Event> {
    let rows = client
        .query(
            "SELECT user_id, seq, event_type, payload FROM identity.identity_events ORDER BY user_id, seq",
            &[],
        )
        .unwrap();
    (rows.iter())
        .map(|row| Event {
            user: row.get(0),
            seq: row.get(1),
            event_type: row.get(2),
            payload: row.get(3),
        })
        .collect()
}

/// Every success has its events, and every event its success.
fn assert_the_log_holds_the_successes_and_nothing_else(
    log: &[Event],
    successes: &HashMap<String, Success>,
) {
    let mut events_of: HashMap<String, Vec<&Event>> = HashMap::new();
    for event in log {
        events_of.entry(event.tag()).or_default().push(event);
    }
    for (tag, events) in &events_of {
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        match successes.get(tag) {
            None => panic!("events of a call that did not succeed ({tag}): {events:?}"),
            Some(Success::Bind {
                binding_id,
                created: true,
            }) => {
                assert_eq!(types, ["bind"], "{tag}");
                assert_eq!(events[0].binding_id(), *binding_id, "{tag}");
            }
            Some(Success::Bind { created: false, .. }) => {
                panic!("events of a bind that created nothing ({tag}): {events:?}")
            }
            Some(Success::Revoke { binding_id, user }) => {
                assert_eq!(types, ["revoke"], "{tag}");
                assert_eq!(
                    (events[0].binding_id(), events[0].user),
                    (*binding_id, *user),
                    "{tag}"
                );
            }
            Some(Success::Merge { moved }) => {
                assert_eq!(types, ["merge", "merge"], "{tag}");
                for event in events {
                    assert_eq!(event.moved().len(), *moved, "{tag}");
                }
            }
            Some(Success::Enqueue | Success::Login) => assert_eq!(types, ["bind"], "{tag}"),
        }
    }
    for (tag, success) in successes {
        let must_write = match success {
            Success::Bind { created, .. } => *created,
            Success::Revoke { .. } | Success::Merge { .. } => true,
            Success::Enqueue | Success::Login => false,
        };
        assert!(
            !must_write || events_of.contains_key(tag),
            "no event of a call that succeeded ({tag}): {success:?}"
        );
    }
}

/// Follows each binding from its bind event along the chains: a `revoke` of it ends it, a
/// `merge` away from its user moves it to the merge's other user, after that merge's event there.
/// What is left is the live bindings, by id, with their users.
fn replay(log: &[Event]) -> BTreeMap<Uuid, Uuid> {
    let mut chains: HashMap<Uuid, Vec<&Event>> = HashMap::new();
    for event in log {
        chains.entry(event.user).or_default().push(event);
    }
    let mut live = BTreeMap::new();
    for bind in log.iter().filter(|e| e.event_type == "bind") {
        let binding = bind.binding_id();
        let (mut user, mut after) = (bind.user, bind.seq);
        loop {
            let next = chains[&user].iter().find(|e| {
                e.seq > after
                    && match e.event_type.as_str() {
                        "revoke" => e.binding_id() == binding,
                        "merge" => e.payload["role"] == "from" && e.moved().contains(&binding),
                        _ => false,
                    }
            });
            match next {
                None => {
                    live.insert(binding, user);
                    break;
                }
                Some(revoke) if revoke.event_type == "revoke" => break,
                Some(merge) => {
                    let into: Uuid = merge.payload["into_user"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let arrival = chains[&into]
                        .iter()
                        .find(|e| e.event_type == "merge" && e.tag() == merge.tag())
                        .expect("the merge's event on the user merged into");
                    (user, after) = (into, arrival.seq);
                }
            }
        }
    }
    live
}

#[test]
fn concurrent_random_calls_leave_a_log_that_holds_every_success_and_explains_the_state() {
    let database = TestDatabase::create("log_replay");
    let mut seeds = fastrand::Rng::with_seed(1);
    let users: Vec<Uuid> = (0..USERS)
        .map(|_| Uuid::from_u128(seeds.u128(..)))
        .collect();
    let wallets: Vec<TestWallet> = (1..=WALLETS).map(TestWallet::from_seed).collect();
    let start = Barrier::new(SESSIONS);
    let sessions: Vec<Session> = thread::scope(|scope| {
        let callers: Vec<_> = (0..SESSIONS)
            .map(|index| {
                let (database, users, wallets, start) = (&database, &users, &wallets, &start);
                scope.spawn(move || {
                    let mut caller = Caller {
                        index,
                        rng: fastrand::Rng::with_seed(index as u64 + 1),
                        client: database.connect(),
                        users,
                        wallets,
                        messages: Vec::new(),
                        session: Session::default(),
                    };
                    start.wait();
                    for call in 0..CALLS_PER_SESSION {
                        caller.call(call);
                    }
                    caller.session
                })
            })
            .collect();
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    });

    let mut successes = HashMap::new();
    let mut refusals: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for session in sessions {
        assert_eq!(
            session.unexpected,
            Vec::<String>::new(),
            "errors the contract does not name"
        );
        successes.extend(session.successes);
        for (refusal, count) in session.refusals {
            *refusals.entry(refusal).or_default() += count;
        }
    }
    // The calls met each other: ids bound to another user, replays, bindings moved by merges.
    for expected in [("create_binding", "23505"), ("siwe_login", "28000")] {
        let met = refusals.get(&(expected.0, expected.1.to_owned()));
        assert!(met.is_some(), "no {expected:?} in {refusals:?}");
    }
    let moved: usize = (successes.values())
        .map(|s| match s {
            Success::Merge { moved } => *moved,
            _ => 0,
        })
        .sum();
    assert!(moved > 0, "no merge moved a binding");

    let mut client = database.connect();
    let log = the_log(&mut client);
    assert_the_log_holds_the_successes_and_nothing_else(&log, &successes);
    let live: BTreeMap<Uuid, Uuid> = (client
        .query("SELECT id, user_id FROM identity.user_bindings", &[]))
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect();
    assert_eq!(
        replay(&log),
        live,
        "the live bindings, as the log tells them"
    );
    let failing: Vec<String> = (client.query(
        "SELECT check_name FROM identity.check_integrity() WHERE NOT ok AND check_name <> 'binding_jobs_not_stuck'",
        &[],
    ))
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    assert_eq!(failing, Vec::<String>::new(), "integrity checks that fail");
}
