//! Any message and signature (split at the first NUL): verification never panics, and whatever it
//! accepts was really signed by the message's address.
#![no_main]

#[path = "../../src/eip55.rs"]
mod eip55;
#[path = "../../src/siwe/mod.rs"]
mod siwe;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (message, signature) = text.split_once('\0').unwrap_or((text, ""));
    let expect = siwe::Expectations { domain: None, nonce: None, at_unix_nanos: 0 };
    if let Ok(parsed) = siwe::verify(message, signature, &expect) {
        let signer = siwe::Signature::parse(signature)
            .and_then(|s| s.recover(&siwe::personal_sign_hash(message.as_bytes())))
            .expect("an accepted signature recovers");
        assert_eq!(signer, parsed.address);
    }
});
