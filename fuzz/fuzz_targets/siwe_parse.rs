//! Any text: the parser never panics, and every message it accepts prints back byte for byte
//! (the grammar is strict, so there is exactly one text per message) and parses to itself again.
#![no_main]

#[path = "../../src/eip55.rs"]
mod eip55;
#[path = "../../src/siwe/mod.rs"]
mod siwe;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(message) = siwe::Message::parse(text) {
        let printed = message.to_string();
        assert_eq!(printed, text, "an accepted message prints back exactly");
        assert_eq!(siwe::Message::parse(&printed), Ok(message));
    }
});
