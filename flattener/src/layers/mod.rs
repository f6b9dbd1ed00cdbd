//! Layers: reading them (decompress, verify, parse, spool) and applying
//! them to a [`Tree`](crate::tree::Tree) with the OCI / containerd rules.
//!
//! Reading is parallel (one layer per worker, decompression on its own
//! thread; [`read`]) and turns each blob into normalized entries and a spool
//! of file contents ([`parse`], [`entry`]); applying is sequential and touches
//! metadata only ([`apply`], where the rules are).

mod apply;
mod entry;
mod parse;
mod read;

pub(crate) use apply::Builder;
pub use parse::FileSpool;
pub(crate) use read::{Counter, read_layers};
