//! The contract as a model. Random sequences of binds, revokes, merges, queued binds, logins,
//! look-ups and a provider's registration, over a few users and ids so that they keep meeting
//! each other; each call's answer (its rows, or its SQLSTATE) is checked against what CONTRACT.md
//! and the README say it must be after every call before it. Then the tables, every bind event's
//! user and proof, `verify_binding` of every binding made, the event counts, the chains and the
//! integrity checks are checked against the model's.
//!
//! A failure names the seed, the call and the calls before it. The seeds are fixed, so a run is
//! repeatable; `IDENTITY_BINDINGS_MODEL_SEEDS=N` runs seeds 1 to N instead of 1 to 3, for a
//! longer search (200 seeds, 300,000 calls, take about 5 minutes).

use identity_bindings_client_tests::wallet::{signed_login, TestWallet};
use identity_bindings_client_tests::{sqlstate, TestDatabase};
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use uuid::Uuid;

const DOMAIN: &str = "app.example";
const CALLS_PER_SEED: usize = 1500;
const DEFAULT_SEEDS: u64 = 3;
const USERS: usize = 6;
const WALLETS: u8 = 4;
/// Decimal ids shared by github and discord: the same id under two providers is two bindings.
const NUMERIC_IDS: [&str; 5] = ["1", "2", "3", "40", "500"];
const NOT_DECIMAL_IDS: [&str; 4] = ["01", "-2", "+3", "4e1"];
/// A provider the run registers (unknown until then) with one of two definitions.
const CUSTOM_PROVIDER: &str = "gitlab";
const CUSTOM_PATTERNS: [&str; 2] = ["[0-9]+", "[a-z]+"];
const CUSTOM_IDS: [&str; 3] = ["7", "ab", "Ab"];

