//! AWS-LC backend through `aws-lc-rs` (needs a C compiler to build).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{digest, hmac};

use super::{CryptoProvider, TAG_LEN};
use crate::error::{Error, Result};

const NAME: &str = "aws-lc-rs";

/// The AWS-LC backend (feature `aws-lc-rs`).
///
/// The fastest choice on x86-64 and aarch64: stitched AES-GCM assembly
/// (AES-NI/VAES with carry-less multiply) and SHA-NI/ARMv8 SHA-256.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsLc;

fn gcm_key(key: &[u8; 32], operation: &'static str) -> Result<LessSafeKey> {
    // A LessSafeKey is needed because the nonce is fixed by design: every
    // key encrypts exactly one plaintext (see the crate's threat model).
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Crypto {
            provider: NAME,
            operation,
        })
}

impl CryptoProvider for AwsLc {
    fn sha256(&self, data: &[u8]) -> [u8; 32] {
        let d = digest::digest(&digest::SHA256, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    fn hmac_sha256(&self, key: &[u8; 32], data: &[u8]) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let tag = hmac::sign(&key, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn aes256gcm_seal_in_place(
        &self,
        key: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let operation = "aes256gcm_seal";
        gcm_key(key, operation)?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| Error::Crypto {
                provider: NAME,
                operation,
            })
    }

    fn aes256gcm_open_in_place(
        &self,
        key: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let Some(body_len) = buf.len().checked_sub(TAG_LEN) else {
            return Err(Error::CiphertextTooShort {
                name: None,
                len: buf.len(),
            });
        };
        gcm_key(key, "aes256gcm_open")?
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                buf.as_mut_slice(),
            )
            .map_err(|_| Error::Decrypt { name: None })?;
        buf.truncate(body_len);
        Ok(())
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<()> {
        aws_lc_rs::rand::fill(out).map_err(|_| Error::Random {
            provider: NAME,
            source: None,
        })
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
