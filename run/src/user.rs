//! `-u/--user` resolved against the image's `/etc/passwd` and `/etc/group`,
//! as podman does: `name`, `uid`, `name:group`, `uid:gid`, `name:gid`, ….

use std::path::Path;

use crate::error::{Error, Result};

/// A resolved user: ids, supplementary groups and home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups the image's `/etc/group` lists the user in.
    pub additional_gids: Vec<u32>,
    /// Home directory from `/etc/passwd` (`/` when unknown).
    pub home: String,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_lines(rootfs: &Path, file: &str) -> Vec<String> {
    // A missing file is an empty database: numeric ids still work.
    std::fs::read_to_string(rootfs.join(file))
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn passwd(rootfs: &Path) -> Vec<Passwd> {
    read_lines(rootfs, "etc/passwd")
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then_some(())?;
            Some(Passwd {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_owned(),
            })
        })
        .collect()
}

fn groups(rootfs: &Path) -> Vec<Group> {
    read_lines(rootfs, "etc/group")
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then_some(())?;
            Some(Group {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `spec` (`None`: root) against the image at `rootfs`.
pub fn resolve_user(rootfs: &Path, spec: Option<&str>) -> Result<ResolvedUser> {
    let spec = spec.unwrap_or("0");
    let err = |reason: String| Error::User {
        user: spec.to_owned(),
        reason,
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(err("empty user name".into()));
    }
    let users = passwd(rootfs);
    let entry = users.iter().find(|p| p.name == user).or_else(|| {
        user.parse::<u32>()
            .ok()
            .and_then(|u| users.iter().find(|p| p.uid == u))
    });
    let (uid, mut gid, home, name) = match (entry, user.parse::<u32>()) {
        (Some(p), _) => (p.uid, p.gid, p.home.clone(), Some(p.name.clone())),
        // A numeric uid need not be in /etc/passwd (as with podman).
        (None, Ok(uid)) => (uid, 0, "/".to_owned(), None),
        (None, Err(_)) => return Err(err(format!("no user {user:?} in /etc/passwd"))),
    };
    let all_groups = groups(rootfs);
    if let Some(g) = group {
        gid = match all_groups.iter().find(|x| x.name == g) {
            Some(x) => x.gid,
            None => g
                .parse()
                .map_err(|_| err(format!("no group {g:?} in /etc/group")))?,
        };
    }
    let additional_gids = match (&name, group) {
        (Some(n), None) => all_groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == n) && g.gid != gid)
            .map(|g| g.gid)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn names_ids_and_groups_resolve_like_podman() {
        let d = rootfs();
        let r = |s| resolve_user(d.path(), Some(s));
        let app = r("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(app.additional_gids, [10]);
        assert_eq!(r("1000").unwrap().uid, 1000);
        assert_eq!(r("app:wheel").unwrap().gid, 10);
        assert_eq!(r("app:55").unwrap().gid, 55);
        let anon = r("4242:4343").unwrap();
        assert_eq!((anon.uid, anon.gid), (4242, 4343));
        assert_eq!(resolve_user(d.path(), None).unwrap().home, "/root");
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let d = rootfs();
        for (spec, want) in [
            ("nobody", "\"nobody\""),
            ("app:staff", "\"staff\""),
            (":0", "empty"),
        ] {
            let e = resolve_user(d.path(), Some(spec)).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}
