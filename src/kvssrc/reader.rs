// SPDX-License-Identifier: MPL-2.0

//! The reading side of kvssrc, free of GStreamer types: a task on the shared runtime that reads a stream and
//! sends [`Item`]s to the element through a bounded channel (the channel's bound is the backpressure).
//!
//! - Live (no end): GetMedia from the start selector; when a session ends (the service ends idle sessions) or
//!   breaks, GetMedia again from the continuation token, with exponential backoff and jitter after errors.
//! - Range (an end time): ListFragments over the range, then GetMediaForFragmentList in batches, up to
//!   `parallel` requests at once, the results written in order; EOS after the last.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use kvs_mkv::Rope;
use serde_json::{Value, json};
use tokio::sync::mpsc;
// tokio's clock, so that the unit tests run the backoff and pacing on paused time.
use tokio::time::Instant;

use super::merger::{FragmentInfo, FrameTimes, Merger, Mode, Output};
use crate::kvs::config::AwsContext;
use crate::kvs::control::data_endpoint;
use crate::kvs::error::{Action, FinalError, GaveUp, KvsError};
use crate::kvs::http::{post_json, read_all};
use crate::kvs::wire::{InPlace, post_json_in_place};
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
    /// How long a live read may go without reading before it fails; `None`: never.
    pub max_outage: Option<Duration>,
}

impl ReaderConfig {
    fn merger(&self) -> Merger {
        let merger = Merger::new(self.mode);
        if self.close_gaps {
            merger.closing_gaps()
        } else {
            merger
        }
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
    /// A live session ended or broke, or an attempt failed (`attempt` > 0: the outage's attempts so far);
    /// reading continues after `retry_in`.
    Reconnecting {
        reason: String,
        retry_in: Duration,
        attempt: u32,
    },
    /// A live read cannot read: the first failed attempt of an outage.
    OutageStarted {
        reason: String,
    },
    /// A live read reads again after an outage of `down`.
    Resumed {
        down: Duration,
        attempts: u32,
        millis_behind_now: Option<u64>,
    },
    /// Reading cannot go on.
    Error(FinalError),
}

/// Items go to the element in batches: one channel send, so one wake-up of the streaming thread, for all that
/// one network read made (up to a 1-MiB block's frames in a range read), not one per frame.
pub type Batch = Vec<Item>;

type Tx = mpsc::Sender<Batch>;

/// Batches the element may have waiting: the reader's backpressure.
pub const CHANNEL_BATCHES: usize = 16;

/// Sends an item; false when the element is gone.
async fn give(tx: &Tx, item: Item) -> bool {
    tx.send(vec![item]).await.is_ok()
}

/// A buffer holds at most this many memories (GStreamer merges them, copying, beyond it).
const MAX_PIECES_PER_ITEM: usize = 16;

/// Sends the merger's outputs; an error tag in the stream ends reading. Consecutive data goes as one item (one
/// buffer downstream) of at most [`MAX_PIECES_PER_ITEM`] pieces, except frames: each is an item of its own (a
/// buffer with its times).
async fn give_outputs(
    tx: &Tx,
    outputs: Vec<Output>,
    token: &mut Option<String>,
) -> Result<bool, KvsError> {
    let mut batch: Batch = Vec::with_capacity(outputs.len());
    let mut pending: Option<Rope> = None;
    let data = |data: Rope| Item::Data {
        data,
        header: false,
        frame: None,
    };
    for output in outputs {
        if let Output::Data {
            data: piece,
            header: false,
            frame: None,
        } = output
        {
            match pending.as_mut() {
                Some(rope) if rope.piece_count() + piece.piece_count() <= MAX_PIECES_PER_ITEM => {
                    rope.append(piece)
                }
                _ => batch.extend(pending.replace(piece).map(data)),
            }
            continue;
        }
        batch.extend(pending.take().map(data));
        let item = match output {
            Output::Data {
                data,
                header,
                frame,
            } => Item::Data {
                data,
                header,
                frame,
            },
            Output::Fragment(info) => Item::Fragment(info),
            Output::FragmentTags { number, tags } => Item::FragmentTags { number, tags },
            Output::Session {
                millis_behind_now,
                continuation_token,
            } => {
                if let Some(t) = &continuation_token {
                    *token = Some(t.clone());
                }
                Item::Session {
                    millis_behind_now,
                    continuation_token,
                }
            }
            Output::Error { code, id } => {
                // What came before the error tag goes out; nothing after it.
                if !batch.is_empty() {
                    let _ = tx.send(batch).await;
                }
                return Err(KvsError::InStream {
                    code,
                    id: id.to_string(),
                });
            }
        };
        batch.push(item);
    }
    batch.extend(pending.map(data));
    Ok(batch.is_empty() || tx.send(batch).await.is_ok())
}

/// Sessions in a row that may bring bytes that are not Matroska: the last of them ends reading with an error.
const MAX_BAD_SESSIONS: u32 = 3;

/// How far before the first NOW session a live reader that saw no fragment yet asks for more.
const NOW_MARGIN_S: f64 = 2.0;

/// The longest wait between two attempts (a live read in an outage, a throttled range read).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The wait before attempt `attempt` (1-based) after a failure: 250 ms doubling up to [`MAX_BACKOFF`], the
/// upper half random, so that readers that lost the service together do not all come back in the same instant.
fn backoff(attempt: u32) -> Duration {
    let cap = MAX_BACKOFF.as_millis() as u64;
    let base = 250u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(10))
        .min(cap);
    Duration::from_millis(base / 2 + rand::random_range(0..=base / 2))
}

