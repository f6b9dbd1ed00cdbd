//! Writes a synthetic image of N GiB (4 MiB files plus 100,000 small ones)
//! to a path, for measuring throughput and peak memory of the ext4 writer:
//! `cargo run --release -p flattener --example ext4_rss -- 10 /dev/null`
//! under `/usr/bin/time -v`.

use std::collections::BTreeMap;
use std::io;

use flattener::ext4::{Ext4Options, write_image};
use flattener::tree::{DataExtent, FileData, FileId, Metadata, Node, NodeKind, Spool, Tree};

/// Spool bytes repeat a 1 MiB pattern (memcpy-speed reads, nothing stored).
struct PatternSpool(Vec<u8>);

impl Spool for PatternSpool {
    fn read_at(&self, _layer: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self.0.len() as u64;
        let mut done = 0;
        while done < buf.len() {
            let at = ((offset + done as u64) % n) as usize;
            let k = (buf.len() - done).min(self.0.len() - at);
            buf[done..done + k].copy_from_slice(&self.0[at..at + k]);
            done += k;
        }
        Ok(())
    }
}

fn add(t: &mut Tree, dir: flattener::tree::NodeId, name: String, size: u64, spool_at: &mut u64) {
    let id = FileId(t.files.len() as u32);
    t.files.push(FileData {
        layer: 0,
        size,
        extents: vec![DataExtent {
            file_offset: 0,
            len: size,
            spool_offset: *spool_at,
        }],
    });
    *spool_at += size;
    t.layers[0].push(id);
    let n = t.push_node(Node {
        meta: Metadata {
            mode: 0o644,
            ..Metadata::default()
        },
        kind: NodeKind::Regular { file: id },
    });
    if let NodeKind::Directory { entries } = &mut t.node_mut(dir).kind {
        entries.insert(name.into_bytes(), n);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let gib: u64 = args.get(1).map_or(Ok(10), |a| a.parse())?;
    let out = args.get(2).map_or("/dev/null", String::as_str);
    let mut t = Tree::new(Metadata {
        mode: 0o755,
        ..Metadata::default()
    });
    t.layers.push(Vec::new());
    let mut spool_at = 0;
    let big = t.push_node(Node {
        meta: Metadata {
            mode: 0o755,
            ..Metadata::default()
        },
        kind: NodeKind::Directory {
            entries: BTreeMap::new(),
        },
    });
    let small = t.push_node(Node {
        meta: Metadata {
            mode: 0o755,
            ..Metadata::default()
        },
        kind: NodeKind::Directory {
            entries: BTreeMap::new(),
        },
    });
    if let NodeKind::Directory { entries } = &mut t.node_mut(Tree::ROOT).kind {
        entries.insert(b"big".to_vec(), big);
        entries.insert(b"small".to_vec(), small);
    }
    for i in 0..gib * 256 {
        add(&mut t, big, format!("f{i}"), 4 << 20, &mut spool_at);
    }
    for i in 0..100_000 {
        add(&mut t, small, format!("s{i}"), 1000, &mut spool_at);
    }
    let spool = PatternSpool((0..1u32 << 20).map(|i| (i * 7 + (i >> 9)) as u8).collect());
    let start = std::time::Instant::now();
    let s = write_image(
        &t,
        &spool,
        &Ext4Options::new([1; 16], [2; 16]),
        std::fs::File::create(out)?,
    )?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} bytes ({} inodes) in {secs:.2} s: {:.0} MiB/s",
        s.size_bytes,
        s.inodes,
        s.size_bytes as f64 / secs / (1 << 20) as f64
    );
    Ok(())
}
