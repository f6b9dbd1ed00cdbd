//! Distinct errors for each failure, and no key material anywhere.

mod common;

use kms_envelope::{LocalKms, block_on};
use manifest::{Error, SealedManifest, image_context};

#[test]
fn wrong_kms_key_is_reported() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let sealed = common::sealed_small(p, &kms);
        // A keyring without the key.
        let other = LocalKms::from_keys(p, [("other".to_owned(), 1, [0x42; 32])]).unwrap();
        match block_on(sealed.open(p, &other)) {
            Err(Error::WrongKey { key_id, .. }) => assert_eq!(key_id, "k@1"),
            other => panic!("{other:?}"),
        }
        // A keyring with a key of the same name but other material.
        let foreign = LocalKms::from_keys(p, [("k".to_owned(), 1, [0x99; 32])]).unwrap();
        match block_on(sealed.open(p, &foreign)) {
            Err(Error::Unwrap { key_id, .. }) => assert_eq!(key_id, "k@1"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn wrong_context_is_reported_before_the_kms_is_asked() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let sealed = common::sealed_small(p, &kms);
        let expected = image_context("another-app");
        match block_on(sealed.open_with_context(p, &kms, &expected)) {
            Err(Error::WrongContext { expected: e, found }) => {
                assert_eq!(e, expected);
                assert_eq!(&found, sealed.context());
            }
            other => panic!("{other:?}"),
        }
        // Even a KMS that does not know the key reports the context first.
        let empty = LocalKms::from_keys(p, []).unwrap();
        assert!(matches!(
            block_on(sealed.open_with_context(p, &empty, &expected)),
            Err(Error::WrongContext { .. })
        ));
        assert!(block_on(sealed.open_with_context(p, &kms, &common::ctx())).is_ok());
    }
}

#[test]
fn altered_context_in_the_envelope_is_refused_by_the_kms() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let bytes = common::sealed_small(p, &kms).encode();
        let at = bytes.windows(3).rposition(|w| w == b"app").unwrap();
        let mut b = bytes.clone();
        b[at] = b'A';
        let m = SealedManifest::decode(&b).unwrap();
        assert_eq!(m.image_name(), "App");
        assert!(matches!(
            block_on(m.open(p, &kms)),
            Err(Error::Unwrap { .. })
        ));
    }
}

#[test]
fn tampered_public_part_or_keys_are_reported() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let bytes = common::sealed_small(p, &kms).encode();
        // A name byte.
        let at = bytes.windows(32).position(|w| w == [0x11; 32]).unwrap();
        let mut b = bytes.clone();
        b[at + 5] ^= 1;
        assert!(matches!(
            block_on(SealedManifest::decode(&b).unwrap().open(p, &kms)),
            Err(Error::Tampered)
        ));
        // Two names swapped (reordering).
        let mut b = bytes.clone();
        let first = bytes.windows(32).position(|w| w == [0x10; 32]).unwrap();
        b[first..first + 32].copy_from_slice(&[0x11; 32]);
        b[first + 32..first + 64].copy_from_slice(&[0x10; 32]);
        assert!(matches!(
            block_on(SealedManifest::decode(&b).unwrap().open(p, &kms)),
            Err(Error::Tampered)
        ));
        // The salt id.
        let mut b = bytes.clone();
        let salt_at = 6 + 2 + 12 + 2 + 11 + 8 + 4;
        assert_eq!(&b[salt_at..salt_at + 4], &7u32.to_le_bytes());
        b[salt_at] = 8;
        assert!(matches!(
            block_on(SealedManifest::decode(&b).unwrap().open(p, &kms)),
            Err(Error::Tampered)
        ));
    }
}

#[test]
fn keys_cannot_move_to_another_manifest() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let sealed_a = common::sealed_small(p, &kms);
        let a = sealed_a.encode();
        let mut m = common::small_manifest();
        m.source_ref = "oci:/img:bad".into(); // same length, other public part
        let b = block_on(m.seal(p, &kms, "k", &common::ctx()))
            .unwrap()
            .encode();
        let public_len = public_len_from_fields(&sealed_a);
        // Splice: public part of `b`, envelope and sealed keys of `a`.
        let mut spliced = b[..public_len].to_vec();
        spliced.extend_from_slice(&a[public_len..]);
        let decoded = SealedManifest::decode(&spliced).unwrap();
        assert_eq!(decoded.source_ref(), "oci:/img:bad");
        assert!(matches!(
            block_on(decoded.open(p, &kms)),
            Err(Error::Tampered)
        ));
    }
}

