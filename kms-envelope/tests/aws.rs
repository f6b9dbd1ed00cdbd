//! `AwsKms` against a real KMS-compatible server on loopback (`moto_server`
//! from PyPI `moto[server]`): the same conformance suite as `LocalKms`.
//!
//! Skipped with a message when `moto_server` is not installed, unless
//! `LODE_REQUIRE_SERVERS=1`, in which case it fails.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kms_envelope::testing::Suite;
use kms_envelope::{
    AwsConfig, AwsCredentials, AwsKms, CredentialsSource, EncryptionContext, Error, Kms, block_on,
};

/// A `moto_server` on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Option<Moto> {
        let require = std::env::var("LODE_REQUIRE_SERVERS").is_ok_and(|v| v == "1");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    !require,
                    "LODE_REQUIRE_SERVERS=1 but moto_server cannot start: {e}"
                );
                println!("skipped: moto_server not available ({e}); pip install 'moto[server]'");
                return None;
            }
        };
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    fn kms(&self) -> AwsKms {
        AwsKms::new(AwsConfig {
            region: "us-east-1".into(),
            endpoint: format!("http://127.0.0.1:{}", self.port),
            credentials: AwsCredentials::new(
                "testing",
                "testing-secret",
                Some("testing-token".into()),
            )
            .into(),
        })
        .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_suite_against_moto() {
    let Some(server) = Moto::start() else { return };
    let Some(other_server) = Moto::start() else {
        return;
    };
    let kms = server.kms();
    let foreign = other_server.kms();
    let key_a = kms.create_key("lode test key a").await.unwrap();
    let key_b = kms.create_key("lode test key b").await.unwrap();
    assert!(key_a.starts_with("arn:aws:kms:us-east-1:"), "{key_a}");
    let rotate_a =
        || -> kms_envelope::KmsFuture<'_, ()> { Box::pin(kms.rotate_key_on_demand(&key_a)) };
    Suite {
        kms: &kms,
        key_a: &key_a,
        key_b: &key_b,
        missing_key: "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
        foreign: Some(&foreign),
        rotate_a: &rotate_a,
    }
    .run()
    .await;
}

#[test]
fn blocking_use_and_arc_dyn_kms() {
    let Some(server) = Moto::start() else { return };
    let kms: std::sync::Arc<dyn Kms> = std::sync::Arc::new(server.kms());
    let aws = server.kms();
    let key = block_on(aws.create_key("blocking")).unwrap();
    let ctx = EncryptionContext::from([("lode:image".to_owned(), "app".to_owned())]);
    let dk = block_on(kms.generate_data_key(&key, &ctx)).unwrap();
    assert_eq!(dk.key_id, key);
    let back = block_on(kms.decrypt_with_key(&key, &dk.wrapped, &ctx)).unwrap();
    assert_eq!(*back, *dk.plaintext());
}

#[test]
fn unreachable_endpoint_is_a_transport_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kms = AwsKms::new(AwsConfig {
        region: "us-east-1".into(),
        endpoint: format!("http://127.0.0.1:{port}"),
        credentials: AwsCredentials::new("a", "b", None).into(),
    })
    .unwrap();
    let err = block_on(kms.generate_data_key("k", &EncryptionContext::new())).unwrap_err();
    assert!(
        matches!(
            err,
            Error::AwsTransport {
                operation: "GenerateDataKey",
                ..
            }
        ),
        "{err:?}"
    );
}

/// moto_server also serves the EC2 instance metadata paths (IMDSv2 token and
/// role credentials); the EKS Pod Identity endpoint answers in the same JSON
/// shape. Both are reached through object_store's credential chain, the one
/// the S3 store uses, configured from the standard variables.
#[tokio::test(flavor = "current_thread")]
async fn instance_metadata_and_container_credentials_through_the_shared_chain() {
    let Some(server) = Moto::start() else { return };
    let base = format!("http://127.0.0.1:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    // No trailing newline: object_store 0.14 puts the file as-is into the
    // header and panics on one ("request must be valid").
    std::fs::write(&token_file, "Bearer secret").unwrap();
    let token_file = token_file.to_str().unwrap().to_owned();
    let common = [
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ENDPOINT_URL_KMS", base.clone()),
    ];
    for extra in [
        vec![("AWS_METADATA_ENDPOINT", base.clone())],
        vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{base}/latest/meta-data/iam/security-credentials/default-role"),
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file.clone()),
        ],
    ] {
        let config = AwsConfig::from_vars(common.iter().cloned().chain(extra.iter().cloned()))
            .unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert!(
            matches!(config.credentials, CredentialsSource::Chain(_)),
            "{config:?}"
        );
        let kms = AwsKms::new(config).unwrap();
        assert_eq!(kms.access_key_id().await.unwrap(), "test-key", "{extra:?}");
        let key = kms.create_key("temporary credentials").await.unwrap();
        let ctx = EncryptionContext::from([("lode:image".to_owned(), "app".to_owned())]);
        let dk = kms.generate_data_key(&key, &ctx).await.unwrap();
        let back = kms.decrypt_with_key(&key, &dk.wrapped, &ctx).await.unwrap();
        assert_eq!(*back, *dk.plaintext());
    }
}

