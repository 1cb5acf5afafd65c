// SPDX-License-Identifier: MPL-2.0

//! The C++ kvssink's own credential sources, as `aws-config` credential providers:
//!
//! - [`FileCredentials`]: the C++ SDK's rotating credential file (`credential-path`): one line
//!   `CREDENTIALS <access key id> [<expiration>] <secret access key> [<session token>]`, the expiration as
//!   `YYYY-MM-DDTHH:MM:SSZ`. The file is read again whenever it changes (its modification time or size), and
//!   the credentials it gives expire at its expiration or after `rotation-period`, whichever comes first, so
//!   that the SDK asks again.
//!
//! - [`IotCredentials`]: the AWS IoT credentials provider (`iot-certificate`): `GET
//!   https://ENDPOINT/role-aliases/ALIAS/credentials` with the header `x-amzn-iot-thingname`, over TLS with the
//!   device's X.509 certificate and key, the server checked against `ca-path`. The answer's temporary
//!   credentials are kept until shortly before they expire (a quarter of their lifetime, at most 5 minutes).
//!
//! Written here because no AWS crate does either: the file format is the C++ producer SDK's, not the shared
//! `~/.aws/credentials` file that `aws-config` reads, and the IoT credentials endpoint is not an AWS SDK
//! service (it takes a client certificate, not a signature).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};

use super::error::with_causes;
use super::settings::{IotSettings, parse_endpoint};

/// What the C++ SDK's credential file must hold.
const FILE_USAGE: &str = "expected one line `CREDENTIALS <access key id> [<expiration \
                          YYYY-MM-DDTHH:MM:SSZ>] <secret access key> [<session token>]`";

/// Why the C++ SDK's credential file gives no credentials. Never holds its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialFileError {
    Empty,
    NotCredentials,
    /// How many fields follow `CREDENTIALS`.
    FieldCount(usize),
    /// The third field of five is not a time.
    BadExpiration,
    /// The expiration it gives (`YYYY-MM-DDTHH:MM:SSZ`) is past.
    Expired(String),
}

impl std::fmt::Display for CredentialFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialFileError::Empty => write!(f, "the file is empty: {FILE_USAGE}"),
            CredentialFileError::NotCredentials => {
                write!(f, "the file does not start with CREDENTIALS: {FILE_USAGE}")
            }
            CredentialFileError::FieldCount(n) => {
                write!(f, "{n} fields after CREDENTIALS: {FILE_USAGE}")
            }
            CredentialFileError::BadExpiration => write!(
                f,
                "the expiration (the third field) is not a YYYY-MM-DDTHH:MM:SSZ time: {FILE_USAGE}"
            ),
            CredentialFileError::Expired(when) => {
                write!(f, "the credentials in it expired at {when}")
            }
        }
    }
}

impl std::error::Error for CredentialFileError {}

/// Parses the C++ SDK's credential file. `now + period` bounds the expiry.
pub fn parse_credential_file(
    text: &str,
    now: SystemTime,
    period: Duration,
) -> Result<Credentials, CredentialFileError> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let expiration = |text: &str| {
        aws_smithy_types::DateTime::from_str(text, aws_smithy_types::date_time::Format::DateTime)
            .ok()
            .and_then(|t| SystemTime::try_from(t).ok())
    };
    let (key, expires, secret, token) = match fields.as_slice() {
        [] => return Err(CredentialFileError::Empty),
        [first, ..] if *first != "CREDENTIALS" => return Err(CredentialFileError::NotCredentials),
        ["CREDENTIALS", key, secret] => (*key, None, *secret, None),
        ["CREDENTIALS", key, when, secret] if expiration(when).is_some() => {
            (*key, expiration(when), *secret, None)
        }
        ["CREDENTIALS", key, secret, token] => (*key, None, *secret, Some(*token)),
        ["CREDENTIALS", key, when, secret, token] => match expiration(when) {
            Some(at) => (*key, Some(at), *secret, Some(*token)),
            None => return Err(CredentialFileError::BadExpiration),
        },
        fields => return Err(CredentialFileError::FieldCount(fields.len() - 1)),
    };
    if let Some(at) = expires
        && at <= now
    {
        let when = aws_smithy_types::DateTime::from(at)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default();
        return Err(CredentialFileError::Expired(when));
    }
    let limit = now + period.max(Duration::from_secs(60));
    let expiry = expires.map_or(limit, |at| at.min(limit));
    Ok(Credentials::new(
        key,
        secret,
        token.map(str::to_owned),
        Some(expiry),
        "credential-path",
    ))
}

