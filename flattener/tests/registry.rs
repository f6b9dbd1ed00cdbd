//! `docker://` against a real registry on loopback: Debian's
//! `docker-registry` (distribution), loaded by `skopeo copy`.
//!
//! Needs `docker-registry`, `skopeo` (and `htpasswd` for the auth test) and
//! the corpus (`LODE_CORPUS`); without them the tests say they were skipped,
//! unless `LODE_REQUIRE_SERVERS=1`.
#![cfg(feature = "registry")]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::fs::required;
use flattener::{Error, FlattenOptions, ImageRef, RegistryOptions, flatten};

fn skip(why: &str) -> bool {
    assert!(!required(), "{why} (LODE_REQUIRE_SERVERS=1)");
    println!("skipped: {why}");
    true
}

fn tool(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    found || !skip(&format!("{name} not installed"))
}

fn corpus() -> Option<PathBuf> {
    match std::env::var_os("LODE_CORPUS") {
        Some(c) => Some(PathBuf::from(c).join("oci")),
        None => {
            skip("LODE_CORPUS not set");
            None
        }
    }
}

/// A `docker-registry serve` on a random loopback port, killed on drop.
struct RegistryServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RegistryServer {
    /// Starts a registry; with `htpasswd`, basic auth with that user and password.
    fn start(htpasswd: Option<(&str, &str)>) -> Option<Self> {
        if !tool("docker-registry") || !tool("skopeo") {
            return None;
        }
        if htpasswd.is_some() && !tool("htpasswd") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = htpasswd {
            let file = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(&file, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lode-test\n    path: {}\n",
                file.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of a corpus image into `repo:tag`.
    fn load(&self, corpus: &Path, image: &str, repo_tag: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        let out = cmd
            .arg(format!("oci:{}:{image}", corpus.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plain_http() -> RegistryOptions {
    RegistryOptions::default().with_tls_verify(false)
}

fn flatten_to(reference: &str, registry: RegistryOptions, out: &Path) -> flattener::Result<String> {
    let r = ImageRef::parse(reference)?;
    let opts = FlattenOptions::default().with_registry(registry);
    Ok(flatten(&r, &opts, out)?.sha256)
}

#[test]
fn registry_image_equals_layout_image_byte_for_byte() {
    let Some(corpus) = corpus() else { return };
    let Some(server) = RegistryServer::start(None) else {
        return;
    };
    server.load(&corpus, "python-app", "python-app:latest", None);
    let dir = tempfile::tempdir().unwrap();
    let from_layout = flatten_to(
        &format!("oci:{}:python-app", corpus.display()),
        RegistryOptions::default(),
        &dir.path().join("layout.ext4"),
    )
    .unwrap();
    let by_tag = dir.path().join("registry.ext4");
    let from_registry = flatten_to(
        &format!("docker://{}/python-app:latest", server.host()),
        plain_http(),
        &by_tag,
    )
    .unwrap();
    assert_eq!(
        from_registry, from_layout,
        "registry and layout images differ"
    );
    assert_eq!(
        common::sha256_hex(&std::fs::read(&by_tag).unwrap()),
        from_layout
    );

    // The same image by manifest digest.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus.join("index.json")).unwrap()).unwrap();
    let digest = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "python-app")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_digest = flatten_to(
        &format!("docker://{}/python-app@{digest}", server.host()),
        plain_http(),
        &dir.path().join("digest.ext4"),
    )
    .unwrap();
    assert_eq!(by_digest, from_layout);
}

#[test]
fn unknown_tag_and_repository_are_clear_errors() {
    let Some(corpus) = corpus() else { return };
    let Some(server) = RegistryServer::start(None) else {
        return;
    };
    server.load(&corpus, "debian-base", "base:v1", None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ext4");
    for (reference, wanted) in [
        (
            format!("docker://{}/base:v2", server.host()),
            "no image tagged \"v2\" in repository base",
        ),
        (
            format!("docker://{}/nosuchrepo:v1", server.host()),
            "no image tagged \"v1\" in repository nosuchrepo",
        ),
    ] {
        let e = flatten_to(&reference, plain_http(), &out).unwrap_err();
        assert!(matches!(e, Error::Registry { .. }), "{e:?}");
        let text = common::chain(&e);
        assert!(text.starts_with(&reference), "{text}");
        assert!(text.contains(wanted), "{text}");
        assert!(!out.exists());
    }
    // HTTPS against a plain-HTTP registry: an error, not a hang.
    let e = flatten_to(
        &format!("docker://{}/base:v1", server.host()),
        RegistryOptions::default(),
        &out,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e:?}");
}

#[test]
fn basic_auth_reads_the_credentials_file() {
    let Some(corpus) = corpus() else { return };
    let Some(server) = RegistryServer::start(Some(("lode", "p4ss:word"))) else {
        return;
    };
    server.load(&corpus, "debian-base", "base:v1", Some("lode:p4ss:word"));
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("docker://{}/base:v1", server.host());
    let expected = flatten_to(
        &format!("oci:{}:debian-base", corpus.display()),
        RegistryOptions::default(),
        &dir.path().join("layout.ext4"),
    )
    .unwrap();

    // Without credentials: refused, and the message says so.
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, br#"{"auths":{}}"#).unwrap();
    let e = flatten_to(
        &reference,
        plain_http().with_auth_file(empty),
        &dir.path().join("x.ext4"),
    )
    .unwrap_err();
    let text = common::chain(&e);
    assert!(text.to_lowercase().contains("auth"), "{text}");

    // With a podman/skopeo auth.json.
    let auth = dir.path().join("auth.json");
    let token = base64::engine::general_purpose::STANDARD.encode("lode:p4ss:word");
    std::fs::write(
        &auth,
        serde_json::to_vec(&serde_json::json!({"auths": {server.host(): {"auth": token}}}))
            .unwrap(),
    )
    .unwrap();
    let got = flatten_to(
        &reference,
        plain_http().with_auth_file(auth),
        &dir.path().join("auth.ext4"),
    )
    .unwrap();
    assert_eq!(got, expected);
}

#[test]
fn multi_platform_index_is_picked_with_platform() {
    let Some(server) = RegistryServer::start(None) else {
        return;
    };
    // A layout whose tag names an image index of an amd64 and an arm64 image.
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("multi");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let amd = common::add_image(
        &layout,
        &[(
            common::tar(&[common::E::file("amd", b"x86")]),
            common::Comp::Gzip,
        )],
        "amd64",
    );
    let arm = common::add_image(
        &layout,
        &[(
            common::tar(&[common::E::file("arm", b"aarch64")]),
            common::Comp::Gzip,
        )],
        "arm64",
    );
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd, arm],
    }))
    .unwrap();
    let idig = common::put_blob(&layout, &index);
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": idig, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }]}))
        .unwrap(),
    )
    .unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", layout.display()))
        .arg(format!("docker://{}/multi:latest", server.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy --all: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let remote = ImageRef::parse(&format!("docker://{}/multi:latest", server.host())).unwrap();
    let local = ImageRef::parse(&format!("oci:{}:multi", layout.display())).unwrap();
    let flat = |r: &ImageRef, platform: Option<&str>, name: &str| {
        let mut opts = FlattenOptions::default().with_registry(plain_http());
        if let Some(p) = platform {
            opts = opts.with_platform(flattener::Platform::parse(p).unwrap());
        }
        flatten(r, &opts, &dir.path().join(name)).map(|s| s.sha256)
    };
    let arm_remote = flat(&remote, Some("linux/arm64"), "a").unwrap();
    let arm_local = flat(&local, Some("linux/arm64"), "b").unwrap();
    assert_eq!(arm_remote, arm_local);
    // No --platform: linux/amd64, as from the layout.
    let amd_remote = flat(&remote, None, "c").unwrap();
    assert_eq!(amd_remote, flat(&local, None, "d").unwrap());
    assert_ne!(amd_remote, arm_remote);
    let e = flat(&remote, Some("linux/s390x"), "e").unwrap_err();
    assert!(
        common::chain(&e).contains("no manifest for platform linux/s390x"),
        "{e}"
    );
}

/// A TCP proxy to `upstream` that cuts the first connection whose answer
/// passes `cut_after` bytes (once), and notes whether a client asked for
/// a range that does not start at 0 (a resumed blob).
struct CuttingProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    resumed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: u16, cut_after: usize) -> Self {
        use std::io::{Read as _, Write as _};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let resumed = Arc::new(AtomicBool::new(false));
        let (cut2, resumed2) = (cut.clone(), resumed.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let resumed = resumed2.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                        if text.contains("range: bytes=") && !text.contains("range: bytes=0-") {
                            resumed.store(true, Ordering::SeqCst);
                        }
                        if s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let cut = cut2.clone();
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    let mut sent = 0;
                    while let Ok(n) = s_read.read(&mut buf) {
                        if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                        if sent > cut_after && !cut.swap(true, Ordering::SeqCst) {
                            let _ = c_write.shutdown(std::net::Shutdown::Both);
                            let _ = s_read.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { port, cut, resumed }
    }
}

#[test]
fn a_blob_cut_mid_stream_is_resumed_and_still_verified() {
    use std::sync::atomic::Ordering;
    let Some(corpus) = corpus() else { return };
    let Some(server) = RegistryServer::start(None) else {
        return;
    };
    server.load(&corpus, "debian-base", "base:v1", None);
    let proxy = CuttingProxy::start(server.port, 1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let expected = flatten_to(
        &format!("oci:{}:debian-base", corpus.display()),
        RegistryOptions::default(),
        &dir.path().join("layout.ext4"),
    )
    .unwrap();
    let got = flatten_to(
        &format!("docker://127.0.0.1:{}/base:v1", proxy.port),
        plain_http(),
        &dir.path().join("proxied.ext4"),
    )
    .unwrap();
    assert!(
        proxy.cut.load(Ordering::SeqCst),
        "the proxy never cut a connection"
    );
    assert!(
        proxy.resumed.load(Ordering::SeqCst),
        "the cut blob was not resumed by a range request"
    );
    assert_eq!(got, expected);
}
