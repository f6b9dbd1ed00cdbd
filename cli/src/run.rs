//! `lode run`: flags in, exit code out; the logic is in `lode-run`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::config::Settings;

/// Mounts with `lode mount` / `lode umount` daemons (this same binary), so
/// the mount outlives no run and forks before any thread of ours.
struct LodeMounter {
    env: Vec<(&'static str, std::ffi::OsString)>,
}

impl LodeMounter {
    fn new(settings: &Settings) -> Self {
        let mut env = Vec::new();
        let mut put = |k, v: Option<std::ffi::OsString>| {
            if let Some(v) = v {
                env.push((k, v));
            }
        };
        put("LODE_STORE", settings.store.clone().map(Into::into));
        put("LODE_KMS", settings.kms.clone().map(Into::into));
        put("LODE_SALTS", settings.salts.clone().map(Into::into));
        put("LODE_CACHE_DIR", settings.cache_dir.clone().map(Into::into));
        put("LODE_L2", settings.l2.clone().map(Into::into));
        put("LODE_L2_SHARDS", settings.l2_shards.clone().map(Into::into));
        put(
            "LODE_CACHE_SIZE",
            settings.cache_size.clone().map(Into::into),
        );
        put(
            "LODE_STORE_LATENCY",
            settings.store_latency.clone().map(Into::into),
        );
        put("LODE_CONFIG", settings.config.clone().map(Into::into));
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
pub struct RunArgs {
    pub name: String,
    pub cmd: Vec<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub container_name: Option<String>,
    pub tty: bool,
    pub network: String,
    pub tmpfs_size: String,
    pub runtime: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub crypto: &'static dyn chunk_core::CryptoProvider,
}

/// Runs the image; returns the exit code (setup errors: 125, printed here).
pub fn run(settings: &Settings, args: RunArgs) -> i32 {
    match try_run(settings, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lode: error: {e:#}");
            lode_run::EXIT_SETUP
        }
    }
}

fn try_run(settings: &Settings, a: RunArgs) -> Result<i32> {
    let network = match a.network.as_str() {
        "none" => lode_run::Network::None,
        "host" => lode_run::Network::Host,
        other => anyhow::bail!("--network {other:?}: expected none or host"),
    };
    // The runtime first: a missing one is an error before anything is mounted.
    lode_run::find_runtime(a.runtime.as_deref())?;
    let config = {
        let rt = crate::rt::runtime()?;
        let store = settings.store()?;
        let kms = lode_store::open_kms(&settings.kms()?, a.crypto)?;
        rt.block_on(async {
            let sealed = store.get_manifest(&a.name).await?;
            let (_, config) = sealed
                .open_with_config(a.crypto, kms.as_ref(), &manifest::image_context(&a.name))
                .await
                .with_context(|| format!("opening the manifest of {}", a.name))?;
            anyhow::Ok(config.unwrap_or_default())
        })?
    };
    let mut req = lode_run::RunRequest::new(&a.name, config);
    req.cmd = a.cmd;
    req.entrypoint = a.entrypoint;
    req.env = a.env;
    req.env_files = a.env_files;
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
