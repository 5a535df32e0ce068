//! Sign-In with Ethereum in SQL: verify a message, log in (verify, consume the nonce, bind the
//! wallet) in one round trip, link a wallet to a known user, and re-check stored evidence.

use crate::binding_index::{claim_on, Claim};
use crate::bindings::{bind, bind_queued, owner_of, where_merges_end, BindOutcome, QueuedWaits};
use crate::errors::{echo, required, required_or_left_out, IdentityError};
use crate::events::{pg_uuid, rust_uuid, with_binding_owners};
use crate::nonces::consume;
use crate::retry::{enqueue, pending_job_user};
use crate::siwe::{self, Expectations, Message, VerifyError, VERIFIER_VERSION};
use crate::statements::{writable, Statement};
use crate::subtransaction::in_subtransaction;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::pg_sys::{self, UUIDOID};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_MICROS: i128 = 946_684_800_000_000;

fn unix_nanos(at: TimestampWithTimeZone) -> i128 {
    (i128::from(pg_sys::TimestampTz::from(at)) + POSTGRES_EPOCH_MICROS) * 1000
}

/// An instant as timestamptz, truncated to PostgreSQL's microseconds.
fn timestamptz(unix_nanos: i128) -> Result<TimestampWithTimeZone, IdentityError> {
    let micros = unix_nanos.div_euclid(1000) - POSTGRES_EPOCH_MICROS;
    i64::try_from(micros)
        .ok()
        .and_then(|m| TimestampWithTimeZone::try_from(m).ok())
        .ok_or_else(|| IdentityError::SiweMalformed {
            reason: "a timestamp is outside PostgreSQL's range".into(),
        })
}

fn statement_time() -> TimestampWithTimeZone {
    // SAFETY: reads a backend-local timestamp; no preconditions.
    let now = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    TimestampWithTimeZone::try_from(now).expect("the statement start is a valid timestamp")
}

impl From<VerifyError> for IdentityError {
    fn from(error: VerifyError) -> Self {
        match error {
            VerifyError::Malformed(parse) => IdentityError::SiweMalformed {
                reason: parse.to_string(),
            },
            refusal => IdentityError::SiweRefused {
                reason: with_texts_echoed(refusal).to_string(),
            },
        }
    }
}

/// The refusal with the texts it repeats from the message or the caller cut as `echo` cuts all
/// input in messages: a domain or a timestamp's fraction can be megabytes long, and refusals of
/// unsigned messages land in the server log.
fn with_texts_echoed(refusal: VerifyError) -> VerifyError {
    match refusal {
        VerifyError::DomainMismatch { expected, found } => VerifyError::DomainMismatch {
            expected: echo(&expected),
            found: echo(&found),
        },
        VerifyError::NonceMismatch { expected, found } => VerifyError::NonceMismatch {
            expected: echo(&expected),
            found: echo(&found),
        },
        VerifyError::Expired { expiration_time } => VerifyError::Expired {
            expiration_time: echo(&expiration_time),
        },
        VerifyError::NotYetValid { not_before } => VerifyError::NotYetValid {
            not_before: echo(&not_before),
        },
        other => other,
    }
}

/// A message as submitted for sign-in, if it is not longer than a sign-in may submit.
fn submitted(message: &str) -> Result<&str, IdentityError> {
    if message.len() > siwe::MAX_MESSAGE_BYTES {
        return Err(IdentityError::SiweTooLong {
            bytes: message.len(),
        });
    }
    Ok(message)
}

/// `identity.verify_siwe(...)`: parses and verifies, consuming nothing.
#[pg_extern(immutable, parallel_safe, requires = ["siwe_schema"])]
#[search_path(pg_catalog, pg_temp)]
fn verify_siwe(
    message: Option<&str>,
    signature: Option<&str>,
    domain: default!(Option<&str>, "NULL"),
    nonce: default!(Option<&str>, "NULL"),
    at: default!(Option<TimestampWithTimeZone>, "now()"),
) -> Result<pgrx::composite_type!('static, "identity.siwe_message"), ErrorReport> {
    let message = submitted(required(message, "message")?)?;
    let signature = required(signature, "signature")?;
    let at = required_or_left_out(at, "at", "now()")?;
    let expect = Expectations {
        domain,
        nonce,
        at_unix_nanos: unix_nanos(at),
    };
    let parsed = siwe::verify(message, signature, &expect).map_err(IdentityError::from)?;
    Ok(composite(&parsed)?)
}

fn internal(error: impl std::fmt::Display) -> IdentityError {
    IdentityError::Internal(error.to_string())
}

