//! Throughput of reading one gzip layer into a tree (decompress, verify both
//! digests, parse, spool, apply) against plain gzip decompression of the
//! same blob in the same process (the floor).
//! Run: `cargo bench -p lode-flattener --bench layer_read`.

use std::io::{Read, Write};

use criterion::{Criterion, Throughput, criterion_main};
use flattener::oci::{Digest, ImageSource, LayerDescriptor, Platform, ResolvedImage};
use flattener::{FlattenOptions, build_tree};

/// One gzip layer in memory.
struct GzLayer {
    blob: Vec<u8>,
    diff_id: Digest,
}

impl ImageSource for GzLayer {
    fn name(&self) -> String {
        "bench".into()
    }
    fn resolve(&self, _: &Platform) -> flattener::Result<ResolvedImage> {
        Ok(ResolvedImage::new(
            vec![LayerDescriptor {
                name: "layer".into(),
                digest: Some(Digest::of(&self.blob)),
                size: Some(self.blob.len() as u64),
                compression: None,
                diff_id: self.diff_id.clone(),
            }],
            Digest::of(b"{}"),
        ))
    }
    fn open_layer(&self, _: &LayerDescriptor) -> flattener::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(&self.blob[..]))
    }
}

fn header(name: &str, size: usize, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"14500000000");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// ~64 MiB of compressible, varied file data in 4,000 files.
fn layer_tar() -> Vec<u8> {
    let mut t = Vec::new();
    let mut state = 0x12345678u32;
    for d in 0..40 {
        t.extend_from_slice(&header(&format!("d{d}/"), 0, b'5'));
        for f in 0..100 {
            let size = 1000 + (f * 331) % 32000;
            t.extend_from_slice(&header(&format!("d{d}/f{f}"), size, b'0'));
            let start = t.len();
            for i in 0..size {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                // Text-like bytes so gzip has work to do.
                t.push(b"abcdefgh ijklmnop\n"[(state >> 16) as usize % 18] ^ (i as u8 & 1));
            }
            t.resize(start + size.div_ceil(512) * 512, 0);
        }
    }
    t.extend_from_slice(&[0u8; 1024]);
    t
}

fn bench(c: &mut Criterion) {
    let tar = layer_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).unwrap();
    let src = GzLayer {
        blob: gz.finish().unwrap(),
        diff_id: Digest::of(&tar),
    };
    let spool = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("layer_read");
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.sample_size(10);
    g.bench_function("gunzip only (floor)", |b| {
        b.iter(|| {
            let mut d = flate2::read::GzDecoder::new(&src.blob[..]);
            std::io::copy(&mut d, &mut std::io::sink()).unwrap()
        })
    });
    g.bench_function("build_tree (verify, parse, spool, apply)", |b| {
        b.iter(|| build_tree(&src, &FlattenOptions::default(), spool.path()).unwrap())
    });
    g.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
}

criterion_main!(benches);
