//! `identity.check_integrity()`: the invariants an auditor asks about, checked in one call.

use crate::errors::IdentityError;
use crate::events::{verify_chains, with_binding_owners};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// How many offending ids a detail line names.
const EXAMPLES: usize = 3;

/// One named check and its verdict.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// Every live binding has the `bind` event that proves it, in the history of a user who owned
/// it: a binding moved to another user other than by a merge fails this.
fn bindings_have_bind_events(client: &mut SpiClient<'_>) -> Result<Check, IdentityError> {
    let rows = client.select(
        with_binding_owners!(
            "SELECT b.id, b.user_id FROM identity.user_bindings b",
            "SELECT b.id::text FROM identity.user_bindings b
              WHERE NOT EXISTS (SELECT 1 FROM bind_events e WHERE e.binding_id = b.id)
              ORDER BY b.id"
        ),
        None,
        &[],
    )?;
    let mut missing = Vec::new();
    for row in rows {
        missing.push(row.get::<String>(1)?.unwrap_or_default());
    }
    let live = client
        .select("SELECT count(*) FROM identity.user_bindings", None, &[])?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0);
    Ok(Check {
        name: "bindings_have_bind_events",
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            format!("all {live} live bindings have their bind event in their owners' history")
        } else {
            format!(
                "{} of {live} live bindings have no bind event in their owners' history (none, or moved other than by a merge), e.g. {}",
                missing.len(),
                missing[..missing.len().min(EXAMPLES)].join(", ")
            )
        },
    })
}

/// Every user's hash chain recomputes and ends at its recorded head.
fn event_chains_verify(client: &mut SpiClient<'_>) -> Result<Check, IdentityError> {
    let reports = verify_chains(client, None)?;
    let broken: Vec<String> = reports
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.user_id.to_string())
        .collect();
    Ok(Check {
        name: "event_chains_verify",
        ok: broken.is_empty(),
        detail: if broken.is_empty() {
            format!("all {} users' event chains verify", reports.len())
        } else {
            format!(
                "{} of {} users' event chains do not verify, e.g. {} (see identity.verify_event_chain)",
                broken.len(),
                reports.len(),
                broken[..broken.len().min(EXAMPLES)].join(", ")
            )
        },
    })
}

/// Every live binding and queued job names a registered provider. The functions check the provider
/// before they write and a provider is permanent (there is no foreign key: schema.sql says why), so
/// only a row written behind the functions' back can fail this.
fn providers_are_registered(client: &mut SpiClient<'_>) -> Result<Check, IdentityError> {
    let row = client
        .select(
            "SELECT count(*), count(*) FILTER (WHERE p.name IS NULL),
                    (array_agg(DISTINCT r.provider) FILTER (WHERE p.name IS NULL))[1:3]::text
               FROM (SELECT provider FROM identity.user_bindings
                     UNION ALL SELECT provider FROM identity.binding_jobs) r
               LEFT JOIN identity.providers p ON p.name = r.provider",
            None,
            &[],
        )?
        .first();
    let rows = row.get::<i64>(1)?.unwrap_or(0);
    let unregistered = row.get::<i64>(2)?.unwrap_or(0);
    Ok(Check {
        name: "providers_are_registered",
        ok: unregistered == 0,
        detail: if unregistered == 0 {
            format!("all {rows} live bindings and queued jobs name a registered provider")
        } else {
            format!(
                "{unregistered} of {rows} live bindings and queued jobs name an unregistered provider, e.g. {}",
                row.get::<String>(3)?.unwrap_or_default()
            )
        },
    })
}

/// No queued binding is stuck: none failed for good (each needs a person to look at it), and none
/// is pending more than an hour past its due time (no runner is scheduled).
fn binding_jobs_not_stuck(client: &mut SpiClient<'_>) -> Result<Check, IdentityError> {
    let row = client
        .select(
            "SELECT count(*) FILTER (WHERE state = 'failed'),
                    count(*) FILTER (WHERE state = 'pending' AND next_attempt_at < now() - interval '1 hour'),
                    count(*) FILTER (WHERE state = 'pending'),
                    ((array_agg(job_key ORDER BY updated_at) FILTER (WHERE state = 'failed'))[1:3])::text
               FROM identity.binding_jobs",
            None,
            &[],
        )?
        .first();
    let failed = row.get::<i64>(1)?.unwrap_or(0);
    let overdue = row.get::<i64>(2)?.unwrap_or(0);
    let pending = row.get::<i64>(3)?.unwrap_or(0);
    let failed_detail = match row.get::<String>(4)? {
        Some(examples) => format!(
            "{failed} failed, e.g. {examples} (see their last_error in identity.binding_jobs; once the cause is settled, enqueue_binding opens a job again)"
        ),
        None => "0 failed".to_owned(),
    };
    Ok(Check {
        name: "binding_jobs_not_stuck",
        ok: failed == 0 && overdue == 0,
        detail: format!(
            "{pending} pending ({overdue} overdue by more than an hour: is identity.run_binding_jobs scheduled?), {failed_detail}"
        ),
    })
}

/// `identity.check_integrity()`: one row per check, `ok` false with a detail naming examples.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn check_integrity() -> Result<
    TableIterator<
        'static,
        (
            name!(check_name, String),
            name!(ok, bool),
            name!(detail, String),
        ),
    >,
    ErrorReport,
