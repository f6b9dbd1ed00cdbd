//! Flattens OCI images into deterministic ext4 images (work in progress).

pub mod ext4;
pub mod tree;
