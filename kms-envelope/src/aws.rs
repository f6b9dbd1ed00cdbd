//! `AwsKms`: AWS KMS over its JSON protocol (feature `aws`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::{DataKey, EncryptionContext, Kms, KmsFuture, WrappedKey};

const ATTEMPTS: u32 = 3;

/// AWS credentials. `Debug` shows the access key id only.
#[derive(Clone)]
pub struct AwsCredentials {
    /// The access key id (not secret).
    pub access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl AwsCredentials {
    /// Credentials from their parts.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: session_token.map(Zeroizing::new),
        }
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where signing credentials come from.
#[derive(Clone)]
#[non_exhaustive]
pub enum CredentialsSource {
    /// Fixed credentials.
    Static(AwsCredentials),
    /// A credential chain of `object_store`, the one the S3 store uses:
    /// [`AwsConfig::from_env`] builds it from the environment exactly as
    /// `AmazonS3Builder::from_env` does, and an application that already has
    /// an `AmazonS3` can pass `s3.credentials().clone()` so both share one
    /// chain and one cache. It fetches and refreshes temporary credentials
    /// itself.
    Chain(object_store::aws::AwsCredentialProvider),
}

impl From<AwsCredentials> for CredentialsSource {
    fn from(c: AwsCredentials) -> Self {
        Self::Static(c)
    }
}

impl fmt::Debug for CredentialsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(c) => f.debug_tuple("Static").field(c).finish(),
            // object_store's providers print no secrets, but keep it short.
            Self::Chain(_) => f.write_str("Chain(object_store)"),
        }
    }
}

/// Where and as whom to reach AWS KMS.
#[derive(Clone, Debug)]
pub struct AwsConfig {
    /// The AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// The KMS endpoint URL.
    pub endpoint: String,
    /// Where the credentials to sign with come from.
    pub credentials: CredentialsSource,
}

impl AwsConfig {
    /// Reads region, endpoint and the credential chain from the standard AWS
    /// environment variables (see [`AwsKms`]).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// Like [`from_env`](Self::from_env), with the environment given as
    /// `(name, value)` pairs (for tests and embedding; parallel tests never
    /// touch the process-wide environment).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.into()))
            .filter(|(k, v)| k.starts_with("AWS_") && !v.is_empty())
            .collect();
        let var = |name: &str| vars.get(name).cloned();
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .ok_or_else(|| Error::AwsConfig {
                reason: "no region: set AWS_REGION (or AWS_DEFAULT_REGION)".to_owned(),
            })?;

        check_container_token_file(var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").as_deref())?;
        // The S3 store's chain: the same variables, read the same way as
        // `AmazonS3Builder::from_env` does. The bucket is never contacted.
        let mut builder = AmazonS3Builder::new();
        for (k, v) in &vars {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, v);
            }
        }
        let s3 = builder
            .with_region(&region)
            .with_bucket_name("lode-kms-credentials")
            .build()
            .map_err(|e| Error::AwsConfig {
                reason: format!("AWS credentials: {e}"),
            })?;
        let credentials = CredentialsSource::Chain(s3.credentials().clone());

        let ignore_configured = var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let configured = if ignore_configured {
            None
        } else {
            var("AWS_ENDPOINT_URL_KMS").or_else(|| var("AWS_ENDPOINT_URL"))
        };
        let endpoint = configured.unwrap_or_else(|| {
            let suffix = if region.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            format!("https://kms.{region}.{suffix}")
        });
        Ok(Self {
            region,
            endpoint,
            credentials,
        })
    }
}

/// object_store 0.14 puts the token file's bytes into an HTTP header as
/// they are and panics ("request must be valid") when they are not a valid
/// header value, e.g. with a trailing newline. Refuse such a file up front
/// with a clear error instead of letting a later request crash the process.
fn check_container_token_file(path: Option<&str>) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let token = match std::fs::read(path) {
        Ok(t) => Zeroizing::new(t),
        // Missing now: the chain reports it when it needs the file.
        Err(_) => return Ok(()),
    };
    if token.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Error::AwsConfig {
            reason: format!(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {path} holds control characters (a trailing newline?); the token must be one line without a line break"
            ),
        });
    }
    Ok(())
}

