//! Migrations: bind the wallets an application already stores on its users table, and a
//! backstop that queues every wallet still unbound. The application's table is read in keyset
//! batches, so a table of tens of millions of rows never needs one huge read; the procedure
//! form (backfill_run.rs) commits after each batch, in parallel.

use crate::bindings::{bind_many, BatchOutcome};
use crate::errors::{echo, required, required_or_left_out, IdentityError};
use crate::providers::Builtin;
use crate::retry::enqueue;
use crate::statements::{free_last_result, writable};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgRelation;
use serde_json::json;
use uuid::Uuid;

/// A column of the users table, passed as SQL `name`, as the contract declares `id_column` and
/// `wallet_column` (and as `attname` is): a DBA's `GRANT EXECUTE ON FUNCTION
/// identity.backstop(regclass, name, name)` then names the function. pgrx maps no Rust type to
/// `name`, whose datum is a pointer to a fixed, NUL-padded `NameData`, not a `text` varlena.
pub struct ColumnName(String);

impl ColumnName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromDatum for ColumnName {
    // The library serves the declarations of the installed version, and 0.1.0 declared these
    // arguments `text`: until ALTER EXTENSION UPDATE replaces them, a call passes text here.
    const GET_TYPOID: bool = true;

    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        type_oid: Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        if type_oid == pg_sys::TEXTOID {
            // SAFETY: a non-NULL text datum.
            return unsafe { String::from_datum(datum, false) }.map(ColumnName);
        }
        // SAFETY: a non-NULL `name` datum points to a NameData, whose bytes end with a NUL.
        let name = unsafe {
            let data = datum.cast_mut_ptr::<pg_sys::NameData>();
            std::ffi::CStr::from_ptr((*data).data.as_ptr())
        };
        // Not UTF-8 (a server in another encoding): a name no column of a UTF-8 catalog has.
        Some(ColumnName(name.to_string_lossy().into_owned()))
    }
}

// SAFETY: `name` (or 0.1.0's `text`) is passed by reference, as FromDatum above reads it.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for ColumnName {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: as the caller promises: the argument is a `name` (or 0.1.0's `text`).
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be NULL"))
    }
}

pgrx::impl_sql_translatable!(ColumnName, arg_only = "name");

/// How many rows of each kind a run reports by id as a NOTICE.
const NOTICED_PER_KIND: i64 = 5;

/// One row of the source, as text: (user id, wallet), either possibly NULL.
type SourceRow = (Option<String>, Option<String>);

/// Ids of the source after the first (exclusive) up to the second (inclusive), as text; `None`
/// leaves that end open.
pub(crate) type KeyRange<'a> = (Option<&'a str>, Option<&'a str>);

/// Where the wallets are: a table and two of its columns, checked to exist and to be readable
/// by the caller (these functions run with the owner's rights, so they check for the caller),
/// and the role that reads them (see `reader_of`).
pub(crate) struct Source {
    pub(crate) table: String,
    id_column: String,
    wallet_column: String,
    id_type: String,
    reader: pg_sys::Oid,
    /// A table, partitioned table or materialized view, whose pages TABLESAMPLE can sample (a
    /// view or a foreign table cannot be: its backfill is not split into parts).
    pub(crate) sampleable: bool,
    /// Whether a btree index leads with the id column (a view's or foreign table's cannot be
    /// known: taken as indexed).
    id_indexed: bool,
}

impl Source {
    /// The source a function's arguments name: the users table (NULL when the default,
    /// public.users, does not exist) and its id and wallet columns.
    pub(crate) fn from_arguments(
        client: &mut SpiClient<'_>,
        users: Option<PgRelation>,
        id_column: &ColumnName,
        wallet_column: &ColumnName,
    ) -> Result<Source, IdentityError> {
        let table = users_table(users)?;
        Source::resolve(client, table, id_column.as_str(), wallet_column.as_str())
    }

