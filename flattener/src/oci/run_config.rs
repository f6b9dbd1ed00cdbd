//! The part of an image config that says how to run the image: entrypoint,
//! command, environment, working directory, user, stop signal, labels and
//! exposed ports (the OCI image spec's `config` object).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

use crate::error::{Error, Result};

/// How the image says it runs (the OCI image config's `config` object).
///
/// Every field is what the config says, or empty/`None` when it says
/// nothing. `Debug` prints the environment's variable names, never their
/// values (they often hold secrets).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct RunConfig {
    /// `Entrypoint`: `None` when unset.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`: `None` when unset.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `Env`: `KEY=VALUE` entries in the config's order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    /// `WorkingDir`: `None` when unset or empty.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User`: `name`, `uid`, `name:group` or `uid:gid`; `None` when unset or empty.
    #[serde(default)]
    pub user: Option<String>,
    /// `StopSignal`, e.g. `SIGTERM` or `15`; `None` when unset or empty.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `Labels`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    /// The keys of `ExposedPorts`, e.g. `8080/tcp`.
    #[serde(default, deserialize_with = "ports")]
    pub exposed_ports: BTreeSet<String>,
}

impl fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_names: Vec<&str> = self
            .env
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
            .collect();
        f.debug_struct("RunConfig")
            .field("entrypoint", &self.entrypoint)
            .field("cmd", &self.cmd)
            .field("env_names", &env_names)
            .field("working_dir", &self.working_dir)
            .field("user", &self.user)
            .field("stop_signal", &self.stop_signal)
            .field("labels", &self.labels)
            .field("exposed_ports", &self.exposed_ports)
            .finish()
    }
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn ports<'de, D>(d: D) -> std::result::Result<BTreeSet<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let m: Option<BTreeMap<String, serde::de::IgnoredAny>> = Option::deserialize(d)?;
    Ok(m.unwrap_or_default().into_keys().collect())
}

#[derive(Deserialize)]
struct Outer {
    #[serde(default, deserialize_with = "null_as_default")]
    config: RunConfig,
}

/// Reads the run config from image config bytes (`{}` when it has none).
pub(crate) fn read_run_config(source_name: &str, config: &[u8]) -> Result<RunConfig> {
    let outer: Outer = serde_json::from_slice(config).map_err(|e| Error::Json {
        source_name: source_name.to_owned(),
        what: "image config's run config".into(),
        source: e,
    })?;
    let mut c = outer.config;
    for field in [&mut c.working_dir, &mut c.user, &mut c.stop_signal] {
        if field.as_deref() == Some("") {
            *field = None;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_and_hides_env_values_in_debug() {
        let c = read_run_config(
            "t",
            br#"{"architecture":"amd64","os":"linux","config":{
                "Entrypoint":["/bin/sh","-c"],"Cmd":null,"Env":["PATH=/bin","TOKEN=s3cret"],
                "WorkingDir":"/app","User":"1000:1000","StopSignal":"SIGINT",
                "Labels":{"b":"2","a":"1"},"ExposedPorts":{"8080/tcp":{},"53/udp":{}}},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert_eq!(
            c.entrypoint.as_deref(),
            Some(&["/bin/sh".into(), "-c".into()][..])
        );
        assert_eq!(c.cmd, None);
        assert_eq!(c.env, ["PATH=/bin", "TOKEN=s3cret"]);
        assert_eq!(c.working_dir.as_deref(), Some("/app"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(c.labels.len(), 2);
        assert_eq!(
            c.exposed_ports.iter().collect::<Vec<_>>(),
            ["53/udp", "8080/tcp"]
        );
        let dbg = format!("{c:?}");
        assert!(dbg.contains("TOKEN") && !dbg.contains("s3cret"), "{dbg}");
    }

    #[test]
    fn missing_or_empty_config_is_empty() {
        assert_eq!(read_run_config("t", b"{}").unwrap(), RunConfig::default());
        let c = read_run_config("t", br#"{"config":{"WorkingDir":"","User":""}}"#).unwrap();
        assert_eq!(c, RunConfig::default());
        assert!(read_run_config("t", br#"{"config":{"Env":"x"}}"#).is_err());
    }
}
