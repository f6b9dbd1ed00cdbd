//! The shared [`Kms`] conformance suite (feature `testing`).
//!
//! Every backend runs the same checks, the way `object_store` runs one suite
//! against each store: fill in a [`Suite`] and call [`Suite::run`]. It panics
//! with a message naming the broken rule of the [`Kms`] contract.

use crate::{EncryptionContext, Error, Kms, KmsFuture};

/// What the suite needs from a backend.
pub struct Suite<'a> {
    /// The KMS under test.
    pub kms: &'a dyn Kms,
    /// A key id the KMS can wrap under.
    pub key_a: &'a str,
    /// A second, different key id the KMS can wrap under.
    pub key_b: &'a str,
    /// A well-formed key id the KMS does not know.
    pub missing_key: &'a str,
    /// Another KMS that must not be able to unwrap blobs of `kms` (another
    /// keyring with the same key names but other material, another account
    /// or region).
    pub foreign: Option<&'a dyn Kms>,
    /// Rotates `key_a`: a new version becomes primary.
    pub rotate_a: &'a (dyn Fn() -> KmsFuture<'a, ()> + Sync),
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn assert_cannot_unwrap<T>(what: &str, result: crate::Result<T>) -> Error {
    match result {
        Err(e @ Error::CannotUnwrap { .. }) => e,
        Err(other) => panic!("{what}: expected CannotUnwrap, got {other:?}"),
        Ok(_) => panic!("{what}: unwrapped although it must not"),
    }
}

/// Renders bytes the ways a careless message could: lowercase and uppercase
/// hex, and `Debug` of the first bytes.
fn secret_renderings(bytes: &[u8]) -> Vec<String> {
    let hex = hex::encode(bytes);
    vec![
        hex[..16].to_owned(),
        hex[..16].to_uppercase(),
        format!("{:?}", &bytes[..6])
            .trim_end_matches(']')
            .to_owned(),
    ]
}