/// The pause before the next GetMedia after a session that ended cleanly with nothing in it (an idle stream).
fn idle_pause() -> Duration {
    Duration::from_millis(rand::random_range(100..=200))
}

/// Reads until the range ends, an error that cannot be retried, or the element drops the channel.
pub async fn run(ctx: AwsContext, config: ReaderConfig, tx: Tx) {
    let result = match config.end {
        Some(end) => range(&ctx, &config, end, &tx).await,
        None => live(&ctx, &config, &tx).await,
    };
    if let Err(error) = result {
        let _ = give(&tx, Item::Error(error)).await;
    }
}

/// A live read that cannot read: since when, and how many attempts failed.
struct Outage {
    since: Instant,
    attempts: u32,
}

/// Ends an outage when the service answers again: the resume message says how long reading stopped (from the
/// first failure to the answer) and how far behind now the first fragment read is.
async fn end_outage(
    outage: &mut Option<Outage>,
    answered: Instant,
    millis_behind_now: Option<u64>,
    tx: &Tx,
) -> bool {
    match outage.take() {
        Some(o) => {
            let down = answered.saturating_duration_since(o.since);
            give(
                tx,
                Item::Resumed {
                    down,
                    attempts: o.attempts,
                    millis_behind_now,
                },
            )
            .await
        }
        None => true,
    }
}

async fn live(ctx: &AwsContext, config: &ReaderConfig, tx: &Tx) -> Result<(), FinalError> {
    let mut merger = config.merger();
    let mut start = config.start.clone();
    let mut endpoint: Option<String> = None;
    let mut outage: Option<Outage> = None;
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
                    wait_after(error, &mut outage, config.max_outage, &mut endpoint, tx).await?;
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
            let began = requested
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
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
                if !give(
                    tx,
                    Item::Reconnecting {
                        reason,
                        retry_in: Duration::ZERO,
                        attempt: 0,
                    },
                )
                .await
                {
                    return Ok(());
                }
                continue;
            }
            Err(error) => {
                wait_after(error, &mut outage, config.max_outage, &mut endpoint, tx).await?;
                continue;
            }
        };
        let answered = Instant::now();
        let mut token = None;
        let mut received = false;
        let (reason, clean) = loop {
            // A connection that stays open with nothing on it (a stalled proxy, a half-dead peer) is given up
            // after the request timeout and read again from the last continuation token.
            let frame = match tokio::time::timeout(ctx.request_timeout, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => {
                    let reason = format!(
                        "nothing arrived on the GetMedia connection for {:.1} s (request-timeout)",
                        ctx.request_timeout.as_secs_f64()
                    );
                    break (reason, false);
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    received = true;
                    let outputs = match merger.push(data) {
                        Ok(outputs) => outputs,
                        // Bytes mangled on the way: this session is unusable, the next one starts clean.
                        Err(e) => {
                            bad_sessions += 1;
                            if bad_sessions >= MAX_BAD_SESSIONS {
                                return Err(KvsError::BadResponse {
                                    api: "GetMedia",
                                    message: format!(
                                        "GetMedia returned bad Matroska {bad_sessions} times in a row: {e}"
                                    ),
                                }
                                .into());
                            }
                            break (format!("GetMedia returned bad Matroska: {e}"), false);
                        }
                    };
                    // GetMedia puts MILLIS_BEHIND_NOW after each fragment's frames: an outage ends there (or
                    // with the session, below).
                    let mut behind = None;
                    for output in &outputs {
                        match output {
                            Output::Fragment(info) => {
                                if let Some(server) = info
                                    .server_timestamp
                                    .as_deref()
                                    .and_then(|t| t.parse().ok())
                                {
                                    last_server_s = Some(server);
                                }
                            }
                            Output::Session {
                                millis_behind_now: Some(ms),
                                ..
                            } => behind = behind.or(Some(*ms)),
                            _ => {}
                        }
                    }
                    if behind.is_some() && !end_outage(&mut outage, answered, behind, tx).await {
                        return Ok(());
                    }
                    if !give_outputs(tx, outputs, &mut token).await? {
                        return Ok(());
                    }
                    if let Some(t) = token.take() {
                        start = Start::ContinuationToken(t);
                        bad_sessions = 0;
                    }
                }
                Some(Err(error)) => {
                    break (format!("the GetMedia connection broke: {error}"), false);
                }
                None => break ("the GetMedia session ended".to_owned(), true),
            }
        };
        merger.interrupted();
        if received || clean {
            // Reading went on (or the service ended a session on an idle stream): not an outage, or its end.
            if !end_outage(&mut outage, answered, None, tx).await {
                return Ok(());
            }
            let retry_in = if received {
                Duration::ZERO
            } else {
                idle_pause()
            };
            if !give(
                tx,
                Item::Reconnecting {
                    reason,
                    retry_in,
                    attempt: 0,
                },
            )
            .await
            {
                return Ok(());
            }
            tokio::time::sleep(retry_in).await;
        } else {
            // Answered, then nothing: as good as refused.
            let error = KvsError::Connection {
                api: "GetMedia",
                message: reason,
            };
            wait_after(error, &mut outage, config.max_outage, &mut endpoint, tx).await?;
        }
    }
}

