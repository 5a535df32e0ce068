//! The durable binding queue: a binding that fails for a transient reason is kept as a job and
//! retried with capped exponential backoff, so it is never lost. Each job runs in its own
//! subtransaction (one failure never undoes another), and concurrent runners never take the
//! same job (FOR UPDATE SKIP LOCKED). A job whose user a merge took away binds to the user the
//! merges end at: a job is for a person, and a merge says who that person now is.

use crate::bindings::{bind_queued, where_merges_end, QueuedWaits};
use crate::errors::{required, required_or_left_out, IdentityError};
use crate::events::{pg_uuid, rust_uuid};
use crate::evidence::{evidence_object, EvidenceArg};
use crate::gucs::RetryPolicy;
use crate::providers::canonical_external_id;
use crate::statements::{writable, Statement};
use crate::subtransaction::in_subtransaction;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::pg_sys::{self, INT4OID, INT8OID, JSONBOID, TEXTOID, UUIDOID};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::Value;
use uuid::Uuid;

/// The deterministic key of the job that makes this binding.
pub fn job_key(provider: &str, canonical_id: &str) -> String {
    format!("bind:{provider}:{canonical_id}")
}

static ENQUEUE: Statement = Statement::write(
    "INSERT INTO identity.binding_jobs AS j (job_key, user_id, provider, external_id, evidence)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (job_key) DO UPDATE
        SET user_id = EXCLUDED.user_id, evidence = EXCLUDED.evidence, state = 'pending',
            attempts = 0, next_attempt_at = now(), last_error = NULL, updated_at = now()
      WHERE j.state <> 'pending'
     RETURNING true",
    &[TEXTOID, UUIDOID, TEXTOID, TEXTOID, JSONBOID],
);

/// Queues the binding and returns its job key, and whether a job was queued (false: one was
/// pending already and is left as it is). A finished job with that key is opened again.
pub fn enqueue(
    client: &mut SpiClient<'_>,
    user_id: Uuid,
    provider: &str,
    external_id: &str,
    evidence: Value,
) -> Result<(String, bool), IdentityError> {
    let canonical_id = canonical_external_id(client, provider, external_id)?;
    let key = job_key(provider, &canonical_id);
    let queued = ENQUEUE.run(
        client,
        &[
            key.as_str().into(),
            pg_uuid(user_id).into(),
            provider.into(),
            canonical_id.as_str().into(),
            pgrx::JsonB(evidence).into(),
        ],
    )?;
    let queued = !queued.is_empty();
    Ok((key, queued))
}

/// `identity.enqueue_binding(user_id, provider, external_id, evidence)` → the job key.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn enqueue_binding(
    user_id: Option<pgrx::Uuid>,
    provider: Option<&str>,
    external_id: Option<&str>,
    evidence: default!(Option<EvidenceArg>, "'{}'"),
) -> Result<String, ErrorReport> {
    writable()?;
    let user_id = rust_uuid(required(user_id, "user_id")?);
    let provider = required(provider, "provider")?;
    let external_id = required(external_id, "external_id")?;
    let evidence = required_or_left_out(evidence, "evidence", "'{}'")?;
    let evidence = evidence_object(evidence)?;
    let (key, _) =
        Spi::connect_mut(|client| enqueue(client, user_id, provider, external_id, evidence))?;
    Ok(key)
}

static PENDING_JOB_USER: Statement = Statement::read(
    "SELECT j.user_id FROM identity.binding_jobs j WHERE j.job_key = $1 AND j.state = 'pending'",
    &[TEXTOID],
);

/// The user a pending job would bind canonical `canonical_id` of `provider` to, if one is queued.
pub fn pending_job_user(
    client: &mut SpiClient<'_>,
    provider: &str,
    canonical_id: &str,
) -> Result<Option<Uuid>, IdentityError> {
    let key = job_key(provider, canonical_id);
    let user = PENDING_JOB_USER.first_uuid(client, &[key.as_str().into()])?;
    Ok(user.map(rust_uuid))
}

static CLAIM_DUE_JOBS: Statement = Statement::write(
    "SELECT j.job_key, j.user_id, j.provider, j.external_id, j.evidence, j.attempts
       FROM identity.binding_jobs j
      WHERE j.state = 'pending' AND j.next_attempt_at <= now()
      ORDER BY j.next_attempt_at
      LIMIT $1
        FOR UPDATE SKIP LOCKED",
    &[INT8OID],
);