    pub(crate) fn resolve(
        client: &mut SpiClient<'_>,
        table: Oid,
        id_column: &str,
        wallet_column: &str,
    ) -> Result<Source, IdentityError> {
        // SAFETY: reads the session's outer role (the caller, not this function's owner).
        let caller = unsafe { pg_sys::GetOuterUserId() };
        // Privileges are asked only of columns that exist (has_column_privilege raises otherwise).
        let row = client.select(
            "SELECT $1::regclass::text, id.type, wallet.present,
                    CASE WHEN id.type IS NOT NULL AND wallet.present
                         THEN has_column_privilege($4, $1, $2, 'SELECT') AND has_column_privilege($4, $1, $3, 'SELECT')
                    END,
                    c.relowner, c.relkind IN ('r', 'p', 'm'),
                    EXISTS (SELECT FROM pg_index i
                              JOIN pg_class ic ON ic.oid = i.indexrelid
                              JOIN pg_am am ON am.oid = ic.relam
                              JOIN pg_attribute a ON a.attrelid = $1 AND a.attname = $2
                             WHERE i.indrelid = $1 AND i.indkey[0] = a.attnum
                               AND i.indpred IS NULL AND am.amname = 'btree')
               FROM (SELECT (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                              WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped) AS type) id,
                    (SELECT EXISTS (SELECT FROM pg_attribute a
                              WHERE a.attrelid = $1 AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped) AS present) wallet
                    LEFT JOIN pg_class c ON c.oid = $1",
            None,
            &[table.into(), id_column.into(), wallet_column.into(), caller.into()],
        )?;
        let row = row.first();
        let table_name = row.get::<String>(1)?.unwrap_or_default();
        let (Some(id_type), Some(true)) = (row.get::<String>(2)?, row.get::<bool>(3)?) else {
            return Err(IdentityError::InvalidParameter {
                reason: format!(
                    "{table_name} has no column \"{}\" or \"{}\"",
                    echo(id_column),
                    echo(wallet_column)
                ),
            });
        };
        if row.get::<bool>(4)? != Some(true) {
            return Err(IdentityError::NoSourcePrivilege { table: table_name });
        }
        let owner = row.get::<pg_sys::Oid>(5)?.unwrap_or(caller);
        let reader = reader_of(caller, owner);
        if row_security_hides_rows(table, reader) {
            return Err(IdentityError::SourceFilteredByRowSecurity {
                table: table_name,
                role: role_name(reader),
            });
        }
        let sampleable = row.get::<bool>(6)?.unwrap_or(false);
        Ok(Source {
            table: table_name,
            id_column: spi::quote_identifier(id_column),
            wallet_column: spi::quote_identifier(wallet_column),
            id_type,
            reader,
            sampleable,
            id_indexed: !sampleable || row.get::<bool>(7)?.unwrap_or(false),
        })
    }

    /// Warns when no index leads with the id column: each batch then reads the whole table to
    /// find the next ids in order, so a run reads it once per batch.
    pub(crate) fn warn_when_unindexed(&self) {
        if self.id_indexed {
            return;
        }
        let Source {
            table, id_column, ..
        } = self;
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("{table} has no index on {id_column}: every batch reads the whole table"),
            "identity_bindings",
        )
        .set_hint(format!(
            "Before backfilling a large table: CREATE INDEX ON {table} ({id_column})."
        ))
        .report(PgLogLevel::WARNING);
    }

    /// The source a backfill run recorded: a table name (as `regclass` prints it) and columns.
    pub(crate) fn named(
        client: &mut SpiClient<'_>,
        table: &str,
        id_column: &str,
        wallet_column: &str,
    ) -> Result<Source, IdentityError> {
        let oid = client
            .select("SELECT to_regclass($1)::oid", None, &[table.into()])?
            .first()
            .get_one::<Oid>()?
            .ok_or_else(|| IdentityError::InvalidParameter {
                reason: format!("the backfill's table {table} no longer exists"),
            })?;
        Source::resolve(client, oid, id_column, wallet_column)
    }

    /// The ids after `after` of a `percent` sample of the table's pages, in id order, as text.
    pub(crate) fn sorted_id_sample(
        &self,
        client: &mut SpiClient<'_>,
        after: Option<&str>,
        percent: f64,
    ) -> Result<Vec<String>, IdentityError> {
        let Source {
            table,
            id_column,
            id_type,
            ..
        } = self;
        let sql = format!(
            "SELECT t.{id_column}::text FROM {table} t TABLESAMPLE SYSTEM ({percent})
              WHERE t.{id_column} IS NOT NULL AND ($1::text IS NULL OR t.{id_column} > $1::{id_type})
              ORDER BY t.{id_column}"
        );
        let mut ids = Vec::new();
        let _rights = ReaderRights::take(self.reader);
        for row in client.select(sql.as_str(), None, &[after.into()])? {
            ids.extend(row.get::<String>(1)?);
        }
        free_last_result();
        Ok(ids)
    }

    /// The next batch of (id, wallet) rows after `after` and up to `upto` (both as text, `None`:
    /// unbounded), in id order, as text: the next `size` rows, and the rest of the last one's id,
    /// since the next batch resumes after that id (a view of users' wallets has a row per
    /// wallet). Rows with no id are left to `rows_without_id`: they have no place in the
    /// order to resume after.
    fn batch(
        &self,
        client: &mut SpiClient<'_>,
        (after, upto): KeyRange<'_>,
        size: i64,
    ) -> Result<Vec<SourceRow>, IdentityError> {
        let Source {
            table,
            id_column,
            wallet_column,
            id_type,
            ..
        } = self;
        let in_range = format!(
            "t.{id_column} IS NOT NULL
             AND ($1::text IS NULL OR t.{id_column} > $1::{id_type})
             AND ($2::text IS NULL OR t.{id_column} <= $2::{id_type})"
        );
        let nth_id = format!(
            "SELECT t.{id_column}::text FROM {table} t WHERE {in_range}
              ORDER BY t.{id_column} OFFSET $3 LIMIT 1"
        );
        let rows_upto = format!(
            "SELECT t.{id_column}::text, t.{wallet_column}::text FROM {table} t WHERE {in_range}
              ORDER BY t.{id_column}"
        );
        let _rights = ReaderRights::take(self.reader);
        let nth_args = [after.into(), upto.into(), (size - 1).into()];
        let last = match client.select(nth_id.as_str(), None, &nth_args)?.next() {
            Some(row) => row.get::<String>(1)?,
            None => None,
        };
        // No `size`-th row: fewer rows than that are left in the range, and this batch is the rest.
        let upto = last.as_deref().or(upto);
        let mut rows = Vec::new();
        for row in client.select(rows_upto.as_str(), None, &[after.into(), upto.into()])? {
            rows.push((row.get::<String>(1)?, row.get::<String>(2)?));
        }
        free_last_result();
        Ok(rows)
    }
}