/// After a failed attempt of a live read: fails at once when the error cannot be retried, or when the outage
/// has lasted `max_outage`; otherwise waits (capped exponential backoff with jitter). The outage's first
/// failure posts a warning.
async fn wait_after(
    error: KvsError,
    outage: &mut Option<Outage>,
    max_outage: Option<Duration>,
    endpoint: &mut Option<String>,
    tx: &Tx,
) -> Result<(), FinalError> {
    match error.action() {
        Action::Fail => return Err(error.into()),
        Action::RefreshEndpoint => *endpoint = None,
        Action::Retry => {}
    }
    let first = outage.is_none();
    let o = outage.get_or_insert_with(|| Outage {
        since: Instant::now(),
        attempts: 0,
    });
    o.attempts += 1;
    let down = o.since.elapsed();
    let mut retry_in = backoff(o.attempts);
    if let Some(max) = max_outage {
        if down >= max {
            return Err(FinalError {
                error,
                why: GaveUp::Outage(down, o.attempts),
            });
        }
        // One last attempt when the time is up.
        retry_in = retry_in.min(max - down);
    }
    let reason = error.to_string();
    if first
        && !give(
            tx,
            Item::OutageStarted {
                reason: reason.clone(),
            },
        )
        .await
    {
        return Ok(());
    }
    if give(
        tx,
        Item::Reconnecting {
            reason,
            retry_in,
            attempt: o.attempts,
        },
    )
    .await
    {
        tokio::time::sleep(retry_in).await;
    }
    Ok(())
}

/// Keeps calls of one API on one stream within the service's rate (5 a second for ListFragments and
/// GetMediaForFragmentList), with a margin for requests that bunch up on the way.
#[derive(Debug, Default)]
struct Pacer(tokio::sync::Mutex<std::collections::VecDeque<Instant>>);

impl Pacer {
    const CALLS: usize = 5;
    const WINDOW: Duration = Duration::from_millis(1100);

    async fn wait(&self) {
        let mut calls = self.0.lock().await;
        loop {
            let now = Instant::now();
            while calls
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Self::WINDOW)
            {
                calls.pop_front();
            }
            match calls.front() {
                Some(oldest) if calls.len() >= Self::CALLS => {
                    tokio::time::sleep_until(*oldest + Self::WINDOW).await
                }
                _ => break,
            }
        }
        calls.push_back(Instant::now());
    }
}

#[derive(Debug, Clone)]
struct Listed {
    number: String,
    size: u64,
    time: f64,
}

