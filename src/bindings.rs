//! Bindings: external accounts attached to a user, each with its evidenced event.
//!
//! A binding and its event are written in one step of the caller's transaction, so either both
//! exist or neither does. An external id bound to one user is never re-pointed here except by an
//! explicit, evidenced merge, or by a revoke followed by a new bind (NO_AUTO_MERGE).

use crate::binding_index::{live_binding, LiveBinding};
use crate::errors::{required, required_or_left_out, IdentityError};
use crate::events::{
    append_many, append_to_locked, insert_binding_with_event, lock_chains, pg_uuid, rust_uuid,
    EventType, IdInUse,
};
use crate::evidence::{evidence_object, EvidenceArg};
use crate::providers::{canonical_external_id, canonical_if_valid};
use crate::set_returning::{return_rows, V1_API};
use crate::statements::{text_uuid_rows, writable, Statement};
use crate::subtransaction::in_subtransaction;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::pg_sys::{self, TEXTARRAYOID, TEXTOID, UUIDARRAYOID, UUIDOID};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// What `bind` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOutcome {
    pub binding_id: Uuid,
    /// The user bound to: the one asked for, or for a queued binding, where merges took them.
    pub user_id: Uuid,
    pub canonical_id: String,
    /// false: the binding already existed for this user and nothing was written.
    pub created: bool,
}

/// Binds `external_id` of `provider` to `user_id` with `evidence`, or finds it already bound to
/// that user. Bound to another user: `BoundToAnotherUser`, nothing written.
pub fn bind(
    client: &mut SpiClient<'_>,
    user_id: Uuid,
    provider: &str,
    external_id: &str,
    evidence: Value,
) -> Result<BindOutcome, IdentityError> {
    bind_recording(
        client,
        user_id,
        None,
        provider,
        external_id,
        evidence,
        IdInUse::Wait,
    )
}

/// Binds a queued job's binding (retry.rs) to the user it was queued for or, when a merge took
/// that user away (before or after it was queued), to the user their merges end at: the person
/// the job was for. Such a bind event records the user it was queued for as `queued_for`.
///
/// Its locks are taken in `bind`'s order: the binding's key as it is written, then the user's
/// chain as its event is appended. Taking the chain first, a pass (or a promised login) waited
/// for a create_binding of the same binding while holding the chain that create_binding waited
/// for: a deadlock, whose victim could be the application's call.
pub fn bind_queued(
    client: &mut SpiClient<'_>,
    queued_for: Uuid,
    provider: &str,
    external_id: &str,
    evidence: Value,
    waits: QueuedWaits,
) -> Result<BindOutcome, IdentityError> {
    let user_id = where_merges_end(client, queued_for)?;
    let redirected_from = (user_id != queued_for).then_some(queued_for);
    let id_in_use = match waits {
        QueuedWaits::AsCreateBinding => IdInUse::Wait,
        QueuedWaits::InPass { highest_chain } => {
            if highest_chain.is_some_and(|highest| user_id < highest) {
                return Err(IdentityError::ChainOutOfOrder {
                    user_id: user_id.to_string(),
                });
            }
            IdInUse::GiveUp
        }
    };
    let outcome = bind_recording(
        client,
        user_id,
        redirected_from,
        provider,
        external_id,
        evidence,
        id_in_use,
    )?;
    // A merge of the user that committed while the append waited for their chain (or started
    // it) left the new binding on a user merged away; only a retry can follow that merge. Once
    // appended, the chain is held: no later merge of theirs commits before this transaction.
    if outcome.created && merged_into(client, user_id)?.is_some() {
        return Err(IdentityError::QueuedUserMergedMeanwhile {
            user_id: user_id.to_string(),
        });
    }
    Ok(outcome)
}

/// What a queued binding may wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedWaits {
    /// What create_binding waits for (a login that a pending job promised the wallet to).
    AsCreateBinding,
    /// What a pass of the queue may wait for, holding the chains of the jobs it ran, the
    /// highest in user order `highest_chain`: never for an id another transaction is writing,
    /// which may be waiting for one of those chains (`IdInUse`), and for a user's chain only
    /// above it, the order merges take chains in. A job whose merges now lead below it (a merge
    /// committed during the pass) is left for its retry (`ChainOutOfOrder`).
    InPass { highest_chain: Option<Uuid> },
}

fn bind_recording(
    client: &mut SpiClient<'_>,
    user_id: Uuid,
    queued_for: Option<Uuid>,
    provider: &str,
    external_id: &str,
    evidence: Value,
    id_in_use: IdInUse,
) -> Result<BindOutcome, IdentityError> {
    let canonical_id = canonical_external_id(client, provider, external_id)?;
    // Most calls bind what is bound already (every login re-binds its wallet): one read answers
    // them. An insert that loses a race to a concurrent one finds the winner on the next round; a
    // concurrent revoke of a conflicting row lets the next round insert.
    for _ in 0..3 {
        // A repeat writes nothing and takes no transaction id: no commit record, no XID consumed.
        if let Some(LiveBinding {
            binding_id,
            user_id: owner,
        }) = live_binding(provider, &canonical_id)?
        {
            if owner != user_id {
                return Err(IdentityError::BoundToAnotherUser {
                    provider: provider.to_owned(),
                    external_id: canonical_id,
                });
            }
            return Ok(BindOutcome {
                binding_id,
                user_id,
                canonical_id,
                created: false,
            });
        }
        let binding_id = Uuid::now_v7();
        let mut payload = binding_payload(binding_id, provider, &canonical_id, &evidence);
        if let Some(queued_for) = queued_for {
            payload["queued_for"] = json!(queued_for);
        }
        let created = insert_binding_with_event(
            client,
            binding_id,
            user_id,
            provider,
            &canonical_id,
            &payload,
            id_in_use,
        )?;
        if created {
            return Ok(BindOutcome {
                binding_id,
                user_id,
                canonical_id,
                created: true,
            });
        }
    }
    Err(IdentityError::ChainAppendConflict)
}

/// The payload of a bind or revoke event: which binding, and the evidence for the change.
fn binding_payload(binding_id: Uuid, provider: &str, external_id: &str, evidence: &Value) -> Value {
    json!({
        "binding_id": binding_id,
        "provider": provider,
        "external_id": external_id,
        "evidence": evidence,
    })
}

/// What binding one row of a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    Created,
    /// Already bound to the same user: nothing written.
    Existing,
    /// Bound to another user (possibly by an earlier row of the same batch): nothing written.
    BoundToAnotherUser,
}

