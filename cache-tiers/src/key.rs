//! Keys: anything with a stable byte form.

use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;

/// Longest storage name used as-is; longer keys are stored under a hash.
const MAX_PLAIN_NAME: usize = 200;

/// A cache key with a stable byte form.
///
/// Tiers that store keys outside the process (file names, memcached keys,
/// object paths) use [`storage_name`](CacheKey::storage_name), which must be
/// the same on every machine and every run for equal keys.
pub trait CacheKey: fmt::Display + fmt::Debug + Clone + Eq + Hash + Send + Sync + 'static {
    /// The key's bytes. Equal keys have equal bytes and unequal keys unequal bytes.
    fn as_bytes(&self) -> &[u8];

    /// A name safe for file names, memcached keys (no spaces or control
    /// characters, at most 250 bytes) and object paths.
    ///
    /// The default keeps keys made only of `[A-Za-z0-9._-]` (at most 200
    /// bytes, not starting with `.`, `x-` or `h-`) as they are, which covers hex digests,
    /// and otherwise uses `x-` followed by the hex of the bytes, or `h-`
    /// followed by a 128-bit hash when that would be too long.
    fn storage_name(&self) -> Cow<'_, str> {
        default_storage_name(self.as_bytes())
    }
}

/// The default [`CacheKey::storage_name`] of some key bytes.
pub fn default_storage_name(bytes: &[u8]) -> Cow<'_, str> {
    let plain = !bytes.is_empty()
        && bytes.len() <= MAX_PLAIN_NAME
        && bytes[0] != b'.'
        && !bytes.starts_with(b"x-")
        && !bytes.starts_with(b"h-")
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        // All ASCII, checked above.
        return Cow::Borrowed(std::str::from_utf8(bytes).unwrap_or_default());
    }
    if bytes.len() * 2 + 2 <= MAX_PLAIN_NAME {
        let mut s = String::with_capacity(bytes.len() * 2 + 2);
        s.push_str("x-");
        push_hex(&mut s, bytes);
        Cow::Owned(s)
    } else {
        let h = xxhash_rust::xxh3::xxh3_128(bytes);
        Cow::Owned(format!("h-{h:032x}"))
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

impl CacheKey for String {
    fn as_bytes(&self) -> &[u8] {
        str::as_bytes(self)
    }
}

impl CacheKey for std::sync::Arc<str> {
    fn as_bytes(&self) -> &[u8] {
        str::as_bytes(self)
    }
}

impl CacheKey for &'static str {
    fn as_bytes(&self) -> &[u8] {
        str::as_bytes(self)
    }
}

/// A value with a size in bytes, for byte budgets and statistics.
pub trait Weight {
    /// Size in bytes.
    fn weight(&self) -> usize;
}

impl Weight for bytes::Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weight for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weight for String {
    fn weight(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digests_stay_plain() {
        let k = "ab".repeat(32);
        assert_eq!(default_storage_name(k.as_bytes()), k.as_str());
    }

    #[test]
    fn unsafe_keys_are_hexed_or_hashed() {
        assert_eq!(default_storage_name(b"a b"), "x-612062");
        assert_eq!(default_storage_name(b".."), "x-2e2e");
        assert_eq!(default_storage_name(b""), "x-");
        // A plain key cannot collide with the hex form of another.
        assert_eq!(default_storage_name(b"x-612062"), "x-782d363132303632");
        let long = vec![b' '; 500];
        let n = default_storage_name(&long);
        assert!(n.starts_with("h-") && n.len() == 34, "{n}");
    }

    proptest::proptest! {
        #[test]
        fn storage_names_are_safe_and_injective_enough(a in proptest::collection::vec(proptest::num::u8::ANY, 0..150),
                                                       b in proptest::collection::vec(proptest::num::u8::ANY, 0..150)) {
            let na = default_storage_name(&a);
            proptest::prop_assert!(na.len() <= 250);
            proptest::prop_assert!(na.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')));
            proptest::prop_assert!(!na.starts_with('.'));
            if a != b { proptest::prop_assert_ne!(na, default_storage_name(&b)); }
        }
    }
}
