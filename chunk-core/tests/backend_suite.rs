//! One test suite, run once per compiled-in crypto backend (rustls-style).
//!
//! Each `suite::*` function takes the backend as a `&dyn CryptoProvider`;
//! the `per_backend!` macro below instantiates every one of them as a
//! `#[test]` in a module named after the backend.
//!
//! The known answers were computed with an independent implementation
//! (Python's `hmac`/`hashlib` and the `cryptography` package's AESGCM), not
//! with this crate, and every backend must reproduce them bit for bit.

#![cfg(any(feature = "rustcrypto", feature = "aws-lc-rs"))]
#![allow(missing_docs)]

mod suite {
    use chunk_core::{
        ChunkKey, ChunkName, ChunkRef, CryptoProvider, Error, Salt, open, open_owned, open_trusted,
        open_trusted_owned, seal, seal_batch, seal_owned, verify_name,
    };
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test constant is hex")
    }

    fn kat_salt() -> Salt {
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = i as u8;
        }
        Salt::new(1, secret)
    }

    fn pattern(len: usize, mul: usize, add: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * mul + add) % 251) as u8).collect()
    }

    struct Kat {
        label: &'static str,
        plaintext: Vec<u8>,
        key: &'static str,
        name: &'static str,
        /// Full ciphertext for short inputs, else the last 16 bytes (the tag).
        ciphertext_or_tag: &'static str,
    }

    fn kats() -> Vec<Kat> {
        vec![
            Kat {
                label: "empty",
                plaintext: Vec::new(),
                key: "d38b42096d80f45f826b44a9d5607de72496a415d3f4a1a8c88e3bb9da8dc1cb",
                name: "86353905bad087e3a583438f091463bbe57194c2f6ce8f10da97b298c76b42a7",
                ciphertext_or_tag: "8797cf1dfe5ab1c4d9a6b7bf512514d2",
            },
            Kat {
                label: "lode",
                plaintext: b"lode".to_vec(),
                key: "bd7bbbca32520186da52662c58a2857ef8ed87b25596170008ad39a2eaee5fb6",
                name: "a53b5cdb5a424a837459793320667dfa14c41ffba10fb237cbd9acc558201024",
                ciphertext_or_tag: "8472a6ecd431191681926e5607c7a9222178702c",
            },
            Kat {
                label: "pattern 1000 B",
                plaintext: pattern(1000, 1, 0),
                key: "8bf90defe8ef048a99b602849c0d7e9bea5b9ebfcf600b7595156388d304df5b",
                name: "7718c07b0fa3c92207e27879d9218f89aa62c7e84f6b4784fbcb632a03e54ab7",
                ciphertext_or_tag: "d357560b06f6e17b9071262bafd607ba",
            },
            Kat {
                label: "pattern 512 KiB",
                plaintext: pattern(512 * 1024, 31, 7),
                key: "b39b6ab89d6600b867c492fbea5f946928214312950d0dab63bb396e0dec12b1",
                name: "e2cd00ab92b592b8bc270d1d1c8c2c28cb2a5541099f4c803c0ac1d002d0624c",
                ciphertext_or_tag: "41db33411c8fa44e3cf8e0f0fa4f9583",
            },
        ]
    }

    pub(crate) fn known_answers(p: &dyn CryptoProvider) {
        let salt = kat_salt();
        for kat in kats() {
            let sealed = seal(p, &salt, &kat.plaintext).expect("seal");
            assert_eq!(
                hex::encode(sealed.key.expose()),
                kat.key,
                "{} key",
                kat.label
            );
            assert_eq!(sealed.name.to_string(), kat.name, "{} name", kat.label);
            assert_eq!(sealed.ciphertext.len(), kat.plaintext.len() + 16);
            let expected = hex(kat.ciphertext_or_tag);
            if expected.len() == sealed.ciphertext.len() {
                assert_eq!(sealed.ciphertext, expected, "{} ciphertext", kat.label);
            } else {
                assert_eq!(
                    &sealed.ciphertext[sealed.ciphertext.len() - 16..],
                    &expected[..],
                    "{} tag",
                    kat.label
                );
            }
            let name: ChunkName = kat.name.parse().expect("name parses");
            let chunk = ChunkRef {
                name,
                key: ChunkKey::from_bytes(sealed.key.expose().to_owned()),
            };
            assert_eq!(
                open(p, &chunk, &sealed.ciphertext).expect("open"),
                kat.plaintext
            );
        }
        // The same plaintext under another salt secret.
        let other = Salt::new(2, [0xff; 32]);
        assert_eq!(
            seal(p, &other, b"lode").expect("seal").name.to_string(),
            "6395f0a8b755737ae96d50731302f15a52f2b46c63c9cf2579004727ea464c72"
        );
    }

    /// Standard vectors for the primitives themselves, so a failure says
    /// which primitive broke.
    pub(crate) fn primitive_vectors(p: &dyn CryptoProvider) {
        // FIPS 180-2 appendix B.1.
        assert_eq!(
            hex::encode(p.sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 4231 test case 2 (key "Jefe", zero-padded as HMAC itself does).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(p.hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // McGrew & Viega GCM test cases 13 and 14 (zero key, zero IV).
        let zero_key = [0u8; 32];
        let mut buf = Vec::new();
        p.aes256gcm_seal_in_place(&zero_key, &[0; 12], &[], &mut buf)
            .expect("seal");
        assert_eq!(hex::encode(&buf), "530f8afbc74536b9a963b4f1c4cb738b");
        let mut buf = vec![0u8; 16];
        p.aes256gcm_seal_in_place(&zero_key, &[0; 12], &[], &mut buf)
            .expect("seal");
        assert_eq!(
            hex::encode(&buf),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
        p.aes256gcm_open_in_place(&zero_key, &[0; 12], &[], &mut buf)
            .expect("open");
        assert_eq!(buf, [0u8; 16]);
        // AAD is authenticated.
        let mut buf = b"x".to_vec();
        p.aes256gcm_seal_in_place(&zero_key, &[0; 12], b"a", &mut buf)
            .expect("seal");
        assert!(
            p.aes256gcm_open_in_place(&zero_key, &[0; 12], b"b", &mut buf)
                .is_err()
        );
    }

    pub(crate) fn short_and_empty_ciphertexts_are_errors(p: &dyn CryptoProvider) {
        let key = ChunkKey::from_bytes([3; 32]);
        for len in 0..16 {
            let bytes = vec![0u8; len];
            assert!(
                matches!(open_trusted(p, &key, &bytes), Err(Error::CiphertextTooShort { len: l, name: None }) if l == len),
                "len {len}"
            );
            let mut buf = bytes.clone();
            assert!(
                p.aes256gcm_open_in_place(&[0; 32], &[0; 12], &[], &mut buf)
                    .is_err()
            );
            let chunk = ChunkRef {
                name: ChunkName::from_bytes(p.sha256(&bytes)),
                key: key.clone(),
            };
            assert!(
                matches!(open(p, &chunk, &bytes), Err(Error::CiphertextTooShort { name: Some(n), .. }) if n == chunk.name)
            );
        }
        // 16 bytes is a well-formed empty chunk: random ones fail to authenticate.
        assert!(matches!(
            open_trusted(p, &key, &[0u8; 16]),
            Err(Error::Decrypt { name: None })
        ));
    }

    pub(crate) fn errors_name_the_chunk(p: &dyn CryptoProvider) {
        let salt = kat_salt();
        let sealed = seal(p, &salt, b"some chunk").expect("seal");
        let wrong_key = ChunkRef {
            name: sealed.name,
            key: ChunkKey::from_bytes([9; 32]),
        };
        match open(p, &wrong_key, &sealed.ciphertext) {
            Err(e @ Error::Decrypt { name: Some(n) }) => {
                assert_eq!(n, sealed.name);
                assert!(e.to_string().contains(&sealed.name.to_hex()));
                assert!(!e.to_string().contains(&"09".repeat(8)));
            }
            other => panic!("expected Decrypt, got {other:?}"),
        }
        let other = seal(p, &salt, b"other chunk").expect("seal");
        match open(p, &sealed.chunk_ref(), &other.ciphertext) {
            Err(Error::NameMismatch { expected, actual }) => {
                assert_eq!(expected, sealed.name);
                assert_eq!(actual, other.name);
            }
            other => panic!("expected NameMismatch, got {other:?}"),
        }
        assert!(verify_name(p, &sealed.name, &sealed.ciphertext).is_ok());
        assert!(verify_name(p, &sealed.name, &other.ciphertext).is_err());
    }

    pub(crate) fn batch_matches_single_and_keeps_order(p: &dyn CryptoProvider) {
        let salt = kat_salt();
        let inputs: Vec<Vec<u8>> = (0..37).map(|i| pattern(1000 + i * 97, i + 1, i)).collect();
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let batch = seal_batch(p, &salt, &refs).expect("batch");
        assert_eq!(batch.len(), inputs.len());
        for (input, sealed) in inputs.iter().zip(&batch) {
            assert_eq!(*sealed, seal(p, &salt, input).expect("seal"));
        }
        assert!(seal_batch(p, &salt, &[]).expect("empty batch").is_empty());
    }

    pub(crate) fn owned_variants_match(p: &dyn CryptoProvider) {
        let salt = kat_salt();
        let plaintext = pattern(70_000, 13, 5);
        let sealed = seal(p, &salt, &plaintext).expect("seal");
        let r = sealed.chunk_ref();
        assert_eq!(
            open_owned(p, &r, sealed.ciphertext.clone()).expect("open_owned"),
            plaintext
        );
        assert_eq!(
            open_trusted_owned(p, &r.key, sealed.ciphertext.clone()).expect("trusted owned"),
            plaintext
        );
        let mut bad = sealed.ciphertext.clone();
        bad[0] ^= 1;
        assert!(matches!(
            open_owned(p, &r, bad.clone()),
            Err(Error::NameMismatch { .. })
        ));
        assert!(matches!(
            open_trusted_owned(p, &r.key, bad),
            Err(Error::Decrypt { name: None })
        ));
    }

    pub(crate) fn seal_owned_matches_seal_without_copy(p: &dyn CryptoProvider) {
        let salt = kat_salt();
        let mut data = pattern(3 * 4096 + 100, 7, 1);
        data[4096..8192].fill(0);
        let chunker = chunk_core::Chunker::new(4096).expect("size");
        let mut count = 0;
        for chunk in chunker.reader(&data[..]) {
            let chunk = chunk.expect("read");
            let chunk_core::OwnedChunkData::Data(bytes) = chunk.data else {
                continue;
            };
            let expected = seal(p, &salt, &bytes).expect("seal");
            let ptr = bytes.as_ptr();
            let sealed = seal_owned(p, &salt, bytes).expect("seal_owned");
            assert_eq!(sealed, expected);
            assert_eq!(
                sealed.ciphertext.as_ptr(),
                ptr,
                "reader buffers need no reallocation"
            );
            count += 1;
        }
        assert_eq!(count, 3);
        // A buffer without spare room still seals correctly.
        let tight = b"tight".to_vec();
        assert_eq!(
            seal_owned(p, &salt, tight.clone()).expect("seal_owned"),
            seal(p, &salt, &tight).expect("seal")
        );
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn plaintexts() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..20_000),
        ]
    }

    pub(crate) fn prop_convergent(p: &dyn CryptoProvider) {
        proptest!(config(), |(data in plaintexts(), secret in any::<[u8; 32]>(), id in any::<u32>())| {
            let a = seal(p, &Salt::new(id, secret), &data).expect("seal");
            let b = seal(p, &Salt::new(id.wrapping_add(1), secret), &data).expect("seal");
            // Same plaintext and salt secret: same key, name and bytes.
            prop_assert_eq!(&a, &b);
        });
    }

    pub(crate) fn prop_salts_separate(p: &dyn CryptoProvider) {
        proptest!(config(), |(data in plaintexts(), s1 in any::<[u8; 32]>(), s2 in any::<[u8; 32]>())| {
            prop_assume!(s1 != s2);
            let a = seal(p, &Salt::new(1, s1), &data).expect("seal");
            let b = seal(p, &Salt::new(1, s2), &data).expect("seal");
            prop_assert_ne!(a.name, b.name);
            prop_assert_ne!(a.key, b.key);
        });
    }

    pub(crate) fn prop_distinct_plaintexts_distinct_names(p: &dyn CryptoProvider) {
        proptest!(config(), |(a in plaintexts(), b in plaintexts(), secret in any::<[u8; 32]>())| {
            prop_assume!(a != b);
            let salt = Salt::new(1, secret);
            prop_assert_ne!(seal(p, &salt, &a).expect("seal").name, seal(p, &salt, &b).expect("seal").name);
        });
    }

    pub(crate) fn prop_round_trip(p: &dyn CryptoProvider) {
        proptest!(config(), |(data in plaintexts(), secret in any::<[u8; 32]>())| {
            let sealed = seal(p, &Salt::new(1, secret), &data).expect("seal");
            prop_assert_eq!(sealed.ciphertext.len(), data.len() + 16);
            prop_assert_eq!(p.sha256(&sealed.ciphertext), *sealed.name.as_bytes());
            let opened = open(p, &sealed.chunk_ref(), &sealed.ciphertext).expect("open");
            prop_assert_eq!(&opened, &data);
            let trusted = open_trusted(p, &sealed.key, &sealed.ciphertext).expect("open_trusted");
            prop_assert_eq!(&trusted, &data);
        });
    }

    pub(crate) fn prop_bit_flip_is_error(p: &dyn CryptoProvider) {
        proptest!(config(), |(data in plaintexts(), secret in any::<[u8; 32]>(), pos in any::<prop::sample::Index>(), bit in 0u8..8)| {
            let sealed = seal(p, &Salt::new(1, secret), &data).expect("seal");
            let mut bad = sealed.ciphertext.clone();
            let i = pos.index(bad.len());
            bad[i] ^= 1 << bit;
            // Through the name check ...
            let r = open(p, &sealed.chunk_ref(), &bad);
            prop_assert!(matches!(r, Err(Error::NameMismatch { .. })), "got {:?}", r);
            // ... and through GCM alone.
            let r = open_trusted(p, &sealed.key, &bad);
            prop_assert!(matches!(r, Err(Error::Decrypt { .. })), "got {:?}", r);
            // The pristine bytes still open.
            prop_assert_eq!(open(p, &sealed.chunk_ref(), &sealed.ciphertext).expect("open"), data);
        });
    }

    /// Random bytes fill the whole buffer, never repeat, and an empty
    /// buffer is fine (data keys, nonces, master keys and salts come from here).
    pub(crate) fn random_bytes_fill_and_differ(p: &dyn CryptoProvider) {
        p.fill_random(&mut []).expect("empty fill");
        let mut seen = std::collections::HashSet::new();
        for len in [1usize, 12, 32, 4096] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            p.fill_random(&mut a).expect("fill_random");
            p.fill_random(&mut b).expect("fill_random");
            if len >= 12 {
                assert_ne!(a, b, "{}: two draws of {len} bytes are equal", p.name());
                assert!(seen.insert(a.clone()), "{}: a draw repeated", p.name());
            }
        }
        // Every byte of a long draw is written: no byte position stays zero
        // over 16 draws of 64 bytes (each would stay zero with chance 2^-128).
        let mut any = [0u8; 64];
        for _ in 0..16 {
            let mut buf = [0u8; 64];
            p.fill_random(&mut buf).expect("fill_random");
            for (acc, b) in any.iter_mut().zip(buf) {
                *acc |= b;
            }
        }
        assert!(any.iter().all(|&b| b != 0), "{}: {any:?}", p.name());
    }

    pub(crate) fn prop_wrong_name_or_key_is_error(p: &dyn CryptoProvider) {
        proptest!(config(), |(data in plaintexts(), secret in any::<[u8; 32]>(), other in any::<[u8; 32]>())| {
            let sealed = seal(p, &Salt::new(1, secret), &data).expect("seal");
            let wrong_name = ChunkRef { name: ChunkName::from_bytes(other), key: sealed.key.clone() };
            prop_assume!(wrong_name.name != sealed.name);
            let r = open(p, &wrong_name, &sealed.ciphertext);
            prop_assert!(matches!(r, Err(Error::NameMismatch { .. })), "got {:?}", r);
            let wrong_key = ChunkRef { name: sealed.name, key: ChunkKey::from_bytes(other) };
            prop_assume!(wrong_key.key != sealed.key);
            let r = open(p, &wrong_key, &sealed.ciphertext);
            prop_assert!(matches!(r, Err(Error::Decrypt { .. })), "got {:?}", r);
        });
    }
}

macro_rules! per_backend {
    ($module:ident, $provider:expr, [$($test:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::suite::$test(&$provider);
                }
            )*

            #[test]
            fn is_listed_under_its_name() {
                let p: &dyn chunk_core::CryptoProvider = &$provider;
                assert!(chunk_core::provider_by_name(p.name()).is_some());
            }
        }
    };
}

macro_rules! suite_for {
    ($module:ident, $provider:expr) => {
        per_backend!(
            $module,
            $provider,
            [
                known_answers,
                primitive_vectors,
                random_bytes_fill_and_differ,
                short_and_empty_ciphertexts_are_errors,
                errors_name_the_chunk,
                batch_matches_single_and_keeps_order,
                owned_variants_match,
                seal_owned_matches_seal_without_copy,
                prop_convergent,
                prop_salts_separate,
                prop_distinct_plaintexts_distinct_names,
                prop_round_trip,
                prop_bit_flip_is_error,
                prop_wrong_name_or_key_is_error,
            ]
        );
    };
}

#[cfg(feature = "rustcrypto")]
suite_for!(rustcrypto, chunk_core::RustCrypto);

#[cfg(feature = "aws-lc-rs")]
suite_for!(aws_lc_rs, chunk_core::AwsLc);
