//! Opening the key service named by a KMS spec.

use std::sync::Arc;

use anyhow::{Context, Result};
use kms_envelope::{Kms, LocalKms};

use crate::config::KmsSpec;

/// The key service and the master key id to wrap new manifests under.
pub fn open_kms(spec: &KmsSpec) -> Result<(Arc<dyn Kms>, String)> {
    match spec {
        KmsSpec::Local { path, key } => {
            let kms = LocalKms::open(path)
                .with_context(|| format!("opening keyring {}", path.display()))?;
            Ok((Arc::new(kms), key.clone()))
        }
        KmsSpec::Aws { key_id } => {
            let kms = kms_envelope::AwsKms::from_env()
                .context("configuring AWS KMS from the environment")?;
            Ok((Arc::new(kms), key_id.clone()))
        }
    }
}
