//! Opening a PutMedia connection: one long-lived chunked POST, SigV4-signed with `aws-sigv4`, over HTTP/1.1
//! (TLS with rustls when the data endpoint is `https://`).
//!
//! PutMedia has no operation in the AWS SDKs (the service models leave it out), so the request is made here
//! with hyper's low-level client: the body is fed from a channel while the response (the ACK stream) is read
//! at the same time, which a request/response client cannot do. The payload is signed as
//! `UNSIGNED-PAYLOAD`, as a body that is not known in advance must be.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::config::AwsContext;
use super::error::KvsError;

const API: &str = "PutMedia";

/// The request body: chunks from a channel.
pub type UploadBody = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// What a PutMedia request says about the stream.
#[derive(Debug, Clone)]
pub struct PutMediaRequest {
    /// `scheme://host[:port]` from GetDataEndpoint(PUT_MEDIA).
    pub endpoint: String,
    pub stream_name: String,
    /// `x-amzn-producer-start-timestamp`, milliseconds since the epoch.
    pub producer_start_ms: u64,
    /// `x-amzn-fragment-acknowledgment-required`.
    pub acks: bool,
}

/// An open PutMedia connection: write the body through `body`, read ACK bytes from `acks`.
pub struct PutMediaConnection {
    /// Send body chunks; dropping it ends the body (the zero-length chunk).
    pub body: mpsc::Sender<Bytes>,
    pub acks: Incoming,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Splits `scheme://host[:port]` into (tls, host, port).
pub fn parse_endpoint(endpoint: &str) -> Result<(bool, String, u16), KvsError> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| KvsError::Config(format!("the data endpoint {endpoint:?} is not a URL: {e}")))?;
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

async fn connect(ctx: &AwsContext, endpoint: &str) -> Result<(Box<dyn Io>, String), KvsError> {
    let (tls, host, port) = parse_endpoint(endpoint)?;
    let timeout = ctx.request_timeout;
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| KvsError::Timeout { api: API, after: timeout })?
        .map_err(|e| KvsError::Network {
            api: API,
            message: format!("cannot connect to {host}:{port}: {e}"),
        })?;
    let _ = tcp.set_nodelay(true);
    let authority =
        if (tls && port == 443) || (!tls && port == 80) { host.clone() } else { format!("{host}:{port}") };
    let authority =
        if host.contains(':') && authority != host { format!("[{host}]:{port}") } else { authority };
    if !tls {
        return Ok((Box::new(tcp), authority));
    }
    let server_name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
        KvsError::Config(format!("the data endpoint host {host:?} is not a valid TLS name: {e}"))
    })?;
    let connector = tokio_rustls::TlsConnector::from(ctx.tls.clone());
    let stream = tokio::time::timeout(timeout, connector.connect(server_name, tcp))
        .await
        .map_err(|_| KvsError::Timeout { api: API, after: timeout })?
        .map_err(|e| KvsError::Network {
            api: API,
            message: format!("TLS with {host}:{port} failed: {e}"),
        })?;
    Ok((Box::new(stream), authority))
}