static RECORD_OUTCOME: Statement = Statement::write(
    "UPDATE identity.binding_jobs
        SET state = $2, attempts = $3, last_error = $4, updated_at = now(),
            next_attempt_at = now() + make_interval(secs => $5::float8 / 1000)
      WHERE job_key = $1",
    &[TEXTOID, TEXTOID, INT4OID, TEXTOID, INT8OID],
);

struct Job {
    key: String,
    user_id: Uuid,
    provider: String,
    external_id: String,
    evidence: Value,
    attempts: i32,
}

/// What one pass did to one job.
pub struct JobOutcome {
    pub key: String,
    pub state: &'static str,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// The user whose chain the job appended to, which the pass holds until it ends.
    pub chain_locked: Option<Uuid>,
}

fn claim_due_jobs(client: &mut SpiClient<'_>, max_jobs: i64) -> Result<Vec<Job>, IdentityError> {
    let mut jobs = Vec::new();
    for row in CLAIM_DUE_JOBS.run(client, &[max_jobs.into()])? {
        let missing = || IdentityError::Internal("binding job with NULL fields".into());
        jobs.push(Job {
            key: row.get::<String>(1)?.ok_or_else(missing)?,
            user_id: row
                .get::<pgrx::Uuid>(2)?
                .map(rust_uuid)
                .ok_or_else(missing)?,
            provider: row.get::<String>(3)?.ok_or_else(missing)?,
            external_id: row.get::<String>(4)?.ok_or_else(missing)?,
            evidence: row.get::<pgrx::JsonB>(5)?.ok_or_else(missing)?.0,
            attempts: row.get::<i32>(6)?.ok_or_else(missing)?,
        });
    }
    Ok(jobs)
}

/// A random number in [0, 1) from the CSPRNG, for retry jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    // SAFETY: writes exactly 8 bytes into the buffer.
    let ok = unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) };
    if ok {
        (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    } else {
        0.5
    }
}

/// Tries one job in its own subtransaction and records what happened. A cancel or statement
/// timeout is not the job's outcome but the pass's end: raised again, it rolls the pass back,
/// and every job it took is due as before.
/// `highest_chain`: the highest user, in user order, whose chain the pass holds (see
/// `QueuedWaits::InPass`); the outcome says whose chain the job locked, if it did.
fn run_job(
    job: Job,
    policy: &RetryPolicy,
    highest_chain: Option<Uuid>,
) -> Result<JobOutcome, IdentityError> {
    let attempts = job.attempts.saturating_add(1);
    let result = in_subtransaction(|| {
        Spi::connect_mut(|client| {
            bind_queued(
                client,
                job.user_id,
                &job.provider,
                &job.external_id,
                job.evidence.clone(),
                QueuedWaits::InPass { highest_chain },
            )
        })
    });
    let chain_locked = match &result {
        Ok(outcome) if outcome.created => Some(outcome.user_id),
        _ => None,
    };
    let (state, last_error, delay_ms) = match result {
        Ok(_) => ("succeeded", None, 0),
        Err(failure) if failure.is_query_canceled() => return Err(failure.into()),
        Err(failure) if failure.is_transient() && policy.may_retry(attempts) => (
            "pending",
            Some(failure.to_string()),
            policy.delay_ms(attempts, jitter()),
        ),
        Err(failure) => ("failed", Some(failure.to_string()), 0),
    };
    Spi::connect_mut(|client| {
        RECORD_OUTCOME
            .run(
                client,
                &[
                    job.key.as_str().into(),
                    state.into(),
                    attempts.into(),
                    last_error.as_deref().into(),
                    delay_ms.into(),
                ],
            )
            .map(|_| ())
    })?;
    Ok(JobOutcome {
        key: job.key,
        state,
        attempts,
        last_error,
        chain_locked,
    })
}

