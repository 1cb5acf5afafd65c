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

use crate::Body;
use crate::error::ApiError;
use crate::ingest::{AckError, Ingest, IngestEvent, Limits, TimecodeType};
use crate::media::{FragmentState, MediaStore};
use crate::store::{Store, epoch_millis};

/// A response body fed by a channel: each message is sent as it comes, the body ends when the sender is
/// dropped.
pub fn channel_body(rx: mpsc::UnboundedReceiver<Bytes>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|data| (Ok::<_, Infallible>(Frame::data(data)), rx))
    });
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

/// Like [`channel_body`], with a bounded channel so a slow reader holds the sender back.
pub fn bounded_channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|data| (Ok::<_, Infallible>(Frame::data(data)), rx))
    });
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
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
}

impl Default for PutMediaConfig {
    fn default() -> Self {
        PutMediaConfig {
            idle_ack_interval: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(30),
            max_connection_duration: Duration::from_secs(45 * 60),
            limits: Limits::default(),
        }
    }
}

/// What a PutMedia request needs from the emulator.
#[derive(Clone)]
pub struct PutMediaContext {
    pub store: Arc<Store>,
    pub media: Arc<MediaStore>,
    pub config: PutMediaConfig,
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
        None => return Err(ApiError::invalid_argument("x-amzn-fragment-timecode-type must be specified.")),
    };
    // Decimal epoch seconds; the C producer does not zero-pad the fraction ("12.5" means 12.5 s).
    let producer_start_ms = match header(headers, "x-amzn-producer-start-timestamp")? {
        Some(value) => match value.parse::<f64>() {
            Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => (seconds * 1000.0).round() as i64,
            _ => {
                return Err(ApiError::invalid_argument(format!(
                    "Invalid x-amzn-producer-start-timestamp {value:?}: must be epoch seconds."
                )));
            }
        },
        None => epoch_millis(SystemTime::now()) as i64,
    };
    Ok(Params { stream_name, stream_arn, timecode_type, producer_start_ms })
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

    let mut body = request.into_body();
    // Poll the body once now: hyper then writes `100 Continue` before the response head.
    let first = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
    let first = match first {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    };

    let (tx, rx) = mpsc::unbounded_channel();
    eprintln!("kvs-emulator: putMedia stream={name} started");
    tokio::spawn(ingest_task(ctx, params, arn, name, body, first, tx));
    let mut response = Response::new(channel_body(rx));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    response.headers_mut().insert("x-amzn-requestid", crate::error::new_request_id());
    response
}

/// One ACK line, keys in the service's order.
fn ack_line(event_type: &str, timecode: Option<u64>, number: Option<&str>, error: Option<AckError>) -> Bytes {
    let mut line = format!("{{\"EventType\":\"{event_type}\"");
    if let Some(timecode) = timecode {
        line.push_str(&format!(",\"FragmentTimecode\":{timecode}"));
    }
    if let Some(number) = number {
        line.push_str(&format!(",\"FragmentNumber\":\"{number}\""));
    }
    if let Some(error) = error {
        line.push_str(&format!(",\"ErrorCode\":\"{}\",\"ErrorId\":{}", error.code, error.id));
    }
    line.push_str("}\n");
    Bytes::from(line)
}

struct OpenFragment {
    index: usize,
    number: String,
    timecode: u64,
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
) {
    let config = ctx.config;
    let mut ingest = Ingest::new(params.timecode_type, params.producer_start_ms, config.limits);
    let header_parts: Option<Arc<Vec<Bytes>>> = None;
    let mut header_parts = header_parts;
    let mut open: Option<OpenFragment> = None;
    let mut fragments = 0u64;
    let mut bytes = 0u64;
    let deadline = Instant::now() + config.max_connection_duration;
    let mut last_data = Instant::now();
    let mut last_idle_ack = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut pending_first = first;
    let outcome: &str;

    loop {
        let frame = if let Some(frame) = pending_first.take() {
            frame
        } else {
            tokio::select! {
                frame = body.frame() => frame,
                _ = tick.tick() => {
                    let idle = last_data.elapsed();
                    if idle >= config.idle_timeout {
                        outcome = "closed after idle timeout";
                        break;
                    }
                    if idle >= config.idle_ack_interval && last_idle_ack.elapsed() >= config.idle_ack_interval {
                        last_idle_ack = Instant::now();
                        let _ = tx.send(ack_line("IDLE", None, None, None));
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let timecode = open.as_ref().map_or(ingest.current_timecode(), |f| f.timecode);
                    let number = open.as_ref().map(|f| f.number.clone());
                    let _ = tx.send(ack_line("ERROR", Some(timecode), number.as_deref(),
                        Some(AckError::MAX_CONNECTION_DURATION_REACHED)));
                    outcome = "ended: maximum connection duration";
                    break;
                }
            }
        };
        let events = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    last_data = Instant::now();
                    bytes += data.len() as u64;
                    ingest.push(&data)
                }
                Err(_trailers) => continue,
            },
            Some(Err(_)) => {
                outcome = "connection broken";
                break;
            }
            None => {
                let events = ingest.finish();
                let failed = handle_events(
                    &ctx,
                    &arn,
                    &mut ingest,
                    &mut header_parts,
                    &mut open,
                    &mut fragments,
                    events,
                    &tx,
                );
                outcome = if failed { "ended with an ERROR ack" } else { "body complete" };
                break;
            }
        };
        if handle_events(&ctx, &arn, &mut ingest, &mut header_parts, &mut open, &mut fragments, events, &tx) {
            outcome = "ended with an ERROR ack";
            break;
        }
    }
    if let Some(fragment) = open.take() {
        ctx.media.finish_fragment(&arn, fragment.index, FragmentState::Aborted, 0, Default::default());
    }
    eprintln!("kvs-emulator: putMedia stream={name} {outcome}: {bytes} bytes, {fragments} fragments");
}

