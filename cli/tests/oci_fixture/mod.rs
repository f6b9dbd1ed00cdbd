//! Shared by the CLI tests: a scratch store, keyring and salt, tiny
//! OCI layouts built with the system `tar`, and a runner for the real `lode`.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub const LODE: &str = env!("CARGO_BIN_EXE_lode");

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A store directory, keyring and salt file in a temporary directory.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let env = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        env.ok(&["keyring", "new", env.keyring().to_str().unwrap()]);
        env.ok(&["salt", "new", env.salts().to_str().unwrap()]);
        env
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn keyring(&self) -> PathBuf {
        self.dir.path().join("keys/keyring")
    }
    pub fn salts(&self) -> PathBuf {
        self.dir.path().join("keys/salts")
    }
    /// `lode` with this environment's store, KMS and salts.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(LODE);
        c.env("LODE_STORE", format!("file://{}", self.store().display()))
            .env("LODE_KMS", format!("local:{}", self.keyring().display()))
            .env("LODE_SALTS", self.salts())
            .env("XDG_CONFIG_HOME", self.dir.path())
            .env_remove("LODE_CONFIG");
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("running lode")
    }
    /// Runs `lode ARGS`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lode {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("lode {args:?}: {e}: {out}"))
    }
    pub fn chunk_path(&self, hex: &str) -> PathBuf {
        self.store().join("chunks").join(hex)
    }
    pub fn manifest_path(&self, name: &str) -> PathBuf {
        self.store().join("manifests").join(name)
    }
    /// Chunk files in the store.
    pub fn chunk_files(&self) -> Vec<String> {
        let dir = self.store().join("chunks");
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
    /// The present chunk names of manifest `name`, decoded without a key.
    pub fn manifest_chunks(&self, name: &str) -> Vec<String> {
        let bytes = std::fs::read(self.manifest_path(name)).expect("manifest file");
        let m = manifest::SealedManifest::decode(&bytes).expect("manifest decodes");
        m.names().flatten().map(|n| n.to_hex()).collect()
    }
    /// Stored chunk names that are not in `exclude`.
    pub fn stored_chunks_except(&self, exclude: &std::collections::HashSet<String>) -> Vec<String> {
        self.chunk_files()
            .into_iter()
            .filter(|c| !exclude.contains(c))
            .collect()
    }
    /// Panics unless every chunk of `name` is stored and its bytes hash to its name.
    pub fn assert_complete(&self, name: &str) {
        for hex in self.manifest_chunks(name) {
            let bytes = std::fs::read(self.chunk_path(&hex))
                .unwrap_or_else(|e| panic!("chunk {hex} of {name} is missing: {e}"));
            assert_eq!(sha256_hex(&bytes), hex, "chunk {hex} of {name} is corrupt");
        }
    }
    /// Reads image `name` back as a worker would (KMS-open the manifest,
    /// fetch, verify and decrypt every chunk) and returns its SHA-256.
    pub fn pull_sha256(&self, name: &str) -> String {
        let bytes = std::fs::read(self.manifest_path(name)).expect("manifest file");
        let sealed = manifest::SealedManifest::decode(&bytes).expect("manifest decodes");
        let provider = chunk_core::provider_by_name("aws-lc-rs").expect("aws-lc-rs");
        let kms = kms_envelope::LocalKms::open(provider, self.keyring()).expect("keyring");
        let m = kms_envelope::block_on(sealed.open_with_context(
            provider,
            &kms,
            &manifest::image_context(name),
        ))
        .expect("manifest opens");
        let mut h = Sha256::new();
        let mut offset = 0u64;
        for c in &m.chunks {
            let len = u64::from(m.chunk_size).min(m.image_size - offset);
            match c {
                None => h.update(vec![0u8; len as usize]),
                Some(r) => {
                    let ct = std::fs::read(self.chunk_path(&r.name.to_hex()))
                        .unwrap_or_else(|e| panic!("chunk {} of {name}: {e}", r.name.to_hex()));
                    let plain = chunk_core::open(provider, r, &ct).expect("chunk opens");
                    assert_eq!(plain.len() as u64, len, "chunk length");
                    h.update(&plain);
                }
            }
            offset += len;
        }
        assert_eq!(offset, m.image_size);
        hex::encode(h.finalize())
    }
    /// Sets the mtime of `path` to `secs` seconds ago.
    pub fn age(&self, path: &Path, secs: u64) {
        let st = Command::new("touch")
            .arg("-m")
            .arg("-d")
            .arg(format!("@{}", now_secs() - secs))
            .arg(path)
            .status()
            .expect("touch");
        assert!(st.success());
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Pseudo-random bytes from a seed (incompressible, distinct per seed).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Writes an OCI layout at `dir` with one uncompressed tar layer per entry of
/// `layers` (each a list of (path, contents)), tagged `t`; returns `oci:DIR:t`.
pub fn oci_image(dir: &Path, layers: &[Vec<(&str, Vec<u8>)>]) -> String {
    oci_image_with_config(dir, layers, None)
}

/// Like [`oci_image`], with `run_config` (a JSON object) as the image
/// config's `config` (entrypoint, cmd, env, …).
pub fn oci_image_with_config(
    dir: &Path,
    layers: &[Vec<(&str, Vec<u8>)>],
    run_config: Option<&str>,
) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8]| -> (String, usize) {
        let d = sha256_hex(bytes);
        std::fs::write(blobs.join(&d), bytes).unwrap();
        (d, bytes.len())
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, files) in layers.iter().enumerate() {
        let root = dir.join(format!("layer-src-{i}"));
        for (path, data) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
        let tar = dir.join(format!("layer-{i}.tar"));
        let st = Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@1748736000",
                "--owner=0",
                "--group=0",
            ])
            .args(["--numeric-owner", "--format=gnu", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("running tar");
        assert!(st.success(), "tar failed");
        let bytes = std::fs::read(&tar).unwrap();
        std::fs::remove_file(&tar).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        let (d, size) = blob(&bytes);
        layer_descs.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{d}","size":{size}}}"#
        ));
        diff_ids.push(format!("\"sha256:{d}\""));
    }
    let run_config = run_config
        .map(|c| format!(r#""config":{c},"#))
        .unwrap_or_default();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux",{run_config}"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let (cd, cs) = blob(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{cd}","size":{cs}}},"layers":[{}]}}"#,
        layer_descs.join(",")
    );
    let (md, ms) = blob(manifest.as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{md}","size":{ms},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#
        ),
    )
    .unwrap();
    format!("oci:{}:t", dir.display())
}

