//! End to end through the real `lode` binary: keyring, salt, push, lazy
//! mount (FUSE + loop + the kernel's ext4), run a program inside with
//! chroot, unmount, and check what was fetched.
//!
//! Needs root, /dev/fuse and loop devices. With `LODE_CORPUS` set, the five
//! corpus images are pushed into one store and python-app and python-numpy
//! run from lazy mounts; without it the same flow runs on a small busybox
//! image the test builds itself (examples/make-busybox-image.sh).

mod oci_fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cache_tiers::testing::{MemcachedServer, MotoServer};
use oci_fixture::{busybox_image, can_mount, files_in};
use serde_json::Value;

const LODE: &str = env!("CARGO_BIN_EXE_lode");

/// A keyring, a salt file and a store in a temp dir, and env for `lode`.
struct Env {
    dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(store: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().to_path_buf();
        let store = store.unwrap_or_else(|| format!("file://{}/store", p.display()));
        let vars = vec![
            ("LODE_STORE".into(), store),
            (
                "LODE_KMS".into(),
                format!("local:{}/k/keyring", p.display()),
            ),
            ("LODE_SALTS".into(), format!("{}/k/salts", p.display())),
        ];
        let env = Self { dir, vars };
        env.ok(&["keyring", "new", &format!("{}/k/keyring", p.display())]);
        env.ok(&["salt", "new", &format!("{}/k/salts", p.display())]);
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn lode(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(LODE);
        cmd.args(args)
            .env_remove("LODE_CONFIG")
            .env("HOME", self.dir.path());
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd.output().expect("running lode")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.lode(args);
        assert!(
            out.status.success(),
            "lode {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn push(&self, image: &str, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["push", image, "--name", name, "--json"]))
            .expect("push --json")
    }
}

fn corpus() -> Option<PathBuf> {
    match std::env::var_os("LODE_CORPUS").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            println!("skipped: corpus part (LODE_CORPUS is not set)");
            None
        }
    }
}

/// Bind mounts under a chroot, undone on drop.
struct Binds(Vec<PathBuf>);

impl Binds {
    fn new(root: &Path) -> Self {
        let mut done = Vec::new();
        for dir in ["proc", "dev"] {
            let target = root.join(dir);
            if target.is_dir() {
                let st = Command::new("mount")
                    .args(["--rbind", &format!("/{dir}")])
                    .arg(&target)
                    .status();
                if st.map(|s| s.success()).unwrap_or(false) {
                    done.push(target);
                }
            }
        }
        Self(done)
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        for t in self.0.iter().rev() {
            let _ = Command::new("umount").args(["-R", "-l"]).arg(t).status();
        }
    }
}