/// One pass over due jobs: at most `max_jobs`, each in its own subtransaction.
pub fn run_due_jobs(max_jobs: i64) -> Result<Vec<JobOutcome>, IdentityError> {
    let policy = RetryPolicy::current();
    // A pass keeps every chain lock its jobs took until it commits. Taken in user order, the
    // order merges and other passes take them in, they cannot deadlock with those: the jobs run
    // in the order of the users they bind for, where merges have taken the users they were
    // queued for (`QueuedWaits::InPass`).
    let mut jobs = Spi::connect_mut(|client| {
        let jobs = claim_due_jobs(client, max_jobs)?;
        jobs.into_iter()
            .map(|job| Ok((where_merges_end(client, job.user_id)?, job)))
            .collect::<Result<Vec<_>, IdentityError>>()
    })?;
    jobs.sort_by_key(|(bound_for, _)| *bound_for);
    let jobs = jobs.into_iter().map(|(_, job)| job);
    let mut highest_chain = None;
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let outcome = run_job(job, &policy, highest_chain)?;
        highest_chain = highest_chain.max(outcome.chain_locked);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// `identity.run_binding_jobs(max_jobs)`: one pass over the due jobs, with each job's outcome.
// pgrx reads the column names from `name!` in the signature itself, so no type alias here.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn run_binding_jobs(
    max_jobs: default!(Option<i32>, 100),
) -> Result<
    TableIterator<
        'static,
        (
            name!(job_key, String),
            name!(state, String),
            name!(attempts, i32),
            name!(last_error, Option<String>),
        ),
    >,
    ErrorReport,