> {
    let checks = Spi::connect_mut(|client| -> Result<Vec<Check>, IdentityError> {
        Ok(vec![
            bindings_have_bind_events(client)?,
            event_chains_verify(client)?,
            providers_are_registered(client)?,
            binding_jobs_not_stuck(client)?,
        ])
    })?;
    Ok(TableIterator::new(
        checks
            .into_iter()
            .map(|c| (c.name.to_owned(), c.ok, c.detail)),
    ))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    const USER: &str = "00000000-0000-4000-8000-0000000000c1";
    const OTHER: &str = "00000000-0000-4000-8000-0000000000c2";
    const THIRD: &str = "00000000-0000-4000-8000-0000000000c3";

    fn failing_checks() -> Option<String> {
        Spi::get_one(
            "SELECT coalesce(string_agg(check_name, ',' ORDER BY check_name), '')
               FROM identity.check_integrity() WHERE NOT ok",
        )
        .unwrap()
    }

    #[pg_test]
    fn a_clean_database_passes_every_check() {
        crate::testing::take_turns();
        // The merges move the binding twice: its bind event stays in the first user's chain.
        Spi::run(&format!(
            "SELECT identity.create_binding('{USER}', 'github', '1');
             SELECT identity.merge_users('{USER}', '{OTHER}', '{{}}');
             SELECT identity.merge_users('{OTHER}', '{THIRD}', '{{}}');"
        ))
        .unwrap();
        assert_eq!(failing_checks().as_deref(), Some(""));
        let checks = Spi::get_one::<i64>("SELECT count(*) FROM identity.check_integrity()");
        assert_eq!(checks, Ok(Some(4)));
    }

    #[pg_test]
    fn a_binding_without_its_bind_event_in_its_owners_chains_is_found() {
        crate::testing::take_turns();
        let bind_event_check_fails =
            || failing_checks().as_deref() == Some("bindings_have_bind_events");
        // Moved to another user behind the functions' back: its bind event is in no owner's chain.
        Spi::run(&format!(
            "SELECT identity.create_binding('{USER}', 'github', '1');
             UPDATE identity.user_bindings SET user_id = '{OTHER}'"
        ))
        .unwrap();
        assert!(bind_event_check_fails());
        Spi::run(&format!(
            "UPDATE identity.user_bindings SET user_id = '{USER}'"
        ))
        .unwrap();
        assert_eq!(failing_checks().as_deref(), Some(""));
        // Written behind the functions' back: no bind event at all.
        Spi::run(&format!(
            "INSERT INTO identity.user_bindings (id, user_id, provider, external_id)
             VALUES (gen_random_uuid(), '{USER}', 'github', '99')"
        ))
        .unwrap();
        assert!(bind_event_check_fails());
    }

    #[pg_test]
    fn a_binding_or_job_of_an_unregistered_provider_is_found() {
        crate::testing::take_turns();
        Spi::run(&format!(
            "SELECT identity.create_binding('{USER}', 'github', '1');
             UPDATE identity.user_bindings SET provider = 'myspace'"
        ))
        .unwrap();
        assert_eq!(
            failing_checks().as_deref(),
            Some("providers_are_registered")
        );
        Spi::run(&format!(
            "UPDATE identity.user_bindings SET provider = 'github';
             SELECT identity.enqueue_binding('{USER}', 'github', '2');
             UPDATE identity.binding_jobs SET provider = 'orkut', job_key = 'bind:orkut:2'"
        ))
        .unwrap();
        assert_eq!(
            failing_checks().as_deref(),
            Some("providers_are_registered")
        );
        let detail = Spi::get_one::<String>(
            "SELECT detail FROM identity.check_integrity() WHERE check_name = 'providers_are_registered'",
        );
        assert_eq!(
            detail,
            Ok(Some(
                "1 of 2 live bindings and queued jobs name an unregistered provider, e.g. {orkut}"
                    .into()
            ))
        );
    }

    #[pg_test]
    fn failed_and_long_overdue_jobs_are_stuck() {
        crate::testing::take_turns();
        Spi::run(&format!(
            "SELECT identity.create_binding(gen_random_uuid(), 'github', '5');
             SELECT identity.enqueue_binding('{USER}', 'github', '5');
             SELECT * FROM identity.run_binding_jobs();"
        ))
        .unwrap();
        assert_eq!(failing_checks().as_deref(), Some("binding_jobs_not_stuck"));
        let detail = Spi::get_one::<String>(
            "SELECT detail FROM identity.check_integrity() WHERE check_name = 'binding_jobs_not_stuck'",
        );
        assert!(
            detail
                .unwrap()
                .unwrap()
                .contains("1 failed, e.g. {bind:github:5}"),
            "the detail names the failed job"
        );
        Spi::run("DELETE FROM identity.binding_jobs").unwrap();
        Spi::run(&format!(
            "SELECT identity.enqueue_binding('{USER}', 'github', '6')"
        ))
        .unwrap();
        assert_eq!(
            failing_checks().as_deref(),
            Some(""),
            "a job just queued is not stuck"
        );
        Spi::run("UPDATE identity.binding_jobs SET next_attempt_at = now() - interval '2 hours'")
            .unwrap();
        assert_eq!(failing_checks().as_deref(), Some("binding_jobs_not_stuck"));
    }

    #[pg_test]
    fn a_tampered_event_fails_the_chain_check() {
        crate::testing::take_turns();
        Spi::run(&format!(
            "SELECT identity.create_binding('{USER}', 'github', '1')"
        ))
        .unwrap();
        Spi::run(
            "ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only",
        )
        .unwrap();
        Spi::run("UPDATE identity.identity_events SET created_at = created_at - interval '1 day'")
            .unwrap();
        assert_eq!(failing_checks().as_deref(), Some("event_chains_verify"));
    }
}