fn composite(
    m: &Message,
) -> Result<pgrx::composite_type!('static, "identity.siwe_message"), IdentityError> {
    let mut row = PgHeapTuple::new_composite_type("identity.siwe_message").map_err(internal)?;
    let optional_time =
        |t: &Option<siwe::Timestamp>| t.as_ref().map(|t| timestamptz(t.unix_nanos)).transpose();
    row.set_by_name("scheme", m.scheme.clone())
        .map_err(internal)?;
    row.set_by_name("domain", m.domain.clone())
        .map_err(internal)?;
    row.set_by_name("address", m.address.to_checksummed())
        .map_err(internal)?;
    row.set_by_name("statement", m.statement.clone())
        .map_err(internal)?;
    row.set_by_name("uri", m.uri.clone()).map_err(internal)?;
    row.set_by_name("version", m.version.clone())
        .map_err(internal)?;
    row.set_by_name("chain_id", m.chain_id).map_err(internal)?;
    row.set_by_name("nonce", m.nonce.clone())
        .map_err(internal)?;
    row.set_by_name("issued_at", timestamptz(m.issued_at.unix_nanos)?)
        .map_err(internal)?;
    row.set_by_name("expiration_time", optional_time(&m.expiration_time)?)
        .map_err(internal)?;
    row.set_by_name("not_before", optional_time(&m.not_before)?)
        .map_err(internal)?;
    row.set_by_name("request_id", m.request_id.clone())
        .map_err(internal)?;
    row.set_by_name("resources", m.resources.clone())
        .map_err(internal)?;
    Ok(row)
}

/// A verified login message whose nonce has been consumed, with the evidence a binding keeps.
struct AcceptedLogin {
    message: Message,
    evidence: Value,
}

/// Verifies for `domain` now, then consumes the message's nonce: the order that keeps a bad
/// signature from burning a nonce, and a replay from ever passing twice.
fn accept_login(
    client: &mut SpiClient<'_>,
    message: &str,
    signature: &str,
    domain: &str,
) -> Result<AcceptedLogin, IdentityError> {
    let at = statement_time();
    let expect = Expectations {
        domain: Some(domain),
        nonce: None,
        at_unix_nanos: unix_nanos(at),
    };
    let parsed = siwe::verify(submitted(message)?, signature, &expect)?;
    consume(client, &parsed.nonce, at)?;
    let verified_at = OffsetDateTime::from_unix_timestamp_nanos(unix_nanos(at))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok());
    let evidence = json!({
        "method": "siwe",
        "message": message,
        "signature": signature,
        "chain_id": parsed.chain_id,
        "domain": domain,
        "nonce": parsed.nonce,
        "verifier": VERIFIER_VERSION,
        "verified_at": verified_at,
    });
    Ok(AcceptedLogin {
        message: parsed,
        evidence,
    })
}

/// The id of a user a first login creates: a UUIDv7, as the README advises for every user id.
/// Three of the four index keys a new binding writes are its user's id, and time-ordered ids land
/// at their indexes' right edge, where the pages stay cached: with them a new binding cost the
/// same at 10 million bindings as at 10,000 (BENCHMARKS.md, scaling). The id shows when the user
/// first signed in; callers who would rather it did not pass their own `new_user_id`.
fn new_user() -> Uuid {
    Uuid::now_v7()
}

/// `identity.siwe_login(message, signature, domain, new_user_id)`: one round trip from a signed
/// message to the user it identifies, binding the wallet to a new user on first login.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn siwe_login(
    message: Option<&str>,
    signature: Option<&str>,
    domain: Option<&str>,
    new_user_id: default!(Option<pgrx::Uuid>, "NULL"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(user_id, pgrx::Uuid),
            name!(address, String),
            name!(chain_id, i64),
            name!(status, String),
        ),
    >,
    ErrorReport,