> {
    writable()?;
    let max_jobs = required_or_left_out(max_jobs, "max_jobs", "100")?;
    if max_jobs < 1 {
        return Err(IdentityError::InvalidParameter {
            reason: "max_jobs must be at least 1".into(),
        }
        .into());
    }
    let outcomes = run_due_jobs(i64::from(max_jobs))?;
    Ok(TableIterator::new(outcomes.into_iter().map(|o| {
        (o.key, o.state.to_owned(), o.attempts, o.last_error)
    })))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::sqlstate_of;
    use pgrx::prelude::*;

    const ALICE: &str = "00000000-0000-4000-8000-00000000a11c";
    const BOB: &str = "00000000-0000-4000-8000-000000000b0b";

    fn enqueue(user: &str, external_id: &str) -> Option<String> {
        Spi::get_one(&format!("SELECT identity.enqueue_binding('{user}', 'github', '{external_id}', '{{\"method\": \"queued\"}}')"))
            .unwrap()
    }

    #[pg_test]
    fn the_job_key_is_deterministic_and_a_pending_key_is_enqueued_once() {
        crate::testing::take_turns();
        assert_eq!(enqueue(ALICE, "42").as_deref(), Some("bind:github:42"));
        assert_eq!(enqueue(BOB, "42").as_deref(), Some("bind:github:42"));
        let jobs: (Option<i64>, Option<pgrx::Uuid>) =
            Spi::get_two("SELECT count(*), min(user_id::text)::uuid FROM identity.binding_jobs")
                .unwrap();
        assert_eq!(jobs.0, Some(1));
        assert_eq!(
            jobs.1.map(|u| u.to_string()),
            Some(ALICE.to_string()),
            "the pending job is unchanged"
        );
        let wallet = Spi::get_one::<String>(
            "SELECT identity.enqueue_binding(gen_random_uuid(), 'wallet', '0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed')",
        );
        assert_eq!(
            wallet.unwrap().as_deref(),
            Some("bind:wallet:0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
        );
    }

    #[pg_test]
    fn a_due_job_succeeds_and_binds_with_its_evidence() {
        crate::testing::take_turns();
        enqueue(ALICE, "42");
        let outcome: (Option<String>, Option<i32>) =
            Spi::get_two("SELECT state, attempts FROM identity.run_binding_jobs()").unwrap();
        assert_eq!(outcome, (Some("succeeded".into()), Some(1)));
        let evidence = Spi::get_one::<String>(
            "SELECT payload->'evidence'->>'method' FROM identity.identity_events WHERE payload->>'external_id' = '42'",
        );
        assert_eq!(evidence.unwrap().as_deref(), Some("queued"));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM identity.run_binding_jobs()"),
            Ok(Some(0))
        );
    }

    fn merge(from_user: &str, into_user: &str) {
        Spi::run(&format!(
            "SELECT identity.merge_users('{from_user}', '{into_user}', '{{\"ticket\": \"SUP-3\"}}')"
        ))
        .unwrap();
    }

    /// Who the job's binding went to, and the `queued_for` its bind event records.
    fn bound_by_job(external_id: &str) -> (Option<String>, Option<String>) {
        Spi::get_two(&format!(
            "SELECT e.user_id::text, e.payload->>'queued_for' FROM identity.identity_events e
              WHERE e.event_type = 'bind' AND e.payload->>'external_id' = '{external_id}'"
        ))
        .unwrap()
    }

    fn state_of(key: &str) -> Option<String> {
        Spi::get_one(&format!(
            "SELECT state FROM identity.binding_jobs WHERE job_key = '{key}'"
        ))
        .unwrap()
    }

    #[pg_test]
    fn a_job_for_a_user_merged_away_binds_to_the_user_merged_into_and_records_it() {
        crate::testing::take_turns();
        enqueue(ALICE, "42");
        enqueue(BOB, "43");
        merge(ALICE, BOB);
        Spi::run("SELECT FROM identity.run_binding_jobs()").unwrap();
        assert_eq!(state_of("bind:github:42").as_deref(), Some("succeeded"));
        assert_eq!(
            bound_by_job("42"),
            (Some(BOB.into()), Some(ALICE.into())),
            "bound to the user merged into, queued for the one merged away"
        );
        assert_eq!(
            bound_by_job("43"),
            (Some(BOB.into()), None),
            "a job for a user who stands records nothing more"
        );
        assert_eq!(
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM identity.user_bindings WHERE user_id = '{ALICE}'"
            )),
            Ok(Some(0))
        );
        assert!(crate::testing::integrity_is_clean());
    }

    #[pg_test]
    fn merges_are_followed_to_the_user_who_still_stands() {
        crate::testing::take_turns();
        const CAROL: &str = "00000000-0000-4000-8000-0000000ca201";
        // Alice into Bob, then Bob into Carol: Alice's job ends at Carol.
        merge(ALICE, BOB);
        merge(BOB, CAROL);
        enqueue(ALICE, "1");
        // Carol back into Alice: Alice stands again, and Bob's and Carol's jobs end at her.
        merge(CAROL, ALICE);
        enqueue(BOB, "2");
        enqueue(CAROL, "3");
        enqueue(ALICE, "4");
        Spi::run("SELECT FROM identity.run_binding_jobs()").unwrap();
        assert_eq!(bound_by_job("1"), (Some(ALICE.into()), None));
        assert_eq!(bound_by_job("2"), (Some(ALICE.into()), Some(BOB.into())));
        assert_eq!(bound_by_job("3"), (Some(ALICE.into()), Some(CAROL.into())));
        assert_eq!(bound_by_job("4"), (Some(ALICE.into()), None));
        assert!(crate::testing::integrity_is_clean());
    }

    #[pg_test]
    fn an_id_owned_by_another_user_fails_at_once_and_does_not_stop_the_pass() {
        crate::testing::take_turns();
        Spi::run(&format!(
            "SELECT identity.create_binding('{BOB}', 'github', '7')"
        ))
        .unwrap();
        enqueue(ALICE, "7");
        enqueue(ALICE, "8");
        let failed = Spi::get_two::<String, String>(
            "SELECT state, last_error FROM identity.run_binding_jobs() WHERE job_key = 'bind:github:7'",
        )
        .unwrap();
        assert_eq!(failed.0.as_deref(), Some("failed"));
        assert!(failed.1.unwrap().starts_with("23505: "));
        let states = Spi::get_one::<String>(
            "SELECT string_agg(job_key || '=' || state, ',' ORDER BY job_key) FROM identity.binding_jobs",
        );
        assert_eq!(
            states.unwrap().as_deref(),
            Some("bind:github:7=failed,bind:github:8=succeeded")
        );
        assert_eq!(
            Spi::get_one::<pgrx::Uuid>("SELECT identity.resolve('github', '7')")
                .unwrap()
                .map(|u| u.to_string()),
            Some(BOB.to_string())
        );
    }

    #[pg_test]
    fn bad_requests_are_refused_when_enqueued() {
        crate::testing::take_turns();
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT identity.enqueue_binding('{ALICE}', 'github', 'abc')"
            )),
            "22023"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.enqueue_binding(NULL, 'github', '1')"),
            "22004"
        );
        assert_eq!(
            sqlstate_of("SELECT * FROM identity.run_binding_jobs(0)"),
            "22023"
        );
    }
}
