//! `lode inspect` with the real binary.

mod oci_fixture;

use std::collections::HashSet;

use oci_fixture::{Env, noise, oci_image_with_config, two_layer_image};

#[test]
fn inspect_reports_public_facts_sharing_and_keys() {
    let env = Env::new();
    let images = env.dir.path().join("images");
    let a = two_layer_image(&images.join("a"), 1, 10);
    let b = two_layer_image(&images.join("b"), 1, 11);
    let pushed = env.json(&["push", &a, "--name", "a", "--json"]);
    env.ok(&["push", &b, "--name", "b"]);

    // No KMS needed for the public facts.
    let mut cmd = env.cmd();
    cmd.env_remove("LODE_KMS").args(["inspect", "a", "--json"]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let chunks_a = env.manifest_chunks("a");
    let distinct_a: HashSet<&String> = chunks_a.iter().collect();
    let in_b: HashSet<String> = env.manifest_chunks("b").into_iter().collect();
    let shared = distinct_a.iter().filter(|c| in_b.contains(**c)).count() as u64;
    assert!(
        shared > 0 && shared < distinct_a.len() as u64,
        "base shared, top not"
    );

    assert_eq!(r["name"], "a");
    assert_eq!(r["source_ref"], a);
    assert!(r["source_digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(r["image_bytes"], pushed["image_bytes"]);
    assert_eq!(r["chunk_size"], 524_288);
    assert_eq!(r["chunks"], pushed["chunks_total"]);
    assert_eq!(r["holes"], pushed["holes"]);
    assert_eq!(r["present"], chunks_a.len() as u64);
    assert_eq!(r["distinct_chunks"], distinct_a.len() as u64);
    assert_eq!(r["salt_id"], 1);
    assert_eq!(r["format_version"], 2);
    assert!(r["tool_version"].as_str().unwrap().starts_with("lode "));
    assert_eq!(r["encryption_context"]["lode:image"], "a");
    assert!(!r["key_id"].as_str().unwrap().is_empty());
    let manifest_len = std::fs::metadata(env.manifest_path("a")).unwrap().len();
    assert_eq!(r["manifest_bytes"], manifest_len);
    assert_eq!(r["sharing"]["other_manifests"], 1);
    assert_eq!(r["sharing"]["shared_chunks"], shared);
    let share = r["sharing"]["share"].as_f64().unwrap();
    assert!((share - shared as f64 / distinct_a.len() as f64).abs() < 1e-9);
    assert!(r.get("keys").is_none());

    // --keys proves the KMS opens it, and prints no key material.
    let r = env.json(&["inspect", "a", "--keys", "--json"]);
    assert_eq!(r["keys"]["ok"], true);
    assert_eq!(r["keys"]["chunk_keys"], chunks_a.len() as u64);
    let text = env.ok(&["inspect", "a", "--keys"]);
    assert!(
        text.contains(&format!("keys: ok ({} chunk keys)", chunks_a.len())),
        "{text}"
    );
    // The only 64-hex-digit strings printed are the public digests.
    let public = env.json(&["inspect", "a", "--json"]);
    let allowed = [
        public["public_digest"].as_str().unwrap().to_string(),
        public["source_digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string(),
    ];
    let keys_json = env.ok(&["inspect", "a", "--keys", "--json"]);
    for out in [&text, &keys_json] {
        for token in out.split(|c: char| !c.is_ascii_hexdigit()) {
            if token.len() >= 64 {
                assert!(
                    allowed.contains(&token.to_string()),
                    "unexpected hex {token} in {out}"
                );
            }
        }
    }

    // A wrong keyring gives a clear error.
    let other = env.dir.path().join("other-keyring");
    env.ok(&["keyring", "new", other.to_str().unwrap()]);
    let out = env
        .cmd()
        .env("LODE_KMS", format!("local:{}", other.display()))
        .args(["inspect", "a", "--keys"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not open the keys of a"), "{err}");

    // Unknown image.
    let out = env.run(&["inspect", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image named \"nope\""));
}

#[test]
fn the_image_config_is_sealed_and_shown_only_with_keys() {
    let env = Env::new();
    let dir = env.dir.path().join("cfg");
    let image = oci_image_with_config(
        &dir,
        &[vec![("bin/app", noise(3, 4096))]],
        Some(
            r#"{"Entrypoint":["/bin/app"],"Cmd":["--port","8080"],"Env":["PATH=/bin","API_TOKEN=tops3cret"],"WorkingDir":"/srv","User":"1000:1000","StopSignal":"SIGINT","Labels":{"team":"storage"},"ExposedPorts":{"8080/tcp":{}}}"#,
        ),
    );
    env.ok(&["push", &image, "--name", "cfg"]);

    // The secret is sealed: not in the stored manifest, not without --keys.
    let stored = std::fs::read(env.manifest_path("cfg")).unwrap();
    assert!(!stored.windows(9).any(|w| w == b"tops3cret"));
    let public = env.ok(&["inspect", "cfg", "--json"]);
    let text = env.ok(&["inspect", "cfg"]);
    for out in [&public, &text] {
        assert!(!out.contains("tops3cret") && !out.contains("/srv"), "{out}");
    }

    let r = env.json(&["inspect", "cfg", "--keys", "--json"]);
    let c = &r["keys"]["config"];
    assert_eq!(c["entrypoint"], serde_json::json!(["/bin/app"]));
    assert_eq!(c["cmd"], serde_json::json!(["--port", "8080"]));
    assert_eq!(
        c["env"],
        serde_json::json!(["PATH=/bin", "API_TOKEN=tops3cret"])
    );
    assert_eq!(c["working_dir"], "/srv");
    assert_eq!(c["user"], "1000:1000");
    assert_eq!(c["stop_signal"], "SIGINT");
    assert_eq!(c["labels"]["team"], "storage");
    assert_eq!(c["exposed_ports"], serde_json::json!(["8080/tcp"]));
    assert_eq!(c["platform"], "linux/amd64");
    let text = env.ok(&["inspect", "cfg", "--keys"]);
    for want in [
        r#"entrypoint    ["/bin/app"]"#,
        "env           API_TOKEN=tops3cret",
        "workdir       /srv",
        "user          1000:1000",
        "platform      linux/amd64",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
}