// In input order: a backfill's batches come in user id order, which keeps the user_id index's
// inserts together. For one id, the first row wins.
static INSERT_BINDINGS: Statement = Statement::write(
    "INSERT INTO identity.user_bindings (id, user_id, provider, external_id)
     SELECT n.id, n.user_id, $1, n.external_id
       FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS n (id, user_id, external_id)
     ON CONFLICT (provider, external_id) DO NOTHING RETURNING id",
    &[TEXTOID, UUIDARRAYOID, UUIDARRAYOID, TEXTARRAYOID],
);

// A write statement for its fresh snapshot. It runs after INSERT_BINDINGS, when this transaction
// has written, so a read would take a fresh snapshot as well; `write` makes that explicit.
static FIND_BINDINGS: Statement = Statement::write(
    "SELECT b.external_id, b.user_id FROM identity.user_bindings b
      WHERE b.provider = $1 AND b.external_id = ANY ($2)",
    &[TEXTOID, TEXTARRAYOID],
);

/// Binds a batch of `(user, canonical external id)` of `provider`, all with the same evidence,
/// with a few statements for the whole batch: what `bind` does row by row, with the same
/// outcome per row (in input order). When one id appears twice, the first row gets it.
pub fn bind_many(
    client: &mut SpiClient<'_>,
    provider: &str,
    rows: &[(Uuid, String)],
    evidence: &Value,
) -> Result<Vec<BatchOutcome>, IdentityError> {
    let binding_ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
    let inserted = insert_bindings(client, provider, rows, &binding_ids)?;
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(inserted.len());
    let mut not_inserted = Vec::new();
    for ((user_id, external_id), binding_id) in rows.iter().zip(&binding_ids) {
        if inserted.contains(binding_id) {
            let payload = binding_payload(*binding_id, provider, external_id, evidence);
            events.push((*user_id, payload));
            outcomes.push(Some(BatchOutcome::Created));
        } else {
            not_inserted.push(external_id.as_str());
            outcomes.push(None);
        }
    }
    append_many(client, EventType::Bind, &events)?;
    let owners = owners_of(client, provider, not_inserted)?;
    for ((user_id, external_id), outcome) in rows.iter().zip(outcomes.iter_mut()) {
        if outcome.is_some() {
            continue;
        }
        *outcome = Some(match owners.get(external_id) {
            Some(owner) if owner == user_id => BatchOutcome::Existing,
            Some(_) => BatchOutcome::BoundToAnotherUser,
            // Revoked since the insert saw it: bind it singly, as bind retries.
            None => match bind(client, *user_id, provider, external_id, evidence.clone()) {
                Ok(outcome) if outcome.created => BatchOutcome::Created,
                Ok(_) => BatchOutcome::Existing,
                Err(IdentityError::BoundToAnotherUser { .. }) => BatchOutcome::BoundToAnotherUser,
                Err(other) => return Err(other),
            },
        });
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// Inserts the rows that are not bound yet; returns the binding ids it inserted.
fn insert_bindings(
    client: &mut SpiClient<'_>,
    provider: &str,
    rows: &[(Uuid, String)],
    binding_ids: &[Uuid],
) -> Result<HashSet<Uuid>, IdentityError> {
    let mut inserted = HashSet::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(inserted);
    }
    let ids: Vec<pgrx::Uuid> = binding_ids.iter().copied().map(pg_uuid).collect();
    let users: Vec<pgrx::Uuid> = rows.iter().map(|(user, _)| pg_uuid(*user)).collect();
    let external_ids: Vec<&str> = rows.iter().map(|(_, id)| id.as_str()).collect();
    let args = [
        provider.into(),
        ids.into(),
        users.into(),
        external_ids.into(),
    ];
    for row in INSERT_BINDINGS.run(client, &args)? {
        if let Some(id) = row.get::<pgrx::Uuid>(1)? {
            inserted.insert(rust_uuid(id));
        }
    }
    Ok(inserted)
}

/// The owners of those of `external_ids` that are bound.
fn owners_of(
    client: &mut SpiClient<'_>,
    provider: &str,
    external_ids: Vec<&str>,
) -> Result<HashMap<String, Uuid>, IdentityError> {
    let mut owners = HashMap::with_capacity(external_ids.len());
    if external_ids.is_empty() {
        return Ok(owners);
    }
    for row in FIND_BINDINGS.run(client, &[provider.into(), external_ids.into()])? {
        if let (Some(id), Some(user)) = (row.get::<String>(1)?, row.get::<pgrx::Uuid>(2)?) {
            owners.insert(id, rust_uuid(user));
        }
    }
    Ok(owners)
}

/// `identity.create_binding(user_id, provider, external_id, evidence)`.
fn create_binding(
    user_id: Option<pgrx::Uuid>,
    provider: Option<&str>,
    external_id: Option<&str>,
    evidence: Option<EvidenceArg>,
) -> Result<BindOutcome, IdentityError> {
    writable()?;
    let user_id = rust_uuid(required(user_id, "user_id")?);
    let provider = required(provider, "provider")?;
    let external_id = required(external_id, "external_id")?;
    let evidence = evidence_object(required_or_left_out(evidence, "evidence", "'{}'")?)?;
    Spi::connect_mut(|client| bind(client, user_id, provider, external_id, evidence))
}

// Written to the C calling convention instead of #[pg_extern], so its one row is returned from
// one call (see set_returning.rs): every login goes through here. The symbol keeps the name pgrx
// gave it in 0.1.0, whose install script refers to it.
#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_create_binding_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1_API
}

/// # Safety
/// Called by PostgreSQL only, through the SQL function below, with its four arguments.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn create_binding_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the arguments are uuid, text, text and jsonb, as the SQL definition declares.
    let outcome = unsafe {
        create_binding(
            pgrx::fcinfo::pg_getarg(fcinfo, 0),
            pgrx::fcinfo::pg_getarg(fcinfo, 1),
            pgrx::fcinfo::pg_getarg(fcinfo, 2),
            pgrx::fcinfo::pg_getarg(fcinfo, 3),
        )
    }
    .unwrap_or_else(|error| error.raise());
    let row = [
        pg_uuid(outcome.binding_id).into_datum(),
        outcome.canonical_id.into_datum(),
        outcome.created.into_datum(),
    ];
    // SAFETY: one row of the three declared columns (uuid, text, boolean), built just now.
    unsafe { return_rows(fcinfo, [row]) }
}

