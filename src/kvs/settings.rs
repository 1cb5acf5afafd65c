// SPDX-License-Identifier: MPL-2.0

//! What the elements' properties say about reaching KVS, as plain data: credentials, region, endpoints, CA,
//! timeouts, IoT credentials; and the endpoint parser. Nothing here talks to AWS: [`super::config`] builds the
//! SDK context from these settings.
//!
//! `CONTROL_PLANE_URI`, the variable the C++ producer SDK reads, sets the control-plane endpoint when no
//! `endpoint-uri` is given. Secrets are kept in [`Secret`], whose `Debug` never shows the value.

use std::time::Duration;

use super::error::KvsError;

/// The region used when neither a property nor the default chain gives one (the C++ kvssink's default).
pub const DEFAULT_REGION: &str = "us-west-2";

/// A secret string (secret access key, session token). Its `Debug` prints `"***"`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// How long one request may take unless the `request-timeout` property says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to reach KVS, as the element properties give it. Empty fields fall back on the default
/// chain.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub region: Option<String>,
    pub access_key: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub role_arn: Option<String>,
    pub endpoint_uri: Option<String>,
    pub ca_file: Option<String>,
    pub request_timeout: Duration,
    /// Bound on connecting (TCP and TLS); `request_timeout` when unset.
    pub connect_timeout: Option<Duration>,
    /// The C++ SDK's credential file (kvssink `credential-path`) and the longest its credentials are kept
    /// (`rotation-period`): used when neither the properties nor the environment give keys.
    pub credential_file: Option<(String, Duration)>,
    /// IoT credentials (kvssink `iot-certificate`): before every other source, as in the C++ kvssink.
    pub iot: Option<IotSettings>,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            region: None,
            access_key: None,
            secret_access_key: None,
            session_token: None,
            role_arn: None,
            endpoint_uri: None,
            ca_file: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: None,
            credential_file: None,
            iot: None,
        }
    }
}

/// The control-plane endpoint: the property, else `CONTROL_PLANE_URI`, else the SDK's regional default.
pub fn control_plane_endpoint(settings: &ConnectionSettings) -> Option<String> {
    settings
        .endpoint_uri
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::env::var("CONTROL_PLANE_URI")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .map(|s| s.trim_end_matches('/').to_owned())
}

/// What `iot-certificate` says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IotSettings {
    /// `host[:port]` of the account's IoT credentials endpoint (`https://` may be given, and is implied).
    pub endpoint: String,
    pub cert_path: String,
    pub key_path: String,
    /// The CA that signed the endpoint's certificate; the system's roots when absent.
    pub ca_path: Option<String>,
    pub role_alias: String,
    pub thing_name: String,
    pub connect_timeout: Duration,
    pub completion_timeout: Duration,
}

/// Splits `scheme://host[:port]` into (tls, host, port).
pub fn parse_endpoint(endpoint: &str) -> Result<(bool, String, u16), KvsError> {
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        KvsError::Config(format!("the data endpoint {endpoint:?} is not a URL: {e}"))
    })?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(KvsError::Config(format!(
                "the data endpoint {endpoint:?} is not http:// or https://"
            )));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| KvsError::Config(format!("the data endpoint {endpoint:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok((tls, host, port))
}
