//! The object-store tier against an S3-compatible server (moto) on loopback,
//! with injected failures.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_tiers::testing::{MotoServer, TcpProxy, error_chain};
use cache_tiers::{Error, ObjectStoreTier, RetryPolicy, S3Config, Tier};

fn tier_at(endpoint: String, bucket: &str, retry: RetryPolicy) -> ObjectStoreTier {
    let cfg = S3Config::new(endpoint, bucket)
        .with_credentials("test", "test")
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(1));
    ObjectStoreTier::s3(&cfg, "chunks/")
        .unwrap()
        .with_name("l3")
        .with_retry(retry)
}

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(
        attempts,
        Duration::from_millis(20),
        Duration::from_millis(100),
    )
}

fn attempts_of(e: &Error) -> u32 {
    match e {
        Error::ObjectStore { attempts, .. } => *attempts,
        other => panic!("expected an object-store error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_then_restored_reads_resume_with_data_intact() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("lode");
    let proxy = TcpProxy::start(moto.addr()).await.unwrap();
    let t = tier_at(format!("http://{}", proxy.addr()), "lode", quick_retry(3));
    let keys: Vec<String> = (0..5).map(|i| format!("{i:064x}")).collect();
    for (i, k) in keys.iter().enumerate() {
        Tier::put(&t, k, Bytes::from(vec![i as u8; 1000 + i]))
            .await
            .unwrap();
    }
    // Upload only what is missing.
    let mut wanted = keys.clone();
    wanted.push("f".repeat(64));
    assert_eq!(t.missing(&wanted, 4).await.unwrap(), vec!["f".repeat(64)]);
    assert_eq!(t.list().await.unwrap().len(), 5);

    // Cut: gets fail after the configured attempts, naming the key.
    proxy.set_blocked(true);
    let e = Tier::get(&t, &keys[0]).await.unwrap_err();
    assert_eq!(attempts_of(&e), 3, "{e}");
    assert!(e.to_string().contains(&keys[0]), "{e}");

    // Restored: the same tier reads again, and the data is still there.
    proxy.set_blocked(false);
    for (i, k) in keys.iter().enumerate() {
        let v = Tier::get(&t, k)
            .await
            .unwrap()
            .expect("stored before the cut");
        assert_eq!(v.len(), 1000 + i);
    }

    // A cut shorter than the retry budget is invisible to the caller.
    let patient = tier_at(format!("http://{}", proxy.addr()), "lode", quick_retry(30));
    proxy.set_blocked(true);
    let restore = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.set_blocked(false);
        proxy
    });
    let t0 = Instant::now();
    let v = Tier::get(&patient, &keys[1]).await.unwrap().unwrap();
    assert_eq!(v.len(), 1001);
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "the get cannot have succeeded during the cut"
    );
    let _proxy = restore.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_client_errors_are_not() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("lode");
    let proxy = TcpProxy::start(moto.addr()).await.unwrap();
    let t = tier_at(format!("http://{}", proxy.addr()), "lode", quick_retry(4));
    let k = "a".repeat(64);
    Tier::put(&t, &k, Bytes::from_static(b"v")).await.unwrap();
    proxy.set_http_503(true);
    let e = Tier::get(&t, &k).await.unwrap_err();
    assert_eq!(attempts_of(&e), 4, "503 is transient: {e}");
    assert!(
        error_chain(&e).contains("503"),
        "the server's 503 must be what failed: {e}"
    );
    proxy.set_http_503(false);
    assert_eq!(Tier::get(&t, &k).await.unwrap().unwrap(), "v");

    // A missing bucket is a client error: reported at once, with the key.
    let wrong = tier_at(
        format!("http://{}", proxy.addr()),
        "no-such-bucket",
        quick_retry(4),
    );
    let e = Tier::put(&wrong, &k, Bytes::from_static(b"v"))
        .await
        .unwrap_err();
    assert_eq!(attempts_of(&e), 1, "{e}");
    assert!(e.to_string().contains(&k), "{e}");
    println!("permanent error as reported: {e}");
    // A read from it is an error too, not a silent miss.
    let e = Tier::get(&wrong, &k).await.unwrap_err();
    assert!(error_chain(&e).contains("NoSuchBucket"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_and_restarted() {
    let Some(mut moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("lode");
    let t = tier_at(moto.endpoint(), "lode", quick_retry(3));
    let k = "b".repeat(64);
    Tier::put(&t, &k, Bytes::from_static(b"before"))
        .await
        .unwrap();

    moto.stop();
    let e = Tier::get(&t, &k).await.unwrap_err();
    assert_eq!(attempts_of(&e), 3, "connection refused is transient: {e}");
    let e = Tier::put(&t, &k, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&k), "{e}");

    // moto keeps everything in memory, so a restarted server is empty: the
    // same tier instance must reconnect, see a clean miss (not an error),
    // and read what is stored again.
    moto.restart();
    moto.create_bucket("lode");
    assert_eq!(Tier::get(&t, &k).await.unwrap(), None);
    Tier::put(&t, &k, Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(Tier::get(&t, &k).await.unwrap().unwrap(), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_over_the_read_limit_is_refused_by_its_content_length() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("lode");
    let t = tier_at(moto.endpoint(), "lode", quick_retry(3)).with_max_object_size(1000);
    let (fits, over) = ("c".repeat(64), "d".repeat(64));
    Tier::put(&t, &fits, Bytes::from(vec![1u8; 1000]))
        .await
        .unwrap();
    Tier::put(&t, &over, Bytes::from(vec![2u8; 1001]))
        .await
        .unwrap();
    assert_eq!(Tier::get(&t, &fits).await.unwrap().unwrap().len(), 1000);
    let e = Tier::get(&t, &over).await.unwrap_err();
    assert!(
        matches!(&e, Error::ValueTooLarge { key, size: 1001, limit: 1000, .. } if *key == over),
        "{e:?}"
    );
}
