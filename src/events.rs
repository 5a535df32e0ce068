//! The append-only event log: every bind, revoke and merge with its evidence, in one keccak-256
//! hash chain per user.
//!
//! Each event commits to the previous event of the same user (`prev_hash`) and to its own
//! position (`seq`), so an edited, removed or reordered event breaks the chain. The last link of
//! every chain is also kept in `identity.event_chain_heads`, so removing a chain's newest events
//! is found too. The head row is the per-user lock as well: appends for one user serialize,
//! appends for different users never wait for each other.

use crate::binding_index::{claim_on, Claim};
use crate::errors::IdentityError;
use crate::set_returning::{RowSink, V1_API};
use crate::statements::Statement;
use crate::subtransaction::report_of;
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::{
    self, BYTEAARRAYOID, BYTEAOID, INT8ARRAYOID, INT8OID, JSONBARRAYOID, JSONBOID, TEXTOID,
    TIMESTAMPTZOID, UUIDARRAYOID, UUIDOID,
};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData, SpiTupleTable};
use pgrx::{PgSqlErrorCode, PgTryBuilder};
use sha3::{Digest, Keccak256};
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::panic::{AssertUnwindSafe, RefUnwindSafe};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Bind,
    Revoke,
    Merge,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Bind => "bind",
            EventType::Revoke => "revoke",
            EventType::Merge => "merge",
        }
    }
}

/// Domain separation: a chain hash can never be mistaken for a hash of anything else, and a
/// future link format gets a tag of its own.
const CHAIN_HASH_TAG: &[u8] = b"identity_bindings/event/v1\0";

/// Everything one link of a chain commits to.
#[derive(Debug, Clone)]
pub struct ChainLink<'a> {
    /// The previous event's hash; `None` for a user's first event.
    pub prev_hash: Option<&'a [u8]>,
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub seq: i64,
    /// PostgreSQL's timestamptz value: microseconds since 2000-01-01 00:00 UTC.
    pub created_at: i64,
    pub event_type: &'a str,
    /// The payload exactly as PostgreSQL prints the stored jsonb.
    pub payload: &'a str,
}

impl ChainLink<'_> {
    /// keccak256(tag ‖ prev ‖ id ‖ user ‖ seq ‖ created_at ‖ len‖type ‖ len‖payload), integers
    /// big-endian, a zero hash before the first event, lengths so no field can bleed into another.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Keccak256::new();
        hasher.update(CHAIN_HASH_TAG);
        hasher.update(self.prev_hash.unwrap_or(&[0u8; 32]));
        hasher.update(self.event_id.as_bytes());
        hasher.update(self.user_id.as_bytes());
        hasher.update(self.seq.to_be_bytes());
        hasher.update(self.created_at.to_be_bytes());
        for field in [self.event_type.as_bytes(), self.payload.as_bytes()] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        hasher.finalize().into()
    }
}

/// One stored event, as the verifier reads it back.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: Uuid,
    pub seq: i64,
    pub created_at: i64,
    pub event_type: String,
    pub payload: String,
    pub prev_hash: Option<Vec<u8>>,
    pub hash: Vec<u8>,
}

/// The recorded end of a user's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub last_seq: i64,
    pub last_hash: Vec<u8>,
    pub last_event_id: Uuid,
}

/// The verdict on one user's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub user_id: Uuid,
    pub events: i64,
    pub ok: bool,
    /// The first event that does not verify. For a chain whose newest events were removed, the
    /// id the head records (the event that is gone); `None` when there is no such event to name.
    pub first_bad_event: Option<Uuid>,
}

/// Walks one user's events in `seq` order and checks every link.
pub struct ChainVerifier {
    user_id: Uuid,
    events: i64,
    previous: Option<(i64, Vec<u8>, Uuid)>,
    first_bad_event: Option<Uuid>,
    broken: bool,
}

impl ChainVerifier {
    pub fn new(user_id: Uuid) -> Self {
        ChainVerifier {
            user_id,
            events: 0,
            previous: None,
            first_bad_event: None,
            broken: false,
        }
    }

    pub fn observe(&mut self, event: StoredEvent) {
        self.events += 1;
        if !self.broken && !self.links(&event) {
            self.broken = true;
            self.first_bad_event = Some(event.id);
        }
        self.previous = Some((event.seq, event.hash, event.id));
    }

    fn links(&self, event: &StoredEvent) -> bool {
        let (expected_seq, expected_prev) = match &self.previous {
            None => (1, None),
            Some((seq, hash, _)) => (seq + 1, Some(hash.as_slice())),
        };
        let recomputed = ChainLink {
            prev_hash: expected_prev,
            event_id: event.id,
            user_id: self.user_id,
            seq: event.seq,
            created_at: event.created_at,
            event_type: &event.event_type,
            payload: &event.payload,
        }
        .hash();
        event.seq == expected_seq
            && event.prev_hash.as_deref() == expected_prev
            && event.hash == recomputed
    }

    /// The verdict, given the chain's recorded head (`None` when no head row exists).
    pub fn finish(mut self, head: Option<&ChainHead>) -> ChainReport {
        if !self.broken {
            let last = self
                .previous
                .as_ref()
                .map(|(seq, hash, id)| (*seq, hash.as_slice(), *id));
            let head_matches = match (head, last) {
                (None, None) => true,
                (Some(h), Some((seq, hash, id))) => {
                    h.last_seq == seq && h.last_hash == hash && h.last_event_id == id
                }
                _ => false,
            };
            if !head_matches {
                self.broken = true;
                self.first_bad_event = head.map(|h| h.last_event_id);
            }
        }
        ChainReport {
            user_id: self.user_id,
            events: self.events,
            ok: !self.broken,
            first_bad_event: self.first_bad_event,
        }
    }
}

/// `WITH RECURSIVE owners (binding_id, user_id) AS (...) <query>`: each binding `<bindings>`
/// returns (its id and user_id) with every user it has belonged to. A binding's bind event is in
/// the chain of the user who owned it when it was made: its owner now, or a user it was merged
/// from, which the merge event appended to the chain it moved into names. Those chains are read
/// through their (user_id, seq) index; events carry no index on a binding id. A binding moved
/// without a merge (by hand, behind the functions' back) has no bind event among its owners.
macro_rules! with_binding_owners {
    ($bindings:literal, $query:literal) => {
        concat!(
            "WITH RECURSIVE owners (binding_id, user_id) AS (",
            $bindings,
            "
               UNION
                 SELECT o.binding_id, (m.payload->>'from_user')::uuid
                   FROM owners o JOIN identity.identity_events m ON m.user_id = o.user_id
                  WHERE m.event_type = 'merge' AND m.payload->>'role' = 'into'
                    AND m.payload->'bindings'
                        @> jsonb_build_array(jsonb_build_object('binding_id', o.binding_id::text))
             ), bind_events AS (
                 SELECT o.binding_id, e.payload->'evidence' AS evidence, e.created_at
                   FROM owners o JOIN identity.identity_events e ON e.user_id = o.user_id
                  WHERE e.event_type = 'bind' AND e.payload->>'binding_id' = o.binding_id::text
             ) ",
            $query
        )
    };
}
pub(crate) use with_binding_owners;