> {
    writable()?;
    let message = required(message, "message")?;
    let signature = required(signature, "signature")?;
    let domain = required(domain, "domain")?;
    let row = Spi::connect_mut(|client| -> Result<_, IdentityError> {
        let login = accept_login(client, message, signature, domain)?;
        let address = login.message.address.to_checksummed();
        let chain_id = login.message.chain_id;
        if let Some(owner) = owner_of("wallet", &address)? {
            return Ok((owner, address, chain_id, "existing"));
        }
        // A job pending for the wallet (an earlier login's queued binding, or the backstop's)
        // has promised it to a user: this login is theirs, or where merges took them, and binds
        // the wallet to them now. Otherwise the wallet is new, and so is its user.
        let promised = pending_job_user(client, "wallet", &address)?;
        let user_id = match promised {
            Some(user) => user,
            None => new_user_id.map(rust_uuid).unwrap_or_else(new_user),
        };
        // The binding step runs in a subtransaction: whatever happens to it, the login stands.
        let evidence = login.evidence;
        let binding_step = |client: &mut SpiClient<'_>| match promised {
            Some(user) => bind_queued(
                client,
                user,
                "wallet",
                &address,
                evidence.clone(),
                QueuedWaits::AsCreateBinding,
            ),
            None => bind(client, user_id, "wallet", &address, evidence.clone()),
        };
        match in_subtransaction(|| binding_step(client)) {
            Ok(BindOutcome {
                created: true,
                user_id,
                ..
            }) if promised.is_none() => Ok((user_id, address, chain_id, "created")),
            Ok(BindOutcome { user_id, .. }) => Ok((user_id, address, chain_id, "existing")),
            // A concurrent first login from the same wallet bound it a moment ago: same wallet,
            // same user. (The nonce was consumed by a write, so this look-up takes a fresh
            // snapshot and sees that login's committed binding.) No owner any more: a revoke
            // committed in between, and only a retry can tell whose the wallet is now (the
            // binding's 23505 is not an answer a login gives).
            Err(failure) if failure.sqlstate == "23505" => match owner_of("wallet", &address)? {
                Some(owner) => Ok((owner, address, chain_id, "existing")),
                None => Err(IdentityError::LoginConflict { address }),
            },
            // A cancel request is for the whole login, which fails and spends nothing: a client
            // that gave up may send the same message again. (A statement timeout is the wait
            // the step was allowed, and queues the binding like a lock timeout, below.)
            Err(failure) if failure.is_cancel_request() => Err(failure.into()),
            // This transaction's snapshot is older than what the binding ran into (under
            // REPEATABLE READ or SERIALIZABLE; most likely a first login of the same wallet that
            // committed meanwhile). Queued, the wallet would wait for a new user while it may
            // have an owner already; only a retry, with a new snapshot, can tell. The nonce is
            // spent only if this transaction commits, so the retry logs in with the same message.
            Err(failure) if failure.is_serialization_failure() => {
                Err(IdentityError::LoginConflict { address })
            }
            // A lock timeout, statement timeout or deadlock: queue the binding, never lose it,
            // unless the wait was for another transaction's binding of this wallet.
            Err(failure) if failure.is_transient() => match claim_on("wallet", &address)? {
                None => {
                    // A promised wallet is for the user its promise's merges end at, as the
                    // queue will bind it (the step that failed would have followed them too).
                    let user_id = match promised {
                        Some(user) => where_merges_end(client, user)?,
                        None => user_id,
                    };
                    enqueue(client, user_id, "wallet", &address, evidence)?;
                    Ok((user_id, address, chain_id, "queued"))
                }
                // Most likely a concurrent first login of the same wallet: queued, this login
                // would get a new user while that one may commit as the wallet's owner.
                Some(Claim::InProgress) => Err(IdentityError::LoginBehindAnother { address }),
                // Committed since the wait ended: the wallet's owner, if this snapshot sees it.
                Some(Claim::Committed) => match owner_of("wallet", &address)? {
                    Some(owner) => Ok((owner, address, chain_id, "existing")),
                    None => Err(IdentityError::LoginConflict { address }),
                },
            },
            Err(failure) => Err(failure.into()),
        }
    })?;
    let (user_id, address, chain_id, status) = row;
    Ok(TableIterator::once((
        pg_uuid(user_id),
        address,
        chain_id,
        status.to_owned(),
    )))
}

/// `identity.siwe_bind(user_id, message, signature, domain)`: links the signing wallet to a
/// known user, with the same checks and errors as a login and as `create_binding`.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn siwe_bind(
    user_id: Option<pgrx::Uuid>,
    message: Option<&str>,
    signature: Option<&str>,
    domain: Option<&str>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(binding_id, pgrx::Uuid),
            name!(canonical_id, String),
            name!(created, bool),
        ),
    >,
    ErrorReport,
> {
    writable()?;
    let user_id = rust_uuid(required(user_id, "user_id")?);
    let message = required(message, "message")?;
    let signature = required(signature, "signature")?;
    let domain = required(domain, "domain")?;
    let outcome = Spi::connect_mut(|client| -> Result<BindOutcome, IdentityError> {
        let login = accept_login(client, message, signature, domain)?;
        let address = login.message.address.to_checksummed();
        bind(client, user_id, "wallet", &address, login.evidence)
    })?;
    Ok(TableIterator::once((
        pg_uuid(outcome.binding_id),
        outcome.canonical_id,
        outcome.created,
    )))
}

// A live binding and the evidence of its `bind` event, found in the chains of its owners.
static BINDING_EVIDENCE: Statement = Statement::read(
    with_binding_owners!(
        "SELECT b.id, b.user_id FROM identity.user_bindings b WHERE b.id = $1",
        "SELECT b.provider, b.external_id, e.evidence, e.created_at
           FROM identity.user_bindings b LEFT JOIN bind_events e ON e.binding_id = b.id
          WHERE b.id = $1"
    ),
    &[UUIDOID],
);

