//! The batched backfill (`CALL identity.backfill_wallet_bindings_in_batches`): resumable, and
//! parallel. A run splits the source's id range into parts, kept in `identity.backfill_parts`.
//! The calling session and up to `identity.max_parallel_backfill_workers` background workers each
//! hold one part at a time (by a session advisory lock) and bind it batch by batch; the part's
//! resume point and counts are written in the transaction of each batch, so every committed batch
//! is counted exactly once, whoever bound it and however often the run was interrupted. A CALL on
//! a source with an unfinished run resumes that run.

use crate::backfill::{
    backfill_batch, checked_batch_size, role_name, ColumnName, Source, StatisticsKeeper, Tally,
};
use crate::errors::{required, IdentityError};
use crate::gucs::MAX_PARALLEL_BACKFILL_WORKERS;
use crate::statements::{free_last_result, writable};
use crate::subtransaction::{in_subtransaction, SERIALIZATION_FAILURE};
use crate::worker::in_transaction;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgRelation;
use std::cell::Cell;
use std::ffi::CString;

/// Parts per process (the calling session and each worker): more parts than processes, so a
/// process that is slower or starts later leaves its share to the others instead of ending last.
const PARTS_PER_PROCESS: i64 = 4;
/// Pages sampled to place the parts' boundaries: enough for an even split, cheap at any size.
const SAMPLED_PAGES: f64 = 200.0;
/// First key of the two-key advisory locks by which a process holds a part; the second key is
/// made of the run and the part (see `part_lock_key`).
const PART_LOCK_CLASS: i32 = 0x1DB1_BAC0;
/// First key of the advisory lock that serializes the planning of one backfill.
const PLAN_LOCK_CLASS: i32 = 0x1DB1_BAC1;
/// Tries of a batch that conflicts with another part's batch: a deadlock or a serialization
/// failure (never a cancel: that must stop the run).
const BATCH_TRIES: u32 = 3;
const CONFLICTS: [&str; 2] = ["40P01", SERIALIZATION_FAILURE];

thread_local! {
    /// The part this session holds the advisory lock of: (run, part).
    static HELD_PART: Cell<Option<(i64, i32)>> = const { Cell::new(None) };
}

/// What a step reports to the loop that calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepOutcome {
    /// A batch was bound (and is committed with the caller's transaction): step again.
    More,
    /// Every unfinished part is held by another process: wait for them, then step again.
    Waiting,
    /// Every part is done.
    Done,
}

impl StepOutcome {
    fn as_str(self) -> &'static str {
        match self {
            StepOutcome::More => "more",
            StepOutcome::Waiting => "waiting",
            StepOutcome::Done => "done",
        }
    }
}

/// The role a run belongs to: the caller (these functions run as their owner).
fn caller_name() -> String {
    // SAFETY: reads the session's outer role.
    role_name(unsafe { pg_sys::GetOuterUserId() })
}

/// `identity.backfill_plan(users, id_column, wallet_column, batch_size, resume_after_id)`: the run
/// a CALL works on. Without `resume_after_id`, the caller's unfinished run on the same source if
/// there is one; otherwise a new run of the ids after `resume_after_id` (NULL: all), split into
/// parts when workers may help. A new run replaces the caller's unfinished runs on that source.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn backfill_plan(
    users: Option<PgRelation>,
    id_column: Option<ColumnName>,
    wallet_column: Option<ColumnName>,
    batch_size: Option<i32>,
    resume_after_id: Option<&str>,
) -> Result<i64, ErrorReport> {
    writable()?;
    let id_column = required(id_column, "id_column")?;
    let wallet_column = required(wallet_column, "wallet_column")?;
    let size = checked_batch_size(required(batch_size, "batch_size")?)?;
    Ok(Spi::connect_mut(|client| -> Result<i64, IdentityError> {
        let source = Source::from_arguments(client, users, &id_column, &wallet_column)?;
        source.warn_when_unindexed();
        let key = RunKey {
            source: source.table.clone(),
            id_column: id_column.as_str().to_owned(),
            wallet_column: wallet_column.as_str().to_owned(),
            run_as: caller_name(),
        };
        key.lock_until_commit(client)?;
        if resume_after_id.is_none() {
            if let Some(run) = key.unfinished_run(client, size)? {
                notice!("backfill: resuming run {run} where its last committed batches ended");
                return Ok(run);
            }
            if let Some(run) = key.run_planned_since_snapshot(client)? {
                notice!("backfill: joining run {run}, planned by another session just now");
                return Ok(run);
            }
        } else if let Some(run_id) = key.run_planned_since_snapshot(client)? {
            // A new run replaces the unfinished ones, and this transaction cannot see that one.
            return Err(IdentityError::BackfillPlannedMeanwhile { run_id });
        }
        let upper_bounds = split_points(client, &source, resume_after_id, size)?;
        key.new_run(client, size, resume_after_id, upper_bounds)
    })?)
}