/// A file's modification time and size: when either changes, the file is read again.
type FileStamp = (Option<SystemTime>, u64);

/// See the module documentation.
pub struct FileCredentials {
    path: PathBuf,
    period: Duration,
    /// The file's stamp when it was last read, and what it gave.
    cache: Mutex<Option<(FileStamp, Credentials)>>,
}

impl std::fmt::Debug for FileCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCredentials")
            .field("path", &self.path)
            .field("period", &self.period)
            .finish()
    }
}

impl FileCredentials {
    pub fn new(path: impl Into<PathBuf>, period: Duration) -> Self {
        FileCredentials {
            path: path.into(),
            period,
            cache: Mutex::new(None),
        }
    }

    fn load(&self) -> Result<Credentials, CredentialsError> {
        let path = self.path.display();
        let metadata = std::fs::metadata(&self.path)
            .map_err(|e| CredentialsError::not_loaded(format!("credential-path {path}: {e}")))?;
        let stamp = (metadata.modified().ok(), metadata.len());
        let now = SystemTime::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, credentials)) = cache.as_ref()
            && *seen == stamp
            && credentials.expiry().is_some_and(|at| at > now)
        {
            return Ok(credentials.clone());
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| CredentialsError::not_loaded(format!("credential-path {path}: {e}")))?;
        let credentials = parse_credential_file(&text, now, self.period).map_err(|why| {
            CredentialsError::invalid_configuration(format!("credential-path {path}: {why}"))
        })?;
        *cache = Some((stamp, credentials.clone()));
        Ok(credentials)
    }
}

impl ProvideCredentials for FileCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(self.load())
    }
}

/// Answers kept this long at most before their expiry, and for a quarter of their lifetime at least.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// Largest answer read from the endpoint.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why the IoT credentials endpoint gives no credentials, or its settings cannot be used. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IotError {
    /// The `endpoint` setting as given.
    NotAnEndpoint(String),
    /// A file named by a setting (`cert-path`, `key-path`, `ca-path`) cannot be read or parsed.
    File {
        setting: &'static str,
        path: String,
        cause: String,
    },
    /// A file named by a setting holds no PEM certificate.
    NoCertificate {
        setting: &'static str,
        path: String,
    },
    Tls(String),
    /// The certificate and key files do not go together (or rustls refuses the certificate).
    ClientCertificate(String),
    /// `endpoint` is "host:port" in the variants below.
    Connect {
        endpoint: String,
        cause: String,
    },
    ConnectTimeout {
        endpoint: String,
        after: Duration,
    },
    ServerName {
        host: String,
        cause: String,
    },
    Handshake {
        endpoint: String,
        cause: String,
    },
    /// The endpoint ended the connection before it answered.
    Refused {
        endpoint: String,
        cause: String,
    },
    Request(String),
    Read {
        endpoint: String,
        cause: String,
    },
    NoAnswer {
        endpoint: String,
        after: Duration,
    },
    Answer {
        endpoint: String,
        error: IotAnswerError,
    },
}

