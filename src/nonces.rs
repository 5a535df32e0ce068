//! Single-use SIWE nonces: issued from PostgreSQL's CSPRNG, stored with their expiry, consumed
//! exactly once. Consumption is a DELETE, so of two concurrent logins replaying one message the
//! second waits for the first and then finds nothing to delete.

use crate::errors::IdentityError;
use crate::statements::{writable, Statement};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::pg_sys::{self, INTERVALOID, TEXTOID, TIMESTAMPTZOID};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// 22 characters of a 62-letter alphabet: about 131 bits.
const NONCE_LENGTH: usize = 22;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A fresh nonce from pg_strong_random, without modulo bias (bytes of 248 and up are redrawn).
fn random_nonce() -> Result<String, IdentityError> {
    let mut nonce = String::with_capacity(NONCE_LENGTH);
    while nonce.len() < NONCE_LENGTH {
        let mut bytes = [0u8; 32];
        // SAFETY: writes exactly bytes.len() bytes into the buffer.
        let ok = unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) };
        if !ok {
            return Err(IdentityError::Internal("pg_strong_random failed".into()));
        }
        for byte in bytes.into_iter().filter(|&b| b < 248) {
            if nonce.len() < NONCE_LENGTH {
                nonce.push(char::from(ALPHABET[usize::from(byte % 62)]));
            }
        }
    }
    Ok(nonce)
}

static STORE_NONCE: Statement = Statement::write(
    "WITH lifetime AS (SELECT $2::interval AS ttl
                        WHERE $2::interval > interval '0' AND $2::interval <= interval '1 day')
     INSERT INTO identity.siwe_nonces (nonce, issued_at, expires_at)
     SELECT $1, now(), now() + ttl FROM lifetime RETURNING true",
    &[TEXTOID, INTERVALOID],
);

// At most 16 expired nonces per issue, so cleanup never makes issuing slow. The limit is written
// out, not a parameter: a statement without parameters keeps one plan for good, where with
// `LIMIT $1` the plan cache weighed a generic plan (which guesses the limit) against custom ones
// (which know it) by the table's size, and once a flood of requests had grown the table it
// planned this statement again on every issue.
static PURGE_EXPIRED: Statement = Statement::write(
    "DELETE FROM identity.siwe_nonces WHERE nonce IN (
         SELECT n.nonce FROM identity.siwe_nonces n WHERE n.expires_at <= now()
          ORDER BY n.expires_at LIMIT 16 FOR UPDATE SKIP LOCKED)",
    &[],
);

// Outstanding nonces, without counting rows: the cumulative statistics' live tuples of the table
// (other sessions' nonces, flushed when their transaction ends: issue_nonce forces that flush)
// plus this transaction's own inserts and deletes, not flushed yet.
static OUTSTANDING_NONCES: Statement = Statement::read(
    "SELECT pg_stat_get_live_tuples(t.oid) + pg_stat_get_xact_tuples_inserted(t.oid)
            - pg_stat_get_xact_tuples_deleted(t.oid)
       FROM (SELECT 'identity.siwe_nonces'::regclass::oid) t (oid)",
    &[],
);

// Outstanding nonces counted row by row, up to the limit: what track_counts = off leaves.
static OUTSTANDING_NONCES_UP_TO: Statement = Statement::read(
    "SELECT count(*) FROM (SELECT FROM identity.siwe_nonces n LIMIT $1) n",
    &[pg_sys::INT8OID],
);

/// Refuses a new nonce once `identity.max_outstanding_nonces` are outstanding.
fn check_nonce_capacity(client: &mut SpiClient<'_>) -> Result<(), IdentityError> {
    let limit = crate::gucs::MAX_OUTSTANDING_NONCES.get();
    // SAFETY: reads the backend's value of the track_counts setting.
    let statistics_count = unsafe { pg_sys::pgstat_track_counts };
    // With track_counts off, the statistics count nothing, and would never reach the limit.
    let outstanding = if statistics_count {
        OUTSTANDING_NONCES.run(client, &[])?
    } else {
        OUTSTANDING_NONCES_UP_TO.run(client, &[i64::from(limit).into()])?
    };
    let outstanding = outstanding.first().get_one::<i64>()?.unwrap_or(0);
    if outstanding >= i64::from(limit) {
        return Err(IdentityError::TooManyOutstandingNonces { limit });
    }
    // Other sessions count this nonce as soon as this transaction ends, not up to a second later.
    // SAFETY: sets a backend-local flag read when the backend next reports its statistics.
    unsafe { pg_sys::pgstat_force_next_flush() };
    Ok(())
}

/// `identity.issue_nonce(ttl)`: a new single-use nonce valid for `ttl` (at most a day).
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn issue_nonce(ttl: default!(Option<Interval>, "'10 minutes'")) -> Result<String, ErrorReport> {
    writable()?;
    let ttl = crate::errors::required_or_left_out(ttl, "ttl", "'10 minutes'")?;
    let nonce = random_nonce()?;
    Spi::connect_mut(|client| -> Result<(), IdentityError> {
        PURGE_EXPIRED.run(client, &[])?;
        check_nonce_capacity(client)?;
        let stored = STORE_NONCE.run(client, &[nonce.as_str().into(), ttl.into()])?;
        if stored.is_empty() {
            return Err(IdentityError::InvalidNonceLifetime);
        }
        Ok(())
    })?;
    Ok(nonce)
}

