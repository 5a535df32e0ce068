//! EIP-191 personal_sign hashing and secp256k1 signer recovery, as Ethereum's ecrecover does it.

use crate::eip55::Address;
use k256::elliptic_curve::ops::{MulByGeneratorVartime, Reduce};
use k256::elliptic_curve::point::DecompressPoint;
use k256::elliptic_curve::sec1::ToSec1Point;
use k256::elliptic_curve::subtle::Choice;
use k256::elliptic_curve::{BatchNormalize, Group, PrimeField};
use k256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar};
use sha3::{Digest, Keccak256};
use std::fmt;

/// A signature in one of the two forms wallets produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    r: [u8; 32],
    s: [u8; 32],
    y_odd: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    NotHex,
    OddLength,
    /// Not 65 (r‖s‖v) or 64 (EIP-2098) bytes: contract wallets (ERC-1271) sign in other shapes.
    WrongLength(usize),
    /// v other than 27/28 (or 0/1): 29/30 and EIP-155 values are not personal_sign signatures.
    BadRecoveryByte(u8),
    /// r or s is zero or not below the curve order, or no curve point has this r.
    NotOnCurve,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::NotHex => write!(f, "the signature is not hexadecimal"),
            SignatureError::OddLength => write!(f, "the signature has an odd number of hex digits"),
            SignatureError::WrongLength(n) => write!(
                f,
                "a {n}-byte signature is not an account signature (65 bytes, or 64 in EIP-2098 form); contract-wallet (ERC-1271) signatures are not supported"
            ),
            SignatureError::BadRecoveryByte(v) => {
                write!(f, "recovery byte v = {v} is not a personal_sign value (27, 28, 0 or 1)")
            }
            SignatureError::NotOnCurve => write!(f, "the signature is not a valid secp256k1 signature"),
        }
    }
}

impl Signature {
    /// Parses hex (optional `0x`, any case) of r‖s‖v (65 bytes) or EIP-2098 r‖yParity·s (64 bytes).
    pub fn parse(text: &str) -> Result<Signature, SignatureError> {
        let digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SignatureError::NotHex);
        }
        if digits.len() % 2 == 1 {
            return Err(SignatureError::OddLength);
        }
        let bytes: Vec<u8> = digits
            .as_bytes()
            .chunks_exact(2)
            .map(|pair| (hex_value(pair[0]) << 4) | hex_value(pair[1]))
            .collect();
        let (mut r, mut s) = ([0u8; 32], [0u8; 32]);
        match bytes.len() {
            65 => {
                r.copy_from_slice(&bytes[..32]);
                s.copy_from_slice(&bytes[32..64]);
                let y_odd = match bytes[64] {
                    0 | 27 => false,
                    1 | 28 => true,
                    v => return Err(SignatureError::BadRecoveryByte(v)),
                };
                Ok(Signature { r, s, y_odd })
            }
            64 => {
                r.copy_from_slice(&bytes[..32]);
                s.copy_from_slice(&bytes[32..]);
                let y_odd = s[0] & 0x80 != 0;
                s[0] &= 0x7f;
                Ok(Signature { r, s, y_odd })
            }
            n => Err(SignatureError::WrongLength(n)),
        }
    }

    /// The account whose key made this signature over `prehash`: Q = r⁻¹(s·R − z·G), as ecrecover
    /// computes it, so high-s signatures recover like any other. Everything here is public data,
    /// so the inversion and the double multiplication run in variable time.
    pub fn recover(&self, prehash: &[u8; 32]) -> Result<Address, SignatureError> {
        let r_bytes = FieldBytes::from(self.r);
        let nonzero_scalar = |bytes: FieldBytes| {
            Option::<Scalar>::from(Scalar::from_repr(bytes)).filter(|k| !bool::from(k.is_zero()))
        };
        let (Some(r), Some(s)) = (
            nonzero_scalar(r_bytes),
            nonzero_scalar(FieldBytes::from(self.s)),
        ) else {
            return Err(SignatureError::NotOnCurve);
        };
        let big_r = Option::<AffinePoint>::from(AffinePoint::decompress(
            &r_bytes,
            Choice::from(u8::from(self.y_odd)),
        ))
        .ok_or(SignatureError::NotOnCurve)?;
        let r_inverse =
            Option::<Scalar>::from(r.invert_vartime()).ok_or(SignatureError::NotOnCurve)?;
        let z = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*prehash));
        let public_key = ProjectivePoint::mul_by_generator_and_mul_add_vartime(
            &-(r_inverse * z),
            &(r_inverse * s),
            &ProjectivePoint::from(big_r),
        );
        if bool::from(public_key.is_identity()) {
            return Err(SignatureError::NotOnCurve);
        }
        let [affine] =
            <ProjectivePoint as BatchNormalize<[ProjectivePoint; 1]>>::batch_normalize_vartime(&[
                public_key,
            ]);
        let point = affine.to_sec1_point(false);
        let hash = Keccak256::digest(&point.as_bytes()[1..]);
        let mut address = [0u8; 20];
        address.copy_from_slice(&hash[12..]);
        Ok(Address::from_bytes(address))
    }
}

/// EIP-191 version 0x45 ("personal_sign"): keccak256("\x19Ethereum Signed Message:\n" ‖ len ‖ message).
pub fn personal_sign_hash(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(b"\x19Ethereum Signed Message:\n");
    hasher.update(message.len().to_string().as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}
