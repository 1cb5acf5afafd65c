// SPDX-License-Identifier: MPL-2.0

//! The reading side of kvssrc, free of GStreamer types: a task on the shared runtime that reads a stream and
//! sends [`Item`]s to the element through a bounded channel (the channel's bound is the backpressure).
//!
//! - Live (no end): GetMedia from the start selector; when a session ends (the service ends idle sessions) or
//!   breaks, GetMedia again from the continuation token, with exponential backoff and jitter after errors.
//! - Range (an end time): ListFragments over the range, then GetMediaForFragmentList in batches, up to
//!   `parallel` requests at once, the results written in order; EOS after the last.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use kvs_mkv::Rope;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::merger::{FragmentInfo, FrameTimes, Merger, Mode, Output};
use crate::kvs::config::AwsContext;
use crate::kvs::control::data_endpoint;
use crate::kvs::error::{Action, FinalError, GaveUp, KvsError};
use crate::kvs::http::{post_json, read_all};
use aws_sdk_kinesisvideo::types::ApiName;

/// Where reading starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    Now,
    Earliest,
    FragmentNumber(String),
    /// Seconds since the epoch.
    ServerTimestamp(f64),
    ProducerTimestamp(f64),
    ContinuationToken(String),
}

impl Start {
    fn selector(&self) -> Value {
        match self {
            Start::Now => json!({"StartSelectorType": "NOW"}),
            Start::Earliest => json!({"StartSelectorType": "EARLIEST"}),
            Start::FragmentNumber(n) => {
                json!({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": n})
            }
            Start::ServerTimestamp(t) => {
                json!({"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": t})
            }
            Start::ProducerTimestamp(t) => {
                json!({"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": t})
            }
            Start::ContinuationToken(t) => {
                json!({"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": t})
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub stream_name: String,
    pub start: Start,
    /// End of a range, seconds since the epoch: reads a bounded range, then ends.
    pub end: Option<f64>,
    pub mode: Mode,
    /// Close gaps of more than a second between fragments (merged mode).
    pub close_gaps: bool,
    /// GetMediaForFragmentList requests at once (range reads).
    pub parallel: usize,
}

impl ReaderConfig {
    fn merger(&self) -> Merger {
        let merger = Merger::new(self.mode);
        if self.close_gaps { merger.closing_gaps() } else { merger }
    }
}

/// What the reader gives the element.
#[derive(Debug)]
pub enum Item {
    Data {
        data: Rope,
        header: bool,
        frame: Option<FrameTimes>,
    },
    Fragment(FragmentInfo),
    /// A fragment's own tags that came after its frames.
    FragmentTags {
        number: String,
        tags: Vec<kvs_mkv::tags::SimpleTag>,
    },
    Session {
        millis_behind_now: Option<u64>,
        continuation_token: Option<String>,
    },
    /// A range read: fragments written of the total, bytes read.
    Progress {
        done: usize,
        total: usize,
        bytes: u64,
    },
    /// A live session ended or broke; reading continues from `start`.
    Reconnecting {
        reason: String,
        retry_in: Duration,
    },
    /// Reading cannot go on.
    Error(FinalError),
}

type Tx = mpsc::Sender<Item>;

/// Sends an item; false when the element is gone.
async fn give(tx: &Tx, item: Item) -> bool {
    tx.send(item).await.is_ok()
}

/// A buffer holds at most this many memories (GStreamer merges them, copying, beyond it).
const MAX_PIECES_PER_ITEM: usize = 16;

/// Sends the merger's outputs; an error tag in the stream ends reading. Consecutive data goes as one item (one
/// buffer downstream) of at most [`MAX_PIECES_PER_ITEM`] pieces, except frames: each is an item of its own (a
/// buffer with its times).
async fn give_outputs(tx: &Tx, outputs: Vec<Output>, token: &mut Option<String>) -> Result<bool, KvsError> {
    let mut pending: Option<Rope> = None;
    for output in outputs {
        if let Output::Data { data, header: false, frame: None } = output {
            match pending.as_mut() {
                Some(rope) if rope.piece_count() + data.piece_count() <= MAX_PIECES_PER_ITEM => {
                    rope.append(data)
                }
                _ => {
                    if let Some(rope) = pending.replace(data)
                        && !give(tx, Item::Data { data: rope, header: false, frame: None }).await
                    {
                        return Ok(false);
                    }
                }
            }
            continue;
        }
        if let Some(rope) = pending.take()
            && !give(tx, Item::Data { data: rope, header: false, frame: None }).await
        {
            return Ok(false);
        }
        let item = match output {
            Output::Data { data, header, frame } => Item::Data { data, header, frame },
            Output::Fragment(info) => Item::Fragment(info),
            Output::FragmentTags { number, tags } => Item::FragmentTags { number, tags },
            Output::Session { millis_behind_now, continuation_token } => {
                if let Some(t) = &continuation_token {
                    *token = Some(t.clone());
                }
                Item::Session { millis_behind_now, continuation_token }
            }
            Output::Error { code, id } => {
                return Err(KvsError::InStream { code, id: id.to_string() });
            }
        };
        if !give(tx, item).await {
            return Ok(false);
        }
    }
    if let Some(rope) = pending {
        return Ok(give(tx, Item::Data { data: rope, header: false, frame: None }).await);
    }
    Ok(true)
}

/// Sessions in a row that may bring bytes that are not Matroska before kvssrc gives up with an error.
const MAX_BAD_SESSIONS: u32 = 3;

/// How far before the first NOW session a live reader that saw no fragment yet asks for more.
const NOW_MARGIN_S: f64 = 2.0;

fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(5)).min(5_000);
    Duration::from_millis(base / 2 + rand::random_range(0..=base / 2))
}

/// Reads until the range ends, an error that cannot be retried, or the element drops the channel.
pub async fn run(ctx: AwsContext, config: ReaderConfig, tx: Tx) {
    let result = match config.end {
        Some(end) => range(&ctx, &config, end, &tx).await,
        None => live(&ctx, &config, &tx).await,
    };
    if let Err(error) = result {
        let _ = tx.send(Item::Error(error)).await;
    }
}

async fn live(ctx: &AwsContext, config: &ReaderConfig, tx: &Tx) -> Result<(), FinalError> {
    let mut merger = config.merger();
    let mut start = config.start.clone();
    let mut endpoint: Option<String> = None;
    let mut failures = 0u32;
    // Sessions in a row whose bytes were not Matroska.
    let mut bad_sessions = 0u32;
    // The server timestamp (seconds) of the last fragment read, to resume from if a token is refused.
    let mut last_server_s: Option<f64> = None;
    loop {
        let url = match &endpoint {
            Some(url) => url.clone(),
            None => match data_endpoint(ctx, &config.stream_name, ApiName::GetMedia).await {
                Ok(url) => {
                    endpoint = Some(url.clone());
                    url
                }
                Err(error) => {
                    retry_or_fail(error, &mut failures, &mut endpoint, tx).await?;
                    continue;
                }
            },
        };
        let request = json!({"StreamName": config.stream_name, "StartSelector": start.selector()});
        let requested = std::time::SystemTime::now();
        if start == Start::Now {
            // Whatever happens to this session (no fragment before it ends, or a failed request retried), the
            // next one reads from when this one began: a fragment stored meanwhile is not missed, as NOW would
            // miss it. A margin covers a clock that runs ahead of the service's.
            let began = requested.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            start = Start::ServerTimestamp((began - NOW_MARGIN_S).max(0.0));
        }
        let mut body = match post_json(ctx, &url, "/getMedia", "GetMedia", &request).await {
            Ok(body) => body,
            // The token of a fragment read in this session is gone (the service lost or expired it): read again
            // from that fragment's server time; fragments already written are recognised and left out.
            Err(KvsError::Service { code, message, .. })
                if code == "ResourceNotFoundException"
                    && matches!(start, Start::ContinuationToken(_))
                    && last_server_s.is_some() =>
            {
                let from = (last_server_s.unwrap_or_default() - 1.0).max(0.0);
                start = Start::ServerTimestamp(from);
                let reason = format!(
                    "the continuation token was refused ({message}); reading from server time {from:.3}"
                );
                if !give(tx, Item::Reconnecting { reason, retry_in: Duration::ZERO }).await {
                    return Ok(());
                }
                continue;
            }
            Err(error) => {
                retry_or_fail(error, &mut failures, &mut endpoint, tx).await?;
                continue;
            }
        };
        let mut token = None;
        let mut received = false;
        let reason = loop {
            // A connection that stays open with nothing on it (a stalled proxy, a half-dead peer) is given up
            // after the request timeout and read again from the last continuation token.
            let frame = match tokio::time::timeout(ctx.request_timeout, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => {
                    break format!(
                        "nothing arrived on the GetMedia connection for {:.1} s (request-timeout)",
                        ctx.request_timeout.as_secs_f64()
                    );
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    received = true;
                    let outputs = match merger.push(data) {
                        Ok(outputs) => outputs,
                        // Bytes mangled on the way: this session is unusable, the next one starts clean.
                        Err(e) => {
                            bad_sessions += 1;
                            if bad_sessions > MAX_BAD_SESSIONS {
                                return Err(KvsError::BadResponse {
                                    api: "GetMedia",
                                    message: format!(
                                        "GetMedia returned bad Matroska {bad_sessions} times in a row: {e}"
                                    ),
                                }
                                .into());
                            }
                            break format!("GetMedia returned bad Matroska: {e}");
                        }
                    };
                    for output in &outputs {
                        if let Output::Fragment(info) = output
                            && let Some(server) =
                                info.server_timestamp.as_deref().and_then(|t| t.parse().ok())
                        {
                            last_server_s = Some(server);
                        }
                    }
                    if !give_outputs(tx, outputs, &mut token).await? {
                        return Ok(());
                    }
                    if let Some(t) = token.take() {
                        start = Start::ContinuationToken(t);
                        bad_sessions = 0;
                    }
                }
                Some(Err(error)) => break format!("the GetMedia connection broke: {error}"),
                None => break "the GetMedia session ended".to_owned(),
            }
        };
        merger.interrupted();
        if received {
            failures = 0;
        }
        let retry_in = if received { Duration::ZERO } else { backoff(failures.min(3)) };
        if !give(tx, Item::Reconnecting { reason, retry_in }).await {
            return Ok(());
        }
        tokio::time::sleep(retry_in).await;
    }
}

/// Decides about a failed request: retries after a backoff (true), or fails with the error's message.
async fn retry_or_fail(
    error: KvsError,
    failures: &mut u32,
    endpoint: &mut Option<String>,
    tx: &Tx,
) -> Result<(), FinalError> {
    match error.action() {
        Action::Fail => Err(error.into()),
        action => {
            if action == Action::RefreshEndpoint {
                *endpoint = None;
            }
            *failures += 1;
            if *failures > 8 {
                return Err(FinalError { error, why: GaveUp::RetryLimit(*failures) });
            }
            let retry_in = backoff(*failures);
            if give(tx, Item::Reconnecting { reason: error.to_string(), retry_in }).await {
                tokio::time::sleep(retry_in).await;
            }
            Ok(())
        }
    }
}

#[derive(Debug, Clone)]
struct Listed {
    number: String,
    size: u64,
    time: f64,
}

async fn list(ctx: &AwsContext, config: &ReaderConfig, end: f64) -> Result<Vec<Listed>, KvsError> {
    let (kind, start) = match &config.start {
        Start::ProducerTimestamp(t) => ("PRODUCER_TIMESTAMP", *t),
        Start::ServerTimestamp(t) => ("SERVER_TIMESTAMP", *t),
        _ => ("SERVER_TIMESTAMP", 0.0),
    };
    let url = data_endpoint(ctx, &config.stream_name, ApiName::ListFragments).await?;
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut request = json!({
            "StreamName": config.stream_name,
            "FragmentSelector": {
                "FragmentSelectorType": kind,
                "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
            },
        });
        if let Some(token) = &next {
            request["NextToken"] = json!(token);
        }
        let body = post_json(ctx, &url, "/listFragments", "ListFragments", &request).await?;
        let bytes = read_all(body, ctx.request_timeout, "ListFragments").await?;
        let answer: Value = serde_json::from_slice(&bytes).map_err(|e| KvsError::BadResponse {
            api: "ListFragments",
            message: format!("ListFragments answered with something that is not JSON: {e}"),
        })?;
        let time_field = if kind == "PRODUCER_TIMESTAMP" { "ProducerTimestamp" } else { "ServerTimestamp" };
        for fragment in answer["Fragments"].as_array().into_iter().flatten() {
            out.push(Listed {
                number: fragment["FragmentNumber"].as_str().unwrap_or_default().to_owned(),
                size: fragment["FragmentSizeInBytes"].as_u64().unwrap_or(0),
                time: fragment[time_field].as_f64().unwrap_or(0.0),
            });
        }
        match answer["NextToken"].as_str() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => break,
        }
    }
    // ListFragments gives no order; the output is in time order.
    out.sort_by(|a, b| a.time.total_cmp(&b.time).then_with(|| a.number.cmp(&b.number)));
    Ok(out)
}

/// Bytes a GetMediaForFragmentList request asks for at most (unless one fragment is larger).
const BATCH_BYTES: u64 = 8 * 1024 * 1024;
const BATCH_FRAGMENTS: usize = 100;

async fn fetch(
    ctx: &AwsContext,
    url: &str,
    stream: &str,
    numbers: &[String],
) -> Result<Vec<Bytes>, KvsError> {
    let request = json!({"StreamName": stream, "Fragments": numbers});
    let mut failures = 0;
    loop {
        let attempt = async {
            let body =
                post_json(ctx, url, "/getMediaForFragmentList", "GetMediaForFragmentList", &request).await?;
            read_body(body, ctx.request_timeout).await
        };
        match attempt.await {
            Ok(bytes) => return Ok(bytes),
            Err(error) if error.action() != Action::Fail && failures < 4 => {
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A whole response body, in the pieces it came in (not copied); fails when no byte comes for `idle` (a
/// stalled connection), however long it takes.
async fn read_body(mut body: hyper::body::Incoming, idle: Duration) -> Result<Vec<Bytes>, KvsError> {
    let api = "GetMediaForFragmentList";
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(KvsError::Timeout { api, after: idle }),
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => {
                return Err(KvsError::Network { api, message: format!("the response broke: {e}") });
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.push(data);
                }
            }
        }
    }
}

/// A spawned task that is aborted when dropped (the element stopped reading).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn range(ctx: &AwsContext, config: &ReaderConfig, end: f64, tx: &Tx) -> Result<(), FinalError> {
    if !matches!(config.start, Start::Earliest | Start::ServerTimestamp(_) | Start::ProducerTimestamp(_)) {
        return Err(KvsError::Config(
            "end-timestamp needs start-selector earliest, server-timestamp or producer-timestamp".into(),
        )
        .into());
    }
    let fragments = list(ctx, config, end).await?;
    let total = fragments.len();
    let url = data_endpoint(ctx, &config.stream_name, ApiName::GetMediaForFragmentList).await?;
    // Enough batches to keep `parallel` requests busy, none larger than BATCH_BYTES (unless one fragment is).
    let per_batch = total.div_ceil(config.parallel.max(1) * 2).clamp(1, BATCH_FRAGMENTS);
    let mut batches: Vec<Vec<Listed>> = Vec::new();
    for fragment in fragments {
        match batches.last_mut() {
            Some(batch)
                if batch.len() < per_batch
                    && batch.iter().map(|f| f.size).sum::<u64>() + fragment.size <= BATCH_BYTES =>
            {
                batch.push(fragment)
            }
            _ => batches.push(vec![fragment]),
        }
    }
    // Each download is its own task, so downloads go on while earlier results are handed downstream; at most
    // `parallel` are in flight, and results come out in order.
    let mut downloads = futures::stream::iter(batches.into_iter().map(|batch| {
        let (ctx, url, stream) = (ctx.clone(), url.clone(), config.stream_name.clone());
        let numbers: Vec<String> = batch.iter().map(|f| f.number.clone()).collect();
        let count = numbers.len();
        let mut task = AbortOnDrop(tokio::spawn(async move { fetch(&ctx, &url, &stream, &numbers).await }));
        async move {
            match (&mut task.0).await {
                Ok(result) => result.map(|bytes| (count, bytes)),
                Err(e) => Err(KvsError::Network { api: "GetMediaForFragmentList", message: e.to_string() }),
            }
        }
    }))
    .buffered(config.parallel.max(1));
    let mut merger = config.merger();
    let mut token = None;
    let (mut done, mut bytes_read) = (0usize, 0u64);
    if !give(tx, Item::Progress { done, total, bytes: 0 }).await {
        return Ok(());
    }
    while let Some(result) = downloads.next().await {
        let (count, pieces) = result?;
        let bad = |e: kvs_mkv::Error| KvsError::BadResponse {
            api: "GetMediaForFragmentList",
            message: format!("GetMediaForFragmentList returned bad Matroska: {e}"),
        };
        let size: usize = pieces.iter().map(Bytes::len).sum();
        let mut outputs = Vec::new();
        for piece in pieces {
            outputs.extend(merger.push(piece).map_err(bad)?);
        }
        outputs.extend(merger.finish().map_err(bad)?);
        merger.interrupted();
        if !give_outputs(tx, outputs, &mut token).await? {
            return Ok(());
        }
        done += count;
        bytes_read += size as u64;
        if !give(tx, Item::Progress { done, total, bytes: bytes_read }).await {
            return Ok(());
        }
    }
    Ok(())
}
