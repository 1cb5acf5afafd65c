// SPDX-License-Identifier: MPL-2.0

//! The [`AwsContext`] built with `aws-config` from the elements' [`ConnectionSettings`]: credentials, region,
//! endpoint, CA, timeouts.
//!
//! Element properties override the default chain (environment, profiles, SSO, web identity, ECS task role,
//! IMDS).

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_http_client::tls;
use aws_smithy_types::timeout::TimeoutConfig;

use super::error::KvsError;
use super::settings::{ConnectionSettings, DEFAULT_REGION, Secret, control_plane_endpoint};

/// What the elements use to call KVS: the SDK configuration, the control-plane client and what PutMedia and
/// GetMedia need to sign and connect by themselves.
#[derive(Clone)]
pub struct AwsContext {
    pub region: String,
    pub credentials: SharedCredentialsProvider,
    pub kinesis_video: aws_sdk_kinesisvideo::Client,
    /// TLS for data-plane connections to an `https://` endpoint.
    pub tls: DataPlaneTls,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for AwsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsContext")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn read_ca_file(path: &str) -> Result<Vec<u8>, KvsError> {
    std::fs::read(path)
        .map_err(|e| KvsError::Config(format!("cannot read the CA file {path:?}: {e}")))
}

/// The system's root certificates, read once per process (reading them takes milliseconds).
static NATIVE_ROOTS: std::sync::LazyLock<Vec<rustls_pki_types::CertificateDer<'static>>> =
    std::sync::LazyLock::new(|| rustls_native_certs::load_native_certs().certs);

/// The TLS client configuration for the data plane: the system's roots plus the custom CA, certificates
/// always verified. The custom CA is read and checked when the context is made; the configuration itself is
/// built the first time an `https://` endpoint is used (a plain `http://` endpoint never pays for it).
#[derive(Clone)]
pub struct DataPlaneTls {
    custom: Arc<Vec<rustls_pki_types::CertificateDer<'static>>>,
    config: Arc<std::sync::OnceLock<Result<Arc<tokio_rustls::rustls::ClientConfig>, String>>>,
}

impl DataPlaneTls {
    pub(crate) fn new(ca_pem: Option<&[u8]>, ca_path: &str) -> Result<DataPlaneTls, KvsError> {
        use rustls_pki_types::pem::PemObject;
        let mut custom = Vec::new();
        if let Some(pem) = ca_pem {
            let mut check = tokio_rustls::rustls::RootCertStore::empty();
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    KvsError::Config(format!("the CA file {ca_path:?} is not PEM: {e}"))
                })?;
                check.add(cert.clone()).map_err(|e| {
                    KvsError::Config(format!(
                        "the CA file {ca_path:?} holds an unusable certificate: {e}"
                    ))
                })?;
                custom.push(cert);
            }
            if custom.is_empty() {
                return Err(KvsError::Config(format!(
                    "the CA file {ca_path:?} holds no PEM certificate"
                )));
            }
        }
        Ok(DataPlaneTls {
            custom: Arc::new(custom),
            config: Arc::default(),
        })
    }

    /// The client configuration, built on first use.
    pub fn config(&self) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, KvsError> {
        self.config
            .get_or_init(|| {
                let mut roots = tokio_rustls::rustls::RootCertStore::empty();
                // A system certificate rustls cannot use is skipped, as every rustls client does; the custom
                // ones were checked already.
                let _ = roots.add_parsable_certificates(NATIVE_ROOTS.iter().cloned());
                let _ = roots.add_parsable_certificates(self.custom.iter().cloned());
                let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
                tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|builder| {
                        Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
                    })
                    .map_err(|e| format!("TLS: {e}"))
            })
            .clone()
            .map_err(KvsError::Config)
    }
}

/// Contexts already loaded, by a hash of the settings they were loaded from (the most recent few).
static SHARED: std::sync::LazyLock<
    std::sync::Mutex<std::collections::VecDeque<(u64, AwsContext)>>,
> = std::sync::LazyLock::new(Default::default);
/// Distinct settings kept in [`SHARED`].
const SHARED_MAX: usize = 32;

