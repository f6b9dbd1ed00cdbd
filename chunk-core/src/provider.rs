//! The crypto trait and its backends.
//!
//! Like rustls, the crate holds one small object-safe trait and lets the
//! caller pick an implementation explicitly; there is no global default.

use crate::error::Result;

#[cfg(feature = "aws-lc-rs")]
mod aws_lc;
#[cfg(feature = "rustcrypto")]
mod rustcrypto;

#[cfg(feature = "aws-lc-rs")]
pub use aws_lc::AwsLc;
#[cfg(feature = "rustcrypto")]
pub use rustcrypto::RustCrypto;

/// Length of the AES-256-GCM authentication tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// The primitives lode's crypto needs: convergent chunk encryption, and
/// the AES-256-GCM, SHA-256 and randomness that manifests and the local
/// keyring use, so one choice of backend covers all of them.
///
/// # Contract
///
/// Every implementation must compute exactly the standard functions
/// (FIPS 180-4 SHA-256, RFC 2104 HMAC-SHA256, NIST SP 800-38D AES-256-GCM
/// with a 96-bit nonce and a 128-bit tag): chunk names are derived from these
/// bytes, so two backends that differ in a single bit would silently break
/// deduplication. The crate's test suite runs against each backend and pins
/// known answers.
///
/// Implementations must not panic on any input and must not put key bytes
/// into errors.
pub trait CryptoProvider: Send + Sync + std::fmt::Debug {
    /// SHA-256 of `data`.
    fn sha256(&self, data: &[u8]) -> [u8; 32];

    /// HMAC-SHA256 of `data` under `key`.
    fn hmac_sha256(&self, key: &[u8; 32], data: &[u8]) -> [u8; 32];

    /// AES-256-GCM; encrypts `buf` in place and appends the 16-byte tag to buf.
    fn aes256gcm_seal_in_place(
        &self,
        key: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<()>;

    /// Verifies and strips the tag; on failure buf content is unspecified and an error returned.
    ///
    /// On success `buf` holds exactly the plaintext. A `buf` shorter than the
    /// tag is an error, never a panic.
    fn aes256gcm_open_in_place(
        &self,
        key: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<()>;

    /// Fills `out` with cryptographically secure random bytes (the
    /// operating system's generator, or a DRBG seeded from it).
    ///
    /// Used for data keys, key-wrapping nonces, master keys and salts. An
    /// implementation that cannot get entropy must return an error, never
    /// weak bytes.
    fn fill_random(&self, out: &mut [u8]) -> Result<()>;

    /// A short stable label for logs, benchmarks and CLI flags
    /// (`"rustcrypto"`, `"aws-lc-rs"`).
    fn name(&self) -> &'static str {
        "custom"
    }
}

/// The backends compiled into this build, in a fixed order.
///
/// Meant for tools that let a user pick a backend by name (see
/// [`provider_by_name`]) and for tests that run against every backend. It is
/// not a default: library code should take a `&dyn CryptoProvider` from its
/// caller.
pub fn enabled_providers() -> &'static [&'static dyn CryptoProvider] {
    &[
        #[cfg(feature = "rustcrypto")]
        &RustCrypto,
        #[cfg(feature = "aws-lc-rs")]
        &AwsLc,
    ]
}

/// The compiled-in backend whose [`CryptoProvider::name`] is `name`.
pub fn provider_by_name(name: &str) -> Option<&'static dyn CryptoProvider> {
    enabled_providers()
        .iter()
        .copied()
        .find(|p| p.name() == name)
}
