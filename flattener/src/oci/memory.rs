//! An image held in memory: a list of layer blobs. For tests and fuzzing.

use std::io::{Cursor, Read};

use super::{Digest, ImageSource, LayerDescriptor, Platform, ResolvedImage};
use crate::error::{Error, Result};

/// An image made of in-memory layer blobs (plain tar, gzip or zstd,
/// detected by magic bytes). The diff_ids are computed from the blobs
/// decompressed here, so only the tar content is checked.
#[derive(Clone, Debug)]
pub struct MemorySource {
    layers: Vec<Vec<u8>>,
    diff_ids: Vec<Digest>,
}

impl MemorySource {
    /// An image whose layers are these plain tar streams, bottom first.
    pub fn from_tars(layers: Vec<Vec<u8>>) -> Self {
        let diff_ids = layers.iter().map(|l| Digest::of(l)).collect();
        Self { layers, diff_ids }
    }
}

impl ImageSource for MemorySource {
    fn name(&self) -> String {
        format!("memory:{} layers", self.layers.len())
    }

    fn resolve(&self, _platform: &Platform) -> Result<ResolvedImage> {
        let mut config = Vec::new();
        for d in &self.diff_ids {
            config.extend_from_slice(d.as_str().as_bytes());
        }
        Ok(ResolvedImage {
            layers: self
                .layers
                .iter()
                .zip(&self.diff_ids)
                .enumerate()
                .map(|(i, (l, d))| LayerDescriptor {
                    name: format!("memory layer {i}"),
                    digest: Some(Digest::of(l)),
                    size: Some(l.len() as u64),
                    compression: None,
                    diff_id: d.clone(),
                })
                .collect(),
            config_digest: Digest::of(&config),
            platform: None,
            run_config: Default::default(),
        })
    }

    fn open_layer(&self, layer: &LayerDescriptor) -> Result<Box<dyn Read + Send + '_>> {
        let i = self
            .layers
            .iter()
            .position(|l| Some(Digest::of(l)) == layer.digest)
            .ok_or_else(|| Error::Image {
                source_name: self.name(),
                reason: format!("no layer {}", layer.name),
            })?;
        Ok(Box::new(Cursor::new(&self.layers[i][..])))
    }
}