/// AWS KMS as a [`Kms`].
///
/// Requests are `POST /` with `Content-Type: application/x-amz-json-1.1` and
/// `X-Amz-Target: TrentService.<Operation>`, signed with SigV4 (`aws-sigv4`)
/// and sent with reqwest over rustls. Operations used: `GenerateDataKey`
/// (`KeySpec: AES_256`), `Encrypt`, `Decrypt` (with `KeyId` for
/// [`Kms::decrypt_with_key`]), all with `EncryptionContext`; plus `CreateKey`
/// and `RotateKeyOnDemand` for setup and tests.
///
/// # Configuration ([`AwsConfig::from_env`])
///
/// - Region: `AWS_REGION`, then `AWS_DEFAULT_REGION`.
/// - Credentials: `object_store`'s AWS credential chain, the same one the
///   S3 store (`cache-tiers`) uses, so S3 and KMS always sign as the same
///   identity: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+
///   `AWS_SESSION_TOKEN`), then web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`
///   and `AWS_ROLE_ARN`, optional `AWS_ROLE_SESSION_NAME`,
///   `AWS_ENDPOINT_URL_STS`; EKS IRSA), then container credentials (ECS
///   `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`; EKS Pod Identity
///   `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
///   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), then the EC2 instance
///   metadata service (IMDSv2; `AWS_METADATA_ENDPOINT`). Temporary
///   credentials are cached and refreshed by the chain. Profile files
///   (`AWS_PROFILE`, `~/.aws/config`, `~/.aws/credentials`), SSO and
///   `credential_process` are not read, by KMS as by S3: export the
///   credentials instead (`aws configure export-credentials --format env`).
/// - Endpoint: `AWS_ENDPOINT_URL_KMS`, then `AWS_ENDPOINT_URL` (both ignored
///   when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), else
///   `https://kms.REGION.amazonaws.com`.
///
/// Transient failures (connection errors, HTTP 5xx, throttling) are retried
/// up to three times with exponential backoff, re-signing every attempt.
///
/// Needs a tokio runtime (reqwest); [`crate::block_on`] provides one for
/// blocking callers.
#[derive(Debug)]
pub struct AwsKms {
    config: AwsConfig,
    url: reqwest::Url,
    host: String,
    client: reqwest::Client,
}

