//! `lode run` with the real binary, real containers (runc or crun), and the
//! busybox demo image: exit codes, env, workdir, user, writes discarded,
//! signal forwarding, concurrent runs sharing one mount, bad input.

mod oci_fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use oci_fixture::{Env, busybox_image, can_mount, require};

struct Run {
    env: Env,
    state: PathBuf,
}

fn runtime_found() -> bool {
    ["/usr/bin/crun", "/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .any(|p| Path::new(p).exists())
}

/// A store with the busybox image pushed as `bb`, or a skip.
fn setup() -> Option<Run> {
    if !can_mount()
        || !require(
            runtime_found(),
            "needs crun or runc (apt-get install crun runc)",
        )
    {
        return None;
    }
    let env = Env::new();
    let image = busybox_image(&env.dir.path().join("img"))?;
    env.ok(&["push", &image, "--name", "bb"]);
    let state = env.dir.path().join("state");
    Some(Run { env, state })
}

impl Run {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd();
        c.arg("run")
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("LODE_CACHE_DIR", self.env.dir.path().join("cache"));
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }
    /// Mounts under the state dir (none must be left).
    fn mounts(&self) -> usize {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let s = self.state.to_string_lossy().into_owned();
        info.lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&s)))
            .count()
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn runs_as_the_image_says_with_flags_exit_codes_and_writes_discarded() {
    let Some(r) = setup() else { return };
    // The image's Cmd.
    let o = r.run(&["bb"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("hello from a lazily loaded image: Linux"),
        "{out}"
    );
    assert!(out.contains("whiteout applied: OK"), "{out}");

    // -- replaces the cmd; env, env-file, workdir, user, hostname; exit code.
    let envfile = r.env.dir.path().join("env");
    std::fs::write(&envfile, "# comment\nFROM_FILE=1\nBOTH=file\n").unwrap();
    let o = r.run(&[
        "-e",
        "FOO=bar baz",
        "-e",
        "BOTH=flag",
        "--env-file",
        envfile.to_str().unwrap(),
        "-w",
        "/app",
        "-u",
        "1000:1001",
        "--name",
        "t-flags",
        "bb",
        "--",
        "/bin/sh",
        "-c",
        "echo \"foo=$FOO file=$FROM_FILE both=$BOTH pwd=$(pwd) host=$(cat /proc/sys/kernel/hostname)\"; id; echo x > /tmp/w; exit 7",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(7), "{out}{err}");
    assert!(
        out.contains("foo=bar baz file=1 both=flag pwd=/app host=t-flags"),
        "{out}"
    );
    assert!(out.contains("uid=1000 gid=1001"), "{out}");

    // Writes go to the tmpfs upper: a file written in one run is gone in the next.
    let o = r.run(&[
        "bb",
        "--",
        "/bin/sh",
        "-c",
        "echo hi > /written; cat /written",
    ]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let o = r.run(&["bb", "--", "/bin/sh", "-c", "ls /written"]);
    assert_ne!(o.status.code(), Some(0), "a write survived: {:?}", text(&o));

    // --entrypoint replaces the entrypoint; -u root resolves by name.
    let o = r.run(&[
        "--entrypoint",
        "/bin/echo",
        "-u",
        "root",
        "bb",
        "--",
        "a",
        "b",
    ]);
    assert_eq!(text(&o).0, "a b\n");

    // --network none (the default): loopback only; host: the host's interfaces.
    let o = r.run(&["bb", "--", "/bin/ls", "/sys/class/net"]);
    assert_eq!(text(&o).0, "lo\n");
    let host_ifaces = std::fs::read_dir("/sys/class/net").unwrap().count();
    let o = r.run(&["--network", "host", "bb", "--", "/bin/ls", "/sys/class/net"]);
    assert_eq!(text(&o).0.lines().count(), host_ifaces, "{:?}", text(&o));

    // The container has its own PID namespace: the app is PID 1.
    let o = r.run(&["bb", "--", "/bin/sh", "-c", "echo $$"]);
    assert_eq!(text(&o).0, "1\n");

    // A killed app: 128 + signal (sh as PID 1 kills a child and reports it).
    let o = r.run(&[
        "bb",
        "--",
        "/bin/sh",
        "-c",
        "/bin/sh -c 'kill -9 $$'; exit $?",
    ]);
    assert_eq!(o.status.code(), Some(137), "{:?}", text(&o));

    // -t: the app gets a terminal (util-linux `script` gives lode one).
    if require(
        Path::new("/usr/bin/script").exists(),
        "needs script (util-linux)",
    ) {
        let lode = env!("CARGO_BIN_EXE_lode");
        let line = format!(
            "{lode} run --state-dir {} -t bb -- /bin/sh -c 'test -t 0 && echo tty=yes TERM=$TERM; exit 3'",
            r.state.display()
        );
        let o = Command::new("/usr/bin/script")
            .args(["-qec", &line, "/dev/null"])
            .env("LODE_STORE", format!("file://{}", r.env.store().display()))
            .env("LODE_KMS", format!("local:{}", r.env.keyring().display()))
            .env("XDG_CONFIG_HOME", r.env.dir.path())
            .env_remove("LODE_CONFIG")
            .env("LODE_CACHE_DIR", r.env.dir.path().join("cache"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (out, err) = text(&o);
        assert!(out.contains("tty=yes TERM=xterm"), "{out}{err}");
        assert_eq!(o.status.code(), Some(3), "{out}{err}");
    }

    assert_eq!(r.mounts(), 0, "nothing left mounted");
    assert!(
        std::fs::read_dir(r.state.join("containers"))
            .unwrap()
            .next()
            .is_none(),
        "no bundle left behind"
    );
}

#[test]
fn sigterm_is_forwarded_and_everything_is_cleaned_up() {
    let Some(r) = setup() else { return };
    let mut child = r
        .cmd(&[
            "bb",
            "--",
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("got-term"), "{rest}");
    assert_eq!(status.code(), Some(42));
    assert_eq!(r.mounts(), 0, "nothing left mounted");
}

#[test]
fn concurrent_runs_share_one_mount_and_the_last_one_out_unmounts() {
    let Some(r) = setup() else { return };
    let children: Vec<_> = (0..3)
        .map(|_| {
            r.cmd(&["bb", "--", "/bin/sh", "-c", "sleep 2; echo done"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // While they run: one lazy ext4 mount of bb (plus one overlay and one
    // tmpfs per container).
    let deadline = Instant::now() + Duration::from_secs(20);
    let rootfs = r.state.join("images/bb/rootfs");
    let mut saw = 0;
    while Instant::now() < deadline {
        let refs = std::fs::read_dir(r.state.join("images/bb/refs"))
            .map(|d| d.count())
            .unwrap_or(0);
        if refs == 3 {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            saw = info
                .lines()
                .filter(|l| l.split(' ').nth(4) == Some(rootfs.to_str().unwrap()))
                .count();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(saw, 1, "three runs, one mount of the image");
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "done\n");
    }
    assert_eq!(r.mounts(), 0, "the last one out unmounted");
}

#[test]
fn bad_input_is_exit_125_naming_it_and_leaves_nothing_mounted() {
    let Some(r) = setup() else { return };
    let cases: &[(&[&str], &str)] = &[
        (&["nosuch"], "no image named \"nosuch\""),
        (
            &["-u", "nobody", "bb"],
            "user \"nobody\" not found in the image",
        ),
        (&["-u", "root:staff", "bb"], "no group \"staff\""),
        (
            &["-w", "/nope", "bb"],
            "working directory \"/nope\" does not exist",
        ),
        (
            &["--runtime", "/no/such/crun", "bb"],
            "OCI runtime /no/such/crun not found",
        ),
        (&["-e", "=x", "bb"], "bad environment entry"),
    ];
    for (args, want) in cases {
        let o = r.run(args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(r.mounts(), 0, "{args:?} left a mount");
    }
    // A mountpoint in use by something else.
    let rootfs = r.state.join("images/bb/rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "other", rootfs.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = r.run(&["bb"]);
    let (_, err) = text(&o);
    let _ = Command::new("umount").arg(&rootfs).status();
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains("is in use") && err.contains("images/bb/rootfs"),
        "{err}"
    );
    assert_eq!(r.mounts(), 0);
}