/// What makes two runs the same backfill: the source, its columns, and who reads it.
struct RunKey {
    source: String,
    id_column: String,
    wallet_column: String,
    run_as: String,
}

impl RunKey {
    const MATCHES: &'static str =
        "source = $1 AND id_column = $2 AND wallet_column = $3 AND run_as = $4";

    fn args(&self) -> [pgrx::datum::DatumWithOid<'_>; 4] {
        [
            self.source.as_str().into(),
            self.id_column.as_str().into(),
            self.wallet_column.as_str().into(),
            self.run_as.as_str().into(),
        ]
    }

    /// Serializes planning for this backfill until the transaction ends, so that two CALLs started
    /// together share one run (the second finds the first's) instead of replacing each other's.
    fn lock_until_commit(&self, client: &mut SpiClient<'_>) -> Result<(), IdentityError> {
        let [a, b, c, d] = self.args();
        client.select(
            "SELECT pg_advisory_xact_lock($5, hashtext(concat_ws(' ', $1, $2, $3, $4)))",
            None,
            &[a, b, c, d, PLAN_LOCK_CLASS.into()],
        )?;
        Ok(())
    }

    /// An unfinished run of this backfill that another session planned and committed after this
    /// transaction took its snapshot: the newest, if any. Only under REPEATABLE READ or
    /// SERIALIZABLE can there be one: there the snapshot is taken before the planning lock is
    /// granted and never moves, so a run planned by a CALL that held the lock first is invisible.
    /// Under READ COMMITTED each statement after the lock sees it.
    fn run_planned_since_snapshot(
        &self,
        client: &mut SpiClient<'_>,
    ) -> Result<Option<i64>, IdentityError> {
        // SAFETY: reads a backend global.
        if unsafe { pg_sys::XactIsoLevel } < pg_sys::XACT_REPEATABLE_READ as i32 {
            return Ok(None);
        }
        let newest = format!(
            "SELECT max(run_id) FROM identity.backfill_parts WHERE {} AND NOT done",
            Self::MATCHES
        );
        let visible = client
            .select(&newest, None, &self.args())?
            .first()
            .get_one::<i64>()?;
        let committed = self.newest_unfinished_committed(&newest)?;
        Ok(committed.filter(|&run| visible.is_none_or(|seen| run > seen)))
    }

    /// The value of `newest`, a query of one bigint (or NULL) on this backfill's key, read from
    /// the latest committed state instead of this transaction's snapshot.
    fn newest_unfinished_committed(&self, newest: &str) -> Result<Option<i64>, IdentityError> {
        let sql = CString::new(newest).expect("the statement has no NUL");
        let mut types = [pg_sys::TEXTOID; 4];
        let mut values = [
            self.source.as_str(),
            self.id_column.as_str(),
            self.wallet_column.as_str(),
            self.run_as.as_str(),
        ]
        .map(|text| text.into_datum().expect("text is never NULL"));
        // SAFETY: inside the caller's SPI connection. A read-only execution runs on the active
        // snapshot, here the latest one, pushed for it and popped after (on an error the
        // transaction's abort pops it). The result, if any, is one bigint column.
        unsafe {
            pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
            let status = pg_sys::SPI_execute_with_args(
                sql.as_ptr(),
                4,
                types.as_mut_ptr(),
                values.as_mut_ptr(),
                std::ptr::null(),
                true,
                1,
            );
            pg_sys::PopActiveSnapshot();
            let table = pg_sys::SPI_tuptable;
            if status != pg_sys::SPI_OK_SELECT as i32 || table.is_null() || (*table).numvals != 1 {
                return Err(IdentityError::Internal(format!(
                    "reading the newest backfill run failed (SPI status {status})"
                )));
            }
            let mut is_null = false;
            let run = pg_sys::SPI_getbinval(*(*table).vals, (*table).tupdesc, 1, &mut is_null);
            free_last_result();
            Ok((!is_null).then(|| run.value() as i64))
        }
    }

    /// The newest unfinished run of this backfill, now to go on with batches of `size`.
    fn unfinished_run(
        &self,
        client: &mut SpiClient<'_>,
        size: i64,
    ) -> Result<Option<i64>, IdentityError> {
        let sql = format!(
            "UPDATE identity.backfill_parts SET batch_size = $5
              WHERE run_id = (SELECT max(run_id) FROM identity.backfill_parts WHERE {} AND NOT done)
              RETURNING run_id",
            Self::MATCHES
        );
        let [a, b, c, d] = self.args();
        let run = client.update(&sql, None, &[a, b, c, d, (size as i32).into()])?;
        Ok(run.first().get_one::<i64>().unwrap_or(None))
    }

