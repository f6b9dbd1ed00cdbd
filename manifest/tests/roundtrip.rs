//! Round trips: seal → encode → decode → open gives back the manifest.

mod common;

use kms_envelope::block_on;
use manifest::{ChunkKey, ChunkName, ChunkRef, Manifest, SealedManifest, image_context};
use proptest::prelude::*;

fn arb_manifest() -> impl Strategy<Value = Manifest> {
    // Every chunk size a manifest may carry: powers of two, 4 KiB to 16 MiB.
    (12u32..=24, 0usize..300, 0.0f64..=1.0).prop_flat_map(|(shift, count, hole_rate)| {
        let chunk_size = 1u32 << shift;
        let last = if count == 0 {
            Just(0u64).boxed()
        } else {
            (1..=u64::from(chunk_size)).boxed()
        };
        (
            ".{0,40}",
            "[a-z0-9:]{0,71}",
            any::<u32>(),
            ".{0,20}",
            last,
            proptest::collection::vec(
                (
                    proptest::bool::weighted(1.0 - hole_rate),
                    any::<[u8; 32]>(),
                    any::<[u8; 32]>(),
                ),
                count,
            ),
        )
            .prop_map(
                move |(source_ref, source_digest, salt_id, tool_version, last, chunks)| {
                    let n = chunks.len() as u64;
                    Manifest {
                        source_ref,
                        source_digest,
                        image_size: if n == 0 {
                            0
                        } else {
                            (n - 1) * u64::from(chunk_size) + last
                        },
                        chunk_size,
                        salt_id,
                        tool_version,
                        chunks: chunks
                            .into_iter()
                            .map(|(present, name, key)| {
                                present.then(|| ChunkRef {
                                    name: ChunkName::from_bytes(name),
                                    key: ChunkKey::from_bytes(key),
                                })
                            })
                            .collect(),
                    }
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn seal_encode_decode_open_round_trips(m in arb_manifest(), image in "[a-z][a-z0-9-]{0,20}") {
        for &p in common::providers() {
        let kms = common::kms(p);
        let ctx = image_context(&image);
        let sealed = block_on(m.seal(p, &kms, "k", &ctx)).unwrap();
        let bytes = sealed.encode();
        let present = m.chunks.iter().flatten().count();
        // 32 name + 32 key per present chunk, one bit per index, small fixed rest.
        prop_assert!(bytes.len() <= 64 * present + m.chunks.len().div_ceil(8) + 200 + m.source_ref.len() + m.source_digest.len() + m.tool_version.len() + image.len());

        let decoded = SealedManifest::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &sealed);
        prop_assert_eq!(decoded.encode(), bytes.clone(), "encoding is not canonical");
        prop_assert_eq!(decoded.names().collect::<Vec<_>>(), m.names().collect::<Vec<_>>());
        for (i, n) in m.names().enumerate() {
            prop_assert_eq!(decoded.name(i), n);
        }
        prop_assert_eq!(decoded.image_name(), image.as_str());
        prop_assert_eq!(decoded.chunk_count(), m.chunks.len());

        let opened = block_on(decoded.open_with_context(p, &kms, &ctx)).unwrap();
        prop_assert_eq!(&opened, &m);

        // Re-wrapping changes only the envelope.
        let re = block_on(decoded.rewrap(p, &kms, "k2")).unwrap();
        prop_assert_eq!(re.key_id(), "k2@1");
        prop_assert_eq!(re.public_digest(p), decoded.public_digest(p));
        prop_assert_eq!(&block_on(re.open(p, &kms)).unwrap(), &m);
        }
    }

    #[test]
    fn decode_never_panics_and_accepts_only_canonical_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(m) = SealedManifest::decode(&bytes) {
            prop_assert_eq!(m.encode(), bytes);
        }
    }

    #[test]
    fn mutated_manifests_never_open(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        for &p in common::providers() {
        let kms = common::kms(p);
        let mut bytes = common::sealed_small(p, &kms).encode();
        let original = bytes.clone();
        for &(at, v) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if bytes == original {
            continue;
        }
        if let Ok(m) = SealedManifest::decode(&bytes) {
            prop_assert_eq!(m.encode(), bytes.clone());
            prop_assert!(block_on(m.open(p, &kms)).is_err());
        }
        }
    }
}