/// `identity.verify_binding(binding_id)`: re-verifies a wallet binding's stored SIWE evidence as
/// of the login that proved it. NULL when the binding has no SIWE evidence to check: a binding of
/// another provider, or a wallet bound another way (a backfill, an application's own check).
#[pg_extern(stable, strict, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_binding(binding_id: pgrx::Uuid) -> Result<Option<bool>, ErrorReport> {
    Spi::connect_mut(|client| -> Result<Option<bool>, IdentityError> {
        let rows = BINDING_EVIDENCE.run(client, &[binding_id.into()])?;
        if rows.is_empty() {
            return Err(IdentityError::NoLiveBinding {
                binding_id: binding_id.to_string(),
            });
        }
        let row = rows.first();
        if row.get::<String>(1)?.as_deref() != Some("wallet") {
            return Ok(None);
        }
        let address = row.get::<String>(2)?.unwrap_or_default();
        let Some(evidence) = row.get::<pgrx::JsonB>(3)?.map(|e| e.0) else {
            return Ok(Some(false)); // a live binding without its bind event: nothing proves it
        };
        let bound_at: Option<TimestampWithTimeZone> = row.get(4)?;
        let (
            Some("siwe"),
            Some(message),
            Some(signature),
            Some(domain),
            Some(nonce),
            Some(bound_at),
        ) = (
            evidence["method"].as_str(),
            evidence["message"].as_str(),
            evidence["signature"].as_str(),
            evidence["domain"].as_str(),
            evidence["nonce"].as_str(),
            bound_at,
        )
        else {
            return Ok(None);
        };
        let expect = Expectations {
            domain: Some(domain),
            nonce: Some(nonce),
            at_unix_nanos: verification_instant(&evidence, bound_at),
        };
        Ok(Some(
            siwe::verify(message, signature, &expect)
                .is_ok_and(|m| m.address.to_checksummed() == address),
        ))
    })
    .map_err(ErrorReport::from)
}

