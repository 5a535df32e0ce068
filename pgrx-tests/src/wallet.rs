//! A test wallet: a secp256k1 key that signs EIP-191 personal_sign messages, and an EIP-4361
//! message builder. Written independently of the extension's own SIWE code, so tests check the
//! extension against a second implementation.

use k256::ecdsa::SigningKey;
use sha3::{Digest, Keccak256};

pub struct TestWallet {
    key: SigningKey,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TestWallet {
    /// A deterministic wallet for `seed` (never a real key: the seed is public).
    pub fn from_seed(seed: u8) -> TestWallet {
        let secret =
            Keccak256::digest([b"identity_bindings test wallet ".as_slice(), &[seed]].concat());
        TestWallet {
            key: SigningKey::from_slice(&secret).expect("a keccak digest is a valid secret key"),
        }
    }

    /// The EIP-55 checksummed address.
    pub fn address(&self) -> String {
        let point = self.key.verifying_key().to_sec1_point(false);
        let lower = hex(&Keccak256::digest(&point.as_bytes()[1..])[12..]);
        let hash = Keccak256::digest(lower.as_bytes());
        let checksummed: String = lower
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
                if nibble >= 8 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        format!("0x{checksummed}")
    }

    /// A 65-byte r‖s‖v signature (v = 27/28) over the EIP-191 personal_sign hash, as hex.
    pub fn personal_sign(&self, message: &str) -> String {
        let prehash = Keccak256::digest(
            [
                format!("\x19Ethereum Signed Message:\n{}", message.len()).as_bytes(),
                message.as_bytes(),
            ]
            .concat(),
        );
        let (signature, recovery_id) = self.key.sign_prehash_recoverable(&prehash);
        format!(
            "0x{}{:02x}",
            hex(&signature.to_bytes()),
            27 + recovery_id.to_byte()
        )
    }
}

/// An EIP-4361 message for `address` on `domain` with `nonce`, issued at `issued_at` and
/// expiring at `expiration_time` (RFC 3339 texts).
pub fn siwe_message(
    domain: &str,
    address: &str,
    nonce: &str,
    issued_at: &str,
    expiration_time: &str,
) -> String {
    format!(
        "{domain} wants you to sign in with your Ethereum account:\n{address}\n\nSign in to the identity_bindings tests.\n\nURI: https://{domain}/login\nVersion: 1\nChain ID: 1\nNonce: {nonce}\nIssued At: {issued_at}\nExpiration Time: {expiration_time}"
    )
}

/// A SIWE message for `domain` signed by `wallet`, with a nonce freshly issued by the database
/// and a five-minute lifetime.
pub fn signed_login(
    client: &mut postgres::Client,
    wallet: &TestWallet,
    domain: &str,
) -> (String, String) {
    let row = client
        .query_one(
            "SELECT identity.issue_nonce(), to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    to_char((now() + interval '5 minutes') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            &[],
        )
        .unwrap();
    let message = siwe_message(
        domain,
        &wallet.address(),
        row.get(0),
        row.get(1),
        row.get(2),
    );
    let signature = wallet.personal_sign(&message);
    (message, signature)
}