    /// Records a new run whose parts end at `upper_bounds` (the last part is open-ended).
    fn new_run(
        &self,
        client: &mut SpiClient<'_>,
        size: i64,
        after: Option<&str>,
        upper_bounds: Vec<String>,
    ) -> Result<i64, IdentityError> {
        let superseded = format!(
            "DELETE FROM identity.backfill_parts WHERE run_id IN
               (SELECT run_id FROM identity.backfill_parts WHERE {} AND NOT done)",
            Self::MATCHES
        );
        client.update(&superseded, None, &self.args())?;
        let mut afters: Vec<Option<String>> = vec![after.map(str::to_owned)];
        afters.extend(upper_bounds.iter().cloned().map(Some));
        let mut uptos: Vec<Option<String>> = upper_bounds.into_iter().map(Some).collect();
        uptos.push(None);
        let parts = afters.len();
        let [a, b, c, d] = self.args();
        let run = client
            .update(
                "INSERT INTO identity.backfill_parts
                        (run_id, part, source, id_column, wallet_column, run_as, batch_size, after_id, upto_id)
                 SELECT r.id, p.part, $1, $2, $3, $4, $5, p.after_id, p.upto_id
                   FROM (SELECT nextval('identity.backfill_run_id_seq') AS id) r,
                        unnest($6::text[], $7::text[]) WITH ORDINALITY AS p (after_id, upto_id, part)
                 RETURNING run_id",
                None,
                &[a, b, c, d, (size as i32).into(), afters.into(), uptos.into()],
            )?
            .first()
            .get_one::<i64>()?
            .ok_or_else(|| IdentityError::Internal("a new backfill run has no parts".into()))?;
        notice!("backfill: run {run} in {parts} part(s)");
        Ok(run)
    }
}

/// Where parts end, from a sample of the source's ids after `after`: about one part per four
/// batches, at most `PARTS_PER_PROCESS` per process that may work, none when no worker may help.
fn split_points(
    client: &mut SpiClient<'_>,
    source: &Source,
    after: Option<&str>,
    size: i64,
) -> Result<Vec<String>, IdentityError> {
    let processes = i64::from(MAX_PARALLEL_BACKFILL_WORKERS.get()) + 1;
    if processes == 1 || !source.sampleable {
        return Ok(Vec::new());
    }
    let pages = heap_pages(client, source)?;
    let percent = 100.0 * (SAMPLED_PAGES / pages.max(1) as f64).min(1.0);
    let sample = source.sorted_id_sample(client, after, percent)?;
    let estimated_rows = sample.len() as f64 * 100.0 / percent;
    let parts = ((estimated_rows / (size * PARTS_PER_PROCESS) as f64) as i64)
        .clamp(1, processes * PARTS_PER_PROCESS) as usize;
    let mut bounds: Vec<String> = (1..parts)
        .map(|k| sample[k * sample.len() / parts].clone())
        .collect();
    bounds.dedup();
    Ok(bounds)
}

