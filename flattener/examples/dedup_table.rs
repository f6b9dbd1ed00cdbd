//! Measures how well base-layer chunks survive: flattens the corpus images
//! and prints, for each image, the share of debian-base's non-zero 512 KiB
//! chunks that also occur in it, with deleted data zeroed and kept.
//!
//! `cargo run --release -p flattener --example dedup_table -- /work/shared/corpus`

use std::collections::HashSet;
use std::io::{self, Write};

use flattener::ext4::DeletedData;
use flattener::{FlattenOptions, ImageRef, flatten_to_writer};
use sha2::{Digest as _, Sha256};

const CHUNK: usize = 512 * 1024;

/// Collects the SHA-256 of every non-zero chunk written through it.
struct Chunker {
    buf: Vec<u8>,
    chunks: HashSet<[u8; 32]>,
    total: u64,
    zero: u64,
}

impl Chunker {
    fn cut(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        self.total += 1;
        if self.buf.iter().all(|&b| b == 0) {
            self.zero += 1;
        } else {
            self.chunks.insert(Sha256::digest(&self.buf).into());
        }
        self.buf.clear();
    }
}

impl Write for Chunker {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let k = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..k]);
            data = &data[k..];
            if self.buf.len() == CHUNK {
                self.cut();
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared/corpus".into());
    let images = [
        "debian-base",
        "python",
        "python-app",
        "python-numpy",
        "tools",
    ];
    println!(
        "| deleted data | image | image MiB | chunks | zero | non-zero | debian-base chunks also here | python chunks also here |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (mode, dd) in [("Zero", DeletedData::Zero), ("Keep", DeletedData::Keep)] {
        let mut sets: Vec<(String, Chunker, u64)> = Vec::new();
        for tag in images {
            let image = ImageRef::parse(&format!("oci:{corpus}/oci:{tag}"))?;
            let mut c = Chunker {
                buf: Vec::with_capacity(CHUNK),
                chunks: HashSet::new(),
                total: 0,
                zero: 0,
            };
            let s = flatten_to_writer(
                &image,
                &FlattenOptions::default().with_deleted_data(dd),
                &mut c,
            )?;
            c.cut();
            sets.push((tag.to_string(), c, s.size));
        }
        let base = &sets[0].1.chunks;
        let python = &sets[1].1.chunks;
        for (tag, c, size) in &sets {
            let share = |of: &HashSet<[u8; 32]>| {
                let n = of.iter().filter(|h| c.chunks.contains(*h)).count();
                format!(
                    "{:.1}% ({n} of {})",
                    100.0 * n as f64 / of.len() as f64,
                    of.len()
                )
            };
            println!(
                "| {mode} | {tag} | {:.1} | {} | {} | {} | {} | {} |",
                *size as f64 / (1 << 20) as f64,
                c.total,
                c.zero,
                c.chunks.len(),
                share(base),
                share(python)
            );
        }
        let mut all = HashSet::new();
        let mut refs = 0;
        for (_, c, _) in &sets {
            refs += c.chunks.len();
            all.extend(c.chunks.iter().copied());
        }
        println!(
            "| {mode} | **all five** | | | | {refs} refs / {} unique | dedup {:.2}x | |",
            all.len(),
            refs as f64 / all.len() as f64
        );
    }
    Ok(())
}