#[test]
fn unsupported_version_and_truncation_are_reported() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let mut b = common::sealed_small(p, &kms).encode();
        // magic 4 + version 2 + str16 12 + str16 11 + 8 + 4 + 4 + str16 10 + count 4
        let bitmap_at = 65;
        match SealedManifest::decode(&b[..bitmap_at]) {
            Err(Error::Truncated {
                field,
                offset,
                needed,
                available,
            }) => {
                assert_eq!(
                    (field, offset, needed, available),
                    ("presence bitmap", bitmap_at, 1, 0)
                );
            }
            other => panic!("{other:?}"),
        }
        for bad in [0u8, 3] {
            b[4] = bad;
            match SealedManifest::decode(&b) {
                Err(
                    e @ Error::UnsupportedVersion {
                        found,
                        supported: 2,
                    },
                ) if found == u16::from(bad) => {
                    assert!(e.to_string().contains(&format!("version {bad}")), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
        b[0] = b'X';
        assert!(matches!(SealedManifest::decode(&b), Err(Error::BadMagic)));
    }
}

#[test]
fn rewrap_changes_only_the_envelope() {
    for &p in common::providers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        kms_envelope::new_keyring_with_key(p, &path, "img").unwrap();
        let kms_v1 = LocalKms::open(p, &path).unwrap();
        let kms = &kms_v1;
        let m = common::small_manifest();
        let sealed = block_on(m.seal(p, kms, "img", &common::ctx())).unwrap();
        assert_eq!(sealed.key_id(), "img@1");
        kms_envelope::rotate(p, &path, "img").unwrap();
        let kms = &LocalKms::open(p, &path).unwrap();
        let re = block_on(sealed.rewrap(p, kms, "img")).unwrap();
        assert_eq!(re.key_id(), "img@2");
        let (old, new) = (sealed.encode(), re.encode());
        let public_len = public_len_from_fields(&sealed);
        assert_eq!(old[..public_len], new[..public_len], "public part changed");
        assert_eq!(
            old[old.len() - 3 * 32 - 16..],
            new[new.len() - 3 * 32 - 16..],
            "sealed keys changed"
        );
        assert_ne!(old, new);
        assert_eq!(block_on(re.open(p, kms)).unwrap(), m);
        // The keyring as it was before rotation (version 1 only) opens the
        // original but not the re-wrapped manifest.
        assert!(block_on(sealed.open(p, &kms_v1)).is_ok());
        assert!(matches!(
            block_on(re.open(p, &kms_v1)),
            Err(Error::Unwrap { .. })
        ));
        // Re-wrapping under an unknown key fails clearly; tampered manifests are not re-wrapped.
        assert!(matches!(
            block_on(sealed.rewrap(p, kms, "nope")),
            Err(Error::WrongKey { .. })
        ));
        let mut b = old.clone();
        let name_at = old.windows(32).position(|w| w == [0x11; 32]).unwrap();
        b[name_at] ^= 1;
        let bad = SealedManifest::decode(&b).unwrap();
        assert!(matches!(
            block_on(bad.rewrap(p, kms, "img")),
            Err(Error::Tampered)
        ));
    }
}

/// Length of the public part, from the documented layout.
fn public_len_from_fields(m: &SealedManifest) -> usize {
    4 + 2
        + 2
        + m.source_ref().len()
        + 2
        + m.source_digest().len()
        + 8
        + 4
        + 4
        + 2
        + m.tool_version().len()
        + 4
        + m.chunk_count().div_ceil(8)
        + 32 * m.present_count()
}

#[test]
fn no_key_material_in_errors_or_debug() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let m = common::small_manifest();
        let sealed = common::sealed_small(p, &kms);
        let bytes = sealed.encode();
        let mut texts = vec![
            format!("{m:?}"),
            format!("{sealed:?}"),
            format!("{:?}", block_on(sealed.open(p, &kms)).unwrap()),
        ];
        let foreign = LocalKms::from_keys(p, [("k".to_owned(), 1, [0x99; 32])]).unwrap();
        let mut errors = vec![
            block_on(sealed.open(p, &foreign)).unwrap_err(),
            block_on(sealed.open(p, &LocalKms::from_keys(p, []).unwrap())).unwrap_err(),
            block_on(sealed.open_with_context(p, &kms, &image_context("x"))).unwrap_err(),
            SealedManifest::decode(&bytes[..bytes.len() - 1]).unwrap_err(),
        ];
        let mut b = bytes.clone();
        let name_at = bytes.windows(32).position(|w| w == [0x11; 32]).unwrap();
        b[name_at] ^= 1;
        errors.push(block_on(SealedManifest::decode(&b).unwrap().open(p, &kms)).unwrap_err());
        for e in &errors {
            texts.push(format!("{e} | {e:?}"));
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                texts.push(format!("{s} | {s:?}"));
                source = s.source();
            }
        }
        // Chunk keys are KEY_BYTE ^ i; the wrapped data key is the tail of the envelope.
        let mut needles = Vec::new();
        for i in 0..4u8 {
            needles.extend(common::key_renderings(common::KEY_BYTE ^ i));
        }
        let data_key = block_on(kms_envelope::Kms::decrypt(
            &kms,
            sealed.wrapped_data_key(),
            sealed.context(),
        ))
        .unwrap();
        needles.push(hex::encode(&data_key[..4]));
        needles.push(
            format!("{:?}", &data_key[..3])
                .trim_end_matches(']')
                .to_owned(),
        );
        for t in &texts {
            for n in &needles {
                assert!(!t.contains(n.as_str()), "key material {n:?} in {t:?}");
            }
        }
        assert!(
            texts.iter().any(|t| t.contains("ChunkName(1010")),
            "names should be visible"
        );
    }
}

