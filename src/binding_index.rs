//! The live binding of one `(provider, external_id)`, read straight from the unique index of
//! `identity.user_bindings`.
//!
//! Every login re-binds its wallet, so this look-up is most of an idempotent create_binding and
//! the first step of every new one. Through SPI, a kept plan for the same one-row index scan also
//! pays for executor start-up and shutdown, a portal, its parameters and a copy of the result:
//! 17,000 of the 117,700 instructions a repeat cost that way (BENCHMARKS.md). The scan opened here
//! reads the same row under the same snapshot SPI would have used.
//!
//! The same index also tells, through a dirty snapshot, whether another transaction has an
//! unfinished binding of the key: what a login whose binding step stopped waiting must know
//! before it queues the binding for a new user.

use crate::errors::IdentityError;
use crate::statements::{push_fresh_snapshot, transaction_has_written};
use pgrx::pg_sys::{self, Oid};
use pgrx::{IntoDatum, PgTupleDesc};
use std::ffi::CStr;
use uuid::Uuid;

/// A live binding: its id and the user it binds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveBinding {
    pub binding_id: Uuid,
    pub user_id: Uuid,
}

const SCHEMA: &CStr = c"identity";
const TABLE: &CStr = c"user_bindings";
const UNIQUE_INDEX: &CStr = c"user_bindings_provider_external_id_key";

/// The live binding of canonical `external_id` of `provider`, if there is one.
///
/// It reads as an SPI read of the extension does (`Statement::read`): while this transaction has
/// written nothing, on the caller's snapshot, so a STABLE caller sees one consistent state and no
/// transaction id is taken; once it has written, on a fresh snapshot that also sees this
/// transaction's own writes, so a binding that won an insert race (ON CONFLICT waited for it to
/// commit) is found on the next look.
pub fn live_binding(
    provider: &str,
    external_id: &str,
) -> Result<Option<LiveBinding>, IdentityError> {
    let provider = provider.into_datum().expect("text is never NULL");
    let external_id = external_id.into_datum().expect("text is never NULL");
    // SAFETY: the relations are opened and locked (AccessShareLock, kept until the transaction
    // ends, as the executor keeps it) before the scan and closed after it; the snapshot stays
    // active for the whole scan; the scan keys are two text datums for the index's two text
    // columns; a uuid datum points at 16 bytes, copied before the slot is dropped. An ERROR in
    // any call aborts the (sub)transaction, whose resource owner releases what is left open.
    unsafe {
        let (table, index) = open_table_and_index()?;
        let columns = match BindingColumns::of(table, index) {
            Ok(columns) => columns,
            Err(error) => {
                close(table, index);
                return Err(error);
            }
        };
        let pushed_snapshot = take_read_snapshot();
        let found = probe(table, index, &columns, provider, external_id);
        if pushed_snapshot {
            pg_sys::PopActiveSnapshot();
        }
        close(table, index);
        Ok(found)
    }
}

/// What other transactions have done to the binding of a key, as a unique-index insert of the
/// key meets it: nothing, a committed live binding, or a change not finished yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A live binding whose insert committed (perhaps after this transaction's snapshot).
    Committed,
    /// A binding inserted, or revoked, by a transaction still in progress: whose the key is
    /// depends on how that transaction ends.
    InProgress,
}

/// The claim other transactions have on canonical `external_id` of `provider`, if any: what an
/// insert of the key would wait for or conflict with. Read through a dirty snapshot, the one
/// PostgreSQL's unique check uses, which also sees rows not yet committed; it never waits. This
/// transaction's own binding counts as committed.
pub fn claim_on(provider: &str, external_id: &str) -> Result<Option<Claim>, IdentityError> {
    let provider = provider.into_datum().expect("text is never NULL");
    let external_id = external_id.into_datum().expect("text is never NULL");
    // SAFETY: as in `live_binding`; the dirty snapshot lives on this stack frame for the whole
    // scan, which writes the in-progress inserter or deleter of each row it returns into it.
    unsafe {
        let (table, index) = open_table_and_index()?;
        let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
        dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        let scan = KeyScan::begin(table, index, &mut dirty, provider, external_id);
        let mut claim = None;
        while claim != Some(Claim::InProgress) && scan.next() {
            let unfinished = dirty.xmin != pg_sys::InvalidTransactionId
                || dirty.xmax != pg_sys::InvalidTransactionId;
            claim = Some(if unfinished {
                Claim::InProgress
            } else {
                Claim::Committed
            });
        }
        scan.end();
        close(table, index);
        Ok(claim)
    }
}

/// Makes the snapshot the read runs on the active one; true when it pushed one, to be popped.
/// Written: in any subtransaction, also one that has not written yet itself (see `Statement::run`).
unsafe fn take_read_snapshot() -> bool {
    let fresh = transaction_has_written() || !pg_sys::ActiveSnapshotSet();
    if fresh {
        push_fresh_snapshot();
    }
    fresh
}

