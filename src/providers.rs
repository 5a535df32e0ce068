//! Providers and the canonical form of their external ids: the one spelling under which an
//! account is stored, so `0xABC…` and `0xabc…` are one binding, never two.
//!
//! Built-in providers are canonicalized here in plain Rust; custom providers are rows of
//! `identity.providers` whose pattern must match the whole external id.

use crate::eip55::Address;
use crate::errors::{required, IdentityError};
use crate::statements::{writable, Statement};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::pg_sys::TEXTOID;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// Index entries stay far below PostgreSQL's btree limit, and no id is a denial of service.
pub const MAX_EXTERNAL_ID_BYTES: usize = 512;

/// Providers whose id format the extension knows natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// An EVM account, stored EIP-55 checksummed.
    Wallet,
    /// A Discord snowflake.
    Discord,
    /// A GitHub numeric user id (not the login, which can be renamed).
    Github,
    /// A Google OpenID Connect `sub`.
    Google,
}

impl Builtin {
    pub fn named(name: &str) -> Option<Builtin> {
        match name {
            "wallet" => Some(Builtin::Wallet),
            "discord" => Some(Builtin::Discord),
            "github" => Some(Builtin::Github),
            "google" => Some(Builtin::Google),
            _ => None,
        }
    }

    /// The canonical form of `external_id`, or why it is not one of this provider's ids.
    pub fn canonicalize(self, external_id: &str) -> Result<String, String> {
        match self {
            Builtin::Wallet => Address::parse_checksummed(external_id)
                .map(|(_, checksummed)| checksummed)
                .map_err(|e| e.to_string()),
            Builtin::Discord | Builtin::Github => canonical_decimal_id(external_id),
            Builtin::Google => canonical_openid_subject(external_id),
        }
    }
}

/// Discord and GitHub ids: an unsigned 64-bit decimal, written without sign or leading zeros.
fn canonical_decimal_id(text: &str) -> Result<String, String> {
    let well_formed = text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    if !well_formed {
        return Err("expected a decimal id without sign, spaces or leading zeros".into());
    }
    text.parse::<u64>()
        .map(|id| id.to_string())
        .map_err(|_| "larger than any 64-bit id".into())
}

/// OpenID Connect Core 1.0 §2: `sub` is case sensitive, at most 255 ASCII characters.
fn canonical_openid_subject(text: &str) -> Result<String, String> {
    let printable = text.bytes().all(|b| b.is_ascii_graphic());
    if !printable || text.len() > 255 {
        return Err("expected an OpenID subject: 1 to 255 printable ASCII characters".into());
    }
    Ok(text.to_owned())
}

/// A registered provider name: a lowercase identifier, so it can never be confused in a job key
/// (`bind:{provider}:{external_id}`) or a log line.
pub fn is_valid_provider_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 63
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// `($pattern)` as a custom provider's ids are matched with it: against the whole id. Both the
/// match and register_provider's check of a new pattern use it, so the check compiles exactly
/// what matching will.
macro_rules! whole_id_pattern {
    ($pattern:literal) => {
        concat!(
            "('^(?:' OPERATOR(pg_catalog.||) ",
            $pattern,
            " OPERATOR(pg_catalog.||) ')$')"
        )
    };
}

static CUSTOM_PATTERN_MATCH: Statement = Statement::read(
    concat!(
        "SELECT $2 OPERATOR(pg_catalog.~) ",
        whole_id_pattern!("p.pattern"),
        " FROM identity.providers p WHERE p.name OPERATOR(pg_catalog.=) $1 AND NOT p.builtin"
    ),
    &[TEXTOID, TEXTOID],
);

/// Whether `external_id`, if it is valid at all, is already in its canonical form: a wallet
/// address spelled mixed case (EIP-55 allows exactly one mixed-case spelling). Found as given
/// among the stored (canonical) ids, such an id needs no canonicalization.
pub fn canonical_if_valid(provider: &str, external_id: &str) -> bool {
    Builtin::named(provider) == Some(Builtin::Wallet)
        && crate::eip55::looks_checksummed(external_id)
}

