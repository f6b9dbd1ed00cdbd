//! `lode gc` against a local-directory store, with the real binary.

mod oci_fixture;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oci_fixture::{Env, noise, sha256_hex, two_layer_image};

/// A push runs again and again while `gc --delete --grace 0s` loops. Every
/// pushed image reuses a base layer whose chunks were orphaned just before
/// (its previous manifest deleted), so pushes find "already stored" chunks
/// that gc wants to delete: the case age alone cannot protect.
#[test]
fn concurrent_push_and_gc_never_lose_a_chunk_of_a_finished_manifest() {
    let env = Arc::new(Env::new());
    let images = env.dir.path().join("images");
    let mut refs = Vec::new();
    for i in 0..6u64 {
        refs.push(two_layer_image(&images.join(format!("img{i}")), 1, 100 + i));
    }
    // Orphaned base chunks to start with.
    env.ok(&["push", &refs[0], "--name", "seed"]);
    std::fs::remove_file(env.manifest_path("seed")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let gc = {
        let env = env.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut runs, mut deferred, mut deleted) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let out = env.run(&["gc", "--delete", "--grace", "0s", "--wait", "0s", "--json"]);
                let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                runs += 1;
                if r["deferred"].as_bool().unwrap() {
                    assert_eq!(out.status.code(), Some(75), "a deferred gc exits 75");
                    deferred += 1;
                } else {
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                deleted += r["deleted"].as_u64().unwrap();
                assert_eq!(
                    r["missing_chunks"], 0,
                    "a manifest names a missing chunk: {r}"
                );
            }
            (runs, deferred, deleted)
        })
    };

    let mut relied = 0;
    let mut sha = std::collections::HashMap::new();
    for round in 0..3 {
        for (i, image) in refs.iter().enumerate() {
            let name = format!("img{i}");
            let s = env.json(&["push", image, "--name", &name, "--json"]);
            relied += s["already_stored"].as_u64().unwrap();
            sha.insert(
                name.clone(),
                s["image_sha256"].as_str().unwrap().to_string(),
            );
            // Finished: every chunk is there now, and stays there (checked at the end).
            env.assert_complete(&name);
            if round < 2 || i % 2 == 1 {
                // Orphan its chunks again for the next push to rely on.
                std::fs::remove_file(env.manifest_path(&name)).unwrap();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, deferred, deleted) = gc.join().expect("gc loop");
    // One more full collection with nothing running.
    let last = env.json(&["gc", "--delete", "--grace", "0s", "--json"]);
    assert!(!last["deferred"].as_bool().unwrap());
    let kept = ["img0", "img2", "img4"];
    for name in kept {
        env.assert_complete(name);
        // Readable end to end: the decrypted image is the one pushed.
        assert_eq!(env.pull_sha256(name), sha[name], "{name}");
    }
    let live: HashSet<String> = kept.iter().flat_map(|n| env.manifest_chunks(n)).collect();
    let stored: HashSet<String> = env.chunk_files().into_iter().collect();
    assert_eq!(stored, live, "after gc exactly the live chunks remain");
    eprintln!(
        "gc runs {runs} ({deferred} deferred by pushes), {deleted} chunks deleted during the pushes, \
         {relied} chunks the pushes found already stored"
    );
    // The race was really exercised: gc deleted orphans while pushes ran, and
    // pushes relied on chunks they did not upload.
    assert!(
        runs > deferred,
        "gc never got to run: {runs} runs, {deferred} deferred"
    );
    assert!(deleted > 0, "gc deleted nothing while pushes ran");
    assert!(relied > 0, "no push relied on an existing chunk");
}

/// Chunks with no manifest (a deleted image, a killed push, stray uploads)
/// are reported by a dry run and deleted by `--delete` once older than the
/// grace period; chunks of remaining manifests stay.
#[test]
fn orphans_are_collected_after_the_grace_period() {
    let env = Env::new();
    let images = env.dir.path().join("images");
    let a = two_layer_image(&images.join("a"), 7, 70);
    let b = two_layer_image(&images.join("b"), 7, 71);
    env.ok(&["push", &a, "--name", "a"]);
    env.ok(&["push", &b, "--name", "b"]);
    let live: HashSet<String> = env.manifest_chunks("b").into_iter().collect();

    // Stray chunks as an interrupted push leaves them: uploaded, never named.
    let mut strays = Vec::new();
    for i in 0..3 {
        let bytes = noise(900 + i, 1000 + i as usize);
        let hex = sha256_hex(&bytes);
        std::fs::write(env.chunk_path(&hex), bytes).unwrap();
        strays.push(hex);
    }
    // Image a deleted: its own chunks become orphans, the shared base does not.
    std::fs::remove_file(env.manifest_path("a")).unwrap();
    let only_a: Vec<String> = env
        .stored_chunks_except(&live)
        .into_iter()
        .filter(|c| !strays.contains(c))
        .collect();
    assert!(!only_a.is_empty(), "image a has chunks of its own");
    let mut orphans: Vec<String> = only_a.iter().chain(&strays).cloned().collect();
    orphans.sort();
    let orphan_bytes: u64 = orphans
        .iter()
        .map(|c| std::fs::metadata(env.chunk_path(c)).unwrap().len())
        .sum();

    // Young: kept by the default grace period, dry run or not.
    let r = env.json(&["gc", "--json"]);
    assert_eq!(r["mode"], "dry-run");
    assert_eq!(r["collectable"], 0);
    assert_eq!(r["young_orphans"], orphans.len() as u64);
    let r = env.json(&["gc", "--delete", "--json"]);
    assert_eq!(r["deleted"], 0);
    assert_eq!(env.chunk_files().len(), live.len() + orphans.len());

    // A short grace period passes.
    std::thread::sleep(Duration::from_millis(2100));
    let r = env.json(&["gc", "--grace", "2s", "--json"]);
    assert_eq!(r["collectable"], orphans.len() as u64);
    assert_eq!(r["collectable_bytes"], orphan_bytes);
    assert_eq!(r["deleted"], 0, "a dry run deletes nothing");
    let listed: Vec<String> = r["chunks_collectable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, orphans);
    assert_eq!(env.chunk_files().len(), live.len() + orphans.len());
    let text = env.ok(&["gc", "--grace", "2s"]);
    assert!(
        text.contains(&format!(
            "would delete {} chunks ({orphan_bytes} bytes)",
            orphans.len()
        )),
        "{text}"
    );

    let r = env.json(&["gc", "--delete", "--grace", "2s", "--json"]);
    assert_eq!(r["deleted"], orphans.len() as u64);
    assert_eq!(r["deleted_bytes"], orphan_bytes);
    let stored: HashSet<String> = env.chunk_files().into_iter().collect();
    assert_eq!(stored, live);
    env.assert_complete("b");
    let r = env.json(&["gc", "--delete", "--grace", "0s", "--json"]);
    assert_eq!(r["deleted"], 0);
    assert_eq!(r["live_chunks"], live.len() as u64);
}

/// A push killed mid-way leaves chunks and a lease. Its process is gone
/// from this host, so the lease is stale at once; the same lease from
/// another host defers `gc --delete` (exit 75) until it is 10 minutes old.
/// The killed push's chunks go once older than the grace period.
#[test]
fn a_killed_push_is_collected_once_its_lease_and_chunks_are_old() {
    let env = Env::new();
    let images = env.dir.path().join("images");
    let keep = two_layer_image(&images.join("keep"), 5, 50);
    env.ok(&["push", &keep, "--name", "keep"]);
    let live: HashSet<String> = env.manifest_chunks("keep").into_iter().collect();

    let big = oci_fixture::oci_image(
        &images.join("big"),
        &[vec![("big/blob", noise(77, 48 << 20))]],
    );
    let mut child = env
        .cmd()
        .args(["push", &big, "--name", "big", "--concurrency", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A kill can leave the local store's staging file (`NAME#N`) of an
    // unfinished upload: not a chunk name, so gc leaves it alone.
    let is_chunk = |c: &String| c.len() == 64 && !c.contains('#');
    let uploaded = || {
        env.chunk_files()
            .into_iter()
            .filter(|c| is_chunk(c) && !live.contains(c))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while uploaded() < 3 {
        assert!(Instant::now() < deadline, "the push uploaded nothing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the push finished too soon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !env.manifest_path("big").exists(),
        "killed before its manifest"
    );
    let staging: Vec<String> = env
        .chunk_files()
        .into_iter()
        .filter(|c| !is_chunk(c))
        .collect();
    let orphans: Vec<String> = env
        .chunk_files()
        .into_iter()
        .filter(|c| is_chunk(c) && !live.contains(c))
        .collect();
    assert!(orphans.len() >= 3);

    let locks = env.store().join("locks");
    let leases: Vec<_> = std::fs::read_dir(&locks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(leases.len(), 1, "one lease, the killed push's");
    let lease = &leases[0];

    // The killed push ran on this host, this boot: its lease is stale at
    // once. A dry run lists no push in progress, and a delete is not
    // deferred (the young chunks stay within the grace period).
    let r = env.json(&["gc", "--json"]);
    assert_eq!(r["pushes_in_progress"], serde_json::json!([]), "{r}");
    let r = env.json(&["gc", "--delete", "--grace", "30m", "--wait", "0s", "--json"]);
    assert_eq!(r["deferred"], false, "{r}");
    assert_eq!(r["deleted"], 0);

    // The same lease as written on another host (another boot id): its
    // writer may be alive, so it defers gc until it is 10 minutes old.
    let mut body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lease).unwrap()).unwrap();
    assert!(
        body["boot_id"].is_string(),
        "a lease names its boot: {body}"
    );
    body["boot_id"] = "00000000-0000-0000-0000-000000000000".into();
    std::fs::write(lease, serde_json::to_vec(&body).unwrap()).unwrap();
    let lease_name = lease.file_name().unwrap().to_string_lossy().into_owned();
    let r = env.json(&["gc", "--json"]);
    assert_eq!(
        r["pushes_in_progress"],
        serde_json::json!([lease_name]),
        "{r}"
    );
    let out = env.run(&["gc", "--delete", "--grace", "0s", "--wait", "0s"]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "a deferred gc exits 75 (EX_TEMPFAIL)"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gc deferred") && err.contains(&lease_name),
        "{err}"
    );
    assert_eq!(
        env.chunk_files().len(),
        live.len() + orphans.len() + staging.len(),
        "nothing was deleted"
    );

    // Eleven minutes later the lease is stale; the chunks are 11 min old too.
    env.age(lease, 660);
    for c in &orphans {
        env.age(&env.chunk_path(c), 660);
    }
    let r = env.json(&["gc", "--delete", "--grace", "30m", "--wait", "0s", "--json"]);
    assert_eq!(r["deferred"], false);
    assert_eq!(
        r["deleted"], 0,
        "11 min old chunks are within a 30 min grace"
    );
    let r = env.json(&["gc", "--delete", "--grace", "10m", "--wait", "0s", "--json"]);
    assert_eq!(r["deleted"], orphans.len() as u64);
    // object_store's local listing may hide staging files itself; either way
    // gc never deletes one.
    assert!(r["ignored_objects"].as_u64().unwrap() <= staging.len() as u64);
    for s in &staging {
        assert!(env.chunk_path(s).exists(), "gc deleted staging file {s}");
    }
    let stored: HashSet<String> = env.chunk_files().into_iter().filter(is_chunk).collect();
    assert_eq!(stored, live);
    env.assert_complete("keep");
}

/// A manifest that does not decode stops gc before it deletes anything.
#[test]
fn an_undecodable_manifest_stops_the_sweep() {
    let env = Env::new();
    let images = env.dir.path().join("images");
    let a = two_layer_image(&images.join("a"), 3, 30);
    env.ok(&["push", &a, "--name", "a"]);
    let chunks = env.manifest_chunks("a");
    std::fs::remove_file(env.manifest_path("a")).unwrap();
    std::fs::write(env.manifest_path("broken"), b"LODM not really").unwrap();

    let out = env.run(&["gc", "--delete", "--grace", "0s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("manifests/broken"), "{err}");
    assert!(err.contains("without deleting anything"), "{err}");
    assert_eq!(env.chunk_files().len(), chunks.len(), "nothing was deleted");
    // Dry runs refuse too: a report from a partial mark would mislead.
    assert!(!env.run(&["gc"]).status.success());

    std::fs::remove_file(env.manifest_path("broken")).unwrap();
    let r = env.json(&["gc", "--delete", "--grace", "0s", "--json"]);
    assert_eq!(
        r["deleted"],
        chunks.iter().collect::<HashSet<_>>().len() as u64
    );
}

/// A push waits while a live gc lease exists, and proceeds once it is gone.
#[test]
fn a_push_waits_for_a_gc_that_is_deleting() {
    let env = Arc::new(Env::new());
    let image = two_layer_image(&env.dir.path().join("images/a"), 4, 40);
    let locks = env.store().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let gc_lease = locks.join("gc-0123456789abcdef");
    std::fs::write(&gc_lease, b"{}").unwrap();

    let pusher = {
        let env = env.clone();
        std::thread::spawn(move || env.run(&["push", &image, "--name", "a"]))
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !pusher.is_finished(),
        "the push did not wait for the gc lease"
    );
    assert!(
        env.chunk_files().is_empty(),
        "the push touched chunks under a gc lease"
    );
    std::fs::remove_file(&gc_lease).unwrap();
    let out = pusher.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for a gc"));
    env.assert_complete("a");
    let left: Vec<_> = std::fs::read_dir(&locks).unwrap().collect();
    assert!(left.is_empty(), "the push removed its lease");
}