/// Calls `call` again after throttling (ClientLimitExceeded, ConnectionLimitExceeded) with backoff, and after
/// other retryable errors up to 4 times.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, KvsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, KvsError>>,
{
    let (mut failures, mut throttled) = (0u32, 0u32);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_throttle() && throttled < MAX_THROTTLED => {
                throttled += 1;
                tokio::time::sleep(backoff(throttled)).await;
            }
            Err(error)
                if error.action() != Action::Fail && !error.is_throttle() && failures < 4 =>
            {
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Throttled answers in a row a range read's call takes before it fails (about 4 minutes of backoff).
const MAX_THROTTLED: u32 = 30;

/// The fragments whose start lies in `from..=end` (seconds) on the selector's timeline, in time order.
async fn list(
    ctx: &AwsContext,
    config: &ReaderConfig,
    url: &str,
    pacer: &Pacer,
    from: f64,
    end: f64,
) -> Result<Vec<Listed>, KvsError> {
    let kind = match &config.start {
        Start::ProducerTimestamp(_) => "PRODUCER_TIMESTAMP",
        _ => "SERVER_TIMESTAMP",
    };
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut request = json!({
            "StreamName": config.stream_name,
            "FragmentSelector": {
                "FragmentSelectorType": kind,
                "TimestampRange": {"StartTimestamp": from, "EndTimestamp": end},
            },
        });
        if let Some(token) = &next {
            request["NextToken"] = json!(token);
        }
        let answer = patiently(|| async {
            pacer.wait().await;
            let body = post_json(ctx, url, "/listFragments", "ListFragments", &request).await?;
            read_all(body, ctx.request_timeout, "ListFragments").await
        })
        .await?;
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| KvsError::BadResponse {
            api: "ListFragments",
            message: format!("ListFragments answered with something that is not JSON: {e}"),
        })?;
        let time_field = if kind == "PRODUCER_TIMESTAMP" {
            "ProducerTimestamp"
        } else {
            "ServerTimestamp"
        };
        for fragment in answer["Fragments"].as_array().into_iter().flatten() {
            out.push(Listed {
                number: fragment["FragmentNumber"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
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
    out.sort_by(|a, b| {
        a.time
            .total_cmp(&b.time)
            .then_with(|| a.number.cmp(&b.number))
    });
    Ok(out)
}

/// Bytes a GetMediaForFragmentList request asks for at most (unless one fragment is larger): a second at the
/// service's 25 MB/s per connection, so that `parallel` connections are kept busy by fewer than the 5 calls a
/// second the service allows (smaller batches would make the call rate, not the connections, the limit). A
/// range read holds up to `parallel` of them in memory.
const BATCH_BYTES: u64 = 25_000_000;
const BATCH_FRAGMENTS: usize = 100;

/// Reusable 1-MiB blocks that range downloads read response bytes into ([`InPlace`]: the connection writes
/// into them, nothing copies). Holding the network's own buffers until downstream releases them made hyper
/// allocate fresh ones for every read, and fresh pages (page faults, zeroing, unmapping) cost more than the
/// reading: a block comes back here when the last buffer that points into it is released, and the next
/// response fills it again.
#[derive(Debug)]
struct BlockPool {
    free: std::sync::Mutex<Vec<Box<[u8]>>>,
    /// Free blocks kept; more are given back to the allocator.
    keep: usize,
}

impl BlockPool {
    const BLOCK: usize = 1 << 20;

    /// A pool for `parallel` downloads: it keeps as many blocks as they hold at most (a batch each, and one
    /// more being filled), so that a range read reuses its memory instead of asking for fresh pages.
    fn for_downloads(parallel: usize) -> BlockPool {
        let per_download = BATCH_BYTES as usize / Self::BLOCK + 2;
        BlockPool {
            free: std::sync::Mutex::default(),
            keep: parallel.max(1) * per_download,
        }
    }

    fn take(&self) -> Box<[u8]> {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| vec![0; Self::BLOCK].into_boxed_slice())
    }

    /// The payload of a filled block, as `Bytes` that share it (it returns here when the last goes).
    fn pieces(
        self: &std::sync::Arc<Self>,
        data: Box<[u8]>,
        ranges: Vec<Range<usize>>,
    ) -> Vec<Bytes> {
        if ranges.is_empty() {
            self.give_back(data);
            return Vec::new();
        }
        let block = Bytes::from_owner(Block {
            data,
            pool: self.clone(),
        });
        ranges.into_iter().map(|r| block.slice(r)).collect()
    }

    fn give_back(&self, data: Box<[u8]>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(data);
        }
    }
}

/// A filled block, shared by the `Bytes` that point into it; it returns to its pool when the last goes.
struct Block {
    data: Box<[u8]>,
    pool: std::sync::Arc<BlockPool>,
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.data));
    }
}

