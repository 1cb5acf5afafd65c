// SPDX-License-Identifier: MPL-2.0

//! HTTP/1.1 by hand on a tokio socket (TLS with rustls when the endpoint is `https://`), for the two
//! data-plane requests whose bytes hyper's client would touch too often: PutMedia ([`super::putmedia`]) and
//! GetMediaForFragmentList ([`post_json_in_place`]).
//!
//! - PutMedia: a frame must leave from the thread that produced it. hyper writes a request body only from the
//!   task that drives its connection (two hand-offs per frame, each a wake-up of a sleeping runtime thread);
//!   [`Wire::write`] writes from any thread without waiting, what the socket does not take at once kept in
//!   order for [`Wire::flush`].
//! - GetMediaForFragmentList: a range read keeps every byte it reads until downstream releases it. hyper reads
//!   a body into buffers of its own choosing; held, they make it allocate fresh ones for every read (fresh
//!   pages: faults and zeroing), and copying them into reusable blocks costs a second pass over every byte.
//!   [`Response::read_in_place`] reads the body straight into the caller's block and leaves the chunked
//!   framing where it is, giving the payload as ranges of the block: the bytes are written once, by the
//!   kernel (or by rustls as it decrypts), and never moved. And while much of the body is still owed, the
//!   socket gathers [`GATHER_BYTES`] before it wakes the reader (SO_RCVLOWAT), which needs the reads in our
//!   hands: a socket under its low-water mark never looks readable to tokio, so the reader also asks it itself.
//!
//! What it takes of HTTP/1.1 is small: a request head, a body (chunked or of a known length), and a response
//! read as HTTP/1.1 (a chunked, length-delimited or close-delimited body, its head parsed with `httparse`, 1xx
//! answers skipped, trailers ignored, no proxies).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConnection;

use super::config::AwsContext;
use super::error::KvsError;
use super::http::{Connected, connect_to, json_headers, service_error};

/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most of an error answer's body kept.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
/// While a body read in place still owes much more than this, the socket gathers this much before it wakes the
/// reader (SO_RCVLOWAT): a range read then wakes about once per this many bytes, however small the pieces the
/// service sends them in, where it would otherwise wake for every TCP segment that arrives.
const GATHER_BYTES: usize = 256 * 1024;
/// A gathering read reads what the socket holds at least this often, so that a body that ends earlier than
/// expected, or a service that sends slowly, only waits this long.
const GATHER_WAIT: Duration = Duration::from_millis(20);

/// The request line and headers, then `framing` (the body's `transfer-encoding` or `content-length` header),
/// ending with the blank line.
pub(crate) fn request_head(
    path: &str,
    headers: &[(String, String)],
    framing: &str,
    api: &str,
) -> Result<String, KvsError> {
    let mut head = format!("POST {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        if value.contains(['\r', '\n']) || name.contains(['\r', '\n', ':']) {
            return Err(KvsError::Config(format!(
                "cannot send {api}: the {name} header has a line break in it"
            )));
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str(framing);
    head.push_str("\r\n\r\n");
    Ok(head)
}

/// Connects to `endpoint`, sends the head `head(authority, credentials)` makes and `body`, and reads the
/// response head; returns the connection and its response once the status is 200, the service's error
/// otherwise. Bounded by the request timeout.
pub(crate) async fn exchange(
    ctx: &AwsContext,
    endpoint: &str,
    api: &'static str,
    head: impl FnOnce(&str, &aws_credential_types::Credentials) -> Result<String, KvsError>,
    body: Bytes,
) -> Result<(Arc<Wire>, Response), KvsError> {
    let (connected, authority) = connect_to(ctx, endpoint, api).await?;
    let wire = Arc::new(Wire::new(connected));
    let credentials = ctx.credentials().await?;
    let head = head(&authority, &credentials)?;
    let timeout = ctx.request_timeout;
    let mut response = Response::new(wire.clone());
    let answer = async {
        wire.write(&[Bytes::from(head), body])?;
        wire.flush().await?;
        response.read_head().await
    };
    let (status, headers) = tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| KvsError::Timeout {
            api,
            after: timeout,
        })?
        .map_err(|e| KvsError::Network {
            api,
            message: format!("the request failed: {e}"),
        })?;
    if status != 200 {
        let page = tokio::time::timeout(timeout, response.read_to_end(MAX_ERROR_BODY))
            .await
            .unwrap_or_default();
        wire.abort();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        return Err(service_error(status, header, &page, api));
    }
    Ok((wire, response))
}

