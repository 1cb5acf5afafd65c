// SPDX-License-Identifier: MPL-2.0

//! PutMedia: one long-lived chunked POST whose Matroska body is ingested while ACKs stream back on the same
//! connection (KVS-PROTOCOL.md §2).
//!
//! The handler checks the headers and the stream, answers `200` at once (after polling the body once, so
//! hyper sends `100 Continue` first to clients that wait for it, as libcurl does), and a task then reads the
//! body, feeds [`Ingest`], stores fragments in the [`MediaStore`] and writes one JSON ACK line per event.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming};
use hyper::{HeaderMap, Request, Response, StatusCode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::Body;
use crate::error::ApiError;
use crate::faults::{Close, ConnectionFaults, ConnectionKill, Faults};
use crate::ingest::{AckError, Ingest, IngestEvent, Limits, TimecodeType};
use crate::media::{FragmentState, MediaStore};
use crate::store::{Store, epoch_millis};

/// A response body fed by a stream of byte chunks (a channel's receiver): each chunk is sent as it comes,
/// the body ends with the stream.
pub fn stream_body(
    chunks: impl futures_util::Stream<Item = Bytes> + Send + Sync + 'static,
) -> Body {
    use futures_util::StreamExt;
    BodyExt::boxed(http_body_util::StreamBody::new(
        chunks.map(|data| Ok::<_, Infallible>(Frame::data(data))),
    ))
}

/// PutMedia settings.
#[derive(Debug, Clone, Copy)]
pub struct PutMediaConfig {
    /// Send an IDLE ACK after this long without body bytes.
    pub idle_ack_interval: Duration,
    /// Close the connection after this long without body bytes (the service: 30 s).
    pub idle_timeout: Duration,
    /// ERROR 4003 after this long (the service: 45 min).
    pub max_connection_duration: Duration,
    pub limits: Limits,
    /// The service's per-stream ingest limits ([`FRAGMENTS_PER_SECOND`], [`BYTES_PER_SECOND`], one connection per
    /// stream); off only for benchmarks that measure a client alone (`--no-service-limits`).
    pub service_limits: bool,
}

/// The service reads at most this many fragments a second on a stream (PutMedia's documented limit). Faster
/// fragments wait: the body is not read until the fragment fits in the last second's five (the service does
/// not document what it does; the emulator holds the connection back, as for the byte rate).
pub const FRAGMENTS_PER_SECOND: usize = 5;
/// The service reads a PutMedia session's media at most this fast (12.5 MB/s, 100 Mbps, documented).
pub const BYTES_PER_SECOND: u64 = 12_500_000;

/// When the last fragments of each stream started, to hold a stream to [`FRAGMENTS_PER_SECOND`] across its
/// connections.
#[derive(Debug, Default)]
pub struct FragmentRates(
    std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<Instant>>>,
);

impl FragmentRates {
    /// Waits until one more fragment of `stream` fits in the last second, then counts it.
    async fn admit(&self, stream: &str) {
        let due = {
            let rates = self.0.lock().unwrap_or_else(|e| e.into_inner());
            rates
                .get(stream)
                .filter(|starts| starts.len() >= FRAGMENTS_PER_SECOND)
                .map(|starts| starts[starts.len() - FRAGMENTS_PER_SECOND] + Duration::from_secs(1))
        };
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        let mut rates = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let starts = rates.entry(stream.to_owned()).or_default();
        starts.push_back(Instant::now());
        while starts.len() > FRAGMENTS_PER_SECOND {
            starts.pop_front();
        }
    }
}

impl Default for PutMediaConfig {
    fn default() -> Self {
        PutMediaConfig {
            idle_ack_interval: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(30),
            max_connection_duration: Duration::from_secs(45 * 60),
            limits: Limits::default(),
            service_limits: true,
        }
    }
}

/// What a PutMedia request needs from the emulator.
#[derive(Clone)]
pub struct PutMediaContext {
    pub store: Arc<Store>,
    pub media: Arc<MediaStore>,
    pub config: PutMediaConfig,
    pub faults: Arc<Faults>,
    /// With `--data-dir`, PERSISTED is sent once the fragment is on disk.
    pub data_dir: Option<Arc<crate::persist::DataDir>>,
    /// `--record-arrivals`.
    pub arrivals: Arc<crate::arrivals::Arrivals>,
    /// Fragment starts per stream, for [`FRAGMENTS_PER_SECOND`].
    pub rates: Arc<FragmentRates>,
}

struct Params {
    stream_name: Option<String>,
    stream_arn: Option<String>,
    timecode_type: TimecodeType,
    producer_start_ms: i64,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| ApiError::invalid_argument(format!("header {name} is not text")))
        })
        .transpose()
}

