//! Inputs shared by the SIWE benchmarks: 64 messages, each signed by its own key, so every
//! contestant works on exactly the same data.

use identity_bindings::siwe::personal_sign_hash;
use k256::ecdsa::SigningKey;
use sha3::{Digest, Keccak256};

pub const MESSAGES: usize = 64;

pub struct Signed {
    pub message: String,
    pub signature: String,
    pub prehash: [u8; 32],
    pub compact: [u8; 64],
    pub recovery_id: i32,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn checksummed(key: &SigningKey) -> String {
    let point = key.verifying_key().to_sec1_point(false);
    let lower = hex(&Keccak256::digest(&point.as_bytes()[1..])[12..]);
    let hash = Keccak256::digest(lower.as_bytes());
    let mixed: String = lower
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if (hash[i / 2] >> (4 * (1 - i % 2))) & 0x0f >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("0x{mixed}")
}

/// 64 messages, each signed by its own key: the same inputs for every contestant.
pub fn signed_messages() -> Vec<Signed> {
    (0..MESSAGES)
        .map(|i| {
            let key = SigningKey::from_slice(&Keccak256::digest(format!("bench key {i}"))).unwrap();
            let message = format!(
                "bench.example wants you to sign in with your Ethereum account:\n{}\n\nSign in to the benchmark.\n\nURI: https://bench.example/login\nVersion: 1\nChain ID: 1\nNonce: benchNonce{i:08}\nIssued At: 2026-01-01T00:00:00.000Z\nExpiration Time: 2100-01-01T00:00:00.000Z",
                checksummed(&key)
            );
            let prehash = personal_sign_hash(message.as_bytes());
            let (signature, recovery_id) = key.sign_prehash_recoverable(&prehash);
            let compact: [u8; 64] = signature.to_bytes().into();
            let v = 27 + recovery_id.to_byte();
            Signed {
                signature: format!("0x{}{v:02x}", hex(&compact)),
                message,
                prehash,
                compact,
                recovery_id: i32::from(recovery_id.to_byte()),
            }
        })
        .collect()
}

/// The checks a login makes of these messages: the domain, at a time inside their window.
pub fn expectations() -> identity_bindings::siwe::Expectations<'static> {
    identity_bindings::siwe::Expectations {
        domain: Some("bench.example"),
        nonce: None,
        at_unix_nanos: 1_800_000_000_000_000_000,
    }
}
