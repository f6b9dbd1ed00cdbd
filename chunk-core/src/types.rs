//! Newtypes for the bytes that mean something: names, keys, salts.

use std::fmt;
use std::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::Error;

/// The name of a stored chunk: SHA-256 of its ciphertext.
///
/// Anyone can check a name against bytes without a key, which is what lets
/// stores, shared caches and garbage collection verify what they hold.
/// `Display` and `FromStr` use 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkName([u8; 32]);

impl ChunkName {
    /// Length of a name in bytes.
    pub const LEN: usize = 32;

    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, the form used in object keys and logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkName({})", self.to_hex())
    }
}

impl FromStr for ChunkName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidName {
            input: s.chars().take(80).collect(),
        };
        // Uppercase would give a second spelling of one name; object keys must be unique.
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| invalid())?;
        Ok(Self(out))
    }
}

/// The AES-256-GCM key of one chunk, derived from its plaintext and salt.
///
/// Zeroized on drop; `Debug` prints nothing of the key; `==` takes the
/// same time wherever two keys differ (`subtle`), so comparing keys leaks
/// nothing through timing.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChunkKey([u8; 32]);

impl PartialEq for ChunkKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for ChunkKey {}

impl ChunkKey {
    /// Length of a key in bytes.
    pub const LEN: usize = 32;

    /// Wraps raw key bytes (for example read back from a manifest).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes. Handle with care: do not log or persist them in clear.
    pub const fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkKey(<redacted>)")
    }
}

/// A salt domain: a small public id plus a 32-byte secret.
///
/// Chunks dedup only within one salt. The id is public (it goes into
/// manifests so operators can see which salt an image used); the secret is
/// known only to pushers, zeroized on drop and never printed by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Salt {
    #[zeroize(skip)]
    id: u32,
    secret: [u8; 32],
}

impl Salt {
    /// Makes a salt from its id and secret.
    pub const fn new(id: u32, secret: [u8; 32]) -> Self {
        Self { id, secret }
    }

    /// The public id of this salt.
    pub const fn id(&self) -> u32 {
        self.id
    }

    /// The secret bytes. Handle with care.
    pub const fn expose_secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Salt")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What is needed to fetch and open one chunk: its name and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct ChunkRef {
    /// Where the ciphertext is stored (SHA-256 of the ciphertext).
    pub name: ChunkName,
    /// The key that decrypts it.
    pub key: ChunkKey,
}

impl fmt::Debug for ChunkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkRef")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_hex_round_trip_and_rejects_bad_input() {
        let name = ChunkName::from_bytes([0xab; 32]);
        let text = name.to_string();
        assert_eq!(text, "ab".repeat(32));
        assert_eq!(text.parse::<ChunkName>().ok(), Some(name));
        assert!("AB".repeat(32).parse::<ChunkName>().is_err());
        assert!("ab".repeat(31).parse::<ChunkName>().is_err());
        assert!("zz".repeat(32).parse::<ChunkName>().is_err());
    }

    #[test]
    fn key_equality_compares_every_byte() {
        let key = ChunkKey::from_bytes([0x5a; 32]);
        assert_eq!(key, ChunkKey::from_bytes([0x5a; 32]));
        for i in [0, 1, 15, 31] {
            let mut other = [0x5a; 32];
            other[i] ^= 0x01;
            assert_ne!(key, ChunkKey::from_bytes(other), "byte {i}");
        }
        let r = |k: u8| ChunkRef {
            name: ChunkName::from_bytes([1; 32]),
            key: ChunkKey::from_bytes([k; 32]),
        };
        assert_eq!(r(3), r(3));
        assert_ne!(r(3), r(4));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let key = ChunkKey::from_bytes([0x5a; 32]);
        let salt = Salt::new(7, [0x5a; 32]);
        let all = format!(
            "{key:?} {salt:?} {:?}",
            ChunkRef {
                name: ChunkName::from_bytes([0; 32]),
                key: key.clone()
            }
        );
        assert!(!all.contains("5a") && !all.contains("90"), "{all}");
        assert!(all.contains("id: 7"));
    }
}