type Key = (&'static str, String);

/// An external id as a caller writes it, and the form the contract stores (None: refused, 22023).
#[derive(Clone, Debug)]
struct GivenId {
    provider: &'static str,
    given: String,
    canonical: Option<String>,
}

impl GivenId {
    fn key(&self) -> Option<Key> {
        self.canonical.clone().map(|c| (self.provider, c))
    }
}

/// The proof a bind event must carry: the evidence `{"op": n}` of call n, or a signed message.
#[derive(Clone, Debug, PartialEq)]
enum Proof {
    Op(usize),
    Signed(String),
}

/// A bind event: the chain it is on, its proof, and, when a queued binding followed merges away
/// from the user it was queued for, that user.
#[derive(Debug, PartialEq)]
struct BindEvent {
    user: Uuid,
    proof: Proof,
    queued_for: Option<Uuid>,
}

impl BindEvent {
    fn direct(user: Uuid, proof: Proof) -> BindEvent {
        BindEvent {
            user,
            proof,
            queued_for: None,
        }
    }

    /// A queued binding (a job's, or a login's that a pending job promised) bound for `target`.
    fn queued(queued_for: Uuid, target: Uuid, proof: Proof) -> BindEvent {
        BindEvent {
            user: target,
            proof,
            queued_for: (target != queued_for).then_some(queued_for),
        }
    }
}

#[derive(Debug)]
struct LiveBinding {
    id: Uuid,
    user: Uuid,
}

#[derive(Debug, PartialEq)]
struct Job {
    user: Uuid,
    key: Key,
    proof: Proof,
    state: &'static str,
    attempts: i32,
}

/// A message a wallet signed with a nonce the database issued.
#[derive(Clone)]
struct SignedMessage {
    address: String,
    message: String,
    signature: String,
}

/// What the contract says the database holds after the calls so far.
#[derive(Default)]
struct Model {
    bindings: BTreeMap<Key, LiveBinding>,
    /// Every bind event ever written, by binding id.
    bind_events: BTreeMap<Uuid, BindEvent>,
    /// Users whose newest merge merged them away, and into whom.
    merged_into: HashMap<Uuid, Uuid>,
    events: BTreeMap<Uuid, i64>,
    events_by_type: BTreeMap<String, i64>,
    jobs: BTreeMap<String, Job>,
    spent_messages: HashSet<String>,
    /// The pattern `CUSTOM_PROVIDER` was registered with, once it was.
    custom_pattern: Option<&'static str>,
}

impl Model {
    fn owner(&self, key: &Key) -> Option<Uuid> {
        self.bindings.get(key).map(|b| b.user)
    }

    fn record_event(&mut self, user: Uuid, event_type: &str) {
        *self.events.entry(user).or_default() += 1;
        *self
            .events_by_type
            .entry(event_type.to_owned())
            .or_default() += 1;
    }

    fn record_bind(&mut self, key: Key, id: Uuid, event: BindEvent) {
        assert!(
            !self.bind_events.contains_key(&id),
            "binding id {id} used twice"
        );
        let user = event.user;
        self.bindings.insert(key, LiveBinding { id, user });
        self.bind_events.insert(id, event);
        self.record_event(user, "bind");
    }

    /// The user `user` is now, as far as the merges tell.
    fn where_merges_end(&self, user: Uuid) -> Uuid {
        let mut user = user;
        while let Some(&into) = self.merged_into.get(&user) {
            user = into;
        }
        user
    }

    fn pending_job(&self, key: &Key) -> Option<&Job> {
        self.jobs
            .get(&job_key(key))
            .filter(|job| job.state == "pending")
    }
}

fn job_key((provider, canonical): &Key) -> String {
    format!("bind:{provider}:{canonical}")
}

/// A call's outcome as the model predicts it and the server answers it: rows, or a SQLSTATE.
type Outcome<T> = Result<T, String>;

fn answer<T>(result: Result<T, postgres::Error>) -> Outcome<T> {
    result.map_err(|e| {
        let code = sqlstate(&e);
        assert!(!code.is_empty(), "not a server error: {e}");
        code.to_owned()
    })
}

fn refused<T>(code: &str) -> Outcome<T> {
    Err(code.to_owned())
}

struct Run {
    seed: u64,
    rng: fastrand::Rng,
    client: Client,
    model: Model,
    users: Vec<Uuid>,
    wallets: Vec<TestWallet>,
    messages: Vec<SignedMessage>,
    trace: Vec<String>,
    /// The cases of the contract the run has met (`ALL_CASES`).
    cases: BTreeSet<&'static str>,
}

impl Run {
    fn new(seed: u64, client: Client) -> Run {
        let mut rng = fastrand::Rng::with_seed(seed);
        let users = (0..USERS).map(|_| random_user(&mut rng)).collect();
        let wallets = (1..=WALLETS).map(TestWallet::from_seed).collect();
        Run {
            seed,
            rng,
            client,
            model: Model::default(),
            users,
            wallets,
            messages: Vec::new(),
            trace: Vec::new(),
            cases: BTreeSet::new(),
        }
    }

    /// Panics with the seed and the calls that led here.
    fn disagree(&self, what: &str) -> ! {
        let start = self.trace.len().saturating_sub(25);
        panic!(
            "seed {}, call {}: {what}\nthe calls before it:\n{}",
            self.seed,
            self.trace.len(),
            self.trace[start..].join("\n")
        );
    }

    fn expect_eq<T: PartialEq + std::fmt::Debug>(&self, actual: T, expected: T, call: &str) {
        if actual != expected {
            self.disagree(&format!(
                "{call}: the server answered {actual:?}, the model says {expected:?}"
            ));
        }
    }

    /// Notes that the run met `case`; returns `value`.
    fn saw<T>(&mut self, case: &'static str, value: T) -> T {
        self.cases.insert(case);
        value
    }

    fn user(&mut self) -> Uuid {
        self.users[self.rng.usize(..self.users.len())]
    }

    fn given_id(&mut self) -> GivenId {
        match self.rng.u32(..100) {
            0..=4 => {
                let given = CUSTOM_IDS[self.rng.usize(..CUSTOM_IDS.len())];
                // Matched by the whole pattern, case sensitive; nothing before it is registered.
                let matches = |pattern: &str| match pattern {
                    "[0-9]+" => given.chars().all(|c| c.is_ascii_digit()),
                    _ => given.chars().all(|c| c.is_ascii_lowercase()),
                };
                let canonical = (self.model.custom_pattern)
                    .filter(|pattern| matches(pattern))
                    .map(|_| given.to_owned());
                GivenId {
                    provider: CUSTOM_PROVIDER,
                    given: given.into(),
                    canonical,
                }
            }
            5..=52 => {
                let provider = if self.rng.bool() { "github" } else { "discord" };
                if self.rng.u32(..10) == 0 {
                    let given = NOT_DECIMAL_IDS[self.rng.usize(..NOT_DECIMAL_IDS.len())];
                    GivenId {
                        provider,
                        given: given.into(),
                        canonical: None,
                    }
                } else {
                    let id = NUMERIC_IDS[self.rng.usize(..NUMERIC_IDS.len())];
                    GivenId {
                        provider,
                        given: id.into(),
                        canonical: Some(id.into()),
                    }
                }
            }
            _ => self.wallet_id(),
        }
    }

    /// A wallet address as checksummed, all lower case or all upper case (each accepted, stored
    /// checksummed), or mixed case with a wrong checksum (refused).
    fn wallet_id(&mut self) -> GivenId {
        let checksummed = self.wallets[self.rng.usize(..self.wallets.len())].address();
        let hex = &checksummed[2..];
        let (given, canonical) = match self.rng.u32(..10) {
            0..=3 => (checksummed.clone(), Some(checksummed.clone())),
            4..=5 => (
                format!("0x{}", hex.to_lowercase()),
                Some(checksummed.clone()),
            ),
            6..=7 => (
                format!("0x{}", hex.to_uppercase()),
                Some(checksummed.clone()),
            ),
            _ => {
                // One letter's case flipped: no longer the checksum, refused while mixed case.
                let flipped = flip_first_letter(hex);
                let mixed_case = flipped.contains(|c: char| c.is_ascii_uppercase())
                    && flipped.contains(|c: char| c.is_ascii_lowercase());
                (
                    format!("0x{flipped}"),
                    (!mixed_case).then_some(checksummed.clone()),
                )
            }
        };
        GivenId {
            provider: "wallet",
            given,
            canonical,
        }
    }

    fn evidence(&self) -> serde_json::Value {
        serde_json::json!({ "op": self.trace.len() })
    }

    fn step(&mut self) {
        match self.rng.u32(..100) {
            0 => self.register_provider(),
            1..=29 => self.create_binding(),
            30..=39 => self.revoke_binding(),
            40..=47 => self.merge_users(),
            48..=57 => self.resolve(),
            58..=62 => self.resolve_many(),
            63..=72 => self.enqueue_binding(),
            73..=79 => self.run_binding_jobs(),
            80..=92 => self.siwe_login(),
            _ => self.siwe_bind(),
        }
    }

    /// The custom provider, or (one time in five) a built-in one, with one of two definitions:
    /// true when new, false when the same again, 42710 for another.
    fn register_provider(&mut self) {
        let name = if self.rng.u32(..5) == 0 {
            "github"
        } else {
            CUSTOM_PROVIDER
        };
        let pattern = CUSTOM_PATTERNS[self.rng.usize(..CUSTOM_PATTERNS.len())];
        let call = format!("register_provider({name}, {pattern})");
        self.trace.push(call.clone());
        let actual = answer(self.client.query_one(
            "SELECT identity.register_provider($1, $2)",
            &[&name, &pattern],
        ))
        .map(|row| row.get::<_, bool>(0));
        let expected = match (name, self.model.custom_pattern) {
            ("github", _) => self.saw("register_provider: a built-in name", refused("42710")),
            (_, None) => {
                self.model.custom_pattern = Some(pattern);
                self.saw("register_provider: new", Ok(true))
            }
            (_, Some(registered)) if registered == pattern => {
                self.saw("register_provider: the same again", Ok(false))
            }
            (_, Some(_)) => self.saw("register_provider: another definition", refused("42710")),
        };
        self.expect_eq(actual, expected, &call);
    }

    fn create_binding(&mut self) {
        let (user, id) = (self.user(), self.given_id());
        let call = format!("create_binding({user}, {}, {})", id.provider, id.given);
        self.trace.push(call.clone());
        let evidence = self.evidence();
        let actual = answer(self.client.query_one(
            "SELECT binding_id, canonical_id, created FROM identity.create_binding($1, $2, $3, $4)",
            &[&user, &id.provider, &id.given, &evidence],
        ))
        .map(|row| {
            let fields: (Uuid, String, bool) = (row.get(0), row.get(1), row.get(2));
            fields
        });
        let expected = match id.key() {
            None => self.saw("create_binding: malformed", refused("22023")),
            Some(key) => match self.model.bindings.get(&key) {
                Some(b) if b.user == user => {
                    let repeat = Ok((b.id, key.1.clone(), false));
                    self.saw("create_binding: repeat", repeat)
                }
                Some(_) => self.saw("create_binding: another user's", refused("23505")),
                None => {
                    self.cases.insert("create_binding: new");
                    if key.0 == CUSTOM_PROVIDER {
                        self.cases
                            .insert("create_binding: new, of a registered provider");
                    }
                    if self.model.merged_into.contains_key(&user) {
                        self.cases
                            .insert("create_binding: new, for a merged-away user");
                    }
                    let new_id = actual.as_ref().map(|(id, ..)| *id).unwrap_or_default();
                    if actual.is_ok() {
                        let proof = Proof::Op(self.trace.len());
                        let event = BindEvent::direct(user, proof);
                        self.model.record_bind(key.clone(), new_id, event);
                    }
                    Ok((new_id, key.1, true))
                }
            },
        };
        self.expect_eq(actual, expected, &call);
    }

    fn revoke_binding(&mut self) {
        let id = self.given_id();
        let call = format!("revoke_binding({}, {})", id.provider, id.given);
        self.trace.push(call.clone());
        let evidence = self.evidence();
        let actual = answer(self.client.query_one(
            "SELECT binding_id, user_id FROM identity.revoke_binding($1, $2, $3)",
            &[&id.provider, &id.given, &evidence],
        ))
        .map(|row| {
            let fields: (Uuid, Uuid) = (row.get(0), row.get(1));
            fields
        });
        let expected = match id.key() {
            None => self.saw("revoke_binding: malformed", refused("22023")),
            Some(key) => match self.model.bindings.remove(&key) {
                None => self.saw("revoke_binding: not bound", refused("P0002")),
                Some(b) => {
                    self.cases.insert("revoke_binding: bound");
                    self.model.record_event(b.user, "revoke");
                    Ok((b.id, b.user))
                }
            },
        };
        self.expect_eq(actual, expected, &call);
    }

    fn merge_users(&mut self) {
        let (from, into) = (self.user(), self.user());
        let call = format!("merge_users({from}, {into})");
        self.trace.push(call.clone());
        let evidence = self.evidence();
        let actual = answer(self.client.query_one(
            "SELECT identity.merge_users($1, $2, $3)",
            &[&from, &into, &evidence],
        ))
        .map(|row| row.get::<_, i32>(0));
        let expected = if from == into {
            self.saw("merge_users: into self", refused("22023"))
        } else {
            if self.model.merged_into.contains_key(&into) {
                self.cases.insert("merge_users: into a merged-away user");
            }
            let mut moved = 0;
            for binding in self.model.bindings.values_mut() {
                if binding.user == from {
                    binding.user = into;
                    moved += 1;
                }
            }
            self.model.record_event(from, "merge");
            self.model.record_event(into, "merge");
            self.model.merged_into.insert(from, into);
            self.model.merged_into.remove(&into);
            let case = match moved {
                0 => "merge_users: nothing to move",
                _ => "merge_users: bindings moved",
            };
            self.saw(case, Ok(moved))
        };
        self.expect_eq(actual, expected, &call);
    }

    fn resolve(&mut self) {
        let id = self.given_id();
        let call = format!("resolve({}, {})", id.provider, id.given);
        self.trace.push(call.clone());
        let actual = answer(self.client.query_one(
            "SELECT identity.resolve($1, $2)",
            &[&id.provider, &id.given],
        ))
        .map(|row| row.get::<_, Option<Uuid>>(0));
        let expected = match id.key() {
            None => self.saw("resolve: malformed", refused("22023")),
            Some(key) => match self.model.owner(&key) {
                None => self.saw("resolve: unbound", Ok(None)),
                owner => self.saw("resolve: bound", Ok(owner)),
            },
        };
        self.expect_eq(actual, expected, &call);
    }

    /// Several ids of one provider, repeats and all, each answered in its place.
    fn resolve_many(&mut self) {
        let first = self.given_id();
        let mut ids = vec![first.clone()];
        while ids.len() < 1 + self.rng.usize(..6) {
            let next = self.given_id();
            if next.provider == first.provider {
                ids.push(next);
            }
        }
        let given: Vec<String> = ids.iter().map(|id| id.given.clone()).collect();
        let call = format!("resolve_many({}, {given:?})", first.provider);
        self.trace.push(call.clone());
        let actual = answer(self.client.query(
            "SELECT external_id, user_id FROM identity.resolve_many($1, $2)",
            &[&first.provider, &given],
        ))
        .map(|rows| {
            rows.iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect::<Vec<(String, Option<Uuid>)>>()
        });
        let expected = ids
            .iter()
            .map(|id| match id.key() {
                None => refused("22023"),
                Some(key) => Ok((id.given.clone(), self.model.owner(&key))),
            })
            .collect::<Outcome<Vec<_>>>();
        let case = match &expected {
            Err(_) => "resolve_many: a malformed id among them",
            Ok(_) => "resolve_many: answered",
        };
        self.cases.insert(case);
        self.expect_eq(actual, expected, &call);
    }

    fn enqueue_binding(&mut self) {
        let (user, id) = (self.user(), self.given_id());
        let call = format!("enqueue_binding({user}, {}, {})", id.provider, id.given);
        self.trace.push(call.clone());
        let evidence = self.evidence();
        let actual = answer(self.client.query_one(
            "SELECT identity.enqueue_binding($1, $2, $3, $4)",
            &[&user, &id.provider, &id.given, &evidence],
        ))
        .map(|row| row.get::<_, String>(0));
        let expected = match id.key() {
            None => self.saw("enqueue_binding: malformed", refused("22023")),
            Some(key) => {
                let job_key = job_key(&key);
                // A pending job is left as it is; a finished one is opened again.
                if self.model.pending_job(&key).is_some() {
                    self.cases.insert("enqueue_binding: pending already");
                } else {
                    self.cases.insert("enqueue_binding: queued");
                    let proof = Proof::Op(self.trace.len());
                    let job = Job {
                        user,
                        key,
                        proof,
                        state: "pending",
                        attempts: 0,
                    };
                    self.model.jobs.insert(job_key.clone(), job);
                }
                Ok(job_key)
            }
        };
        self.expect_eq(actual, expected, &call);
    }

    /// One pass takes every pending job (all are due: none has failed for a transient reason).
    /// A job binds for the user its user's merges end at: done if bound to them already, failed
    /// at once if bound to another.
    fn run_binding_jobs(&mut self) {
        let call = "run_binding_jobs(100)".to_owned();
        self.trace.push(call.clone());
        let actual = answer(self.client.query(
            "SELECT job_key, state, attempts, last_error IS NOT NULL
               FROM identity.run_binding_jobs(100)",
            &[],
        ))
        .map(|rows| {
            rows.iter()
                .map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3))))
                .collect::<BTreeMap<String, (String, i32, bool)>>()
        });
        let pending: Vec<String> = (self.model.jobs.iter())
            .filter(|(_, job)| job.state == "pending")
            .map(|(key, _)| key.clone())
            .collect();
        let mut expected = BTreeMap::new();
        for job_key in pending {
            let job = &self.model.jobs[&job_key];
            let (key, proof, queued_for) = (job.key.clone(), job.proof.clone(), job.user);
            let target = self.model.where_merges_end(queued_for);
            if target != queued_for {
                self.cases.insert("run_binding_jobs: a job follows merges");
            }
            let state = match self.model.owner(&key) {
                Some(owner) if owner == target => {
                    self.saw("run_binding_jobs: bound already", "succeeded")
                }
                Some(_) => self.saw("run_binding_jobs: another user's", "failed"),
                None => {
                    self.cases.insert("run_binding_jobs: binds");
                    let id = self.binding_id_of(&key);
                    let event = BindEvent::queued(queued_for, target, proof);
                    self.model.record_bind(key, id, event);
                    "succeeded"
                }
            };
            let job = self.model.jobs.get_mut(&job_key).unwrap();
            job.state = state;
            job.attempts += 1;
            let outcome = (state.to_owned(), job.attempts, state == "failed");
            expected.insert(job_key, outcome);
        }
        self.expect_eq(actual, Ok(expected), &call);
    }

    /// The id of the live binding of `key`, as the server has it (the model cannot know an id
    /// the server made without telling: a queued job's).
    fn binding_id_of(&mut self, (provider, canonical): &Key) -> Uuid {
        let row = self.client.query_opt(
            "SELECT id FROM identity.user_bindings WHERE provider = $1 AND external_id = $2",
            &[provider, canonical],
        );
        match row.unwrap() {
            Some(row) => row.get(0),
            None => self.disagree(&format!("{provider} {canonical} is not bound")),
        }
    }

    /// A new signed message, or (one time in four) one signed before, spent or not.
    fn signed_message(&mut self) -> usize {
        if !self.messages.is_empty() && self.rng.u32(..4) == 0 {
            return self.rng.usize(..self.messages.len());
        }
        let wallet = &self.wallets[self.rng.usize(..self.wallets.len())];
        let (message, signature) = signed_login(&mut self.client, wallet, DOMAIN);
        let address = wallet.address();
        self.messages.push(SignedMessage {
            address,
            message,
            signature,
        });
        self.messages.len() - 1
    }

    /// A login: its nonce spent, or refused (28000) if it was; then the wallet's owner, or the
    /// user a pending job promised it to (where that user's merges end), or a new user.
    fn siwe_login(&mut self) {
        let signed = self.signed_message();
        let new_user = if self.rng.u32(..5) == 0 {
            None
        } else {
            Some(random_user(&mut self.rng))
        };
        let SignedMessage {
            address,
            message,
            signature,
        } = self.messages[signed].clone();
        let call = format!("siwe_login(message {signed} of {address}, new user {new_user:?})");
        self.trace.push(call.clone());
        let actual = answer(self.client.query_one(
            "SELECT user_id, address, status FROM identity.siwe_login($1, $2, $3, $4)",
            &[&message, &signature, &DOMAIN, &new_user],
        ))
        .map(|row| {
            let fields: (Uuid, String, String) = (row.get(0), row.get(1), row.get(2));
            fields
        });
        if !self.model.spent_messages.insert(message.clone()) {
            let replay = self.saw("siwe_login: nonce spent", refused("28000"));
            return self.expect_eq(actual, replay, &call);
        }
        if let Err(code) = &actual {
            self.disagree(&format!(
                "{call}: refused with {code}, the model says it logs in"
            ));
        }
        let key: Key = ("wallet", address.clone());
        let proof = Proof::Signed(message);
        let expected = if let Some(owner) = self.model.owner(&key) {
            self.cases.insert("siwe_login: wallet bound");
            (owner, address, "existing".to_owned())
        } else if let Some(job) = self.model.pending_job(&key) {
            self.cases.insert("siwe_login: a pending job's user");
            let (queued_for, target) = (job.user, self.model.where_merges_end(job.user));
            if target != queued_for {
                self.cases
                    .insert("siwe_login: a pending job's user, merged away");
            }
            let id = self.binding_id_of(&key);
            let event = BindEvent::queued(queued_for, target, proof);
            self.model.record_bind(key, id, event);
            (target, address, "existing".to_owned())
        } else {
            let user = match (new_user, &actual) {
                (Some(user), _) => self.saw("siwe_login: first, new_user_id given", user),
                // A user the server made: new, and a UUIDv7.
                (None, Ok((user, ..))) if user.get_version_num() == 7 => {
                    self.saw("siwe_login: first, user made by the server", *user)
                }
                (None, _) => self.disagree(&format!("{call}: no new UUIDv7 user: {actual:?}")),
            };
            if self.model.events.contains_key(&user) {
                self.disagree(&format!("{call}: the new user {user} has a chain already"));
            }
            self.users.push(user);
            let id = self.binding_id_of(&key);
            self.model
                .record_bind(key, id, BindEvent::direct(user, proof));
            (user, address, "created".to_owned())
        };
        self.expect_eq(actual, Ok(expected), &call);
    }

    /// A wallet linked to a known user: its nonce spent, or refused (28000) if it was; refused
    /// with 23505 if another user has the wallet, and then the nonce is not spent.
    fn siwe_bind(&mut self) {
        let (user, signed) = (self.user(), self.signed_message());
        let SignedMessage {
            address,
            message,
            signature,
        } = self.messages[signed].clone();
        let call = format!("siwe_bind({user}, message {signed} of {address})");
        self.trace.push(call.clone());
        let actual = answer(self.client.query_one(
            "SELECT binding_id, canonical_id, created FROM identity.siwe_bind($1, $2, $3, $4)",
            &[&user, &message, &signature, &DOMAIN],
        ))
        .map(|row| {
            let fields: (Uuid, String, bool) = (row.get(0), row.get(1), row.get(2));
            fields
        });
        let key: Key = ("wallet", address.clone());
        let expected = if self.model.spent_messages.contains(&message) {
            self.saw("siwe_bind: nonce spent", refused("28000"))
        } else {
            match self.model.bindings.get(&key) {
                Some(b) if b.user != user => {
                    self.saw("siwe_bind: another user's", refused("23505"))
                }
                Some(b) => {
                    self.cases.insert("siwe_bind: repeat");
                    self.model.spent_messages.insert(message);
                    Ok((b.id, address, false))
                }
                None => {
                    self.cases.insert("siwe_bind: new");
                    self.model.spent_messages.insert(message.clone());
                    let id = match &actual {
                        Ok((id, ..)) => *id,
                        Err(_) => Uuid::nil(),
                    };
                    let event = BindEvent::direct(user, Proof::Signed(message));
                    self.model.record_bind(key, id, event);
                    Ok((id, address, true))
                }
            }
        };
        self.expect_eq(actual, expected, &call);
    }

    /// Every row of a query without parameters, each read by `read`.
    fn rows<T>(&mut self, sql: &str, read: impl Fn(&postgres::Row) -> T) -> Vec<T> {
        let rows = self.client.query(sql, &[]).unwrap();
        rows.iter().map(read).collect()
    }

    /// The live bindings as the server has them, against the model's.
    fn check_bindings(&mut self) {
        let actual: BTreeMap<(String, String), (Uuid, Uuid)> = self
            .rows(
                "SELECT provider, external_id, id, user_id FROM identity.user_bindings",
                |row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))),
            )
            .into_iter()
            .collect();
        let expected = (self.model.bindings.iter())
            .map(|((provider, id), b)| ((provider.to_string(), id.clone()), (b.id, b.user)))
            .collect();
        self.expect_eq(actual, expected, "the live bindings");
    }

    /// After the run: the bindings, the queue, the events and what vouches for them.
    fn check_everything(&mut self) {
        self.check_bindings();
        self.check_jobs();
        self.check_bind_events();
        self.check_binding_proofs();
        self.check_chains();
        self.check_integrity();
    }

    fn check_jobs(&mut self) {
        let actual: BTreeMap<String, (Uuid, String, i32)> = self
            .rows(
                "SELECT job_key, user_id, state, attempts FROM identity.binding_jobs",
                |row| (row.get(0), (row.get(1), row.get(2), row.get(3))),
            )
            .into_iter()
            .collect();
        let expected = (self.model.jobs.iter())
            .map(|(key, job)| (key.clone(), (job.user, job.state.to_owned(), job.attempts)))
            .collect();
        self.expect_eq(actual, expected, "the binding jobs");
    }

    /// Every bind event ever written: its binding, its chain, its proof and `queued_for`.
    fn check_bind_events(&mut self) {
        let actual: BTreeMap<Uuid, BindEvent> = self
            .rows(
                "SELECT (payload->>'binding_id')::uuid, user_id,
                        (payload->'evidence'->>'op')::int, payload->'evidence'->>'message',
                        (payload->>'queued_for')::uuid
                   FROM identity.identity_events WHERE event_type = 'bind'",
                |row| {
                    let proof = match (row.get::<_, Option<i32>>(2), row.get(3)) {
                        (Some(op), None) => Proof::Op(op as usize),
                        (None, Some(message)) => Proof::Signed(message),
                        other => panic!("a bind event with an unexpected proof: {other:?}"),
                    };
                    let event = BindEvent {
                        user: row.get(1),
                        proof,
                        queued_for: row.get(4),
                    };
                    (row.get(0), event)
                },
            )
            .into_iter()
            .collect();
        self.expect_eq(&actual, &self.model.bind_events, "the bind events");
    }

    /// `verify_binding` of every binding ever made: true for a live one a signed message made,
    /// wherever merges moved it; NULL for one with evidence of its own; P0002 once revoked.
    fn check_binding_proofs(&mut self) {
        let live: HashSet<Uuid> = self.model.bindings.values().map(|b| b.id).collect();
        let made: Vec<(Uuid, bool)> = (self.model.bind_events.iter())
            .map(|(id, event)| (*id, matches!(event.proof, Proof::Signed(_))))
            .collect();
        for (id, signed) in made {
            let actual = answer(
                self.client
                    .query_one("SELECT identity.verify_binding($1)", &[&id]),
            )
            .map(|row| row.get::<_, Option<bool>>(0));
            let expected = match (live.contains(&id), signed) {
                (false, _) => refused("P0002"),
                (true, true) => Ok(Some(true)),
                (true, false) => Ok(None),
            };
            self.expect_eq(actual, expected, &format!("verify_binding({id})"));
        }
    }

    /// The events of each type and of each user, and every chain verifies.
    fn check_chains(&mut self) {
        let by_type: BTreeMap<String, i64> = self
            .rows(
                "SELECT event_type, count(*) FROM identity.identity_events GROUP BY 1",
                |row| (row.get(0), row.get(1)),
            )
            .into_iter()
            .collect();
        self.expect_eq(
            &by_type,
            &self.model.events_by_type,
            "the events of each type",
        );
        let chains: BTreeMap<Uuid, (i64, bool)> = self
            .rows(
                "SELECT user_id, events, ok FROM identity.verify_event_chain()",
                |row| (row.get(0), (row.get(1), row.get(2))),
            )
            .into_iter()
            .collect();
        let expected = (self.model.events.iter())
            .map(|(user, &events)| (*user, (events, true)))
            .collect();
        self.expect_eq(chains, expected, "the chains");
    }

    /// A job that failed for good waits for a person: the one check the model expects to fail.
    fn check_integrity(&mut self) {
        let failing: Vec<String> = self.rows(
            "SELECT check_name FROM identity.check_integrity() WHERE NOT ok",
            |row| row.get(0),
        );
        let expected = match self.model.jobs.values().any(|job| job.state == "failed") {
            true => vec!["binding_jobs_not_stuck".to_owned()],
            false => vec![],
        };
        self.expect_eq(failing, expected, "the integrity checks that fail");
    }
}