static CONSUME_NONCE: Statement = Statement::write(
    "DELETE FROM identity.siwe_nonces WHERE nonce = $1 AND expires_at > $2 RETURNING true",
    &[TEXTOID, TIMESTAMPTZOID],
);

/// Uses up `nonce` at instant `at`, or refuses: unknown, expired, or consumed already.
pub fn consume(
    client: &mut SpiClient<'_>,
    nonce: &str,
    at: TimestampWithTimeZone,
) -> Result<(), IdentityError> {
    let consumed = CONSUME_NONCE.run(client, &[nonce.into(), at.into()])?;
    if consumed.is_empty() {
        return Err(IdentityError::NonceUnusable {
            nonce: nonce.to_owned(),
        });
    }
    Ok(())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::sqlstate_of;
    use pgrx::prelude::*;

    #[pg_test]
    fn a_flood_of_nonce_requests_is_refused_at_the_configured_bound() {
        Spi::run("SET LOCAL identity.max_outstanding_nonces = 5").unwrap();
        let issued =
            Spi::get_one::<i64>("SELECT count(identity.issue_nonce()) FROM generate_series(1, 5)");
        assert_eq!(issued, Ok(Some(5)));
        let (sqlstate, message) = crate::testing::error_of("SELECT identity.issue_nonce()");
        assert_eq!(sqlstate, "53400");
        assert!(
            message.contains("identity.max_outstanding_nonces (5)"),
            "{message}"
        );
        let stored = Spi::get_one::<i64>("SELECT count(*) FROM identity.siwe_nonces");
        assert_eq!(stored, Ok(Some(5)));
        // A used nonce frees its place.
        Spi::run("DELETE FROM identity.siwe_nonces WHERE nonce IN (SELECT nonce FROM identity.siwe_nonces LIMIT 1)").unwrap();
        assert_eq!(sqlstate_of("SELECT identity.issue_nonce()"), "00000");
    }

    #[pg_test]
    fn the_bound_holds_when_track_counts_is_off() {
        Spi::run("SET LOCAL track_counts = off").unwrap();
        Spi::run("SET LOCAL identity.max_outstanding_nonces = 3").unwrap();
        let issued =
            Spi::get_one::<i64>("SELECT count(identity.issue_nonce()) FROM generate_series(1, 3)");
        assert_eq!(issued, Ok(Some(3)));
        assert_eq!(sqlstate_of("SELECT identity.issue_nonce()"), "53400");
        let stored = Spi::get_one::<i64>("SELECT count(*) FROM identity.siwe_nonces");
        assert_eq!(stored, Ok(Some(3)));
    }

    #[pg_test]
    fn nonces_are_long_alphanumeric_and_distinct() {
        let distinct = Spi::get_one::<i64>(
            "SELECT count(DISTINCT n) FROM (SELECT identity.issue_nonce() AS n FROM generate_series(1, 200)) x
              WHERE n ~ '^[A-Za-z0-9]{22}$'",
        );
        assert_eq!(distinct, Ok(Some(200)));
    }

    #[pg_test]
    fn a_nonce_expires_after_its_lifetime() {
        let nonce = Spi::get_one::<String>("SELECT identity.issue_nonce('90 seconds')")
            .unwrap()
            .unwrap();
        let expires = Spi::get_one_with_args::<bool>(
            "SELECT expires_at = issued_at + interval '90 seconds' FROM identity.siwe_nonces WHERE nonce = $1",
            &[nonce.as_str().into()],
        );
        assert_eq!(expires, Ok(Some(true)));
    }

    #[pg_test]
    fn lifetimes_must_be_positive_and_at_most_a_day() {
        assert_eq!(
            sqlstate_of("SELECT identity.issue_nonce('0 seconds')"),
            "22023"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.issue_nonce('-1 minute')"),
            "22023"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.issue_nonce('25 hours')"),
            "22023"
        );
        assert_eq!(sqlstate_of("SELECT identity.issue_nonce(NULL)"), "22004");
    }

    #[pg_test]
    fn issuing_purges_expired_nonces() {
        Spi::run(
            "INSERT INTO identity.siwe_nonces (nonce, issued_at, expires_at)
             SELECT 'expired' || lpad(i::text, 12, '0'), now() - interval '2 hours', now() - interval '1 hour'
               FROM generate_series(1, 20) i",
        )
        .unwrap();
        Spi::run("SELECT identity.issue_nonce()").unwrap();
        let left = Spi::get_one::<i64>(
            "SELECT count(*) FROM identity.siwe_nonces WHERE expires_at <= now()",
        );
        assert_eq!(left, Ok(Some(4)));
    }
}
