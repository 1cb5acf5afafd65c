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
//! once is kept, in order, and written by [`BodyWriter::flush`] on the runtime. What it takes of HTTP/1.1 is
//! small: a request head, `Transfer-Encoding: chunked` body chunks, and a response read as HTTP/1.1 (a
//! chunked, length-delimited or close-delimited body, its head parsed with `httparse`). The payload is signed
//! as `UNSIGNED-PAYLOAD`, as a body that is not known in advance must be.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use aws_sigv4::http_request::SignableBody;
use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConnection;

use super::config::AwsContext;
use super::error::KvsError;
use super::http::{Connected, connect_to, service_error, sign_headers};

const API: &str = "PutMedia";

/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most of an error answer's body kept.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

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
    let (connected, authority) = connect_to(ctx, &request.endpoint, API).await?;
    let wire = Arc::new(Wire::new(connected));
    let credentials = ctx.credentials().await?;
    let headers = signed_headers(
        &credentials,
        &ctx.region,
        &authority,
        &request.endpoint,
        request,
        SystemTime::now(),
    )?;
    let head = request_head(&headers)?;
    let timeout = ctx.request_timeout;
    let body = BodyWriter { wire: wire.clone() };
    let mut acks = AckStream {
        wire,
        input: BytesMut::new(),
        framing: Framing::Eof,
        over: false,
    };
    let answer = async {
        body.wire.write(&[Bytes::from(head)])?;
        body.flush().await?;
        acks.read_head().await
    };
    let (status, headers) = tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| KvsError::Timeout {
            api: API,
            after: timeout,
        })?
        .map_err(|e| KvsError::Network {
            api: API,
            message: format!("the request failed: {e}"),
        })?;
    if status != 200 {
        let page = tokio::time::timeout(timeout, acks.read_to_end(MAX_ERROR_BODY))
            .await
            .unwrap_or_default();
        body.abort();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        return Err(service_error(status, header, &page, API));
    }
    Ok(PutMediaConnection { body, acks })
}

/// The request line and headers, ending with the blank line.
fn request_head(headers: &[(String, String)]) -> Result<String, KvsError> {
    let mut head = String::from("POST /putMedia HTTP/1.1\r\n");
    for (name, value) in headers {
        if value.contains(['\r', '\n']) || name.contains(['\r', '\n', ':']) {
            return Err(KvsError::Config(format!(
                "cannot send {API}: the {name} header has a line break in it"
            )));
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("transfer-encoding: chunked\r\n\r\n");
    Ok(head)
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
        loop {
            if self.wire.push()? {
                return Ok(());
            }
            self.wire.tcp.writable().await?;
        }
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

/// Reads the response body (the ACK stream), on the runtime.
pub struct AckStream {
    wire: Arc<Wire>,
    /// Read and not yet decoded.
    input: BytesMut,
    framing: Framing,
    over: bool,
}

impl AckStream {
    /// The next bytes of the response body; None at its end.
    pub async fn frame(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.over {
                return None;
            }
            match self.framing.decode(&mut self.input) {
                Ok(Decoded::Data(data)) => return Some(Ok(data)),
                Ok(Decoded::End) => {
                    self.over = true;
                    return None;
                }
                Ok(Decoded::More) => {}
                Err(error) => {
                    self.over = true;
                    return Some(Err(error));
                }
            }
            match self.fill().await {
                Ok(0) => {
                    self.over = true;
                    if matches!(self.framing, Framing::Eof) {
                        return None;
                    }
                    return Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed in the middle of the response",
                    )));
                }
                Ok(_) => {}
                Err(error) => {
                    self.over = true;
                    return Some(Err(error));
                }
            }
        }
    }

    /// The rest of the body, at most `limit` bytes of it; what came before a failure.
    async fn read_to_end(&mut self, limit: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(Ok(data)) = self.frame().await {
            out.extend_from_slice(&data[..data.len().min(limit - out.len())]);
            if out.len() == limit {
                break;
            }
        }
        out
    }

    /// Reads the status line and headers (after any 1xx answers); the body's framing follows from them.
    async fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        loop {
            let parsed = {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.input) {
                    Ok(httparse::Status::Complete(len)) => {
                        let headers: Vec<(String, String)> = response
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect();
                        Some((len, response.code.unwrap_or(0), headers))
                    }
                    Ok(httparse::Status::Partial) if self.input.len() > MAX_HEAD => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the response head is too long",
                        ));
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(error) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the answer is not an HTTP response: {error}"),
                        ));
                    }
                }
            };
            if let Some((len, status, headers)) = parsed {
                self.input.advance(len);
                if (100..200).contains(&status) {
                    continue;
                }
                self.framing = Framing::of(&headers);
                return Ok((status, headers));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed before the service answered",
                ));
            }
        }
    }

    /// Reads more of the response (decrypted, with TLS) into `input`; 0 at its end.
    async fn fill(&mut self) -> io::Result<usize> {
        loop {
            if let Some(n) = self.wire.read(&mut self.input)? {
                return Ok(n);
            }
            self.wire.tcp.readable().await?;
        }
    }
}