/// An image: a shared base layer (from `base_seed`) plus a top layer of its own.
pub fn two_layer_image(dir: &Path, base_seed: u64, top_seed: u64) -> String {
    oci_image(
        dir,
        &[
            vec![("base/blob", noise(base_seed, 3 << 20))],
            vec![("app/blob", noise(top_seed, 1 << 20))],
        ],
    )
}

/// `cond`, or a skip: prints why and returns false, unless
/// `LODE_REQUIRE_SERVERS=1` (CI), where a missing tool or privilege fails.
pub fn require(cond: bool, why: &str) -> bool {
    if !cond {
        assert!(
            std::env::var("LODE_REQUIRE_SERVERS").as_deref() != Ok("1"),
            "{why} and LODE_REQUIRE_SERVERS=1"
        );
        println!("skipped: {why}");
    }
    cond
}

/// Running as root.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Root with FUSE and loop devices (a lazy ext4 mount), or a skip.
pub fn can_mount() -> bool {
    require(
        is_root() && Path::new("/dev/fuse").exists() && Path::new("/dev/loop-control").exists(),
        "needs root, /dev/fuse and loop devices",
    )
}

/// The 2-layer busybox image of `examples/make-busybox-image.sh`, built in
/// `dir` (its `oci:DIR:TAG` reference), or a skip without busybox-static.
pub fn busybox_image(dir: &Path) -> Option<String> {
    if !require(
        Path::new("/bin/busybox").exists(),
        "needs busybox-static (apt-get install busybox-static)",
    ) {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/make-busybox-image.sh");
    let out = Command::new(script)
        .arg(dir)
        .output()
        .expect("running make-busybox-image.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Regular files at any depth under `dir` (the disk tier fans out into
/// subdirectories), not counting unfinished writes in `tmp/`; 0 when `dir`
/// is missing.
pub fn files_in(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            // A disk cache's tmp/ holds writes not yet renamed into place.
            Ok(t) if t.is_dir() && e.file_name() == "tmp" => 0,
            Ok(t) if t.is_dir() => files_in(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}