extension_sql!(
    r#"
CREATE FUNCTION identity.create_binding(
    user_id uuid, provider text, external_id text, evidence jsonb DEFAULT '{}')
RETURNS TABLE (binding_id uuid, canonical_id text, created boolean)
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_binding_wrapper';
"#,
    name = "create_binding",
);

static DELETE_BINDING: Statement = Statement::write(
    "DELETE FROM identity.user_bindings b
      WHERE b.provider = $1 AND b.external_id = $2 AND b.user_id = $3
     RETURNING b.id",
    &[TEXTOID, TEXTOID, UUIDOID],
);

/// `identity.revoke_binding(provider, external_id, evidence)`: removes the live binding and
/// records why; the external id can be bound again afterwards.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn revoke_binding(
    provider: Option<&str>,
    external_id: Option<&str>,
    evidence: Option<EvidenceArg>,
) -> Result<
    TableIterator<'static, (name!(binding_id, pgrx::Uuid), name!(user_id, pgrx::Uuid))>,
    ErrorReport,
> {
    writable()?;
    let provider = required(provider, "provider")?;
    let external_id = required(external_id, "external_id")?;
    let evidence = evidence_object(required(evidence, "evidence")?)?;
    let (binding_id, user_id) = Spi::connect_mut(|client| {
        let canonical_id = canonical_external_id(client, provider, external_id)?;
        // The owner's chain is locked before the binding's row, the order merge_users takes them
        // in: the other order deadlocks with a merge of the owner. A merge that moved the binding
        // meanwhile leaves nothing to delete for the old owner: the next round finds the new one.
        for _ in 0..3 {
            let Some(LiveBinding { user_id, .. }) = live_binding(provider, &canonical_id)? else {
                return Err(IdentityError::NotBound {
                    provider: provider.to_owned(),
                    external_id: canonical_id,
                });
            };
            // Each round in a subtransaction: a round that found the binding moved is undone,
            // and lets go of the old owner's chain before the next round locks the new owner's.
            // Kept, the two were locked in merge order, not user order, and a merge that holds
            // the new owner's chain and waits for the old one's deadlocked with the revoke.
            let mut moved = false;
            let round = in_subtransaction(|| {
                let revoked = revoke_from(client, user_id, provider, &canonical_id, &evidence)?;
                revoked.ok_or_else(|| {
                    moved = true;
                    IdentityError::ChainAppendConflict
                })
            });
            match round {
                Ok(revoked) => return Ok(revoked),
                Err(_) if moved => continue,
                Err(failure) => return Err(failure.into()),
            }
        }
        Err(IdentityError::ChainAppendConflict)
    })?;
    Ok(TableIterator::once((pg_uuid(binding_id), pg_uuid(user_id))))
}

/// Revokes the binding from `owner`, holding their chain: the binding's id and `owner`, or
/// `None` when it is no longer theirs (a merge moved it while this waited for the chain).
fn revoke_from(
    client: &mut SpiClient<'_>,
    owner: Uuid,
    provider: &str,
    canonical_id: &str,
    evidence: &Value,
) -> Result<Option<(Uuid, Uuid)>, IdentityError> {
    let mut chains = lock_chains(client, &[owner])?;
    let deleted = DELETE_BINDING.first_uuid(
        client,
        &[provider.into(), canonical_id.into(), pg_uuid(owner).into()],
    )?;
    // A binding's id is its primary key: a deleted row always has one.
    let Some(binding_id) = deleted.map(rust_uuid) else {
        return Ok(None);
    };
    let payload = binding_payload(binding_id, provider, canonical_id, evidence);
    append_to_locked(client, &mut chains, owner, EventType::Revoke, &payload)?;
    Ok(Some((binding_id, owner)))
}

static MOVE_BINDINGS: Statement = Statement::write(
    "UPDATE identity.user_bindings b SET user_id = $2 WHERE b.user_id = $1
     RETURNING b.id, b.provider, b.external_id",
    &[UUIDOID, UUIDOID],
);

// Read after the merge's events are appended, holding both chains, on a fresh snapshot.
static HAS_BINDINGS: Statement = Statement::read(
    "SELECT EXISTS (SELECT FROM identity.user_bindings b WHERE b.user_id = $1)",
    &[UUIDOID],
);

/// `identity.merge_users(from_user, into_user, evidence)`: moves every binding of `from_user`
/// to `into_user` and records a `merge` event on both, naming the bindings moved.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn merge_users(
    from_user: Option<pgrx::Uuid>,
    into_user: Option<pgrx::Uuid>,
    evidence: Option<EvidenceArg>,
) -> Result<i32, ErrorReport> {
    writable()?;
    let from_user = rust_uuid(required(from_user, "from_user")?);
    let into_user = rust_uuid(required(into_user, "into_user")?);
    let evidence = evidence_object(required(evidence, "evidence")?)?;
    if from_user == into_user {
        return Err(IdentityError::MergeIntoSelf.into());
    }
    let moved = Spi::connect_mut(|client| -> Result<usize, IdentityError> {
        // Both chains first: a bind for either user that holds its chain commits before the move
        // reads the bindings, so what its event records as bound before the merge is moved.
        let mut chains = lock_chains(client, &[from_user, into_user])?;
        let rows = MOVE_BINDINGS.run(
            client,
            &[pg_uuid(from_user).into(), pg_uuid(into_user).into()],
        )?;
        let mut moved = Vec::with_capacity(rows.len());
        for row in rows {
            moved.push(json!({
                "binding_id": row.get::<pgrx::Uuid>(1)?.map(rust_uuid),
                "provider": row.get::<String>(2)?,
                "external_id": row.get::<String>(3)?,
            }));
        }
        let count = moved.len();
        let payload = |role: &str| {
            json!({
                "role": role,
                "from_user": from_user,
                "into_user": into_user,
                "bindings": moved,
                "evidence": evidence,
            })
        };
        // In user order, as the locks were taken: a chain that did not exist yet is started in
        // that order too, so two opposite merges cannot deadlock.
        let mut sides = [(from_user, "from"), (into_user, "into")];
        sides.sort();
        for (user_id, role) in sides {
            append_to_locked(
                client,
                &mut chains,
                user_id,
                EventType::Merge,
                &payload(role),
            )?;
        }
        // A merged user who had no chain to lock may have had their first bind under way: it
        // committed after the move read the bindings, while the append waited for the chain it
        // was starting, and its event now precedes the merge's. Only a retry can move it.
        let left_behind = HAS_BINDINGS.run(client, &[pg_uuid(from_user).into()])?;
        if left_behind.first().get_one::<bool>()?.unwrap_or(false) {
            return Err(IdentityError::MergeMetFirstBind {
                from_user: from_user.to_string(),
            });
        }
        Ok(count)
    })?;
    i32::try_from(moved)
        .map_err(|_| IdentityError::Internal("more than 2^31 bindings moved".into()).into())
}