static LOCK_HEAD: Statement = Statement::write(
    "SELECT h.last_seq, h.last_hash FROM identity.event_chain_heads h
      WHERE h.user_id = $1 FOR UPDATE",
    &[UUIDOID],
);

/// `WITH head AS (<head change>), event AS (...) SELECT FROM head`: the event ($1..$8 as
/// EVENT_PARAMETERS) is inserted only if the head change returned its user; one row when it did.
/// The event is inserted without ON CONFLICT (see `run_linking`).
macro_rules! with_head_insert_event {
    ($head_change:literal) => {
        concat!(
            "WITH head AS (",
            $head_change,
            "),
             event AS (
                 INSERT INTO identity.identity_events
                        (id, user_id, seq, event_type, payload, created_at, prev_hash, hash)
                 SELECT $1, head.user_id, $3, $4, $5, $6, $7, $8 FROM head)
             SELECT FROM head"
        )
    };
}

// The head of a new chain and its first event, in one statement. No head written: another
// transaction started this chain meanwhile.
static START_CHAIN_WITH_EVENT: Statement = Statement::write(
    with_head_insert_event!(
        "INSERT INTO identity.event_chain_heads (user_id, last_seq, last_hash, last_event_id)
         VALUES ($2, $3, $8, $1) ON CONFLICT (user_id) DO NOTHING RETURNING user_id"
    ),
    EVENT_PARAMETERS,
);

// The head moved to the new event, and the event, in one statement (the head is locked).
static ADVANCE_CHAIN_WITH_EVENT: Statement = Statement::write(
    with_head_insert_event!(
        "UPDATE identity.event_chain_heads SET last_seq = $3, last_hash = $8, last_event_id = $1
          WHERE user_id = $2 RETURNING user_id"
    ),
    EVENT_PARAMETERS,
);

// A new binding, the head of its user's new chain and the chain's first event (a bind), in one
// statement: the first link's hash needs nothing from the database. The head is written only
// after the binding, the event only after the head (and without ON CONFLICT, see `run_linking`).
// No row: the binding was not written. One row: whether the head (and so the event) was.
static BIND_STARTING_CHAIN: Statement = Statement::write(
    "WITH binding AS (
         INSERT INTO identity.user_bindings (id, user_id, provider, external_id)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (provider, external_id) DO NOTHING RETURNING user_id),
     head AS (
         INSERT INTO identity.event_chain_heads (user_id, last_seq, last_hash, last_event_id)
         SELECT binding.user_id, 1, $8, $5 FROM binding
         ON CONFLICT (user_id) DO NOTHING RETURNING user_id),
     event AS (
         INSERT INTO identity.identity_events
                (id, user_id, seq, event_type, payload, created_at, prev_hash, hash)
         SELECT $5, head.user_id, 1, 'bind', $6, $7, NULL, $8 FROM head)
     SELECT head.user_id IS NOT NULL FROM binding LEFT JOIN head ON true",
    &[
        UUIDOID,
        UUIDOID,
        TEXTOID,
        TEXTOID,
        UUIDOID,
        JSONBOID,
        TIMESTAMPTZOID,
        BYTEAOID,
    ],
);

/// What writing a binding does when another transaction that has not finished is binding or
/// revoking the same id: wait for it, or give up at once with `IdInUse` (55P03), as a pass of
/// the binding queue does. A pass keeps the chains of the jobs it ran locked, and that
/// transaction may be waiting for one of them: waiting for it would be a deadlock, whose victim
/// could be the application's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdInUse {
    Wait,
    GiveUp,
}

/// Inserts binding `binding_id` of `(provider, external_id)` to `user_id` with its bind event
/// (`payload`). `false`: the id was bound meanwhile, and nothing is written.
///
/// It is tried as the user's first binding: one statement writes the binding, the chain head and
/// the first event, whose hash needs nothing from the database (where binding and then appending
/// take three). For a user who has a chain already, or whose chain another transaction started
/// meanwhile, that statement writes the binding only, and the event, its payload already parsed,
/// is appended to the chain after it.
pub fn insert_binding_with_event(
    client: &mut SpiClient<'_>,
    binding_id: Uuid,
    user_id: Uuid,
    provider: &str,
    external_id: &str,
    payload: &serde_json::Value,
    id_in_use: IdInUse,
) -> Result<bool, IdentityError> {
    let created_at = transaction_started();
    let link = PendingLink::after(
        None,
        user_id,
        EventType::Bind,
        created_at,
        jsonb_with_text(payload),
    );
    if id_in_use == IdInUse::GiveUp {
        if !insert_binding_unless_in_use(client, binding_id, user_id, provider, external_id)? {
            return Ok(false);
        }
        append_parsed(client, user_id, EventType::Bind, link.payload, None)?;
        return Ok(true);
    }
    // SAFETY: the payload datum is a jsonb datum built in this memory context.
    let payload_arg = unsafe { DatumWithOid::new(link.payload.0, JSONBOID) };
    let written = run_linking(
        &BIND_STARTING_CHAIN,
        client,
        &[
            pg_uuid(binding_id).into(),
            pg_uuid(user_id).into(),
            provider.into(),
            external_id.into(),
            pg_uuid(link.event_id).into(),
            payload_arg,
            timestamptz(created_at)?.into(),
            link.hash.as_slice().into(),
        ],
        || head_behind_its_events(user_id),
    )?;
    if written.is_empty() {
        return Ok(false);
    }
    let chain_started = written.first().get::<bool>(1)?.unwrap_or(false);
    if !chain_started {
        append_parsed(client, user_id, EventType::Bind, link.payload, None)?;
    }
    Ok(true)
}

static INSERT_BINDING: Statement = Statement::write(
    "INSERT INTO identity.user_bindings (id, user_id, provider, external_id)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (provider, external_id) DO NOTHING RETURNING id",
    &[UUIDOID, UUIDOID, TEXTOID, TEXTOID],
);

/// The binding alone, unless another transaction that has not finished is writing the same id
/// (`IdInUse::GiveUp`): then `IdInUse`, without waiting for it. Its event is appended after it,
/// as for a user who has a chain. The look (the unique check's dirty snapshot) and the insert
/// are two steps: a transaction that writes the id in the instant between them is still waited
/// for.
fn insert_binding_unless_in_use(
    client: &mut SpiClient<'_>,
    binding_id: Uuid,
    user_id: Uuid,
    provider: &str,
    external_id: &str,
) -> Result<bool, IdentityError> {
    if claim_on(provider, external_id)? == Some(Claim::InProgress) {
        return Err(IdentityError::IdInUse {
            provider: provider.to_owned(),
            external_id: external_id.to_owned(),
        });
    }
    let args = [
        pg_uuid(binding_id).into(),
        pg_uuid(user_id).into(),
        provider.into(),
        external_id.into(),
    ];
    Ok(!INSERT_BINDING.run(client, &args)?.is_empty())
}