impl AwsKms {
    /// A client for the given configuration.
    pub fn new(config: AwsConfig) -> Result<Self> {
        let url = reqwest::Url::parse(&config.endpoint).map_err(|e| Error::AwsConfig {
            reason: format!("invalid endpoint URL {:?}: {e}", config.endpoint),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::AwsConfig {
                reason: format!("endpoint URL {:?} is not http(s)://HOST", config.endpoint),
            });
        }
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::AwsConfig {
                reason: format!("cannot build HTTP client: {e}"),
            })?;
        Ok(Self {
            config,
            url,
            host,
            client,
        })
    }

    /// A client configured from the environment ([`AwsConfig::from_env`]).
    pub fn from_env() -> Result<Self> {
        Self::new(AwsConfig::from_env()?)
    }

    /// The configuration in use.
    pub fn config(&self) -> &AwsConfig {
        &self.config
    }

    /// The access key id requests are signed with now (fetching temporary
    /// credentials first if needed). Not secret; for diagnostics.
    pub async fn access_key_id(&self) -> Result<String> {
        Ok(self.credentials().await?.access_key_id)
    }

    async fn credentials(&self) -> Result<AwsCredentials> {
        match &self.config.credentials {
            CredentialsSource::Static(c) => Ok(c.clone()),
            CredentialsSource::Chain(chain) => {
                let c = chain
                    .get_credential()
                    .await
                    .map_err(|e| Error::AwsCredentials {
                        source_name: "credential chain",
                        reason: "no credentials".into(),
                        source: Some(Box::new(e)),
                    })?;
                Ok(AwsCredentials::new(
                    c.key_id.clone(),
                    c.secret_key.clone(),
                    c.token.clone(),
                ))
            }
        }
    }

    /// Creates a symmetric encryption key (`CreateKey`) and returns its ARN.
    /// For setup and tests.
    pub async fn create_key(&self, description: &str) -> Result<String> {
        let op = "CreateKey";
        let out = self
            .call(
                op,
                json!({
                    "Description": description,
                    "KeySpec": "SYMMETRIC_DEFAULT",
                    "KeyUsage": "ENCRYPT_DECRYPT",
                }),
                None,
            )
            .await?;
        out.get("KeyMetadata")
            .and_then(|m| m.get("Arn"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| invalid(op, "no KeyMetadata.Arn"))
    }

    /// Rotates a key's material now (`RotateKeyOnDemand`); blobs wrapped
    /// under older material keep decrypting.
    pub async fn rotate_key_on_demand(&self, key_id: &str) -> Result<()> {
        self.call(
            "RotateKeyOnDemand",
            json!({ "KeyId": key_id }),
            Some(key_id),
        )
        .await
        .map(|_| ())
    }

    async fn call(&self, op: &'static str, body: Value, key_id: Option<&str>) -> Result<Value> {
        let body = serde_json::to_vec(&body).map_err(|e| invalid(op, &e.to_string()))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call_once(op, &body, key_id).await {
                Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// The headers of a signed request for `op` with `body`, signed at `time`.
    fn signed_headers(
        &self,
        creds: &AwsCredentials,
        op: &'static str,
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(String, String)>> {
        let target = format!("TrentService.{op}");
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("host", self.host.as_str()),
            ("x-amz-target", target.as_str()),
        ];
        let identity: Identity = Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.as_str(),
            creds.session_token.as_ref().map(|t| t.to_string()),
            None,
            "lode",
        )
        .into();
        let signing_error = |e: &dyn std::error::Error| Error::AwsConfig {
            reason: format!("cannot sign request: {e}"),
        };
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.config.region)
            .name("kms")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing_error(&e))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            self.url.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| signing_error(&e))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| signing_error(&e))?
            .into_parts();
        Ok(headers
            .iter()
            .copied()
            .chain(instructions.headers())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    async fn call_once(
        &self,
        op: &'static str,
        body: &[u8],
        key_id: Option<&str>,
    ) -> Result<Value> {
        let mut request = self.client.post(self.url.clone()).body(body.to_vec());
        let creds = self.credentials().await?;
        for (name, value) in self.signed_headers(&creds, op, body, SystemTime::now())? {
            request = request.header(name, value);
        }
        let transport = |source| Error::AwsTransport {
            operation: op,
            endpoint: self.config.endpoint.clone(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let header_code = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_owned());
        let bytes = response.bytes().await.map_err(transport)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| invalid(op, &e.to_string()));
        }
        let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let code = parsed
            .get("__type")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(header_code)
            .unwrap_or_default();
        let code = code.rsplit('#').next().unwrap_or_default().to_owned();
        let message = ["message", "Message"]
            .iter()
            .find_map(|k| parsed.get(*k).and_then(Value::as_str))
            .unwrap_or_default()
            .chars()
            .take(500)
            .collect();
        Err(service_error(op, status.as_u16(), code, message, key_id))
    }

    async fn unwrap(
        &self,
        key_id: Option<&str>,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>> {
        let op = "Decrypt";
        let mut body = json!({
            "CiphertextBlob": B64.encode(wrapped),
            "EncryptionContext": ctx,
        });
        if let Some(id) = key_id {
            body["KeyId"] = Value::from(id);
        }
        let out = self.call(op, body, key_id).await.map_err(|e| match e {
            // A blob naming an unknown key is a wrong key, like a wrong context.
            Error::KeyNotFound { .. } if key_id.is_none() => Error::CannotUnwrap { key_id: None },
            e => e,
        })?;
        decode_key(op, &out, "Plaintext")
    }
}

fn invalid(op: &'static str, reason: &str) -> Error {
    Error::AwsInvalidResponse {
        operation: op,
        reason: reason.to_owned(),
    }
}

fn is_transient(e: &Error) -> bool {
    match e {
        Error::AwsTransport { source, .. } => source.is_connect() || source.is_timeout(),
        Error::AwsService { status, code, .. } => {
            *status >= 500 || code.contains("Throttling") || code == "KMSInternalException"
        }
        _ => false,
    }
}