// Whom the user's newest merge merged them into, when it merged them away (NULL when it merged
// someone into them; no row when they were never merged). Merges lock both users' chains, so
// each user's chain orders their merges, and the newest one says whether they still stand.
static MERGED_INTO: Statement = Statement::read(
    "SELECT CASE WHEN e.payload->>'role' = 'from' THEN (e.payload->>'into_user')::uuid END
       FROM identity.identity_events e
      WHERE e.user_id = $1 AND e.event_type = 'merge'
      ORDER BY e.seq DESC
      LIMIT 1",
    &[UUIDOID],
);

fn merged_into(client: &mut SpiClient<'_>, user_id: Uuid) -> Result<Option<Uuid>, IdentityError> {
    let into_user = MERGED_INTO.first_uuid(client, &[pg_uuid(user_id).into()])?;
    Ok(into_user.map(rust_uuid))
}

/// More merges than any history has in a row: following further means the merge events loop,
/// which only events written behind the functions' back can make.
const MERGE_HOPS_LIMIT: usize = 1000;

/// The user `user_id` is now, as far as the merges committed so far tell: `user_id` itself, or,
/// when merges took them away, the user the merges end at. It takes no lock. (Merges never loop:
/// each locks both chains, so for a loop the newest merge of every user in it would have to be
/// older than the next one's.)
pub fn where_merges_end(client: &mut SpiClient<'_>, user_id: Uuid) -> Result<Uuid, IdentityError> {
    let mut user = user_id;
    for _ in 0..MERGE_HOPS_LIMIT {
        match merged_into(client, user)? {
            Some(into_user) => user = into_user,
            None => return Ok(user),
        }
    }
    Err(merges_loop(user_id))
}

fn merges_loop(user_id: Uuid) -> IdentityError {
    IdentityError::Internal(format!(
        "the merge events that start at user {user_id} loop, which merge_users never writes: \
         run identity.check_integrity()"
    ))
}

/// The user a canonical external id is bound to, if any.
pub fn owner_of(provider: &str, canonical_id: &str) -> Result<Option<Uuid>, IdentityError> {
    Ok(live_binding(provider, canonical_id)?.map(|binding| binding.user_id))
}

/// `identity.resolve(provider, external_id)`: the user the id is bound to, NULL when unbound.
#[pg_extern(stable, strict, security_definer, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn resolve(provider: &str, external_id: &str) -> Result<Option<pgrx::Uuid>, ErrorReport> {
    Spi::connect_mut(|client| -> Result<Option<pgrx::Uuid>, IdentityError> {
        let canonical_id = canonical_external_id(client, provider, external_id)?;
        Ok(owner_of(provider, &canonical_id)?.map(pg_uuid))
    })
    .map_err(ErrorReport::from)
}

// The bound ids among $2 and their owners; `owners_in_order` puts them in input order. With
// `= ANY`, the index scan sorts the ids and probes the (provider, external_id) index in key order,
// as the plain query does. A join of unnest($2) to the table left the planner free to hash every
// binding of the provider instead (at 100,000 bindings it read them all for 10,000 ids), and
// probing in input order jumps about the index: both took 1.4 times the plain query.
static RESOLVE_MANY: Statement = Statement::read(
    "SELECT b.external_id::text, b.user_id FROM identity.user_bindings b
      WHERE b.provider = $1 AND b.external_id = ANY ($2)",
    &[TEXTOID, TEXTARRAYOID],
);

/// The elements of a text[] argument, read in place.
struct TextArray<'a> {
    /// The whole array, detoasted: passed on to the look-up when every id is already canonical.
    datum: pg_sys::Datum,
    /// Each element's datum, a pointer into the array, returned to the caller unchanged.
    datums: &'a [pg_sys::Datum],
    /// Each element's text, or None for a NULL element.
    texts: Vec<Option<&'a str>>,
}

impl TextArray<'_> {
    /// # Safety
    /// `datum` is a non-NULL text[] that lives as long as the result.
    unsafe fn read(datum: pg_sys::Datum) -> Self {
        // SAFETY: as the caller promises. deconstruct_array pallocs the datums and NULL flags in
        // this call's memory context and points each varlena element into the detoasted array
        // (elements are never compressed or stored out of line), and `&str`'s FromDatum reads
        // it there, checking the encoding as every pgrx text argument is checked.
        unsafe {
            let array = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()).cast::<pg_sys::ArrayType>();
            let (mut datums, mut nulls, mut count) =
                (std::ptr::null_mut(), std::ptr::null_mut(), 0);
            pg_sys::deconstruct_array_builtin(array, TEXTOID, &mut datums, &mut nulls, &mut count);
            let count = usize::try_from(count).unwrap_or(0);
            let (datums, nulls) = if count == 0 {
                (&[][..], &[][..])
            } else {
                (
                    std::slice::from_raw_parts(datums, count),
                    std::slice::from_raw_parts(nulls, count),
                )
            };
            let texts = datums
                .iter()
                .zip(nulls)
                .map(|(&element, &is_null)| <&str>::from_datum(element, is_null))
                .collect();
            TextArray {
                datum: pg_sys::Datum::from(array),
                datums,
                texts,
            }
        }
    }
}

/// Rows fetched per batch: enough that fetching costs little per row, few enough that a batch's
/// memory is reused from the allocator's free lists (well under glibc's 128 kB mmap threshold).
const RESOLVE_BATCH_ROWS: i64 = 1000;

