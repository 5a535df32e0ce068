//! `identity.check_integrity()`: the invariants an auditor asks about, checked in one call.

use crate::errors::IdentityError;
use crate::events::{verify_chains, with_binding_owners};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// How many offending ids a detail line names.
const EXAMPLES: usize = 3;

/// How many offenders a check found, and the first `EXAMPLES` of them by name: a check reads
/// every row, and keeps only these, so its memory is the same for ten offenders or ten million.
#[derive(Default)]
struct Examples {
    count: i64,
    named: Vec<String>,
}

impl Examples {
    fn note(&mut self, name: impl FnOnce() -> String) {
        self.count += 1;
        if self.named.len() < EXAMPLES {
            self.named.push(name());
        }
    }
}

/// The offenders `query` finds: it takes the number of examples to name as `$1` and returns, per
/// named offender, the count of all of them (`count(*) OVER ()`) and the offender's name.
fn counted_examples(client: &mut SpiClient<'_>, query: &str) -> Result<Examples, IdentityError> {
    let mut found = Examples::default();
    let examples = i64::try_from(EXAMPLES).expect("a handful of examples");
    for row in client.select(query, None, &[examples.into()])? {
        found.count = row.get::<i64>(1)?.unwrap_or(0);
        found.named.push(row.get::<String>(2)?.unwrap_or_default());
    }
    Ok(found)
}

/// One named check and its verdict.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

// Live bindings whose bind event is in no owner's history. The seed is only the bindings whose
// bind event is not in their owner's own chain (an anti-join that spills to disk past work_mem):
// the merged ones, and any moved behind the functions' back. Seeding every binding kept all of
// them in the recursive union's hash table, which never spills: 180 MB at a million bindings.
const UNPROVEN_BINDINGS: &str = with_binding_owners!(
    "SELECT b.id, b.user_id FROM identity.user_bindings b
      WHERE NOT EXISTS (SELECT 1 FROM identity.identity_events e
                         WHERE e.user_id = b.user_id AND e.event_type = 'bind'
                           AND e.payload->>'binding_id' = b.id::text)",
    "SELECT count(*) OVER (), u.binding_id::text
       FROM (SELECT DISTINCT o.binding_id FROM owners o
              WHERE NOT EXISTS (SELECT 1 FROM bind_events e WHERE e.binding_id = o.binding_id)) u
      ORDER BY u.binding_id LIMIT $1"
);

/// Every live binding has the `bind` event that proves it, in the history of a user who owned
/// it: a binding moved to another user other than by a merge fails this.
fn bindings_have_bind_events(client: &mut SpiClient<'_>) -> Result<Check, IdentityError> {
    let missing = counted_examples(client, UNPROVEN_BINDINGS)?;
    let live = client
        .select("SELECT count(*) FROM identity.user_bindings", None, &[])?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0);
    Ok(Check {
        name: "bindings_have_bind_events",
        ok: missing.count == 0,
        detail: if missing.count == 0 {
            format!("all {live} live bindings have their bind event in their owners' history")
        } else {
            format!(
                "{} of {live} live bindings have no bind event in their owners' history (none, or moved other than by a merge), e.g. {}",
                missing.count,
                missing.named.join(", ")
            )
        },
    })
}

// Bindings the history leaves bound (a bind event, and no revoke of the same binding id; merges
// keep a binding's id) that are not live. Compared as text: a payload is checked, never cast.
const VANISHED_BINDINGS: &str = "
    SELECT count(*) OVER (), e.payload->>'binding_id'
      FROM identity.identity_events e
     WHERE e.event_type = 'bind'
       AND NOT EXISTS (SELECT 1 FROM identity.user_bindings b
                        WHERE b.id::text = e.payload->>'binding_id')
       AND NOT EXISTS (SELECT 1 FROM identity.identity_events r
                        WHERE r.event_type = 'revoke'
                          AND r.payload->>'binding_id' = e.payload->>'binding_id')
     ORDER BY 2 LIMIT $1";

/// Every binding the history leaves bound is live: a binding row deleted other than by
/// `revoke_binding` (by its table's owner, a TRUNCATE, a partial restore) fails this. Its id could
/// otherwise be bound to another user with no revoke in the trail.
fn bound_bindings_are_live(client: &mut SpiClient<'_>) -> Result<Check, IdentityError> {
    let vanished = counted_examples(client, VANISHED_BINDINGS)?;
    Ok(Check {
        name: "bound_bindings_are_live",
        ok: vanished.count == 0,
        detail: if vanished.count == 0 {
            "every binding bound and not revoked in the history is live".to_owned()
        } else {
            format!(
                "{} bindings bound and not revoked in the history are not live (removed other than by identity.revoke_binding), e.g. {}",
                vanished.count,
                vanished.named.join(", ")
            )
        },
    })
}

