//! `lode gc` on an S3-compatible store (moto_server on loopback): leases,
//! listings and last-modified times as S3 reports them.

mod oci_fixture;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cache_tiers::testing::MotoServer;
use oci_fixture::{Env, two_layer_image};

fn s3(env: &Env, moto: &MotoServer, args: &[&str]) -> serde_json::Value {
    let mut c: Command = env.cmd();
    c.env("LODE_STORE", "s3://lode-gc/pfx")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .args(args);
    let out = c.output().expect("running lode");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lode {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // A gc that pushes in progress deferred exits 75 (EX_TEMPFAIL).
    let deferred = v["deferred"] == true && out.status.code() == Some(75);
    assert!(
        out.status.success() || deferred,
        "lode {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

#[test]
fn gc_on_s3_collects_replaced_images_and_races_pushes_safely() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("lode-gc");
    let moto = Arc::new(moto);
    let env = Arc::new(Env::new());
    let images = env.dir.path().join("images");
    let refs: Vec<String> = (0..4u64)
        .map(|i| two_layer_image(&images.join(format!("i{i}")), 9, 90 + i))
        .collect();

    s3(&env, &moto, &["push", &refs[0], "--name", "a", "--json"]);
    s3(&env, &moto, &["push", &refs[1], "--name", "b", "--json"]);
    let before = s3(&env, &moto, &["inspect", "a", "--json"]);
    let own_a = before["distinct_chunks"].as_u64().unwrap()
        - before["sharing"]["shared_chunks"].as_u64().unwrap();
    assert!(own_a > 0);
    // Replacing "a" orphans the chunks only the old "a" named.
    s3(&env, &moto, &["push", &refs[2], "--name", "a", "--json"]);

    // Workers may still run the old "a": its chunks are retained (7d).
    let r = s3(&env, &moto, &["gc", "--delete", "--grace", "0s", "--json"]);
    assert_eq!(r["retired_versions"], 1, "{r}");
    assert_eq!(r["retained_chunks"], own_a, "{r}");
    assert_eq!(r["deleted"], 0, "{r}");
    let r = s3(&env, &moto, &["gc", "--json", "--retain", "0s"]);
    assert_eq!(r["manifests"], 2);
    assert_eq!(
        r["collectable"], 0,
        "young orphans are kept by the default grace"
    );
    assert_eq!(r["young_orphans"], own_a);
    let r = s3(
        &env,
        &moto,
        &[
            "gc", "--delete", "--grace", "0s", "--retain", "0s", "--json",
        ],
    );
    assert_eq!(r["deferred"], false);
    assert_eq!(r["deleted"], own_a);
    assert_eq!(r["retired_deleted"], 1);
    assert_eq!(r["missing_chunks"], 0);

    // Pushes that re-orphan the shared base race a gc loop with --grace 0s.
    let stop = Arc::new(AtomicBool::new(false));
    let gc = {
        let (env, moto, stop) = (env.clone(), moto.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut deleted = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = s3(
                    &env,
                    &moto,
                    &[
                        "gc", "--delete", "--grace", "0s", "--wait", "0s", "--retain", "0s",
                        "--json",
                    ],
                );
                assert_eq!(r["missing_chunks"], 0, "{r}");
                deleted += r["deleted"].as_u64().unwrap();
            }
            deleted
        })
    };
    for round in 0..2 {
        for (i, image) in refs.iter().enumerate() {
            // Alternate between two names so each push orphans the previous image's chunks.
            let name = if (round + i) % 2 == 0 { "a" } else { "b" };
            s3(&env, &moto, &["push", image, "--name", name, "--json"]);
            let r = s3(&env, &moto, &["gc", "--json"]);
            assert_eq!(r["missing_chunks"], 0, "after pushing {name}: {r}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let during = gc.join().expect("gc loop");
    let r = s3(
        &env,
        &moto,
        &[
            "gc", "--delete", "--grace", "0s", "--retain", "0s", "--json",
        ],
    );
    assert_eq!(r["missing_chunks"], 0);
    assert_eq!(r["collectable"], r["deleted"]);
    let r = s3(&env, &moto, &["gc", "--json"]);
    assert_eq!(r["chunks"], r["live_chunks"], "only live chunks remain");
    eprintln!("s3: gc deleted {during} chunks while pushes ran");
}
