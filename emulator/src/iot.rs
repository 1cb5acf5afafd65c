// SPDX-License-Identifier: MPL-2.0

//! The AWS IoT credentials provider endpoint (`--iot-listen`): what a device with an X.509 certificate calls to
//! get temporary AWS credentials, and what kvssink's `iot-certificate` uses.
//!
//! - HTTPS only, and a client certificate signed by the `--iot-client-ca` is required: a connection without
//!   one, or with one another CA signed, fails in the TLS handshake, as the real endpoint refuses it.
//! - `GET /role-aliases/ALIAS/credentials` with the header `x-amzn-iot-thingname` answers
//!   `{"credentials": {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}}` (expiration as
//!   `YYYY-MM-DDTHH:MM:SSZ`, `--iot-credential-lifetime` seconds ahead). The keys are new for each call and,
//!   when the emulator checks signatures, accepted from then on until they expire (then
//!   `ExpiredTokenException`, as the service answers expired temporary credentials).
//! - An alias not in `--iot-role-alias` (when some are given) is a 404, a missing thing name a 400, both with a
//!   JSON `message`, as the real endpoint answers. The emulator keeps no registry of things: it does not check
//!   that the certificate is attached to the thing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, rustls};

use crate::sigv4::Verifier;

/// The IoT credentials endpoint's settings.
#[derive(Debug, Clone)]
pub struct IotConfig {
    pub listen: SocketAddr,
    /// The endpoint's own certificate (chain) and key, PEM.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA whose certificates devices present, PEM.
    pub client_ca: PathBuf,
    /// Role aliases answered; any when empty.
    pub role_aliases: Vec<String>,
    /// How long the credentials it hands out last.
    pub lifetime: Duration,
}

/// A TLS acceptor that requires a client certificate signed by the client CA.
pub fn acceptor(config: &IotConfig) -> Result<TlsAcceptor, String> {
    let (certs, key) = crate::tls::certificate(&config.cert, &config.key)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&config.client_ca).map_err(|e| {
        format!(
            "cannot read the client CA {}: {e}",
            config.client_ca.display()
        )
    })? {
        let cert = cert.map_err(|e| {
            format!(
                "cannot read the client CA {}: {e}",
                config.client_ca.display()
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "the client CA {} is unusable: {e}",
                config.client_ca.display()
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client certificate verification: {e}"))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS configuration: {e}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Serves the endpoint on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    config: Arc<IotConfig>,
    verifier: Option<Arc<Verifier>>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (acceptor, config, verifier) = (acceptor.clone(), config.clone(), verifier.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(err) => {
                    eprintln!("kvs-emulator: IoT TLS handshake with {peer} failed: {err}");
                    return;
                }
            };
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = answer(&config, verifier.as_deref(), &request);
                eprintln!(
                    "kvs-emulator: IoT {} {} {}",
                    request.method(),
                    request.uri().path(),
                    answer.status().as_u16()
                );
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn message(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        json!({ "message": text }).to_string(),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}

/// `n` random characters from `alphabet`.
fn random(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

fn answer(
    config: &IotConfig,
    verifier: Option<&Verifier>,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    let alias = match (request.method().as_str(), parts.as_slice()) {
        ("GET", ["role-aliases", alias, "credentials"]) => *alias,
        _ => return message(StatusCode::NOT_FOUND, "Not Found"),
    };
    let thing = request
        .headers()
        .get("x-amzn-iot-thingname")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if thing.is_empty() {
        return message(StatusCode::BAD_REQUEST, "Missing thingName");
    }
    if !config.role_aliases.is_empty() && !config.role_aliases.iter().any(|a| a == alias) {
        return message(StatusCode::NOT_FOUND, "Role alias does not exist");
    }
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const ANY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let access_key_id = format!("ASIA{}", random(UPPER, 16));
    let secret = random(ANY, 40);
    let token = random(ANY, 300);
    // Whole seconds, as the expiration is written.
    let expires = SystemTime::now() + config.lifetime;
    let expiration = chrono::DateTime::<chrono::Utc>::from(expires)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let expires = chrono::DateTime::parse_from_rfc3339(&expiration)
        .map(SystemTime::from)
        .unwrap_or(expires);
    if let Some(verifier) = verifier {
        verifier.accept(&access_key_id, &secret, Some(expires));
    }
    let body = json!({
        "credentials": {
            "accessKeyId": access_key_id,
            "secretAccessKey": secret,
            "sessionToken": token,
            "expiration": expiration,
        }
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}
