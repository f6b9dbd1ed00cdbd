//! Fixed-size chunking and convergent encryption of chunks (work in progress).

mod error;
mod types;

pub use error::{Error, Result};
pub use types::{ChunkKey, ChunkName, ChunkRef, Salt};
