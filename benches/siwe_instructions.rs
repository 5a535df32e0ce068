//! Instruction counts of SIWE verification, for a comparison that noisy shared machines cannot
//! blur: each contestant runs over the same 64 signed messages, `ROUNDS` times, under
//! `valgrind --tool=callgrind`; benches/siwe_instructions.sh subtracts the input set-up and divides.
//!
//!   siwe_instructions setup|full|parse|libsecp256k1|k256

mod common;

use common::{expectations, signed_messages, MESSAGES};
use std::hint::black_box;

const ROUNDS: usize = 4;

fn main() {
    let contestant = std::env::args().nth(1).unwrap_or_default();
    let signed = signed_messages();
    let expect = expectations();
    for _ in 0..ROUNDS {
        for s in &signed {
            match contestant.as_str() {
                "setup" => {}
                "full" => {
                    black_box(
                        identity_bindings::siwe::verify(
                            black_box(&s.message),
                            &s.signature,
                            &expect,
                        )
                        .unwrap(),
                    );
                }
                "parse" => {
                    black_box(
                        identity_bindings::siwe::Message::parse(black_box(&s.message)).unwrap(),
                    );
                }
                "libsecp256k1" => {
                    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
                    let id = RecoveryId::try_from(s.recovery_id).unwrap();
                    let signature =
                        RecoverableSignature::from_compact(black_box(&s.compact), id).unwrap();
                    black_box(
                        signature
                            .recover_ecdsa(secp256k1::Message::from_digest(s.prehash))
                            .unwrap(),
                    );
                }
                "k256" => {
                    use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
                    let signature = Signature::from_slice(black_box(&s.compact)).unwrap();
                    let id = RecoveryId::from_byte(s.recovery_id as u8).unwrap();
                    black_box(
                        VerifyingKey::recover_from_prehash(&s.prehash, &signature, id).unwrap(),
                    );
                }
                other => panic!("unknown contestant {other:?}: setup|full|parse|libsecp256k1|k256"),
            }
        }
    }
    eprintln!("{contestant}: {} calls", ROUNDS * MESSAGES);
}