/// The pages of the source's heap, its partitions' when it is partitioned (a partitioned table
/// has none of its own: counting only those would sample all of it).
fn heap_pages(client: &mut SpiClient<'_>, source: &Source) -> Result<i64, IdentityError> {
    Ok(client
        .select(
            "SELECT coalesce((SELECT sum(pg_relation_size(p.relid)) FROM pg_partition_tree($1::regclass) p),
                             pg_relation_size($1::regclass))::int8
                    / current_setting('block_size')::int8",
            None,
            &[source.table.as_str().into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

/// A part of a run, as its row says now.
struct Part {
    number: i32,
    key: RunKey,
    batch_size: i64,
    after_id: Option<String>,
    upto_id: Option<String>,
    done: bool,
    counts: Tally,
}

impl Part {
    /// The part's row as its last holder committed it, locked by this transaction. Read before
    /// this session held the part's advisory lock, the row could be older than the lock: the
    /// step's statement may have taken its snapshot before the last holder committed the part's
    /// last batch and let go of it. So it is read with FOR UPDATE, as a write: under READ
    /// COMMITTED that reads the newest committed row; under REPEATABLE READ, where the snapshot
    /// cannot move, a newer row is a serialization failure (40001) instead of a stale resume point.
    fn load(client: &mut SpiClient<'_>, run: i64, number: i32) -> Result<Part, IdentityError> {
        let row = client
            .update(
                "SELECT source, id_column::text, wallet_column::text, batch_size, run_as::text,
                        after_id, upto_id, scanned, created, existing, conflicts, invalid, done
                   FROM identity.backfill_parts WHERE run_id = $1 AND part = $2 FOR UPDATE",
                None,
                &[run.into(), number.into()],
            )?
            .first();
        let text =
            |i| -> Result<String, IdentityError> { Ok(row.get::<String>(i)?.unwrap_or_default()) };
        let count = |i| -> Result<i64, IdentityError> { Ok(row.get::<i64>(i)?.unwrap_or(0)) };
        Ok(Part {
            number,
            key: RunKey {
                source: text(1)?,
                id_column: text(2)?,
                wallet_column: text(3)?,
                run_as: text(5)?,
            },
            batch_size: i64::from(row.get::<i32>(4)?.unwrap_or(1)),
            after_id: row.get::<String>(6)?,
            upto_id: row.get::<String>(7)?,
            done: row.get::<bool>(13)?.unwrap_or(true),
            counts: Tally {
                scanned: count(8)?,
                created: count(9)?,
                existing: count(10)?,
                conflicts: count(11)?,
                invalid: count(12)?,
                last_id: None,
            },
        })
    }

    /// Binds the part's next batch and records it: the new resume point, the counts, and whether
    /// the part is done.
    fn bind_next_batch(
        &mut self,
        client: &mut SpiClient<'_>,
        run: i64,
    ) -> Result<(), IdentityError> {
        let RunKey {
            source,
            id_column,
            wallet_column,
            ..
        } = &self.key;
        let source = Source::named(client, source, id_column, wallet_column)?;
        let mut statistics = StatisticsKeeper::new(client)?;
        let range = (self.after_id.as_deref(), self.upto_id.as_deref());
        let mut batch = backfill_batch(
            client,
            &source,
            range,
            self.batch_size,
            &mut self.counts,
            &mut statistics,
        )?;
        let done = batch.scanned < self.batch_size;
        // The rows with no id sort after every id: the last part counts them when it ends.
        if done && self.upto_id.is_none() {
            let without_id = source.rows_without_id(client, &mut self.counts)?;
            batch.scanned += without_id.scanned;
            batch.invalid += without_id.invalid;
        }
        client.update(
            "UPDATE identity.backfill_parts
                SET after_id = coalesce($3, after_id), done = $4, scanned = scanned + $5,
                    created = created + $6, existing = existing + $7, conflicts = conflicts + $8,
                    invalid = invalid + $9, updated_at = clock_timestamp()
              WHERE run_id = $1 AND part = $2",
            None,
            &[
                run.into(),
                self.number.into(),
                batch.last_id.as_deref().into(),
                done.into(),
                batch.scanned.into(),
                batch.created.into(),
                batch.existing.into(),
                batch.conflicts.into(),
                batch.invalid.into(),
            ],
        )?;
        if let Some(last) = &batch.last_id {
            notice!(
                "backfill run {run}, part {}: bound up to id {last} (so far: created {}, existing {}, conflicts {}, invalid {})",
                self.number, self.counts.created, self.counts.existing, self.counts.conflicts, self.counts.invalid
            );
        }
        Ok(())
    }
}

/// Binds the part's next batch; a batch that deadlocks with another part's (two parts' rows
/// sharing wallets, taken in opposite orders) is rolled back and tried again.
fn bind_next_batch_retrying(part: &mut Part, run: i64) -> Result<(), IdentityError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let counts = part.counts.clone();
        let attempt =
            in_subtransaction(|| Spi::connect_mut(|client| part.bind_next_batch(client, run)));
        match attempt {
            Ok(()) => return Ok(()),
            Err(failure)
                if CONFLICTS.contains(&failure.sqlstate.as_str()) && tries < BATCH_TRIES =>
            {
                part.counts = counts;
            }
            Err(failure) => return Err(failure.into()),
        }
    }
}

/// The second key of a part's advisory lock. Parts number fewer than 256 (at most 4 per process,
/// 33 processes); runs that are unfinished at the same time never share it unless their ids
/// differ by a multiple of 2^23.
fn part_lock_key(run: i64, part: i32) -> i32 {
    ((run << 8) | i64::from(part & 0xFF)) as i32
}

fn try_hold(client: &mut SpiClient<'_>, run: i64, part: i32) -> Result<bool, IdentityError> {
    let held = client
        .select(
            "SELECT pg_try_advisory_lock($1, $2)",
            None,
            &[PART_LOCK_CLASS.into(), part_lock_key(run, part).into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if held {
        HELD_PART.set(Some((run, part)));
    }
    Ok(held)
}

fn release_held_part(client: &mut SpiClient<'_>) -> Result<(), IdentityError> {
    if let Some((run, part)) = HELD_PART.take() {
        client.select(
            "SELECT pg_advisory_unlock($1, $2)",
            None,
            &[PART_LOCK_CLASS.into(), part_lock_key(run, part).into()],
        )?;
    }
    Ok(())
}

/// The part of `run` this session holds, or an unfinished one no other process holds, now held.
fn part_to_work_on(client: &mut SpiClient<'_>, run: i64) -> Result<Option<i32>, IdentityError> {
    let unfinished: Vec<i32> = client
        .select(
            "SELECT part FROM identity.backfill_parts WHERE run_id = $1 AND NOT done ORDER BY part",
            None,
            &[run.into()],
        )?
        .map(|row| row.get::<i32>(1))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    free_last_result();
    // A held part that is no longer unfinished was done by this session's last (committed) step.
    match HELD_PART.get() {
        Some((held_run, part)) if held_run == run && unfinished.contains(&part) => {
            return Ok(Some(part))
        }
        Some(_) => release_held_part(client)?,
        None => {}
    }
    for part in unfinished {
        if try_hold(client, run, part)? {
            return Ok(Some(part));
        }
    }
    Ok(None)
}

/// `identity.backfill_step(run_id)`: binds one batch of a part of the run and returns `more`;
/// `waiting` when other processes hold every unfinished part; `done` when none is left. The
/// caller commits after each call.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn backfill_step(run_id: i64) -> Result<&'static str, ErrorReport> {
    writable()?;
    let outcome = Spi::connect_mut(|client| -> Result<StepOutcome, IdentityError> {
        let Some(number) = part_to_work_on(client, run_id)? else {
            return finished_or_waiting(client, run_id);
        };
        let mut part = match in_subtransaction(|| {
            Spi::connect_mut(|client| Part::load(client, run_id, number))
        }) {
            Ok(part) => part,
            Err(failure) if failure.is_serialization_failure() => {
                // This transaction's snapshot predates the part's newest batch: a later step,
                // in a new transaction, sees it.
                release_held_part(client)?;
                return Ok(StepOutcome::Waiting);
            }
            Err(failure) => return Err(failure.into()),
        };
        let caller = caller_name();
        if part.key.run_as != caller {
            release_held_part(client)?;
            return Err(IdentityError::NotYourBackfillRun {
                run_id,
                run_as: part.key.run_as,
            });
        }
        if part.done {
            // Finished by its last holder after this session listed it: look again.
            release_held_part(client)?;
            return Ok(StepOutcome::More);
        }
        // A part done by this batch stays held until the next step, after the caller's commit:
        // released earlier, another process could take it while its end is uncommitted and bind
        // its last batch again.
        bind_next_batch_retrying(&mut part, run_id)?;
        Ok(StepOutcome::More)
    })?;
    Ok(outcome.as_str())
}

fn finished_or_waiting(client: &mut SpiClient<'_>, run: i64) -> Result<StepOutcome, IdentityError> {
    let row = client
        .select(
            "SELECT count(*), count(*) FILTER (WHERE NOT done), sum(scanned)::int8, sum(created)::int8,
                    sum(existing)::int8, sum(conflicts)::int8, sum(invalid)::int8
               FROM identity.backfill_parts WHERE run_id = $1",
            None,
            &[run.into()],
        )?
        .first();
    let number = |i| -> Result<i64, IdentityError> { Ok(row.get::<i64>(i)?.unwrap_or(0)) };
    if number(1)? == 0 {
        return Err(IdentityError::InvalidParameter {
            reason: format!("there is no backfill run {run}"),
        });
    }
    if number(2)? > 0 {
        return Ok(StepOutcome::Waiting);
    }
    notice!(
        "backfill run {run} finished: scanned {}, created {}, existing {}, conflicts {}, invalid {}",
        number(3)?,
        number(4)?,
        number(5)?,
        number(6)?,
        number(7)?
    );
    Ok(StepOutcome::Done)
}

/// `identity.backfill_launch_workers(run_id)`: starts background workers on the run's unfinished
/// parts, one fewer than there are (the caller works on one), at most
/// `identity.max_parallel_backfill_workers`; returns how many started. Call it once the plan is
/// committed. The workers run as the caller, in the caller's database.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn backfill_launch_workers(run_id: i64) -> Result<i32, ErrorReport> {
    // The workers write: on a standby they would wait, unstarted, for a promotion.
    writable()?;
    let unfinished = Spi::connect(|client| {
        client
            .select(
                "SELECT count(*) FROM identity.backfill_parts WHERE run_id = $1 AND NOT done",
                None,
                &[run_id.into()],
            )?
            .first()
            .get_one::<i64>()
    })
    .map_err(IdentityError::from)?
    .unwrap_or(0);
    let wanted = (unfinished - 1).clamp(0, i64::from(MAX_PARALLEL_BACKFILL_WORKERS.get()));
    let identity = WorkerIdentity::of_this_session();
    let mut started = 0;
    for _ in 0..wanted {
        let launched =
            BackgroundWorkerBuilder::new(&format!("identity_bindings backfill run {run_id}"))
                .set_type("identity_bindings backfill")
                .set_library("identity_bindings")
                .set_function("identity_bindings_backfill_main")
                .enable_spi_access()
                .set_start_time(BgWorkerStartTime::RecoveryFinished)
                .set_restart_time(None)
                .set_argument(Some(pg_sys::Datum::from(run_id)))
                .set_extra(&identity.to_extra())
                .load_dynamic();
        if launched.is_err() {
            notice!(
                "backfill: {started} of {wanted} workers started (no free background worker slot: raise max_worker_processes); this session binds the rest"
            );
            break;
        }
        started += 1;
    }
    Ok(started)
}

/// Who a worker works as: the calling session's database, its login role, and the role it acts
/// as (after SET ROLE). Passed in the worker's `bgw_extra`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WorkerIdentity {
    database: Oid,
    login: Oid,
    role: Oid,
}

