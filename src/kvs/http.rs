// SPDX-License-Identifier: MPL-2.0

//! Signed requests to the KVS data plane (PutMedia, GetMedia, ListFragments, GetMediaForFragmentList) over
//! hyper's HTTP/1.1 client, with rustls when the endpoint is `https://`.
//!
//! Why not the AWS SDK here: PutMedia has no SDK operation at all (its body is written while its response is
//! read), so the data plane needs this client anyway; using it for the reading APIs too gives them the same
//! connection handling, custom CA, timeouts and cancellation, and streams GetMedia bodies frame by frame
//! without a second HTTP stack. Requests are signed with `aws-sigv4` for the `kinesisvideo` service.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::config::AwsContext;
use super::error::KvsError;
use super::settings::parse_endpoint;

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection to a data endpoint: plain TCP, or TLS over it.
pub(crate) enum Connected {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// Connects (and shakes hands, for `https://`) within the connect timeout; returns the connection and the
/// `host` header's value.
pub(crate) async fn connect_to(
    ctx: &AwsContext,
    endpoint: &str,
    api: &'static str,
) -> Result<(Connected, String), KvsError> {
    let (tls, host, port) = parse_endpoint(endpoint)?;
    let timeout = ctx.connect_timeout;
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| KvsError::Timeout {
        api,
        after: timeout,
    })?
    .map_err(|e| KvsError::Network {
        api,
        message: format!("cannot connect to {host}:{port}: {e}"),
    })?;
    let _ = tcp.set_nodelay(true);
    let authority = if (tls && port == 443) || (!tls && port == 80) {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let authority = if host.contains(':') && authority != host {
        format!("[{host}]:{port}")
    } else {
        authority
    };
    if !tls {
        return Ok((Connected::Plain(tcp), authority));
    }
    let server_name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
        KvsError::Config(format!(
            "the data endpoint host {host:?} is not a valid TLS name: {e}"
        ))
    })?;
    let connector = tokio_rustls::TlsConnector::from(ctx.tls.config()?);
    let stream = tokio::time::timeout(timeout, connector.connect(server_name, tcp))
        .await
        .map_err(|_| KvsError::Timeout {
            api,
            after: timeout,
        })?
        .map_err(|e| KvsError::Network {
            api,
            message: format!("TLS with {host}:{port} failed: {e}"),
        })?;
    Ok((Connected::Tls(Box::new(stream)), authority))
}

async fn connect(
    ctx: &AwsContext,
    endpoint: &str,
    api: &'static str,
) -> Result<(Box<dyn Io>, String), KvsError> {
    let (connected, authority) = connect_to(ctx, endpoint, api).await?;
    let io: Box<dyn Io> = match connected {
        Connected::Plain(tcp) => Box::new(tcp),
        Connected::Tls(stream) => Box::new(*stream),
    };
    Ok((io, authority))
}

/// The error in a non-200 answer: the `x-amzn-ErrorType` header (up to its `:`) or the body's `__type`, and
/// the body's `Message`.
pub async fn error_from_response(
    response: hyper::Response<Incoming>,
    timeout: Duration,
    api: &'static str,
) -> KvsError {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(timeout, response.into_body().collect())
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    service_error(
        status,
        |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        },
        &body,
        api,
    )
}

