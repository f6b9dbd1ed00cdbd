//! `lode verify` with the real binary: exit codes, what it names, and the
//! heal loop (`--delete-bad`, then push again).

mod oci_fixture;

use oci_fixture::{Env, two_layer_image};

#[test]
fn verify_exits_1_naming_bad_chunks_and_their_images_and_the_next_push_heals() {
    let env = Env::new();
    let image = two_layer_image(&env.dir.path().join("img"), 1, 2);
    env.ok(&["push", &image, "--name", "app"]);
    let out = env.ok(&["verify", "--all"]);
    assert!(out.contains("all good"), "{out}");

    let chunks = env.manifest_chunks("app");
    let victim = &chunks[0];
    let path = env.chunk_path(victim);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();

    let r = env.run(&["verify", "app"]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("bad chunk {victim}")) && stdout.contains("used by app"),
        "{stdout}"
    );
    assert!(stderr.contains("1 bad chunk(s)"), "{stderr}");

    let r = env.run(&["verify", "--all", "--delete-bad", "--json"]);
    assert_eq!(r.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["bad"][0]["chunk"], victim.as_str(), "{report}");
    assert_eq!(report["bad"][0]["problem"], "wrong_size", "{report}");
    assert_eq!(report["bad"][0]["deleted"], true, "{report}");
    assert!(!path.exists());

    env.ok(&["push", &image, "--name", "app"]);
    env.ok(&["verify", "app"]);
    env.assert_complete("app");
}

#[test]
fn verify_needs_names_or_all() {
    let env = Env::new();
    let r = env.run(&["verify"]);
    assert_eq!(r.status.code(), Some(2), "clap's usage error");
    env.ok(&[
        "push",
        &two_layer_image(&env.dir.path().join("img"), 1, 2),
        "--name",
        "app",
    ]);
    let r = env.run(&["verify", "nope"]);
    assert_eq!(r.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("no image named \"nope\""), "{stderr}");
}