/// How the response body is delimited.
#[derive(Debug)]
enum Framing {
    Chunked(Chunk),
    Length(u64),
    /// Until the connection closes.
    Eof,
}

/// Where a chunked body's decoding is.
#[derive(Debug)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

#[derive(Debug, PartialEq)]
enum Decoded {
    Data(Bytes),
    /// Needs more input.
    More,
    End,
}

impl Framing {
    fn of(headers: &[(String, String)]) -> Framing {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            return Framing::Chunked(Chunk::Size);
        }
        match header("content-length").and_then(|v| v.trim().parse().ok()) {
            Some(length) => Framing::Length(length),
            None => Framing::Eof,
        }
    }

    fn decode(&mut self, input: &mut BytesMut) -> io::Result<Decoded> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        match self {
            Framing::Length(0) => Ok(Decoded::End),
            Framing::Length(left) => {
                if input.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = (*left).min(input.len() as u64) as usize;
                *left -= take as u64;
                Ok(Decoded::Data(input.split_to(take).freeze()))
            }
            Framing::Eof if input.is_empty() => Ok(Decoded::More),
            Framing::Eof => Ok(Decoded::Data(input.split().freeze())),
            Framing::Chunked(state) => loop {
                match state {
                    Chunk::Size | Chunk::Trailer => {
                        let Some(end) = input.windows(2).position(|w| w == b"\r\n") else {
                            if input.len() > MAX_LINE {
                                return Err(invalid("a chunk line of the response is too long"));
                            }
                            return Ok(Decoded::More);
                        };
                        let line = input.split_to(end + 2);
                        if matches!(state, Chunk::Trailer) {
                            if end == 0 {
                                *state = Chunk::Done;
                            }
                            continue;
                        }
                        let text = std::str::from_utf8(&line[..end]).unwrap_or("");
                        let digits = text.split(';').next().unwrap_or("").trim();
                        let size = u64::from_str_radix(digits, 16).map_err(|_| {
                            invalid("the response has a chunk size that is not a number")
                        })?;
                        *state = if size == 0 {
                            Chunk::Trailer
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Chunk::Data(left) => {
                        if input.is_empty() {
                            return Ok(Decoded::More);
                        }
                        let take = (*left).min(input.len() as u64) as usize;
                        *left -= take as u64;
                        if *left == 0 {
                            *state = Chunk::DataEnd;
                        }
                        return Ok(Decoded::Data(input.split_to(take).freeze()));
                    }
                    Chunk::DataEnd => {
                        if input.len() < 2 {
                            return Ok(Decoded::More);
                        }
                        if &input[..2] != b"\r\n" {
                            return Err(invalid(
                                "a chunk of the response does not end where its size says",
                            ));
                        }
                        input.advance(2);
                        *state = Chunk::Size;
                    }
                    Chunk::Done => return Ok(Decoded::End),
                }
            },
        }
    }
}