/// The owner of each of `ids`' elements (canonicalized for `provider`), in element order.
fn owners_in_order(
    provider: &str,
    ids: &TextArray<'_>,
) -> Result<Vec<Option<pgrx::Uuid>>, IdentityError> {
    let inputs = &ids.texts;
    Spi::connect_mut(|client| {
        let mut canonical: Vec<Option<Cow<str>>> = Vec::with_capacity(inputs.len());
        // Checksummed-looking wallets are looked up as given and checked only if not found: a
        // stored id is canonical, so one found as given is valid (no EIP-55 hash needed).
        let mut checked_later = Vec::new();
        for (position, input) in inputs.iter().enumerate() {
            canonical.push(match *input {
                Some(id) if canonical_if_valid(provider, id) => {
                    checked_later.push(position);
                    Some(Cow::Borrowed(id))
                }
                Some(id) => Some(Cow::Owned(canonical_external_id(client, provider, id)?)),
                None => None,
            });
        }
        // Ids usually arrive canonical: the caller's array is then the look-up's, as it stands.
        let as_given = canonical
            .iter()
            .zip(inputs)
            .all(|(id, input)| id.as_deref() == *input);
        let wanted = if as_given {
            // SAFETY: a text[] datum that lives until this function returns.
            unsafe { DatumWithOid::new(ids.datum, TEXTARRAYOID) }
        } else {
            canonical
                .iter()
                .flatten()
                .map(|id| id.as_ref())
                .collect::<Vec<&str>>()
                .into()
        };
        // Each distinct id, and its owner once a row names it.
        let mut owner_of: foldhash::HashMap<&[u8], Option<pgrx::Uuid>> =
            HashMap::with_capacity_and_hasher(canonical.len(), Default::default());
        owner_of.extend(canonical.iter().flatten().map(|id| (id.as_bytes(), None)));
        let args = [provider.into(), wanted];
        RESOLVE_MANY.read_in_batches(client, &args, RESOLVE_BATCH_ROWS, |rows| {
            for (id, owner) in text_uuid_rows(&rows)? {
                if let Some(slot) = owner_of.get_mut(id) {
                    *slot = Some(owner);
                }
            }
            Ok(())
        })?;
        let owners: Vec<Option<pgrx::Uuid>> = canonical
            .iter()
            .map(|id| id.as_ref().and_then(|id| owner_of[id.as_bytes()]))
            .collect();
        // Not found: unbound if valid (it is then its own canonical form), an error if not.
        for position in checked_later {
            if let (None, Some(id)) = (owners[position], inputs[position]) {
                canonical_external_id(client, provider, id)?;
            }
        }
        Ok(owners)
    })
}

// `identity.resolve_many(provider, external_ids)`: one row per input, in input order, with the id
// as given and its user (NULL when unbound or when the input element is NULL).
//
// Written to the C calling convention instead of #[pg_extern], so its rows are returned from one
// call (see set_returning.rs), not one call per id. The symbol keeps the name pgrx gave it in
// 0.1.0, whose install script refers to it.
#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_resolve_many_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1_API
}

/// # Safety
/// Called by PostgreSQL only, through the SQL function below, with its two arguments.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn resolve_many_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: argument 0 is text and argument 1 is text[], as the SQL definition declares; both
    // live until the function returns.
    let (provider, ids) = unsafe {
        (
            pgrx::fcinfo::pg_getarg::<&str>(fcinfo, 0),
            pgrx::fcinfo::pg_getarg_datum(fcinfo, 1).map(|array| TextArray::read(array)),
        )
    };
    let resolved = required(provider, "provider").and_then(|provider| {
        let ids = required(ids, "external_ids")?;
        let owners = owners_in_order(provider, &ids)?;
        Ok((ids, owners))
    });
    let (ids, owners) = resolved.unwrap_or_else(|error| error.raise());
    // Each id is returned as the caller gave it: its own datum, which the tuplestore copies.
    let rows = ids
        .datums
        .iter()
        .zip(&ids.texts)
        .zip(owners)
        .map(|((&datum, text), owner)| [text.map(|_| datum), owner.into_datum()]);
    // SAFETY: rows of the two declared columns (text, uuid), built in this memory context.
    unsafe { return_rows(fcinfo, rows) }
}

