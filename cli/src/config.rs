//! Settings: command-line flags, then `LODE_*` environment variables (both
//! through clap), then an optional TOML file, in that order of precedence.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::Args;
use lode_store::{KmsUrl, L2Config, StoreUrl, TierConfig};
use serde::Deserialize;

/// Settings shared by every command that touches a store.
#[derive(Args, Debug, Clone, Default)]
pub struct Settings {
    /// Chunk and manifest store: file:///abs/path, s3://bucket[/prefix] or memory://
    #[arg(
        long,
        env = "LODE_STORE",
        global = true,
        help_heading = "Store and keys"
    )]
    pub store: Option<String>,
    /// Key service: local:/path/to/keyring[#key] or aws:KEY_ID_OR_ARN
    #[arg(long, env = "LODE_KMS", global = true, help_heading = "Store and keys")]
    pub kms: Option<String>,
    /// Pusher's secret salt file (workers never need it)
    #[arg(
        long,
        env = "LODE_SALTS",
        global = true,
        help_heading = "Store and keys"
    )]
    pub salts: Option<PathBuf>,
    /// L1 disk cache directory (workers)
    #[arg(long, env = "LODE_CACHE_DIR", global = true, help_heading = "Caches")]
    pub cache_dir: Option<PathBuf>,
    /// L1 disk cache size, e.g. 2GiB
    #[arg(long, env = "LODE_CACHE_SIZE", global = true, help_heading = "Caches")]
    pub cache_size: Option<String>,
    /// Optional L2 shared cache: memcached://host:port,host:port,...
    #[arg(long, env = "LODE_L2", global = true, help_heading = "Caches")]
    pub l2: Option<String>,
    /// L2 erasure code as data+parity shards, e.g. 4+1
    #[arg(long, env = "LODE_L2_SHARDS", global = true, help_heading = "Caches")]
    pub l2_shards: Option<String>,
    /// For benchmarks and fault tests: delay every chunk GET from the store
    /// (L3) by this much, e.g. 20ms, to make a local store behave like a remote one
    #[arg(
        long,
        env = "LODE_STORE_LATENCY",
        global = true,
        help_heading = "Caches"
    )]
    pub store_latency: Option<String>,
    /// TOML file with any of the settings above (keys: store, kms, salts,
    /// cache_dir, cache_size, l2, l2_shards, store_latency); default ~/.config/lode/config.toml
    /// or /etc/lode/config.toml when present
    #[arg(
        long,
        env = "LODE_CONFIG",
        global = true,
        help_heading = "Store and keys"
    )]
    pub config: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    store: Option<String>,
    kms: Option<String>,
    salts: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<String>,
    l2: Option<String>,
    l2_shards: Option<String>,
    store_latency: Option<String>,
}

impl Settings {
    /// Fills what flags and environment left unset from the TOML file.
    pub fn resolve(mut self) -> Result<Self> {
        let path = match &self.config {
            Some(p) => Some(p.clone()),
            None => default_config_path(),
        };
        if let Some(path) = path {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let file: FileSettings = toml::from_str(&text)
                .with_context(|| format!("config {} is not valid", path.display()))?;
            self.store = self.store.or(file.store);
            self.kms = self.kms.or(file.kms);
            self.salts = self.salts.or(file.salts);
            self.cache_dir = self.cache_dir.or(file.cache_dir);
            self.cache_size = self.cache_size.or(file.cache_size);
            self.l2 = self.l2.or(file.l2);
            self.l2_shards = self.l2_shards.or(file.l2_shards);
            self.store_latency = self.store_latency.or(file.store_latency);
        }
        Ok(self)
    }

    /// The store URL, or an error saying how to give one.
    pub fn store_url(&self) -> Result<StoreUrl> {
        let url = self
            .store
            .as_deref()
            .context("no store given: use --store URL or LODE_STORE")?;
        Ok(StoreUrl::parse(url)?)
    }