/// A signed POST of a JSON document (the payload signed too, as [`super::http::post_json`] signs it); returns
/// the response, to be read with [`Response::read_in_place`].
pub async fn post_json_in_place(
    ctx: &AwsContext,
    endpoint: &str,
    path: &str,
    api: &'static str,
    json: &serde_json::Value,
) -> Result<Response, KvsError> {
    let body = Bytes::from(json.to_string());
    let url = format!("{endpoint}{path}");
    let head = |authority: &str, credentials: &aws_credential_types::Credentials| {
        let headers = json_headers(ctx, credentials, &url, authority, &body, api)?;
        request_head(
            path,
            &headers,
            &format!("content-length: {}", body.len()),
            api,
        )
    };
    let (_, response) = exchange(ctx, endpoint, api, head, body.clone()).await?;
    Ok(response)
}

/// A response being read: its head, then its body.
pub struct Response {
    wire: Arc<Wire>,
    /// Read and not yet decoded.
    input: BytesMut,
    framing: Framing,
    over: bool,
    /// The body bytes expected in all ([`Response::expect`]) and read so far.
    expected: u64,
    received: u64,
    /// The socket's SO_RCVLOWAT (1 unless gathering).
    low_water: usize,
}

impl Response {
    /// The response that comes on `wire`, its head not read yet.
    fn new(wire: Arc<Wire>) -> Response {
        Response {
            wire,
            input: BytesMut::new(),
            framing: Framing::Eof,
            over: false,
            expected: 0,
            received: 0,
            low_water: 1,
        }
    }

    /// Says how many body bytes are expected in all (a hint, such as the listed sizes of the fragments asked
    /// for): while much more than [`GATHER_BYTES`] is owed, [`Response::read_in_place`] lets the socket gather
    /// that much before it wakes.
    pub fn expect(&mut self, bytes: u64) {
        self.expected = bytes;
    }

    /// The next bytes of the response body; None at its end.
    pub async fn frame(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.over {
                return None;
            }
            match self.framing.step(&self.input) {
                Ok(Step::Data(n)) => return Some(Ok(self.input.split_to(n).freeze())),
                Ok(Step::Skip(n)) => {
                    self.input.advance(n);
                    continue;
                }
                Ok(Step::End) => {
                    self.over = true;
                    return None;
                }
                Ok(Step::More) => {}
                Err(error) => {
                    self.over = true;
                    return Some(Err(error));
                }
            }
            match self.fill().await {
                Ok(0) => match self.closed() {
                    Ok(()) => return None,
                    Err(error) => return Some(Err(error)),
                },
                Ok(_) => {}
                Err(error) => {
                    self.over = true;
                    return Some(Err(error));
                }
            }
        }
    }

    /// Reads once more (what the connection has now, at least a byte, as much as `into` takes) straight
    /// into `into` and decodes it: Ok(false) once the body is complete. The caller swaps a full buffer out
    /// ([`InPlace::swap`]) before the next call.
    pub async fn read_in_place(&mut self, into: &mut InPlace) -> io::Result<bool> {
        debug_assert!(!into.is_full(), "a full buffer is swapped out first");
        if self.over {
            return Ok(false);
        }
        let n = if self.input.is_empty() {
            let room = &mut into.buf[into.filled..];
            let mut poke = false;
            loop {
                if let Some(n) = self.wire.read_into(room, poke)? {
                    break n;
                }
                poke = self.wait_gathering().await?;
            }
        } else {
            // Body bytes that came with the head.
            let n = self.input.len().min(into.buf.len() - into.filled);
            into.buf[into.filled..into.filled + n].copy_from_slice(&self.input[..n]);
            self.input.advance(n);
            n
        };
        if n == 0 {
            // The connection's end: the end of a close-delimited body, or a response cut short.
            self.closed()?;
            return Ok(false);
        }
        into.filled += n;
        self.received += n as u64;
        loop {
            match self.framing.step(&into.buf[into.decoded..into.filled]) {
                Ok(Step::Data(n)) => {
                    let (start, end) = (into.decoded, into.decoded + n);
                    match into.ranges.last_mut() {
                        Some(last) if last.end == start => last.end = end,
                        _ => into.ranges.push(start..end),
                    }
                    into.decoded = end;
                }
                Ok(Step::Skip(n)) => into.decoded += n,
                Ok(Step::More) => return Ok(true),
                Ok(Step::End) => {
                    self.over = true;
                    return Ok(false);
                }
                Err(error) => {
                    self.over = true;
                    return Err(error);
                }
            }
        }
    }

    /// Waits until the socket has something to read: true when the wait ended on [`GATHER_WAIT`] rather than
    /// the socket's readiness (the next read asks the socket itself: with fewer bytes than the low-water mark
    /// there, tokio has not been told of them).
    async fn wait_gathering(&mut self) -> io::Result<bool> {
        let owed = self.expected.saturating_sub(self.received);
        let low_water = if owed > 2 * GATHER_BYTES as u64 {
            GATHER_BYTES
        } else {
            1
        };
        if low_water != self.low_water {
            if set_low_water(&self.wire.tcp, low_water).is_err() {
                // Only a saver of wake-ups: read as usual from here on.
                self.expected = 0;
                return self.wire.tcp.readable().await.map(|()| false);
            }
            self.low_water = low_water;
        }
        if low_water == 1 {
            self.wire.tcp.readable().await?;
            return Ok(false);
        }
        tokio::select! {
            ready = self.wire.tcp.readable() => ready.map(|()| false),
            () = tokio::time::sleep(GATHER_WAIT) => Ok(true),
        }
    }

    /// The connection ended: the end of the body if it is close-delimited, an error otherwise.
    fn closed(&mut self) -> io::Result<()> {
        self.over = true;
        if matches!(self.framing, Framing::Eof) {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed in the middle of the response",
        ))
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
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(n) = self.wire.read_into(&mut buf, false)? {
                self.input.extend_from_slice(&buf[..n]);
                return Ok(n);
            }
            self.wire.tcp.readable().await?;
        }
    }
}