fn service_error(
    op: &'static str,
    status: u16,
    code: String,
    message: String,
    key_id: Option<&str>,
) -> Error {
    let unwrapping = op == "Decrypt";
    match code.as_str() {
        "NotFoundException" => Error::KeyNotFound {
            key_id: key_id.unwrap_or_default().to_owned(),
        },
        "InvalidCiphertextException" | "IncorrectKeyException" => Error::CannotUnwrap {
            key_id: key_id.map(str::to_owned),
        },
        // AWS answers AccessDenied when the blob's key is not one the caller
        // may use; from the caller's view that is a wrong key.
        "AccessDeniedException" if unwrapping => Error::CannotUnwrap {
            key_id: key_id.map(str::to_owned),
        },
        _ => Error::AwsService {
            operation: op,
            status,
            code,
            message,
        },
    }
}

fn decode_key(op: &'static str, out: &Value, field: &str) -> Result<Zeroizing<[u8; 32]>> {
    let text = out
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(op, &format!("no {field}")))?;
    let raw = Zeroizing::new(
        B64.decode(text)
            .map_err(|_| invalid(op, &format!("{field} is not base64")))?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if raw.len() != 32 {
        return Err(invalid(
            op,
            &format!("{field} is {} bytes, not 32", raw.len()),
        ));
    }
    key.copy_from_slice(&raw);
    Ok(key)
}

fn blob_and_key_id(op: &'static str, out: &Value) -> Result<(Vec<u8>, String)> {
    let blob = out
        .get("CiphertextBlob")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(op, "no CiphertextBlob"))?;
    let blob = B64
        .decode(blob)
        .map_err(|_| invalid(op, "CiphertextBlob is not base64"))?;
    let key_id = out
        .get("KeyId")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| invalid(op, "no KeyId"))?
        .to_owned();
    Ok((blob, key_id))
}

impl Kms for AwsKms {
    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, DataKey> {
        Box::pin(async move {
            let op = "GenerateDataKey";
            let out = self
                .call(
                    op,
                    json!({ "KeyId": key_id, "KeySpec": "AES_256", "EncryptionContext": ctx }),
                    Some(key_id),
                )
                .await?;
            let plaintext = decode_key(op, &out, "Plaintext")?;
            let (wrapped, resolved) = blob_and_key_id(op, &out)?;
            Ok(DataKey::new(plaintext, wrapped, resolved))
        })
    }

    fn encrypt<'a>(
        &'a self,
        key_id: &'a str,
        plaintext: &'a [u8; 32],
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, WrappedKey> {
        Box::pin(async move {
            let op = "Encrypt";
            let encoded = Zeroizing::new(B64.encode(plaintext));
            let out = self
                .call(
                    op,
                    json!({ "KeyId": key_id, "Plaintext": encoded.as_str(), "EncryptionContext": ctx }),
                    Some(key_id),
                )
                .await?;
            let (wrapped, key_id) = blob_and_key_id(op, &out)?;
            Ok(WrappedKey { wrapped, key_id })
        })
    }

    fn decrypt<'a>(
        &'a self,
        wrapped: &'a [u8],
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, Zeroizing<[u8; 32]>> {
        Box::pin(self.unwrap(None, wrapped, ctx))
    }