/// Web identity (EKS IRSA) comes before the instance metadata service in
/// the shared chain: with its variables set, credentials are fetched from
/// STS, never from the (working) metadata service. object_store sends the
/// STS request over HTTPS only, so against moto's plain-HTTP STS the fetch
/// fails; that it fails, and does not return moto's IMDS credentials, shows
/// which provider was chosen.
#[tokio::test(flavor = "current_thread")]
async fn web_identity_is_chosen_before_instance_metadata() {
    let Some(server) = Moto::start() else { return };
    let base = format!("http://127.0.0.1:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("web-identity-token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln").unwrap();
    let common = vec![
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ENDPOINT_URL_KMS", base.clone()),
        ("AWS_METADATA_ENDPOINT", base.clone()),
    ];
    // Control: without web identity the metadata service answers.
    let kms = AwsKms::new(AwsConfig::from_vars(common.clone()).unwrap()).unwrap();
    assert_eq!(kms.access_key_id().await.unwrap(), "test-key");

    let mut vars = common;
    vars.extend([
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.to_str().unwrap().to_owned(),
        ),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/lode".to_owned(),
        ),
        ("AWS_ENDPOINT_URL_STS", base.clone()),
    ]);
    let kms = AwsKms::new(AwsConfig::from_vars(vars).unwrap()).unwrap();
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(120), kms.access_key_id())
        .await
        .expect("the credential chain gave up within two minutes");
    match got {
        Err(e @ Error::AwsCredentials { .. }) => {
            println!(
                "web identity over http refused after {:?}: {e}",
                started.elapsed()
            );
        }
        other => panic!("expected a web identity (STS) failure, got {other:?}"),
    }
}

/// Configuration the way `AwsConfig::from_env` builds it, from the standard
/// variables. The environment is given as pairs to `from_vars` (what
/// `from_env` calls with `std::env::vars()`), so parallel tests never touch
/// the process-wide environment.
#[tokio::test(flavor = "current_thread")]
async fn config_from_standard_environment_variables_reaches_moto() {
    let Some(server) = Moto::start() else { return };
    let moto = format!("http://127.0.0.1:{}", server.port);
    let dead = {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("http://127.0.0.1:{port}")
    };
    let base = [
        ("AWS_ACCESS_KEY_ID", "env-key-id".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "env-secret".to_owned()),
        ("AWS_REGION", "eu-west-1".to_owned()),
    ];
    let cases = [
        // The service-specific variable wins over the general one.
        vec![
            ("AWS_ENDPOINT_URL_KMS", moto.clone()),
            ("AWS_ENDPOINT_URL", dead.clone()),
        ],
        vec![("AWS_ENDPOINT_URL", moto.clone())],
    ];
    for extra in cases {
        let vars: std::collections::HashMap<&str, String> =
            base.iter().cloned().chain(extra.iter().cloned()).collect();
        let config = AwsConfig::from_vars(vars.iter().map(|(k, v)| (*k, v.clone()))).unwrap();
        assert_eq!(config.endpoint, moto, "{extra:?}");
        assert_eq!(config.region, "eu-west-1");
        assert!(!format!("{config:?}").contains("env-secret"));
        let kms = AwsKms::new(config).unwrap();
        assert_eq!(kms.access_key_id().await.unwrap(), "env-key-id");
        // moto takes the region from the request's SigV4 scope.
        let key = kms.create_key("from the environment").await.unwrap();
        assert!(key.starts_with("arn:aws:kms:eu-west-1:"), "{key}");
        let ctx = EncryptionContext::from([("lode:image".to_owned(), "app".to_owned())]);
        let dk = kms.generate_data_key(&key, &ctx).await.unwrap();
        let back = kms.decrypt_with_key(&key, &dk.wrapped, &ctx).await.unwrap();
        assert_eq!(*back, *dk.plaintext());
    }
    // Without a region anywhere: a clear configuration error.
    let err = AwsConfig::from_vars([("AWS_ENDPOINT_URL", moto.clone())]).unwrap_err();
    assert!(
        matches!(err, Error::AwsConfig { ref reason } if reason.contains("AWS_REGION")),
        "{err}"
    );
}