/// The role that reads the source table. Reading a table can run code its owner wrote (a view's
/// functions, a CHECK of the id column's domain), and the functions that read it are SECURITY
/// DEFINER: with their rights that code would run as the extension's owner, a superuser. So the
/// caller reads it; a superuser caller (the background worker is one) reads it as its owner, as
/// PostgreSQL's ANALYZE and autovacuum do, so that no code in the table runs with more rights
/// than its author's.
fn reader_of(caller: pg_sys::Oid, table_owner: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a catalog lookup.
    if unsafe { pg_sys::superuser_arg(caller) } {
        table_owner
    } else {
        caller
    }
}

/// The name of a role that exists (one calling, or owning a table).
pub(crate) fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: the name is palloc'd and copied at once; a role that does not exist raises.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, false);
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// The reader's rights (see `reader_of`), held while the source table is read: in a
/// security-restricted operation (no SET ROLE, no temporary objects), with GUC changes undone at
/// the end, as PostgreSQL runs ANALYZE with a table owner's rights. Dropped: the function's own
/// rights restored, on an error too.
struct ReaderRights {
    definer: pg_sys::Oid,
    security_context: i32,
    guc_nest_level: i32,
}

impl ReaderRights {
    fn take(reader: pg_sys::Oid) -> ReaderRights {
        let mut definer = pg_sys::InvalidOid;
        let mut security_context = 0;
        // SAFETY: reads and sets the backend's current user, as PostgreSQL's own maintenance
        // commands do; Drop restores both, and the GUC nest level, on every path.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut definer, &mut security_context);
            pg_sys::SetUserIdAndSecContext(
                reader,
                security_context
                    | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                    | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
            );
            ReaderRights {
                definer,
                security_context,
                guc_nest_level: pg_sys::NewGUCNestLevel(),
            }
        }
    }
}

impl Drop for ReaderRights {
    fn drop(&mut self) {
        // SAFETY: undoes take(), in the reverse order.
        unsafe {
            pg_sys::AtEOXact_GUC(false, self.guc_nest_level);
            pg_sys::SetUserIdAndSecContext(self.definer, self.security_context);
        }
    }
}

impl Source {
    /// Counts the rows with no id once a run has read every other row: scanned, and, with a
    /// wallet, invalid (no user to bind it to), the first few named in a NOTICE as the batches
    /// name theirs.
    pub(crate) fn rows_without_id(
        &self,
        client: &mut SpiClient<'_>,
        seen: &mut Tally,
    ) -> Result<Tally, IdentityError> {
        let Source {
            table,
            id_column,
            wallet_column,
            ..
        } = self;
        let with_wallet = format!(
            "t.{id_column} IS NULL AND t.{wallet_column} IS NOT NULL AND t.{wallet_column}::text <> ''"
        );
        let sql = format!(
            "SELECT count(*), count(*) FILTER (WHERE {with_wallet}),
                    ARRAY(SELECT t.{wallet_column}::text FROM {table} t WHERE {with_wallet} LIMIT $1)
               FROM {table} t WHERE t.{id_column} IS NULL"
        );
        let _rights = ReaderRights::take(self.reader);
        let row = client
            .select(sql.as_str(), None, &[NOTICED_PER_KIND.into()])?
            .first();
        let tally = Tally {
            scanned: row.get::<i64>(1)?.unwrap_or(0),
            invalid: row.get::<i64>(2)?.unwrap_or(0),
            ..Tally::default()
        };
        for (n, wallet) in row
            .get::<Vec<String>>(3)?
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            if seen.invalid + (n as i64) < NOTICED_PER_KIND {
                notice!("backfill: user {}", InvalidRow { id: None, wallet });
            }
        }
        seen.add(&tally);
        Ok(tally)
    }
}

/// What one batch (or a whole run) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub scanned: i64,
    pub created: i64,
    pub existing: i64,
    pub conflicts: i64,
    pub invalid: i64,
    /// The last id read: where the next batch starts.
    pub last_id: Option<String>,
}

