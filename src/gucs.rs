//! Settings (GUCs) of the extension: the retry policy of the binding queue, the background
//! worker, the bound on outstanding SIWE nonces, and the batched backfill's parallelism. Each can
//! be set per role, per database or in postgresql.conf (all but the last by a superuser only).

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// First retry delay, milliseconds (`identity.retry_initial_interval`, default 1s).
pub static RETRY_INITIAL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);
/// Factor by which each retry delay grows (`identity.retry_backoff_coefficient`, default 2.0).
pub static RETRY_BACKOFF_COEFFICIENT: GucSetting<f64> = GucSetting::<f64>::new(2.0);
/// Longest retry delay, seconds (`identity.retry_max_interval`, default 1h).
pub static RETRY_MAX_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(3_600);
/// Attempts before a job is failed for good; 0 retries forever (`identity.retry_max_attempts`).
pub static RETRY_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Database the background worker works in (`identity.worker_database`); unset: it waits.
pub static WORKER_DATABASE: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);
/// How often the worker runs due jobs, milliseconds (`identity.worker_poll_interval`, 1s).
pub static WORKER_POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);
/// How often the worker runs the backstop, seconds (`identity.backstop_interval`, 1h).
pub static BACKSTOP_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(3_600);

/// Most nonces that may be outstanding at once (`identity.max_outstanding_nonces`, 1,000,000):
/// a flood of nonce requests is refused there instead of growing the table without bound.
pub static MAX_OUTSTANDING_NONCES: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);

/// Background workers a batched backfill may start besides the calling session
/// (`identity.max_parallel_backfill_workers`, 2, as PostgreSQL's max_parallel_maintenance_workers).
pub const MAX_BACKFILL_WORKERS: i32 = 32;
pub static MAX_PARALLEL_BACKFILL_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Registers the settings; called from `_PG_init`. Never postmaster-only, so
/// loading the library without preload never breaks a session.
pub fn init() {
    GucRegistry::define_int_guc(
        c"identity.retry_initial_interval",
        c"Delay before the first retry of a failed binding job.",
        c"Each later retry waits retry_backoff_coefficient times longer, up to retry_max_interval.",
        &RETRY_INITIAL_INTERVAL_MS,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_float_guc(
        c"identity.retry_backoff_coefficient",
        c"Factor by which each retry delay of a binding job grows.",
        c"1.0 retries at a constant interval.",
        &RETRY_BACKOFF_COEFFICIENT,
        1.0,
        100.0,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"identity.retry_max_interval",
        c"Longest delay between two retries of a binding job.",
        c"",
        &RETRY_MAX_INTERVAL_S,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"identity.retry_max_attempts",
        c"Attempts after which a binding job that keeps failing is marked failed; 0 is unlimited.",
        c"",
        &RETRY_MAX_ATTEMPTS,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"identity.worker_database",
        c"Database the identity_bindings background worker runs binding jobs and the backstop in.",
        c"The worker (with shared_preload_libraries = 'identity_bindings') follows it on a reload: to another database, or, unset, to waiting until it is set. A database that does not exist yet, or accepts no connections, is waited for.",
        &WORKER_DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"identity.worker_poll_interval",
        c"How often the background worker runs due binding jobs.",
        c"",
        &WORKER_POLL_INTERVAL_MS,
        10,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"identity.backstop_interval",
        c"How often the background worker queues bindings for users whose wallet is unbound.",
        c"The worker's backstop reads public.users (id, wallet_address); schedule identity.backstop(...) with pg_cron for other tables.",
        &BACKSTOP_INTERVAL_S,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"identity.max_outstanding_nonces",
        c"Most SIWE nonces that may be outstanding (issued, not yet used or purged) at once.",
        c"identity.issue_nonce refuses with SQLSTATE 53400 beyond it. Other sessions' nonces are counted once their transaction has ended.",
        &MAX_OUTSTANDING_NONCES,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"identity.max_parallel_backfill_workers",
        c"Background workers CALL identity.backfill_wallet_bindings_in_batches may start to work beside the calling session.",
        c"0 backfills in the calling session alone. Workers are taken from max_worker_processes; fewer start when fewer are free.",
        &MAX_PARALLEL_BACKFILL_WORKERS,
        0,
        MAX_BACKFILL_WORKERS,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: a plain registration call with a static C string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"identity".as_ptr()) };
}

/// The retry policy, as the settings say now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial_ms: f64,
    pub coefficient: f64,
    pub max_ms: f64,
    /// 0: unlimited.
    pub max_attempts: i32,
}

impl RetryPolicy {
    pub fn current() -> RetryPolicy {
        RetryPolicy {
            initial_ms: f64::from(RETRY_INITIAL_INTERVAL_MS.get()),
            coefficient: RETRY_BACKOFF_COEFFICIENT.get(),
            max_ms: f64::from(RETRY_MAX_INTERVAL_S.get()) * 1000.0,
            max_attempts: RETRY_MAX_ATTEMPTS.get(),
        }
    }

    /// Delay before the next try after `attempts` failed ones (1 or more): initial ×
    /// coefficient^(attempts − 1), with ±10% jitter (`jitter` in [0, 1)) so that jobs failing
    /// together do not retry together, and never above the maximum.
    pub fn delay_ms(&self, attempts: i32, jitter: f64) -> i64 {
        let exponent = f64::from(attempts.max(1) - 1);
        let base = (self.initial_ms * self.coefficient.powf(exponent)).min(self.max_ms);
        (base * (0.9 + 0.2 * jitter)).min(self.max_ms).round() as i64
    }

    /// Whether a job that has failed `attempts` times may be tried again.
    pub fn may_retry(&self, attempts: i32) -> bool {
        self.max_attempts == 0 || attempts < self.max_attempts
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    const DEFAULTS: RetryPolicy = RetryPolicy {
        initial_ms: 1000.0,
        coefficient: 2.0,
        max_ms: 3_600_000.0,
        max_attempts: 0,
    };

    #[test]
    fn delays_grow_exponentially_from_the_initial_interval() {
        let delays: Vec<i64> = (1..=5).map(|a| DEFAULTS.delay_ms(a, 0.5)).collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 16000]);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_under_the_cap() {
        assert_eq!(DEFAULTS.delay_ms(3, 0.0), 3600);
        assert_eq!(DEFAULTS.delay_ms(3, 0.999_999), 4400);
        assert_eq!(DEFAULTS.delay_ms(40, 0.999_999), 3_600_000);
        assert_eq!(DEFAULTS.delay_ms(40, 0.0), 3_240_000);
    }

    #[test]
    fn attempts_are_unlimited_at_zero_and_bounded_otherwise() {
        assert!(DEFAULTS.may_retry(1_000_000));
        let bounded = RetryPolicy {
            max_attempts: 3,
            ..DEFAULTS
        };
        assert!(bounded.may_retry(2));
        assert!(!bounded.may_retry(3));
    }
}