impl WorkerIdentity {
    fn of_this_session() -> WorkerIdentity {
        // SAFETY: reads this backend's database and roles.
        unsafe {
            WorkerIdentity {
                database: pg_sys::MyDatabaseId,
                login: pg_sys::GetSessionUserId(),
                role: pg_sys::GetOuterUserId(),
            }
        }
    }

    fn to_extra(self) -> String {
        format!(
            "{} {} {}",
            self.database.to_u32(),
            self.login.to_u32(),
            self.role.to_u32()
        )
    }

    fn from_extra(extra: &str) -> Option<WorkerIdentity> {
        let mut oids = extra
            .split(' ')
            .map(|oid| oid.parse::<u32>().ok().map(Oid::from));
        let identity = WorkerIdentity {
            database: oids.next()??,
            login: oids.next()??,
            role: oids.next()??,
        };
        oids.next().is_none().then_some(identity)
    }
}

/// A backfill worker: steps through the run's parts, a transaction per batch, until no part is
/// left to it. A failed batch is logged and ends the worker; its part is then free, and the
/// calling session takes it up (and reports the error, should it happen again). SIGTERM ends the
/// worker at once, its batch in hand rolled back, however large the batch.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn identity_bindings_backfill_main(argument: pg_sys::Datum) {
    crate::worker::exit_on_sigterm();
    let run_id = argument.value() as i64;
    let Some(identity) = WorkerIdentity::from_extra(BackgroundWorker::get_extra()) else {
        warning!("identity_bindings backfill worker: malformed worker arguments");
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(identity.database), Some(identity.login));
    crate::worker::pin_search_path();
    if identity.role != identity.login {
        let acting = in_transaction(|| {
            Spi::run_with_args(
                "SELECT pg_catalog.set_config('role', (SELECT rolname FROM pg_catalog.pg_roles WHERE oid OPERATOR(pg_catalog.=) $1), false)",
                &[identity.role.into()],
            )
            .map_err(|e| e.to_string())
        });
        if let Err(error) = acting {
            warning!("identity_bindings backfill worker (run {run_id}): {error}");
            return;
        }
    }
    loop {
        let step = in_transaction(|| {
            Spi::get_one_with_args::<String>("SELECT identity.backfill_step($1)", &[run_id.into()])
                .map_err(|e| e.to_string())
        });
        match step {
            Ok(Some(outcome)) if outcome == StepOutcome::More.as_str() => continue,
            Ok(_) => break,
            Err(error) => {
                warning!("identity_bindings backfill worker (run {run_id}): {error}");
                break;
            }
        }
    }
}