/// A hash of everything a context is made of: the settings (secrets included, never stored), the endpoint the
/// environment gives, and the element.
fn settings_key(settings: &ConnectionSettings, element: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    element.hash(&mut hasher);
    settings.region.hash(&mut hasher);
    settings.access_key.hash(&mut hasher);
    settings
        .secret_access_key
        .as_ref()
        .map(Secret::expose)
        .hash(&mut hasher);
    settings
        .session_token
        .as_ref()
        .map(Secret::expose)
        .hash(&mut hasher);
    settings.role_arn.hash(&mut hasher);
    control_plane_endpoint(settings).hash(&mut hasher);
    settings.ca_file.hash(&mut hasher);
    settings.request_timeout.hash(&mut hasher);
    settings.connect_timeout.hash(&mut hasher);
    settings.credential_file.hash(&mut hasher);
    settings.iot.hash(&mut hasher);
    hasher.finish()
}

impl AwsContext {
    /// The context for these settings, shared by every element that has the same ones: one SDK client,
    /// credential provider and TLS configuration for them all, however many streams a process writes or reads
    /// (a context takes milliseconds and hundreds of kilobytes to make). Loaded (see [`load`](Self::load))
    /// the first time.
    pub async fn shared(
        settings: &ConnectionSettings,
        element: &'static str,
    ) -> Result<AwsContext, KvsError> {
        let key = settings_key(settings, element);
        let lock = || SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, ctx)) = lock().iter().find(|(k, _)| *k == key) {
            return Ok(ctx.clone());
        }
        let ctx = AwsContext::load(settings, element).await?;
        let mut shared = lock();
        if shared.len() == SHARED_MAX {
            shared.pop_front();
        }
        shared.push_back((key, ctx.clone()));
        Ok(ctx)
    }

    /// Loads the configuration and checks that credentials can be had, so that a missing or broken credential
    /// source is reported at start, naming the cause.
    pub async fn load(
        settings: &ConnectionSettings,
        element: &'static str,
    ) -> Result<AwsContext, KvsError> {
        let ca_pem = settings
            .ca_file
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(read_ca_file)
            .transpose()?;
        let ca_path = settings.ca_file.clone().unwrap_or_default();

        let mut trust = tls::TrustStore::default();
        if let Some(pem) = &ca_pem {
            trust = trust.with_pem_certificate(pem.clone());
        }
        let tls_context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| KvsError::Config(format!("TLS: {e}")))?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(tls_context)
            .build_https();

        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout.unwrap_or(settings.request_timeout))
            .operation_attempt_timeout(settings.request_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .timeout_config(timeouts)
            .app_name(
                aws_config::AppName::new(
                    element.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
                )
                .map_err(|e| KvsError::Config(format!("app name: {e}")))?,
            );
        if let Some(iot) = &settings.iot {
            let provider = super::credentials::IotCredentials::new(iot.clone())
                .map_err(|why| KvsError::Credentials(format!("iot-certificate: {why}")))?;
            loader = loader.credentials_provider(provider);
        } else {
            match (&settings.access_key, &settings.secret_access_key) {
                (Some(key), Some(secret)) if !key.is_empty() && !secret.expose().is_empty() => {
                    let token = settings
                        .session_token
                        .as_ref()
                        .map(|t| t.expose().to_owned())
                        .filter(|t| !t.is_empty());
                    loader = loader.credentials_provider(Credentials::new(
                        key.clone(),
                        secret.expose().to_owned(),
                        token,
                        None,
                        "element-properties",
                    ));
                }
                (Some(key), _) if !key.is_empty() => {
                    return Err(KvsError::Credentials(
                    "access-key is set but secret-access-key is not: set both, or neither to use the default chain"
                        .into(),
                ));
                }
                (_, Some(secret)) if !secret.expose().is_empty() => {
                    return Err(KvsError::Credentials(
                    "secret-access-key is set but access-key is not: set both, or neither to use the default chain"
                        .into(),
                ));
                }
                _ => {
                    // The C++ kvssink's order: keys from the environment before its credential file.
                    let env_keys =
                        std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|k| !k.is_empty());
                    if let Some((path, period)) =
                        settings.credential_file.as_ref().filter(|_| !env_keys)
                    {
                        loader = loader.credentials_provider(
                            super::credentials::FileCredentials::new(path, *period),
                        );
                    }
                }
            }
        }
        if let Some(endpoint) = control_plane_endpoint(settings) {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(KvsError::Config(format!(
                    "endpoint-uri {endpoint:?} is not an http:// or https:// URL"
                )));
            }
            loader = loader.endpoint_url(endpoint);
        }
        // The region property, else the loader's default chain (environment, profile, IMDS: built by the loader
        // so that IMDS uses the HTTP client above), else DEFAULT_REGION.
        if let Some(region) = settings.region.clone().filter(|r| !r.is_empty()) {
            loader = loader.region(aws_config::Region::new(region));
        }
        let mut sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
            sdk_config = sdk_config
                .to_builder()
                .region(aws_config::Region::from_static(DEFAULT_REGION))
                .build();
        }

        if let Some(role_arn) = settings.role_arn.clone().filter(|r| !r.is_empty()) {
            let provider = aws_config::sts::AssumeRoleProvider::builder(role_arn)
                .session_name(format!("gst-{element}"))
                .configure(&sdk_config)
                .build()
                .await;
            sdk_config = sdk_config
                .to_builder()
                .credentials_provider(SharedCredentialsProvider::new(provider))
                .build();
        }

        let region = sdk_config
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let credentials = sdk_config
            .credentials_provider()
            .ok_or_else(|| KvsError::Credentials("no credential provider is configured".into()))?;
        match tokio::time::timeout(settings.request_timeout, credentials.provide_credentials())
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if settings.iot.is_some() || settings.credential_file.is_some() => {
                return Err(KvsError::Credentials(describe_credentials_error(&e)));
            }
            Ok(Err(e)) => {
                return Err(KvsError::Credentials(format!(
                    "{} (set access-key and secret-access-key, the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                     environment variables, or an AWS profile)",
                    describe_credentials_error(&e)
                )));
            }
            Err(_) => {
                return Err(KvsError::Credentials(format!(
                    "the credential chain gave no answer within {:.1} s",
                    settings.request_timeout.as_secs_f64()
                )));
            }
        }
        let tls = DataPlaneTls::new(ca_pem.as_deref(), &ca_path)?;
        Ok(AwsContext {
            region,
            credentials,
            kinesis_video: aws_sdk_kinesisvideo::Client::new(&sdk_config),
            tls,
            request_timeout: settings.request_timeout,
            connect_timeout: settings.connect_timeout.unwrap_or(settings.request_timeout),
        })
    }

    /// The current credentials (refreshed by the provider when they expire).
    pub async fn credentials(&self) -> Result<Credentials, KvsError> {
        match tokio::time::timeout(self.request_timeout, self.credentials.provide_credentials())
            .await
        {
            Ok(Ok(credentials)) => Ok(credentials),
            Ok(Err(e)) => Err(KvsError::Credentials(describe_credentials_error(&e))),
            Err(_) => Err(KvsError::Credentials(
                "the credential provider gave no answer in time".into(),
            )),
        }
    }
}

