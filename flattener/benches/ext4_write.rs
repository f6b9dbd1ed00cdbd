//! Throughput of the ext4 writer against a plain copy of the same file data
//! through the same spool and buffer size (the floor: the writer cannot beat
//! copying its data). Run: `cargo bench -p lode-flattener --bench ext4_write`.

use std::collections::BTreeMap;
use std::io::{self, Seek, SeekFrom, Write};

use criterion::{Criterion, Throughput, criterion_main};
use flattener::ext4::{Ext4Options, write_image};
use flattener::tree::{DataExtent, FileData, FileId, Metadata, Node, NodeKind, Spool, Tree};

/// A spool whose bytes repeat a 1 MiB pattern (memcpy-speed reads).
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

/// Discards everything, counting bytes.
struct Sink(u64);
impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Seek for Sink {
    fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
        Ok(self.0)
    }
}

/// A tree of `files` files of `size` bytes in directories of 1000.
fn tree(files: u32, size: u64) -> Tree {
    let mut t = Tree::new(Metadata {
        mode: 0o755,
        ..Metadata::default()
    });
    t.layers.push(Vec::new());
    let mut dir = Tree::ROOT;
    for i in 0..files {
        if i % 1000 == 0 {
            let d = t.push_node(Node {
                meta: Metadata {
                    mode: 0o755,
                    ..Metadata::default()
                },
                kind: NodeKind::Directory {
                    entries: BTreeMap::new(),
                },
            });
            if let NodeKind::Directory { entries } = &mut t.node_mut(Tree::ROOT).kind {
                entries.insert(format!("d{}", i / 1000).into_bytes(), d);
            }
            dir = d;
        }
        let id = FileId(t.files.len() as u32);
        t.files.push(FileData {
            layer: 0,
            size,
            extents: vec![DataExtent {
                file_offset: 0,
                len: size,
                spool_offset: u64::from(i) * size,
            }],
        });
        t.layers[0].push(id);
        let n = t.push_node(Node {
            meta: Metadata {
                mode: 0o644,
                ..Metadata::default()
            },
            kind: NodeKind::Regular { file: id },
        });
        if let NodeKind::Directory { entries } = &mut t.node_mut(dir).kind {
            entries.insert(format!("file-{i}").into_bytes(), n);
        }
    }
    t
}

fn copy_baseline(t: &Tree, spool: &dyn Spool, out: &mut impl Write) {
    let mut buf = vec![0u8; 1 << 20];
    for f in &t.files {
        for e in &f.extents {
            let mut off = 0;
            while off < e.len {
                let n = (e.len - off).min(buf.len() as u64) as usize;
                spool
                    .read_at(0, e.spool_offset + off, &mut buf[..n])
                    .unwrap();
                out.write_all(&buf[..n]).unwrap();
                off += n as u64;
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let spool = PatternSpool((0..1u32 << 20).map(|i| (i * 7 + (i >> 9)) as u8).collect());
    let opts = Ext4Options::new([1; 16], [2; 16]);
    for (name, files, size) in [
        ("large-files", 64u32, 4u64 << 20),
        ("small-files", 50_000, 5000),
    ] {
        let t = tree(files, size);
        let mut g = c.benchmark_group(name);
        g.sample_size(10);
        g.throughput(Throughput::Bytes(u64::from(files) * size));
        g.bench_function("baseline-copy", |b| {
            b.iter(|| copy_baseline(&t, &spool, &mut Sink(0)))
        });
        g.bench_function("ext4-write-image", |b| {
            b.iter(|| write_image(&t, &spool, &opts, Sink(0)).unwrap())
        });
        g.finish();
    }
}

mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::bench);
}

criterion_main!(group::benches);
