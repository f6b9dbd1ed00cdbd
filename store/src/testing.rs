//! Helpers for tests and examples (feature `testing`): a tiny OCI image
//! written in pure Rust, no `tar` or registry needed.

use std::path::Path;

use chunk_core::CryptoProvider;

use crate::error::{Error, Result};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(chunk_core::RustCrypto.sha256(bytes))
}

/// One 512-byte USTAR header.
fn ustar_header(path: &str, size: u64, kind: u8, mode: u32) -> Result<[u8; 512]> {
    let mut h = [0u8; 512];
    if path.len() > 100 {
        return Err(Error::Pipeline {
            stage: "flatten",
            problem: format!("test image path {path:?} is longer than 100 bytes"),
        });
    }
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    h[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 1_748_736_000);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// An uncompressed tar of `files` (paths relative, `/`-separated; parent
/// directories are added), in the order given.
pub fn tar_of(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (path, data) in files {
        let mut parent = String::new();
        for part in path.split('/').take(path.split('/').count() - 1) {
            parent.push_str(part);
            parent.push('/');
            if dirs.insert(parent.clone()) {
                out.extend_from_slice(&ustar_header(&parent, 0, b'5', 0o755)?);
            }
        }
        out.extend_from_slice(&ustar_header(path, data.len() as u64, b'0', 0o644)?);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// Writes an OCI layout at `dir` with one uncompressed layer per entry of
/// `layers`, tagged `t`, and returns its reference `oci:DIR:t`.
pub fn oci_image(dir: &Path, layers: &[&[(&str, &[u8])]]) -> Result<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::file("creating", &blobs, e))?;
    let blob = |bytes: &[u8]| -> Result<(String, usize)> {
        let d = sha256_hex(bytes);
        let path = blobs.join(&d);
        std::fs::write(&path, bytes).map_err(|e| Error::file("writing", &path, e))?;
        Ok((d, bytes.len()))
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for files in layers {
        let (d, size) = blob(&tar_of(files)?)?;
        descs.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{d}","size":{size}}}"#
        ));
        diff_ids.push(format!("\"sha256:{d}\""));
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let (cd, cs) = blob(config.as_bytes())?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{cd}","size":{cs}}},"layers":[{}]}}"#,
        descs.join(",")
    );
    let (md, ms) = blob(manifest.as_bytes())?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::file("writing", &path, e))
    };
    write("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#.into())?;
    write(
        "index.json",
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{md}","size":{ms},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#
        ),
    )?;
    Ok(format!("oci:{}:t", dir.display()))
}

/// A new local keyring `DIR/keyring` with the key `default`, opened with
/// the RustCrypto backend.
pub fn local_kms(dir: &Path) -> Result<std::sync::Arc<kms_envelope::LocalKms>> {
    let path = dir.join("keyring");
    let crypto = &chunk_core::RustCrypto;
    let err = |e: kms_envelope::Error| Error::Kms {
        spec: format!("local:{}", path.display()),
        source: e.into(),
    };
    kms_envelope::new_keyring_with_key(crypto, &path, "default").map_err(err)?;
    Ok(std::sync::Arc::new(
        kms_envelope::LocalKms::open(crypto, &path).map_err(err)?,
    ))
}