/// The headers of a signed PutMedia request, `host` first.
pub fn signed_headers(
    credentials: &aws_credential_types::Credentials,
    region: &str,
    authority: &str,
    endpoint: &str,
    request: &PutMediaRequest,
    time: SystemTime,
) -> Result<Vec<(String, String)>, KvsError> {
    let start = format!("{}.{:03}", request.producer_start_ms / 1000, request.producer_start_ms % 1000);
    let headers: Vec<(&str, &str)> = vec![
        ("host", authority),
        ("x-amzn-stream-name", &request.stream_name),
        ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
        ("x-amzn-producer-start-timestamp", &start),
        ("x-amzn-fragment-acknowledgment-required", if request.acks { "1" } else { "0" }),
        ("content-type", "video/x-matroska"),
        ("user-agent", concat!("gst-plugin-kvs/", env!("CARGO_PKG_VERSION"))),
    ];
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("kinesisvideo")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| KvsError::Config(format!("cannot sign PutMedia: {e}")))?
        .into();
    let url = format!("{endpoint}/putMedia");
    let signable =
        SignableRequest::new("POST", url.as_str(), headers.iter().copied(), SignableBody::UnsignedPayload)
            .map_err(|e| KvsError::Config(format!("cannot sign PutMedia: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| KvsError::Config(format!("cannot sign PutMedia: {e}")))?
        .into_parts();
    let (added, _) = instructions.into_parts();
    let mut out: Vec<(String, String)> =
        headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    out.extend(added.into_iter().map(|h| (h.name().to_owned(), h.value().to_owned())));
    Ok(out)
}

/// The error in a non-200 answer: the `x-amzn-ErrorType` header (up to its `:`) or the body's `__type`, and
/// the body's `Message`.
async fn error_from_response(response: hyper::Response<Incoming>, timeout: Duration) -> KvsError {
    let status = response.status().as_u16();
    let header_code = response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_owned());
    let body = tokio::time::timeout(timeout, response.into_body().collect())
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let code = header_code
        .or_else(|| {
            json.get("__type").and_then(|v| v.as_str()).map(|s| s.rsplit('#').next().unwrap_or(s).to_owned())
        })
        .unwrap_or_else(|| format!("HTTP{status}"));
    let message = json
        .get("Message")
        .or_else(|| json.get("message"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    KvsError::Service { api: API, status, code, message }
}

/// Connects, signs and sends the request head; returns once the service answered 200 (the ACK stream is then
/// open). Bounded by the request timeout.
pub async fn open(ctx: &AwsContext, request: &PutMediaRequest) -> Result<PutMediaConnection, KvsError> {
    let timeout = ctx.request_timeout;
    let (io, authority) = connect(ctx, &request.endpoint).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| KvsError::Network { api: API, message: format!("HTTP handshake failed: {e}") })?;
    tokio::spawn(async move {
        // Ends when the connection closes; errors show up on the request and response.
        let _ = connection.await;
    });
    let credentials = ctx.credentials().await?;
    let headers =
        signed_headers(&credentials, &ctx.region, &authority, &request.endpoint, request, SystemTime::now())?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    let body: UploadBody = StreamBody::new(Box::pin(stream));
    let mut builder = hyper::Request::post("/putMedia");
    for (name, value) in &headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let http_request = builder
        .body(body)
        .map_err(|e| KvsError::Config(format!("cannot build the PutMedia request: {e}")))?;
    let response = tokio::time::timeout(timeout, sender.send_request(http_request))
        .await
        .map_err(|_| KvsError::Timeout { api: API, after: timeout })?
        .map_err(|e| KvsError::Network { api: API, message: format!("the request failed: {e}") })?;
    if response.status() != hyper::StatusCode::OK {
        return Err(error_from_response(response, timeout).await);
    }
    Ok(PutMediaConnection { body: tx, acks: response.into_body() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(parse_endpoint("http://127.0.0.1:4567").unwrap(), (false, "127.0.0.1".into(), 4567));
        assert_eq!(
            parse_endpoint("https://s-1234abcd.kinesisvideo.us-west-2.amazonaws.com").unwrap(),
            (true, "s-1234abcd.kinesisvideo.us-west-2.amazonaws.com".into(), 443)
        );
        assert!(matches!(parse_endpoint("ftp://x"), Err(KvsError::Config(_))));
    }

    #[test]
    fn the_request_is_signed_for_kinesisvideo_with_an_unsigned_payload() {
        let credentials = aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let request = PutMediaRequest {
            endpoint: "http://127.0.0.1:4567".into(),
            stream_name: "cam1".into(),
            producer_start_ms: 1_700_000_000_005,
            acks: true,
        };
        let headers = signed_headers(
            &credentials,
            "us-west-2",
            "127.0.0.1:4567",
            &request.endpoint,
            &request,
            SystemTime::now(),
        )
        .unwrap();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("x-amzn-producer-start-timestamp"), Some("1700000000.005"));
        assert_eq!(get("x-amzn-fragment-timecode-type"), Some("ABSOLUTE"));
        assert_eq!(get("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        let authorization = get("authorization").unwrap();
        assert!(authorization.contains("/us-west-2/kinesisvideo/aws4_request"), "{authorization}");
        assert!(!authorization.contains("secret"));
    }
}