/// Runs `statement`, which inserts events. It inserts them without ON CONFLICT: a speculative
/// insertion would cost a new binding 6% (BENCHMARKS.md), and it can never be needed. Every event
/// is inserted under its chain's head, locked or just created, so its (user_id, seq) is free
/// unless the head lags behind the log, which only a hand-edited head can make it do. That unique
/// violation is raised as the internal error `behind` says, never as the 23505 that callers of
/// create_binding read as "bound to another user".
fn run_linking<'conn>(
    statement: &'static Statement,
    client: &mut SpiClient<'conn>,
    args: &[DatumWithOid<'_>],
    behind: impl Fn() -> IdentityError + RefUnwindSafe,
) -> Result<SpiTupleTable<'conn>, IdentityError> {
    PgTryBuilder::new(AssertUnwindSafe(|| statement.run(client, args)))
        .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, |caught| {
            if violates(&caught, "identity_events_user_seq_key") {
                behind().raise()
            }
            caught.rethrow()
        })
        .execute()
        .map_err(IdentityError::from)
}

/// Whether `caught` names `constraint` (in any language of lc_messages: the name is quoted as is).
fn violates(caught: &CaughtError, constraint: &str) -> bool {
    report_of(caught).message().contains(constraint)
}

fn head_behind_its_events(user_id: Uuid) -> IdentityError {
    IdentityError::Internal(format!(
        "the event chain head of user {user_id} is behind its events: run identity.verify_event_chain('{user_id}')"
    ))
}

/// id, user_id, seq, event_type, payload, created_at, prev_hash, hash.
const EVENT_PARAMETERS: &[pg_sys::Oid] = &[
    UUIDOID,
    UUIDOID,
    INT8OID,
    TEXTOID,
    JSONBOID,
    TIMESTAMPTZOID,
    BYTEAOID,
    BYTEAOID,
];

/// A payload as a jsonb datum, with the text PostgreSQL prints for it: the hash commits to that
/// text, so the verifier can recompute it from `payload::text` byte for byte. The parser's and
/// printer's work space lives in a context of its own, freed at once: a batch of ten thousand
/// payloads keeps only their datums, not ten thousand parses' garbage. (It is made by hand, not
/// by pgrx's `PgMemoryContexts::new`, which copies the context's name into the caller's context
/// on every call: ten thousand names a batch would keep.)
fn jsonb_with_text(payload: &serde_json::Value) -> (pg_sys::Datum, String) {
    let json = CString::new(payload.to_string()).expect("serialized JSON escapes every NUL");
    // SAFETY: jsonb_in takes one cstring and returns a jsonb datum in the current memory context
    // (the scratch one); jsonb_out takes that datum and returns a cstring there too. The datum is
    // copied into the caller's context before the scratch context is deleted. Should either
    // function raise, the scratch context, a child of the caller's, goes with the caller's.
    unsafe {
        let caller = pg_sys::CurrentMemoryContext;
        let scratch = pg_sys::AllocSetContextCreateExtended(
            caller,
            c"identity_bindings payload".as_ptr(),
            pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
            pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        pg_sys::MemoryContextSwitchTo(scratch);
        let parsed =
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(json.as_ptr().into())])
                .expect("jsonb_in never returns NULL");
        let text = pgrx::direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(parsed)])
            .expect("jsonb_out never returns NULL")
            .to_string_lossy()
            .into_owned();
        pg_sys::MemoryContextSwitchTo(caller);
        // A fresh jsonb datum is never toasted: the copy is its whole varlena.
        let datum = pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(
            parsed.cast_mut_ptr::<pg_sys::varlena>(),
        ));
        pg_sys::MemoryContextDelete(scratch);
        (datum, text)
    }
}

/// A jsonb[] argument made of jsonb datums built in this memory context.
fn jsonb_array(mut elements: Vec<pg_sys::Datum>) -> DatumWithOid<'static> {
    let count = i32::try_from(elements.len()).expect("a batch holds fewer than 2^31 events");
    // SAFETY: every element is a jsonb datum (varlena, int-aligned), alive in the current memory
    // context as the array built here is.
    unsafe {
        let array = pg_sys::construct_array(
            elements.as_mut_ptr(),
            count,
            JSONBOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        );
        DatumWithOid::new(pg_sys::Datum::from(array), JSONBARRAYOID)
    }
}

pub fn pg_uuid(id: Uuid) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*id.as_bytes())
}

pub fn rust_uuid(id: pgrx::Uuid) -> Uuid {
    Uuid::from_bytes(*id.as_bytes())
}

/// The end of a user's chain, locked by the caller: (last seq, last hash); `None` when the user
/// has no chain yet.
pub type ChainEnd = Option<(i64, Vec<u8>)>;

/// Appends one event to `user_id`'s chain and returns its id, holding the chain's head row
/// lock until the transaction ends.
fn append(
    client: &mut SpiClient<'_>,
    user_id: Uuid,
    event_type: EventType,
    payload: &serde_json::Value,
) -> Result<Uuid, IdentityError> {
    append_parsed(client, user_id, event_type, jsonb_with_text(payload), None)
}

/// `append`, for a chain the caller locked with `lock_chains`: the end read when it was locked
/// is where the event goes, without reading it again (once per user: a second event re-reads).
pub fn append_to_locked(
    client: &mut SpiClient<'_>,
    chains: &mut LockedChains,
    user_id: Uuid,
    event_type: EventType,
    payload: &serde_json::Value,
) -> Result<Uuid, IdentityError> {
    let locked_end = chains.ends.remove(&user_id);
    append_parsed(
        client,
        user_id,
        event_type,
        jsonb_with_text(payload),
        locked_end,
    )
}

/// `append`, for a payload already made a jsonb datum with its text (`jsonb_with_text`), after
/// `locked_end` when the caller holds the chain locked since reading it.
fn append_parsed(
    client: &mut SpiClient<'_>,
    user_id: Uuid,
    event_type: EventType,
    mut payload: (pg_sys::Datum, String),
    mut locked_end: Option<ChainEnd>,
) -> Result<Uuid, IdentityError> {
    let created_at = transaction_started();
    // A user's first event creates the head row; a concurrent first event waits on that insert
    // and then, on its fresh snapshot, finds and locks the row. Two rounds always suffice under
    // READ COMMITTED; under REPEATABLE READ PostgreSQL itself raises 40001 instead. (A chain that
    // had no head when the caller locked it may have been started since: the first round then
    // finds the head written, and the second reads it.)
    for _ in 0..2 {
        let end = match locked_end.take() {
            Some(end) => end,
            None => lock_chain_end(client, user_id)?,
        };
        let link = PendingLink::after(end, user_id, event_type, created_at, payload);
        if write_link(client, event_type, created_at, &link)? {
            return Ok(link.event_id);
        }
        payload = link.payload;
    }
    Err(IdentityError::ChainAppendConflict)
}

fn lock_chain_end(client: &mut SpiClient<'_>, user_id: Uuid) -> Result<ChainEnd, IdentityError> {
    let head = LOCK_HEAD.run(client, &[pg_uuid(user_id).into()])?;
    if head.is_empty() {
        return Ok(None);
    }
    let head = head.first();
    let last_seq = head.get::<i64>(1)?.ok_or_else(|| corrupt_head(user_id))?;
    let last_hash = head
        .get::<Vec<u8>>(2)?
        .ok_or_else(|| corrupt_head(user_id))?;
    Ok(Some((last_seq, last_hash)))
}

