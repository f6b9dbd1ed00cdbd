//! Runs a lode image as its OCI image config says, in a real container.
//!
//! [`run`] takes the image's sealed [`manifest::ImageConfig`] and the
//! user's flags ([`RunRequest`], podman/docker meanings), and:
//!
//! 1. takes a reference on the image's shared lazy mount ([`SharedMount`]:
//!    one read-only ext4 mount and one L1 per image, however many runs);
//! 2. puts a tmpfs (`--tmpfs-size`) and an overlayfs over it: writes go to
//!    the tmpfs upper and are discarded at exit;
//! 3. writes an OCI runtime bundle whose `config.json` ([`build_spec`]) has
//!    the entrypoint + cmd, environment, working directory and user
//!    (resolved against the image's `/etc/passwd` and `/etc/group`), its own
//!    mount, PID, IPC, UTS and (unless `--network host`) network
//!    namespaces, and `/proc`, `/dev`, `/sys`, `/etc/hosts`,
//!    `/etc/resolv.conf`;
//! 4. runs it with `crun` or `runc` in the foreground, stdio passed
//!    through, SIGINT/SIGTERM forwarded as the image's `StopSignal`
//!    (a second one kills);
//! 5. cleans up everything and returns the app's exit code (128 + signal
//!    when it was killed).
//!
//! Setup errors ([`Error`]) map to exit code [`EXIT_SETUP`] (125), as podman.
//!
//! # Example
//!
//! ```no_run
//! use lode_run::{Mounter, RunRequest, run};
//! # struct Lode;
//! # impl Mounter for Lode {
//! #     fn mount(&self, _: &str, _: &std::path::Path) -> Result<(), String> { Ok(()) }
//! #     fn unmount(&self, _: &std::path::Path) -> Result<(), String> { Ok(()) }
//! # }
//! let config = manifest::ImageConfig::default(); // from the opened manifest
//! let mut req = RunRequest::new("busybox", config);
//! req.cmd = vec!["/bin/echo".into(), "hi".into()];
//! let code = run(&req, &Lode)?;
//! # Ok::<(), lode_run::Error>(())
//! ```

mod error;
mod shared;
mod spec;
mod user;

use std::path::{Path, PathBuf};

pub use error::{EXIT_SETUP, Error, Result};
pub use shared::{Mounter, SharedMount, is_mountpoint};
pub use spec::{Network, SpecInput, build_spec};
pub use user::{ResolvedUser, resolve_user};

/// Where runs keep their state: shared mounts and container bundles.
pub const DEFAULT_STATE_DIR: &str = "/run/lode";

/// Everything `lode run` was asked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunRequest {
    /// Image name in the store.
    pub image: String,
    /// The image's config (from its sealed manifest).
    pub config: manifest::ImageConfig,
    /// `--entrypoint`: replaces the image's (an empty string clears it).
    pub entrypoint: Option<String>,
    /// `-- CMD ARGS…`: replaces the image's cmd when not empty.
    pub cmd: Vec<String>,
    /// `-e K=V` / `-e K` (from the caller's environment), in order.
    pub env: Vec<String>,
    /// `--env-file` files, read before `-e`.
    pub env_files: Vec<PathBuf>,
    /// `-w/--workdir`.
    pub workdir: Option<String>,
    /// `-u/--user`.
    pub user: Option<String>,
    /// `--name`: the container id (default `lode-IMAGE-PID`).
    pub name: Option<String>,
    /// `-t`: a terminal.
    pub tty: bool,
    /// `--network`.
    pub network: Network,
    /// `--tmpfs-size`, as `mount -t tmpfs -o size=` takes it.
    pub tmpfs_size: String,
    /// `--runtime`: the OCI runtime binary (default: crun if found, else runc).
    pub runtime: Option<PathBuf>,
    /// State directory ([`DEFAULT_STATE_DIR`]).
    pub state_dir: PathBuf,
}

