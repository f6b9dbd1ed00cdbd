//! Writes a large synthetic OCI layout for memory and speed checks:
//! `make_big_image DIR GIB` makes an image of about GIB GiB in 4 plain-tar
//! layers: 200,000 small files in 2,000 directories, plus large files of
//! pseudo-random bytes. Used by `bench/flatten.sh` with BIG=GIB.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

#[path = "../tests/common/mod.rs"]
#[allow(missing_docs)]
mod common;

use common::{E, header};
use sha2::{Digest as _, Sha256};

struct Layer {
    w: BufWriter<File>,
    h: Sha256,
    n: u64,
}

impl Layer {
    fn put(&mut self, b: &[u8]) {
        self.w.write_all(b).unwrap();
        self.h.update(b);
        self.n += b.len() as u64;
    }
    fn entry(&mut self, e: &E, size: u64, mut fill: impl FnMut(&mut [u8])) {
        self.put(&header(&e.path, e.typeflag, size, e, false));
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            fill(&mut buf[..k]);
            self.put(&buf[..k]);
            left -= k as u64;
        }
        let pad = ((512 - size % 512) % 512) as usize;
        self.put(&vec![0u8; pad]);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(&args[1]);
    let gib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut rand_fill = move |b: &mut [u8]| {
        for c in b.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = state.to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    };
    let per_layer = (gib << 30) / 4;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in 0..4u64 {
        let tmp = dir.join("layer.tmp");
        let mut w = Layer {
            w: BufWriter::with_capacity(1 << 20, File::create(&tmp).unwrap()),
            h: Sha256::new(),
            n: 0,
        };
        if l == 0 {
            for d in 0..2000 {
                w.entry(&E::dir(&format!("small/{d:04}")), 0, |_| {});
                for f in 0..100 {
                    let e = E::file(&format!("small/{d:04}/f{f:03}"), b"");
                    w.entry(&e, 1000 + (f * 37) as u64, &mut rand_fill);
                }
            }
        }
        let mut i = 0;
        while w.n < per_layer {
            let e = E::file(&format!("big{l}/file{i:05}"), b"");
            w.entry(&e, 256 << 20, &mut rand_fill);
            i += 1;
        }
        w.put(&[0u8; 1024]);
        w.w.flush().unwrap();
        let hex = hex::encode(w.h.finalize());
        std::fs::rename(&tmp, blobs.join(&hex)).unwrap();
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{hex}"), "size": w.n}));
        diff_ids.push(format!("sha256:{hex}"));
        eprintln!("layer {l}: {} MiB", w.n >> 20);
    }
    let put = |b: Vec<u8>| {
        let hex = hex::encode(Sha256::digest(&b));
        std::fs::write(blobs.join(&hex), &b).unwrap();
        (format!("sha256:{hex}"), b.len())
    };
    let (cd, cs) = put(serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})).unwrap());
    let (md, ms) = put(serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs}, "layers": descs})).unwrap());
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "big"}}]})).unwrap()).unwrap();
}