/// A buffer a response body is read into where it stays: the connection's bytes go straight into it, and the
/// body's framing (chunk sizes) is left in place, the payload given as ranges of it.
pub struct InPlace {
    buf: Box<[u8]>,
    /// Bytes read into `buf`.
    filled: usize,
    /// Of those, the ones decoded (the rest are the start of a chunk line).
    decoded: usize,
    /// The payload among the decoded bytes.
    ranges: Vec<Range<usize>>,
}

impl InPlace {
    /// Reads into `buf`, which must be larger than a chunk line ([`MAX_LINE`]).
    pub fn new(buf: Box<[u8]>) -> InPlace {
        assert!(buf.len() > MAX_LINE);
        InPlace {
            buf,
            filled: 0,
            decoded: 0,
            ranges: Vec::new(),
        }
    }

    pub fn is_full(&self) -> bool {
        self.filled == self.buf.len()
    }

    /// Takes the buffer and its payload's ranges, reading on into `next` (what was read and not decoded yet,
    /// the start of a chunk line, moves into it).
    pub fn swap(&mut self, mut next: Box<[u8]>) -> (Box<[u8]>, Vec<Range<usize>>) {
        assert!(next.len() > MAX_LINE);
        let tail = self.filled - self.decoded;
        next[..tail].copy_from_slice(&self.buf[self.decoded..self.filled]);
        let full = std::mem::replace(&mut self.buf, next);
        self.filled = tail;
        self.decoded = 0;
        (full, std::mem::take(&mut self.ranges))
    }

