//! The images of a store, one line each (what `lode ls` prints).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Result;
use crate::layout::Store;
use crate::versions::{RETIRED, RetiredVersion};

/// One image of the store.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ImageListing {
    /// Image name.
    pub name: String,
    /// When its current version was pushed (the manifest's write, RFC 3339).
    pub pushed_at: String,
    /// Flattened image size in bytes.
    pub image_bytes: u64,
    /// Chunks stored for it (holes not counted).
    pub stored_chunks: u64,
    /// Where it came from (e.g. `oci:DIR:TAG`).
    pub source_ref: String,
    /// Replaced versions still kept for running workers (`retired/NAME/`).
    pub older_versions: u64,
}

/// Every image, sorted by name. Reads each manifest (one GET per image);
/// a manifest that vanished meanwhile is skipped.
pub async fn list_images(store: &Store) -> Result<Vec<ImageListing>> {
    let mut older: BTreeMap<String, u64> = BTreeMap::new();
    for o in store.list_under(RETIRED).await? {
        if let Some((image, obj)) = o.name.split_once('/')
            && RetiredVersion::parse(obj).is_some()
        {
            *older.entry(image.to_string()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for m in store.list_manifests().await? {
        let sealed = match store.get_manifest(&m.name).await {
            Ok(s) => s,
            Err(crate::Error::ImageNotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        out.push(ImageListing {
            older_versions: older.get(&m.name).copied().unwrap_or(0),
            pushed_at: m.last_modified,
            image_bytes: sealed.image_size(),
            stored_chunks: sealed.present_count() as u64,
            source_ref: sealed.source_ref().to_string(),
            name: m.name,
        });
    }
    Ok(out)
}