impl Suite<'_> {
    /// Runs every check. Panics on the first violation.
    pub async fn run(&self) {
        let kms = self.kms;
        let image = ctx(&[("lode:image", "python-app"), ("tenant", "t1")]);
        let mut messages = Vec::new();

        // Round trip, with and without naming the key.
        let dk = kms
            .generate_data_key(self.key_a, &image)
            .await
            .expect("generate_data_key under key_a");
        assert!(!dk.key_id.is_empty(), "resolved key id is empty");
        assert!(dk.wrapped.len() >= 32, "wrapped blob shorter than the key");
        assert_ne!(*dk.plaintext(), [0u8; 32], "data key is all zero");
        messages.push(format!("{dk:?}"));
        let plain = kms.decrypt(&dk.wrapped, &image).await.expect("decrypt");
        assert_eq!(*plain, *dk.plaintext(), "decrypt returned another key");
        for id in [self.key_a, dk.key_id.as_str()] {
            let again = kms
                .decrypt_with_key(id, &dk.wrapped, &image)
                .await
                .unwrap_or_else(|e| panic!("decrypt_with_key({id}): {e:?}"));
            assert_eq!(*again, *dk.plaintext());
        }

        // Fresh key and blob on every call.
        let dk2 = kms.generate_data_key(self.key_a, &image).await.unwrap();
        assert_ne!(dk.plaintext(), dk2.plaintext(), "data keys repeat");
        assert_ne!(dk.wrapped, dk2.wrapped, "wrapped blobs repeat");

        // Wrong contexts: changed value, extra entry, missing entry, empty.
        let mut wrong_contexts = vec![
            ctx(&[("lode:image", "other-app"), ("tenant", "t1")]),
            ctx(&[("lode:image", "python-app"), ("tenant", "t1"), ("x", "y")]),
            ctx(&[("lode:image", "python-app")]),
            EncryptionContext::new(),
        ];
        wrong_contexts.push(ctx(&[("lode:image", "python-app"), ("tenanT", "t1")]));
        for wrong in &wrong_contexts {
            let e = assert_cannot_unwrap(
                "decrypt, wrong context",
                kms.decrypt(&dk.wrapped, wrong).await,
            );
            messages.push(format!("{e} {e:?}"));
            let e = assert_cannot_unwrap(
                "decrypt_with_key, wrong context",
                kms.decrypt_with_key(self.key_a, &dk.wrapped, wrong).await,
            );
            messages.push(format!("{e} {e:?}"));
        }

        // A wrong key fails exactly like a wrong context.
        let dk_b = kms
            .generate_data_key(self.key_b, &image)
            .await
            .expect("generate_data_key under key_b");
        assert_ne!(dk_b.key_id, dk.key_id, "key_a and key_b resolve alike");
        let wrong_key = assert_cannot_unwrap(
            "blob of key_b unwrapped as key_a",
            kms.decrypt_with_key(self.key_a, &dk_b.wrapped, &image)
                .await,
        );
        let wrong_ctx = assert_cannot_unwrap(
            "wrong context",
            kms.decrypt_with_key(self.key_a, &dk.wrapped, &wrong_contexts[0])
                .await,
        );
        assert_eq!(
            format!("{wrong_key} {wrong_key:?}"),
            format!("{wrong_ctx} {wrong_ctx:?}"),
            "a wrong key and a wrong context must look alike to the caller"
        );

        // Altered blobs.
        let mut altered = Vec::new();
        for at in [
            dk.wrapped.len() - 1,
            dk.wrapped.len() - 20,
            dk.wrapped.len() / 2,
        ] {
            let mut b = dk.wrapped.clone();
            b[at] ^= 0x01;
            altered.push(b);
        }
        altered.push(dk.wrapped[..dk.wrapped.len() / 2].to_vec());
        let mut longer = dk.wrapped.clone();
        longer.push(0);
        altered.push(longer);
        for b in &altered {
            let e = assert_cannot_unwrap("altered blob", kms.decrypt(b, &image).await);
            messages.push(format!("{e} {e:?}"));
        }

        // encrypt() wraps a given key under another key id.
        let re = kms
            .encrypt(self.key_b, dk.plaintext(), &image)
            .await
            .expect("encrypt under key_b");
        messages.push(format!("{re:?}"));
        let back = kms
            .decrypt_with_key(self.key_b, &re.wrapped, &image)
            .await
            .expect("decrypt re-wrapped");
        assert_eq!(*back, *dk.plaintext(), "re-wrapped key differs");
        assert_cannot_unwrap(
            "re-wrapped blob unwrapped as key_a",
            kms.decrypt_with_key(self.key_a, &re.wrapped, &image).await,
        );

        // Unknown key named by the caller.
        match kms.generate_data_key(self.missing_key, &image).await {
            Err(e @ Error::KeyNotFound { .. }) => messages.push(format!("{e} {e:?}")),
            other => panic!("missing key: expected KeyNotFound, got {other:?}"),
        }

        // Another KMS cannot unwrap.
        if let Some(foreign) = self.foreign {
            let e = assert_cannot_unwrap(
                "foreign KMS unwrapped a blob",
                foreign.decrypt(&dk.wrapped, &image).await,
            );
            messages.push(format!("{e} {e:?}"));
        }

        // Rotation: blobs wrapped before still unwrap, new ones too.
        (self.rotate_a)().await.expect("rotate key_a");
        let after = kms.generate_data_key(self.key_a, &image).await.unwrap();
        for (what, key) in [("before rotation", &dk), ("after rotation", &after)] {
            let got = kms
                .decrypt_with_key(self.key_a, &key.wrapped, &image)
                .await
                .unwrap_or_else(|e| panic!("blob wrapped {what} no longer unwraps: {e:?}"));
            assert_eq!(*got, *key.plaintext());
        }

        // No key material in any message.
        for secret in [
            dk.plaintext().as_slice(),
            dk_b.plaintext(),
            &dk.wrapped[dk.wrapped.len() - 32..],
        ] {
            for needle in secret_renderings(secret) {
                for m in &messages {
                    assert!(
                        !m.contains(&needle),
                        "key material {needle:?} in message {m:?}"
                    );
                }
            }
        }
    }
}
