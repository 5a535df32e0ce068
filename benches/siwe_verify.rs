//! SIWE verification speed, side by side in one run on the same signed messages:
//!
//! - `identity_bindings full verify`: parse + EIP-191 hash + k256 recovery + every check, as
//!   identity.verify_siwe does per call;
//! - `libsecp256k1 bare recovery`: only the public-key recovery, by Bitcoin Core's C library
//!   (the `secp256k1` crate), with the hash already computed: the floor any verifier pays;
//! - `k256 bare recovery`: the same recovery by the pure-Rust k256 the extension uses.
//!
//! Run: `make bench-siwe` (or `cargo bench --bench siwe_verify`); results go in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion};
use identity_bindings::siwe::{personal_sign_hash, verify, Expectations};
use k256::ecdsa::SigningKey;
use sha3::{Digest, Keccak256};
use std::hint::black_box;

const MESSAGES: usize = 64;

struct Signed {
    message: String,
    signature: String,
    prehash: [u8; 32],
    compact: [u8; 64],
    recovery_id: i32,
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
fn signed_messages() -> Vec<Signed> {
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

fn siwe_verification(c: &mut Criterion) {
    let signed = signed_messages();
    let expect = Expectations {
        domain: Some("bench.example"),
        nonce: None,
        at_unix_nanos: 1_800_000_000_000_000_000,
    };
    for s in &signed {
        assert!(
            verify(&s.message, &s.signature, &expect).is_ok(),
            "bench inputs verify"
        );
    }
    let mut group = c.benchmark_group("siwe");

    group.bench_function("identity_bindings full verify", |b| {
        let mut next = signed.iter().cycle();
        b.iter(|| {
            let s = next.next().unwrap();
            black_box(verify(black_box(&s.message), black_box(&s.signature), &expect).unwrap());
        })
    });

    group.bench_function("identity_bindings parse only", |b| {
        let mut next = signed.iter().cycle();
        b.iter(|| {
            black_box(
                identity_bindings::siwe::Message::parse(black_box(&next.next().unwrap().message))
                    .unwrap(),
            )
        })
    });

    group.bench_function("libsecp256k1 bare recovery", |b| {
        use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
        let mut next = signed.iter().cycle();
        b.iter(|| {
            let s = next.next().unwrap();
            let id = RecoveryId::try_from(s.recovery_id).unwrap();
            let signature = RecoverableSignature::from_compact(black_box(&s.compact), id).unwrap();
            let digest = secp256k1::Message::from_digest(black_box(s.prehash));
            black_box(signature.recover_ecdsa(digest).unwrap());
        })
    });

    group.bench_function("k256 bare recovery", |b| {
        use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
        let mut next = signed.iter().cycle();
        b.iter(|| {
            let s = next.next().unwrap();
            let signature = Signature::from_slice(black_box(&s.compact)).unwrap();
            let id = RecoveryId::from_byte(s.recovery_id as u8).unwrap();
            black_box(
                VerifyingKey::recover_from_prehash(black_box(&s.prehash), &signature, id).unwrap(),
            );
        })
    });
    group.finish();
}

criterion_group!(benches, siwe_verification);
criterion_main!(benches);