/// Mounts `name`, runs `cmd` in a chroot, unmounts; returns stdout and stats.
fn mount_and_run(
    env: &Env,
    name: &str,
    cache: &Path,
    extra: &[&str],
    cmd: &[&str],
) -> (String, Value) {
    let mnt = env.path(&format!("mnt-{name}"));
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let stats = env.path(&format!("stats-{name}.json"));
    let mut args = vec![
        "mount",
        name,
        mnt.to_str().expect("utf-8"),
        "--cache-dir",
        cache.to_str().expect("utf-8"),
    ];
    args.extend(["--stats", stats.to_str().expect("utf-8")]);
    args.extend(extra);
    env.ok(&args);
    let out = {
        let _binds = Binds::new(&mnt);
        Command::new("chroot")
            .arg(&mnt)
            .args(cmd)
            .output()
            .expect("chroot")
    };
    env.ok(&["umount", mnt.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{cmd:?} in the lazy mount failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let stats: Value =
        serde_json::from_slice(&std::fs::read(&stats).expect("stats file written at unmount"))
            .expect("stats JSON");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stats)
}

fn as_u64(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats has no {key}: {v}"))
}

#[test]
fn busybox_push_mount_run_pull() {
    if !can_mount() {
        return;
    }
    let env = Env::new(None);
    let Some(image) = busybox_image(&env.path("oci")) else {
        return;
    };
    let pushed = env.push(&image, "demo");
    assert_eq!(
        as_u64(&pushed, "new") + as_u64(&pushed, "already_stored") + as_u64(&pushed, "holes"),
        as_u64(&pushed, "chunks_total")
    );
    // A second push of the same image stores nothing new.
    let again = env.push(&image, "demo-again");
    assert_eq!(as_u64(&again, "new"), 0, "{again}");
    assert!(env.ok(&["ls"]).contains("demo-again"));

    let cache = env.path("cache");
    let (stdout, stats) = mount_and_run(&env, "demo", &cache, &[], &["/app/hello.sh"]);
    assert!(
        stdout.contains("hello from a lazily loaded image: Linux"),
        "{stdout}"
    );
    assert!(stdout.contains("whiteout applied: OK"), "{stdout}");
    let fetched = as_u64(&stats, "distinct_chunks_fetched");
    assert!(
        fetched > 0 && fetched <= as_u64(&stats, "chunks_total"),
        "{stats}"
    );
    // L1 on disk fills on every miss: the cache holds exactly the fetched chunks.
    assert_eq!(files_in(&cache), fetched as usize, "{stats}");

    // pull materializes the same bytes that flatten writes.
    let pulled = env.path("pulled.img");
    env.ok(&["pull", "demo", "-o", pulled.to_str().expect("utf-8")]);
    let flat = env.path("flat.img");
    let line = env.ok(&["flatten", &image, "-o", flat.to_str().expect("utf-8")]);
    assert_eq!(
        std::fs::read(&pulled).expect("pulled"),
        std::fs::read(&flat).expect("flat"),
        "{line}"
    );

    // A manifest copied under another name still unwraps with this KMS,
    // but it is bound to "demo": serving it as "renamed" is refused.
    std::fs::copy(
        env.path("store/manifests/demo"),
        env.path("store/manifests/renamed"),
    )
    .expect("copy manifest");
    let out = env.lode(&[
        "pull",
        "renamed",
        "-o",
        env.path("r.img").to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("renamed") && err.contains("demo"), "{err}");
    assert!(!env.path("r.img").exists());

    // A keyring without the image's key cannot open it: a clear error.
    let other = Env::new(Some(env.vars[0].1.clone()));
    let mnt = other.path("mnt");
    std::fs::create_dir_all(&mnt).expect("mnt");
    let out = other.lode(&[
        "mount",
        "demo",
        mnt.to_str().expect("utf-8"),
        "--cache-dir",
        other.path("c").to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("demo"), "{err}");
}

#[test]
fn every_tier_real_s3_memcached() {
    if !can_mount() {
        return;
    }
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("lode");
    let nodes: Vec<MemcachedServer> = (0..5).filter_map(|_| MemcachedServer::start(64)).collect();
    if nodes.len() < 5 {
        return;
    }
    let l2 = format!(
        "memcached://{}",
        nodes
            .iter()
            .map(|n| n.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut env = Env::new(Some("s3://lode/e2e".into()));
    for (k, v) in [
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("LODE_L2", l2),
        ("LODE_L2_SHARDS", "4+1".into()),
    ] {
        env.vars.push((k.into(), v));
    }
    let (image, cmd, expect): (String, Vec<&str>, &str) = match corpus() {
        Some(c) => (
            format!("oci:{}/oci:python-app", c.display()),
            vec!["python3", "/app/main.py"],
            "OK",
        ),
        None => match busybox_image(&env.path("oci")) {
            Some(i) => (i, vec!["/app/hello.sh"], "whiteout applied: OK"),
            None => return,
        },
    };
    env.push(&image, "app");
    // Cold L1 and L2: everything comes from S3 and fills L2.
    let (out, first) = mount_and_run(&env, "app", &env.path("cache1"), &[], &cmd);
    assert!(out.contains(expect), "{out}");
    let tiers = &first["tiers"];
    assert!(tiers.to_string().contains("store"), "{first}");
    // Cold L1, warm L2: the same reads are answered by memcached.
    let (out, second) = mount_and_run(&env, "app", &env.path("cache2"), &[], &cmd);
    assert!(out.contains(expect), "{out}");
    let l2_chunks: u64 = second["tiers"]
        .as_object()
        .expect("tiers")
        .iter()
        .filter(|(k, _)| k.contains("erasure"))
        .map(|(_, v)| v["chunks"].as_u64().unwrap_or(0))
        .sum();
    assert!(l2_chunks > 0, "second mount read nothing from L2: {second}");
    drop(nodes);
}

#[test]
fn corpus_push_all_dedup_and_run() {
    if !can_mount() {
        return;
    }
    let Some(corpus) = corpus() else { return };
    let env = Env::new(None);
    let mut image_bytes = 0;
    let mut summaries = Vec::new();
    for name in [
        "debian-base",
        "python",
        "python-app",
        "python-numpy",
        "tools",
    ] {
        let s = env.push(&format!("oci:{}/oci:{name}", corpus.display()), name);
        image_bytes += as_u64(&s, "image_bytes");
        summaries.push(s);
    }
    let stored: u64 = std::fs::read_dir(env.path("store/chunks"))
        .expect("chunks dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    println!(
        "corpus: {image_bytes} image bytes, {stored} stored chunk bytes, dedup {:.2}",
        image_bytes as f64 / stored as f64
    );
    for s in &summaries {
        println!("  {}", s);
    }
    assert!(
        stored < image_bytes,
        "no dedup: {stored} stored of {image_bytes}"
    );

    let (out, stats) = mount_and_run(
        &env,
        "python-app",
        &env.path("c-app"),
        &[],
        &["python3", "/app/main.py"],
    );
    assert!(out.contains("OK"), "{out}");
    let share = as_u64(&stats, "bytes_fetched") as f64 / as_u64(&stats, "image_size") as f64;
    println!("python-app: fetched {:.1}% of the image", share * 100.0);
    let (out, _) = mount_and_run(
        &env,
        "python-numpy",
        &env.path("c-numpy"),
        &[],
        &[
            "python3",
            "-c",
            "import numpy; print(numpy.arange(10).sum())",
        ],
    );
    assert_eq!(out.trim(), "45");
}