extension_sql!(
    r#"
-- The batched form: commits after each batch, so a table of tens of millions of users never
-- needs one long transaction. Background workers (identity.max_parallel_backfill_workers, 2 by
-- default) bind parts of the table beside this session. Interrupted, it is resumed by calling it
-- again on the same table; resume_after_id starts a new run after that id instead. CALL it outside
-- a transaction block.
-- No SET search_path here: PostgreSQL forbids COMMIT in a procedure with SET clauses. It runs
-- with the caller's rights and search_path, so it names every object with its schema, operators
-- too: a schema listed before pg_catalog would otherwise give a superuser's call its own `=`.
CREATE PROCEDURE identity.backfill_wallet_bindings_in_batches(
    users regclass DEFAULT to_regclass('public.users'),
    id_column name DEFAULT 'id',
    wallet_column name DEFAULT 'wallet_address',
    batch_size integer DEFAULT 10000,
    resume_after_id text DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
DECLARE
    run bigint;
    outcome text;
BEGIN
    run := identity.backfill_plan(users, id_column, wallet_column, batch_size, resume_after_id);
    COMMIT;  -- the workers read the plan
    PERFORM identity.backfill_launch_workers(run);
    LOOP
        outcome := identity.backfill_step(run);
        COMMIT;
        EXIT WHEN outcome OPERATOR(pg_catalog.=) 'done';
        IF outcome OPERATOR(pg_catalog.=) 'waiting' THEN
            PERFORM pg_catalog.pg_sleep(0.05);
        END IF;
    END LOOP;
END
$$;
"#,
    name = "backfill_procedure",
    requires = [backfill_plan, backfill_launch_workers, backfill_step]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::{part_lock_key, WorkerIdentity};
    use crate::backfill::Source;
    use crate::testing::{six_app_users, sqlstate_of};
    use pgrx::pg_sys::Oid;
    use pgrx::prelude::*;

    fn plan(resume_after: &str) -> i64 {
        Spi::get_one::<i64>(&format!(
            "SELECT identity.backfill_plan('app_users', 'uid', 'eth', 1, {resume_after})"
        ))
        .unwrap()
        .unwrap()
    }

    fn step(run: i64) -> String {
        Spi::get_one::<String>(&format!("SELECT identity.backfill_step({run})"))
            .unwrap()
            .unwrap()
    }

    fn run_totals(run: i64) -> (i64, i64, i64, i64, i64, i64) {
        let row = Spi::connect(|client| {
            let row = client
                .select(
                    &format!(
                        "SELECT count(*), sum(scanned)::int8, sum(created)::int8, sum(existing)::int8,
                                sum(conflicts)::int8, sum(invalid)::int8
                           FROM identity.backfill_parts WHERE run_id = {run} AND done"
                    ),
                    None,
                    &[],
                )
                .unwrap()
                .first();
            (1..=6)
                .map(|i| row.get::<i64>(i).unwrap().unwrap_or(0))
                .collect::<Vec<_>>()
        });
        (row[0], row[1], row[2], row[3], row[4], row[5])
    }

    #[pg_test]
    fn a_run_in_parts_counts_what_one_pass_counts() {
        crate::testing::take_turns();
        six_app_users();
        // 30 more users, with wallets of their own: enough rows for parts of four batches each.
        Spi::run(
            "INSERT INTO app_users SELECT '00000000-0000-4000-8000-1' || lpad(i::text, 11, '0'),
                                          '0x' || lpad(to_hex(i), 40, '0')
               FROM generate_series(1, 30) i",
        )
        .unwrap();
        Spi::run("SET LOCAL identity.max_parallel_backfill_workers = 2").unwrap();
        let run = plan("NULL");
        let parts = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM identity.backfill_parts WHERE run_id = {run}"
        ));
        assert!(
            parts.unwrap().unwrap() > 1,
            "36 rows in batches of one are split"
        );
        let mut steps = 0;
        while step(run) == "more" {
            steps += 1;
            assert!(steps < 200, "a run of 36 rows ends");
        }
        let (parts, scanned, created, existing, conflicts, invalid) = run_totals(run);
        // As backfill_wallet_bindings counts the six users (backfill.rs), plus the 30: the
        // duplicate wallet goes to the first user in id order, whichever part holds each.
        assert_eq!(
            (scanned, created, existing, conflicts, invalid),
            (36, 32, 0, 1, 2)
        );
        assert!(parts > 1);
        assert_eq!(step(run), "done", "a finished run stays finished");
    }

    /// Steps `run` until it is done; its totals.
    fn finish(run: i64) -> (i64, i64, i64, i64, i64, i64) {
        let mut steps = 0;
        while step(run) == "more" {
            steps += 1;
            assert!(steps < 200, "a small run ends");
        }
        run_totals(run)
    }

    #[pg_test]
    fn a_view_cannot_be_sampled_so_its_run_is_one_part() {
        crate::testing::take_turns();
        six_app_users();
        Spi::run(
            "CREATE VIEW app_users_view AS SELECT uid, eth FROM app_users;
             SET LOCAL identity.max_parallel_backfill_workers = 2",
        )
        .unwrap();
        let run = Spi::get_one::<i64>(
            "SELECT identity.backfill_plan('app_users_view', 'uid', 'eth', 1, NULL)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(finish(run), (1, 6, 2, 0, 1, 2));
    }

    #[pg_test]
    fn the_last_part_counts_the_rows_without_an_id_once() {
        crate::testing::take_turns();
        six_app_users();
        Spi::run(
            "ALTER TABLE app_users DROP CONSTRAINT app_users_pkey, ALTER COLUMN uid DROP NOT NULL;
             CREATE INDEX ON app_users (uid);
             INSERT INTO app_users VALUES (NULL, '0x00000000000000000000000000000000000000f7'), (NULL, NULL);
             SET LOCAL identity.max_parallel_backfill_workers = 0",
        )
        .unwrap();
        let run = plan("NULL");
        // As the six users alone (see a_run_in_parts_counts_what_one_pass_counts), plus two
        // rows scanned and one of them invalid.
        assert_eq!(finish(run), (1, 8, 2, 0, 1, 3));
    }

    #[pg_test]
    fn a_partitioned_table_is_sized_by_its_partitions_and_split() {
        crate::testing::take_turns();
        Spi::run(
            "CREATE TABLE parted_users (uid uuid PRIMARY KEY, eth text) PARTITION BY HASH (uid);
             CREATE TABLE parted_users_0 PARTITION OF parted_users FOR VALUES WITH (MODULUS 2, REMAINDER 0);
             CREATE TABLE parted_users_1 PARTITION OF parted_users FOR VALUES WITH (MODULUS 2, REMAINDER 1);
             INSERT INTO parted_users
             SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, '0x' || lpad(to_hex(i), 40, '0')
               FROM generate_series(1, 3000) i;
             SET LOCAL identity.max_parallel_backfill_workers = 2",
        )
        .unwrap();
        let pages = Spi::connect_mut(|client| {
            let source = Source::named(client, "parted_users", "uid", "eth").unwrap();
            super::heap_pages(client, &source).unwrap()
        });
        let partitions = Spi::get_one::<i64>(
            "SELECT (pg_relation_size('parted_users_0') + pg_relation_size('parted_users_1'))
                    / current_setting('block_size')::int8",
        );
        assert_eq!(Ok(Some(pages)), partitions);
        assert!(pages > 0, "3,000 rows fill pages");
        let run = Spi::get_one::<i64>(
            "SELECT identity.backfill_plan('parted_users', 'uid', 'eth', 100, NULL)",
        )
        .unwrap()
        .unwrap();
        let (parts, scanned, created, ..) = finish(run);
        assert!(parts > 1, "3,000 rows in batches of 100 are split");
        assert_eq!((scanned, created), (3000, 3000));
    }

    #[pg_test]
    fn an_unfinished_run_is_resumed_and_a_resume_id_starts_a_new_one() {
        crate::testing::take_turns();
        six_app_users();
        Spi::run("SET LOCAL identity.max_parallel_backfill_workers = 0").unwrap();
        let run = plan("NULL");
        assert_eq!(step(run), "more");
        assert_eq!(plan("NULL"), run, "the unfinished run goes on");
        let after = "'00000000-0000-4000-8000-000000000003'";
        let newer = plan(after);
        assert_ne!(newer, run);
        assert_eq!(
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM identity.backfill_parts WHERE run_id = {run}"
            )),
            Ok(Some(0)),
            "the run it replaces is gone"
        );
        while step(newer) == "more" {}
        // Only what follows the resume id: the invalid wallet and the user without one.
        assert_eq!(run_totals(newer), (1, 3, 0, 0, 0, 2));
    }

    #[pg_test]
    fn a_step_refuses_another_roles_run_and_an_unknown_run() {
        crate::testing::take_turns();
        six_app_users();
        let run = plan("NULL");
        Spi::run(
            "CREATE ROLE backfill_intruder;
             GRANT SELECT ON app_users TO backfill_intruder;
             GRANT USAGE ON SCHEMA identity TO backfill_intruder;
             GRANT EXECUTE ON FUNCTION identity.backfill_step(bigint) TO backfill_intruder",
        )
        .unwrap();
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT set_config('role', 'backfill_intruder', true), identity.backfill_step({run})"
            )),
            "42501"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.backfill_step(987654)"),
            "22023"
        );
    }

    fn part_locks_held() -> i64 {
        Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {}::oid
                AND pid = pg_backend_pid()",
            super::PART_LOCK_CLASS
        ))
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn a_finished_part_stays_held_until_the_next_step() {
        crate::testing::take_turns();
        six_app_users();
        Spi::run("SET LOCAL identity.max_parallel_backfill_workers = 0").unwrap();
        let run = plan("NULL");
        let part_done = || {
            Spi::get_one::<bool>(&format!(
                "SELECT done FROM identity.backfill_parts WHERE run_id = {run}"
            ))
            .unwrap()
            .unwrap()
        };
        while !part_done() {
            assert_eq!(step(run), "more");
        }
        // Released now, before the caller commits the step that finished it, the part could be
        // taken by another process that still sees it unfinished, and bound a second time.
        assert_eq!(part_locks_held(), 1, "held past the step that finished it");
        assert_eq!(step(run), "done");
        assert_eq!(part_locks_held(), 0, "released by the next step");
    }

    #[pg_test]
    fn launching_without_workers_allowed_starts_none() {
        crate::testing::take_turns();
        six_app_users();
        Spi::run("SET LOCAL identity.max_parallel_backfill_workers = 0").unwrap();
        let run = plan("NULL");
        assert_eq!(
            Spi::get_one::<i32>(&format!("SELECT identity.backfill_launch_workers({run})")),
            Ok(Some(0))
        );
    }

    #[pg_test]
    fn worker_identity_survives_its_round_trip_through_bgw_extra() {
        let identity = WorkerIdentity {
            database: Oid::from(16384),
            login: Oid::from(10),
            role: Oid::from(16999),
        };
        assert_eq!(
            WorkerIdentity::from_extra(&identity.to_extra()),
            Some(identity)
        );
        assert_eq!(WorkerIdentity::from_extra("1 2"), None);
        assert_eq!(WorkerIdentity::from_extra("1 2 3 4"), None);
        assert_eq!(WorkerIdentity::from_extra("1 x 3"), None);
    }

    #[pg_test]
    fn parts_of_one_run_take_distinct_locks() {
        let keys: std::collections::HashSet<i32> =
            (1..=132).map(|part| part_lock_key(7, part)).collect();
        assert_eq!(keys.len(), 132);
        assert_ne!(part_lock_key(7, 1), part_lock_key(8, 1));
    }
}