    /// The buffer and its payload's ranges, at the body's end.
    pub fn finish(self) -> (Box<[u8]>, Vec<Range<usize>>) {
        (self.buf, self.ranges)
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

/// What the next bytes of a body are.
#[derive(Debug, PartialEq)]
enum Step {
    /// The first n are payload.
    Data(usize),
    /// The first n are framing (a chunk's size line or its end, a trailer).
    Skip(usize),
    /// More input is needed.
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

    /// What the first bytes of `input` (the body's next bytes) are.
    fn step(&mut self, input: &[u8]) -> io::Result<Step> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        match self {
            Framing::Length(0) => Ok(Step::End),
            Framing::Length(left) => {
                if input.is_empty() {
                    return Ok(Step::More);
                }
                let take = (*left).min(input.len() as u64) as usize;
                *left -= take as u64;
                Ok(Step::Data(take))
            }
            Framing::Eof if input.is_empty() => Ok(Step::More),
            Framing::Eof => Ok(Step::Data(input.len())),
            Framing::Chunked(state) => match state {
                Chunk::Size | Chunk::Trailer => {
                    let window = &input[..input.len().min(MAX_LINE + 2)];
                    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
                        if input.len() > MAX_LINE {
                            return Err(invalid("a chunk line of the response is too long"));
                        }
                        return Ok(Step::More);
                    };
                    if matches!(state, Chunk::Trailer) {
                        if end == 0 {
                            *state = Chunk::Done;
                        }
                        return Ok(Step::Skip(end + 2));
                    }
                    let text = std::str::from_utf8(&input[..end]).unwrap_or("");
                    let digits = text.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(digits, 16).map_err(|_| {
                        invalid("the response has a chunk size that is not a number")
                    })?;
                    *state = if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    };
                    Ok(Step::Skip(end + 2))
                }
                Chunk::Data(left) => {
                    if input.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = (*left).min(input.len() as u64) as usize;
                    *left -= take as u64;
                    if *left == 0 {
                        *state = Chunk::DataEnd;
                    }
                    Ok(Step::Data(take))
                }
                Chunk::DataEnd => {
                    if input.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(invalid(
                            "a chunk of the response does not end where its size says",
                        ));
                    }
                    *state = Chunk::Size;
                    Ok(Step::Skip(2))
                }
                Chunk::Done => Ok(Step::End),
            },
        }
    }
}
/// The socket, shared by a request body's writers and the response's reader.
pub(crate) struct Wire {
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
struct NoWait<'a> {
    tcp: &'a TcpStream,
    /// Read from the socket itself even when tokio has not seen it readable (bytes below SO_RCVLOWAT do not
    /// make it readable); tokio only learns of readiness from the socket's wake-ups.
    poke: bool,
}

impl Read for NoWait<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.poke {
            // The socket is non-blocking (tokio's): this returns WouldBlock rather than wait.
            return (&*socket2::SockRef::from(self.tcp)).read(buf);
        }
        self.tcp.try_read(buf)
    }
}