/// The error and its sources on one line (the SDK's top-level messages alone are vague).
fn describe_credentials_error(
    error: &aws_credential_types::provider::error::CredentialsError,
) -> String {
    // The SDK's own words for the kind of failure ("an error occurred while loading credentials") say less
    // than the cause: with a cause, the cause leads.
    match std::error::Error::source(error) {
        Some(cause) => super::error::with_causes(cause),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let settings = ConnectionSettings {
            access_key: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some(Secret::new("wJalrXUtnFEMI/K7MDENG")),
            session_token: Some(Secret::new("IQoJb3JpZ2luX2VjEXAMPLETOKEN")),
            ..Default::default()
        };
        let text = format!("{settings:?}");
        assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
        assert!(!text.contains("IQoJb3JpZ2lu"), "{text}");
        assert!(text.contains("AKIDEXAMPLE"));
    }

    #[test]
    fn contexts_are_shared_only_between_identical_settings() {
        let settings = ConnectionSettings {
            access_key: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some(Secret::new("one")),
            region: Some("eu-west-1".into()),
            ..Default::default()
        };
        let same = settings.clone();
        let other_secret = ConnectionSettings {
            secret_access_key: Some(Secret::new("two")),
            ..settings.clone()
        };
        let other_region = ConnectionSettings {
            region: Some("us-east-1".into()),
            ..settings.clone()
        };
        assert_eq!(
            settings_key(&settings, "kvssink"),
            settings_key(&same, "kvssink")
        );
        assert_ne!(
            settings_key(&settings, "kvssink"),
            settings_key(&other_secret, "kvssink")
        );
        assert_ne!(
            settings_key(&settings, "kvssink"),
            settings_key(&other_region, "kvssink")
        );
        assert_ne!(
            settings_key(&settings, "kvssink"),
            settings_key(&settings, "kvssrc")
        );
    }

    #[test]
    fn the_endpoint_property_wins_and_loses_its_trailing_slash() {
        let settings = ConnectionSettings {
            endpoint_uri: Some("http://127.0.0.1:4567/".into()),
            ..Default::default()
        };
        assert_eq!(
            control_plane_endpoint(&settings).as_deref(),
            Some("http://127.0.0.1:4567")
        );
    }
}