/// When the login that wrote `evidence` checked its message: the `verified_at` it records, the
/// start of its statement. The `bind` event's own time, `bound_at`, is another instant: its
/// transaction's start, which can precede the login (a Not Before between the two held for the
/// login), or a queue's run long after it (when the message may have expired). Evidence without
/// a `verified_at` is checked at `bound_at`.
fn verification_instant(evidence: &Value, bound_at: TimestampWithTimeZone) -> i128 {
    evidence["verified_at"]
        .as_str()
        .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
        .map(OffsetDateTime::unix_timestamp_nanos)
        .unwrap_or_else(|| unix_nanos(bound_at))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::{
        error_of, sqlstate_of, ISSUE_EXAMPLE_NONCE, SIWE_EXAMPLE_MESSAGE as MESSAGE,
        SIWE_EXAMPLE_SIGNATURE as SIGNATURE,
    };
    use pgrx::prelude::*;

    const ADDRESS: &str = "0x9D85ca56217D2bb651b00f15e694EB7E713637D4";

    fn issue_example_nonce() {
        Spi::run(ISSUE_EXAMPLE_NONCE).unwrap();
    }

    fn login_sql(domain: &str) -> String {
        format!("SELECT user_id, status FROM identity.siwe_login($m${MESSAGE}$m$, '{SIGNATURE}', '{domain}')")
    }

    #[pg_test]
    fn verify_siwe_returns_every_field() {
        let row: (Option<String>, Option<i64>) = Spi::get_two(&format!(
            "SELECT (m).address, (m).chain_id FROM (SELECT identity.verify_siwe($m${MESSAGE}$m$, '{SIGNATURE}',
                 'login.xyz', 'bTyXgcQxn2htgkjJn', '2022-01-27T17:09:38.578Z') AS m) x"
        ))
        .unwrap();
        assert_eq!(row, (Some(ADDRESS.to_string()), Some(1)));
        let expiry = Spi::get_one::<bool>(&format!(
            "SELECT (identity.verify_siwe($m${MESSAGE}$m$, '{SIGNATURE}')).expiration_time = '2100-01-07T14:31:43.952Z'"
        ));
        assert_eq!(expiry, Ok(Some(true)));
    }

    #[pg_test]
    fn hostile_input_through_sql_gets_clean_errors() {
        let verify = |message: &str, signature: &str| {
            format!("SELECT identity.verify_siwe($m${message}$m$, $s${signature}$s$)")
        };
        let huge = format!("{MESSAGE}{}", "a".repeat(1 << 20));
        assert_eq!(sqlstate_of(&verify(&huge, SIGNATURE)), "22P02");
        assert_eq!(sqlstate_of(&verify("", "")), "22P02");
        assert_eq!(sqlstate_of(&verify(MESSAGE, "")), "28000");
        assert_eq!(sqlstate_of(&verify(MESSAGE, "0xabc")), "28000");
        assert_eq!(
            sqlstate_of(&verify(MESSAGE, &"ab".repeat(1 << 19))),
            "28000"
        );
        // The backend is still here, and verifies the genuine message.
        let ok = Spi::get_one::<String>(&format!(
            "SELECT (identity.verify_siwe($m${MESSAGE}$m$, '{SIGNATURE}')).address"
        ));
        assert_eq!(ok.unwrap().as_deref(), Some(ADDRESS));
    }

    #[pg_test]
    fn a_message_is_refused_for_its_length_from_one_byte_over_the_limit_before_it_is_parsed() {
        let limit = crate::siwe::MAX_MESSAGE_BYTES;
        let statement = "Sign-In With Ethereum Example Statement";
        let of_length = |bytes: usize| {
            let padding = "x".repeat(bytes - (MESSAGE.len() - statement.len()));
            MESSAGE.replacen(statement, &padding, 1)
        };
        let verify =
            |message: &str| format!("SELECT identity.verify_siwe($m${message}$m$, '{SIGNATURE}')");
        // At the limit the message is verified: the padding changed what was signed.
        let (sqlstate, message) = error_of(&verify(&of_length(limit)));
        assert_eq!(sqlstate, "28000");
        assert!(message.contains("wrong signer"), "{message}");
        let (sqlstate, message) = error_of(&verify(&of_length(limit + 1)));
        assert_eq!(sqlstate, "22P02");
        assert_eq!(
            message,
            format!(
                "SIWE message too long: {} bytes, more than the {limit} a sign-in may submit",
                limit + 1
            )
        );
        // Not parsed first: what is too long is refused for that, whatever else is wrong with it.
        let (sqlstate, message) = error_of(&verify(&"\r".repeat(limit + 1)));
        assert_eq!(sqlstate, "22P02");
        assert!(message.starts_with("SIWE message too long"), "{message}");
    }

    #[pg_test]
    fn verify_siwe_refusals_have_their_sqlstates() {
        let verify = |args: &str| format!("SELECT identity.verify_siwe({args})");
        assert_eq!(sqlstate_of(&verify("'hello', '0x00'")), "22P02");
        let (state, message) = error_of(&verify(&format!(
            "$m${MESSAGE}$m$, '{SIGNATURE}', 'example.com'"
        )));
        assert_eq!(state, "28000");
        assert!(message.contains("domain mismatch"), "{message}");
        let (state, message) = error_of(&verify(&format!(
            "$m${MESSAGE}$m$, '{SIGNATURE}', NULL, 'otherNonce1'"
        )));
        assert_eq!(
            (state.as_str(), message.contains("nonce mismatch")),
            ("28000", true),
            "{message}"
        );
        let (state, message) = error_of(&verify(&format!(
            "$m${MESSAGE}$m$, '{SIGNATURE}', NULL, NULL, '2100-01-08'"
        )));
        assert_eq!(
            (state.as_str(), message.contains("expired")),
            ("28000", true),
            "{message}"
        );
        assert_eq!(
            sqlstate_of(&verify(&format!("$m${MESSAGE}$m$, '0x1234'"))),
            "28000"
        );
        assert_eq!(
            sqlstate_of(&verify(&format!("NULL, '{SIGNATURE}'"))),
            "22004"
        );
    }

    #[pg_test]
    fn first_login_binds_the_wallet_with_full_evidence_and_the_second_finds_it() {
        crate::testing::take_turns();
        issue_example_nonce();
        let (user, status): (Option<pgrx::Uuid>, Option<String>) =
            Spi::get_two(&login_sql("login.xyz")).unwrap();
        assert_eq!(status.as_deref(), Some("created"));
        let user_version = user.map(|user| crate::events::rust_uuid(user).get_version_num());
        assert_eq!(user_version, Some(7), "a new user's id is time-ordered");
        let evidence =
            Spi::get_one::<pgrx::JsonB>("SELECT payload->'evidence' FROM identity.identity_events")
                .unwrap()
                .unwrap()
                .0;
        assert_eq!(evidence["method"], "siwe");
        assert_eq!(evidence["message"], MESSAGE);
        assert_eq!(evidence["signature"], SIGNATURE);
        assert_eq!(evidence["chain_id"], 1);
        assert_eq!(evidence["domain"], "login.xyz");
        assert_eq!(evidence["nonce"], "bTyXgcQxn2htgkjJn");
        assert_eq!(evidence["verifier"], crate::siwe::VERIFIER_VERSION);
        let verified =
            Spi::get_one::<bool>("SELECT identity.verify_binding(id) FROM identity.user_bindings");
        assert_eq!(verified, Ok(Some(true)));

        // The same message again is a replay: its nonce is gone.
        let (state, message) = error_of(&login_sql("login.xyz"));
        assert_eq!(state, "28000");
        assert!(message.contains("already used"), "{message}");

        // A new nonce and login for the same wallet finds the same user.
        issue_example_nonce();
        let again: (Option<pgrx::Uuid>, Option<String>) =
            Spi::get_two(&login_sql("login.xyz")).unwrap();
        assert_eq!(again, (user, Some("existing".to_string())));
    }

    #[pg_test]
    fn a_login_of_a_wallet_a_pending_job_promised_is_the_promised_users_through_merges() {
        crate::testing::take_turns();
        let (promised, merged_into) = (
            "00000000-0000-4000-8000-0000000000e1",
            "00000000-0000-4000-8000-0000000000e2",
        );
        // The backstop queued the wallet for a user, who was then merged into another.
        Spi::run(&format!(
            "SELECT identity.enqueue_binding('{promised}', 'wallet', lower('{ADDRESS}'), '{{\"method\": \"backstop\"}}');
             SELECT identity.merge_users('{promised}', '{merged_into}', '{{}}');"
        ))
        .unwrap();
        issue_example_nonce();
        let (user, status): (Option<pgrx::Uuid>, Option<String>) =
            Spi::get_two(&login_sql("login.xyz")).unwrap();
        assert_eq!(
            (user.map(|u| u.to_string()), status.as_deref()),
            (Some(merged_into.to_string()), Some("existing")),
            "the promised user, where the merge took them: not a new one"
        );
        let (method, queued_for) = Spi::get_two::<String, String>(
            "SELECT payload->'evidence'->>'method', payload->>'queued_for'
               FROM identity.identity_events WHERE event_type = 'bind'",
        )
        .unwrap();
        assert_eq!(
            method.as_deref(),
            Some("siwe"),
            "bound with the login's evidence"
        );
        assert_eq!(queued_for.as_deref(), Some(promised));
        let verified =
            Spi::get_one::<bool>("SELECT identity.verify_binding(id) FROM identity.user_bindings");
        assert_eq!(verified, Ok(Some(true)));
        // The job then finds its binding made.
        let state = Spi::get_one::<String>("SELECT state FROM identity.run_binding_jobs()");
        assert_eq!(state.unwrap().as_deref(), Some("succeeded"));
        assert!(crate::testing::integrity_is_clean());
    }

    #[pg_test]
    fn a_refused_login_does_not_burn_the_nonce() {
        crate::testing::take_turns();
        issue_example_nonce();
        assert_eq!(sqlstate_of(&login_sql("example.com")), "28000");
        let left = Spi::get_one::<i64>("SELECT count(*) FROM identity.siwe_nonces");
        assert_eq!(left, Ok(Some(1)));
    }

    #[pg_test]
    fn a_nonce_never_issued_is_refused() {
        crate::testing::take_turns();
        assert_eq!(sqlstate_of(&login_sql("login.xyz")), "28000");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM identity.user_bindings"),
            Ok(Some(0))
        );
    }

    #[pg_test]
    fn siwe_bind_links_the_wallet_to_a_known_user_and_refuses_another_owner() {
        crate::testing::take_turns();
        issue_example_nonce();
        let bind = |user: &str| {
            format!("SELECT created FROM identity.siwe_bind('{user}', $m${MESSAGE}$m$, '{SIGNATURE}', 'login.xyz')")
        };
        let created = Spi::get_one::<bool>(&bind("00000000-0000-4000-8000-00000000a11c"));
        assert_eq!(created, Ok(Some(true)));
        issue_example_nonce();
        assert_eq!(
            sqlstate_of(&bind("00000000-0000-4000-8000-000000000b0b")),
            "23505"
        );
    }

    #[pg_test]
    fn a_refusal_repeats_only_the_start_of_a_huge_domain_or_timestamp() {
        let unsigned = |domain: &str, expiry: &str| {
            format!(
                "SELECT identity.verify_siwe($m${domain} wants you to sign in with your Ethereum account:\n{ADDRESS}\n\n\nURI: https://login.xyz\nVersion: 1\nChain ID: 1\nNonce: bTyXgcQxn2htgkjJn\nIssued At: 2022-01-27T17:09:38.578Z\nExpiration Time: {expiry}$m$, '0x00', 'login.xyz')"
            )
        };
        // As long as a message may be: each fills most of the 16 kB.
        let huge_domain = format!("{}.com", "a".repeat(15_000));
        let huge_expiry = format!("2021-01-27T17:09:38.{}Z", "5".repeat(15_000));
        for (statement, refusal) in [
            (
                unsigned(&huge_domain, "2100-01-01T00:00:00Z"),
                "domain mismatch",
            ),
            (unsigned("login.xyz", &huge_expiry), "expired"),
        ] {
            let (sqlstate, message) = error_of(&statement);
            assert_eq!(sqlstate, "28000", "{refusal}");
            assert!(message.contains(refusal), "{message}");
            assert!(
                message.len() < 400 && message.contains('…'),
                "{refusal}: {} bytes",
                message.len()
            );
        }
    }

    #[pg_test]
    fn verify_binding_is_false_when_the_stored_evidence_was_tampered_with() {
        crate::testing::take_turns();
        issue_example_nonce();
        Spi::run(&login_sql("login.xyz")).unwrap();
        Spi::run(
            "ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only",
        )
        .unwrap();
        Spi::run(
            "UPDATE identity.identity_events
                SET payload = jsonb_set(payload, '{evidence,message}',
                                        to_jsonb(replace(payload->'evidence'->>'message', 'Example', 'Sample')))",
        )
        .unwrap();
        let verified =
            Spi::get_one::<bool>("SELECT identity.verify_binding(id) FROM identity.user_bindings");
        assert_eq!(verified, Ok(Some(false)));
    }

    /// Binds `address` to a user with SIWE evidence as a login writes it, `verified_at` included
    /// when given, and re-verifies the binding.
    fn bind_and_verify(
        address: &str,
        message: &str,
        signature: &str,
        verified_at: Option<&str>,
    ) -> Option<bool> {
        let binding_id = Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT binding_id FROM identity.create_binding('00000000-0000-4000-8000-00000000a11c', 'wallet', $1,
                        jsonb_strip_nulls(jsonb_build_object('method', 'siwe', 'message', $2, 'signature', $3,
                                          'domain', 'login.xyz', 'nonce', 'lx2nx4so', 'verified_at', $4)))",
            &[address.into(), message.into(), signature.into(), verified_at.into()],
        )
        .unwrap()
        .unwrap();
        Spi::get_one_with_args::<bool>("SELECT identity.verify_binding($1)", &[binding_id.into()])
            .unwrap()
    }

    #[pg_test]
    fn verify_binding_checks_the_message_at_the_instant_its_login_did() {
        crate::testing::take_turns();
        // spruceid's "not yet valid" vector: valid from 2100 on. A login recorded as verified in
        // 2101 proved it, though its bind event is stamped otherwise (now).
        const VALID_FROM_2100: &str = "login.xyz wants you to sign in with your Ethereum account:\n0xE6D3Aa1F561A215E5eb1f02Ba8705385F03fCaFB\n\nSign-In With Ethereum Example Statement\n\nURI: https://login.xyz\nVersion: 1\nChain ID: 1\nNonce: lx2nx4so\nIssued At: 2022-01-05T14:27:30.883Z\nNot Before: 2100-01-07T14:31:43.952Z";
        const SIGNED_FROM_2100: &str = "0xc2539ace78f13c7eb8c0852d38d269a6f97bebd9f7872097d2e3137b541f8bf50176062a46eeea83086bd2721423fb5755a932ff6ccc046ed482d14e4576042f1c";
        let address = "0xE6D3Aa1F561A215E5eb1f02Ba8705385F03fCaFB";
        let verified_in_2101 = Some("2101-01-07T14:31:43.952Z");
        assert_eq!(
            bind_and_verify(address, VALID_FROM_2100, SIGNED_FROM_2100, verified_in_2101),
            Some(true)
        );
        // Without a verified_at, the message is checked at its event's time, when it was not valid.
        Spi::run(&format!(
            "SELECT identity.revoke_binding('wallet', '{address}', '{{\"reason\": \"test\"}}')"
        ))
        .unwrap();
        assert_eq!(
            bind_and_verify(address, VALID_FROM_2100, SIGNED_FROM_2100, None),
            Some(false)
        );
        // spruceid's "expired message" vector: expired in 2021, checked by a login on its last
        // day, whose binding was queued and made by the queue now.
        const EXPIRED_IN_2021: &str = "login.xyz wants you to sign in with your Ethereum account:\n0x2ecA0068307e706741445764A3D6A4402aC2A5a9\n\nSign-In With Ethereum Example Statement\n\nURI: https://login.xyz\nVersion: 1\nChain ID: 1\nNonce: lx2nx4so\nIssued At: 2022-01-05T14:27:30.883Z\nExpiration Time: 2021-01-05T00:00:00Z";
        const SIGNED_EXPIRING_2021: &str = "0x7337bc2826c7678cd6bc84f5b3b236efc969b0451f9feca2328b1d3401b030c113f19bdba359ba3f52762c66e9147311fa95fe598a1a4ec9bb383a7b4e3874241b";
        Spi::run_with_args(
            "SELECT identity.enqueue_binding('00000000-0000-4000-8000-000000000b0b', 'wallet',
                        '0x2ecA0068307e706741445764A3D6A4402aC2A5a9',
                        jsonb_build_object('method', 'siwe', 'message', $1, 'signature', $2,
                                           'domain', 'login.xyz', 'nonce', 'lx2nx4so',
                                           'verified_at', '2021-01-04T12:00:00Z'))",
            &[EXPIRED_IN_2021.into(), SIGNED_EXPIRING_2021.into()],
        )
        .unwrap();
        let job = Spi::get_one::<String>("SELECT state FROM identity.run_binding_jobs()");
        assert_eq!(job.unwrap().as_deref(), Some("succeeded"));
        let verified = Spi::get_one::<bool>(
            "SELECT identity.verify_binding(id) FROM identity.user_bindings
              WHERE external_id = '0x2ecA0068307e706741445764A3D6A4402aC2A5a9'",
        );
        assert_eq!(verified, Ok(Some(true)));
    }

    #[pg_test]
    fn verify_binding_is_null_without_siwe_evidence() {
        crate::testing::take_turns();
        Spi::run(&format!(
            "SELECT identity.create_binding('00000000-0000-4000-8000-00000000a11c', 'wallet', '{ADDRESS}', '{{\"method\": \"manual\"}}')"
        ))
        .unwrap();
        // Evidence that only claims SIWE proves nothing about a GitHub account.
        Spi::run(&format!(
            "SELECT identity.create_binding('00000000-0000-4000-8000-00000000a11c', 'github', '583231',
                                            jsonb_build_object('method', 'siwe', 'message', $m${MESSAGE}$m$,
                                                               'signature', '{SIGNATURE}', 'domain', 'login.xyz',
                                                               'nonce', 'bTyXgcQxn2htgkjJn'))"
        ))
        .unwrap();
        for provider in ["wallet", "github"] {
            let verified = Spi::get_one_with_args::<bool>(
                "SELECT identity.verify_binding(id) FROM identity.user_bindings WHERE provider = $1",
                &[provider.into()],
            );
            assert_eq!(verified, Ok(None), "{provider}");
        }
    }

    #[pg_test]
    fn verify_binding_follows_the_wallet_through_merges_to_its_bind_event() {
        crate::testing::take_turns();
        issue_example_nonce();
        let (first_owner, _status) =
            Spi::get_two::<pgrx::Uuid, String>(&login_sql("login.xyz")).unwrap();
        let first_owner = first_owner.unwrap();
        let (middle, last) = (
            "00000000-0000-4000-8000-0000000000b2",
            "00000000-0000-4000-8000-0000000000c3",
        );
        // A merge into the last owner that moved another binding: not the wallet's way back.
        Spi::run(&format!(
            "SELECT identity.create_binding('00000000-0000-4000-8000-0000000000d4', 'github', '1', '{{}}');
             SELECT identity.merge_users('00000000-0000-4000-8000-0000000000d4', '{last}', '{{}}');
             SELECT identity.merge_users('{first_owner}', '{middle}', '{{}}');
             SELECT identity.merge_users('{middle}', '{last}', '{{}}');"
        ))
        .unwrap();
        let verified = Spi::get_one::<bool>(&format!(
            "SELECT identity.verify_binding(id) FROM identity.user_bindings
              WHERE provider = 'wallet' AND user_id = '{last}'"
        ));
        assert_eq!(verified, Ok(Some(true)));
    }

    #[pg_test]
    fn verify_binding_is_false_for_a_wallet_without_its_bind_event_or_moved_without_a_merge() {
        crate::testing::take_turns();
        issue_example_nonce();
        Spi::run(&login_sql("login.xyz")).unwrap();
        // Behind the functions' back: the wallet re-pointed with no merge, and a wallet binding
        // written with no event at all. Neither has evidence in its owner's history.
        Spi::run(&format!(
            "UPDATE identity.user_bindings SET user_id = '00000000-0000-4000-8000-0000000000e5'
              WHERE external_id = '{ADDRESS}';
             INSERT INTO identity.user_bindings (id, user_id, provider, external_id)
             VALUES (gen_random_uuid(), '00000000-0000-4000-8000-0000000000e5', 'wallet',
                     '0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed');"
        ))
        .unwrap();
        let verdicts = Spi::get_one::<Vec<bool>>(
            "SELECT array_agg(identity.verify_binding(id)) FROM identity.user_bindings",
        );
        assert_eq!(verdicts, Ok(Some(vec![false, false])));
    }

    #[pg_test]
    fn verify_binding_refuses_an_id_that_names_no_live_binding() {
        crate::testing::take_turns();
        issue_example_nonce();
        Spi::run(&login_sql("login.xyz")).unwrap();
        let revoked = Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT binding_id FROM identity.revoke_binding('wallet', '{ADDRESS}', '{{\"reason\": \"test\"}}')"
        ))
        .unwrap()
        .unwrap();
        for binding_id in [
            revoked.to_string(),
            "00000000-0000-4000-8000-000000000000".into(),
        ] {
            let (sqlstate, message) =
                error_of(&format!("SELECT identity.verify_binding('{binding_id}')"));
            assert_eq!(sqlstate, "P0002");
            assert_eq!(message, format!("no live binding has id {binding_id}"));
        }
    }
}