impl std::fmt::Display for IotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const AT: &str = "the IoT credentials endpoint";
        match self {
            IotError::NotAnEndpoint(endpoint) => write!(
                f,
                "endpoint {endpoint:?} is not HOST, HOST:PORT or an https:// URL"
            ),
            IotError::File {
                setting,
                path,
                cause,
            } => write!(f, "{setting} {path}: {cause}"),
            IotError::NoCertificate { setting, path } => {
                write!(f, "{setting} {path}: no PEM certificate in it")
            }
            IotError::Tls(cause) => write!(f, "TLS: {cause}"),
            IotError::ClientCertificate(cause) => write!(
                f,
                "cert-path and key-path do not make a client certificate: {cause}"
            ),
            IotError::Connect { endpoint, cause } => {
                write!(f, "cannot connect to {AT} {endpoint}: {cause}")
            }
            IotError::ConnectTimeout { endpoint, after } => {
                write!(f, "cannot connect to {AT} {endpoint} within {after:?}")
            }
            IotError::ServerName { host, cause } => {
                write!(f, "{host:?} is not a valid TLS name: {cause}")
            }
            IotError::Handshake { endpoint, cause } => {
                write!(f, "TLS with {AT} {endpoint} failed: {cause}")
            }
            IotError::Refused { endpoint, cause } => write!(
                f,
                "{AT} {endpoint} ended the connection: {cause} (a certificate it does not trust is \
                 refused this way: is cert-path a certificate registered with AWS IoT?)"
            ),
            IotError::Request(cause) => write!(f, "the request to {AT}: {cause}"),
            IotError::Read { endpoint, cause } => {
                write!(f, "reading the answer of {AT} {endpoint}: {cause}")
            }
            IotError::NoAnswer { endpoint, after } => {
                write!(f, "{AT} {endpoint} gave no answer within {after:?}")
            }
            IotError::Answer { endpoint, error } => write!(f, "{AT} {endpoint}: {error}"),
        }
    }
}

impl std::error::Error for IotError {}

/// What is wrong with an answer of the IoT credentials endpoint. Never holds its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IotAnswerError {
    /// Not 200: the status and the answer's `message` (or its first 200 bytes).
    Status {
        status: u16,
        message: String,
    },
    NoCredentials,
    MissingField(&'static str),
    BadExpiration(String),
}

impl std::fmt::Display for IotAnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IotAnswerError::Status { status, message } => write!(f, "HTTP {status}: {message}"),
            IotAnswerError::NoCredentials => {
                write!(f, "the answer has no \"credentials\" object")
            }
            IotAnswerError::MissingField(name) => {
                write!(f, "the answer's credentials have no {name}")
            }
            IotAnswerError::BadExpiration(text) => write!(
                f,
                "the answer's expiration {text:?} is not a YYYY-MM-DDTHH:MM:SSZ time"
            ),
        }
    }
}

impl std::error::Error for IotAnswerError {}

/// The device certificate, offered to the IoT endpoint whatever it asks.
#[derive(Debug)]
struct DeviceCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for DeviceCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A file named by an `iot-certificate` setting that cannot be used.
fn file_error(setting: &'static str, path: &str, cause: impl std::fmt::Display) -> IotError {
    IotError::File {
        setting,
        path: path.to_owned(),
        cause: cause.to_string(),
    }
}

/// See the module documentation.
pub struct IotCredentials {
    settings: IotSettings,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    /// The credentials and when to ask again.
    cached: tokio::sync::Mutex<Option<(Credentials, SystemTime)>>,
}

impl std::fmt::Debug for IotCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IotCredentials")
            .field("settings", &self.settings)
            .finish()
    }
}

