//! Every failure the extension reports, each with a stable SQLSTATE, a message that names what was
//! wrong, and a hint that says what to do. SQL-facing functions return `Result<_, ErrorReport>`
//! and convert with `?`.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use std::fmt;

/// Longest slice of caller input echoed back in a message: enough to recognise, never a flood.
const ECHO_LIMIT: usize = 80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// 22004: an argument was NULL. `default` is the one its function declares, if any: NULL never
    /// stands for it, so the hint says to leave the argument out instead.
    NullArgument {
        argument: &'static str,
        default: Option<&'static str>,
    },
    /// 22023: no provider of that name is registered.
    UnknownProvider { provider: String },
    /// 22023: the external id is not in the provider's format.
    MalformedExternalId {
        provider: String,
        external_id: String,
        reason: String,
    },
    /// 22023: evidence must be a JSON object.
    InvalidEvidence { found: &'static str },
    /// 22023: evidence nests deeper than `evidence::MAX_EVIDENCE_DEPTH` levels.
    EvidenceTooDeep,
    /// 23505: the external id is bound to another user (NO_AUTO_MERGE). Never names that user.
    BoundToAnotherUser {
        provider: String,
        external_id: String,
    },
    /// P0002: revoke of an external id that has no live binding.
    NotBound {
        provider: String,
        external_id: String,
    },
    /// P0002: no live binding has this id (it never existed, or was revoked).
    NoLiveBinding { binding_id: String },
    /// 22023: a merge needs two different users.
    MergeIntoSelf,
    /// 22023: provider names are lowercase identifiers.
    InvalidProviderName { name: String },
    /// 42710: the provider exists with another definition.
    ProviderConflict { name: String },
    /// 2201B: a pattern that compiles alone but not as `^(?:pattern)$`, the whole-id match.
    PatternNotAnchorable { prefix: String },
    /// 22P02: the text is not an EIP-4361 message; names the line and field.
    SiweMalformed { reason: String },
    /// 22P02: a SIWE message longer than `siwe::MAX_MESSAGE_BYTES`; refused before it is parsed.
    SiweTooLong { bytes: usize },
    /// 28000: a well-formed SIWE message or signature that is refused; names the reason.
    SiweRefused { reason: String },
    /// 28000: the message's nonce was never issued, has expired, or was used already.
    NonceUnusable { nonce: String },
    /// 22023: a nonce lifetime must be positive and at most a day.
    InvalidNonceLifetime,
    /// 53400: identity.max_outstanding_nonces nonces are outstanding already.
    TooManyOutstandingNonces { limit: i32 },
    /// 42P01: no users table given, and public.users does not exist.
    NoUsersTable,
    /// 42501: the caller may not read the table a backfill or backstop would read for them.
    NoSourcePrivilege { table: String },
    /// 42501: row-level security would hide rows of the backfill's or backstop's table from the
    /// role that reads it.
    SourceFilteredByRowSecurity { table: String, role: String },
    /// 42501: a backfill run is stepped by a role other than the one that planned it.
    NotYourBackfillRun { run_id: i64, run_as: String },
    /// 22023: an argument outside its range.
    InvalidParameter { reason: String },
    /// A step that failed in a subtransaction, raised again with its own SQLSTATE.
    StepFailed {
        code: PgSqlErrorCode,
        message: String,
    },
    /// 40001: another transaction appended to the same user's chain after this snapshot.
    ChainAppendConflict,
    /// 40001: a new backfill run would replace one planned after this transaction's snapshot.
    BackfillPlannedMeanwhile { run_id: i64 },
    /// 40001: the merged user's first binding committed after the merge read their bindings.
    MergeMetFirstBind { from_user: String },
    /// 40001: a queued binding was bound to a user whom a merge took away while it waited.
    QueuedUserMergedMeanwhile { user_id: String },
    /// 40001: a first login's binding met a change committed after this transaction's snapshot.
    LoginConflict { address: String },
    /// 40001: a first login's binding gave up waiting for another transaction's unfinished
    /// binding (or revoke) of the same wallet.
    LoginBehindAnother { address: String },
    /// 55P03: a queued binding's id is being bound or revoked by a transaction not finished yet,
    /// which a pass does not wait for: that transaction may be waiting for a chain it holds.
    IdInUse {
        provider: String,
        external_id: String,
    },
    /// 55P03: a queued binding's merges lead to a user whose chain comes, in user order, before
    /// one the pass holds: taken now, it could deadlock with a merge.
    ChainOutOfOrder { user_id: String },
    /// 42501: identity.identity_events refuses UPDATE, DELETE and TRUNCATE.
    AppendOnly { operation: &'static str },
    /// 42501: identity.providers refuses UPDATE, DELETE and TRUNCATE: a provider is permanent.
    ProviderIsPermanent { operation: &'static str },
    /// 25006: a write in a read-only transaction; `in_recovery` when the server is a hot standby,
    /// where every transaction is read-only.
    ReadOnly { in_recovery: bool },
    /// XX000: a bug or an unexpected SPI condition; never caused by input.
    Internal(String),
}

impl IdentityError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use IdentityError::*;
        use PgSqlErrorCode::*;
        match self {
            NullArgument { .. } => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            UnknownProvider { .. }
            | MalformedExternalId { .. }
            | InvalidEvidence { .. }
            | EvidenceTooDeep
            | MergeIntoSelf
            | InvalidProviderName { .. }
            | InvalidNonceLifetime
            | InvalidParameter { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            StepFailed { code, .. } => *code,
            SiweMalformed { .. } | SiweTooLong { .. } => ERRCODE_INVALID_TEXT_REPRESENTATION,
            SiweRefused { .. } | NonceUnusable { .. } => {
                ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION
            }
            BoundToAnotherUser { .. } => ERRCODE_UNIQUE_VIOLATION,
            NotBound { .. } | NoLiveBinding { .. } => ERRCODE_NO_DATA_FOUND,
            ProviderConflict { .. } => ERRCODE_DUPLICATE_OBJECT,
            PatternNotAnchorable { .. } => ERRCODE_INVALID_REGULAR_EXPRESSION,
            ChainAppendConflict
            | BackfillPlannedMeanwhile { .. }
            | MergeMetFirstBind { .. }
            | QueuedUserMergedMeanwhile { .. }
            | LoginConflict { .. }
            | LoginBehindAnother { .. } => ERRCODE_T_R_SERIALIZATION_FAILURE,
            AppendOnly { .. }
            | ProviderIsPermanent { .. }
            | NoSourcePrivilege { .. }
            | SourceFilteredByRowSecurity { .. }
            | NotYourBackfillRun { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            NoUsersTable => ERRCODE_UNDEFINED_TABLE,
            TooManyOutstandingNonces { .. } => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            IdInUse { .. } | ChainOutOfOrder { .. } => ERRCODE_LOCK_NOT_AVAILABLE,
            ReadOnly { .. } => ERRCODE_READ_ONLY_SQL_TRANSACTION,
            Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    pub fn hint(&self) -> Option<String> {
        use IdentityError::*;
        Some(match self {
            NullArgument {
                argument,
                default: None,
            } => format!("Pass a value for {argument}."),
            NullArgument {
                argument,
                default: Some(default),
            } => format!("Leave {argument} out to use its default ({default}), or pass a value."),
            UnknownProvider { .. } => {
                "Built-in providers are wallet, discord, github and google; register others with identity.register_provider(name, pattern).".into()
            }
            MalformedExternalId { .. } => {
                "identity.providers describes each provider's format; identity.canonical_external_id(provider, external_id) checks one id.".into()
            }
            InvalidEvidence { .. } => {
                "Pass evidence as a JSON object, e.g. '{\"method\": \"oauth\"}'.".into()
            }
            EvidenceTooDeep => {
                "Evidence records how a link was proven: keep a deeper document elsewhere and put a reference to it (its URL or hash) in the evidence.".into()
            }
            BoundToAnotherUser { .. } => {
                "Bindings are never moved implicitly: revoke the binding first, or merge the two users with identity.merge_users(from_user, into_user, evidence).".into()
            }
            NotBound { .. } => "identity.resolve(provider, external_id) tells whether an id is bound.".into(),
            NoLiveBinding { .. } => {
                "Pass an id from identity.user_bindings; a revoked binding's evidence stays in its bind event in identity.identity_events.".into()
            }
            MergeIntoSelf => "Pass two different user ids.".into(),
            InvalidProviderName { .. } => {
                "A provider name is 1 to 63 characters: a lowercase letter, then lowercase letters, digits or underscores.".into()
            }
            ProviderConflict { .. } => {
                "Provider definitions never change once registered: register a new name.".into()
            }
            PatternNotAnchorable { .. } => {
                "A pattern is matched against the whole id as ^(?:pattern)$, where PostgreSQL allows no director or embedded options: write it without them. Case-insensitive matching is not offered, since it would store one account under several spellings.".into()
            }
            SiweMalformed { .. } => {
                "Send the message exactly as the wallet signed it: EIP-4361 layout, LF line ends, no trailing newline.".into()
            }
            SiweTooLong { .. } => {
                "A wallet's sign-in message is a few hundred bytes: refuse longer sign-in requests in the application, before they reach the database.".into()
            }
            SiweRefused { .. } => "Ask the wallet to sign a fresh message for this domain with a new nonce.".into(),
            NonceUnusable { .. } => {
                "Nonces are single use and expire: get a new one from identity.issue_nonce() and sign again.".into()
            }
            InvalidNonceLifetime => "Pass an interval such as '10 minutes' (at most '1 day').".into(),
            TooManyOutstandingNonces { .. } => {
                "Rate-limit nonce requests per client in the application; raise identity.max_outstanding_nonces only if real sign-ins need more, or shorten their lifetime.".into()
            }
            NoUsersTable => "Pass the table that holds the users, e.g. identity.backfill_wallet_bindings('app.accounts').".into(),
            NoSourcePrivilege { .. } => {
                "GRANT SELECT on the id and wallet columns to the role that runs the backfill.".into()
            }
            SourceFilteredByRowSecurity { .. } => {
                "The backfill and the backstop read every row: run them as a role with BYPASSRLS, or as the table's owner without FORCE ROW LEVEL SECURITY (a superuser reads as the owner).".into()
            }
            NotYourBackfillRun { .. } => {
                "A run reads its source with the privileges of the role that started it: CALL the backfill as that role.".into()
            }
            InvalidParameter { .. } | StepFailed { .. } => return None,
            ChainAppendConflict => "Retry the transaction.".into(),
            MergeMetFirstBind { .. } => {
                "Retry the transaction: the merge then moves that binding too.".into()
            }
            QueuedUserMergedMeanwhile { .. } => {
                "Run the job again (identity.run_binding_jobs retries it): it then binds to the user merged into.".into()
            }
            IdInUse { .. } | ChainOutOfOrder { .. } => {
                "Nothing to do: identity.run_binding_jobs retries the job once that transaction has finished.".into()
            }
            BackfillPlannedMeanwhile { .. } => {
                "CALL it again: the new run then replaces that one, as under READ COMMITTED.".into()
            }
            LoginConflict { .. } | LoginBehindAnother { .. } => {
                "Retry the transaction: its nonce is spent only when it commits, so the same signed message logs in.".into()
            }
            AppendOnly { .. } => {
                "Events are never changed or removed: record a correction as a new event (identity.revoke_binding, identity.merge_users).".into()
            }
            ProviderIsPermanent { .. } => {
                "Bindings name their provider for good: register a provider with a new definition under a new name (identity.register_provider).".into()
            }
            ReadOnly { in_recovery: true } => {
                "Send writes (binds, revokes, merges, nonces, logins, queued jobs, backfills) to the primary. A standby answers identity.resolve, resolve_many, verify_siwe, verify_binding, verify_event_chain and check_integrity.".into()
            }
            ReadOnly { in_recovery: false } => {
                "Call it in a read-write transaction (BEGIN READ WRITE, or with default_transaction_read_only off).".into()
            }
            Internal(_) => return None,
        })
    }

    /// Raise this error as a PostgreSQL ERROR. Used where no `Result` can carry it (triggers).
    pub fn raise(self) -> ! {
        ErrorReport::from(self).report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use IdentityError::*;
        match self {
            NullArgument { argument, .. } => write!(f, "{argument} must not be NULL"),
            UnknownProvider { provider } => write!(f, "unknown provider \"{}\"", echo(provider)),
            MalformedExternalId {
                provider,
                external_id,
                reason,
            } => write!(
                f,
                "malformed {provider} external id \"{}\": {reason}",
                echo(external_id)
            ),
            InvalidEvidence { found } => write!(f, "evidence must be a JSON object, not {found}"),
            EvidenceTooDeep => write!(
                f,
                "evidence nests objects and arrays more than {} levels deep",
                crate::evidence::MAX_EVIDENCE_DEPTH
            ),
            BoundToAnotherUser {
                provider,
                external_id,
            } => write!(
                f,
                "{provider} external id \"{}\" is already bound to another user",
                echo(external_id)
            ),
            NotBound {
                provider,
                external_id,
            } => {
                write!(
                    f,
                    "{provider} external id \"{}\" is not bound",
                    echo(external_id)
                )
            }
            NoLiveBinding { binding_id } => write!(f, "no live binding has id {binding_id}"),
            MergeIntoSelf => write!(f, "cannot merge a user into itself"),
            InvalidProviderName { name } => write!(f, "invalid provider name \"{}\"", echo(name)),
            ProviderConflict { name } => {
                write!(
                    f,
                    "provider \"{}\" is already registered with another definition",
                    echo(name)
                )
            }
            PatternNotAnchorable { prefix } => write!(
                f,
                "invalid provider pattern: it begins with \"{}\", which PostgreSQL reads only at the start of a whole regular expression",
                echo(prefix)
            ),
            SiweMalformed { reason } => write!(f, "malformed SIWE message: {reason}"),
            SiweTooLong { bytes } => write!(
                f,
                "SIWE message too long: {bytes} bytes, more than the {} a sign-in may submit",
                crate::siwe::MAX_MESSAGE_BYTES
            ),
            SiweRefused { reason } => write!(f, "SIWE verification failed: {reason}"),
            NonceUnusable { nonce } => write!(
                f,
                "SIWE verification failed: nonce \"{}\" is unknown, expired or already used",
                echo(nonce)
            ),
            TooManyOutstandingNonces { limit } => write!(
                f,
                "too many outstanding SIWE nonces: identity.max_outstanding_nonces ({limit}) are issued and not yet used or expired"
            ),
            InvalidNonceLifetime => {
                write!(f, "a nonce lifetime must be positive and at most 1 day")
            }
            NoUsersTable => write!(
                f,
                "no users table: public.users does not exist and none was given"
            ),
            NoSourcePrivilege { table } => {
                write!(f, "permission denied: the caller may not read the id and wallet columns of {table}")
            }
            SourceFilteredByRowSecurity { table, role } => write!(
                f,
                "permission denied: row-level security hides rows of {table} from role {}",
                echo(role)
            ),
            NotYourBackfillRun { run_id, run_as } => write!(
                f,
                "permission denied: backfill run {run_id} belongs to role {}",
                echo(run_as)
            ),
            InvalidParameter { reason } => write!(f, "{reason}"),
            StepFailed { message, .. } => write!(f, "{message}"),
            ChainAppendConflict => write!(
                f,
                "could not append to the user's event chain: another transaction appended first"
            ),
            MergeMetFirstBind { from_user } => write!(
                f,
                "could not merge user {from_user}: their first binding was committed while the merge waited for their event chain"
            ),
            QueuedUserMergedMeanwhile { user_id } => write!(
                f,
                "could not make the queued binding for user {user_id}: a merge took that user away while the binding waited for their event chain"
            ),
            IdInUse { provider, external_id } => write!(
                f,
                "could not bind {provider} id \"{external_id}\" now: another transaction is binding or revoking it and has not finished"
            ),
            ChainOutOfOrder { user_id } => write!(
                f,
                "could not make the queued binding for user {user_id} in this pass: a merge during the pass put that user's event chain before one the pass holds, and a pass takes chains in user order"
            ),
            LoginConflict { address } => write!(
                f,
                "could not log in wallet {address}: its binding met a change committed after this transaction began, possibly another first login of the same wallet"
            ),
            LoginBehindAnother { address } => write!(
                f,
                "could not log in wallet {address}: another first login of the same wallet (or a revoke of its binding) has not finished, and this login stopped waiting for it"
            ),
            BackfillPlannedMeanwhile { run_id } => write!(
                f,
                "backfill run {run_id} of this source was planned after this transaction began, and this transaction cannot replace a run it cannot see"
            ),
            AppendOnly { operation } => write!(
                f,
                "identity.identity_events is append-only: {operation} is refused for every role"
            ),
            ProviderIsPermanent { operation } => write!(
                f,
                "a registered provider is permanent: {operation} of identity.providers is refused for every role"
            ),
            ReadOnly { in_recovery: true } => write!(
                f,
                "identity_bindings cannot write on a hot standby: this server is in recovery"
            ),
            ReadOnly { in_recovery: false } => write!(
                f,
                "identity_bindings cannot write in a read-only transaction"
            ),
            Internal(what) => write!(f, "identity_bindings internal error: {what}"),
        }
    }
}

impl From<IdentityError> for ErrorReport {
    #[track_caller]
    fn from(error: IdentityError) -> Self {
        let report = ErrorReport::new(error.sqlstate(), error.to_string(), "identity_bindings");
        match error.hint() {
            Some(hint) => report.set_hint(hint),
            None => report,
        }
    }
}

impl From<pgrx::spi::Error> for IdentityError {
    fn from(error: pgrx::spi::Error) -> Self {
        IdentityError::Internal(format!("SPI: {error}"))
    }
}

/// Caller input as it may appear in a message: cut at `ECHO_LIMIT` characters, control
/// characters escaped, so a megabyte or a terminal escape sequence never lands in a log line.
pub fn echo(input: &str) -> String {
    let mut out: String = input
        .chars()
        .take(ECHO_LIMIT)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if input.chars().nth(ECHO_LIMIT).is_some() {
        out.push('…');
    }
    out
}

/// `Some(value)`, or the 22004 error naming an argument that has no default.
pub fn required<T>(value: Option<T>, argument: &'static str) -> Result<T, IdentityError> {
    value.ok_or(IdentityError::NullArgument {
        argument,
        default: None,
    })
}

/// `Some(value)`, or the 22004 error naming an argument whose function declares `default` for it.
pub fn required_or_left_out<T>(
    value: Option<T>,
    argument: &'static str,
    default: &'static str,
) -> Result<T, IdentityError> {
    value.ok_or(IdentityError::NullArgument {
        argument,
        default: Some(default),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_cuts_long_input_and_escapes_control_characters() {
        assert_eq!(echo("abc"), "abc");
        assert_eq!(echo("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(10_000);
        let echoed = echo(&long);
        assert_eq!(echoed.chars().count(), ECHO_LIMIT + 1);
        assert!(echoed.ends_with('…'));
    }

    #[test]
    fn a_null_argument_hint_names_the_default_only_where_one_is_declared() {
        let no_default = required::<i32>(None, "user_id").unwrap_err();
        assert_eq!(no_default.to_string(), "user_id must not be NULL");
        assert_eq!(
            no_default.hint().as_deref(),
            Some("Pass a value for user_id.")
        );
        let with_default = required_or_left_out::<i32>(None, "ttl", "'10 minutes'").unwrap_err();
        assert_eq!(with_default.to_string(), "ttl must not be NULL");
        assert_eq!(
            with_default.hint().as_deref(),
            Some("Leave ttl out to use its default ('10 minutes'), or pass a value.")
        );
        assert_eq!(required_or_left_out(Some(7), "ttl", "'10 minutes'"), Ok(7));
    }

    #[test]
    fn a_binding_conflict_never_names_the_other_user() {
        let error = IdentityError::BoundToAnotherUser {
            provider: "github".into(),
            external_id: "42".into(),
        };
        assert_eq!(
            error.to_string(),
            "github external id \"42\" is already bound to another user"
        );
        assert_eq!(error.sqlstate(), PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION);
    }
}