unsafe fn open_table_and_index() -> Result<(pg_sys::Relation, pg_sys::Relation), IdentityError> {
    let missing = || {
        IdentityError::Internal(
            "identity.user_bindings or its unique index is missing: reinstall the extension".into(),
        )
    };
    let schema = pg_sys::get_namespace_oid(SCHEMA.as_ptr(), true);
    if schema == Oid::INVALID {
        return Err(missing());
    }
    let table_oid = pg_sys::get_relname_relid(TABLE.as_ptr(), schema);
    let index_oid = pg_sys::get_relname_relid(UNIQUE_INDEX.as_ptr(), schema);
    if table_oid == Oid::INVALID || index_oid == Oid::INVALID {
        return Err(missing());
    }
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    let table = pg_sys::table_open(table_oid, lock);
    let index = pg_sys::index_open(index_oid, lock);
    Ok((table, index))
}

unsafe fn close(table: pg_sys::Relation, index: pg_sys::Relation) {
    pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
    pg_sys::table_close(table, pg_sys::NoLock as pg_sys::LOCKMODE);
}

/// Where the look-up finds what it needs: the table's id and user_id columns, checked against
/// the index it probes, which must be the one on (provider, external_id) of that table.
struct BindingColumns {
    id: i32,
    user_id: i32,
}

impl BindingColumns {
    unsafe fn of(
        table: pg_sys::Relation,
        index: pg_sys::Relation,
    ) -> Result<BindingColumns, IdentityError> {
        let [id, user_id, provider, external_id] =
            column_numbers(table, ["id", "user_id", "provider", "external_id"]);
        let key = &*(*index).rd_index;
        let keys = key.indkey.values.as_slice(key.indnkeyatts as usize);
        let shaped = key.indrelid == (*table).rd_id
            && key.indisunique
            && key.indnkeyatts == 2
            && i32::from(keys[0]) == provider
            && i32::from(keys[1]) == external_id
            && id > 0
            && user_id > 0;
        if !shaped {
            return Err(IdentityError::Internal(format!(
                "{} is not the unique index on identity.user_bindings (provider, external_id): reinstall the extension",
                UNIQUE_INDEX.to_string_lossy()
            )));
        }
        Ok(BindingColumns { id, user_id })
    }
}

/// The attribute numbers of the live columns `names`, 0 for each the table lacks: one walk over
/// the columns, as this runs on every look-up.
unsafe fn column_numbers<const N: usize>(table: pg_sys::Relation, names: [&str; N]) -> [i32; N] {
    let mut numbers = [0; N];
    // pgrx reads the attributes where each PostgreSQL version keeps them (18 moved them).
    let columns = PgTupleDesc::from_pg_unchecked((*table).rd_att);
    for (position, column) in columns.iter().enumerate() {
        if column.attisdropped {
            continue;
        }
        let column_name = CStr::from_ptr(column.attname.data.as_ptr()).to_bytes();
        if let Some(wanted) = names.iter().position(|name| name.as_bytes() == column_name) {
            numbers[wanted] = position as i32 + 1;
        }
    }
    numbers
}

/// One pass over the index for the key, on the active snapshot: the visible row, if any.
unsafe fn probe(
    table: pg_sys::Relation,
    index: pg_sys::Relation,
    columns: &BindingColumns,
    provider: pg_sys::Datum,
    external_id: pg_sys::Datum,
) -> Option<LiveBinding> {
    let scan = KeyScan::begin(
        table,
        index,
        pg_sys::GetActiveSnapshot(),
        provider,
        external_id,
    );
    let found = scan.next().then(|| LiveBinding {
        binding_id: uuid_at(scan.slot, columns.id),
        user_id: uuid_at(scan.slot, columns.user_id),
    });
    scan.end();
    found
}

/// An index scan for one `(provider, external_id)` key, on `snapshot`, and the slot its rows
/// are read into.
struct KeyScan {
    scan: pg_sys::IndexScanDesc,
    slot: *mut pg_sys::TupleTableSlot,
}

impl KeyScan {
    unsafe fn begin(
        table: pg_sys::Relation,
        index: pg_sys::Relation,
        snapshot: pg_sys::Snapshot,
        provider: pg_sys::Datum,
        external_id: pg_sys::Datum,
    ) -> KeyScan {
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        for (key, (column, value)) in keys.iter_mut().zip([(1, provider), (2, external_id)]) {
            pg_sys::ScanKeyInit(
                key,
                column,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::RegProcedure::from(pg_sys::F_TEXTEQ),
                value,
            );
        }
        #[cfg(not(feature = "pg18"))]
        let scan = pg_sys::index_beginscan(table, index, snapshot, 2, 0);
        #[cfg(feature = "pg18")]
        let scan = pg_sys::index_beginscan(table, index, snapshot, std::ptr::null_mut(), 2, 0);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(table, std::ptr::null_mut());
        KeyScan { scan, slot }
    }