impl IotCredentials {
    /// Reads the certificate, key and CA files: a missing or unusable one is an error naming it.
    pub fn new(settings: IotSettings) -> Result<IotCredentials, IotError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        // A host name (the C++ element puts https:// before it), or a URL.
        let url = match settings.endpoint.contains("://") {
            true => settings.endpoint.clone(),
            false => format!("https://{}", settings.endpoint),
        };
        let not_host = || IotError::NotAnEndpoint(settings.endpoint.clone());
        let (tls, host, port) = parse_endpoint(&url).map_err(|_| not_host())?;
        if !tls || url.trim_end_matches('/').splitn(4, '/').nth(3).is_some() {
            return Err(not_host());
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&settings.cert_path)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| file_error("cert-path", &settings.cert_path, e))?;
        if certs.is_empty() {
            return Err(IotError::NoCertificate {
                setting: "cert-path",
                path: settings.cert_path.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&settings.key_path)
            .map_err(|e| file_error("key-path", &settings.key_path, e))?;
        let mut roots = rustls::RootCertStore::empty();
        match &settings.ca_path {
            Some(ca_path) => {
                for cert in CertificateDer::pem_file_iter(ca_path)
                    .map_err(|e| file_error("ca-path", ca_path, e))?
                {
                    let cert = cert.map_err(|e| file_error("ca-path", ca_path, e))?;
                    roots
                        .add(cert)
                        .map_err(|e| file_error("ca-path", ca_path, e))?;
                }
                if roots.is_empty() {
                    return Err(IotError::NoCertificate {
                        setting: "ca-path",
                        path: ca_path.clone(),
                    });
                }
            }
            None => {
                let _ =
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| IotError::ClientCertificate(e.to_string()))?;
        let certified = rustls::sign::CertifiedKey::new(certs, signing_key);
        // A key that is not the certificate's is refused here. A certificate rustls cannot read (webpki reads
        // only X.509 v3, and AWS IoT takes v1 device certificates too) is otherwise sent as it is, for the
        // endpoint to judge, as the C++ kvssink (curl) does; its key is still checked: a certificate holds its
        // SubjectPublicKeyInfo verbatim.
        let mismatch = match certified.keys_match() {
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => true,
            Err(_) => certified.key.public_key().is_some_and(|spki| {
                let cert = certified.cert[0].as_ref();
                !cert
                    .windows(spki.len())
                    .any(|window| window == spki.as_ref())
            }),
            Ok(()) => false,
        };
        if mismatch {
            return Err(IotError::ClientCertificate(
                "the private key in key-path is not the one of the certificate in cert-path".into(),
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| IotError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(DeviceCertificate(Arc::new(certified))));
        Ok(IotCredentials {
            settings,
            host,
            port,
            tls: Arc::new(tls),
            cached: Default::default(),
        })
    }

    /// One call to the endpoint.
    async fn fetch(&self) -> Result<Credentials, IotError> {
        let (host, port) = (&self.host, self.port);
        let endpoint = format!("{host}:{port}");
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| IotError::Connect {
                    endpoint: endpoint.clone(),
                    cause: e.to_string(),
                })?;
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                IotError::ServerName {
                    host: host.clone(),
                    cause: e.to_string(),
                }
            })?;
            tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| IotError::Handshake {
                    endpoint: endpoint.clone(),
                    cause: e.to_string(),
                })
        };
        let stream = tokio::time::timeout(self.settings.connect_timeout, connect)
            .await
            .map_err(|_| IotError::ConnectTimeout {
                endpoint: endpoint.clone(),
                after: self.settings.connect_timeout,
            })??;
        let refused = |e: &dyn std::fmt::Display| IotError::Refused {
            endpoint: endpoint.clone(),
            cause: e.to_string(),
        };
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| refused(&e))?;
            let connection = tokio::spawn(connection);
            let authority = if port == 443 {
                host.clone()
            } else {
                format!("{host}:{port}")
            };
            let request = http::Request::get(format!(
                "/role-aliases/{}/credentials",
                url::form_urlencoded::byte_serialize(self.settings.role_alias.as_bytes())
                    .collect::<String>()
            ))
            .header(http::header::HOST, authority)
            .header("x-amzn-iot-thingname", &self.settings.thing_name)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("gst-plugin-kvs/", env!("CARGO_PKG_VERSION")),
            )
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| IotError::Request(e.to_string()))?;
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                // The connection's own error says why (a TLS alert when the certificate is refused).
                Err(e) => {
                    return Err(match connection.await {
                        Ok(Err(cause)) => refused(&with_causes(&cause)),
                        _ => refused(&with_causes(&e)),
                    });
                }
            };
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| IotError::Read {
                    endpoint: endpoint.clone(),
                    cause: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, IotError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.settings.completion_timeout, exchange)
            .await
            .map_err(|_| IotError::NoAnswer {
                endpoint: endpoint.clone(),
                after: self.settings.completion_timeout,
            })??;
        parse_iot_answer(status.as_u16(), &body)
            .map_err(|error| IotError::Answer { endpoint, error })
    }
}

