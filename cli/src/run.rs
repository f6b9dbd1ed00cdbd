//! `lode run`: flags in, exit code out; the logic is in `lode-run`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Result;

use crate::config::Settings;

/// Mounts with `lode mount` / `lode umount` daemons (this same binary), so
/// the mount outlives no run and forks before any thread of ours.
struct LodeMounter {
    env: Vec<(&'static str, std::ffi::OsString)>,
}

impl LodeMounter {
    /// The daemons get this run's settings through their variables.
    fn new(s: &Settings) -> Self {
        let os = |v: Option<&str>| v.map(std::ffi::OsString::from);
        let path = |v: &Option<PathBuf>| v.clone().map(std::ffi::OsString::from);
        let env = [
            ("LODE_STORE", os(s.store.as_deref())),
            ("LODE_KMS", os(s.kms.as_deref())),
            ("LODE_SALTS", path(&s.salts)),
            ("LODE_CACHE_DIR", path(&s.cache_dir)),
            ("LODE_CACHE_SIZE", os(s.cache_size.as_deref())),
            ("LODE_L2", os(s.l2.as_deref())),
            ("LODE_L2_SHARDS", os(s.l2_shards.as_deref())),
            ("LODE_STORE_LATENCY", os(s.store_latency.as_deref())),
            ("LODE_CONFIG", path(&s.config)),
        ];
        let env = env.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
        LodeMounter { env }
    }

    fn lode(&self, args: &[&std::ffi::OsStr]) -> std::result::Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding the lode binary: {e}"))?;
        let out = Command::new(exe)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running lode: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl lode_run::Mounter for LodeMounter {
    fn mount(&self, image: &str, at: &Path) -> std::result::Result<(), String> {
        self.lode(&["mount".as_ref(), image.as_ref(), at.as_os_str()])
    }
    fn unmount(&self, at: &Path) -> std::result::Result<(), String> {
        self.lode(&["umount".as_ref(), at.as_os_str()])
    }
}

/// What `lode run` was asked.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Image name in the store
    pub name: String,
    /// Replaces the image's cmd
    #[arg(last = true)]
    pub cmd: Vec<String>,
    /// Replaces the image's entrypoint ("" clears it)
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Set an environment variable (K=V, or K to pass the caller's)
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Read environment variables from a file (K=V lines, # comments)
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid (from the image's /etc/passwd, /etc/group)
    #[arg(short, long)]
    pub user: Option<String>,
    /// Container name (default lode-NAME-PID)
    #[arg(long = "name", value_name = "CONTAINER")]
    pub container_name: Option<String>,
    /// Give the app a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Keep stdin open (accepted for docker compatibility: stdin is always passed)
    #[arg(short, long)]
    pub interactive: bool,
    /// Remove the container at exit (always: accepted for docker compatibility)
    #[arg(long)]
    pub rm: bool,
    /// Network: none (own namespace, loopback only) or host
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    pub network: String,
    /// Size of the tmpfs that holds the container's writes
    #[arg(long, default_value = "64m")]
    pub tmpfs_size: String,
    /// OCI runtime binary (default: crun if found, else runc)
    #[arg(long, value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// Where shared mounts and bundles live
    #[arg(long, default_value = lode_run::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// Runs the image; returns the exit code (setup errors: 125, printed here).
pub fn run(
    settings: &Settings,
    args: RunArgs,
    crypto: &'static dyn chunk_core::CryptoProvider,
) -> i32 {
    match try_run(settings, args, crypto) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lode: error: {e:#}");
            lode_run::EXIT_SETUP
        }
    }
}

fn try_run(
    settings: &Settings,
    a: RunArgs,
    crypto: &'static dyn chunk_core::CryptoProvider,
) -> Result<i32> {
    let network = match a.network.as_str() {
        "none" => lode_run::Network::None,
        "host" => lode_run::Network::Host,
        other => anyhow::bail!("--network {other:?}: expected none or host"),
    };
    // The runtime first: a missing one is an error before anything is mounted.
    lode_run::find_runtime(a.runtime.as_deref())?;
    let config = {
        let store = settings.store()?;
        let kms = lode_store::open_kms(&settings.kms()?, crypto)?;
        crate::rt::runtime()?.block_on(lode_store::image_config(
            &store,
            &a.name,
            kms.as_ref(),
            crypto,
        ))?
    };
    let mut req = lode_run::RunRequest::new(&a.name, config);
    req.cmd = a.cmd;
    req.entrypoint = a.entrypoint;
    req.env = a.env;
    req.env_files = a.env_file;
    req.workdir = a.workdir;
    req.user = a.user;
    req.name = a.container_name;
    req.tty = a.tty;
    req.network = network;
    req.tmpfs_size = a.tmpfs_size;
    req.runtime = a.runtime;
    req.state_dir = a.state_dir;
    Ok(lode_run::run(&req, &LodeMounter::new(settings))?)
}