/// Every user's hash chain recomputes and ends at its recorded head.
fn event_chains_verify(client: &mut SpiClient<'_>) -> Result<Check, IdentityError> {
    let (mut users, mut broken) = (0_i64, Examples::default());
    verify_chains(client, None, |report| {
        users += 1;
        if !report.ok {
            broken.note(|| report.user_id.to_string());
        }
    })?;
    Ok(Check {
        name: "event_chains_verify",
        ok: broken.count == 0,
        detail: if broken.count == 0 {
            format!("all {users} users' event chains verify")
        } else {
            format!(
                "{} of {users} users' event chains do not verify, e.g. {} (see identity.verify_event_chain)",
                broken.count,
                broken.named.join(", ")
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
            bound_bindings_are_live(client)?,
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

    fn detail_of(check: &str) -> String {
        Spi::get_one_with_args(
            "SELECT detail FROM identity.check_integrity() WHERE check_name = $1",
            &[check.into()],
        )
        .unwrap()
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
        assert_eq!(checks, Ok(Some(5)));
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
    fn a_binding_removed_other_than_by_a_revoke_is_found() {
        crate::testing::take_turns();
        Spi::run(&format!(
            "SELECT identity.create_binding('{USER}', 'github', '1');
             SELECT identity.create_binding('{USER}', 'github', '2');
             SELECT identity.revoke_binding('github', '2', '{{}}');
             SELECT identity.create_binding('{OTHER}', 'github', '2');
             SELECT identity.merge_users('{OTHER}', '{THIRD}', '{{}}');"
        ))
        .unwrap();
        // Revoked, bound again and merged: all as the history says.
        assert_eq!(failing_checks().as_deref(), Some(""));
        let deleted = Spi::get_one::<String>(
            "DELETE FROM identity.user_bindings WHERE external_id = '2' RETURNING id::text",
        )
        .unwrap()
        .unwrap();
        assert_eq!(failing_checks().as_deref(), Some("bound_bindings_are_live"));
        let detail = detail_of("bound_bindings_are_live");
        assert!(
            detail.starts_with("1 bindings bound and not revoked") && detail.ends_with(&deleted),
            "{detail}"
        );
        Spi::run("TRUNCATE identity.user_bindings").unwrap();
        let vanished = detail_of("bound_bindings_are_live");
        assert!(vanished.starts_with("2 bindings"), "{vanished}");
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
        assert_eq!(
            detail_of("providers_are_registered"),
            "1 of 2 live bindings and queued jobs name an unregistered provider, e.g. {orkut}"
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
        assert!(
            detail_of("binding_jobs_not_stuck").contains("1 failed, e.g. {bind:github:5}"),
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
    fn a_failing_check_counts_every_offender_and_names_the_first_three() {
        crate::testing::take_turns();
        // One binding made by the function, five written behind its back (no bind event).
        Spi::run(&format!(
            "SELECT identity.create_binding('{USER}', 'github', '1');
             INSERT INTO identity.user_bindings (id, user_id, provider, external_id)
             SELECT ('00000000-0000-4000-8000-00000000000' || i)::uuid, '{USER}', 'github', 100 + i
               FROM generate_series(1, 5) i"
        ))
        .unwrap();
        assert_eq!(
            detail_of("bindings_have_bind_events"),
            "5 of 6 live bindings have no bind event in their owners' history (none, or moved \
             other than by a merge), e.g. 00000000-0000-4000-8000-000000000001, \
             00000000-0000-4000-8000-000000000002, 00000000-0000-4000-8000-000000000003"
        );
        // Four users' chains, each with an event edited behind the functions' back.
        Spi::run(
            "SELECT identity.create_binding(('00000000-0000-4000-8000-0000000000d' || i)::uuid,
                                            'discord', (200 + i)::text)
               FROM generate_series(1, 4) i;
             ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only;
             UPDATE identity.identity_events SET created_at = created_at - interval '1 day'
              WHERE payload->>'provider' = 'discord'",
        )
        .unwrap();
        assert_eq!(
            detail_of("event_chains_verify"),
            "4 of 5 users' event chains do not verify, e.g. \
             00000000-0000-4000-8000-0000000000d1, 00000000-0000-4000-8000-0000000000d2, \
             00000000-0000-4000-8000-0000000000d3 (see identity.verify_event_chain)"
        );
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
