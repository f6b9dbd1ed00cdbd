//! The OCI runtime config (`config.json`) of a run, from the image config
//! and the user's flags, with the `oci-spec` crate.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Mount, MountBuilder, Spec, UserBuilder};

use crate::error::{Error, Result};
use crate::user::ResolvedUser;

/// Which network the container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Its own network namespace with only loopback.
    #[default]
    None,
    /// The host's network.
    Host,
}

/// What goes into `config.json`.
#[derive(Debug, Clone)]
pub struct SpecInput {
    /// `argv`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// The user.
    pub user: ResolvedUser,
    /// Hostname.
    pub hostname: String,
    /// A terminal.
    pub tty: bool,
    /// Network.
    pub network: Network,
    /// Files bind-mounted read-only (source on the host, destination in the container).
    pub files: Vec<(PathBuf, String)>,
}

fn spec_err(source: oci_spec::OciSpecError) -> Error {
    Error::Spec { source }
}

/// Builds the runtime config: the runtime's defaults (namespaces, `/proc`,
/// `/dev`, `/sys`, capabilities, masked paths) plus the image's process.
pub fn build_spec(input: &SpecInput) -> Result<Spec> {
    let mut spec = Spec::default();
    spec.set_hostname(Some(input.hostname.clone()));
    if let Some(root) = spec.root_mut() {
        root.set_path(PathBuf::from("rootfs"));
        // The overlay is writable; writes go to the tmpfs upper.
        root.set_readonly(Some(false));
    }
    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    for (src, dst) in &input.files {
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(dst))
                .typ("bind")
                .source(src.clone())
                .options(vec!["rbind".into(), "ro".into()])
                .build()
                .map_err(spec_err)?,
        );
    }
    spec.set_mounts(Some(mounts));
    if input.network == Network::Host
        && let Some(ns) = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.namespaces_mut().as_mut())
    {
        ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
    }
    let user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid)
        .additional_gids(input.user.additional_gids.clone())
        .build()
        .map_err(spec_err)?;
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(input.args.clone()));
        p.set_env(Some(input.env.clone()));
        p.set_cwd(PathBuf::from(&input.cwd));
        p.set_terminal(Some(input.tty));
        p.set_user(user);
        // As docker and podman: setuid binaries keep working.
        p.set_no_new_privileges(Some(false));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(network: Network) -> SpecInput {
        SpecInput {
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            cwd: "/app".into(),
            user: ResolvedUser {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![10],
                home: "/home/app".into(),
            },
            hostname: "c1".into(),
            tty: false,
            network,
            files: vec![("/tmp/hosts".into(), "/etc/hosts".into())],
        }
    }

    #[test]
    fn config_json_has_the_process_namespaces_and_mounts() {
        let v = serde_json::to_value(build_spec(&input(Network::None)).unwrap()).unwrap();
        assert_eq!(v["process"]["args"][2], "true");
        assert_eq!(v["process"]["cwd"], "/app");
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["gid"], 1001);
        assert_eq!(v["process"]["user"]["additionalGids"][0], 10);
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["hostname"], "c1");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for want in ["pid", "network", "ipc", "uts", "mount"] {
            assert!(ns.contains(&want), "{ns:?}");
        }
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for want in ["/proc", "/dev", "/sys", "/etc/hosts"] {
            assert!(dests.contains(&want), "{dests:?}");
        }
        let host = serde_json::to_value(build_spec(&input(Network::Host)).unwrap()).unwrap();
        assert!(
            !host["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network")
        );
    }
}