/// Applies ingest events; returns true when the connection must end (an ERROR ACK was sent).
#[allow(clippy::too_many_arguments)]
fn handle_events(
    ctx: &PutMediaContext,
    arn: &str,
    ingest: &mut Ingest,
    header_parts: &mut Option<Arc<Vec<Bytes>>>,
    open: &mut Option<OpenFragment>,
    fragments: &mut u64,
    events: Vec<IngestEvent>,
    tx: &mpsc::UnboundedSender<Bytes>,
) -> bool {
    for event in events {
        match event {
            IngestEvent::Started { timecode, producer_ms, tags, data } => {
                let retention = ctx.store.lock().find(None, Some(arn)).map(|s| s.data_retention_in_hours);
                if retention.is_err() {
                    let _ = tx.send(ack_line("ERROR", Some(timecode), None, Some(AckError::STREAM_DELETED)));
                    return true;
                }
                let header =
                    header_parts.get_or_insert_with(|| Arc::new(ingest.header().elements.clone())).clone();
                let server_ms = epoch_millis(SystemTime::now()) as i64;
                let (index, number) = ctx.media.start_fragment(
                    arn,
                    server_ms,
                    producer_ms,
                    timecode,
                    ingest.header().ebml.clone(),
                    header,
                    tags,
                    data,
                );
                let _ = tx.send(ack_line("BUFFERING", Some(timecode), Some(&number), None));
                *open = Some(OpenFragment { index, number, timecode });
            }
            IngestEvent::Data(data) => {
                if let Some(fragment) = open.as_ref() {
                    ctx.media.append(arn, fragment.index, data);
                }
            }
            IngestEvent::Completed { duration_ms, frames, .. } => {
                let Some(fragment) = open.take() else { continue };
                let retention = ctx.store.lock().find(None, Some(arn)).map(|s| s.data_retention_in_hours);
                let Ok(retention) = retention else {
                    ctx.media.finish_fragment(
                        arn,
                        fragment.index,
                        FragmentState::Aborted,
                        0,
                        Default::default(),
                    );
                    let _ = tx.send(ack_line(
                        "ERROR",
                        Some(fragment.timecode),
                        Some(&fragment.number),
                        Some(AckError::STREAM_DELETED),
                    ));
                    return true;
                };
                ctx.media.finish_fragment(arn, fragment.index, FragmentState::Complete, duration_ms, frames);
                *fragments += 1;
                let _ = tx.send(ack_line("RECEIVED", Some(fragment.timecode), Some(&fragment.number), None));
                if retention > 0 {
                    let _ =
                        tx.send(ack_line("PERSISTED", Some(fragment.timecode), Some(&fragment.number), None));
                }
            }
            IngestEvent::Failed { error, timecode, reason } => {
                eprintln!("kvs-emulator: putMedia ERROR {} {}: {reason}", error.id, error.code);
                let number = open.as_ref().map(|f| f.number.clone());
                let _ = tx.send(ack_line("ERROR", Some(timecode), number.as_deref(), Some(error)));
                return true;
            }
        }
    }
    false
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
            ack_line("ERROR", Some(0), Some("9"), Some(AckError::FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS)),
            "{\"EventType\":\"ERROR\",\"FragmentTimecode\":0,\"FragmentNumber\":\"9\",\
             \"ErrorCode\":\"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS\",\"ErrorId\":4004}\n"
        );
        assert_eq!(ack_line("IDLE", None, None, None), "{\"EventType\":\"IDLE\"}\n");
    }
}