/// The canonical form of `external_id` for `provider`, built-in or registered.
pub fn canonical_external_id(
    client: &mut SpiClient<'_>,
    provider: &str,
    external_id: &str,
) -> Result<String, IdentityError> {
    let malformed = |reason: String| IdentityError::MalformedExternalId {
        provider: provider.to_owned(),
        external_id: external_id.to_owned(),
        reason,
    };
    // Which provider first: an empty id of a misspelt provider is an unknown provider.
    let unknown = || IdentityError::UnknownProvider {
        provider: provider.to_owned(),
    };
    let builtin = Builtin::named(provider);
    if builtin.is_none() && !is_valid_provider_name(provider) {
        return Err(unknown());
    }
    let shape = well_shaped(external_id);
    if let Some(builtin) = builtin {
        return builtin
            .canonicalize(shape.map_err(malformed)?)
            .map_err(malformed);
    }
    // An id of the wrong shape never meets the pattern (no regular expression runs over a huge
    // one): NULL asks only whether the provider is registered.
    let candidate = shape.as_ref().ok().copied();
    let rows = CUSTOM_PATTERN_MATCH.run(client, &[provider.into(), candidate.into()])?;
    if rows.is_empty() {
        return Err(unknown());
    }
    let external_id = shape.map_err(malformed)?;
    match rows.first().get_one::<bool>()? {
        Some(true) => Ok(external_id.to_owned()),
        _ => Err(malformed(
            "does not match the provider's registered pattern".into(),
        )),
    }
}

/// What every provider's ids have in common: never empty, and short enough for an index entry.
fn well_shaped(external_id: &str) -> Result<&str, String> {
    if external_id.is_empty() {
        return Err("an external id is never empty".into());
    }
    if external_id.len() > MAX_EXTERNAL_ID_BYTES {
        return Err(format!("longer than {MAX_EXTERNAL_ID_BYTES} bytes"));
    }
    Ok(external_id)
}

/// `identity.canonical_external_id(provider, external_id)`: the form the id is stored under.
#[pg_extern(
    name = "canonical_external_id",
    stable,
    strict,
    security_definer,
    parallel_safe
)]
#[search_path(pg_catalog, pg_temp)]
fn canonical_external_id_sql(provider: &str, external_id: &str) -> Result<String, ErrorReport> {
    Spi::connect_mut(|client| canonical_external_id(client, provider, external_id))
        .map_err(ErrorReport::from)
}

static INSERT_PROVIDER: Statement = Statement::write(
    "INSERT INTO identity.providers (name, pattern, description) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO NOTHING RETURNING true",
    &[TEXTOID, TEXTOID, TEXTOID],
);

static PROVIDER_DEFINITION: Statement = Statement::read(
    "SELECT p.pattern, p.description FROM identity.providers p WHERE p.name OPERATOR(pg_catalog.=) $1",
    &[TEXTOID],
);

// The pattern alone first, so an invalid one fails with PostgreSQL's own message naming the
// fault; then as CUSTOM_PATTERN_MATCH uses it, which a provider must be able to do for good.
static CHECK_PATTERN: Statement = Statement::read(
    concat!(
        "SELECT '' OPERATOR(pg_catalog.~) $1, '' OPERATOR(pg_catalog.~) ",
        whole_id_pattern!("$1")
    ),
    &[TEXTOID],
);

/// The start of `pattern` that PostgreSQL reads only at the start of a whole regular expression:
/// a director (`***=` literal, `***:` ARE) or embedded options (`(?i)`). Such a pattern compiles
/// alone but not inside `^(?:…)$`, so a provider registered with it could never check an id.
fn start_only_prefix(pattern: &str) -> Option<&str> {
    if pattern.starts_with("***") {
        return Some(pattern.get(..4).unwrap_or("***"));
    }
    let options = pattern.strip_prefix("(?")?;
    let letters = options.bytes().take_while(u8::is_ascii_alphabetic).count();
    (letters > 0 && options[letters..].starts_with(')')).then(|| &pattern[..letters + 3])
}

/// `identity.register_provider(name, pattern, description)`: true when newly registered, false when
/// registered before with the same definition. Definitions never change, so a binding stored under a
/// provider stays valid for it.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn register_provider(
    name: Option<&str>,
    pattern: Option<&str>,
    description: default!(Option<&str>, "NULL"),
) -> Result<bool, ErrorReport> {
    writable()?;
    let name = required(name, "name")?;
    let pattern = required(pattern, "pattern")?;
    if !is_valid_provider_name(name) {
        return Err(IdentityError::InvalidProviderName {
            name: name.to_owned(),
        }
        .into());
    }
    let conflict = || IdentityError::ProviderConflict {
        name: name.to_owned(),
    };
    if Builtin::named(name).is_some() {
        return Err(conflict().into());
    }
    if let Some(prefix) = start_only_prefix(pattern) {
        return Err(IdentityError::PatternNotAnchorable {
            prefix: prefix.to_owned(),
        }
        .into());
    }
    Spi::connect_mut(|client| {
        // An invalid pattern raises PostgreSQL's own 2201B error here.
        CHECK_PATTERN.run(client, &[pattern.into()])?;
        let inserted =
            INSERT_PROVIDER.run(client, &[name.into(), pattern.into(), description.into()])?;
        if !inserted.is_empty() {
            return Ok(true);
        }
        let existing = PROVIDER_DEFINITION.run(client, &[name.into()])?.first();
        let same = existing.get::<String>(1)?.as_deref() == Some(pattern)
            && existing.get::<String>(2)?.as_deref() == description;
        if same {
            Ok(false)
        } else {
            Err(conflict())
        }
    })
    .map_err(ErrorReport::from)
}

