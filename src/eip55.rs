//! Ethereum account addresses and their EIP-55 mixed-case checksum.
//!
//! Plain Rust, no PostgreSQL types: the wallet provider canonicalizes with it, and Sign-In with
//! Ethereum compares recovered signers with it.

use sha3::{Digest, Keccak256};
use std::fmt;

/// A 20-byte account address. Its one text form is the EIP-55 checksummed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address([u8; 20]);

/// Why a text is not an acceptable address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    MissingPrefix,
    WrongLength(usize),
    NotHex,
    /// Mixed case whose capitalisation is not the EIP-55 checksum: a typo, or a tampered address.
    BadChecksum {
        expected: String,
    },
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::MissingPrefix => write!(f, "an address starts with 0x"),
            AddressError::WrongLength(n) => {
                write!(f, "an address has 40 hex digits after 0x, this one has {n}")
            }
            AddressError::NotHex => write!(f, "an address has only hex digits after 0x"),
            AddressError::BadChecksum { expected } => write!(
                f,
                "mixed-case address with a wrong EIP-55 checksum (the checksummed form is {expected})"
            ),
        }
    }
}

/// Whether `text` is spelled as a checksummed address would be: `0x`, 40 characters, mixed case.
/// Such a text, if it is a valid address at all, is exactly its EIP-55 form.
pub fn looks_checksummed(text: &str) -> bool {
    text.len() == 42 && text.starts_with("0x") && is_mixed_case(&text[2..])
}

/// Mixed-case digits must be exactly those of the EIP-55 form `expected` (`0x` included).
fn check_checksum(digits: &str, expected: &str) -> Result<(), AddressError> {
    if expected[2..] == *digits {
        Ok(())
    } else {
        Err(AddressError::BadChecksum {
            expected: expected.to_owned(),
        })
    }
}

fn is_mixed_case(digits: &str) -> bool {
    digits.bytes().any(|b| b.is_ascii_lowercase()) && digits.bytes().any(|b| b.is_ascii_uppercase())
}

impl Address {
    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        Address(bytes)
    }

    /// Parses `0x` + 40 hex digits. All-lowercase and all-uppercase digits carry no checksum and are
    /// accepted; mixed case must be the exact EIP-55 checksum.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let (address, digits) = Address::decode(text)?;
        if is_mixed_case(digits) {
            check_checksum(digits, &address.to_checksummed())?;
        }
        Ok(address)
    }

    /// The address and its EIP-55 form, hashing once: a mixed-case input is checked against
    /// that form, any other input is converted to it.
    pub fn parse_checksummed(text: &str) -> Result<(Address, String), AddressError> {
        let (address, digits) = Address::decode(text)?;
        let checksummed = address.to_checksummed();
        if is_mixed_case(digits) {
            check_checksum(digits, &checksummed)?;
        }
        Ok((address, checksummed))
    }

    /// The 20 bytes of `0x` and 40 hex digits, and the digits as given.
    fn decode(text: &str) -> Result<(Address, &str), AddressError> {
        let digits = text.strip_prefix("0x").ok_or(AddressError::MissingPrefix)?;
        if digits.len() != 40 {
            return Err(AddressError::WrongLength(digits.chars().count()));
        }
        let mut bytes = [0u8; 20];
        for (byte, pair) in bytes.iter_mut().zip(digits.as_bytes().chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Ok((Address(bytes), digits))
    }

    /// The EIP-55 form: each hex letter is upper case where the matching nibble of
    /// keccak256(lowercase hex) is 8 or more.
    pub fn to_checksummed(self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut lower = [0u8; 40];
        for (pair, byte) in lower.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        let hash = Keccak256::digest(lower);
        let mut out = [0u8; 42];
        out[..2].copy_from_slice(b"0x");
        for (i, (&c, slot)) in lower.iter().zip(&mut out[2..]).enumerate() {
            let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
            *slot = if c.is_ascii_alphabetic() && nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            };
        }
        String::from_utf8(out.to_vec()).expect("hex digits and 0x are ASCII")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksummed())
    }
}

fn hex_value(c: u8) -> Result<u8, AddressError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(AddressError::NotHex),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vectors published in EIP-55 itself.
    const EIP55_VECTORS: [&str; 8] = [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        "0x52908400098527886E0F7030069857D2E4169EE7",
        "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
        "0xde709f2102306220921060314715629080e2fb77",
        "0x27b1fdb04752bbc536007a920d24acb045561c26",
    ];

    #[test]
    fn checksums_match_the_eip55_vectors() {
        for vector in EIP55_VECTORS {
            let address = Address::parse(vector).expect(vector);
            assert_eq!(address.to_checksummed(), vector);
        }
    }

    #[test]
    fn all_lower_and_all_upper_parse_to_the_checksummed_form() {
        let checksummed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        let lower = checksummed.to_ascii_lowercase();
        let upper = format!("0x{}", checksummed[2..].to_ascii_uppercase());
        assert_eq!(Address::parse(&lower).unwrap().to_string(), checksummed);
        assert_eq!(Address::parse(&upper).unwrap().to_string(), checksummed);
    }

    #[test]
    fn mixed_case_with_a_wrong_checksum_is_refused_and_names_the_right_form() {
        let wrong = "0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        assert_eq!(
            Address::parse(wrong),
            Err(AddressError::BadChecksum {
                expected: "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".into()
            })
        );
    }

    #[test]
    fn malformed_text_is_refused_with_its_reason() {
        let digits = "5aaeb6053f3e94c9b9a09f33669435e7ef1beaed";
        assert_eq!(Address::parse(digits), Err(AddressError::MissingPrefix));
        assert_eq!(
            Address::parse(&format!("0X{digits}")),
            Err(AddressError::MissingPrefix)
        );
        assert_eq!(Address::parse("0x"), Err(AddressError::WrongLength(0)));
        assert_eq!(
            Address::parse(&format!("0x{digits}00")),
            Err(AddressError::WrongLength(42))
        );
        assert_eq!(
            Address::parse(&format!("0x{}", &digits[1..])),
            Err(AddressError::WrongLength(39))
        );
        assert_eq!(
            Address::parse(&format!("0x{}g", &digits[1..])),
            Err(AddressError::NotHex)
        );
        assert_eq!(
            Address::parse(&format!(" 0x{digits}")),
            Err(AddressError::MissingPrefix)
        );
        // 40 characters, but multi-byte: counted as characters in the message, refused as not hex.
        assert_eq!(
            Address::parse(&format!("0x{}é", &digits[2..])),
            Err(AddressError::NotHex)
        );
    }
}