fn parse_params(headers: &HeaderMap) -> Result<Params, ApiError> {
    let stream_name = header(headers, "x-amzn-stream-name")?.map(str::to_owned);
    let stream_arn = header(headers, "x-amzn-stream-arn")?.map(str::to_owned);
    match (&stream_name, &stream_arn) {
        (None, None) => {
            return Err(ApiError::invalid_argument(
                "Either x-amzn-stream-name or x-amzn-stream-arn must be specified.",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_argument(
                "Only one of x-amzn-stream-name and x-amzn-stream-arn may be specified.",
            ));
        }
        _ => {}
    }
    let timecode_type = match header(headers, "x-amzn-fragment-timecode-type")? {
        Some("ABSOLUTE") => TimecodeType::Absolute,
        Some("RELATIVE") => TimecodeType::Relative,
        Some(other) => {
            return Err(ApiError::invalid_argument(format!(
                "Invalid x-amzn-fragment-timecode-type {other:?}: must be ABSOLUTE or RELATIVE."
            )));
        }
        None => {
            return Err(ApiError::invalid_argument(
                "x-amzn-fragment-timecode-type must be specified.",
            ));
        }
    };
    // Decimal epoch seconds; the C producer does not zero-pad the fraction ("12.5" means 12.5 s).
    let producer_start_ms = match header(headers, "x-amzn-producer-start-timestamp")? {
        Some(value) => match value.parse::<f64>() {
            Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
                (seconds * 1000.0).round() as i64
            }
            _ => {
                return Err(ApiError::invalid_argument(format!(
                    "Invalid x-amzn-producer-start-timestamp {value:?}: must be epoch seconds."
                )));
            }
        },
        None => epoch_millis(SystemTime::now()) as i64,
    };
    Ok(Params {
        stream_name,
        stream_arn,
        timecode_type,
        producer_start_ms,
    })
}