/// The credentials in an answer of the IoT credentials endpoint, or why there are none (never its secrets).
pub fn parse_iot_answer(status: u16, body: &[u8]) -> Result<Credentials, IotAnswerError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if status != 200 {
        let message = json
            .as_ref()
            .and_then(|j| j.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        return Err(IotAnswerError::Status { status, message });
    }
    let credentials = json
        .as_ref()
        .and_then(|j| j.get("credentials"))
        .ok_or(IotAnswerError::NoCredentials)?;
    let field = |name: &'static str| {
        credentials
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .ok_or(IotAnswerError::MissingField(name))
    };
    let expiration = field("expiration")?;
    let expiry = aws_smithy_types::DateTime::from_str(
        expiration,
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()
    .and_then(|t| SystemTime::try_from(t).ok())
    .ok_or_else(|| IotAnswerError::BadExpiration(expiration.to_owned()))?;
    Ok(Credentials::new(
        field("accessKeyId")?,
        field("secretAccessKey")?,
        Some(field("sessionToken")?.to_owned()),
        Some(expiry),
        "iot-certificate",
    ))
}

impl ProvideCredentials for IotCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let mut cached = self.cached.lock().await;
            let now = SystemTime::now();
            if let Some((credentials, refresh_at)) = cached.as_ref()
                && now < *refresh_at
            {
                return Ok(credentials.clone());
            }
            let credentials = match self.fetch().await {
                Ok(credentials) => credentials,
                Err(why) => {
                    // The endpoint cannot be reached now: credentials not yet expired still serve (the next
                    // call asks again).
                    if let Some((credentials, _)) = cached.as_ref()
                        && credentials.expiry().is_some_and(|at| at > now)
                    {
                        return Ok(credentials.clone());
                    }
                    return Err(CredentialsError::provider_error(format!(
                        "iot-certificate: {why}"
                    )));
                }
            };
            let expiry = credentials.expiry().unwrap_or(now);
            let lifetime = expiry.duration_since(now).unwrap_or_default();
            let refresh_at = expiry - REFRESH_BEFORE_EXPIRY.min(lifetime / 4);
            *cached = Some((credentials.clone(), refresh_at));
            Ok(credentials)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn every_form_of_the_cpp_credential_file() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let short = parse_credential_file("CREDENTIALS AKID SECRET\n", now, HOUR).unwrap();
        assert_eq!(
            (short.access_key_id(), short.secret_access_key()),
            ("AKID", "SECRET")
        );
        assert_eq!(short.session_token(), None);
        assert_eq!(short.expiry(), Some(now + HOUR));

        // 2027-01-15T21:20:00Z is 1,800,000,000 + 48,000 s.
        let full = parse_credential_file(
            "CREDENTIALS AKID 2027-01-15T21:20:00Z SECRET TOKEN",
            now,
            20 * HOUR,
        )
        .unwrap();
        assert_eq!(full.session_token(), Some("TOKEN"));
        assert_eq!(full.expiry(), Some(now + Duration::from_secs(48_000)));
        // The rotation period bounds it.
        let bounded = parse_credential_file(
            "CREDENTIALS AKID 2027-01-15T21:20:00Z SECRET TOKEN",
            now,
            HOUR,
        )
        .unwrap();
        assert_eq!(bounded.expiry(), Some(now + HOUR));

        let four = parse_credential_file(
            "CREDENTIALS AKID 2027-01-15T21:20:00Z SECRET",
            now,
            20 * HOUR,
        )
        .unwrap();
        assert_eq!(
            (four.secret_access_key(), four.session_token()),
            ("SECRET", None)
        );
        let four = parse_credential_file("CREDENTIALS AKID SECRET TOKEN", now, HOUR).unwrap();
        assert_eq!(
            (four.secret_access_key(), four.session_token()),
            ("SECRET", Some("TOKEN"))
        );
    }

    #[test]
    fn a_bad_file_is_named_without_its_secrets() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let error = |text: &str| {
            parse_credential_file(text, now, HOUR)
                .unwrap_err()
                .to_string()
        };
        assert!(error("").starts_with("the file is empty"));
        assert!(
            error("[default]\naws_access_key_id = X")
                .starts_with("the file does not start with CREDENTIALS")
        );
        assert!(error("CREDENTIALS AKID").starts_with("1 fields after CREDENTIALS"));
        assert!(
            error("CREDENTIALS AKID tomorrow SECRET-X TOKEN-Y")
                .starts_with("the expiration (the third field)")
        );
        let expired = error("CREDENTIALS AKID 2020-01-01T00:00:00Z SECRET-X TOKEN-Y");
        assert_eq!(
            expired,
            "the credentials in it expired at 2020-01-01T00:00:00Z"
        );
        for text in [error("CREDENTIALS AKID tomorrow SECRET-X TOKEN-Y"), expired] {
            assert!(
                !text.contains("SECRET-X") && !text.contains("TOKEN-Y"),
                "{text}"
            );
        }
    }

    #[test]
    fn iot_answers_and_refusals() {
        let good = br#"{"credentials":{"accessKeyId":"ASIAX","secretAccessKey":"S3CR3T","sessionToken":"T0K3N","expiration":"2030-01-01T00:00:00Z"}}"#;
        let credentials = parse_iot_answer(200, good).unwrap();
        assert_eq!(
            (credentials.access_key_id(), credentials.session_token()),
            ("ASIAX", Some("T0K3N"))
        );
        assert_eq!(
            credentials.expiry(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000))
        );
        assert_eq!(
            parse_iot_answer(403, br#"{"message":"Access Denied"}"#)
                .unwrap_err()
                .to_string(),
            "HTTP 403: Access Denied"
        );
        assert_eq!(
            parse_iot_answer(502, b"<html>bad gateway</html>")
                .unwrap_err()
                .to_string(),
            "HTTP 502: <html>bad gateway</html>"
        );
        assert_eq!(
            parse_iot_answer(200, b"{}").unwrap_err().to_string(),
            "the answer has no \"credentials\" object"
        );
        let no_token = br#"{"credentials":{"accessKeyId":"ASIAX","secretAccessKey":"S3CR3T","expiration":"2030-01-01T00:00:00Z"}}"#;
        assert_eq!(
            parse_iot_answer(200, no_token).unwrap_err().to_string(),
            "the answer's credentials have no sessionToken"
        );
        let bad_time = br#"{"credentials":{"accessKeyId":"ASIAX","secretAccessKey":"S3CR3T","sessionToken":"T0K3N","expiration":"soon"}}"#;
        let error = parse_iot_answer(200, bad_time).unwrap_err();
        assert_eq!(error, IotAnswerError::BadExpiration("soon".into()));
        let error = error.to_string();
        assert_eq!(
            error,
            "the answer's expiration \"soon\" is not a YYYY-MM-DDTHH:MM:SSZ time"
        );
    }

    #[test]
    fn the_file_is_read_again_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("kvs-credential-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("credential");
        std::fs::write(&path, "CREDENTIALS FIRST SECRET1").unwrap();
        let provider = FileCredentials::new(&path, HOUR);
        assert_eq!(provider.load().unwrap().access_key_id(), "FIRST");
        std::fs::write(&path, "CREDENTIALS SECOND SECRET22").unwrap();
        assert_eq!(provider.load().unwrap().access_key_id(), "SECOND");
        std::fs::remove_file(&path).unwrap();
        let error = provider.load().unwrap_err();
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert!(
            cause.starts_with(&format!("credential-path {}: No such file", path.display())),
            "{cause}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