extension_sql!(
    r#"
CREATE FUNCTION identity.resolve_many(provider text, external_ids text[])
RETURNS TABLE (external_id text, user_id uuid)
STABLE SECURITY DEFINER PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'resolve_many_wrapper';
"#,
    name = "resolve_many",
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::{error_of, sqlstate_of};
    use pgrx::prelude::*;

    const ALICE: &str = "00000000-0000-4000-8000-00000000a11c";
    const BOB: &str = "00000000-0000-4000-8000-000000000b0b";
    const WALLET: &str = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";

    fn create(user: &str, provider: &str, external_id: &str) -> (String, bool) {
        let (canonical, created): (Option<String>, Option<bool>) = Spi::get_two_with_args(
            "SELECT canonical_id, created FROM identity.create_binding($1::uuid, $2, $3)",
            &[user.into(), provider.into(), external_id.into()],
        )
        .unwrap();
        (canonical.unwrap(), created.unwrap())
    }

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    #[pg_test]
    fn a_new_binding_writes_the_binding_and_its_bind_event() {
        crate::testing::take_turns();
        assert_eq!(create(ALICE, "github", "583231"), ("583231".into(), true));
        assert_eq!(count("SELECT count(*) FROM identity.user_bindings"), 1);
        let event: (Option<String>, Option<pgrx::JsonB>) =
            Spi::get_two("SELECT event_type, payload FROM identity.identity_events").unwrap();
        assert_eq!(event.0.as_deref(), Some("bind"));
        let payload = event.1.unwrap().0;
        assert_eq!(payload["provider"], "github");
        assert_eq!(payload["external_id"], "583231");
        assert_eq!(payload["evidence"], serde_json::json!({}));
        let binding_id = count(
            "SELECT count(*) FROM identity.user_bindings b JOIN identity.identity_events e
                 ON e.payload->>'binding_id' = b.id::text",
        );
        assert_eq!(binding_id, 1);
    }

    #[pg_test]
    fn a_first_binding_starts_the_chain_and_the_next_one_follows_it() {
        crate::testing::take_turns();
        create(ALICE, "github", "1");
        create(ALICE, "discord", "2");
        let links = Spi::get_one::<String>(&format!(
            "SELECT string_agg(seq || ':' || (payload->>'provider') || ':' || (prev_hash IS NULL),
                               ' ' ORDER BY seq)
               FROM identity.identity_events WHERE user_id = '{ALICE}'"
        ));
        assert_eq!(links, Ok(Some("1:github:true 2:discord:false".into())));
        let head = count(&format!(
            "SELECT h.last_seq FROM identity.event_chain_heads h
               JOIN identity.identity_events e ON e.id = h.last_event_id AND e.hash = h.last_hash
              WHERE h.user_id = '{ALICE}'"
        ));
        assert_eq!(head, 2);
        let verified: Option<bool> = Spi::get_one(&format!(
            "SELECT ok FROM identity.verify_event_chain('{ALICE}')"
        ))
        .unwrap();
        assert_eq!(verified, Some(true));
    }

    #[pg_test]
    fn a_first_binding_of_an_id_bound_meanwhile_writes_nothing() {
        use crate::events::{insert_binding_with_event, IdInUse};
        use uuid::Uuid;
        crate::testing::take_turns();
        create(ALICE, "github", "1");
        let bob = Uuid::parse_str(BOB).unwrap();
        let binding_id = Uuid::now_v7();
        let payload = super::binding_payload(binding_id, "github", "1", &serde_json::json!({}));
        let created = Spi::connect_mut(|client| {
            insert_binding_with_event(
                client,
                binding_id,
                bob,
                "github",
                "1",
                &payload,
                IdInUse::Wait,
            )
        });
        assert_eq!(created, Ok(false));
        assert_eq!(count("SELECT count(*) FROM identity.user_bindings"), 1);
        assert_eq!(count("SELECT count(*) FROM identity.event_chain_heads"), 1);
        assert_eq!(count("SELECT count(*) FROM identity.identity_events"), 1);
    }

    #[pg_test]
    fn a_failed_event_append_leaves_no_binding_behind() {
        crate::testing::take_turns();
        create(ALICE, "github", "1");
        create(ALICE, "github", "2");
        // Wind the chain head back (as only a superuser could), so the next append for Alice
        // fails after her binding row was inserted.
        Spi::run(&format!(
            "UPDATE identity.event_chain_heads SET last_seq = 1 WHERE user_id = '{ALICE}'"
        ))
        .unwrap();
        let (sqlstate, message) = error_of(&format!(
            "SELECT identity.create_binding('{ALICE}', 'github', '3')"
        ));
        assert_eq!(sqlstate, "XX000");
        assert!(message.contains("identity.verify_event_chain"), "{message}");
        assert_eq!(
            count("SELECT count(*) FROM identity.user_bindings WHERE external_id = '3'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM identity.identity_events"), 2);
    }

    #[pg_test]
    fn a_missing_chain_head_fails_the_bind_and_writes_nothing() {
        crate::testing::take_turns();
        create(ALICE, "github", "1");
        // Remove Alice's chain head (as only a superuser could): her next bind would start a
        // chain that exists already.
        Spi::run(&format!(
            "DELETE FROM identity.event_chain_heads WHERE user_id = '{ALICE}'"
        ))
        .unwrap();
        let (sqlstate, message) = error_of(&format!(
            "SELECT identity.create_binding('{ALICE}', 'github', '2')"
        ));
        assert_eq!(sqlstate, "XX000", "{message}");
        assert!(
            message.contains(&format!("identity.verify_event_chain('{ALICE}')")),
            "{message}"
        );
        assert_eq!(count("SELECT count(*) FROM identity.user_bindings"), 1);
        assert_eq!(count("SELECT count(*) FROM identity.event_chain_heads"), 0);
        assert_eq!(count("SELECT count(*) FROM identity.identity_events"), 1);
    }

    #[pg_test]
    fn a_batch_bind_gives_each_row_the_outcome_bind_would() {
        use super::{bind_many, BatchOutcome::*};
        use uuid::Uuid;
        crate::testing::take_turns();
        create(ALICE, "github", "1");
        let (alice, bob) = (
            Uuid::parse_str(ALICE).unwrap(),
            Uuid::parse_str(BOB).unwrap(),
        );
        let carol = Uuid::parse_str("00000000-0000-4000-8000-00000000ca01").unwrap();
        let rows = [
            (alice, "1".to_string()), // already Alice's
            (bob, "1".to_string()),   // Alice's
            (bob, "2".to_string()),   // new
            (carol, "2".to_string()), // taken by the row before, in the same batch
            (carol, "3".to_string()), // new
        ];
        let evidence = serde_json::json!({"method": "test"});
        let outcomes =
            Spi::connect_mut(|client| bind_many(client, "github", &rows, &evidence)).unwrap();
        assert_eq!(
            outcomes,
            [
                Existing,
                BoundToAnotherUser,
                Created,
                BoundToAnotherUser,
                Created
            ]
        );
        let owners = Spi::get_one::<String>(
            "SELECT string_agg(external_id || '=' || right(user_id::text, 4), ' ' ORDER BY external_id)
               FROM identity.user_bindings",
        );
        assert_eq!(owners, Ok(Some("1=a11c 2=0b0b 3=ca01".into())));
        // One event per created binding, each naming its binding and the evidence.
        let evidenced = count(
            "SELECT count(*) FROM identity.user_bindings b JOIN identity.identity_events e
                 ON e.payload->>'binding_id' = b.id::text AND e.user_id = b.user_id
                AND e.payload->'evidence' = '{\"method\": \"test\"}'
                AND e.payload->>'external_id' = b.external_id",
        );
        assert_eq!(evidenced, 2);
        assert_eq!(count("SELECT count(*) FROM identity.identity_events"), 3);
        assert!(crate::testing::integrity_is_clean());
    }

    #[pg_test]
    fn re_binding_the_same_user_is_idempotent_and_writes_nothing() {
        crate::testing::take_turns();
        create(ALICE, "wallet", WALLET);
        let lower = WALLET.to_ascii_lowercase();
        assert_eq!(create(ALICE, "wallet", &lower), (WALLET.into(), false));
        assert_eq!(count("SELECT count(*) FROM identity.user_bindings"), 1);
        assert_eq!(count("SELECT count(*) FROM identity.identity_events"), 1);
    }

    #[pg_test]
    fn binding_an_id_owned_by_another_user_is_23505_and_never_names_the_owner() {
        crate::testing::take_turns();
        create(ALICE, "wallet", WALLET);
        let (sqlstate, message) = error_of(&format!(
            "SELECT identity.create_binding('{BOB}', 'wallet', '{}')",
            WALLET.to_ascii_lowercase()
        ));
        assert_eq!(sqlstate, "23505");
        assert!(message.contains(WALLET), "{message}");
        assert!(!message.contains(ALICE), "{message}");
        assert_eq!(count("SELECT count(*) FROM identity.identity_events"), 1);
        let owner =
            Spi::get_one::<pgrx::Uuid>(&format!("SELECT identity.resolve('wallet', '{WALLET}')"));
        assert_eq!(
            owner.unwrap().map(|u| u.to_string()),
            Some(ALICE.to_string())
        );
    }

    #[pg_test]
    fn the_same_number_under_two_providers_is_two_bindings() {
        crate::testing::take_turns();
        create(ALICE, "github", "42");
        create(BOB, "discord", "42");
        assert_eq!(count("SELECT count(*) FROM identity.user_bindings"), 2);
    }

    #[pg_test]
    fn bad_arguments_have_their_sqlstates_and_write_nothing() {
        crate::testing::take_turns();
        let cases = [
            ("SELECT identity.create_binding(NULL, 'github', '1')".to_string(), "22004"),
            (format!("SELECT identity.create_binding('{ALICE}', NULL, '1')"), "22004"),
            (format!("SELECT identity.create_binding('{ALICE}', 'github', NULL)"), "22004"),
            (format!("SELECT identity.create_binding('{ALICE}', 'github', '1', NULL)"), "22004"),
            (format!("SELECT identity.create_binding('{ALICE}', 'github', '1', '[1]')"), "22023"),
            (format!("SELECT identity.create_binding('{ALICE}', 'myspace', '1')"), "22023"),
            (format!("SELECT identity.create_binding('{ALICE}', 'github', '01')"), "22023"),
            (format!("SELECT identity.create_binding('{ALICE}', 'wallet', '0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed')"), "22023"),
        ];
        for (statement, expected) in cases {
            assert_eq!(sqlstate_of(&statement), expected, "{statement}");
        }
        assert_eq!(count("SELECT count(*) FROM identity.user_bindings"), 0);
        assert_eq!(count("SELECT count(*) FROM identity.identity_events"), 0);
    }

    #[pg_test]
    fn evidence_numbers_are_kept_digit_for_digit() {
        crate::testing::take_turns();
        Spi::run(&format!(
            "SELECT identity.create_binding('{ALICE}', 'discord', '80351110224678912',
                 '{{\"snowflake\": 80351110224678912123456789, \"ratio\": 1.50}}')"
        ))
        .unwrap();
        let kept = Spi::get_one::<String>(
            "SELECT payload->'evidence'->>'snowflake' || ' ' || (payload->'evidence'->>'ratio')
               FROM identity.identity_events",
        );
        assert_eq!(
            kept.unwrap().as_deref(),
            Some("80351110224678912123456789 1.50")
        );
    }

    #[pg_test]
    fn revoke_then_bind_moves_an_id_with_evidence_on_both_sides() {
        crate::testing::take_turns();
        create(ALICE, "github", "7");
        let revoked: (Option<pgrx::Uuid>, Option<pgrx::Uuid>) = Spi::get_two(
            "SELECT binding_id, user_id FROM identity.revoke_binding('github', '7', '{\"reason\": \"account closed\"}')",
        )
        .unwrap();
        assert_eq!(revoked.1.map(|u| u.to_string()), Some(ALICE.to_string()));
        assert_eq!(
            Spi::get_one::<pgrx::Uuid>("SELECT identity.resolve('github', '7')"),
            Ok(None)
        );
        assert_eq!(create(BOB, "github", "7"), ("7".into(), true));
        assert_eq!(
            count("SELECT count(*) FROM identity.identity_events WHERE event_type = 'revoke'"),
            1
        );
    }

    #[pg_test]
    fn revoking_an_unbound_id_is_p0002() {
        crate::testing::take_turns();
        assert_eq!(
            sqlstate_of("SELECT identity.revoke_binding('github', '7', '{}')"),
            "P0002"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.revoke_binding('github', '7', NULL)"),
            "22004"
        );
    }

    #[pg_test]
    fn merge_moves_every_binding_and_records_it_on_both_users() {
        crate::testing::take_turns();
        create(ALICE, "github", "1");
        create(ALICE, "discord", "2");
        create(BOB, "google", "bob-sub");
        let moved = Spi::get_one::<i32>(&format!(
            "SELECT identity.merge_users('{ALICE}', '{BOB}', '{{\"ticket\": \"SUP-1\"}}')"
        ));
        assert_eq!(moved, Ok(Some(2)));
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM identity.user_bindings WHERE user_id = '{BOB}'"
            )),
            3
        );
        let merges = count(&format!(
            "SELECT count(*) FROM identity.identity_events
              WHERE event_type = 'merge' AND jsonb_array_length(payload->'bindings') = 2
                AND payload->'evidence'->>'ticket' = 'SUP-1'
                AND ((user_id = '{ALICE}' AND payload->>'role' = 'from')
                  OR (user_id = '{BOB}' AND payload->>'role' = 'into'))"
        ));
        assert_eq!(merges, 2);
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT identity.merge_users('{BOB}', '{BOB}', '{{}}')"
            )),
            "22023"
        );
    }

    #[pg_test]
    fn resolve_canonicalizes_and_returns_null_when_unbound() {
        crate::testing::take_turns();
        create(ALICE, "wallet", WALLET);
        let found = Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT identity.resolve('wallet', $1)",
            &[WALLET.to_ascii_lowercase().as_str().into()],
        );
        assert_eq!(
            found.unwrap().map(|u| u.to_string()),
            Some(ALICE.to_string())
        );
        assert_eq!(
            Spi::get_one::<pgrx::Uuid>("SELECT identity.resolve('github', '1')"),
            Ok(None)
        );
        assert_eq!(
            sqlstate_of("SELECT identity.resolve('github', 'abc')"),
            "22023"
        );
    }

    #[pg_test]
    fn resolve_many_answers_every_input_in_order() {
        crate::testing::take_turns();
        create(ALICE, "github", "1");
        create(BOB, "github", "3");
        let rows = Spi::get_one::<String>(
            "SELECT string_agg(coalesce(external_id, '∅') || '=' || coalesce(user_id::text, '∅'), ',' ORDER BY n)
               FROM (SELECT r.*, row_number() OVER () AS n
                       FROM identity.resolve_many('github', ARRAY['3', '2', NULL, '1', '3']) r) x",
        );
        let expected = format!("3={BOB},2=∅,∅=∅,1={ALICE},3={BOB}");
        assert_eq!(rows.unwrap().as_deref(), Some(expected.as_str()));
        assert_eq!(
            sqlstate_of("SELECT * FROM identity.resolve_many(NULL, ARRAY['1'])"),
            "22004"
        );
        assert_eq!(
            sqlstate_of("SELECT * FROM identity.resolve_many('github', NULL)"),
            "22004"
        );
        assert_eq!(
            sqlstate_of("SELECT * FROM identity.resolve_many('github', ARRAY['x'])"),
            "22023"
        );
        // Its rows come from one call (materialize mode), in FROM and in a select list alike.
        let in_select_list = Spi::get_one::<String>(
            "SELECT string_agg((r).user_id::text, ',') FROM (SELECT identity.resolve_many('github', ARRAY['1', '1']) AS r) s",
        );
        assert_eq!(in_select_list, Ok(Some(format!("{ALICE},{ALICE}"))));
        // No ids, no rows; a two-dimensional array is read in storage order, like unnest.
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM identity.resolve_many('github', '{}'::text[])"
            ),
            Ok(Some(0))
        );
        let grid = Spi::get_one::<String>(
            "SELECT string_agg(coalesce(external_id, '∅') || '=' || coalesce(user_id::text, '∅'), ',' ORDER BY n)
               FROM (SELECT r.*, row_number() OVER () AS n
                       FROM identity.resolve_many('github', ARRAY[['1', '2'], [NULL, '3']]) r) x",
        );
        assert_eq!(grid, Ok(Some(format!("1={ALICE},2=∅,∅=∅,3={BOB}"))));
        // An array computed in the same query (array_append's result here) arrives expanded,
        // not as one flat value, and is read all the same.
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(r.user_id) FROM generate_series(1, 1) g,
                        identity.resolve_many('github', array_append(ARRAY[g::text, '2'], '3')) r"
            ),
            Ok(Some(2))
        );
    }

    #[pg_test]
    fn resolve_many_finds_wallets_however_spelled_and_refuses_bad_checksums() {
        crate::testing::take_turns();
        create(ALICE, "wallet", WALLET);
        let unbound = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"; // valid EIP-55, not bound
        let lowercase = WALLET.to_ascii_lowercase();
        let found = Spi::get_one::<String>(&format!(
            "SELECT string_agg(external_id || '=' || coalesce(user_id::text, '∅'), ',' ORDER BY n)
               FROM (SELECT r.*, row_number() OVER () AS n
                       FROM identity.resolve_many('wallet', ARRAY['{WALLET}', '{lowercase}', '{unbound}']) r) x",
        ));
        // Each id comes back as given, not in its canonical form.
        assert_eq!(
            found,
            Ok(Some(format!(
                "{WALLET}={ALICE},{lowercase}={ALICE},{unbound}=∅"
            )))
        );
        // One letter's case flipped: spelled like a checksummed address, but the checksum fails.
        let bad_checksum = WALLET.replacen("aA", "Aa", 1);
        assert_ne!(bad_checksum, WALLET);
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT * FROM identity.resolve_many('wallet', ARRAY['{bad_checksum}'])"
            )),
            "22023"
        );
    }

    /// Runs `query` under EXPLAIN ANALYZE with parallel query made free and the leader kept out
    /// of the scan, so every row it returns was found by a parallel worker: the Gather's workers
    /// launched and rows returned.
    fn found_by_parallel_workers(query: &str) -> (i64, i64) {
        Spi::run(
            "SET LOCAL parallel_setup_cost = 0;
             SET LOCAL parallel_tuple_cost = 0;
             SET LOCAL min_parallel_table_scan_size = 0;
             SET LOCAL max_parallel_workers_per_gather = 2;
             SET LOCAL parallel_leader_participation = off",
        )
        .unwrap();
        let explain = format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, FORMAT JSON) {query}");
        let plan = Spi::get_one::<pgrx::Json>(&explain).unwrap().unwrap().0;
        let gather = &plan[0]["Plan"];
        assert_eq!(gather["Node Type"], "Gather", "not a parallel plan: {plan}");
        // PostgreSQL 18 reports actual rows with two decimals (3.00), earlier versions as integers.
        let field = |name: &str| gather[name].as_f64().expect("the plan reports it").round() as i64;
        (field("Workers Launched"), field("Actual Rows"))
    }

    #[pg_test]
    fn the_parallel_safe_look_ups_see_this_transactions_bindings_from_parallel_workers() {
        crate::testing::take_turns();
        // Written in this transaction, so a worker reads them through the leader's transaction
        // (the look-up's path for a transaction that has written).
        create(ALICE, "github", "7");
        create(BOB, "github", "9");
        Spi::run(
            "SELECT identity.register_provider('team', '^[a-z]+$');
             CREATE TABLE probe AS SELECT g::text AS id, chr(97 + g % 26) || 'x' AS name
                                     FROM generate_series(1, 1000) g;
             ANALYZE probe",
        )
        .unwrap();
        create(ALICE, "team", "hx");
        let bound_github_ids = 2;
        let probes_named_hx = count("SELECT count(*) FROM probe WHERE name = 'hx'");
        for (query, expected) in [
            (
                "SELECT id FROM probe WHERE identity.resolve('github', id) IS NOT NULL",
                bound_github_ids,
            ),
            (
                "SELECT p.id FROM probe p, identity.resolve_many('github', ARRAY[p.id]) r
                  WHERE r.user_id IS NOT NULL",
                bound_github_ids,
            ),
            // A custom provider's pattern is read from identity.providers, through SPI.
            (
                "SELECT id FROM probe WHERE identity.resolve('team', name) IS NOT NULL",
                probes_named_hx,
            ),
            (
                "SELECT id FROM probe WHERE identity.canonical_external_id('team', name) = 'hx'",
                probes_named_hx,
            ),
        ] {
            let (workers, rows) = found_by_parallel_workers(query);
            assert!(workers > 0, "no parallel worker was launched for {query}");
            assert_eq!(rows, expected, "{query}");
        }
    }

    #[pg_test]
    fn a_public_function_shadowing_a_builtin_changes_nothing() {
        crate::testing::take_turns();
        // An attacker who can create objects in public tries to hijack what the functions call.
        Spi::run(
            "CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$;
             CREATE FUNCTION public.texteq_evil(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
             CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.texteq_evil);
             CREATE TABLE public.user_bindings (LIKE identity.user_bindings);
             SET LOCAL search_path = public, pg_catalog;",
        )
        .unwrap();
        create(ALICE, "github", "1");
        create(BOB, "github", "2");
        let owner = Spi::get_one::<pgrx::Uuid>("SELECT identity.resolve('github', '2')");
        assert_eq!(owner.unwrap().map(|u| u.to_string()), Some(BOB.to_string()));
        assert_eq!(count("SELECT count(*) FROM public.user_bindings"), 0);
        assert_eq!(
            count("SELECT count(*) FROM identity.user_bindings WHERE created_at > 'epoch'::timestamptz + interval '1 day'"),
            2
        );
    }
}