/// Handles `POST /putMedia`.
pub async fn put_media(ctx: PutMediaContext, request: Request<Incoming>) -> Response<Body> {
    let params = match parse_params(request.headers()) {
        Ok(params) => params,
        Err(err) => return err.into_response().map(BodyExt::boxed),
    };
    let (arn, name) = {
        let streams = ctx.store.lock();
        match streams.find(params.stream_name.as_deref(), params.stream_arn.as_deref()) {
            Ok(stream) => (stream.stream_arn.clone(), stream.stream_name.clone()),
            Err(err) => return err.into_response().map(BodyExt::boxed),
        }
    };
    let actions = ctx.faults.take("putMedia", Some(&name));
    if let Some(err) = ctx.faults.http_error("putMedia", &actions) {
        return err.into_response().map(BodyExt::boxed);
    }
    if let Some(response) = ctx.faults.raw_response("putMedia", &actions) {
        return response;
    }
    let kill = request.extensions().get::<ConnectionKill>().cloned();
    if ctx.config.service_limits {
        // One PutMedia connection per stream: "the last connection is accepted". What becomes of the older one
        // is not documented; the strict reading: it is reset, and the fragment it was sending is not stored.
        let older = ctx.faults.drop_open("putMedia", &name, Close::Reset);
        if older > 0 {
            eprintln!(
                "kvs-emulator: putMedia stream={name}: a newer connection replaces {older} open one(s)"
            );
        }
    }
    if let Some(kill) = &kill {
        ctx.faults.register("putMedia", &name, kill);
    }
    let faults = ctx.faults.connection("putMedia", &actions);

    let mut body = request.into_body();
    // Poll the body once now: hyper then writes `100 Continue` before the response head. With the no_continue
    // fault the task polls it only after the head went out, and hyper sends no `100 Continue` then.
    let first = if faults.no_continue {
        faults.recorder.fired("no_continue");
        None
    } else {
        match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        }
    };

    let (tx, rx) = mpsc::unbounded_channel();
    eprintln!("kvs-emulator: putMedia stream={name} started");
    tokio::spawn(ingest_task(
        ctx, params, arn, name, body, first, tx, faults, kill,
    ));
    let mut response = Response::new(stream_body(UnboundedReceiverStream::new(rx)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert("x-amzn-requestid", crate::error::new_request_id());
    response
}

/// One ACK line, keys in the service's order.
fn ack_line(
    event_type: &str,
    timecode: Option<u64>,
    number: Option<&str>,
    error: Option<AckError>,
) -> Bytes {
    let mut line = format!("{{\"EventType\":\"{event_type}\"");
    if let Some(timecode) = timecode {
        line.push_str(&format!(",\"FragmentTimecode\":{timecode}"));
    }
    if let Some(number) = number {
        line.push_str(&format!(",\"FragmentNumber\":\"{number}\""));
    }
    if let Some(error) = error {
        line.push_str(&format!(
            ",\"ErrorCode\":\"{}\",\"ErrorId\":{}",
            error.code, error.id
        ));
    }
    line.push_str("}\n");
    Bytes::from(line)
}

struct OpenFragment {
    sequence: u64,
    number: String,
    timecode: u64,
    /// 1-based, per connection.
    index: u64,
}

/// What the ACK forwarding task is asked to do.
enum AckMessage {
    /// Send this line after `delay`, then close the connection this way, if asked.
    Line {
        delay: Duration,
        line: Bytes,
        then_close: Option<Close>,
    },
    /// End the response (the zero-length chunk).
    End,
}

/// Sends ACK lines in order, applying the connection's ACK faults (withheld, delayed, split, coalesced,
/// garbled, followed by a drop).
struct AckSender {
    tx: mpsc::UnboundedSender<AckMessage>,
    faults: Arc<ConnectionFaults>,
    /// The response body's channel, to tell when the connection is gone (None once the response ended).
    response: Option<mpsc::UnboundedSender<Bytes>>,
    /// No more ACKs (the response was ended or filled with an endless line).
    muted: bool,
}

impl AckSender {
    /// Starts the task that forwards ACKs to the response body, waiting out delays in order.
    fn new(
        response: mpsc::UnboundedSender<Bytes>,
        faults: Arc<ConnectionFaults>,
        kill: Option<ConnectionKill>,
    ) -> AckSender {
        let (tx, mut rx) = mpsc::unbounded_channel::<AckMessage>();
        let forward = response.clone();
        let (split, coalesce) = (faults.split_acks, faults.coalesce_acks);
        let recorder = faults.recorder.clone();
        tokio::spawn(async move {
            let response = forward;
            let mut held = Vec::new();
            let mut count = 0;
            loop {
                let message = if count > 0 {
                    // Coalescing: what is held goes out with the next lines, or alone after a while.
                    match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                        Ok(message) => message,
                        Err(_) => {
                            count = 0;
                            if response
                                .send(Bytes::from(std::mem::take(&mut held)))
                                .is_err()
                            {
                                break;
                            }
                            continue;
                        }
                    }
                } else {
                    rx.recv().await
                };
                let Some(AckMessage::Line {
                    delay,
                    line,
                    then_close,
                }) = message
                else {
                    if !held.is_empty() {
                        let _ = response.send(Bytes::from(held));
                    }
                    break;
                };
                if !delay.is_zero() {
                    recorder.fired("delay_acks");
                    tokio::time::sleep(delay).await;
                }
                let sent = if let Some(count_limit) = coalesce {
                    held.extend_from_slice(&line);
                    count += 1;
                    if count >= count_limit {
                        // Lines went out together (a limit of 1 coalesces nothing).
                        if count > 1 {
                            recorder.fired("coalesce_acks");
                        }
                        count = 0;
                        response
                            .send(Bytes::from(std::mem::take(&mut held)))
                            .is_ok()
                    } else {
                        true
                    }
                } else if let Some(size) = split {
                    if size < line.len() {
                        recorder.fired("split_acks");
                    }
                    let mut ok = true;
                    for start in (0..line.len()).step_by(size) {
                        ok &= response
                            .send(line.slice(start..(start + size).min(line.len())))
                            .is_ok();
                        // Apart, so that the pieces reach the client in separate reads.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    ok
                } else {
                    response.send(line).is_ok()
                };
                if !sent {
                    break;
                }
                if let (Some(how), Some(kill)) = (then_close, &kill) {
                    recorder.fired("drop_after_ack");
                    // Written, and gone in the same millisecond.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    kill.close(how);
                    break;
                }
            }
        });
        AckSender {
            tx,
            faults,
            response: Some(response),
            muted: false,
        }
    }

    /// Sends an ACK about the `index`-th fragment of the connection (1-based; 0 when about none).
    fn send(
        &self,
        index: u64,
        event_type: &str,
        timecode: Option<u64>,
        number: Option<&str>,
        error: Option<AckError>,
    ) {
        if self.muted {
            return;
        }
        if self.faults.withholds(event_type, index) {
            self.faults.recorder.fired("withhold_acks");
            return;
        }
        let about = |fault: &Option<(u64, String)>| {
            fault
                .as_ref()
                .is_some_and(|(k, event)| *k == index && event == event_type)
        };
        let mut line = ack_line(event_type, timecode, number, error);
        if about(&self.faults.garble_ack) {
            self.faults.recorder.fired("garble_ack");
            // Cut in the middle of the JSON object, then the line ends.
            let mut garbled = line[..line.len() / 2].to_vec();
            garbled.extend_from_slice(b"\x01}\n");
            line = Bytes::from(garbled);
        }
        let then_close = self
            .faults
            .drop_after_ack
            .as_ref()
            .filter(|(k, event, _)| *k == index && event == event_type)
            .map(|(_, _, how)| *how);
        let delay = self.faults.delay_of(event_type);
        let _ = self.tx.send(AckMessage::Line {
            delay,
            line,
            then_close,
        });
    }

    /// Sends a line as it is (an ACK for a fragment that was never sent).
    fn send_raw(&self, line: &'static str) {
        let line = Bytes::from_static(line.as_bytes());
        let _ = self.tx.send(AckMessage::Line {
            delay: Duration::ZERO,
            line,
            then_close: None,
        });
    }

    /// Ends the response after the ACKs already queued; no ACK goes out after it.
    fn end_response(&mut self) {
        self.muted = true;
        self.response = None;
        let _ = self.tx.send(AckMessage::End);
    }

    /// From now on the response carries bytes without a newline, 1 KiB every 10 ms, until the connection ends.
    fn endless_line(&mut self) {
        self.muted = true;
        let Some(response) = self.response.clone() else {
            return;
        };
        tokio::spawn(async move {
            let filler = Bytes::from(vec![b'x'; 1024]);
            while response.send(filler.clone()).is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    /// Waits until the response is gone (the client closed the connection), at most `limit`.
    async fn closed(&self, limit: Duration) {
        if let Some(response) = &self.response {
            let _ = tokio::time::timeout(limit, response.closed()).await;
        }
    }
}

/// One PutMedia connection's state.
struct Connection {
    ctx: PutMediaContext,
    arn: String,
    ingest: Ingest,
    header_parts: Option<Arc<Vec<Bytes>>>,
    open: Option<OpenFragment>,
    /// Fragments started on this connection (1-based index of the open one).
    started: u64,
    completed: u64,
    acks: AckSender,
    faults: Arc<ConnectionFaults>,
    kill: Option<ConnectionKill>,
    /// When a drop_at_fragment fault with a delay fires.
    drop_at: Option<(Instant, Close)>,
    /// The response was ended by a fault: the rest of the body is read and thrown away.
    discard: bool,
    /// Fragments received but not yet written to `--data-dir` (their PERSISTED waits for it).
    to_persist: Vec<OpenFragment>,
    /// The stream's name, for the arrival log.
    name: String,
    /// When the body bytes being ingested arrived.
    received_at: SystemTime,
}

/// Why a connection ends.
enum End {
    /// An ERROR ACK was sent.
    ErrorAck,
    /// A fault dropped the connection.
    Dropped,
    /// A fault stopped reading the body.
    StopReading,
}

#[allow(clippy::too_many_arguments)]
async fn ingest_task(
    ctx: PutMediaContext,
    params: Params,
    arn: String,
    name: String,
    mut body: Incoming,
    first: Option<Option<Result<Frame<Bytes>, hyper::Error>>>,
    tx: mpsc::UnboundedSender<Bytes>,
    faults: ConnectionFaults,
    kill: Option<ConnectionKill>,
) {
    let config = ctx.config;
    let faults = Arc::new(faults);
    let mut conn = Connection {
        ingest: Ingest::new(
            params.timecode_type,
            params.producer_start_ms,
            config.limits,
        ),
        ctx,
        arn,
        header_parts: None,
        open: None,
        started: 0,
        completed: 0,
        acks: AckSender::new(tx, faults.clone(), kill.clone()),
        faults: faults.clone(),
        kill,
        drop_at: None,
        discard: false,
        to_persist: Vec::new(),
        name: name.clone(),
        received_at: SystemTime::now(),
    };
    let upload = conn.ctx.arrivals.upload(&name, conn.received_at);
    let mut bytes = 0u64;
    let mut pacer = crate::faults::Pacer::default();
    let mut service_pacer = crate::faults::Pacer::default();
    let deadline = Instant::now() + config.max_connection_duration;
    let mut last_data = Instant::now();
    let mut last_idle_ack = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut pending_first = first;
    let outcome: &str;
    if faults.no_continue {
        // Let the response head go out first.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    loop {
        let frame = if let Some(frame) = pending_first.take() {
            frame
        } else {
            let drop_at = conn.drop_at.map(|(at, _)| at);
            tokio::select! {
                frame = body.frame() => frame,
                _ = async { tokio::time::sleep_until(drop_at.unwrap_or_else(Instant::now)).await },
                    if drop_at.is_some() => {
                    let how = conn.drop_at.take().map_or(Close::Drop, |(_, how)| how);
                    faults.recorder.fired("drop_at_fragment");
                    conn.drop_connection(how);
                    outcome = "dropped by a fault";
                    break;
                }
                _ = tick.tick() => {
                    let idle = last_data.elapsed();
                    if idle >= config.idle_timeout {
                        outcome = "closed after idle timeout";
                        break;
                    }
                    if idle >= config.idle_ack_interval && last_idle_ack.elapsed() >= config.idle_ack_interval {
                        last_idle_ack = Instant::now();
                        conn.acks.send(0, "IDLE", None, None, None);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let timecode = conn.open.as_ref().map_or(conn.ingest.current_timecode(), |f| f.timecode);
                    let number = conn.open.as_ref().map(|f| f.number.clone());
                    conn.acks.send(0, "ERROR", Some(timecode), number.as_deref(),
                        Some(AckError::MAX_CONNECTION_DURATION_REACHED));
                    outcome = "ended: maximum connection duration";
                    break;
                }
            }
        };
        let (events, drop_now) = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    last_data = Instant::now();
                    conn.received_at = SystemTime::now();
                    if bytes == 0 && !data.is_empty() {
                        conn.ctx
                            .arrivals
                            .first_body_byte(&name, upload, conn.received_at);
                    }
                    let mut drop_now = None;
                    if let Some((limit, how)) = faults.drop_after_bytes
                        && bytes + data.len() as u64 >= limit
                    {
                        data.truncate((limit - bytes) as usize);
                        drop_now = Some(how);
                        faults.recorder.fired("drop_after_bytes");
                    }
                    bytes += data.len() as u64;
                    if faults.bytes_per_second.is_some() {
                        faults.recorder.fired("throttle");
                    }
                    pacer.pace(faults.bytes_per_second, data.len()).await;
                    if config.service_limits {
                        service_pacer.pace(Some(BYTES_PER_SECOND), data.len()).await;
                    }
                    if conn.discard {
                        continue;
                    }
                    (conn.ingest.push(&data), drop_now)
                }
                Err(_trailers) => continue,
            },
            Some(Err(_)) => {
                outcome = "connection broken";
                break;
            }
            None if conn.discard => {
                outcome = "body complete after the response was ended by a fault";
                break;
            }
            None => {
                let events = conn.ingest.finish();
                let end = conn.handle_events_paced(events).await;
                conn.persist_pending().await;
                outcome = match end {
                    Some(End::ErrorAck) => "ended with an ERROR ack",
                    Some(End::Dropped) => "dropped by a fault",
                    Some(End::StopReading) | None => "body complete",
                };
                break;
            }
        };
        let end = conn.handle_events_paced(events).await;
        conn.persist_pending().await;
        match end {
            Some(End::ErrorAck) => {
                outcome = "ended with an ERROR ack";
                break;
            }
            Some(End::Dropped) => {
                outcome = "dropped by a fault";
                break;
            }
            Some(End::StopReading) => {
                // The body is not read any more; the connection stays until the client gives up.
                conn.acks.closed(Duration::from_secs(600)).await;
                outcome = "stopped reading by a fault";
                break;
            }
            None if drop_now.is_some() => {
                conn.drop_connection(drop_now.unwrap_or_default());
                outcome = "dropped by a fault";
                break;
            }
            None => {}
        }
    }
    if let Some(fragment) = conn.open.take() {
        conn.ctx.media.finish_fragment(
            &conn.arn,
            fragment.sequence,
            FragmentState::Aborted,
            0,
            Default::default(),
        );
    }
    if outcome == "dropped by a fault" {
        // Keep the response open until the dropped connection is gone, so that it cannot end cleanly first.
        conn.acks.closed(Duration::from_secs(5)).await;
    }
    eprintln!(
        "kvs-emulator: putMedia stream={name} {outcome}: {bytes} bytes, {} fragments",
        conn.completed
    );
}

impl Connection {
    /// Writes received fragments to `--data-dir`, then sends their PERSISTED ACKs.
    async fn persist_pending(&mut self) {
        let Some(data_dir) = self.ctx.data_dir.clone() else {
            return;
        };
        for fragment in std::mem::take(&mut self.to_persist) {
            let stored = self
                .ctx
                .media
                .lock()
                .get(&self.arn)
                .and_then(|m| m.get(fragment.sequence))
                .cloned();
            let Some(stored) = stored else { continue };
            let (dir, arn) = (data_dir.clone(), self.arn.clone());
            match tokio::task::spawn_blocking(move || dir.save_fragment(&arn, &stored)).await {
                Ok(Ok(())) => self.acks.send(
                    fragment.index,
                    "PERSISTED",
                    Some(fragment.timecode),
                    Some(&fragment.number),
                    None,
                ),
                Ok(Err(err)) => eprintln!(
                    "kvs-emulator: cannot write fragment {}: {err}",
                    fragment.number
                ),
                Err(err) => eprintln!(
                    "kvs-emulator: cannot write fragment {}: {err}",
                    fragment.number
                ),
            }
        }
    }

    fn drop_connection(&self, how: Close) {
        if let Some(kill) = &self.kill {
            kill.close(how);
        }
    }

    fn retention(&self) -> Option<u32> {
        self.ctx
            .store
            .lock()
            .find(None, Some(&self.arn))
            .ok()
            .map(|s| s.data_retention_in_hours)
    }

    /// Applies ingest events, each fragment start once the stream's fragment rate allows it (with the service's
    /// limits): the body is not read meanwhile. `Some` when the connection must end.
    async fn handle_events_paced(&mut self, events: Vec<IngestEvent>) -> Option<End> {
        if !self.ctx.config.service_limits {
            return self.handle_events(events);
        }
        let mut batch = Vec::new();
        for event in events {
            if matches!(event, IngestEvent::Started { .. }) {
                if let Some(end) = self.handle_events(std::mem::take(&mut batch)) {
                    return Some(end);
                }
                self.ctx.rates.admit(&self.name).await;
            }
            batch.push(event);
        }
        self.handle_events(batch)
    }

    /// Applies ingest events; `Some` when the connection must end.
    fn handle_events(&mut self, events: Vec<IngestEvent>) -> Option<End> {
        for event in events {
            match event {
                IngestEvent::Started {
                    timecode,
                    producer_ms,
                    tags,
                    data,
                } => {
                    self.started += 1;
                    let index = self.started;
                    if let Some((_, how, delay)) =
                        self.faults.drop_at_fragment.filter(|(k, _, _)| *k == index)
                    {
                        if delay.is_zero() {
                            self.faults.recorder.fired("drop_at_fragment");
                            self.drop_connection(how);
                            return Some(End::Dropped);
                        }
                        self.drop_at = Some((Instant::now() + delay, how));
                    }
                    if self.faults.end_response == Some(index) {
                        self.faults.recorder.fired("end_response");
                        self.acks.end_response();
                        self.discard = true;
                        if let Some(kill) = self.kill.clone() {
                            tokio::spawn(async move {
                                // After hyper wrote the zero-length chunk.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                kill.half_close();
                            });
                        }
                        return None;
                    }
                    if self.faults.stop_reading == Some(index) {
                        self.faults.recorder.fired("stop_reading");
                        return Some(End::StopReading);
                    }
                    if self.faults.endless_line == Some(index) {
                        self.faults.recorder.fired("endless_line");
                        self.acks.endless_line();
                    }
                    if self.faults.unknown_ack == Some(index) {
                        self.faults.recorder.fired("unknown_ack");
                        self.acks.send_raw(
                            "{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":1,\
                             \"FragmentNumber\":\"91343852333181432392682062599999999999\"}\n",
                        );
                    }
                    if self.retention().is_none() {
                        self.acks.send(
                            index,
                            "ERROR",
                            Some(timecode),
                            None,
                            Some(AckError::STREAM_DELETED),
                        );
                        return Some(End::ErrorAck);
                    }
                    let elements = &self.ingest.header().elements;
                    let header = self
                        .header_parts
                        .get_or_insert_with(|| Arc::new(elements.clone()))
                        .clone();
                    let server_ms = epoch_millis(SystemTime::now()) as i64;
                    let (sequence, number) = self.ctx.media.start_fragment(
                        &self.arn,
                        server_ms,
                        producer_ms,
                        timecode,
                        self.ingest.header().ebml.clone(),
                        header,
                        tags,
                        data,
                    );
                    self.acks
                        .send(index, "BUFFERING", Some(timecode), Some(&number), None);
                    self.open = Some(OpenFragment {
                        sequence,
                        number,
                        timecode,
                        index,
                    });
                }
                IngestEvent::Frame { track, producer_ms } => {
                    self.ctx
                        .arrivals
                        .frame(&self.name, track, producer_ms, self.received_at);
                }
                IngestEvent::Data(data) => {
                    if let Some(fragment) = self.open.as_ref() {
                        self.ctx.media.append(&self.arn, fragment.sequence, data);
                    }
                }
                IngestEvent::Completed {
                    duration_ms,
                    frames,
                    ..
                } => {
                    let Some(fragment) = self.open.take() else {
                        continue;
                    };
                    let injected = self
                        .faults
                        .error_ack
                        .filter(|(k, _)| *k == self.started)
                        .map(|(_, id)| {
                            AckError::from_id(id).unwrap_or(AckError {
                                id,
                                code: "UNKNOWN_ERROR",
                            })
                        });
                    if injected.is_some() {
                        self.faults.recorder.fired("error_ack");
                    }
                    let retention = self.retention();
                    let error =
                        injected.or(retention.is_none().then_some(AckError::STREAM_DELETED));
                    if let Some(error) = error {
                        let media = &self.ctx.media;
                        media.finish_fragment(
                            &self.arn,
                            fragment.sequence,
                            FragmentState::Aborted,
                            0,
                            Default::default(),
                        );
                        self.acks.send(
                            fragment.index,
                            "ERROR",
                            Some(fragment.timecode),
                            Some(&fragment.number),
                            Some(error),
                        );
                        return Some(End::ErrorAck);
                    }
                    self.ctx.media.finish_fragment(
                        &self.arn,
                        fragment.sequence,
                        FragmentState::Complete,
                        duration_ms,
                        frames,
                    );
                    self.completed += 1;
                    let now_ms = epoch_millis(SystemTime::now()) as i64;
                    let expired = self
                        .ctx
                        .media
                        .expire(&self.arn, retention.unwrap_or(0), now_ms);
                    if let (Some(dir), false) = (&self.ctx.data_dir, expired.is_empty()) {
                        dir.remove_fragments(&self.arn, &expired);
                    }
                    self.acks.send(
                        fragment.index,
                        "RECEIVED",
                        Some(fragment.timecode),
                        Some(&fragment.number),
                        None,
                    );
                    if retention.unwrap_or(0) > 0 {
                        if self.ctx.data_dir.is_some() {
                            self.to_persist.push(fragment);
                        } else {
                            self.acks.send(
                                fragment.index,
                                "PERSISTED",
                                Some(fragment.timecode),
                                Some(&fragment.number),
                                None,
                            );
                        }
                    }
                }
                IngestEvent::Failed {
                    error,
                    timecode,
                    reason,
                } => {
                    eprintln!(
                        "kvs-emulator: putMedia ERROR {} {}: {reason}",
                        error.id, error.code
                    );
                    let number = self.open.as_ref().map(|f| f.number.clone());
                    self.acks.send(
                        self.started,
                        "ERROR",
                        Some(timecode),
                        number.as_deref(),
                        Some(error),
                    );
                    return Some(End::ErrorAck);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_lines_have_the_service_layout() {
        assert_eq!(
            ack_line("BUFFERING", Some(1677613819540), Some("913438"), None),
            "{\"EventType\":\"BUFFERING\",\"FragmentTimecode\":1677613819540,\"FragmentNumber\":\"913438\"}\n"
        );
        assert_eq!(
            ack_line(
                "ERROR",
                Some(0),
                Some("9"),
                Some(AckError::FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS)
            ),
            "{\"EventType\":\"ERROR\",\"FragmentTimecode\":0,\"FragmentNumber\":\"9\",\
             \"ErrorCode\":\"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS\",\"ErrorId\":4004}\n"
        );
        assert_eq!(
            ack_line("IDLE", None, None, None),
            "{\"EventType\":\"IDLE\"}\n"
        );
    }
}