fn flip_first_letter(hex: &str) -> String {
    let mut flipped = false;
    hex.chars()
        .map(|c| match c {
            'a'..='f' if !flipped => {
                flipped = true;
                c.to_ascii_uppercase()
            }
            'A'..='F' if !flipped => {
                flipped = true;
                c.to_ascii_lowercase()
            }
            _ => c,
        })
        .collect()
}

/// Every case the run must meet, so that no change to the mix of calls quietly stops testing one.
const ALL_CASES: [&str; 39] = [
    "create_binding: another user's",
    "create_binding: malformed",
    "create_binding: new",
    "create_binding: new, for a merged-away user",
    "create_binding: new, of a registered provider",
    "create_binding: repeat",
    "enqueue_binding: malformed",
    "enqueue_binding: pending already",
    "enqueue_binding: queued",
    "merge_users: bindings moved",
    "merge_users: into a merged-away user",
    "merge_users: into self",
    "merge_users: nothing to move",
    "register_provider: a built-in name",
    "register_provider: another definition",
    "register_provider: new",
    "register_provider: the same again",
    "resolve: bound",
    "resolve: malformed",
    "resolve: unbound",
    "resolve_many: a malformed id among them",
    "resolve_many: answered",
    "revoke_binding: bound",
    "revoke_binding: malformed",
    "revoke_binding: not bound",
    "run_binding_jobs: a job follows merges",
    "run_binding_jobs: another user's",
    "run_binding_jobs: binds",
    "run_binding_jobs: bound already",
    "siwe_bind: another user's",
    "siwe_bind: new",
    "siwe_bind: nonce spent",
    "siwe_bind: repeat",
    "siwe_login: a pending job's user",
    "siwe_login: a pending job's user, merged away",
    "siwe_login: first, new_user_id given",
    "siwe_login: first, user made by the server",
    "siwe_login: nonce spent",
    "siwe_login: wallet bound",
];