impl RunRequest {
    /// A run of `image` as `config` says, with the defaults.
    pub fn new(image: &str, config: manifest::ImageConfig) -> Self {
        RunRequest {
            image: image.to_owned(),
            config,
            entrypoint: None,
            cmd: Vec::new(),
            env: Vec::new(),
            env_files: Vec::new(),
            workdir: None,
            user: None,
            name: None,
            tty: false,
            network: Network::None,
            tmpfs_size: "64m".into(),
            runtime: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// The OCI runtime to use: `explicit`, else `crun` on `PATH`, else `runc`.
///
/// On a hybrid cgroup v1/v2 host (`/sys/fs/cgroup/unified` exists) crun
/// refuses to run ("cgroups in hybrid mode not supported"), so there the
/// default is runc first.
pub fn find_runtime(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        let found = if p.components().count() > 1 {
            p.is_file().then(|| p.to_path_buf())
        } else {
            which(p.to_str().unwrap_or_default())
        };
        return found.ok_or_else(|| Error::RuntimeMissing {
            runtime: p.to_path_buf(),
        });
    }
    let hybrid_cgroups = Path::new("/sys/fs/cgroup/unified").is_dir();
    let order = if hybrid_cgroups {
        ["runc", "crun"]
    } else {
        ["crun", "runc"]
    };
    which(order[0])
        .or_else(|| which(order[1]))
        .ok_or_else(|| Error::RuntimeMissing {
            runtime: PathBuf::from("crun"),
        })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The argv: entrypoint (image's or `--entrypoint`) + cmd (image's or the
/// given one), as docker does.
pub fn command_line(req: &RunRequest) -> Result<Vec<String>> {
    let entrypoint = match &req.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => req.config.entrypoint.clone().unwrap_or_default(),
    };
    let cmd = if !req.cmd.is_empty() {
        req.cmd.clone()
    } else if req.entrypoint.is_some() {
        // docker: --entrypoint clears the image's cmd.
        Vec::new()
    } else {
        req.config.cmd.clone().unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(Error::NoCommand);
    }
    Ok(argv)
}

/// The environment: the image's, then `--env-file`s, then `-e`; `PATH`,
/// `HOSTNAME`, `HOME` (and `TERM` with a terminal) filled in when missing.
pub fn environment(req: &RunRequest, user: &ResolvedUser, hostname: &str) -> Result<Vec<String>> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| match env.iter_mut().find(|(x, _)| *x == k) {
        Some(e) => e.1 = v,
        None => env.push((k, v)),
    };
    let parse = |entry: &str| -> Result<Option<(String, String)>> {
        let (k, v) = match entry.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (entry, None),
        };
        if k.is_empty() {
            return Err(Error::Env {
                entry: entry.chars().take_while(|c| *c != '=').collect(),
                reason: "empty variable name",
            });
        }
        // `-e K` takes K from the caller's environment (unset: skipped).
        Ok(match v {
            Some(v) => Some((k.to_owned(), v.to_owned())),
            None => std::env::var(k).ok().map(|v| (k.to_owned(), v)),
        })
    };
    for e in &req.config.env {
        if let Some((k, v)) = e.split_once('=') {
            set(k.to_owned(), v.to_owned());
        }
    }
    for f in &req.env_files {
        let text = std::fs::read_to_string(f).map_err(|source| Error::Io {
            what: "reading env file",
            path: f.clone(),
            source,
        })?;
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = parse(line)? {
                set(k, v);
            }
        }
    }
    for e in &req.env {
        if let Some((k, v)) = parse(e)? {
            set(k, v);
        }
    }
    let mut out: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let has = |k: &str| env.iter().any(|(x, _)| x == k);
    if !has("PATH") {
        out.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !has("HOSTNAME") {
        out.push(format!("HOSTNAME={hostname}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={}", user.home));
    }
    if req.tty && !has("TERM") {
        out.push("TERM=xterm".into());
    }
    Ok(out)
}

/// Whether `path` (absolute, inside the container) is a directory in `rootfs`,
/// following symlinks inside the image, not on the host.
fn dir_in_image(rootfs: &Path, path: &str) -> bool {
    let mut cur = PathBuf::from("/");
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .rev()
        .collect();
    let mut hops = 0;
    while let Some(p) = parts.pop() {
        match p.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&p);
        let host = rootfs.join(next.strip_prefix("/").unwrap_or(&next));
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                let Ok(target) = std::fs::read_link(&host) else {
                    return false;
                };
                if hops > 40 {
                    return false;
                }
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    cur = PathBuf::from("/");
                }
                parts.extend(
                    t.split('/')
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .rev(),
                );
            }
            Ok(m) if m.is_dir() => cur = next,
            _ => return false,
        }
    }
    true
}

mod container;
pub use container::run;
