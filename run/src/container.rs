//! One container's life: overlay on tmpfs over the shared mount, bundle,
//! runtime in the foreground with signals forwarded, cleanup.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::shared::{Mounter, SharedMount};
use crate::spec::{Network, SpecInput, build_spec};
use crate::user::resolve_user;
use crate::{RunRequest, command_line, dir_in_image, environment, find_runtime};

fn io(what: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn sys_mount(src: &str, target: &Path, fstype: &str, data: &str) -> Result<()> {
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let t = CString::new(target.as_os_str().as_bytes()).unwrap_or_default();
    let (src, fstype, data) = (c(src), c(fstype), c(data));
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            t.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NODEV | libc::MS_NOSUID,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io("mounting", target, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn sys_umount(target: &Path) {
    let t = CString::new(target.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: a valid path string.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
}

/// What to undo, newest last.
struct Cleanup<'a> {
    runtime: PathBuf,
    id: String,
    dir: PathBuf,
    mounts: Vec<PathBuf>,
    shared: Option<SharedMount>,
    mounter: &'a dyn Mounter,
    started: bool,
}

impl Cleanup<'_> {
    fn finish(&mut self) -> Result<()> {
        if self.started {
            let _ = Command::new(&self.runtime)
                .args(["delete", "--force", &self.id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.started = false;
        }
        while let Some(m) = self.mounts.pop() {
            sys_umount(&m);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        match self.shared.take() {
            Some(s) => s.release(self.mounter),
            None => Ok(()),
        }
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(error = &e as &dyn std::error::Error, "cleaning up the run");
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.')
}

fn signal_number(name: Option<&str>) -> i32 {
    let Some(name) = name else {
        return libc::SIGTERM;
    };
    if let Ok(n) = name.parse() {
        return n;
    }
    let n = name.trim_start_matches("SIG");
    match n {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        _ => libc::SIGTERM,
    }
}

/// Runs the container and returns its exit code (128 + signal when killed).
pub fn run(req: &RunRequest, mounter: &dyn Mounter) -> Result<i32> {
    let runtime = find_runtime(req.runtime.as_deref())?;
    let id = req
        .name
        .clone()
        .unwrap_or_else(|| format!("lode-{}-{}", req.image, std::process::id()));
    if !valid_id(&id) {
        return Err(Error::NameInUse { name: id });
    }
    let dir = req.state_dir.join("containers").join(&id);
    if dir.exists() {
        return Err(Error::NameInUse { name: id });
    }
    std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    let mut cleanup = Cleanup {
        runtime: runtime.clone(),
        id: id.clone(),
        dir: dir.clone(),
        mounts: Vec::new(),
        shared: None,
        mounter,
        started: false,
    };
    let shared = SharedMount::acquire(&req.state_dir, &req.image, mounter)?;
    let lower = shared.rootfs();
    cleanup.shared = Some(shared);

    // Checks on the image before anything runs.
    let user = resolve_user(&lower, req.user.as_deref().or(req.config.user.as_deref()))?;
    let cwd = req
        .workdir
        .clone()
        .or_else(|| req.config.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') || !dir_in_image(&lower, &cwd) {
        return Err(Error::Workdir { path: cwd });
    }
    let args = command_line(req)?;
    let hostname: String = id.chars().take(63).collect();
    let env = environment(req, &user, &hostname)?;

    // Writable layer: overlay with its upper on a tmpfs, discarded at exit.
    let scratch = dir.join("scratch");
    let rootfs = dir.join("rootfs");
    for d in [&scratch, &rootfs] {
        std::fs::create_dir_all(d).map_err(|e| io("creating", d, e))?;
    }
    sys_mount(
        "tmpfs",
        &scratch,
        "tmpfs",
        &format!("size={},mode=0700", req.tmpfs_size),
    )?;
    cleanup.mounts.push(scratch.clone());
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir(d).map_err(|e| io("creating", d, e))?;
    }
    sys_mount(
        "overlay",
        &rootfs,
        "overlay",
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ),
    )?;
    cleanup.mounts.push(rootfs.clone());

    // /etc/hosts, /etc/hostname, /etc/resolv.conf as a container expects.
    let hosts = dir.join("hosts");
    let mut hosts_text = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    if req.network == Network::Host {
        hosts_text = std::fs::read_to_string("/etc/hosts").unwrap_or(hosts_text);
    }
    let resolv = dir.join("resolv.conf");
    let resolv_text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let hostname_file = dir.join("hostname");
    for (p, text) in [
        (&hosts, hosts_text.as_str()),
        (&resolv, resolv_text.as_str()),
        (&hostname_file, &format!("{hostname}\n")),
    ] {
        std::fs::write(p, text).map_err(|e| io("writing", p, e))?;
    }
    let spec = build_spec(&SpecInput {
        args,
        env,
        cwd,
        user,
        hostname: hostname.clone(),
        tty: req.tty,
        network: req.network,
        files: vec![
            (hosts, "/etc/hosts".into()),
            (resolv, "/etc/resolv.conf".into()),
            (hostname_file, "/etc/hostname".into()),
        ],
    })?;
    let config = dir.join("config.json");
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| io("encoding", &config, e.into()))?;
    std::fs::write(&config, json).map_err(|e| io("writing", &config, e))?;

    // SIGINT/SIGTERM go to a thread that forwards the stop signal.
    let stop = signal_number(req.config.stop_signal.as_deref());
    let forward = SignalForward::start(runtime.clone(), id.clone(), stop);
    cleanup.started = true;
    let mut child = Command::new(&runtime)
        .args(["run", "--bundle"])
        .arg(&dir)
        .arg(&id)
        .spawn()
        .map_err(|source| Error::RuntimeStart {
            runtime: runtime.clone(),
            source,
        })?;
    let status = child.wait().map_err(|e| io("waiting for", &runtime, e))?;
    drop(forward);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    };
    cleanup.finish()?;
    Ok(code)
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts)
/// and forwards them to the container: the first as `stop`, then SIGKILL.
struct SignalForward {
    old: libc::sigset_t,
}

impl SignalForward {
    fn start(runtime: PathBuf, id: String, stop: i32) -> Self {
        // SAFETY: plain sigset manipulation on owned values.
        let (set, old) = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            (set, old)
        };
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut sent = 0;
                loop {
                    let mut sig = 0;
                    // SAFETY: `set` is initialized; `sig` is written.
                    if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                        return;
                    }
                    let s = if sent == 0 { stop } else { libc::SIGKILL };
                    sent += 1;
                    let _ = Command::new(&runtime)
                        .args(["kill", &id, &s.to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
            });
        SignalForward { old }
    }
}

impl Drop for SignalForward {
    fn drop(&mut self) {
        // Signals that arrive from now on act normally again.
        // SAFETY: restores the mask saved in `start`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}
