//! `S3Config::from_env` against moto on loopback: endpoint, region and
//! credentials come from the standard AWS environment variables.
//!
//! moto does not check signatures, so this proves the endpoint, plain-http
//! permission and bucket wiring from the environment; that the credentials
//! are the environment's is `object_store`'s documented behaviour.
//!
//! This file holds one test on purpose: it sets process-wide environment
//! variables, so no other test may run in this process at the same time.

use bytes::Bytes;
use cache_tiers::testing::MotoServer;
use cache_tiers::{ObjectStoreTier, S3Config, Tier};

#[test]
fn from_env_reads_endpoint_region_and_credentials_from_aws_variables() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("lode-env");
    for (k, v) in [
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ACCESS_KEY_ID", "env-key".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "env-secret".to_string()),
        ("AWS_SESSION_TOKEN", "env-token".to_string()),
        ("AWS_REGION", "eu-west-1".to_string()),
    ] {
        // SAFETY: the only test of this binary, and no other thread has
        // been started yet (the runtime is built below).
        unsafe { std::env::set_var(k, v) };
    }
    let config = S3Config::from_env("lode-env");
    assert!(!format!("{config:?}").contains("env-secret"));
    let tier = ObjectStoreTier::s3(&config, "chunks/").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let key = "from-env".to_string();
        tier.put(&key, Bytes::from_static(b"via the environment"))
            .await
            .unwrap();
        assert_eq!(
            tier.get(&key).await.unwrap().as_deref(),
            Some(&b"via the environment"[..])
        );
        // The object really is in moto's bucket: a tier configured without
        // the environment sees it.
        let explicit = S3Config::new(moto.endpoint(), "lode-env").with_credentials("x", "y");
        let direct = ObjectStoreTier::s3(&explicit, "chunks/").unwrap();
        assert_eq!(direct.head(&key).await.unwrap(), Some(19));
    });
}
