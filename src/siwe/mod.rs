//! Sign-In with Ethereum (EIP-4361 messages, EIP-191 personal_sign, EIP-55 addresses), verified
//! natively. Plain Rust, no PostgreSQL types: unit-tested and fuzzable on its own.
//!
//! Verification policy where the references differ: an all-lowercase or all-uppercase address is
//! accepted, mixed case must be the EIP-55 checksum; high-s signatures and 64-byte EIP-2098
//! signatures are accepted; v = 29/30 is refused; a message is expired at and after its
//! Expiration Time and valid from its Not Before on; the expected domain is compared with the
//! whole authority (port included); the grammar is the strict ABNF.

pub mod grammar;
mod message;
mod signature;

pub use message::{Message, ParseError, Timestamp};
pub use signature::{personal_sign_hash, Signature, SignatureError};

use crate::eip55::Address;
use std::fmt;

/// Version of these rules, recorded in binding evidence so a later re-check knows what passed.
pub const VERIFIER_VERSION: &str = "identity_bindings-siwe/1";

/// Longest message a sign-in may submit, in bytes. EIP-4361 sets no limit, and a wallet's
/// message is a few hundred bytes (a long ReCap resource a few thousand). A login's message is
/// kept in its `bind` event, which can never be deleted, so without a limit anyone with a fresh
/// wallet could store megabytes there per sign-in. Checked where messages are submitted
/// (`verify_siwe`, `siwe_login`, `siwe_bind`), not when stored evidence is re-verified.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// What the caller expects of a message, besides a valid signature by its address.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// The authority the message must be for, compared exactly (`None`: not checked).
    pub domain: Option<&'a str>,
    /// The nonce the message must carry (`None`: not checked).
    pub nonce: Option<&'a str>,
    /// The instant of verification, in nanoseconds since the Unix epoch.
    pub at_unix_nanos: i128,
}

/// Why a message was not accepted. `Malformed` is the message's fault before any check; the
/// others are refusals of a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    Malformed(ParseError),
    BadSignature(SignatureError),
    WrongSigner {
        claimed: Address,
        recovered: Address,
    },
    Expired {
        expiration_time: String,
    },
    NotYetValid {
        not_before: String,
    },
    DomainMismatch {
        expected: String,
        found: String,
    },
    NonceMismatch {
        expected: String,
        found: String,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Malformed(e) => write!(f, "malformed SIWE message: {e}"),
            VerifyError::BadSignature(e) => write!(f, "bad signature: {e}"),
            VerifyError::WrongSigner { claimed, recovered } => write!(
                f,
                "wrong signer: the message is for {claimed} but was signed by {recovered} (a contract wallet's ERC-1271 signature is not supported)"
            ),
            VerifyError::Expired { expiration_time } => {
                write!(f, "expired: the message's Expiration Time {expiration_time} has passed")
            }
            VerifyError::NotYetValid { not_before } => {
                write!(f, "not yet valid: the message's Not Before is {not_before}")
            }
            VerifyError::DomainMismatch { expected, found } => {
                write!(f, "domain mismatch: the message is for \"{found}\", expected \"{expected}\"")
            }
            VerifyError::NonceMismatch { expected, found } => {
                write!(f, "nonce mismatch: the message carries \"{found}\", expected \"{expected}\"")
            }
        }
    }
}

/// Parses and verifies: grammar, then the cheap checks (domain, nonce, time window), then the
/// signature, which must recover to the message's address.
pub fn verify(
    message: &str,
    signature: &str,
    expect: &Expectations<'_>,
) -> Result<Message, VerifyError> {
    let parsed = Message::parse(message).map_err(VerifyError::Malformed)?;
    if let Some(expected) = expect.domain {
        if parsed.domain != expected {
            return Err(VerifyError::DomainMismatch {
                expected: expected.into(),
                found: parsed.domain,
            });
        }
    }
    if let Some(expected) = expect.nonce {
        if parsed.nonce != expected {
            return Err(VerifyError::NonceMismatch {
                expected: expected.into(),
                found: parsed.nonce,
            });
        }
    }
    if let Some(expiration) = &parsed.expiration_time {
        if expect.at_unix_nanos >= expiration.unix_nanos {
            return Err(VerifyError::Expired {
                expiration_time: expiration.text.clone(),
            });
        }
    }
    if let Some(not_before) = &parsed.not_before {
        if expect.at_unix_nanos < not_before.unix_nanos {
            return Err(VerifyError::NotYetValid {
                not_before: not_before.text.clone(),
            });
        }
    }
    let signature = Signature::parse(signature).map_err(VerifyError::BadSignature)?;
    let recovered = signature
        .recover(&personal_sign_hash(message.as_bytes()))
        .map_err(VerifyError::BadSignature)?;
    if recovered != parsed.address {
        return Err(VerifyError::WrongSigner {
            claimed: parsed.address,
            recovered,
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