/// The socket, shared by the body's writers and the ACK reader.
struct Wire {
    tcp: TcpStream,
    state: Mutex<WireState>,
}

struct WireState {
    /// TLS: the session (its buffers hold what the socket has not taken yet); plain: None.
    tls: Option<ClientConnection>,
    /// Plain: bytes the socket has not taken yet, in order.
    pending: VecDeque<Bytes>,
    /// The first write error; every later write fails with it.
    failed: Option<(io::ErrorKind, String)>,
}

/// `io::Read`/`io::Write` on the tokio socket that never wait (`WouldBlock` instead).
struct NoWait<'a>(&'a TcpStream);

impl Read for NoWait<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for NoWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `pieces` as slices, without their first `skip` bytes.
fn slices(pieces: &[Bytes], mut skip: usize) -> Vec<IoSlice<'_>> {
    let mut out = Vec::with_capacity(pieces.len());
    for piece in pieces {
        if skip >= piece.len() {
            skip -= piece.len();
            continue;
        }
        out.push(IoSlice::new(&piece[skip..]));
        skip = 0;
    }
    out
}

impl Wire {
    fn new(connected: Connected) -> Self {
        let (tcp, tls) = match connected {
            Connected::Plain(tcp) => (tcp, None),
            Connected::Tls(stream) => {
                let (tcp, mut tls) = (*stream).into_inner();
                // Nothing is refused for being too much: the fragment queue bounds what is written, and a
                // socket that takes nothing fails the connection after `connection-staleness`.
                tls.set_buffer_limit(None);
                (tcp, Some(tls))
            }
        };
        Wire {
            tcp,
            state: Mutex::new(WireState {
                tls,
                pending: VecDeque::new(),
                failed: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WireState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `pieces` behind what waits, then writes as much as the socket takes now. Ok(true): nothing waits.
    fn write(&self, pieces: &[Bytes]) -> io::Result<bool> {
        let mut state = self.lock();
        state.check()?;
        let added = match state.tls.as_mut() {
            Some(tls) => {
                let total: usize = pieces.iter().map(Bytes::len).sum();
                let mut taken = 0;
                let mut added = Ok(());
                while taken < total {
                    // The buffer is unlimited: it takes everything unless the session failed.
                    match tls.writer().write_vectored(&slices(pieces, taken)) {
                        Ok(0) => {
                            added = Err(io::Error::other("the TLS session takes no more data"));
                            break;
                        }
                        Ok(n) => taken += n,
                        Err(error) => {
                            added = Err(error);
                            break;
                        }
                    }
                }
                added
            }
            None => {
                state
                    .pending
                    .extend(pieces.iter().filter(|p| !p.is_empty()).cloned());
                Ok(())
            }
        };
        let written = added.and_then(|()| state.push(&self.tcp));
        state.note(written)
    }

    /// Writes what waits, as far as the socket takes it now. Ok(true): nothing waits.
    fn push(&self) -> io::Result<bool> {
        let mut state = self.lock();
        state.check()?;
        let written = state.push(&self.tcp);
        state.note(written)
    }

    /// Reads what there is now into `input`: Some(0) at the end of the response, None when nothing is there.
    fn read(&self, input: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut buf = [0u8; 16 * 1024];
        let mut state = self.lock();
        let Some(tls) = state.tls.as_mut() else {
            return match self.tcp.try_read(&mut buf) {
                Ok(n) => {
                    input.extend_from_slice(&buf[..n]);
                    Ok(Some(n))
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(error) => Err(error),
            };
        };
        let read = loop {
            match tls.reader().read(&mut buf) {
                Ok(n) => {
                    input.extend_from_slice(&buf[..n]);
                    break Ok(Some(n));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the socket without a close_notify: the body's framing says whether that
                // cut the response short.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break Ok(Some(0)),
                Err(error) => break Err(error),
            }
            match tls.read_tls(&mut NoWait(&self.tcp)) {
                // End of the socket: the session notes it and the next read says how it ended.
                Ok(_) => {
                    if let Err(error) = tls.process_new_packets() {
                        break Err(io::Error::new(io::ErrorKind::InvalidData, error));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break Ok(None),
                Err(error) => break Err(error),
            }
        };
        // Reading may have made the session answer something (a key update, an alert).
        let _ = state.push(&self.tcp);
        read
    }

    fn abort(&self) {
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Both);
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some((
                io::ErrorKind::BrokenPipe,
                "the connection was abandoned".into(),
            ));
        }
    }
}

impl WireState {
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => Ok(()),
        }
    }

    /// Keeps the first write error.
    fn note(&mut self, written: io::Result<bool>) -> io::Result<bool> {
        if let Err(error) = &written {
            self.failed
                .get_or_insert_with(|| (error.kind(), error.to_string()));
        }
        written
    }

    fn push(&mut self, tcp: &TcpStream) -> io::Result<bool> {
        if let Some(tls) = self.tls.as_mut() {
            while tls.wants_write() {
                match tls.write_tls(&mut NoWait(tcp)) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(error) => return Err(error),
                }
            }
            return Ok(true);
        }
        while !self.pending.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .pending
                .iter()
                .take(64)
                .map(|p| IoSlice::new(p))
                .collect();
            match tcp.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    while n > 0 {
                        let Some(front) = self.pending.front_mut() else {
                            break;
                        };
                        if n < front.len() {
                            front.advance(n);
                            n = 0;
                        } else {
                            n -= front.len();
                            self.pending.pop_front();
                        }
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::settings::parse_endpoint;

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

    fn decode_all(framing: &mut Framing, input: &[u8], step: usize) -> io::Result<(Vec<u8>, bool)> {
        let mut buffer = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buffer.extend_from_slice(piece);
            loop {
                match framing.decode(&mut buffer)? {
                    Decoded::Data(data) => out.extend_from_slice(&data),
                    Decoded::More => break,
                    Decoded::End => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn a_chunked_response_decodes_however_it_is_cut() {
        let body = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in 1..body.len() {
            let mut framing = Framing::of(&[("transfer-encoding".into(), "chunked".into())]);
            assert_eq!(
                decode_all(&mut framing, body, step).unwrap(),
                (b"hello world".to_vec(), true),
                "{step}"
            );
        }
        let mut framing = Framing::of(&[("content-length".into(), "4".into())]);
        assert_eq!(
            decode_all(&mut framing, b"abcdef", 1).unwrap(),
            (b"abcd".to_vec(), true)
        );
        let mut framing = Framing::of(&[]);
        assert_eq!(
            decode_all(&mut framing, b"abc", 2).unwrap(),
            (b"abc".to_vec(), false)
        );
    }

    #[test]
    fn a_broken_chunked_response_is_an_error_that_says_what_is_wrong() {
        let chunked = || Framing::Chunked(Chunk::Size);
        let error = decode_all(&mut chunked(), b"zz\r\nhello", 3).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the response has a chunk size that is not a number"
        );
        let error = decode_all(&mut chunked(), b"2\r\nhello\r\n", 3).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a chunk of the response does not end where its size says"
        );
        let error = decode_all(&mut chunked(), &[b'1'; 5000], 100).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a chunk line of the response is too long"
        );
    }

    #[test]
    fn a_header_with_a_line_break_is_refused_before_anything_is_sent() {
        let headers = vec![
            ("host".to_owned(), "h".to_owned()),
            ("user-agent".to_owned(), "a\r\nx: y".to_owned()),
        ];
        match request_head(&headers) {
            Err(KvsError::Config(message)) => {
                assert_eq!(
                    message,
                    "cannot send PutMedia: the user-agent header has a line break in it"
                )
            }
            other => panic!("{other:?}"),
        }
        let head = request_head(&headers[..1]).unwrap();
        assert_eq!(
            head,
            "POST /putMedia HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
        );
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
