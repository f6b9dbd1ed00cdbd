//! `lode push docker://…` and `lode flatten docker://…` against Debian's
//! `docker-registry` on loopback with basic auth, credentials read from
//! `REGISTRY_AUTH_FILE` as podman and skopeo read them; loaded with a
//! corpus image by `skopeo copy`. Needs `docker-registry`, `skopeo`,
//! `htpasswd` and `LODE_CORPUS`; else skipped (failed under
//! `LODE_REQUIRE_SERVERS=1`).

mod oci_fixture;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_fixture::Env;

fn skip(why: &str) {
    assert!(
        std::env::var("LODE_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "{why} (LODE_REQUIRE_SERVERS=1)"
    );
    println!("skipped: {why}");
}

struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry with basic auth for `user:password`, on a random loopback port.
fn start_registry(user: &str, password: &str) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .unwrap();
    assert!(out.status.success());
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: lode-test\n    path: {}\n",
            dir.path().join("data").display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = Registry {
        child,
        host: format!("127.0.0.1:{port}"),
        _dir: dir,
    };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "registry did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    reg
}

#[test]
fn push_and_flatten_from_a_registry_equal_the_layout() {
    let Some(corpus) = std::env::var_os("LODE_CORPUS") else {
        return skip("LODE_CORPUS not set");
    };
    let corpus = PathBuf::from(corpus).join("oci");
    for tool in ["docker-registry", "skopeo", "htpasswd"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return skip(&format!("{tool} not installed"));
        }
    }
    let reg = start_registry("lode", "s3cret");
    let st = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            "lode:s3cret",
        ])
        .arg(format!("oci:{}:debian-base", corpus.display()))
        .arg(format!("docker://{}/base:v1", reg.host))
        .status()
        .unwrap();
    assert!(st.success(), "skopeo copy");

    let env = Env::new();
    let auth = env.dir.path().join("auth.json");
    // base64("lode:s3cret")
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"bG9kZTpzM2NyZXQ="}}}}}}"#,
            reg.host
        ),
    )
    .unwrap();
    let remote = format!("docker://{}/base:v1", reg.host);
    let layout = format!("oci:{}:debian-base", corpus.display());

    let run = |args: &[&str]| {
        env.cmd()
            .args(args)
            .env("REGISTRY_AUTH_FILE", &auth)
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "lode {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // push: the same chunks and the same image bytes as from the layout.
    ok(&[
        "push",
        &remote,
        "--tls-verify=false",
        "--name",
        "from-registry",
    ]);
    ok(&["push", &layout, "--name", "from-layout"]);
    assert_eq!(
        env.manifest_chunks("from-registry"),
        env.manifest_chunks("from-layout")
    );
    assert_eq!(
        env.pull_sha256("from-registry"),
        env.pull_sha256("from-layout")
    );

    // flatten: the same file.
    let a = env.dir.path().join("a.ext4");
    let b = env.dir.path().join("b.ext4");
    ok(&[
        "flatten",
        &remote,
        "--tls-verify=false",
        "-o",
        a.to_str().unwrap(),
    ]);
    ok(&["flatten", &layout, "-o", b.to_str().unwrap()]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // A wrong tag is one clear line naming the image and the tag.
    let wrong = format!("docker://{}/base:v9", reg.host);
    let out = run(&[
        "flatten",
        &wrong,
        "--tls-verify=false",
        "-o",
        a.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&wrong) && err.contains("no image tagged \"v9\" in repository base"),
        "{err}"
    );

    // Without credentials the registry refuses, and the error says why.
    let out = env
        .cmd()
        .args([
            "flatten",
            &remote,
            "--tls-verify=false",
            "-o",
            a.to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", env.dir.path().join("none.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("none.json"), "{err}");
}