impl Tally {
    fn add(&mut self, batch: &Tally) {
        self.scanned += batch.scanned;
        self.created += batch.created;
        self.existing += batch.existing;
        self.conflicts += batch.conflicts;
        self.invalid += batch.invalid;
        self.last_id = batch.last_id.clone().or(self.last_id.take());
    }
}

/// Keeps the plans of the per-row lookups right while a backfill grows the tables: statistics
/// taken while the tables were (nearly) empty make PostgreSQL plan sequential scans for key
/// lookups, and a long backfill then scans ever larger tables once per row. ANALYZE each time the
/// bindings have doubled since the last one (at most log2(n) times): it counts this transaction's
/// own rows, and invalidates the stale plans.
pub(crate) struct StatisticsKeeper {
    bindings_at_last_analyze: i64,
    created_since: i64,
}

impl StatisticsKeeper {
    /// Starts from the size the statistics know now.
    pub(crate) fn new(client: &mut SpiClient<'_>) -> Result<StatisticsKeeper, IdentityError> {
        let known = client
            .select(
                "SELECT greatest(c.reltuples, 0)::int8 FROM pg_class c WHERE c.oid = 'identity.user_bindings'::regclass",
                None,
                &[],
            )?
            .first()
            .get_one::<i64>()?
            .unwrap_or(0);
        Ok(StatisticsKeeper {
            bindings_at_last_analyze: known,
            created_since: 0,
        })
    }

    fn created(&mut self, client: &mut SpiClient<'_>, count: i64) -> Result<(), IdentityError> {
        self.created_since += count;
        if self.created_since >= self.bindings_at_last_analyze.max(1000) {
            client.update(
                "ANALYZE identity.user_bindings, identity.event_chain_heads",
                None,
                &[],
            )?;
            self.bindings_at_last_analyze += self.created_since;
            self.created_since = 0;
        }
        Ok(())
    }
}

/// A source row whose user id is not a UUID or whose wallet is not an address.
struct InvalidRow {
    id: Option<String>,
    wallet: String,
}

impl std::fmt::Display for InvalidRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: invalid user id or wallet address \"{}\"",
            self.id.as_deref().map_or("NULL".into(), echo),
            echo(&self.wallet)
        )
    }
}

/// Binds one batch of the source's wallets in `range`. `seen` counts rows already reported by
/// NOTICE.
pub(crate) fn backfill_batch(
    client: &mut SpiClient<'_>,
    source: &Source,
    range: KeyRange<'_>,
    size: i64,
    seen: &mut Tally,
    statistics: &mut StatisticsKeeper,
) -> Result<Tally, IdentityError> {
    let mut tally = Tally::default();
    let rows = source.batch(client, range, size)?;
    tally.scanned = rows.len() as i64;
    tally.last_id = rows.last().and_then(|(id, _)| id.clone());
    // Each row checked, in source order: the (user, address) to bind, or why it cannot be.
    let checked: Vec<Result<(Uuid, String), InvalidRow>> = rows
        .into_iter()
        .filter_map(|(id, wallet)| Some((id, wallet.filter(|w| !w.is_empty())?)))
        .map(|(id, wallet)| {
            let user = id.as_deref().and_then(|id| Uuid::parse_str(id).ok());
            match (user, Builtin::Wallet.canonicalize(&wallet)) {
                (Some(user), Ok(address)) => Ok((user, address)),
                _ => Err(InvalidRow { id, wallet }),
            }
        })
        .collect();
    let valid: Vec<(Uuid, String)> = checked.iter().flatten().cloned().collect();
    let evidence = json!({
        "method": "backfill",
        "source": { "table": source.table, "id_column": source.id_column, "wallet_column": source.wallet_column },
    });
    // The batch in an SPI connection of its own, so its results are freed with it.
    let outcomes = Spi::connect_mut(|batch| bind_many(batch, "wallet", &valid, &evidence))?;
    let mut outcomes = outcomes.into_iter();
    for row in &checked {
        let (user, address) = match row {
            Ok(valid) => valid,
            Err(invalid) => {
                tally.invalid += 1;
                if seen.invalid + tally.invalid <= NOTICED_PER_KIND {
                    notice!("backfill: user {invalid}");
                }
                continue;
            }
        };
        match outcomes.next() {
            Some(BatchOutcome::Created) => tally.created += 1,
            Some(BatchOutcome::Existing) => tally.existing += 1,
            Some(BatchOutcome::BoundToAnotherUser) => {
                tally.conflicts += 1;
                if seen.conflicts + tally.conflicts <= NOTICED_PER_KIND {
                    notice!(
                        "backfill: user {user}: wallet {address} is already bound to another user"
                    );
                }
            }
            None => return Err(IdentityError::Internal("a batch outcome is missing".into())),
        }
    }
    statistics.created(client, tally.created)?;
    seen.add(&tally);
    Ok(tally)
}

