// SPDX-License-Identifier: MPL-2.0

//! A PutMedia connection: one long-lived chunked POST, SigV4-signed with `aws-sigv4`, over HTTP/1.1 (TLS with
//! rustls when the data endpoint is `https://`), whose body is written while its response (the ACK stream) is
//! read.
//!
//! Written by hand on a tokio socket rather than with hyper's client, for one reason: a frame must leave from
//! the thread that produced it. hyper writes a request body only from the task that drives its connection, so
//! each frame took two hand-offs (streaming thread -> uploader task -> connection task), each a wake-up of a
//! sleeping runtime thread; on a 2-Mbit/s camera that was most of kvssink's CPU. Here
//! [`BodyWriter::write_now`] writes a chunk from any thread without waiting: what the socket does not take at
//! once is kept, in order, and written by [`BodyWriter::flush`] on the runtime (the HTTP/1.1 it takes is in
//! [`super::wire`]). The payload is signed as `UNSIGNED-PAYLOAD`, as a body that is not known in advance must
//! be.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sigv4::http_request::SignableBody;
use bytes::Bytes;

use super::config::AwsContext;
use super::error::KvsError;
use super::http::sign_headers;
use super::wire::{Response, Wire, exchange, request_head};

const API: &str = "PutMedia";

/// Reads the response body (the ACK stream), on the runtime.
pub type AckStream = Response;

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

/// The headers of a signed PutMedia request, `host` first.
pub fn signed_headers(
    credentials: &aws_credential_types::Credentials,
    region: &str,
    authority: &str,
    endpoint: &str,
    request: &PutMediaRequest,
    time: SystemTime,
) -> Result<Vec<(String, String)>, KvsError> {
    let start = format!(
        "{}.{:03}",
        request.producer_start_ms / 1000,
        request.producer_start_ms % 1000
    );
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
        (
            "x-amzn-fragment-acknowledgment-required",
            if request.acks { "1" } else { "0" },
        ),
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

/// An open PutMedia connection: write the body through `body`, read the ACK stream's bytes from `acks`.
pub struct PutMediaConnection {
    pub body: BodyWriter,
    pub acks: AckStream,
}

/// Connects, signs and sends the request head; returns once the service answered 200 (the ACK stream is then
/// open). Bounded by the request timeout.
pub async fn open(
    ctx: &AwsContext,
    request: &PutMediaRequest,
) -> Result<PutMediaConnection, KvsError> {
    let head = |authority: &str, credentials: &aws_credential_types::Credentials| {
        let headers = signed_headers(
            credentials,
            &ctx.region,
            authority,
            &request.endpoint,
            request,
            SystemTime::now(),
        )?;
        request_head("/putMedia", &headers, "transfer-encoding: chunked", API)
    };
    let (wire, acks) = exchange(ctx, &request.endpoint, API, head, Bytes::new()).await?;
    let body = BodyWriter { wire };
    Ok(PutMediaConnection { body, acks })
}

/// Writes the request body, from any thread. Clones write to the same connection, in the order they write.
#[derive(Clone)]
pub struct BodyWriter {
    wire: Arc<Wire>,
}

impl BodyWriter {
    /// Writes `pieces` as one HTTP chunk without waiting: what the socket does not take now waits, in order,
    /// for [`flush`](Self::flush). Ok(true): all of it is written. An error when the connection failed.
    pub fn write_now(&self, pieces: &[Bytes]) -> io::Result<bool> {
        let len: usize = pieces.iter().map(Bytes::len).sum();
        if len == 0 {
            return self.wire.write(&[]);
        }
        let mut framed = Vec::with_capacity(pieces.len() + 2);
        framed.push(Bytes::from(format!("{len:x}\r\n")));
        framed.extend(pieces.iter().cloned());
        framed.push(Bytes::from_static(b"\r\n"));
        self.wire.write(&framed)
    }

    /// Waits until everything written has gone to the socket.
    pub async fn flush(&self) -> io::Result<()> {
        self.wire.flush().await
    }

    /// Ends the body with the last chunk (the request is complete) and waits until it is written.
    pub async fn finish(&self) -> io::Result<()> {
        self.wire.write(&[Bytes::from_static(b"0\r\n\r\n")])?;
        self.flush().await
    }

    /// Ends the connection without the last chunk: the service drops the fragment it was receiving rather than
    /// store it cut short (a re-send on the next connection stores it whole, once). Later writes fail.
    pub fn abort(&self) {
        self.wire.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::http::Connected;
    use crate::kvs::settings::parse_endpoint;
    use tokio::net::TcpStream;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:4567").unwrap(),
            (false, "127.0.0.1".into(), 4567)
        );
        assert_eq!(
            parse_endpoint("https://s-1234abcd.kinesisvideo.us-west-2.amazonaws.com").unwrap(),
            (
                true,
                "s-1234abcd.kinesisvideo.us-west-2.amazonaws.com".into(),
                443
            )
        );
        assert!(matches!(
            parse_endpoint("ftp://x"),
            Err(KvsError::Config(_))
        ));
    }

    #[test]
    fn the_request_is_signed_for_kinesisvideo_with_an_unsigned_payload() {
        let credentials =
            aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
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
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("x-amzn-producer-start-timestamp"),
            Some("1700000000.005")
        );
        assert_eq!(get("x-amzn-fragment-timecode-type"), Some("ABSOLUTE"));
        assert_eq!(get("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        let authorization = get("authorization").unwrap();
        assert!(
            authorization.contains("/us-west-2/kinesisvideo/aws4_request"),
            "{authorization}"
        );
        assert!(!authorization.contains("secret"));
    }

    /// A peer that reads nothing for a while: what the socket does not take waits, in order, and goes once it
    /// reads; the bytes on the wire are the chunks, each whole, in the order they were written.
    #[test]
    fn chunks_the_socket_cannot_take_yet_wait_in_order() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let client = TcpStream::connect(address).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            let writer = BodyWriter {
                wire: Arc::new(Wire::new(Connected::Plain(client))),
            };
            let mut expected = Vec::new();
            let mut held = 0;
            for i in 0..400u32 {
                let piece = Bytes::from(vec![(i % 251) as u8; 10_000 + i as usize]);
                expected.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                expected.extend_from_slice(&piece);
                expected.extend_from_slice(b"\r\n");
                // From a thread outside the runtime, as a streaming thread writes.
                let w = writer.clone();
                let all = std::thread::spawn(move || {
                    w.write_now(&[piece.slice(..10), piece.slice(10..)])
                })
                .join()
                .unwrap()
                .unwrap();
                held += usize::from(!all);
            }
            assert!(
                held > 0,
                "the socket took 4 MB without the peer reading: the test proves nothing"
            );
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut server, &mut got)
                    .await
                    .unwrap();
                got
            });
            writer.finish().await.unwrap();
            writer.abort();
            expected.extend_from_slice(b"0\r\n\r\n");
            let got = reader.await.unwrap();
            assert_eq!(got.len(), expected.len());
            assert!(got == expected);
            assert!(writer.write_now(&[Bytes::from_static(b"x")]).is_err());
        });
    }
}