/// Refuses UPDATE, DELETE and TRUNCATE on identity.providers, for every role. A provider is
/// permanent: the provider a binding names was checked when the binding was written and stays
/// registered, which is what a foreign key would otherwise guarantee (schema.sql says why there
/// is none).
#[pg_trigger]
fn refuse_provider_change<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, IdentityError> {
    // Raised, not returned: pgrx reports a trigger's Err as XX000.
    IdentityError::ProviderIsPermanent {
        operation: crate::events::refused_operation(trigger),
    }
    .raise()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn wallet_ids_are_stored_checksummed() {
        let lower = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed";
        assert_eq!(
            Builtin::Wallet.canonicalize(lower).unwrap(),
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
        );
        assert!(Builtin::Wallet
            .canonicalize("0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
            .is_err());
    }

    #[test]
    fn decimal_ids_have_no_sign_space_or_leading_zero() {
        assert_eq!(Builtin::Github.canonicalize("583231").unwrap(), "583231");
        assert_eq!(
            Builtin::Discord
                .canonicalize("18446744073709551615")
                .unwrap(),
            "18446744073709551615"
        );
        for bad in [
            "0583231", "+583231", "-1", " 583231", "583231 ", "5e3", "0", "１２",
        ] {
            assert!(
                Builtin::Github.canonicalize(bad).is_err(),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            Builtin::Discord.canonicalize("18446744073709551616"),
            Err("larger than any 64-bit id".into())
        );
    }

    #[test]
    fn openid_subjects_are_kept_exactly_and_bounded() {
        assert_eq!(
            Builtin::Google
                .canonicalize("10769150350006150715113082367")
                .unwrap(),
            "10769150350006150715113082367"
        );
        assert_eq!(Builtin::Google.canonicalize("AbC-123").unwrap(), "AbC-123");
        assert!(Builtin::Google.canonicalize("has space").is_err());
        assert!(Builtin::Google.canonicalize("é").is_err());
        assert!(Builtin::Google.canonicalize(&"a".repeat(256)).is_err());
        assert!(Builtin::Google.canonicalize(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn directors_and_embedded_options_are_found_only_where_postgres_reads_them() {
        for (pattern, prefix) in [
            ("(?i)[a-z]+", "(?i)"),
            ("(?ix)abc", "(?ix)"),
            ("***=a.c", "***="),
            ("***:abc", "***:"),
            ("***", "***"),
        ] {
            assert_eq!(start_only_prefix(pattern), Some(prefix), "{pattern}");
        }
        // Groups, lookaheads and the like may stand anywhere, and options only at the start.
        for pattern in [
            "(?:ab)+", "(?=a)a", "(?!b)a", "(?<=a)b", "(?)", "(?i", "a(?i)b", "a***", "[1-9]",
        ] {
            assert_eq!(start_only_prefix(pattern), None, "{pattern}");
        }
    }

    #[test]
    fn provider_names_are_lowercase_identifiers() {
        for good in ["gitlab", "x", "okta_prod", "a1"] {
            assert!(is_valid_provider_name(good), "{good}");
        }
        for bad in [
            "",
            "GitLab",
            "1password",
            "_x",
            "git-lab",
            "bind:x",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_provider_name(bad), "{bad}");
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::{error_of, sqlstate_of};
    use pgrx::prelude::*;

    fn canonical(provider: &str, external_id: &str) -> Option<String> {
        Spi::get_one_with_args(
            "SELECT identity.canonical_external_id($1, $2)",
            &[provider.into(), external_id.into()],
        )
        .unwrap()
    }

    #[pg_test]
    fn canonical_external_id_checksums_wallets_in_sql() {
        assert_eq!(
            canonical("wallet", "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed").as_deref(),
            Some("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
        );
    }

    #[pg_test]
    fn unknown_provider_and_malformed_id_are_22023() {
        assert_eq!(
            sqlstate_of("SELECT identity.canonical_external_id('myspace', '1')"),
            "22023"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.canonical_external_id('github', '007')"),
            "22023"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.canonical_external_id('github', '')"),
            "22023"
        );
        let huge = format!(
            "SELECT identity.canonical_external_id('google', '{}')",
            "a".repeat(600)
        );
        assert_eq!(sqlstate_of(&huge), "22023");
    }

    #[pg_test]
    fn an_empty_or_huge_id_of_an_unknown_provider_is_an_unknown_provider() {
        Spi::run("SELECT identity.register_provider('acme', '[a-z]+')").unwrap();
        let huge = "a".repeat(600);
        for (provider, id, complaint) in [
            ("githb", "", "unknown provider \"githb\""),
            ("Nope", "", "unknown provider \"Nope\""),
            ("acmee", &huge, "unknown provider \"acmee\""),
            (
                "github",
                "",
                "malformed github external id \"\": an external id is never empty",
            ),
            (
                "acme",
                "",
                "malformed acme external id \"\": an external id is never empty",
            ),
            ("acme", &huge, "malformed acme external id"),
        ] {
            let (sqlstate, message) = error_of(&format!(
                "SELECT identity.canonical_external_id('{provider}', '{id}')"
            ));
            assert_eq!(sqlstate, "22023", "{provider}");
            assert!(message.starts_with(complaint), "{provider}: {message}");
        }
        let (_, message) = error_of(&format!(
            "SELECT identity.canonical_external_id('acme', '{huge}')"
        ));
        assert!(message.contains("longer than 512 bytes"), "{message}");
    }

    #[pg_test]
    fn custom_provider_pattern_must_match_the_whole_id() {
        crate::testing::take_turns();
        let registered = Spi::get_one::<bool>(
            "SELECT identity.register_provider('gitlab', '[1-9][0-9]*', 'GitLab numeric user id')",
        );
        assert_eq!(registered, Ok(Some(true)));
        assert_eq!(canonical("gitlab", "12345").as_deref(), Some("12345"));
        // A pattern that matches a part of the id is not enough: it is anchored at both ends.
        assert_eq!(
            sqlstate_of("SELECT identity.canonical_external_id('gitlab', 'x12345')"),
            "22023"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.canonical_external_id('gitlab', '12345x')"),
            "22023"
        );
    }

    #[pg_test]
    fn re_registering_is_idempotent_but_a_definition_never_changes() {
        crate::testing::take_turns();
        let register = |pattern: &str| {
            Spi::get_one_with_args::<bool>(
                "SELECT identity.register_provider('okta', $1)",
                &[pattern.into()],
            )
        };
        assert_eq!(register("[a-z0-9]{20}"), Ok(Some(true)));
        assert_eq!(register("[a-z0-9]{20}"), Ok(Some(false)));
        assert_eq!(
            sqlstate_of("SELECT identity.register_provider('okta', '.*')"),
            "42710"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.register_provider('wallet', '.*')"),
            "42710"
        );
    }

    #[pg_test]
    fn register_provider_refuses_bad_names_bad_patterns_and_nulls() {
        crate::testing::take_turns();
        assert_eq!(
            sqlstate_of("SELECT identity.register_provider('Git-Lab', '.*')"),
            "22023"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.register_provider('gitlab', '(')"),
            "2201B"
        );
        // Compiles alone, but a provider matches it as ^(?:pattern)$, where it cannot stand.
        for (pattern, prefix) in [
            ("(?i)[a-z]+", "(?i)"),
            ("***=a.c", "***="),
            ("***:abc", "***:"),
        ] {
            let (sqlstate, message) = crate::testing::error_of(&format!(
                "SELECT identity.register_provider('caseless', '{pattern}')"
            ));
            assert_eq!(sqlstate, "2201B", "{pattern}: {message}");
            assert!(
                message.contains(&format!("begins with \"{prefix}\"")),
                "{message}"
            );
        }
        let registered = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT FROM identity.providers WHERE name = 'caseless')",
        );
        assert_eq!(registered, Ok(Some(false)));
        assert_eq!(
            sqlstate_of("SELECT identity.register_provider(NULL, '.*')"),
            "22004"
        );
        assert_eq!(
            sqlstate_of("SELECT identity.register_provider('gitlab', NULL)"),
            "22004"
        );
    }
}
