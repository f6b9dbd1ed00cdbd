//! Arbitrary bytes as ciphertext, name and key: `open` gives an error or the
//! right plaintext, never a panic.
//!
//! Input layout: byte 0 picks a mode, then 32 bytes of name, 32 of key
//! (or salt secret), then the body.
//!
//! - mode 0: open(body) under the given name and key: random bytes, almost
//!   always a name mismatch.
//! - mode 1: the name is replaced by the body's real hash, so the input
//!   reaches GCM authentication with an arbitrary key.
//! - mode 2: seal the body as plaintext, flip the bit the name bytes point
//!   at (or none), then open: must give back exactly the body, or an error
//!   if a bit was flipped.
//!
//! With feature `aws-lc-rs` both backends run and must seal identically.
#![no_main]

use chunk_core::{
    ChunkKey, ChunkName, ChunkRef, CryptoProvider, Salt, enabled_providers, open, open_trusted,
    seal,
};
use libfuzzer_sys::fuzz_target;

fn check(p: &dyn CryptoProvider, mode: u8, name: [u8; 32], key: [u8; 32], body: &[u8]) {
    match mode % 3 {
        0 | 1 => {
            let name = if mode % 3 == 1 {
                ChunkName::from_bytes(p.sha256(body))
            } else {
                ChunkName::from_bytes(name)
            };
            let chunk = ChunkRef {
                name,
                key: ChunkKey::from_bytes(key),
            };
            if let Ok(plaintext) = open(p, &chunk, body) {
                // Only a real sealed chunk can open; it must re-seal to itself.
                assert_eq!(plaintext.len() + 16, body.len());
                assert_eq!(open_trusted(p, &chunk.key, body).ok(), Some(plaintext));
            }
        }
        _ => {
            let salt = Salt::new(0, key);
            let sealed = seal(p, &salt, body).expect("sealing never fails below 64 GiB");
            let mut ciphertext = sealed.ciphertext.clone();
            let pick = u64::from_le_bytes(name[..8].try_into().expect("8 bytes"));
            let flip = name[8] & 1 == 1;
            if flip {
                let bit = (pick % (ciphertext.len() as u64 * 8)) as usize;
                ciphertext[bit / 8] ^= 1 << (bit % 8);
            }
            match open(p, &sealed.chunk_ref(), &ciphertext) {
                Ok(plaintext) => {
                    assert!(!flip, "opened a ciphertext with a flipped bit");
                    assert_eq!(plaintext, body);
                }
                Err(e) => assert!(flip, "pristine chunk failed to open: {e}"),
            }
            if flip {
                assert!(open_trusted(p, &sealed.key, &ciphertext).is_err());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 65 {
        return;
    }
    let mode = data[0];
    let name: [u8; 32] = data[1..33].try_into().expect("32 bytes");
    let key: [u8; 32] = data[33..65].try_into().expect("32 bytes");
    let body = &data[65..];
    for &p in enabled_providers() {
        check(p, mode, name, key, body);
    }
    // With several backends compiled in, they must agree bit for bit.
    let salt = Salt::new(0, key);
    let sealed: Vec<_> = enabled_providers()
        .iter()
        .map(|&p| seal(p, &salt, body).expect("seal"))
        .collect();
    assert!(sealed.windows(2).all(|w| w[0] == w[1]), "backends disagree");
});