fn random_user(rng: &mut fastrand::Rng) -> Uuid {
    let mut bytes = [0; 16];
    rng.fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// How many seeds to run: never fewer than the default's, which meet every case.
fn seeds() -> u64 {
    std::env::var("IDENTITY_BINDINGS_MODEL_SEEDS")
        .map(|n| {
            n.parse()
                .expect("IDENTITY_BINDINGS_MODEL_SEEDS is a number")
        })
        .unwrap_or(DEFAULT_SEEDS)
        .max(DEFAULT_SEEDS)
}

#[test]
fn random_calls_agree_with_the_contract_call_by_call_and_leave_the_state_it_describes() {
    let mut met = BTreeSet::new();
    for seed in 1..=seeds() {
        let database = TestDatabase::create("model");
        let mut run = Run::new(seed, database.connect());
        for call in 0..CALLS_PER_SEED {
            run.step();
            if call % 100 == 99 {
                run.check_bindings();
            }
        }
        run.check_everything();
        met.append(&mut run.cases);
    }
    let missed: Vec<_> = ALL_CASES.iter().filter(|c| !met.contains(*c)).collect();
    assert!(missed.is_empty(), "the runs never met {missed:?}");
    assert_eq!(met.len(), ALL_CASES.len(), "a case missing from ALL_CASES");
}