/// A KMS whose service fails (as a transport or configuration error
/// would); unwrapping can be delegated to a working one.
struct FailingKms {
    unwrap_with: Option<kms_envelope::LocalKms>,
}

fn service_down<T>() -> kms_envelope::KmsFuture<'static, T> {
    Box::pin(async {
        Err(kms_envelope::Error::Wrap {
            key_id: "k".into(),
            reason: "service down",
        })
    })
}

impl kms_envelope::Kms for FailingKms {
    fn generate_data_key<'a>(
        &'a self,
        _key_id: &'a str,
        _ctx: &'a kms_envelope::EncryptionContext,
    ) -> kms_envelope::KmsFuture<'a, kms_envelope::DataKey> {
        service_down()
    }
    fn encrypt<'a>(
        &'a self,
        _key_id: &'a str,
        _plaintext: &'a [u8; 32],
        _ctx: &'a kms_envelope::EncryptionContext,
    ) -> kms_envelope::KmsFuture<'a, kms_envelope::WrappedKey> {
        service_down()
    }
    fn decrypt<'a>(
        &'a self,
        wrapped: &'a [u8],
        ctx: &'a kms_envelope::EncryptionContext,
    ) -> kms_envelope::KmsFuture<'a, zeroize::Zeroizing<[u8; 32]>> {
        match &self.unwrap_with {
            Some(k) => k.decrypt(wrapped, ctx),
            None => service_down(),
        }
    }
    fn decrypt_with_key<'a>(
        &'a self,
        key_id: &'a str,
        wrapped: &'a [u8],
        ctx: &'a kms_envelope::EncryptionContext,
    ) -> kms_envelope::KmsFuture<'a, zeroize::Zeroizing<[u8; 32]>> {
        match &self.unwrap_with {
            Some(k) => k.decrypt_with_key(key_id, wrapped, ctx),
            None => service_down(),
        }
    }
}

#[test]
fn other_kms_failures_name_the_key_and_the_operation_and_keep_the_source() {
    for &p in common::providers() {
        use std::error::Error as _;
        let check = |e: Error, key: &str, op: &str| {
            match &e {
                Error::Kms {
                    key_id, operation, ..
                } => assert_eq!((key_id.as_str(), *operation), (key, op)),
                other => panic!("expected Error::Kms, got {other:?}"),
            }
            let text = e.to_string();
            assert!(text.contains(key) && text.contains(op), "{text}");
            let source = e.source().expect("the KMS error is kept as the source");
            assert!(source.to_string().contains("service down"), "{source}");
        };
        let down = FailingKms { unwrap_with: None };
        let err =
            block_on(common::small_manifest().seal(p, &down, "k", &common::ctx())).unwrap_err();
        check(err, "k", "generating");

        let kms = common::kms(p);
        let sealed = common::sealed_small(p, &kms);
        check(
            block_on(sealed.open(p, &down)).unwrap_err(),
            "k@1",
            "unwrapping",
        );

        let wrap_down = FailingKms {
            unwrap_with: Some(kms),
        };
        check(
            block_on(sealed.rewrap(p, &wrap_down, "k2")).unwrap_err(),
            "k2",
            "wrapping",
        );
    }
}