    fn decrypt_with_key<'a>(
        &'a self,
        key_id: &'a str,
        wrapped: &'a [u8],
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, Zeroizing<[u8; 32]>> {
        Box::pin(self.unwrap(Some(key_id), wrapped, ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn config_from_env_vars() {
        let c = AwsConfig::from_vars(vars(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "us-east-2"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRETSECRET"),
            ("AWS_SESSION_TOKEN", "TOKENTOKEN"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:2"),
        ]))
        .unwrap();
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.endpoint, "http://127.0.0.1:2");
        assert!(matches!(c.credentials, CredentialsSource::Chain(_)));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("SECRET") && !dbg.contains("TOKEN"), "{dbg}");
        let kms = AwsKms::new(c).unwrap();
        assert_eq!(crate::block_on(kms.access_key_id()).unwrap(), "AKID");

        let c = AwsConfig::from_vars(vars(&[
            ("AWS_DEFAULT_REGION", "cn-north-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ]))
        .unwrap();
        assert_eq!(c.region, "cn-north-1");
        assert_eq!(c.endpoint, "https://kms.cn-north-1.amazonaws.com.cn");
    }

    #[test]
    fn missing_region_or_half_credentials_are_clear_errors() {
        let e = AwsConfig::from_vars(vars(&[("AWS_ACCESS_KEY_ID", "A")])).unwrap_err();
        assert!(e.to_string().contains("no region"), "{e}");
        // object_store's chain refuses a key id without its secret.
        let e = AwsConfig::from_vars(vars(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "A"),
        ]))
        .unwrap_err();
        assert!(matches!(e, Error::AwsConfig { .. }), "{e:?}");
        assert!(e.to_string().to_lowercase().contains("secret"), "{e}");
    }

    #[test]
    fn a_container_token_file_with_a_newline_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "SECRET-TOKEN\n").unwrap();
        let path = file.to_str().unwrap();
        let with = |file: &str| {
            AwsConfig::from_vars(vars(&[
                ("AWS_REGION", "eu-west-1"),
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://127.0.0.1:1/creds",
                ),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", file),
            ]))
        };
        let e = with(path).unwrap_err();
        assert!(matches!(e, Error::AwsConfig { .. }), "{e:?}");
        assert!(e.to_string().contains(path), "{e}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        std::fs::write(&file, "SECRET-TOKEN").unwrap();
        assert!(with(path).is_ok());
    }

    /// Signs one request with our code and with botocore (Python, installed
    /// with moto) at the same instant and compares the `Authorization` headers.
    #[test]
    fn signature_matches_botocore() {
        let kms = AwsKms::new(AwsConfig {
            region: "eu-west-1".into(),
            endpoint: "http://127.0.0.1:4566".into(),
            credentials: AwsCredentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                Some("TOKEN/+=".into()),
            )
            .into(),
        })
        .unwrap();
        let body =
            br#"{"KeyId":"alias/x","KeySpec":"AES_256","EncryptionContext":{"lode:image":"a b"}}"#;
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let creds = crate::block_on(kms.credentials()).unwrap();
        let ours = kms
            .signed_headers(&creds, "GenerateDataKey", body, time)
            .unwrap();
        let auth = ours
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.clone())
            .unwrap();
        let script = r#"
import sys, datetime
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
fixed = datetime.datetime(2023, 11, 14, 22, 13, 20)
class Fixed(datetime.datetime):
    @classmethod
    def utcnow(cls): return fixed
    @classmethod
    def now(cls, tz=None): return fixed.replace(tzinfo=tz) if tz else fixed
botocore.auth.datetime.datetime = Fixed
body = sys.stdin.buffer.read()
req = AWSRequest(method="POST", url="http://127.0.0.1:4566/", data=body, headers={
    "Content-Type": "application/x-amz-json-1.1",
    "X-Amz-Target": "TrentService.GenerateDataKey"})
botocore.auth.SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "TOKEN/+="), "kms", "eu-west-1").add_auth(req)
print(req.headers["Authorization"])
"#;
        let child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let require = std::env::var("LODE_REQUIRE_SERVERS").is_ok_and(|v| v == "1");
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                assert!(!require, "python3 missing: {e}");
                println!("skipped: python3 not available ({e})");
                return;
            }
        };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(body).unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!require, "botocore signing failed: {err}");
            println!("skipped: botocore not available: {err}");
            return;
        }
        let theirs = String::from_utf8(out.stdout).unwrap();
        assert!(
            theirs.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/eu-west-1/kms/aws4_request"
            ),
            "{theirs}"
        );
        assert_eq!(auth, theirs.trim());
        assert!(
            auth.contains(
                "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
            ),
            "{auth}"
        );
    }

    #[test]
    fn service_errors_map_to_the_contract() {
        let m = |op, code: &str| service_error(op, 400, code.to_owned(), String::new(), Some("k"));
        assert!(matches!(
            m("Decrypt", "InvalidCiphertextException"),
            Error::CannotUnwrap { .. }
        ));
        assert!(matches!(
            m("Decrypt", "IncorrectKeyException"),
            Error::CannotUnwrap { .. }
        ));
        assert!(matches!(
            m("Decrypt", "AccessDeniedException"),
            Error::CannotUnwrap { .. }
        ));
        assert!(matches!(
            m("Encrypt", "AccessDeniedException"),
            Error::AwsService { .. }
        ));
        assert!(matches!(
            m("GenerateDataKey", "NotFoundException"),
            Error::KeyNotFound { .. }
        ));
        assert!(is_transient(&m("Decrypt", "ThrottlingException")));
        assert!(!is_transient(&m("Decrypt", "ValidationException")));
    }
}
