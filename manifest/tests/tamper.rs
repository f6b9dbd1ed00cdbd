//! Every single-byte change and every truncation of a sealed manifest is an error.

mod common;

use std::collections::BTreeMap;

use kms_envelope::block_on;
use manifest::{Error, SealedManifest};

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Truncated { .. } => "truncated",
        Error::BadMagic => "bad magic",
        Error::UnsupportedVersion { .. } => "unsupported version",
        Error::Malformed { .. } => "malformed",
        Error::WrongKey { .. } => "wrong key",
        Error::Unwrap { .. } => "unwrap",
        Error::WrongContext { .. } => "wrong context",
        Error::Tampered => "tampered",
        Error::Kms { .. } => "kms",
        _ => "other",
    }
}

#[test]
fn every_single_byte_change_is_an_error() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let bytes = common::sealed_small(p, &kms).encode();
        assert!(block_on(SealedManifest::decode(&bytes).unwrap().open(p, &kms)).is_ok());
        let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
        for i in 0..bytes.len() {
            for v in 0..=255u8 {
                if v == bytes[i] {
                    continue;
                }
                let mut b = bytes.clone();
                b[i] = v;
                let err = match SealedManifest::decode(&b) {
                    Err(e) => e,
                    Ok(m) => match block_on(m.open(p, &kms)) {
                        Err(e) => e,
                        Ok(_) => panic!("byte {i} set to {v:#04x}: manifest still opens"),
                    },
                };
                *seen.entry(kind(&err)).or_default() += 1;
            }
        }
        println!(
            "{} bytes, outcomes of {} single-byte changes: {seen:?}",
            bytes.len(),
            bytes.len() * 255
        );
        // Every layer of defence is exercised.
        for k in [
            "truncated",
            "bad magic",
            "unsupported version",
            "malformed",
            "unwrap",
            "tampered",
        ] {
            assert!(seen.contains_key(k), "no change caught as {k}: {seen:?}");
        }
    }
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let bytes = common::sealed_small(p, &kms).encode();
        for len in 0..bytes.len() {
            match SealedManifest::decode(&bytes[..len]) {
                Err(Error::Truncated { .. }) => {}
                other => panic!("prefix of {len} bytes: {other:?}"),
            }
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for &p in common::providers() {
        let kms = common::kms(p);
        let mut bytes = common::sealed_small(p, &kms).encode();
        bytes.push(0);
        assert!(matches!(
            SealedManifest::decode(&bytes),
            Err(Error::Malformed { field: "end", .. })
        ));
    }
}