    /// Reads the next row the snapshot lets through into the slot; false when there is none.
    unsafe fn next(&self) -> bool {
        pg_sys::index_getnext_slot(
            self.scan,
            pg_sys::ScanDirection::ForwardScanDirection,
            self.slot,
        )
    }

    unsafe fn end(self) {
        pg_sys::ExecDropSingleTupleTableSlot(self.slot);
        pg_sys::index_endscan(self.scan);
    }
}

/// The uuid in column `column` of the row in `slot` (both id columns are NOT NULL).
unsafe fn uuid_at(slot: *mut pg_sys::TupleTableSlot, column: i32) -> Uuid {
    let mut is_null = false;
    let datum = pg_sys::slot_getattr(slot, column, &mut is_null);
    assert!(!is_null, "user_bindings' id columns are NOT NULL");
    Uuid::from_bytes(*datum.cast_mut_ptr::<[u8; 16]>())
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{claim_on, live_binding, Claim, LiveBinding};
    use crate::testing::{error_of, take_turns};
    use pgrx::prelude::*;
    use uuid::Uuid;

    const ALICE: &str = "00000000-0000-4000-8000-00000000a11c";

    fn bind(user: &str, provider: &str, external_id: &str) -> Uuid {
        let id = Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT binding_id FROM identity.create_binding('{user}', '{provider}', '{external_id}')"
        ))
        .unwrap()
        .unwrap();
        Uuid::from_bytes(*id.as_bytes())
    }

    #[pg_test]
    fn a_binding_written_earlier_in_the_transaction_is_found_with_its_ids() {
        take_turns();
        let binding_id = bind(ALICE, "github", "583231");
        assert_eq!(
            live_binding("github", "583231").unwrap(),
            Some(LiveBinding {
                binding_id,
                user_id: ALICE.parse().unwrap(),
            })
        );
    }

    #[pg_test]
    fn an_unbound_id_or_another_provider_finds_nothing() {
        take_turns();
        bind(ALICE, "github", "583231");
        assert_eq!(live_binding("github", "583232").unwrap(), None);
        assert_eq!(live_binding("discord", "583231").unwrap(), None);
        assert_eq!(
            live_binding("github", "58323").unwrap(),
            None,
            "no prefix match"
        );
    }

    #[pg_test]
    fn a_revoked_binding_is_not_found() {
        take_turns();
        bind(ALICE, "github", "583231");
        Spi::run(
            r#"SELECT * FROM identity.revoke_binding('github', '583231', '{"reason": "test"}')"#,
        )
        .unwrap();
        assert_eq!(live_binding("github", "583231").unwrap(), None);
    }

    #[pg_test]
    fn nothing_claims_an_unbound_or_revoked_id() {
        take_turns();
        assert_eq!(claim_on("github", "583231").unwrap(), None);
        bind(ALICE, "github", "583231");
        Spi::run(
            r#"SELECT * FROM identity.revoke_binding('github', '583231', '{"reason": "test"}')"#,
        )
        .unwrap();
        assert_eq!(claim_on("github", "583231").unwrap(), None);
    }

    #[pg_test]
    fn a_live_binding_is_a_committed_claim_of_its_id_only() {
        take_turns();
        bind(ALICE, "github", "583231");
        assert_eq!(
            claim_on("github", "583231").unwrap(),
            Some(Claim::Committed),
            "this transaction's own binding is as good as committed to it"
        );
        assert_eq!(claim_on("github", "583232").unwrap(), None);
        assert_eq!(claim_on("discord", "583231").unwrap(), None);
    }

    #[pg_test]
    fn an_index_of_another_shape_under_the_unique_index_name_is_an_internal_error() {
        take_turns();
        Spi::run(
            "ALTER TABLE identity.user_bindings DROP CONSTRAINT user_bindings_provider_external_id_key;
             CREATE UNIQUE INDEX user_bindings_provider_external_id_key
                 ON identity.user_bindings (external_id, provider)",
        )
        .unwrap();
        let (sqlstate, message) = error_of("SELECT identity.resolve('github', '583231')");
        assert_eq!(sqlstate, "XX000");
        assert!(
            message.contains(
                "is not the unique index on identity.user_bindings (provider, external_id)"
            ),
            "{message}"
        );
    }

    #[pg_test]
    fn a_missing_unique_index_is_an_internal_error_that_says_to_reinstall() {
        take_turns();
        Spi::run(
            "ALTER TABLE identity.user_bindings DROP CONSTRAINT user_bindings_provider_external_id_key",
        )
        .unwrap();
        let (sqlstate, message) = error_of("SELECT identity.resolve('github', '583231')");
        assert_eq!(sqlstate, "XX000");
        assert!(message.contains("reinstall the extension"), "{message}");
    }
}
