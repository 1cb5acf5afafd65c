// SPDX-License-Identifier: MPL-2.0

//! Opening a PutMedia connection: one long-lived chunked POST, SigV4-signed with `aws-sigv4`, over HTTP/1.1
//! (TLS with rustls when the data endpoint is `https://`).
//!
//! PutMedia has no operation in the AWS SDKs (the service models leave it out), so the request is made here
//! with hyper's low-level client: the body is fed from a channel while the response (the ACK stream) is read
//! at the same time, which a request/response client cannot do. The payload is signed as
//! `UNSIGNED-PAYLOAD`, as a body that is not known in advance must be.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use aws_sigv4::http_request::SignableBody;
use bytes::{Buf, Bytes};
use futures::Stream;
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;

use super::config::AwsContext;
use super::error::KvsError;
use super::http::sign_headers;

const API: &str = "PutMedia";

/// One HTTP chunk of the request body: whole frames, in the pieces they came in (written with one vectored
/// write, not copied).
#[derive(Debug, Default)]
pub struct BodyChunk {
    pieces: VecDeque<Bytes>,
    remaining: usize,
}

impl BodyChunk {
    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.remaining
    }
}

impl From<Vec<Bytes>> for BodyChunk {
    fn from(pieces: Vec<Bytes>) -> Self {
        let pieces: VecDeque<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = pieces.iter().map(Bytes::len).sum();
        BodyChunk { pieces, remaining }
    }
}

impl Buf for BodyChunk {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.pieces.front().map_or(&[], |p| p.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        self.remaining -= cnt.min(self.remaining);
        while cnt > 0 {
            let Some(front) = self.pieces.front_mut() else { return };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.pieces.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, piece) in dst.iter_mut().zip(self.pieces.iter()) {
            *slot = IoSlice::new(piece);
            n += 1;
        }
        n
    }
}

/// The request body: chunks from a channel.
pub type UploadBody =
    StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<BodyChunk>, std::io::Error>> + Send>>>;

/// The sending side of a PutMedia body. [`BodySender::finish`] ends the body with the last chunk: the request is
/// complete. Dropped without `finish`, it aborts the request: the connection closes without the last chunk, so
/// the service drops the fragment it was receiving instead of storing it cut short (a re-send on the next
/// connection then stores it whole, once).
pub struct BodySender {
    tx: mpsc::Sender<BodyChunk>,
    finished: Arc<AtomicBool>,
}

impl BodySender {
    /// Queues a chunk; an error when the connection is gone.
    pub async fn send(&self, chunk: BodyChunk) -> Result<(), mpsc::error::SendError<BodyChunk>> {
        self.tx.send(chunk).await
    }

    /// Ends the body cleanly once the queued chunks are written.
    pub fn finish(self) {
        self.finished.store(true, Ordering::SeqCst);
    }
}

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
    /// Put before kvssink's own user agent (the C++ kvssink's `user-agent`).
    pub user_agent: Option<String>,
}

/// An open PutMedia connection: write the body through `body`, read ACK bytes from `acks`.
pub struct PutMediaConnection {
    /// Send body chunks; `finish()` ends the body (the zero-length chunk), dropping it aborts the request.
    pub body: BodySender,
    pub acks: Incoming,
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
    let own = concat!("gst-plugin-kvs/", env!("CARGO_PKG_VERSION"));
    let user_agent = match &request.user_agent {
        Some(prefix) => format!("{prefix} {own}"),
        None => own.to_owned(),
    };
    let headers: Vec<(&str, &str)> = vec![
        ("host", authority),
        ("x-amzn-stream-name", &request.stream_name),
        ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
        ("x-amzn-producer-start-timestamp", &start),
        ("x-amzn-fragment-acknowledgment-required", if request.acks { "1" } else { "0" }),
        ("content-type", "video/x-matroska"),
        ("user-agent", &user_agent),
    ];
    sign_headers(
        credentials,
        region,
        &format!("{endpoint}/putMedia"),
        &headers,
        SignableBody::UnsignedPayload,
        time,
        API,
    )
}

/// Connects, signs and sends the request head; returns once the service answered 200 (the ACK stream is then
/// open). Bounded by the request timeout.
pub async fn open(ctx: &AwsContext, request: &PutMediaRequest) -> Result<PutMediaConnection, KvsError> {
    let (tx, rx) = mpsc::channel::<BodyChunk>(16);
    let finished = Arc::new(AtomicBool::new(false));
    let stream =
        futures::stream::unfold((rx, finished.clone(), false), |(mut rx, finished, over)| async move {
            if over {
                return None;
            }
            match rx.recv().await {
                Some(chunk) => Some((Ok(Frame::data(chunk)), (rx, finished, false))),
                None if finished.load(Ordering::SeqCst) => None,
                None => {
                    let aborted = std::io::Error::other("kvssink abandoned this PutMedia connection");
                    Some((Err(aborted), (rx, finished, true)))
                }
            }
        });
    let body: UploadBody = StreamBody::new(Box::pin(stream));
    let headers = |authority: &str, credentials: &aws_credential_types::Credentials| {
        signed_headers(credentials, &ctx.region, authority, &request.endpoint, request, SystemTime::now())
    };
    let response = super::http::post(ctx, &request.endpoint, "/putMedia", API, headers, body).await?;
    Ok(PutMediaConnection { body: BodySender { tx, finished }, acks: response.into_body() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::http::parse_endpoint;

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
            user_agent: Some("AWS-SDK-KVS-CPP-CLIENT/3.6.0".into()),
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