/// Sends the pieces of one GetMediaForFragmentList response into `tx` a block at a time as they arrive, then
/// closes it; a failure is the last thing sent. The request is retried (throttling with patience) until it is
/// answered; once bytes came, the reader decides (it knows what it has written). `expected`: the listed sizes
/// of the fragments asked for.
async fn stream_batch(
    ctx: AwsContext,
    url: String,
    pacer: std::sync::Arc<Pacer>,
    pool: std::sync::Arc<BlockPool>,
    request: Value,
    expected: u64,
    tx: mpsc::UnboundedSender<Result<Vec<Bytes>, KvsError>>,
) {
    let api = "GetMediaForFragmentList";
    let answered = patiently(|| async {
        pacer.wait().await;
        post_json_in_place(&ctx, &url, "/getMediaForFragmentList", api, &request).await
    })
    .await;
    let mut body = match answered {
        Ok(body) => body,
        Err(error) => {
            let _ = tx.send(Err(error));
            return;
        }
    };
    // The listed sizes: the socket may gather bytes before it wakes this task while much more is owed.
    body.expect(expected);
    let idle = ctx.request_timeout;
    // The bytes go to the reader a block at a time: one wake-up (and one burst of buffers downstream) per block,
    // not per read.
    let mut into = InPlace::new(pool.take());
    loop {
        let read = match tokio::time::timeout(idle, body.read_in_place(&mut into)).await {
            Err(_) => Err(KvsError::Timeout { api, after: idle }),
            Ok(Err(e)) => Err(KvsError::Network {
                api,
                message: format!("the response broke: {e}"),
            }),
            Ok(Ok(more)) => Ok(more),
        };
        match read {
            Ok(true) => {
                if into.is_full() {
                    let (data, ranges) = into.swap(pool.take());
                    if tx.send(Ok(pool.pieces(data, ranges))).is_err() {
                        return;
                    }
                }
            }
            Ok(false) | Err(_) => {
                let (data, ranges) = into.finish();
                let rest = pool.pieces(data, ranges);
                if !rest.is_empty() {
                    let _ = tx.send(Ok(rest));
                }
                if let Err(error) = read {
                    let _ = tx.send(Err(error));
                }
                return;
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

/// How often a range whose end is still ahead lists the fragments again.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// How long after its end a range that follows the stream waits for a fragment that starts after the end (which
/// tells that the producer's earlier fragments are all stored) before it ends anyway: longer than a fragment.
const FOLLOW_GRACE_S: f64 = 12.0;

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// What a range read has written so far.
struct RangeOutput {
    merger: Merger,
    token: Option<String>,
    done: usize,
    total: usize,
    bytes: u64,
}

async fn range(
    ctx: &AwsContext,
    config: &ReaderConfig,
    end: f64,
    tx: &Tx,
) -> Result<(), FinalError> {
    let from = match config.start {
        Start::Earliest => 0.0,
        Start::ServerTimestamp(t) | Start::ProducerTimestamp(t) => t,
        _ => {
            return Err(KvsError::Config(
                "end-timestamp needs start-selector earliest, server-timestamp or producer-timestamp".into(),
            )
            .into());
        }
    };
    let list_url = data_endpoint(ctx, &config.stream_name, ApiName::ListFragments).await?;
    let get_url = data_endpoint(ctx, &config.stream_name, ApiName::GetMediaForFragmentList).await?;
    let list_pacer = Pacer::default();
    let fetcher = Fetcher {
        ctx,
        url: &get_url,
        stream: &config.stream_name,
        pacer: std::sync::Arc::default(),
        pool: std::sync::Arc::new(BlockPool::for_downloads(config.parallel)),
    };
    // A range that ends in the future follows the stream: it lists again as time passes, reads what is new,
    // and ends once the end is past and a fragment after it is stored (or FOLLOW_GRACE_S after the end).
    let follow = end > now_s();
    let mut out = RangeOutput {
        merger: config.merger(),
        token: None,
        done: 0,
        total: 0,
        bytes: 0,
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut last_round = !follow;
    let mut first = true;
    loop {
        // New since the last listing (a number listed twice in one listing is the service's repeat: the merger
        // leaves it out with a warning).
        let fragments: Vec<Listed> = list(ctx, config, &list_url, &list_pacer, from, end)
            .await?
            .into_iter()
            .filter(|f| !seen.contains(&f.number))
            .collect();
        seen.extend(fragments.iter().map(|f| f.number.clone()));
        out.total += fragments.len();
        if (std::mem::take(&mut first) || !fragments.is_empty())
            && !give(
                tx,
                Item::Progress {
                    done: out.done,
                    total: out.total,
                    bytes: out.bytes,
                },
            )
            .await
        {
            return Ok(());
        }
        if !download(&fetcher, config, fragments, &mut out, tx).await? {
            return Ok(());
        }
        if last_round {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        let now = now_s();
        if now > end {
            let later = list(ctx, config, &list_url, &list_pacer, end + 0.001, now + 60.0).await?;
            if !later.is_empty() || now > end + FOLLOW_GRACE_S {
                // One more listing, after the service's listing caught up (it lags storage by up to a second).
                tokio::time::sleep(FOLLOW_INTERVAL).await;
                last_round = true;
            }
        }
    }
}

/// One batch's download: its fragments, the pieces as they come, the task.
struct Download {
    batch: Vec<Listed>,
    pieces: mpsc::UnboundedReceiver<Result<Vec<Bytes>, KvsError>>,
    _task: AbortOnDrop<()>,
}

/// What every download of a range read shares: where to, the call pacing, the blocks.
struct Fetcher<'a> {
    ctx: &'a AwsContext,
    url: &'a str,
    stream: &'a str,
    pacer: std::sync::Arc<Pacer>,
    pool: std::sync::Arc<BlockPool>,
}

fn start_download(f: &Fetcher<'_>, batch: Vec<Listed>) -> Download {
    let (tx, pieces) = mpsc::unbounded_channel();
    let numbers: Vec<&str> = batch.iter().map(|f| f.number.as_str()).collect();
    let task = tokio::spawn(stream_batch(
        f.ctx.clone(),
        f.url.to_owned(),
        f.pacer.clone(),
        f.pool.clone(),
        json!({"StreamName": f.stream, "Fragments": numbers}),
        batch.iter().map(|f| f.size).sum(),
        tx,
    ));
    Download {
        batch,
        pieces,
        _task: AbortOnDrop(task),
    }
}

/// Downloads `fragments` (in time order) and writes them; false when the element is gone.
///
/// Up to `parallel` batches download at once, each into its own channel; the oldest is written as its bytes
/// arrive (merged mode), so that memory is reused piece by piece instead of whole batches being held (fresh
/// pages for every batch were most of kvssrc's CPU beyond a bare client's). A batch that breaks off is asked
/// for again from the fragment it was in, which the merger continues. Raw mode writes a batch once it is whole
/// (its bytes go out unchanged, so a cut document must not).
async fn download(
    fetcher: &Fetcher<'_>,
    config: &ReaderConfig,
    fragments: Vec<Listed>,
    out: &mut RangeOutput,
    tx: &Tx,
) -> Result<bool, FinalError> {
    // Enough batches to keep `parallel` requests busy, none larger than BATCH_BYTES (unless one fragment is).
    let per_batch = fragments
        .len()
        .div_ceil(config.parallel.max(1) * 2)
        .clamp(1, BATCH_FRAGMENTS);
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
    let streaming = config.mode == Mode::Merged;
    let mut waiting = batches.into_iter();
    let mut active: std::collections::VecDeque<Download> = waiting
        .by_ref()
        .take(config.parallel.max(1))
        .map(|b| start_download(fetcher, b))
        .collect();
    let bad = |e: kvs_mkv::Error| KvsError::BadResponse {
        api: "GetMediaForFragmentList",
        message: format!("GetMediaForFragmentList returned bad Matroska: {e}"),
    };
    while let Some(mut head) = active.pop_front() {
        let (mut size, mut failures) = (0u64, 0u32);
        // Where in the batch the fragment being written is (to ask again from there), and raw mode's pieces.
        let mut current = 0usize;
        let mut announced = false;
        let mut held: Vec<Bytes> = Vec::new();
        loop {
            match head.pieces.recv().await {
                Some(Ok(pieces)) if streaming => {
                    let mut outputs = Vec::new();
                    for piece in pieces {
                        size += piece.len() as u64;
                        outputs.extend(out.merger.push(piece).map_err(bad)?);
                    }
                    for output in &outputs {
                        if let Output::Fragment(info) = output
                            && let Some(i) = head.batch.iter().position(|f| f.number == info.number)
                        {
                            current = i;
                            announced = true;
                        }
                    }
                    if !give_outputs(tx, outputs, &mut out.token).await? {
                        return Ok(false);
                    }
                }
                Some(Ok(pieces)) => held.extend(pieces),
                None => break,
                Some(Err(error)) => {
                    if error.action() == Action::Fail || failures >= 4 {
                        return Err(error.into());
                    }
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                    let rest = if streaming {
                        // From the fragment cut off, or the one after the last written whole.
                        let from = if !announced || out.merger.in_cluster() {
                            current
                        } else {
                            current + 1
                        };
                        out.merger.interrupted();
                        head.batch[from.min(head.batch.len())..].to_vec()
                    } else {
                        held.clear();
                        head.batch.clone()
                    };
                    if rest.is_empty() {
                        break; // it broke after the last fragment's frames: nothing is missing
                    }
                    let again = start_download(fetcher, rest);
                    head.pieces = again.pieces;
                    head._task = again._task;
                }
            }
        }
        if let Some(next) = waiting.next() {
            active.push_back(start_download(fetcher, next));
        }
        let mut outputs = Vec::new();
        for piece in held {
            size += piece.len() as u64;
            outputs.extend(out.merger.push(piece).map_err(bad)?);
        }
        outputs.extend(out.merger.finish().map_err(bad)?);
        out.merger.interrupted();
        if !give_outputs(tx, outputs, &mut out.token).await? {
            return Ok(false);
        }
        out.done += head.batch.len();
        out.bytes += size;
        if !give(
            tx,
            Item::Progress {
                done: out.done,
                total: out.total,
                bytes: out.bytes,
            },
        )
        .await
        {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    //! The reader's retry, outage and pacing rules on tokio's paused clock (no service, no network), and how
    //! the merger's outputs become items.

    use super::*;

    fn network() -> KvsError {
        KvsError::Network {
            api: "GetMedia",
            message: "connection refused".into(),
        }
    }

    fn throttled() -> KvsError {
        KvsError::Service {
            api: "ListFragments",
            status: 400,
            code: "ClientLimitExceededException".into(),
            message: "slow down".into(),
            request_id: None,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Batch>) -> Vec<Item> {
        let mut items = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            items.extend(batch);
        }
        items
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_warns_once_backs_off_up_to_10_s_and_ends_at_max_outage() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut outage = None;
        let mut endpoint = Some("https://old".to_owned());
        let started = Instant::now();
        let mut waits = Vec::new();
        let error = loop {
            let before = Instant::now();
            match wait_after(
                network(),
                &mut outage,
                Some(Duration::from_secs(60)),
                &mut endpoint,
                &tx,
            )
            .await
            {
                Ok(()) => waits.push(before.elapsed()),
                Err(error) => break error,
            }
        };
        // Ended when the outage reached max-outage, with the attempts so far.
        assert_eq!(
            error.why,
            GaveUp::Outage(started.elapsed(), waits.len() as u32 + 1)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert_eq!(
            endpoint.as_deref(),
            Some("https://old"),
            "a network error keeps the endpoint"
        );
        // 250 ms doubling, each in the upper half of its step, capped at 10 s; the last one cut to end at 60 s.
        for (attempt, wait) in waits.iter().enumerate().take(waits.len() - 1) {
            let step = Duration::from_millis(250 * (1u64 << attempt.min(10))).min(MAX_BACKOFF);
            assert!(
                *wait >= step / 2 && *wait <= step,
                "attempt {}: {wait:?} for a step of {step:?}",
                attempt + 1
            );
        }
        let items = drain(&mut rx);
        let started_items = items
            .iter()
            .filter(|i| matches!(i, Item::OutageStarted { .. }))
            .count();
        assert_eq!(started_items, 1, "one warning per outage");
        let attempts: Vec<u32> = items
            .iter()
            .filter_map(|i| match i {
                Item::Reconnecting { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .collect();
        assert_eq!(attempts, (1..=waits.len() as u32).collect::<Vec<_>>());

        // Reading again: the resume message says how long reading stopped and how many attempts failed.
        let mut outage = Some(Outage {
            since: started,
            attempts: 7,
        });
        assert!(end_outage(&mut outage, Instant::now(), Some(1500), &tx).await);
        match drain(&mut rx).as_slice() {
            [
                Item::Resumed {
                    down,
                    attempts: 7,
                    millis_behind_now: Some(1500),
                },
            ] => {
                assert_eq!(*down, Duration::from_secs(60))
            }
            other => panic!("{other:?}"),
        }
        assert!(outage.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn without_max_outage_a_live_read_keeps_trying_and_errors_that_cannot_be_retried_end_it_at_once()
     {
        let (tx, mut rx) = mpsc::channel(1024);
        let (mut outage, mut endpoint) = (None, None);
        for _ in 0..200 {
            wait_after(network(), &mut outage, None, &mut endpoint, &tx)
                .await
                .unwrap();
            drain(&mut rx);
        }
        // 200 attempts, most of them at the 10-s cap: at least 100 s of outage, and still trying.
        let since = outage.as_ref().unwrap().since;
        assert!(
            since.elapsed() >= Duration::from_secs(100),
            "{:?}",
            since.elapsed()
        );

        let refused = KvsError::Service {
            api: "GetMedia",
            status: 404,
            code: "ResourceNotFoundException".into(),
            message: "no such stream".into(),
            request_id: None,
        };
        let before = Instant::now();
        let error = wait_after(refused.clone(), &mut outage, None, &mut endpoint, &tx)
            .await
            .unwrap_err();
        assert_eq!(error.error, refused);
        assert_eq!(before.elapsed(), Duration::ZERO, "no wait before giving up");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_retried_through_throttling_and_a_few_other_failures_only() {
        // Throttled three times, then answered.
        let calls = std::cell::Cell::new(0);
        let started = Instant::now();
        let answer = patiently(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n <= 3 { Err(throttled()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(answer, Ok(4));
        // Backoffs of 125-250, 250-500 and 500-1000 ms.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(875) && waited <= Duration::from_millis(1750),
            "{waited:?}"
        );

        // A network failure: four retries, then the error.
        calls.set(0);
        let answer: Result<(), _> = patiently(|| {
            calls.set(calls.get() + 1);
            async { Err(network()) }
        })
        .await;
        assert_eq!(answer, Err(network()));
        assert_eq!(calls.get(), 5);

        // Throttled for good: MAX_THROTTLED retries, then the error.
        calls.set(0);
        let answer: Result<(), _> = patiently(|| {
            calls.set(calls.get() + 1);
            async { Err(throttled()) }
        })
        .await;
        assert_eq!(answer, Err(throttled()));
        assert_eq!(calls.get(), MAX_THROTTLED + 1);

        // Refused: no retry.
        calls.set(0);
        let refused = KvsError::Credentials("no keys".into());
        let answer: Result<(), _> = patiently(|| {
            calls.set(calls.get() + 1);
            let refused = refused.clone();
            async move { Err(refused) }
        })
        .await;
        assert_eq!(answer, Err(refused));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_lets_five_calls_through_in_each_1_1_s() {
        let pacer = Pacer::default();
        let started = Instant::now();
        let mut at = Vec::new();
        for _ in 0..12 {
            pacer.wait().await;
            at.push(started.elapsed().as_millis());
        }
        assert_eq!(
            at,
            [0, 0, 0, 0, 0, 1100, 1100, 1100, 1100, 1100, 2200, 2200]
        );
    }

    #[tokio::test]
    async fn merger_outputs_become_items_data_coalesced_frames_apart_an_error_tag_fails() {
        let data = |n: u8| Output::Data {
            data: Rope::from(Bytes::from(vec![n; 4])),
            header: false,
            frame: None,
        };
        let (tx, mut rx) = mpsc::channel(64);
        let mut token = None;
        // 20 pieces of plain data: two items (16 pieces at most in one buffer), then a session, then more data.
        let mut outputs: Vec<Output> = (0..20).map(data).collect();
        outputs.push(Output::Session {
            millis_behind_now: Some(40),
            continuation_token: Some("91343852333181432392682062607743920146159169392".into()),
        });
        outputs.push(data(99));
        assert_eq!(give_outputs(&tx, outputs, &mut token).await, Ok(true));
        let items = drain(&mut rx);
        let shape: Vec<String> = items
            .iter()
            .map(|i| match i {
                Item::Data { data, .. } => format!("data {}", data.piece_count()),
                Item::Session { .. } => "session".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(shape, ["data 16", "data 4", "session", "data 1"]);
        assert_eq!(
            token.as_deref(),
            Some("91343852333181432392682062607743920146159169392")
        );

        let error = give_outputs(
            &tx,
            vec![
                data(1),
                Output::Error {
                    code: "MISSING_PRODUCER_TIMESTAMP".into(),
                    id: "4010".into(),
                },
                data(2),
            ],
            &mut token,
        )
        .await;
        assert_eq!(
            error,
            Err(KvsError::InStream {
                code: "MISSING_PRODUCER_TIMESTAMP".into(),
                id: "4010".into()
            })
        );
        // What came before the error tag went out; nothing after it.
        assert_eq!(drain(&mut rx).len(), 1);
    }
}