/// Whether row-level security would hide rows of `table` from `role`, its reader. The backfill and
/// the backstop bind every row of the table or none: a subset would leave the rest silently unbound
/// (pg_dump refuses such a table for the same reason).
fn row_security_hides_rows(table: Oid, role: Oid) -> bool {
    // SAFETY: catalog lookups only; with noError it returns instead of raising for
    // row_security = off.
    let applies = unsafe { pg_sys::check_enable_rls(table, role, true) };
    applies == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
}

/// The users table: NULL when the default, public.users, does not exist.
fn users_table(users: Option<PgRelation>) -> Result<Oid, IdentityError> {
    users
        .map(|relation| relation.oid())
        .ok_or(IdentityError::NoUsersTable)
}

pub(crate) fn checked_batch_size(size: i32) -> Result<i64, IdentityError> {
    match size {
        n if n >= 1 => Ok(i64::from(n)),
        _ => Err(IdentityError::InvalidParameter {
            reason: "batch_size must be at least 1".into(),
        }),
    }
}

type TallyRow = (i64, i64, i64, i64, i64);

fn row(t: &Tally) -> TallyRow {
    (t.scanned, t.created, t.existing, t.conflicts, t.invalid)
}

/// `identity.backfill_wallet_bindings(users, id_column, wallet_column, batch_size)`: binds every
/// valid wallet of the table in one transaction. Idempotent: a second run only counts `existing`.
#[allow(clippy::type_complexity)] // pgrx reads column names from name! in the signature
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn backfill_wallet_bindings(
    users: default!(Option<PgRelation>, "to_regclass('public.users')"),
    id_column: default!(Option<ColumnName>, "'id'"),
    wallet_column: default!(Option<ColumnName>, "'wallet_address'"),
    batch_size: default!(Option<i32>, 10000),
) -> Result<
    TableIterator<
        'static,
        (
            name!(scanned, i64),
            name!(created, i64),
            name!(existing, i64),
            name!(conflicts, i64),
            name!(invalid, i64),
        ),
    >,
    ErrorReport,
> {
    writable()?;
    let id_column = required_or_left_out(id_column, "id_column", "'id'")?;
    let wallet_column = required_or_left_out(wallet_column, "wallet_column", "'wallet_address'")?;
    let size = checked_batch_size(required_or_left_out(batch_size, "batch_size", "10000")?)?;
    let total = Spi::connect_mut(|client| -> Result<Tally, IdentityError> {
        let source = Source::from_arguments(client, users, &id_column, &wallet_column)?;
        source.warn_when_unindexed();
        let mut total = Tally::default();
        let mut statistics = StatisticsKeeper::new(client)?;
        loop {
            let batch = backfill_batch(
                client,
                &source,
                (total.last_id.clone().as_deref(), None),
                size,
                &mut total,
                &mut statistics,
            )?;
            if batch.scanned < size {
                source.rows_without_id(client, &mut total)?;
                return Ok(total);
            }
        }
    })?;
    Ok(TableIterator::once(row(&total)))
}

/// `identity.backfill_wallet_batch(users, id_column, wallet_column, batch_size, after_id)`: one
/// batch after `after_id` (NULL: from the start), with the id to start the next one after: for a
/// loop of the caller's own (the procedure keeps its progress in identity.backfill_parts instead).
#[allow(clippy::type_complexity)] // pgrx reads column names from name! in the signature
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn backfill_wallet_batch(
    users: Option<PgRelation>,
    id_column: Option<ColumnName>,
    wallet_column: Option<ColumnName>,
    batch_size: Option<i32>,
    after_id: Option<&str>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(scanned, i64),
            name!(created, i64),
            name!(existing, i64),
            name!(conflicts, i64),
            name!(invalid, i64),
            name!(last_id, Option<String>),
        ),
    >,
    ErrorReport,
> {
    writable()?;
    let id_column = required(id_column, "id_column")?;
    let wallet_column = required(wallet_column, "wallet_column")?;
    let size = checked_batch_size(required(batch_size, "batch_size")?)?;
    let batch = Spi::connect_mut(|client| -> Result<Tally, IdentityError> {
        let source = Source::from_arguments(client, users, &id_column, &wallet_column)?;
        let mut statistics = StatisticsKeeper::new(client)?;
        backfill_batch(
            client,
            &source,
            (after_id, None),
            size,
            &mut Tally::default(),
            &mut statistics,
        )
    })?;
    let (scanned, created, existing, conflicts, invalid) = row(&batch);
    Ok(TableIterator::once((
        scanned,
        created,
        existing,
        conflicts,
        invalid,
        batch.last_id,
    )))
}