impl Write for NoWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.tcp.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sets the socket's SO_RCVLOWAT (how many bytes it holds before it wakes a reader), which neither tokio nor
/// socket2 offer.
fn set_low_water(tcp: &TcpStream, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the socket `tcp` keeps open for the call, and the option's value is a c_int
    // that outlives the call, passed with its size.
    let result = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
    pub(crate) fn new(connected: Connected) -> Self {
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
    pub(crate) fn write(&self, pieces: &[Bytes]) -> io::Result<bool> {
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
    pub(crate) fn push(&self) -> io::Result<bool> {
        let mut state = self.lock();
        state.check()?;
        let written = state.push(&self.tcp);
        state.note(written)
    }

    /// Reads what there is now (decrypted, with TLS) into `buf`, as much as it takes: Some(0) at the end of
    /// the response, None when nothing is there. `poke`: ask the socket even if tokio has not seen it ready.
    fn read_into(&self, buf: &mut [u8], poke: bool) -> io::Result<Option<usize>> {
        let mut state = self.lock();
        let mut socket = NoWait {
            tcp: &self.tcp,
            poke,
        };
        let Some(tls) = state.tls.as_mut() else {
            return match socket.read(buf) {
                Ok(n) => Ok(Some(n)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(error) => Err(error),
            };
        };
        // What came before an error or the end is given first; the next read meets the error or the end again.
        let mut n = 0;
        let some = |n: usize, error: io::Error| if n > 0 { Ok(Some(n)) } else { Err(error) };
        let read = loop {
            if n == buf.len() {
                break Ok(Some(n));
            }
            match tls.reader().read(&mut buf[n..]) {
                // The session's end (close_notify): n = 0 tells it once the rest is taken.
                Ok(0) => break Ok(Some(n)),
                Ok(m) => {
                    n += m;
                    continue;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the socket without a close_notify: the body's framing says whether that
                // cut the response short.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break Ok(Some(n)),
                Err(error) => break some(n, error),
            }
            match tls.read_tls(&mut socket) {
                // End of the socket: the session notes it and the next read says how it ended.
                Ok(_) => {
                    if let Err(error) = tls.process_new_packets() {
                        break some(n, io::Error::new(io::ErrorKind::InvalidData, error));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    break Ok((n > 0).then_some(n));
                }
                Err(error) => break some(n, error),
            }
        };
        // Reading may have made the session answer something (a key update, an alert).
        let _ = state.push(&self.tcp);
        read
    }

    /// Waits until everything written has gone to the socket.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        loop {
            if self.push()? {
                return Ok(());
            }
            self.tcp.writable().await?;
        }
    }

    /// Ends the connection: the peer sees it closed, later writes fail.
    pub(crate) fn abort(&self) {
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
                match tls.write_tls(&mut NoWait { tcp, poke: false }) {
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

    fn decode_all(framing: &mut Framing, input: &[u8], step: usize) -> io::Result<(Vec<u8>, bool)> {
        let mut buffer = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buffer.extend_from_slice(piece);
            loop {
                match framing.step(&buffer)? {
                    Step::Data(n) => out.extend_from_slice(&buffer.split_to(n)),
                    Step::Skip(n) => buffer.advance(n),
                    Step::More => break,
                    Step::End => return Ok((out, true)),
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
        match request_head(
            "/putMedia",
            &headers,
            "transfer-encoding: chunked",
            "PutMedia",
        ) {
            Err(KvsError::Config(message)) => {
                assert_eq!(
                    message,
                    "cannot send PutMedia: the user-agent header has a line break in it"
                )
            }
            other => panic!("{other:?}"),
        }
        let head = request_head(
            "/putMedia",
            &headers[..1],
            "transfer-encoding: chunked",
            "PutMedia",
        )
        .unwrap();
        assert_eq!(
            head,
            "POST /putMedia HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    /// A response from a local server that writes `wire` in pieces of `step` bytes; its body read in place into
    /// buffers of `block` bytes: the payload rebuilt from the ranges, how many buffers were swapped out, and
    /// how the read ended. Asserts that a buffer's ranges are apart (contiguous payload is one range).
    async fn read_in_place_from(
        wire: Vec<u8>,
        step: usize,
        block: usize,
    ) -> (Vec<u8>, usize, io::Result<()>) {
        let (payload, swapped, ended, _) = read_body_over(wire, step, block, None, None).await;
        (payload, swapped, ended)
    }

    /// [`read_in_place_from`]; with `expected`, the response is told to expect that many bytes
    /// ([`Response::expect`]) and the server keeps the connection open after the response, as a service
    /// does; over TLS when given a test CA, the client trusting it as the data plane does
    /// ([`DataPlaneTls`](crate::kvs::config::DataPlaneTls)). Also gives the socket's low-water mark at the end.
    async fn read_body_over(
        wire: Vec<u8>,
        step: usize,
        block: usize,
        expected: Option<u64>,
        tls: Option<&kvs_emulator::tls::LocalCa>,
    ) -> (Vec<u8>, usize, io::Result<()>, usize) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (done, server_may_close) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tls.map(|ca| kvs_emulator::tls::acceptor(&ca.cert, &ca.key).unwrap());
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut socket: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match acceptor {
                Some(acceptor) => Box::new(acceptor.accept(socket).await.unwrap()),
                None => Box::new(socket),
            };
            for piece in wire.chunks(step) {
                tokio::io::AsyncWriteExt::write_all(&mut socket, piece)
                    .await
                    .unwrap();
                tokio::io::AsyncWriteExt::flush(&mut socket).await.unwrap();
                tokio::task::yield_now().await;
            }
            if expected.is_some() {
                let _ = server_may_close.await;
            }
        });
        let tcp = TcpStream::connect(address).await.unwrap();
        let connected = match tls {
            Some(ca) => {
                let pem = std::fs::read(&ca.ca).unwrap();
                let config = crate::kvs::config::DataPlaneTls::new(Some(&pem), "ca.pem")
                    .unwrap()
                    .config()
                    .unwrap();
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .unwrap();
                Connected::Tls(Box::new(stream))
            }
            None => Connected::Plain(tcp),
        };
        let mut response = Response::new(Arc::new(Wire::new(connected)));
        if let Some(expected) = expected {
            response.expect(expected);
        }
        let (status, _) = response.read_head().await.unwrap();
        assert_eq!(status, 200);
        let mut into = InPlace::new(vec![0; block].into_boxed_slice());
        let (mut payload, mut swapped) = (Vec::new(), 0);
        let take = |buf: &[u8], ranges: Vec<Range<usize>>, payload: &mut Vec<u8>| {
            assert!(
                ranges.windows(2).all(|w| w[0].end < w[1].start),
                "{ranges:?}"
            );
            for range in ranges {
                payload.extend_from_slice(&buf[range]);
            }
        };
        let ended = loop {
            match response.read_in_place(&mut into).await {
                Ok(true) if into.is_full() => {
                    let (buf, ranges) = into.swap(vec![0; block].into_boxed_slice());
                    take(&buf, ranges, &mut payload);
                    swapped += 1;
                }
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        let (buf, ranges) = into.finish();
        take(&buf, ranges, &mut payload);
        let _ = done.send(());
        server.await.unwrap();
        (payload, swapped, ended, response.low_water)
    }

    fn chunked(payload: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let mut rest = payload;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at(size.min(rest.len()));
            wire.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
            rest = after;
        }
        wire.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
        wire
    }

    /// The payload comes out whole and in order however the chunks, the reads and the buffers cut it (chunk
    /// lines across two buffers included), and the ranges of one buffer are merged where contiguous.
    #[test]
    fn a_body_read_in_place_is_the_payload_however_it_is_cut() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        runtime.block_on(async {
            for (sizes, step, block) in [
                (&[1000, 1, 17, 70_000][..], 1300, 5000),
                (&[4093][..], 4097, 4097),
                (&[100_000][..], 65_536, 1 << 20),
                (&[3][..], 50_000, 8192),
            ] {
                let (got, swapped, ended) =
                    read_in_place_from(chunked(&payload, sizes), step, block).await;
                ended.unwrap();
                assert!(got == payload, "{sizes:?} {step} {block}");
                let wire_len = chunked(&payload, sizes).len();
                assert!(swapped >= (wire_len / block).saturating_sub(1), "{swapped}");
            }
            let mut length = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                payload.len()
            )
            .into_bytes();
            length.extend_from_slice(&payload);
            let (got, swapped, ended) = read_in_place_from(length, 10_000, 5000).await;
            ended.unwrap();
            assert!(got == payload);
            // The last buffer is full too: it comes with the body's end, not swapped.
            assert_eq!(swapped, payload.len() / 5000 - 1);
        });
    }

    /// A range read says how much it expects, and the socket gathers GATHER_BYTES before it wakes the reader
    /// while much more is owed; the body still ends where its framing says, on a connection the server keeps
    /// open: when the guess was too high the last bytes never reach the low-water mark, and the reader asks
    /// the socket itself after GATHER_WAIT (over TLS too, where rustls reads the socket).
    #[test]
    fn a_gathering_read_ends_where_the_body_ends_whatever_was_expected() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let wire = chunked(&payload, &[100_000]);
        let pki = kvs_emulator::tls::LocalCa::make().unwrap();
        runtime.block_on(async {
            for (expected, tls) in [
                (wire.len() as u64, None),
                (10 * wire.len() as u64, None),
                (0, None),
                (wire.len() as u64, Some(&pki)),
                (10 * wire.len() as u64, Some(&pki)),
            ] {
                let read = read_body_over(wire.clone(), 65_536, 1 << 20, Some(expected), tls);
                let (got, _, ended, low_water) =
                    tokio::time::timeout(Duration::from_secs(20), read)
                        .await
                        .unwrap_or_else(|_| {
                            panic!(
                                "expecting {expected} (TLS {}): the read never ended",
                                tls.is_some()
                            )
                        });
                ended.unwrap();
                assert!(
                    got == payload,
                    "expecting {expected} (TLS {})",
                    tls.is_some()
                );
                if expected > wire.len() as u64 {
                    // Still gathering at the end: the last bytes came by asking the socket.
                    assert_eq!(low_water, GATHER_BYTES);
                }
                if expected == 0 {
                    assert_eq!(low_water, 1);
                }
            }
        });
    }

    #[test]
    fn a_body_cut_short_is_an_error_and_a_close_delimited_one_ends_at_the_close() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let payload = vec![7u8; 20_000];
        runtime.block_on(async {
            let mut cut = chunked(&payload, &[6000]);
            cut.truncate(cut.len() - 9000);
            let (got, _, ended) = read_in_place_from(cut, 3000, 5000).await;
            assert_eq!(
                ended.unwrap_err().to_string(),
                "the connection closed in the middle of the response"
            );
            assert!(got.len() > 8000 && got.len() < 20_000, "{}", got.len());
            let mut close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            close.extend_from_slice(&payload);
            let (got, _, ended) = read_in_place_from(close, 3000, 5000).await;
            ended.unwrap();
            assert!(got == payload);
            let mut broken = chunked(&payload, &[6000]);
            broken[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".len()] = b'z';
            let (_, _, ended) = read_in_place_from(broken, 3000, 5000).await;
            assert_eq!(
                ended.unwrap_err().to_string(),
                "the response has a chunk size that is not a number"
            );
        });
    }
}