/// Writes `link` and moves its chain's head to it. `false` when the link starts a chain that
/// another transaction has started since.
fn write_link(
    client: &mut SpiClient<'_>,
    event_type: EventType,
    created_at: pg_sys::TimestampTz,
    link: &PendingLink,
) -> Result<bool, IdentityError> {
    let starts_chain = link.seq == 1;
    let statement = if starts_chain {
        &START_CHAIN_WITH_EVENT
    } else {
        &ADVANCE_CHAIN_WITH_EVENT
    };
    // SAFETY: the payload datum is a jsonb datum built in this memory context.
    let payload_arg = unsafe { DatumWithOid::new(link.payload.0, JSONBOID) };
    let user_id = link.user_id;
    let written = run_linking(
        statement,
        client,
        &[
            pg_uuid(link.event_id).into(),
            pg_uuid(user_id).into(),
            link.seq.into(),
            event_type.as_str().into(),
            payload_arg,
            timestamptz(created_at)?.into(),
            link.prev_hash.as_deref().into(),
            link.hash.as_slice().into(),
        ],
        || head_behind_its_events(user_id),
    )?;
    match (!written.is_empty(), starts_chain) {
        (true, _) => Ok(true),
        (false, true) => Ok(false),
        (false, false) => Err(IdentityError::Internal(format!(
            "event chain head of user {user_id} vanished while locked"
        ))),
    }
}

