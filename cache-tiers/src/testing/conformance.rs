//! The conformance suite: checks the [`Tier`] contract on any implementation.
//!
//! Call [`run`] from a test with a fresh tier, and [`run_errors`] with an
//! instance of the same tier that cannot work (its server stopped, its
//! directory replaced by a file, its nodes failing). Both panic with a
//! message naming the tier and the failed rule. A tier that cannot fail at
//! all (`MemoryTier`) has no broken instance and runs only [`run`].

use std::sync::Arc;

use bytes::Bytes;

use crate::Tier;

/// What the suite may expect of a tier.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Expectations {
    /// Whether every successful put must be readable afterwards (true for an
    /// authority or a cache large enough for the suite's ~3 MiB of values).
    pub keeps_everything: bool,
    /// Largest value the suite puts (at most 512 KiB are used).
    pub max_value: usize,
}

impl Default for Expectations {
    fn default() -> Self {
        Self {
            keeps_everything: true,
            max_value: 512 * 1024,
        }
    }
}

fn value(seed: u64, len: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    Bytes::from(v)
}

/// Checks the error rule of the contract ("errors say which tier failed and
/// carry the key") on `broken`, an instance that cannot do its job.
///
/// Runs get, put and remove of one key. Each may succeed where the tier's
/// contract allows it (a cache may report a miss, a remove of what is not
/// there may succeed), but at least one must fail, or `broken` is not broken
/// and the check panics. Every error must have [`Error::tier`] equal to the
/// tier's name, an [`Error::key`] that contains the key's storage name, and
/// a message that shows both.
///
/// [`Error::tier`]: crate::Error::tier
/// [`Error::key`]: crate::Error::key
pub async fn run_errors(broken: Arc<dyn Tier<String, Bytes>>, prefix: &str) {
    let name = broken.name().to_owned();
    let key = format!("{prefix}broken-key");
    let storage = crate::CacheKey::storage_name(&key).into_owned();
    let check = |op: &str, e: &crate::Error| {
        assert_eq!(
            e.tier(),
            Some(name.as_str()),
            "tier {name}: error of {op} must name the tier: {e}"
        );
        assert!(
            e.key().is_some_and(|k| k.contains(&storage)),
            "tier {name}: error of {op} must carry the key {storage:?}, has {:?}: {e}",
            e.key()
        );
        let text = e.to_string();
        assert!(
            text.contains(&name) && text.contains(&storage),
            "tier {name}: message of a {op} error must show the tier and the key: {text}"
        );
    };
    let mut failed = 0;
    if let Err(e) = broken.get(&key).await {
        check("get", &e);
        failed += 1;
    }
    if let Err(e) = broken.put(&key, value(7, 1000)).await {
        check("put", &e);
        failed += 1;
    }
    if let Err(e) = broken.remove(&key).await {
        check("remove", &e);
        failed += 1;
    }
    assert!(
        failed > 0,
        "tier {name}: the broken instance did not fail get, put or remove; the error rule was not checked"
    );
}

/// Runs every check against `tier`, using keys that start with `prefix`
/// (so several runs can share a server).
pub async fn run(tier: Arc<dyn Tier<String, Bytes>>, prefix: &str, exp: Expectations) {
    let name = tier.name().to_owned();
    assert!(!name.is_empty(), "a tier needs a name");
    let k = |s: &str| format!("{prefix}{s}");
    let check = |got: Option<Bytes>, want: &Bytes, what: &str| match got {
        Some(g) => assert!(
            g == want,
            "tier {name}: {what}: returned different bytes ({} vs {} bytes)",
            g.len(),
            want.len()
        ),
        None => assert!(
            !exp.keeps_everything,
            "tier {name}: {what}: missed a value it should keep"
        ),
    };

    // A miss is Ok(None).
    let absent = k("absent");
    match tier.get(&absent).await {
        Ok(None) => {}
        other => panic!("tier {name}: get of an absent key must be Ok(None), got {other:?}"),
    }

    // Round trips of several sizes, including empty and 512 KiB.
    let sizes = [0usize, 1, 2, 3, 1000, 4097, 65_537, 512 * 1024];
    for (i, &len) in sizes.iter().enumerate() {
        if len > exp.max_value {
            continue;
        }
        let key = k(&format!("size-{len}"));
        let v = value(i as u64, len);
        tier.put(&key, v.clone())
            .await
            .unwrap_or_else(|e| panic!("tier {name}: put of {len} bytes failed: {e}"));
        let got = tier
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("tier {name}: get of {len} bytes failed: {e}"));
        check(got, &v, &format!("round trip of {len} bytes"));
    }

    // Put is idempotent.
    let key = k("idempotent");
    let v = value(99, 3000);
    for _ in 0..3 {
        tier.put(&key, v.clone())
            .await
            .unwrap_or_else(|e| panic!("tier {name}: repeated put failed: {e}"));
    }
    check(
        tier.get(&key)
            .await
            .unwrap_or_else(|e| panic!("tier {name}: get failed: {e}")),
        &v,
        "after repeated puts",
    );

    // Remove, and remove of an absent key.
    tier.remove(&key)
        .await
        .unwrap_or_else(|e| panic!("tier {name}: remove failed: {e}"));
    assert!(
        matches!(tier.get(&key).await, Ok(None)),
        "tier {name}: get after remove must miss"
    );
    tier.remove(&key)
        .await
        .unwrap_or_else(|e| panic!("tier {name}: remove of an absent key must succeed: {e}"));

    // Keys that are not plain names: spaces, slashes, unicode, long.
    for (i, odd) in [
        "a b",
        "dir/../x",
        "ключ",
        ".hidden",
        "x-plain-looking",
        &"long".repeat(100),
    ]
    .iter()
    .enumerate()
    {
        let key = k(odd);
        let v = value(1000 + i as u64, 100 + i);
        tier.put(&key, v.clone())
            .await
            .unwrap_or_else(|e| panic!("tier {name}: put of key {odd:?} failed: {e}"));
        check(
            tier.get(&key)
                .await
                .unwrap_or_else(|e| panic!("tier {name}: get of key {odd:?} failed: {e}")),
            &v,
            &format!("key {odd:?}"),
        );
    }
    // Similar keys do not alias each other.
    let (a, b) = (k("alias"), k("alias "));
    tier.put(&a, Bytes::from_static(b"A"))
        .await
        .unwrap_or_else(|e| panic!("tier {name}: put failed: {e}"));
    assert!(
        matches!(tier.get(&b).await, Ok(None)),
        "tier {name}: key {b:?} must not see the value of {a:?}"
    );

    // Concurrent puts and gets never return another key's bytes.
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let tier = Arc::clone(&tier);
        let prefix = prefix.to_owned();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..8u64 {
                let key = format!("{prefix}conc-{t}-{j}");
                let v = value(t * 100 + j, 2000 + (j as usize) * 10);
                tier.put(&key, v.clone())
                    .await
                    .unwrap_or_else(|e| panic!("tier {name}: concurrent put failed: {e}"));
                match tier.get(&key).await {
                    Ok(Some(g)) => assert!(
                        g == v,
                        "tier {name}: concurrent get returned different bytes"
                    ),
                    Ok(None) => {
                        assert!(!exp.keeps_everything, "tier {name}: concurrent get missed")
                    }
                    Err(e) => panic!("tier {name}: concurrent get failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await
            .unwrap_or_else(|e| panic!("tier {name}: concurrent task panicked: {e}"));
    }
}
