//! SIWE verification speed, side by side in one run on the same signed messages:
//!
//! - `identity_bindings full verify`: parse + EIP-191 hash + k256 recovery + every check, as
//!   identity.verify_siwe does per call;
//! - `libsecp256k1 bare recovery`: only the public-key recovery, by Bitcoin Core's C library
//!   (the `secp256k1` crate), with the hash already computed: the floor any verifier pays;
//! - `k256 bare recovery`: the same recovery by the pure-Rust k256 the extension uses.
//!
//! Run: `make bench-siwe` (or `cargo bench --bench siwe_verify`); results go in BENCHMARKS.md.

mod common;

use common::{expectations, signed_messages};
use criterion::{criterion_group, criterion_main, Criterion};
use identity_bindings::siwe::verify;
use std::hint::black_box;

fn siwe_verification(c: &mut Criterion) {
    let signed = signed_messages();
    let expect = expectations();
    for s in &signed {
        assert!(
            verify(&s.message, &s.signature, &expect).is_ok(),
            "bench inputs verify"
        );
    }
    let mut group = c.benchmark_group("siwe");

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

    group.bench_function("identity_bindings full verify", |b| {
        let mut next = signed.iter().cycle();
        b.iter(|| {
            let s = next.next().unwrap();
            black_box(verify(black_box(&s.message), black_box(&s.signature), &expect).unwrap());
        })
    });

    group.finish();
}

criterion_group!(benches, siwe_verification);
criterion_main!(benches);