/// The start of the current transaction: every event it appends carries this time.
fn transaction_started() -> pg_sys::TimestampTz {
    // SAFETY: reads a backend-local timestamp; no preconditions.
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

fn timestamptz(at: pg_sys::TimestampTz) -> Result<TimestampWithTimeZone, IdentityError> {
    TimestampWithTimeZone::try_from(at)
        .map_err(|e| IdentityError::Internal(format!("transaction timestamp: {e}")))
}

static LOCK_HEADS: Statement = Statement::write(
    "SELECT h.user_id, h.last_seq, h.last_hash FROM identity.event_chain_heads h
      WHERE h.user_id = ANY ($1) ORDER BY h.user_id FOR UPDATE",
    &[UUIDARRAYOID],
);

static START_CHAINS: Statement = Statement::write(
    "INSERT INTO identity.event_chain_heads (user_id, last_seq, last_hash, last_event_id)
     SELECT n.user_id, 1, n.hash, n.event_id
       FROM unnest($1::uuid[], $2::bytea[], $3::uuid[]) AS n (user_id, hash, event_id)
     ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
    &[UUIDARRAYOID, BYTEAARRAYOID, UUIDARRAYOID],
);

static ADVANCE_HEADS: Statement = Statement::write(
    "UPDATE identity.event_chain_heads h
        SET last_seq = n.seq, last_hash = n.hash, last_event_id = n.event_id
       FROM unnest($1::uuid[], $2::int8[], $3::bytea[], $4::uuid[]) AS n (user_id, seq, hash, event_id)
      WHERE h.user_id = n.user_id",
    &[UUIDARRAYOID, INT8ARRAYOID, BYTEAARRAYOID, UUIDARRAYOID],
);

static INSERT_EVENTS: Statement = Statement::write(
    "INSERT INTO identity.identity_events
            (id, user_id, seq, event_type, payload, created_at, prev_hash, hash)
     SELECT n.id, n.user_id, n.seq, $1, n.payload, $2, n.prev_hash, n.hash
       FROM unnest($3::uuid[], $4::uuid[], $5::int8[], $6::jsonb[], $7::bytea[], $8::bytea[])
            AS n (id, user_id, seq, payload, prev_hash, hash)",
    &[
        TEXTOID,
        TIMESTAMPTZOID,
        UUIDARRAYOID,
        UUIDARRAYOID,
        INT8ARRAYOID,
        JSONBARRAYOID,
        BYTEAARRAYOID,
        BYTEAARRAYOID,
    ],
);

/// One event linked to its chain and ready to write: the one place a link's hash is computed.
struct PendingLink {
    event_id: Uuid,
    user_id: Uuid,
    seq: i64,
    /// The payload as a jsonb datum, and the text the hash commits to.
    payload: (pg_sys::Datum, String),
    prev_hash: Option<Vec<u8>>,
    hash: [u8; 32],
}

impl PendingLink {
    /// A new event of `user_id`, linked after `end` (`None`: it starts the chain).
    fn after(
        end: ChainEnd,
        user_id: Uuid,
        event_type: EventType,
        created_at: pg_sys::TimestampTz,
        payload: (pg_sys::Datum, String),
    ) -> Self {
        let mut link = PendingLink {
            event_id: Uuid::now_v7(),
            user_id,
            seq: 1,
            payload,
            prev_hash: None,
            hash: [0; 32],
        };
        link.follow(end, event_type, created_at);
        link
    }

    /// Links the event after `end` (`None`: as the chain's first).
    fn follow(&mut self, end: ChainEnd, event_type: EventType, created_at: pg_sys::TimestampTz) {
        (self.seq, self.prev_hash) = match end {
            Some((last_seq, last_hash)) => (last_seq + 1, Some(last_hash)),
            None => (1, None),
        };
        self.hash = ChainLink {
            prev_hash: self.prev_hash.as_deref(),
            event_id: self.event_id,
            user_id: self.user_id,
            seq: self.seq,
            created_at,
            event_type: event_type.as_str(),
            payload: &self.payload.1,
        }
        .hash();
    }
}

/// Appends one event per `(user, payload)` with a handful of statements for the whole set, where
/// `append` takes four per event: for batches (the backfill). The chains and their heads end up
/// exactly as if each event had been appended with `append`, in the order given.
pub fn append_many(
    client: &mut SpiClient<'_>,
    event_type: EventType,
    events: &[(Uuid, serde_json::Value)],
) -> Result<(), IdentityError> {
    // Each user's first event goes in bulk; a second one must link to it, so it follows singly.
    let mut seen = HashSet::with_capacity(events.len());
    let (mut bulk, mut later): (Vec<_>, Vec<_>) =
        events.iter().partition(|(user, _)| seen.insert(*user));
    // Heads are started and locked in user order, so concurrent batches cannot deadlock.
    bulk.sort_by_key(|(user, _)| *user);
    let created_at = transaction_started();
    // Most events of a batch start their user's chain: try that first, then lock the heads of
    // the chains that exist and link those events after them.
    let mut links: Vec<PendingLink> = bulk
        .iter()
        .map(|(user, payload)| {
            PendingLink::after(
                None,
                *user,
                event_type,
                created_at,
                jsonb_with_text(payload),
            )
        })
        .collect();
    let started = start_chains(client, &links)?;
    let continuing: Vec<Uuid> = links
        .iter()
        .map(|link| link.user_id)
        .filter(|user| !started.contains(user))
        .collect();
    let mut heads = lock_heads(client, continuing)?;
    let mut vanished = Vec::new();
    links.retain_mut(|link| {
        if started.contains(&link.user_id) {
            return true;
        }
        match heads.remove(&link.user_id) {
            Some(head) => {
                link.follow(Some(head), event_type, created_at);
                true
            }
            None => {
                vanished.push(link.user_id);
                false
            }
        }
    });
    advance_heads(client, &links)?;
    insert_events(client, event_type, created_at, &links)?;
    // A head that conflicted but was gone when locked (only a manual DELETE does that): singly.
    let vanished = bulk
        .iter()
        .copied()
        .filter(|(user, _)| vanished.contains(user));
    for (user_id, payload) in vanished.chain(later.drain(..)) {
        append(client, *user_id, event_type, payload)?;
    }
    Ok(())
}

type LockedHeads = HashMap<Uuid, (i64, Vec<u8>)>;

/// Chains locked by `lock_chains`, with the ends they had when locked, for `append_to_locked`.
pub struct LockedChains {
    /// Every user asked for, with their chain's end; `None`: they had no chain to lock.
    ends: HashMap<Uuid, ChainEnd>,
}

/// Locks the chains of `users` (a few) that exist until the transaction ends, in user order, so
/// two callers locking overlapping sets cannot deadlock. An append to one of them that was under
/// way has committed by the time this returns, so under READ COMMITTED the caller's next
/// statement sees what it wrote; later appends wait for this transaction.
///
/// One statement per user, not `lock_heads`' one for all: PostgreSQL plans that one anew on
/// every execution, about 78,000 instructions, because its generic plan, which assumes an array
/// of ten users and a sort, always costs more than a custom plan for one or two.
pub fn lock_chains(
    client: &mut SpiClient<'_>,
    users: &[Uuid],
) -> Result<LockedChains, IdentityError> {
    let mut in_order = users.to_vec();
    in_order.sort();
    in_order.dedup();
    let mut ends = HashMap::with_capacity(in_order.len());
    for user_id in in_order {
        ends.insert(user_id, lock_chain_end(client, user_id)?);
    }
    Ok(LockedChains { ends })
}

/// `lock_chains` for a batch (`append_many`): one statement for all the users, planned once per
/// batch; the users without a chain are left out of the map.
fn lock_heads(client: &mut SpiClient<'_>, users: Vec<Uuid>) -> Result<LockedHeads, IdentityError> {
    let mut heads = LockedHeads::with_capacity(users.len());
    if users.is_empty() {
        return Ok(heads);
    }
    let users: Vec<pgrx::Uuid> = users.into_iter().map(pg_uuid).collect();
    for row in LOCK_HEADS.run(client, &[users.into()])? {
        let user_id = row.get::<pgrx::Uuid>(1)?.map(rust_uuid);
        let user_id = user_id.ok_or_else(|| IdentityError::Internal("head without user".into()))?;
        let last_seq = row.get::<i64>(2)?.ok_or_else(|| corrupt_head(user_id))?;
        let last_hash = row
            .get::<Vec<u8>>(3)?
            .ok_or_else(|| corrupt_head(user_id))?;
        heads.insert(user_id, (last_seq, last_hash));
    }
    Ok(heads)
}

/// Starts a chain for every link (all first links at this point); returns the users whose chain
/// this started. The others have a chain already (or another transaction is starting it).
fn start_chains(
    client: &mut SpiClient<'_>,
    links: &[PendingLink],
) -> Result<HashSet<Uuid>, IdentityError> {
    let mut started = HashSet::with_capacity(links.len());
    if links.is_empty() {
        return Ok(started);
    }
    let users: Vec<pgrx::Uuid> = links.iter().map(|l| pg_uuid(l.user_id)).collect();
    let hashes: Vec<Vec<u8>> = links.iter().map(|l| l.hash.to_vec()).collect();
    let ids: Vec<pgrx::Uuid> = links.iter().map(|l| pg_uuid(l.event_id)).collect();
    for row in START_CHAINS.run(client, &[users.into(), hashes.into(), ids.into()])? {
        if let Some(user) = row.get::<pgrx::Uuid>(1)? {
            started.insert(rust_uuid(user));
        }
    }
    Ok(started)
}

fn advance_heads(client: &mut SpiClient<'_>, links: &[PendingLink]) -> Result<(), IdentityError> {
    let next: Vec<&PendingLink> = links.iter().filter(|link| link.seq > 1).collect();
    if next.is_empty() {
        return Ok(());
    }
    let users: Vec<pgrx::Uuid> = next.iter().map(|l| pg_uuid(l.user_id)).collect();
    let seqs: Vec<i64> = next.iter().map(|l| l.seq).collect();
    let hashes: Vec<Vec<u8>> = next.iter().map(|l| l.hash.to_vec()).collect();
    let ids: Vec<pgrx::Uuid> = next.iter().map(|l| pg_uuid(l.event_id)).collect();
    ADVANCE_HEADS.run(
        client,
        &[users.into(), seqs.into(), hashes.into(), ids.into()],
    )?;
    Ok(())
}

fn insert_events(
    client: &mut SpiClient<'_>,
    event_type: EventType,
    created_at: pg_sys::TimestampTz,
    links: &[PendingLink],
) -> Result<(), IdentityError> {
    if links.is_empty() {
        return Ok(());
    }
    let created_at = timestamptz(created_at)?;
    let ids: Vec<pgrx::Uuid> = links.iter().map(|l| pg_uuid(l.event_id)).collect();
    let users: Vec<pgrx::Uuid> = links.iter().map(|l| pg_uuid(l.user_id)).collect();
    let seqs: Vec<i64> = links.iter().map(|l| l.seq).collect();
    let payloads = jsonb_array(links.iter().map(|l| l.payload.0).collect());
    let prev_hashes: Vec<Option<Vec<u8>>> = links.iter().map(|l| l.prev_hash.clone()).collect();
    let hashes: Vec<Vec<u8>> = links.iter().map(|l| l.hash.to_vec()).collect();
    run_linking(
        &INSERT_EVENTS,
        client,
        &[
            event_type.as_str().into(),
            created_at.into(),
            ids.into(),
            users.into(),
            seqs.into(),
            payloads,
            prev_hashes.into(),
            hashes.into(),
        ],
        || {
            IdentityError::Internal(
                "an event chain head is behind its events: run identity.check_integrity()".into(),
            )
        },
    )?;
    Ok(())
}

fn corrupt_head(user_id: Uuid) -> IdentityError {
    IdentityError::Internal(format!(
        "event chain head of user {user_id} has NULL fields"
    ))
}

/// The statement a refusing trigger (events, providers) was fired for.
pub fn refused_operation(trigger: &PgTrigger<'_>) -> &'static str {
    match trigger.op() {
        Ok(PgTriggerOperation::Update) => "UPDATE",
        Ok(PgTriggerOperation::Delete) => "DELETE",
        Ok(PgTriggerOperation::Truncate) => "TRUNCATE",
        _ => "a change",
    }
}

/// Refuses UPDATE, DELETE and TRUNCATE on identity.identity_events, for every role.
#[pg_trigger]
fn refuse_event_mutation<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, IdentityError> {
    // Raised here rather than returned: pgrx reports a trigger's Err as XX000, and the
    // SQLSTATE of this refusal is part of the contract.
    IdentityError::AppendOnly {
        operation: refused_operation(trigger),
    }
    .raise()
}

extension_sql_file!(
    "../sql/append_only.sql",
    name = "append_only",
    requires = [
        "schema",
        refuse_event_mutation,
        providers::refuse_provider_change
    ]
);

/// Every user's events (or one user's), in chain order, with the recorded head on each row. The
/// events' (user_id, seq) index gives that order, kept by a merge join with the heads: a FULL
/// join (for heads without events) gave no usable order, and sorting the whole log spilled
/// 430 MB to disk at a million users.
const CHAIN_SCAN: &str = "
    SELECT e.user_id, e.id, e.seq, e.event_type, e.payload::text,
           e.created_at, e.prev_hash, e.hash, h.last_seq, h.last_hash, h.last_event_id
      FROM identity.identity_events e
      LEFT JOIN identity.event_chain_heads h ON h.user_id = e.user_id
     WHERE $1::uuid IS NULL OR e.user_id = $1
     ORDER BY e.user_id, e.seq";

/// The chain heads (or one user's) whose user has no event at all: CHAIN_SCAN has no row for them.
const HEADS_WITHOUT_EVENTS: &str = "
    SELECT h.user_id, h.last_seq, h.last_hash, h.last_event_id
      FROM identity.event_chain_heads h
     WHERE ($1::uuid IS NULL OR h.user_id = $1)
       AND NOT EXISTS (SELECT 1 FROM identity.identity_events e WHERE e.user_id = h.user_id)
     ORDER BY h.user_id";

/// The user a row of CHAIN_SCAN or HEADS_WITHOUT_EVENTS is about: its first column.
fn user_at(row: &SpiHeapTupleData<'_>) -> Result<Uuid, IdentityError> {
    let user_id = row.get::<pgrx::Uuid>(1)?;
    Ok(rust_uuid(user_id.ok_or_else(|| null_column("user_id"))?))
}

/// The head on a row of CHAIN_SCAN (at `first`: last_seq, last_hash, last_event_id) or of
/// HEADS_WITHOUT_EVENTS, if the user has one.
fn head_at(row: &SpiHeapTupleData<'_>, first: usize) -> Result<Option<ChainHead>, IdentityError> {
    let Some(last_event_id) = row.get::<pgrx::Uuid>(first + 2)? else {
        return Ok(None);
    };
    Ok(Some(ChainHead {
        last_seq: row
            .get::<i64>(first)?
            .ok_or_else(|| null_column("last_seq"))?,
        last_hash: row
            .get::<Vec<u8>>(first + 1)?
            .ok_or_else(|| null_column("last_hash"))?,
        last_event_id: rust_uuid(last_event_id),
    }))
}

/// A row of CHAIN_SCAN's event.
fn stored_event(row: &SpiHeapTupleData<'_>) -> Result<StoredEvent, IdentityError> {
    let created_at: TimestampWithTimeZone = row.get(6)?.ok_or_else(|| null_column("created_at"))?;
    Ok(StoredEvent {
        id: rust_uuid(row.get::<pgrx::Uuid>(2)?.ok_or_else(|| null_column("id"))?),
        seq: row.get::<i64>(3)?.ok_or_else(|| null_column("seq"))?,
        created_at: created_at.into(),
        event_type: row
            .get::<String>(4)?
            .ok_or_else(|| null_column("event_type"))?,
        payload: row
            .get::<String>(5)?
            .ok_or_else(|| null_column("payload"))?,
        prev_hash: row.get::<Vec<u8>>(7)?,
        hash: row.get::<Vec<u8>>(8)?.ok_or_else(|| null_column("hash"))?,
    })
}

/// Runs `query` (one uuid parameter) through a cursor, handing each row to `each`, a batch of
/// rows in memory at a time. Not a kept `Statement`: a generic plan of `$1 IS NULL OR
/// e.user_id = $1` would read the whole log for one user.
fn for_each_row(
    client: &mut SpiClient<'_>,
    query: &str,
    only_user: Option<Uuid>,
    mut each: impl FnMut(&SpiHeapTupleData<'_>) -> Result<(), IdentityError>,
) -> Result<(), IdentityError> {
    let cursor = client.try_open_cursor(query, &[only_user.map(pg_uuid).into()])?;
    crate::statements::fetch_in_batches(cursor, 1000, |rows| {
        rows.into_iter().try_for_each(|row| each(&row))
    })
}

/// Verifies every chain (or one user's), reading the log in batches so memory stays flat, and
/// hands each user's report to `report` as soon as it is made: users with events in user order,
/// then users whose chain head has no events left.
pub fn verify_chains(
    client: &mut SpiClient<'_>,
    only_user: Option<Uuid>,
    mut report: impl FnMut(ChainReport),
) -> Result<(), IdentityError> {
    let mut reports = 0_usize;
    let mut current: Option<(ChainVerifier, Option<ChainHead>)> = None;
    for_each_row(client, CHAIN_SCAN, only_user, |row| {
        let user_id = user_at(row)?;
        if current.as_ref().map(|(v, _)| v.user_id) != Some(user_id) {
            if let Some((verifier, head)) = current.take() {
                report(verifier.finish(head.as_ref()));
                reports += 1;
            }
            current = Some((ChainVerifier::new(user_id), head_at(row, 9)?));
        }
        if let Some((verifier, _)) = current.as_mut() {
            verifier.observe(stored_event(row)?);
        }
        Ok(())
    })?;
    if let Some((verifier, head)) = current.take() {
        report(verifier.finish(head.as_ref()));
        reports += 1;
    }
    for_each_row(client, HEADS_WITHOUT_EVENTS, only_user, |row| {
        report(ChainVerifier::new(user_at(row)?).finish(head_at(row, 2)?.as_ref()));
        reports += 1;
        Ok(())
    })?;
    if let (Some(user_id), 0) = (only_user, reports) {
        report(ChainVerifier::new(user_id).finish(None));
    }
    Ok(())
}

fn null_column(column: &str) -> IdentityError {
    IdentityError::Internal(format!(
        "identity_events.{column} is NULL despite its constraint"
    ))
}

// `identity.verify_event_chain(only_user)`: recomputes every hash chain (or one user's).
//
// Written to the C calling convention instead of #[pg_extern], so that each user's row goes to
// the tuplestore as soon as the user is verified (set_returning.rs): pgrx's table iterator needed
// every report in memory first, 80 MB at a million users. The SQL definition and the symbol are
// the ones pgrx gave it in 0.1.0.
#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_verify_event_chain_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1_API
}

/// # Safety
/// Called by PostgreSQL only, through the SQL function below, with its one argument.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn verify_event_chain_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: argument 0 is a uuid or NULL, as the SQL definition declares.
    let only_user = unsafe { pgrx::fcinfo::pg_getarg::<pgrx::Uuid>(fcinfo, 0) };
    // SAFETY: a set-returning call of the four declared columns (uuid, bigint, boolean, uuid).
    let mut rows = unsafe { RowSink::<4>::new(fcinfo) };
    Spi::connect_mut(|client| {
        verify_chains(client, only_user.map(rust_uuid), |report| {
            rows.put(|| {
                [
                    pg_uuid(report.user_id).into_datum(),
                    report.events.into_datum(),
                    report.ok.into_datum(),
                    report.first_bad_event.map(pg_uuid).into_datum(),
                ]
            })
        })
    })
    .unwrap_or_else(|error| error.raise());
    rows.finish()
}

extension_sql!(
    r#"
CREATE FUNCTION identity.verify_event_chain(only_user uuid DEFAULT NULL)
RETURNS TABLE (user_id uuid, events bigint, ok boolean, first_bad_event uuid)
STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'verify_event_chain_wrapper';
"#,
    name = "verify_event_chain",
);

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn chain(user_id: Uuid, payloads: &[&str]) -> Vec<StoredEvent> {
        let mut events: Vec<StoredEvent> = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let prev_hash = events.last().map(|e| e.hash.clone());
            let id = Uuid::from_u128(i as u128 + 1);
            let seq = i as i64 + 1;
            let hash = ChainLink {
                prev_hash: prev_hash.as_deref(),
                event_id: id,
                user_id,
                seq,
                created_at: 1_000_000 * seq,
                event_type: "bind",
                payload,
            }
            .hash()
            .to_vec();
            events.push(StoredEvent {
                id,
                seq,
                created_at: 1_000_000 * seq,
                event_type: "bind".into(),
                payload: (*payload).into(),
                prev_hash,
                hash,
            });
        }
        events
    }

    fn head_of(events: &[StoredEvent]) -> ChainHead {
        let last = events.last().unwrap();
        ChainHead {
            last_seq: last.seq,
            last_hash: last.hash.clone(),
            last_event_id: last.id,
        }
    }

    fn verify(user_id: Uuid, events: Vec<StoredEvent>, head: Option<&ChainHead>) -> ChainReport {
        let mut verifier = ChainVerifier::new(user_id);
        events.into_iter().for_each(|e| verifier.observe(e));
        verifier.finish(head)
    }

    const USER: Uuid = Uuid::from_u128(0xABCD);
    const PAYLOADS: [&str; 4] = [r#"{"a": 1}"#, r#"{"b": 2}"#, r#"{"c": 3}"#, r#"{"d": 4}"#];

    #[test]
    fn an_untouched_chain_verifies() {
        let events = chain(USER, &PAYLOADS);
        let head = head_of(&events);
        let report = verify(USER, events, Some(&head));
        assert_eq!(
            report,
            ChainReport {
                user_id: USER,
                events: 4,
                ok: true,
                first_bad_event: None
            }
        );
    }

    #[test]
    fn an_edited_payload_is_found() {
        let mut events = chain(USER, &PAYLOADS);
        let head = head_of(&events);
        events[1].payload = r#"{"b": 3}"#.into();
        let report = verify(USER, events, Some(&head));
        assert!(!report.ok);
        assert_eq!(report.first_bad_event, Some(Uuid::from_u128(2)));
    }

    #[test]
    fn a_removed_middle_event_is_found() {
        let mut events = chain(USER, &PAYLOADS);
        let head = head_of(&events);
        events.remove(1);
        let report = verify(USER, events, Some(&head));
        assert_eq!(
            (report.ok, report.first_bad_event),
            (false, Some(Uuid::from_u128(3)))
        );
    }

    #[test]
    fn removed_newest_events_are_found_through_the_head() {
        let mut events = chain(USER, &PAYLOADS);
        let head = head_of(&events);
        events.truncate(2);
        let report = verify(USER, events, Some(&head));
        assert_eq!(
            (report.ok, report.first_bad_event),
            (false, Some(Uuid::from_u128(4)))
        );
    }

    #[test]
    fn swapped_events_are_found() {
        let mut events = chain(USER, &PAYLOADS);
        let head = head_of(&events);
        events.swap(1, 2);
        (events[1].seq, events[2].seq) = (2, 3);
        let report = verify(USER, events, Some(&head));
        assert_eq!(
            (report.ok, report.first_bad_event),
            (false, Some(Uuid::from_u128(3)))
        );
    }

    #[test]
    fn a_rehashed_edit_still_breaks_the_next_link() {
        let mut events = chain(USER, &PAYLOADS);
        let head = head_of(&events);
        // The forger recomputes the edited event's own hash; the next event still points at the old one.
        let forged_payload = r#"{"b": 3}"#;
        let forged_hash = ChainLink {
            prev_hash: Some(&events[0].hash),
            event_id: events[1].id,
            user_id: USER,
            seq: 2,
            created_at: events[1].created_at,
            event_type: "bind",
            payload: forged_payload,
        }
        .hash()
        .to_vec();
        events[1].payload = forged_payload.into();
        events[1].hash = forged_hash;
        let report = verify(USER, events, Some(&head));
        assert_eq!(
            (report.ok, report.first_bad_event),
            (false, Some(Uuid::from_u128(3)))
        );
    }

    #[test]
    fn an_event_moved_to_another_user_does_not_verify_there() {
        let events = chain(USER, &PAYLOADS[..1]);
        let head = head_of(&events);
        let report = verify(Uuid::from_u128(0xDCBA), events, Some(&head));
        assert!(!report.ok);
    }

    #[test]
    fn a_head_without_events_and_events_without_a_head_are_both_broken() {
        let events = chain(USER, &PAYLOADS);
        let head = head_of(&events);
        assert!(!verify(USER, Vec::new(), Some(&head)).ok);
        assert!(!verify(USER, events, None).ok);
        assert!(verify(USER, Vec::new(), None).ok);
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let base = ChainLink {
            prev_hash: None,
            event_id: Uuid::from_u128(1),
            user_id: USER,
            seq: 1,
            created_at: 7,
            event_type: "bind",
            payload: "{}",
        };
        let original = base.hash();
        let prev = [1u8; 32];
        let variants = [
            ChainLink {
                prev_hash: Some(&prev),
                ..base.clone()
            },
            ChainLink {
                event_id: Uuid::from_u128(2),
                ..base.clone()
            },
            ChainLink {
                user_id: Uuid::from_u128(2),
                ..base.clone()
            },
            ChainLink {
                seq: 2,
                ..base.clone()
            },
            ChainLink {
                created_at: 8,
                ..base.clone()
            },
            ChainLink {
                event_type: "revoke",
                ..base.clone()
            },
            ChainLink {
                payload: "{ }",
                ..base.clone()
            },
            // Lengths keep fields apart: moving a byte from one field to the next changes the hash.
            ChainLink {
                event_type: "bind{",
                payload: "}",
                ..base.clone()
            },
        ];
        for variant in variants {
            assert_ne!(variant.hash(), original, "{variant:?}");
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::sqlstate_of;
    use pgrx::prelude::*;

    // A user no other module's tests bind (and the tests that bind take turns: see
    // testing::take_turns).
    const USER: &str = "00000000-0000-4000-8000-0000000e7e47";

    fn bind_one(external_id: &str) {
        Spi::run(&format!(
            "SELECT identity.create_binding('{USER}', 'github', '{external_id}', '{{\"method\": \"test\"}}')"
        ))
        .unwrap();
    }

    fn chain_ok() -> (Option<bool>, Option<pgrx::Uuid>) {
        Spi::get_two(&format!(
            "SELECT ok, first_bad_event FROM identity.verify_event_chain('{USER}')"
        ))
        .unwrap()
    }

    #[pg_test]
    fn update_delete_and_truncate_of_events_are_refused() {
        crate::testing::take_turns();
        bind_one("1");
        for statement in [
            "UPDATE identity.identity_events SET payload = '{}'",
            "DELETE FROM identity.identity_events",
            "TRUNCATE identity.identity_events",
            // Zero rows affected is refused too: the guard is on the statement, not the rows.
            "DELETE FROM identity.identity_events WHERE false",
        ] {
            assert_eq!(sqlstate_of(statement), "42501", "{statement}");
        }
        let events = Spi::get_one::<i64>("SELECT count(*) FROM identity.identity_events");
        assert_eq!(events, Ok(Some(1)));
    }

    #[pg_test]
    fn the_guard_fires_even_in_replica_mode() {
        crate::testing::take_turns();
        bind_one("1");
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        assert_eq!(sqlstate_of("DELETE FROM identity.identity_events"), "42501");
    }

    #[pg_test]
    fn appends_chain_in_sequence() {
        crate::testing::take_turns();
        for id in ["1", "2", "3"] {
            bind_one(id);
        }
        let links = Spi::get_one::<bool>(&format!(
            "SELECT bool_and(CASE WHEN e.seq = 1 THEN e.prev_hash IS NULL
                                  ELSE e.prev_hash = (SELECT p.hash FROM identity.identity_events p
                                                       WHERE p.user_id = e.user_id AND p.seq = e.seq - 1) END)
                    AND array_agg(e.seq ORDER BY e.seq) = '{{1,2,3}}'
               FROM identity.identity_events e WHERE e.user_id = '{USER}'"
        ));
        assert_eq!(links, Ok(Some(true)));
        assert_eq!(chain_ok(), (Some(true), None));
    }

    #[pg_test]
    fn an_edited_event_is_found_by_verify_event_chain() {
        crate::testing::take_turns();
        for id in ["1", "2", "3"] {
            bind_one(id);
        }
        let second: Option<pgrx::Uuid> = Spi::get_one(&format!(
            "SELECT id FROM identity.identity_events WHERE user_id = '{USER}' AND seq = 2"
        ))
        .unwrap();
        // Only a superuser who disables the guard can do this, and the chain still tells.
        Spi::run(
            "ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only",
        )
        .unwrap();
        Spi::run(
            "UPDATE identity.identity_events SET payload = jsonb_set(payload, '{external_id}', '\"666\"') WHERE seq = 2",
        )
        .unwrap();
        assert_eq!(chain_ok(), (Some(false), second));
    }

    #[pg_test]
    fn a_deleted_newest_event_is_found_through_the_head() {
        crate::testing::take_turns();
        for id in ["1", "2"] {
            bind_one(id);
        }
        let newest: Option<pgrx::Uuid> = Spi::get_one(&format!(
            "SELECT id FROM identity.identity_events WHERE user_id = '{USER}' AND seq = 2"
        ))
        .unwrap();
        Spi::run(
            "ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only",
        )
        .unwrap();
        Spi::run("DELETE FROM identity.identity_events WHERE seq = 2").unwrap();
        assert_eq!(chain_ok(), (Some(false), newest));
    }

    #[pg_test]
    fn a_user_whose_every_event_was_deleted_is_found_through_the_head() {
        crate::testing::take_turns();
        bind_one("1");
        Spi::run(
            "SELECT identity.create_binding('00000000-0000-4000-8000-0000000e7e48', 'github', '2')",
        )
        .unwrap();
        let only: Option<pgrx::Uuid> = Spi::get_one(&format!(
            "SELECT id FROM identity.identity_events WHERE user_id = '{USER}'"
        ))
        .unwrap();
        Spi::run(
            "ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only",
        )
        .unwrap();
        Spi::run(&format!(
            "DELETE FROM identity.identity_events WHERE user_id = '{USER}'"
        ))
        .unwrap();
        assert_eq!(chain_ok(), (Some(false), only));
        // Verifying every user reports each once: the intact one, and the emptied one as broken.
        let reports: Vec<(String, i64, bool)> = Spi::connect(|client| {
            client
                .select(
                    "SELECT user_id::text, events, ok FROM identity.verify_event_chain()
                      ORDER BY user_id",
                    None,
                    &[],
                )?
                .map(|row| {
                    Ok((
                        row.get(1)?.unwrap(),
                        row.get(2)?.unwrap(),
                        row.get(3)?.unwrap(),
                    ))
                })
                .collect::<Result<_, pgrx::spi::Error>>()
        })
        .unwrap();
        assert_eq!(
            reports,
            [
                (USER.to_owned(), 0, false),
                ("00000000-0000-4000-8000-0000000e7e48".to_owned(), 1, true)
            ]
        );
    }

    #[pg_test]
    fn reordered_events_are_found() {
        crate::testing::take_turns();
        for id in ["1", "2", "3"] {
            bind_one(id);
        }
        Spi::run(
            "ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only",
        )
        .unwrap();
        // (user_id, seq) is unique, so the swap goes through a free number.
        for step in [
            "SET seq = 100 WHERE seq = 2",
            "SET seq = 2 WHERE seq = 3",
            "SET seq = 3 WHERE seq = 100",
        ] {
            Spi::run(&format!("UPDATE identity.identity_events {step}")).unwrap();
        }
        assert_eq!(chain_ok().0, Some(false));
    }

    #[pg_test]
    fn a_bulk_append_links_every_chain_as_single_appends_would() {
        use super::{append_many, EventType};
        use serde_json::json;
        use uuid::Uuid;
        crate::testing::take_turns();
        bind_one("1"); // USER's chain exists; OTHER's does not
        let user = Uuid::parse_str(USER).unwrap();
        let other = Uuid::parse_str("00000000-0000-4000-8000-000000000002").unwrap();
        let events = [
            (other, json!({"n": 1})),
            (user, json!({"n": 2})),
            (other, json!({"n": 3})), // a user's second event of the batch links to its first
        ];
        // Revokes: these payloads name no binding, and a bind event that names none is one the
        // integrity check would find without a live binding.
        Spi::connect_mut(|client| append_many(client, EventType::Revoke, &events)).unwrap();
        let chains: Option<String> = Spi::get_one(
            "SELECT string_agg(format('%s:%s:%s', right(user_id::text, 1), seq, coalesce(payload->>'n', '-')), ' '
                              ORDER BY user_id, seq)
               FROM identity.identity_events",
        )
        .unwrap();
        assert_eq!(chains.as_deref(), Some("2:1:1 2:2:3 7:1:- 7:2:2"));
        assert!(crate::testing::integrity_is_clean());
        let heads = Spi::get_one::<String>(
            "SELECT string_agg(last_seq::text, ',' ORDER BY user_id) FROM identity.event_chain_heads",
        );
        assert_eq!(heads, Ok(Some("2,2".into())));
    }

    #[pg_test]
    fn a_bulk_append_refuses_a_head_behind_its_events() {
        use super::{append_many, EventType};
        use uuid::Uuid;
        crate::testing::take_turns();
        bind_one("1");
        bind_one("2");
        Spi::run("UPDATE identity.event_chain_heads SET last_seq = 1").unwrap();
        let user = Uuid::parse_str(USER).unwrap();
        let events = [(user, serde_json::json!({}))];
        let failure = crate::subtransaction::in_subtransaction(|| {
            Spi::connect_mut(|client| append_many(client, EventType::Bind, &events))
        })
        .unwrap_err();
        // Not the 23505 of the (user_id, seq) key: a lagging head is an internal error.
        assert_eq!(failure.sqlstate, "XX000", "{failure}");
        assert!(failure.message.contains("check_integrity"), "{failure}");
        let events = Spi::get_one::<i64>("SELECT count(*) FROM identity.identity_events");
        assert_eq!(events, Ok(Some(2)));
    }

    #[pg_test]
    fn a_user_without_events_verifies_empty() {
        let row: (Option<i64>, Option<bool>) = Spi::get_two(
            "SELECT events, ok FROM identity.verify_event_chain('00000000-0000-4000-8000-0000000000ff')",
        )
        .unwrap();
        assert_eq!(row, (Some(0), Some(true)));
    }
}