/// `identity.backstop(users, id_column, wallet_column)`: queues a binding job for every user whose
/// valid wallet is not bound at all; returns how many jobs it queued (pending ones count once).
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn backstop(
    users: default!(Option<PgRelation>, "to_regclass('public.users')"),
    id_column: default!(Option<ColumnName>, "'id'"),
    wallet_column: default!(Option<ColumnName>, "'wallet_address'"),
) -> Result<i64, ErrorReport> {
    writable()?;
    let id_column = required_or_left_out(id_column, "id_column", "'id'")?;
    let wallet_column = required_or_left_out(wallet_column, "wallet_column", "'wallet_address'")?;
    Ok(Spi::connect_mut(|client| -> Result<i64, IdentityError> {
        let source = Source::from_arguments(client, users, &id_column, &wallet_column)?;
        source.warn_when_unindexed();
        let mut queued = 0;
        let mut after: Option<String> = None;
        loop {
            let rows = source.batch(client, (after.as_deref(), None), 10_000)?;
            let done = rows.len() < 10_000;
            for (id, wallet) in rows {
                after = id.clone();
                let user = id.as_deref().and_then(|id| Uuid::parse_str(id).ok());
                let address = wallet.as_deref().map(|w| Builtin::Wallet.canonicalize(w));
                let (Some(user), Some(Ok(address))) = (user, address) else {
                    continue;
                };
                let evidence = json!({ "method": "backstop", "source": { "table": source.table } });
                // Each row in an SPI connection of its own, so its results are freed with it.
                let newly_queued = Spi::connect_mut(|row_client| -> Result<bool, IdentityError> {
                    if crate::bindings::owner_of("wallet", &address)?.is_some() {
                        return Ok(false);
                    }
                    Ok(enqueue(row_client, user, "wallet", &address, evidence)?.1)
                })?;
                if newly_queued {
                    queued += 1;
                }
            }
            if done {
                return Ok(queued);
            }
        }
    })?)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::{six_app_users, sqlstate_of, WALLET_A};
    use pgrx::prelude::*;

    fn backfill(batch: i32) -> (i64, i64, i64, i64, i64) {
        let row = Spi::connect(|client| {
            let row = client
                .select(
                    &format!("SELECT * FROM identity.backfill_wallet_bindings('app_users', 'uid', 'eth', {batch})"),
                    None,
                    &[],
                )
                .unwrap()
                .first();
            (1..=5)
                .map(|i| row.get::<i64>(i).unwrap().unwrap())
                .collect::<Vec<_>>()
        });
        (row[0], row[1], row[2], row[3], row[4])
    }

    #[pg_test]
    fn backfill_counts_every_kind_of_row_and_is_idempotent() {
        crate::testing::take_turns();
        six_app_users();
        assert_eq!(backfill(2), (6, 2, 0, 1, 2));
        assert_eq!(backfill(4), (6, 0, 2, 1, 2));
        let evidence = Spi::get_one::<String>(
            "SELECT payload->'evidence'->'source'->>'wallet_column' FROM identity.identity_events LIMIT 1",
        );
        assert_eq!(evidence.unwrap().as_deref(), Some("eth"));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM identity.identity_events"),
            Ok(Some(2))
        );
    }

    /// Two users and two rows with no id (one with a wallet): in batches of three, the first
    /// batch would end on a row with no id, which sorts after every id.
    fn users_and_rows_without_id() {
        Spi::run(
            "CREATE TABLE partly_identified (uid text, eth text);
             INSERT INTO partly_identified VALUES
               ('00000000-0000-4000-8000-0000000000f1', '0x00000000000000000000000000000000000000f1'),
               ('00000000-0000-4000-8000-0000000000f2', '0x00000000000000000000000000000000000000f2'),
               (NULL, '0x00000000000000000000000000000000000000f4'),
               (NULL, NULL)",
        )
        .unwrap();
    }

    // Each test below first reads one batch: a batch that could end on a row with no id would
    // make the whole-table reads that follow start over for ever.
    #[pg_test]
    fn rows_without_an_id_are_invalid_once_and_never_restart_the_reading() {
        crate::testing::take_turns();
        users_and_rows_without_id();
        let batch = "SELECT scanned, last_id
                       FROM identity.backfill_wallet_batch('partly_identified', 'uid', 'eth', 3, $1)";
        let last = "00000000-0000-4000-8000-0000000000f2";
        let first = Spi::get_two_with_args::<i64, String>(batch, &[None::<&str>.into()]);
        assert_eq!(first, Ok((Some(2), Some(last.into()))));
        let after_last = Spi::get_two_with_args::<i64, String>(batch, &[last.into()]);
        assert_eq!(
            after_last,
            Ok((Some(0), None)),
            "the rows with no id are no batch"
        );
        let backfill = "SELECT scanned, existing, invalid
                          FROM identity.backfill_wallet_bindings('partly_identified', 'uid', 'eth', 3)";
        assert_eq!(
            Spi::get_three::<i64, i64, i64>(backfill),
            Ok((Some(4), Some(2), Some(1)))
        );
    }

    #[pg_test]
    fn a_user_with_several_wallets_has_each_read_though_a_batch_ends_among_them() {
        crate::testing::take_turns();
        Spi::run(
            "CREATE TABLE user_wallets (uid uuid, eth text);
             INSERT INTO user_wallets VALUES
               ('00000000-0000-4000-8000-0000000000a1', '0x00000000000000000000000000000000000000a1'),
               ('00000000-0000-4000-8000-0000000000a2', '0x00000000000000000000000000000000000000a2'),
               ('00000000-0000-4000-8000-0000000000a2', '0x00000000000000000000000000000000000000a3'),
               ('00000000-0000-4000-8000-0000000000a2', '0x00000000000000000000000000000000000000a4'),
               ('00000000-0000-4000-8000-0000000000a5', '0x00000000000000000000000000000000000000a5')",
        )
        .unwrap();
        let first = Spi::get_two::<i64, String>(
            "SELECT scanned, last_id FROM identity.backfill_wallet_batch('user_wallets', 'uid', 'eth', 2, NULL)",
        );
        let second_user = "00000000-0000-4000-8000-0000000000a2";
        assert_eq!(first, Ok((Some(4), Some(second_user.into()))));
        let backfill = "SELECT scanned, created, existing
                          FROM identity.backfill_wallet_bindings('user_wallets', 'uid', 'eth', 2)";
        assert_eq!(
            Spi::get_three::<i64, i64, i64>(backfill),
            Ok((Some(5), Some(1), Some(4)))
        );
    }

    #[pg_test]
    fn the_backstop_ends_on_rows_without_an_id() {
        crate::testing::take_turns();
        // The backstop reads 10,000 rows at a time: 9,999 users without wallets and two rows with
        // no id would fill its first read, whose last row has no id to resume after.
        Spi::run(
            "CREATE TABLE many_users (uid text, eth text);
             INSERT INTO many_users
             SELECT '00000000-0000-4000-8000-' || lpad(i::text, 12, '0'), NULL
               FROM generate_series(1, 9999) i;
             INSERT INTO many_users VALUES (NULL, '0x00000000000000000000000000000000000000f6'), (NULL, NULL)",
        )
        .unwrap();
        let first = Spi::get_one::<i64>(
            "SELECT scanned FROM identity.backfill_wallet_batch('many_users', 'uid', 'eth', 10000, NULL)",
        );
        assert_eq!(first, Ok(Some(9999)));
        assert_eq!(
            Spi::get_one::<i64>("SELECT identity.backstop('many_users', 'uid', 'eth')"),
            Ok(Some(0))
        );
    }

    #[pg_test]
    fn one_batch_reports_where_the_next_one_starts() {
        crate::testing::take_turns();
        six_app_users();
        let (scanned, last): (Option<i64>, Option<String>) = Spi::get_two(
            "SELECT scanned, last_id FROM identity.backfill_wallet_batch('app_users', 'uid', 'eth', 2, NULL)",
        )
        .unwrap();
        assert_eq!(
            (scanned, last.as_deref()),
            (Some(2), Some("00000000-0000-4000-8000-000000000002"))
        );
    }

    #[pg_test]
    fn backstop_queues_only_valid_unbound_wallets() {
        crate::testing::take_turns();
        six_app_users();
        Spi::run(&format!(
            "SELECT identity.create_binding('00000000-0000-4000-8000-000000000009', 'wallet', '{WALLET_A}')"
        ))
        .unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT identity.backstop('app_users', 'uid', 'eth')"),
            Ok(Some(1))
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT identity.backstop('app_users', 'uid', 'eth')"),
            Ok(Some(0))
        );
        let job = Spi::get_one::<String>("SELECT job_key FROM identity.binding_jobs");
        assert_eq!(
            job.unwrap().as_deref(),
            Some("bind:wallet:0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359")
        );
    }

    #[pg_test]
    fn a_missing_column_or_table_is_a_clear_error() {
        crate::testing::take_turns();
        six_app_users();
        assert_eq!(
            sqlstate_of("SELECT identity.backfill_wallet_bindings('app_users', 'nope', 'eth')"),
            "22023"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.backfill_wallet_bindings('no_such_table')"),
            "42P01"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.backfill_wallet_bindings('app_users', 'uid', 'eth', 0)"),
            "22023"
        );
    }

    #[pg_test]
    fn the_source_is_read_in_a_restricted_operation_whose_settings_are_undone() {
        Spi::run("SET LOCAL work_mem = '4MB'").unwrap();
        {
            // SAFETY: reads the session's role.
            let _rights = super::ReaderRights::take(unsafe { pg_sys::GetOuterUserId() });
            // SAFETY: reads a flag of the backend's security context.
            assert!(unsafe { pg_sys::InSecurityRestrictedOperation() });
            Spi::run("SELECT set_config('work_mem', '8MB', false)").unwrap();
        }
        // SAFETY: as above.
        assert!(!unsafe { pg_sys::InSecurityRestrictedOperation() });
        assert_eq!(
            Spi::get_one::<String>("SHOW work_mem"),
            Ok(Some("4MB".into()))
        );
    }

    /// Creates `role`, and as that role `public.note_reader()`, which records in `public.readers`
    /// who calls it: the code a source table may run when it is read.
    fn reader_noting_function_of(role: &str) {
        Spi::run(&format!(
            "CREATE ROLE {role};
             GRANT CREATE ON SCHEMA public TO {role};
             SET LOCAL ROLE {role};
             CREATE TABLE public.readers (reader name);
             CREATE FUNCTION public.note_reader() RETURNS boolean LANGUAGE sql
                 AS $$ INSERT INTO public.readers VALUES (current_user) RETURNING true $$;
             RESET ROLE"
        ))
        .unwrap();
    }

    /// The roles `public.note_reader()` recorded, comma-separated.
    fn noted_readers() -> Option<String> {
        Spi::get_one::<String>("SELECT string_agg(DISTINCT reader, ',') FROM public.readers")
            .unwrap()
    }

    #[pg_test]
    fn a_domain_check_on_the_id_column_runs_as_the_caller() {
        crate::testing::take_turns();
        reader_noting_function_of("id_domain_owner");
        Spi::run(
            "GRANT USAGE ON SCHEMA identity TO id_domain_owner;
             GRANT EXECUTE ON FUNCTION identity.backfill_wallet_bindings(regclass, name, name, integer)
                TO id_domain_owner;
             SET LOCAL ROLE id_domain_owner;
             CREATE DOMAIN public.noted_id AS text CHECK (public.note_reader());
             CREATE TABLE public.owned_users (uid public.noted_id PRIMARY KEY, eth text);
             INSERT INTO public.owned_users VALUES
                 ('00000000-0000-4000-8000-000000000011', '0x00000000000000000000000000000000000000a1'),
                 ('00000000-0000-4000-8000-000000000012', '0x00000000000000000000000000000000000000a2');
             TRUNCATE public.readers",
        )
        .unwrap();
        // Batches of one: the second batch casts the first one's id to the domain.
        let created = Spi::get_one::<i64>(
            "SELECT created FROM identity.backfill_wallet_bindings('public.owned_users', 'uid', 'eth', 1)",
        );
        assert_eq!(created, Ok(Some(2)));
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(noted_readers().as_deref(), Some("id_domain_owner"));
    }

    #[pg_test]
    fn a_superuser_reads_the_source_as_its_owner() {
        crate::testing::take_turns();
        reader_noting_function_of("view_owner");
        Spi::run(
            "SET LOCAL ROLE view_owner;
             CREATE VIEW public.noted_users AS
                 SELECT '00000000-0000-4000-8000-000000000021'::uuid AS id,
                        '0x00000000000000000000000000000000000000c1' AS wallet_address
                  WHERE public.note_reader();
             RESET ROLE",
        )
        .unwrap();
        let created = Spi::get_one::<i64>(
            "SELECT created FROM identity.backfill_wallet_bindings('public.noted_users')",
        );
        assert_eq!(created, Ok(Some(1)));
        assert_eq!(noted_readers().as_deref(), Some("view_owner"));
    }

    #[pg_test]
    fn an_owner_who_forced_row_security_on_their_table_is_refused_and_nothing_is_bound() {
        crate::testing::take_turns();
        six_app_users();
        Spi::run(
            "CREATE ROLE app_owner;
             GRANT USAGE ON SCHEMA identity TO app_owner;
             GRANT EXECUTE ON FUNCTION identity.backfill_wallet_bindings(regclass, name, name, integer),
                                       identity.backfill_plan(regclass, name, name, integer, text)
                TO app_owner;
             ALTER TABLE app_users OWNER TO app_owner;
             ALTER TABLE app_users ENABLE ROW LEVEL SECURITY;
             CREATE POLICY visible ON app_users USING (uid LIKE '%1');
             SET LOCAL ROLE app_owner",
        )
        .unwrap();
        // The owner sees every row until they force their own policies on themselves.
        assert_eq!(backfill(10), (6, 2, 0, 1, 2));
        Spi::run("ALTER TABLE app_users FORCE ROW LEVEL SECURITY").unwrap();
        for refused in [
            "SELECT identity.backfill_wallet_bindings('app_users', 'uid', 'eth')",
            "SELECT identity.backfill_plan('app_users', 'uid', 'eth', 10, NULL)",
        ] {
            assert_eq!(sqlstate_of(refused), "42501", "{refused}");
        }
        Spi::run("RESET ROLE").unwrap();
        let left = "SELECT (SELECT count(*) FROM identity.user_bindings),
                           (SELECT count(*) FROM identity.backfill_parts)";
        assert_eq!(Spi::get_two::<i64, i64>(left), Ok((Some(2), Some(0))));
    }
}