    /// Opens the (existing) store.
    pub fn store(&self) -> Result<lode_store::Store> {
        Ok(lode_store::Store::open(&self.store_url()?)?)
    }

    /// The KMS spec, or an error saying how to give one.
    pub fn kms(&self) -> Result<KmsUrl> {
        let spec = self
            .kms
            .as_deref()
            .context("no key service given: use --kms SPEC or LODE_KMS")?;
        Ok(KmsUrl::parse(spec)?)
    }

    /// The cache tiers of a worker, with `cache_dir` as its L1 disk.
    pub fn tiers(&self, cache_dir: Option<&Path>) -> Result<TierConfig> {
        Ok(TierConfig::store_only()
            .cache_dir(cache_dir.map(Path::to_path_buf), self.cache_size()?)
            .l2(self.l2()?)
            .store_latency(self.store_latency()?))
    }

    /// The salt file, or an error saying how to give one.
    pub fn salts(&self) -> Result<&Path> {
        self.salts.as_deref().context("no salt file given: use --salts FILE or LODE_SALTS (create one with `lode salt new FILE`)")
    }

    /// The added store latency (`--store-latency`), if any.
    pub fn store_latency(&self) -> Result<Option<std::time::Duration>> {
        self.store_latency
            .as_deref()
            .map(|s| parse_duration(s).context("--store-latency / LODE_STORE_LATENCY"))
            .transpose()
    }

    /// L1 disk cache size in bytes (default 4 GiB).
    pub fn cache_size(&self) -> Result<u64> {
        self.cache_size
            .as_deref()
            .map_or(Ok(4 << 30), |s| Ok(parse_size(s)?))
    }

    /// The L2 spec, when one is configured.
    pub fn l2(&self) -> Result<Option<L2Config>> {
        let Some(url) = self.l2.as_deref() else {
            return Ok(None);
        };
        let nodes = url
            .strip_prefix("memcached://")
            .with_context(|| format!("L2 {url:?} must look like memcached://host:port,host:port"))?
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| n.to_string())
            .collect::<Vec<_>>();
        let (data, parity) = match self.l2_shards.as_deref() {
            None => (4, 1),
            Some(s) => {
                let (k, m) = s
                    .split_once('+')
                    .with_context(|| format!("L2 shards {s:?} must look like 4+1"))?;
                (
                    k.trim().parse().context("L2 data shards")?,
                    m.trim().parse().context("L2 parity shards")?,
                )
            }
        };
        ensure!(data >= 1, "L2 needs at least one data shard");
        ensure!(
            nodes.len() >= data + parity,
            "L2 {data}+{parity} needs at least {} memcached nodes, got {}",
            data + parity,
            nodes.len()
        );
        Ok(Some(L2Config::new(nodes, data, parity)))
    }
}

fn default_config_path() -> Option<PathBuf> {
    let home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    let user = home.map(|h| h.join("lode/config.toml"));
    user.into_iter()
        .chain([PathBuf::from("/etc/lode/config.toml")])
        .find(|p| p.is_file())
}

pub use lode_store::units::{parse_duration, parse_size};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "store = \"file:///from/file\"\nkms = \"local:/k\"\nl2 = \"memcached://a:1,b:2\"\nl2_shards = \"1+1\"\nstore_latency = \"20ms\"\n")
            .unwrap();
        let s = Settings {
            store: Some("memory://".into()),
            config: Some(cfg),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.store_url().unwrap(), StoreUrl::Memory);
        assert_eq!(
            s.kms().unwrap(),
            KmsUrl::Local {
                path: "/k".into(),
                key: "default".into()
            }
        );
        let l2 = s.l2().unwrap().unwrap();
        assert_eq!((l2.nodes.len(), l2.data, l2.parity), (2, 1, 1));
        assert_eq!(
            s.store_latency().unwrap(),
            Some(std::time::Duration::from_millis(20))
        );
    }
}
