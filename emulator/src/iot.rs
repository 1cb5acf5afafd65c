// SPDX-License-Identifier: MPL-2.0

//! The AWS IoT credentials provider endpoint (`--iot-listen`): what a device with an X.509 certificate calls to
//! get temporary AWS credentials, and what kvssink's `iot-certificate` uses.
//!
//! - HTTPS only, and a client certificate signed by the `--iot-client-ca` is required: a connection without
//!   one, or with one another CA signed, fails in the TLS handshake, as the real endpoint refuses it. X.509
//!   version 1 certificates are taken as well as version 3 ones: AWS IoT's requirements for device certificates
//!   name signature algorithms, not a version, and its own instructions for a certificate signed by your CA
//!   (`openssl x509 -req` without extensions) make a v1 certificate with OpenSSL 3.0. webpki, which rustls
//!   verifies with, reads only v3 certificates, so [`DeviceCertVerifier`] checks v1 ones itself.
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
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::WebPkiSupportedAlgorithms;
use tokio_rustls::rustls::pki_types::{SubjectPublicKeyInfoDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, rustls};
use x509_parser::prelude::{ASN1Time, X509Certificate, X509Version, parse_x509_certificate};

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
    let unreadable = |e: &dyn std::fmt::Display| {
        format!(
            "cannot read the client CA {}: {e}",
            config.client_ca.display()
        )
    };
    let cas = CertificateDer::pem_file_iter(&config.client_ca)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in &cas {
        roots.add(ca.clone()).map_err(|e| {
            format!(
                "the client CA {} is unusable: {e}",
                config.client_ca.display()
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client certificate verification: {e}"))?;
    let verifier = Arc::new(DeviceCertVerifier {
        webpki,
        cas,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS configuration: {e}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Device certificates signed by a client CA, X.509 v1 ones included (see the module documentation): v3
/// certificates go through webpki; a v1 certificate must name a client CA as its issuer, carry that CA's
/// signature and be within its validity, and the handshake's signatures are checked against its public key.
/// A v1 certificate must be signed by a client CA itself (no intermediates).
#[derive(Debug)]
pub struct DeviceCertVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    /// The client CAs' certificates.
    cas: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl DeviceCertVerifier {
    /// `cert` parsed, when it is a v1 certificate; None for another version or what does not parse (webpki
    /// judges those).
    fn v1<'a>(cert: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
        let (_, parsed) = parse_x509_certificate(cert).ok()?;
        (parsed.version() == X509Version::V1).then_some(parsed)
    }

    /// The SubjectPublicKeyInfo of a v1 certificate.
    fn v1_key(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
        Self::v1(cert).map(|parsed| parsed.public_key().raw.to_vec())
    }

    fn verify_v1(&self, parsed: &X509Certificate<'_>, now: UnixTime) -> Result<(), TlsError> {
        let invalid = |error: CertificateError| TlsError::InvalidCertificate(error);
        let now = ASN1Time::from_timestamp(now.as_secs() as i64)
            .map_err(|_| invalid(CertificateError::BadEncoding))?;
        let validity = parsed.validity();
        if now < validity.not_before {
            return Err(invalid(CertificateError::NotValidYet));
        }
        if now > validity.not_after {
            return Err(invalid(CertificateError::Expired));
        }
        let issuer = self
            .cas
            .iter()
            .filter_map(|ca| parse_x509_certificate(ca).ok().map(|(_, ca)| ca))
            .find(|ca| ca.subject().as_raw() == parsed.issuer().as_raw())
            .ok_or(invalid(CertificateError::UnknownIssuer))?;
        let signed = self.signed_by(
            issuer.public_key().raw,
            self.algorithms.all,
            parsed.tbs_certificate.as_ref(),
            &parsed.signature_value.data,
        );
        signed
            .then_some(())
            .ok_or(invalid(CertificateError::BadSignature))
    }

    /// Whether `signature` over `message` verifies with the key `spki` under one of `algorithms`.
    fn signed_by(
        &self,
        spki: &[u8],
        algorithms: &[&dyn rustls::pki_types::SignatureVerificationAlgorithm],
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        let spki = SubjectPublicKeyInfoDer::from(spki);
        let Ok(key) = webpki::RawPublicKeyEntity::try_from(&spki) else {
            return false;
        };
        algorithms
            .iter()
            .any(|algorithm| key.verify_signature(*algorithm, message, signature).is_ok())
    }

    /// A handshake signature made with a v1 certificate's key.
    fn verify_v1_signature(
        &self,
        spki: &[u8],
        message: &[u8],
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algorithms = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map_or(&[][..], |(_, algorithms)| *algorithms);
        match self.signed_by(spki, algorithms, message, dss.signature()) {
            true => Ok(HandshakeSignatureValid::assertion()),
            false => Err(TlsError::InvalidCertificate(CertificateError::BadSignature)),
        }
    }
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        match Self::v1(end_entity) {
            Some(parsed) => self
                .verify_v1(&parsed, now)
                .map(|()| ClientCertVerified::assertion()),
            None => self
                .webpki
                .verify_client_cert(end_entity, intermediates, now),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        match Self::v1_key(cert) {
            Some(spki) => self.verify_v1_signature(&spki, message, dss),
            None => self.webpki.verify_tls12_signature(message, cert, dss),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        match Self::v1_key(cert) {
            Some(spki) => self.verify_v1_signature(&spki, message, dss),
            None => self.webpki.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
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
