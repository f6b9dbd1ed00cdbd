//! Pure-Rust backend: `sha2`, `hmac`, `aes-gcm`, `getrandom` (needs no C compiler).

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Tag};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::{CryptoProvider, TAG_LEN};
use crate::error::{Error, Result};

const NAME: &str = "rustcrypto";

/// The RustCrypto backend (feature `rustcrypto`, on by default).
///
/// Uses AES-NI, PCLMULQDQ and SHA-NI when the CPU has them (detected at run
/// time), portable code otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCrypto;

impl CryptoProvider for RustCrypto {
    fn sha256(&self, data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn hmac_sha256(&self, key: &[u8; 32], data: &[u8]) -> [u8; 32] {
        // HMAC zero-pads keys shorter than the 64-byte block (RFC 2104), so
        // padding here is the same function and makes construction infallible.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key);
        let mut mac = <Hmac<Sha256> as Mac>::new(&block.into());
        block.zeroize();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    fn aes256gcm_seal_in_place(
        &self,
        key: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let cipher = Aes256Gcm::new(key.into());
        let tag = cipher
            .encrypt_in_place_detached(nonce.into(), aad, buf)
            .map_err(|_| Error::Crypto {
                provider: NAME,
                operation: "aes256gcm_seal",
            })?;
        buf.extend_from_slice(&tag);
        Ok(())
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
        let (body, tag) = buf.split_at_mut(body_len);
        let tag = Tag::clone_from_slice(tag);
        let cipher = Aes256Gcm::new(key.into());
        cipher
            .decrypt_in_place_detached(nonce.into(), aad, body, &tag)
            .map_err(|_| Error::Decrypt { name: None })?;
        buf.truncate(body_len);
        Ok(())
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<()> {
        getrandom::fill(out).map_err(|e| Error::Random {
            provider: NAME,
            source: Some(e.into()),
        })
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests {
    /// Compiles only when the AES key schedule wipes itself on drop (the
    /// `zeroize` feature of `aes`, set in the workspace manifest): without
    /// it this test does not build. (`ghash`/`polyval` with `zeroize` wipe
    /// the GHASH key `H` when the hash is finalized, which `aes-gcm` does on
    /// every seal and open; their CPU-dispatching type has no `Drop` to name
    /// here.)
    #[test]
    fn key_schedules_are_zeroized_on_drop() {
        fn zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroize_on_drop::<aes::Aes256>();
        zeroize_on_drop::<aes::Aes256Enc>();
        zeroize_on_drop::<aes::Aes256Dec>();
    }
}
