//! Fixed-size chunking and convergent encryption of chunks for lode.
//!
//! lode cuts every image into fixed-size chunks (512 KiB by default) and
//! stores each chunk encrypted, under a name derived from its ciphertext, in
//! a content-addressed store. This crate does the cutting and the crypto and
//! nothing else: it is pure and synchronous, does no I/O beyond
//! [`std::io::Read`], and knows nothing of stores, caches or manifests.
//!
//! - [`Chunker`] cuts a slice ([`Chunker::split`]) or any `Read`
//!   ([`Chunker::reader`]) into [`Chunk`]s; all-zero chunks come out as
//!   [`ChunkData::Hole`] and are never sealed or stored.
//! - [`seal`] turns a plaintext chunk into a [`SealedChunk`]: the ciphertext
//!   to store, its [`ChunkName`], and the [`ChunkKey`] to keep in the
//!   manifest. [`seal_batch`] seals many chunks on all cores;
//!   [`seal_owned`] seals a buffer from [`Chunker::reader`] without a copy.
//! - [`open`] checks and decrypts what a store returned for a [`ChunkRef`];
//!   [`open_trusted`] skips the name check for bytes already verified.
//! - [`CryptoProvider`] is the one small trait all of lode's crypto goes
//!   through (chunks here; manifests and the local keyring in the
//!   `manifest` and `kms-envelope` crates), with two backends the caller
//!   picks explicitly: [`RustCrypto`] and `AwsLc`.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "rustcrypto")] {
//! use chunk_core::{ChunkData, Chunker, RustCrypto, Salt, open, seal};
//!
//! # fn main() -> Result<(), chunk_core::Error> {
//! let provider = RustCrypto; // or chunk_core::AwsLc with feature "aws-lc-rs"
//! let salt = Salt::new(1, [7; 32]); // a real salt secret comes from a KMS-protected store
//!
//! let mut image = vec![0u8; 3 * 4096 + 10];
//! image[4096..8192].fill(0xab);
//!
//! let chunker = Chunker::new(4096)?;
//! let mut stored = Vec::new();
//! for chunk in chunker.split(&image) {
//!     match chunk.data {
//!         ChunkData::Hole { len } => assert!(len > 0), // nothing to store
//!         ChunkData::Data(bytes) => {
//!             let sealed = seal(&provider, &salt, bytes)?;
//!             // The store only ever sees `sealed.name` and `sealed.ciphertext`.
//!             stored.push((chunk.offset, sealed));
//!         }
//!     }
//! }
//! assert_eq!(stored.len(), 1);
//!
//! let (offset, sealed) = &stored[0];
//! let plaintext = open(&provider, &sealed.chunk_ref(), &sealed.ciphertext)?;
//! assert_eq!(&plaintext[..], &image[*offset as usize..][..4096]);
//!
//! // Convergence: the same bytes under the same salt get the same name.
//! assert_eq!(seal(&provider, &salt, &image[4096..8192])?.name, sealed.name);
//! # Ok(())
//! # }
//! # main().unwrap();
//! # }
//! ```
//!
//! # Chunk format (version 1)
//!
//! For a plaintext `P` and a salt with secret `S`:
//!
//! ```text
//! key        = HMAC-SHA256(S, P)                       32 bytes
//! ciphertext = AES-256-GCM(key, nonce = 0^96, aad = "", P) ‖ tag(16 bytes)
//! name       = SHA-256(ciphertext)                     lowercase hex in object keys
//! ```
//!
//! The salt's id is a public label recorded in manifests; it is not part of
//! the computation, so two salts must never share a secret. A fixed nonce is
//! safe because a key encrypts exactly one plaintext. Known-answer tests pin
//! this format; changing any byte of it breaks deduplication against every
//! chunk already stored, so it must never change silently.
//!
//! # Features
//!
//! - `rustcrypto` (default): the [`RustCrypto`] backend from the pure-Rust
//!   `sha2`, `hmac` and `aes-gcm` crates, with the operating system's random
//!   generator (`getrandom`). Needs no C compiler. The AES key schedule and
//!   the GHASH key are wiped from memory after use (`zeroize` features).
//! - `aws-lc-rs`: the `AwsLc` backend on AWS-LC. Faster (stitched AES-GCM
//!   assembly); building it needs a C compiler (`cc`), nothing else on
//!   x86-64 Linux.
//!
//! Both features are additive and may be on together; each backend is a
//! plain value the caller passes in, and there is no process-wide default.
//! [`enabled_providers`] and [`provider_by_name`] list what was compiled in,
//! for tools that let a user choose.
//!
//! # Threat model
//!
//! Convergent encryption trades some secrecy for deduplication. What it
//! gives and what it does not:
//!
//! - **The store and caches learn nothing of plaintext** but chunk lengths
//!   and which chunks repeat. They hold ciphertext under names that are
//!   hashes; keys live only in manifests, which are sealed under a KMS data
//!   key.
//! - **Confirmation-of-file within one salt domain.** Anyone who knows the
//!   salt secret and guesses a chunk's exact plaintext can compute its name
//!   and see whether the store holds it; anyone who holds one key can
//!   recognise every copy of that chunk. That is the price of dedup. Without
//!   the salt secret, names reveal nothing: they are keyed by it.
//! - **Salts bound the damage.** Dedup, and so confirmation, works only
//!   between chunks sealed under the same salt. A salt therefore bounds who
//!   can confirm what (e.g. one salt per tenant or per trust domain) and the
//!   blast radius of one lost key or one very popular chunk: a leaked key
//!   opens that chunk only in its own salt domain. Salts are rotated over
//!   time (as Lambda does); chunks sealed under a new salt share nothing
//!   with older ones, so a leak stops propagating once images are
//!   re-sealed.
//! - **Why the name is SHA-256 of the ciphertext, not the GCM tag.** The
//!   tag is a MAC, not a commitment. It is not collision resistant: GHASH is
//!   linear, so whoever knows a key can make other ciphertexts with the same
//!   tag, and GCM is not key-committing (one ciphertext can be built to
//!   authenticate under two different keys). And it cannot be checked
//!   without the key. A name that is the ciphertext's SHA-256 can be checked
//!   by anyone holding only the bytes, so stores, shared caches and garbage
//!   collection can verify what they hold and serve, and [`open`] rejects a
//!   wrong or corrupted object before decrypting. GCM then still
//!   authenticates under the key, so a wrong key or altered bytes are an
//!   error; wrong plaintext is never returned.
//! - **Out of scope here**: who may read which manifest (KMS and the
//!   `manifest` crate), and hiding chunk lengths or access patterns.

mod chunker;
mod error;
mod provider;
mod seal;
mod types;

pub use chunker::{
    Chunk, ChunkData, Chunker, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, OwnedChunk,
    OwnedChunkData, ReadChunks, Split, is_all_zero,
};
pub use error::{Error, Result};
#[cfg(feature = "aws-lc-rs")]
pub use provider::AwsLc;
#[cfg(feature = "rustcrypto")]
pub use provider::RustCrypto;
pub use provider::{CryptoProvider, TAG_LEN, enabled_providers, provider_by_name};
pub use seal::{
    CIPHERTEXT_OVERHEAD, NONCE, SealedChunk, name_of, open, open_owned, open_trusted,
    open_trusted_owned, seal, seal_batch, seal_owned, verify_name,
};
pub use types::{ChunkKey, ChunkName, ChunkRef, Salt};
