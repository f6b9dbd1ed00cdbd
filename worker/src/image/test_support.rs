//! Helpers of the `image` module's tests.

use std::sync::Arc;

use chunk_core::{ChunkName, Salt};

use super::{ChunkTable, LazyImage, LazyImageOptions};
use crate::source::{MemorySource, TierId};

/// Chunk size of the test images: one 4 KiB block per chunk.
pub(super) const CS: u32 = 4096;

/// Random image whose chunks listed in `holes` are all zero.
pub(super) fn image_bytes(size: usize, holes: &[u64], seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
    for &h in holes {
        let start = h as usize * CS as usize;
        let end = (start + CS as usize).min(size);
        data[start..end].fill(0);
    }
    data
}

/// Seals `data` in chunks of [`CS`] into `source`.
pub(super) fn seal_into(data: &[u8], source: &MemorySource) -> ChunkTable {
    source
        .insert_image(data, CS, &Salt::new(1, [7; 32]))
        .expect("valid chunk size")
}

/// A random image of `size` bytes (holes at `holes`) served from a
/// [`MemorySource`] answering as `tier`.
pub(super) fn setup(
    size: usize,
    holes: &[u64],
    tier: TierId,
    opts: LazyImageOptions,
) -> (Vec<u8>, Arc<MemorySource>, LazyImage) {
    let data = image_bytes(size, holes, 7);
    let source = Arc::new(MemorySource::new(tier));
    let table = seal_into(&data, &source);
    let image = LazyImage::new(table, source.clone(), opts).expect("valid table");
    (data, source, image)
}

/// The name of chunk `index` (not a hole).
pub(super) fn name_of(image: &LazyImage, index: u64) -> ChunkName {
    image.chunk_name(index).expect("not a hole")
}

/// Default options without readahead.
pub(super) fn no_readahead() -> LazyImageOptions {
    LazyImageOptions::default().readahead_chunks(0)
}