/// The error in a non-200 answer, from its status, a header lookup (lower-case names) and its body.
pub fn service_error(
    status: u16,
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    api: &'static str,
) -> KvsError {
    let request_id = header("x-amzn-requestid");
    let header_code =
        header("x-amzn-errortype").map(|v| v.split(':').next().unwrap_or(&v).to_owned());
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let reason = response_reason(status);
    let code = header_code
        .or_else(|| {
            let kind = json.as_ref()?.get("__type")?.as_str()?;
            Some(kind.rsplit('#').next().unwrap_or(kind).to_owned())
        })
        .unwrap_or(reason);
    let message = match &json {
        Some(json) => json
            .get("Message")
            .or_else(|| json.get("message"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        // Not the service's JSON: a proxy's page or a load balancer's text, quoted so the user sees who
        // answered.
        None if !body.is_empty() => format!("not a service answer: \"{}\"", quote_page(body)),
        None => String::new(),
    };
    KvsError::Service {
        api,
        status,
        code,
        message,
        request_id,
    }
}

/// An HTTP status's reason phrase ("Forbidden"), or `HTTP<status>` for an unknown one.
fn response_reason(status: u16) -> String {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map_or_else(|| format!("HTTP{status}"), |r| r.replace(' ', ""))
}

/// The text of an error page: tags left out, white space collapsed, at most 200 characters.
fn quote_page(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(if c.is_control() { ' ' } else { c }),
            _ => {}
        }
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    let mut quoted = words.join(" ");
    if let Some((cut, _)) = quoted.char_indices().nth(200) {
        quoted.truncate(cut);
        quoted.push('…');
    }
    quoted
}

/// SigV4 headers for a request to `url` carrying `headers` (`host` among them): the given headers followed by
/// the ones signing adds (`x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token`, `authorization`).
pub fn sign_headers(
    credentials: &aws_credential_types::Credentials,
    region: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: SignableBody<'_>,
    time: SystemTime,
    api: &'static str,
) -> Result<Vec<(String, String)>, KvsError> {
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
        .map_err(|e| KvsError::Config(format!("cannot sign {api}: {e}")))?
        .into();
    let signable = SignableRequest::new("POST", url, headers.iter().copied(), body)
        .map_err(|e| KvsError::Config(format!("cannot sign {api}: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| KvsError::Config(format!("cannot sign {api}: {e}")))?
        .into_parts();
    let (added, _) = instructions.into_parts();
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    out.extend(
        added
            .into_iter()
            .map(|h| (h.name().to_owned(), h.value().to_owned())),
    );
    Ok(out)
}

/// Connects to `endpoint` and sends a POST to `path`, its headers made by `headers(authority)` (the
/// `host` value), signed. Returns the response once it is 200 (its body then streams), or the service's error.
/// Connecting and the response head are bounded by the request timeout.
pub async fn post<B>(
    ctx: &AwsContext,
    endpoint: &str,
    path: &str,
    api: &'static str,
    headers: impl FnOnce(
        &str,
        &aws_credential_types::Credentials,
    ) -> Result<Vec<(String, String)>, KvsError>,
    body: B,
) -> Result<hyper::Response<Incoming>, KvsError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let timeout = ctx.request_timeout;
    let (io, authority) = connect(ctx, endpoint, api).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| KvsError::Network {
            api,
            message: format!("HTTP handshake failed: {e}"),
        })?;
    tokio::spawn(async move {
        // Ends when the connection closes; errors show up on the request and response.
        let _ = connection.await;
    });
    let credentials = ctx.credentials().await?;
    let mut builder = hyper::Request::post(path);
    for (name, value) in headers(&authority, &credentials)? {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(body)
        .map_err(|e| KvsError::Config(format!("cannot build the {api} request: {e}")))?;
    let response = tokio::time::timeout(timeout, sender.send_request(request))
        .await
        .map_err(|_| KvsError::Timeout {
            api,
            after: timeout,
        })?
        .map_err(|e| KvsError::Network {
            api,
            message: format!("the request failed: {e}"),
        })?;
    if response.status() != hyper::StatusCode::OK {
        return Err(error_from_response(response, timeout, api).await);
    }
    Ok(response)
}

/// The signed headers of a POST of the JSON document `body` to `url` (the payload signed too).
pub(crate) fn json_headers(
    ctx: &AwsContext,
    credentials: &aws_credential_types::Credentials,
    url: &str,
    authority: &str,
    body: &[u8],
    api: &'static str,
) -> Result<Vec<(String, String)>, KvsError> {
    let headers = [
        ("host", authority),
        ("content-type", "application/json"),
        (
            "user-agent",
            concat!("gst-plugin-kvs/", env!("CARGO_PKG_VERSION")),
        ),
    ];
    sign_headers(
        credentials,
        &ctx.region,
        url,
        &headers,
        SignableBody::Bytes(body),
        SystemTime::now(),
        api,
    )
}

/// A signed POST of a JSON document (the payload signed too); returns the streaming response body.
pub async fn post_json(
    ctx: &AwsContext,
    endpoint: &str,
    path: &str,
    api: &'static str,
    json: &serde_json::Value,
) -> Result<Incoming, KvsError> {
    let body = Bytes::from(json.to_string());
    let url = format!("{endpoint}{path}");
    let signed_body = body.clone();
    let headers = move |authority: &str, credentials: &aws_credential_types::Credentials| {
        json_headers(ctx, credentials, &url, authority, &signed_body, api)
    };
    Ok(post(ctx, endpoint, path, api, headers, Full::new(body))
        .await?
        .into_body())
}

/// Reads a whole (small) response body, bounded by the request timeout.
pub async fn read_all(
    body: Incoming,
    timeout: Duration,
    api: &'static str,
) -> Result<Bytes, KvsError> {
    tokio::time::timeout(timeout, body.collect())
        .await
        .map_err(|_| KvsError::Timeout {
            api,
            after: timeout,
        })?
        .map(|c| c.to_bytes())
        .map_err(|e| KvsError::Network {
            api,
            message: format!("reading the answer failed: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_are_quoted_as_text() {
        assert_eq!(
            quote_page(b"<html><head><title>502 Bad Gateway</title></head>\n<body><h1>Bad   Gateway</h1></body></html>"),
            "502 Bad Gateway Bad Gateway"
        );
        assert_eq!(quote_page("x".repeat(300).as_bytes()).chars().count(), 201);
        assert_eq!(response_reason(403), "Forbidden");
        assert_eq!(response_reason(599), "HTTP599");
    }
}
