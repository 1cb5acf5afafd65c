//! The uploader: one task on the shared runtime that owns the PutMedia connection for a stream.
//!
//! Fragments from the fragmenter wait in a bounded queue until the service has them for good (PERSISTED, or
//! RECEIVED for a stream without retention). The task sends the header and every fragment not yet sent on the
//! current connection, reads ACKs at the same time, and on a dropped connection, a retryable ERROR ACK, an HTTP
//! error or a stale connection it reconnects with exponential backoff and jitter and re-sends every fragment
//! that is not yet done, in order, after a fresh header. Before the service's connection time limit, or when
//! the stream header changes, it rotates: the old connection gets the end-of-fragment tag and drains its last
//! ACKs in the background while the next one already streams.
//!
//! Nothing here depends on GStreamer: the element hears about what happens through [`UploadEvent`]s.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::Rng;
use tokio::sync::{mpsc, watch};

use super::fragmenter::{Fragment, end_of_fragment_tag};
use crate::kvs::ack::{AckEvent, AckKind, AckParser};
use crate::kvs::config::AwsContext;
use crate::kvs::error::{AckErrorAction, Action, KvsError, ack_error_action};
use crate::kvs::putmedia::{self, PutMediaRequest};

/// How the uploader behaves; the element fills it from its properties.
#[derive(Debug, Clone)]
pub struct UploaderConfig {
    pub stream_name: String,
    /// 0: fragments are done when RECEIVED; otherwise when PERSISTED. Replaced by the created stream's
    /// retention when the stream is created.
    pub retention_hours: i32,
    /// The stream is missing: create it with these (and the media type of the first header) before uploading.
    pub create: Option<crate::kvs::control::CreateParams>,
    /// Ask for ACKs (`fragment-acks`); without them a fragment is done once written.
    pub acks: bool,
    /// No BUFFERING ACK this long after a fragment was sent: the connection is stale.
    pub staleness: Duration,
    /// Rotate the connection after this long (the service ends them at 45 min).
    pub rotation: Duration,
    pub max_queue_bytes: usize,
    pub max_queue_duration: Duration,
    /// Consecutive failed attempts (with no ACK in between) before giving up; 0: never give up.
    pub retry_limit: u32,
    /// Longest backoff between reconnections.
    pub max_backoff: Duration,
}

/// What the element is told.
#[derive(Debug, Clone)]
pub enum UploadEvent {
    Connected {
        connection: u64,
        endpoint: String,
        resending: usize,
    },
    Ack {
        connection: u64,
        ack: AckEvent,
        latency: Option<Duration>,
    },
    Disconnected {
        connection: u64,
        reason: String,
        retry_in: Duration,
        attempt: u32,
    },
    Rotating {
        connection: u64,
        reason: &'static str,
    },
    /// A fragment was dropped: the queue was full (live) or the service refused it for good.
    Dropped {
        timecode: u64,
        bytes: usize,
        reason: String,
    },
    /// The uploader gave up; nothing more will be sent.
    Failed(String),
}

/// Counters, readable at any time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes_sent: u64,
    pub fragments_queued: u64,
    pub fragments_sent: u64,
    pub fragments_received: u64,
    pub fragments_persisted: u64,
    pub fragments_dropped: u64,
    pub fragments_resent: u64,
    pub errors_acked: u64,
    pub connections: u64,
    pub reconnections: u64,
    pub last_ack_latency: Option<Duration>,
    pub queue_fragments: usize,
    pub queue_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    Sent { connection: u64, at: Instant },
    Buffering { connection: u64, at: Instant },
    Received { connection: u64, at: Instant },
}

impl State {
    fn connection(&self) -> Option<u64> {
        match *self {
            State::Queued => None,
            State::Sent { connection, .. }
            | State::Buffering { connection, .. }
            | State::Received { connection, .. } => Some(connection),
        }
    }
    fn sent_at(&self) -> Option<Instant> {
        match *self {
            State::Queued => None,
            State::Sent { at, .. } | State::Buffering { at, .. } | State::Received { at, .. } => Some(at),
        }
    }
}

struct Entry {
    fragment: Fragment,
    state: State,
    sends: u32,
}

#[derive(Default)]
struct Shared {
    queue: VecDeque<Entry>,
    queue_bytes: usize,
    /// No more fragments will come (EOS).
    end: bool,
    failed: Option<String>,
    stats: Stats,
    /// Incremented whenever fragments of a connection other than the current one are queued again: the
    /// current connection must then start over so that fragments stay in order.
    requeue_epoch: u64,
    /// Consecutive failures without an ACK.
    failures: u32,
}

impl Shared {
    fn queue_duration(&self) -> Duration {
        match (self.queue.front(), self.queue.back()) {
            (Some(first), Some(last)) => {
                let units = last.fragment.timecode.saturating_sub(first.fragment.timecode);
                Duration::from_nanos(units.saturating_mul(first.fragment.header.timecode_scale))
                    + last.fragment.duration
            }
            _ => Duration::ZERO,
        }
    }

    /// Queues again every fragment of `connection` that is not done.
    fn requeue(&mut self, connection: u64) -> usize {
        let mut count = 0;
        for entry in self.queue.iter_mut() {
            if entry.state.connection() == Some(connection) {
                entry.state = State::Queued;
                count += 1;
            }
        }
        count
    }

    fn remove_at(&mut self, index: usize) -> Option<Entry> {
        let entry = self.queue.remove(index)?;
        self.queue_bytes -= entry.fragment.size;
        Some(entry)
    }

    fn has_unsent(&self) -> bool {
        self.queue.iter().any(|e| e.state == State::Queued)
    }
}

/// The listener the element gives; called from the runtime's threads.
pub type Listener = Arc<dyn Fn(UploadEvent) + Send + Sync>;

/// See the module documentation.
pub struct Uploader {
    ctx: AwsContext,
    config: UploaderConfig,
    listener: Listener,
    shared: Mutex<Shared>,
    changed: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    retention_hours: std::sync::atomic::AtomicI32,
}

/// Why a connection ended.
enum End {
    /// Everything was sent and is done, after EOS.
    Done,
    /// Header change or time limit: go on with a new connection at once.
    Rotate,
    /// The service closed a connection that had nothing outstanding (idle).
    Idle,
}

/// Why a connection failed, and what to do about it.
struct Failure {
    reason: String,
    action: Action,
    /// An ERROR ACK that only costs one fragment: reconnect at once, no backoff.
    immediate: bool,
}

impl From<KvsError> for Failure {
    fn from(error: KvsError) -> Self {
        Failure { action: error.action(), reason: error.to_string(), immediate: false }
    }
}

impl Failure {
    fn retry(reason: impl Into<String>) -> Self {
        Failure { reason: reason.into(), action: Action::Retry, immediate: false }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Uploader {
    /// Starts the uploader task on the shared runtime.
    pub fn start(ctx: AwsContext, config: UploaderConfig, listener: Listener) -> Arc<Uploader> {
        let uploader = Arc::new(Uploader {
            ctx,
            config: config.clone(),
            listener,
            shared: Mutex::new(Shared::default()),
            changed: watch::channel(0).0,
            task: Mutex::new(None),
            retention_hours: std::sync::atomic::AtomicI32::new(config.retention_hours),
        });
        let task = crate::runtime::RUNTIME.spawn(uploader.clone().run());
        *uploader.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        uploader
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn emit(&self, event: UploadEvent) {
        (self.listener)(event);
    }

    pub fn stats(&self) -> Stats {
        let shared = self.lock();
        let mut stats = shared.stats.clone();
        stats.queue_fragments = shared.queue.len();
        stats.queue_bytes = shared.queue_bytes;
        stats
    }

    /// The reason the uploader gave up, if it did.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// True when the queue has room for `size` more bytes (or is empty).
    fn has_room(&self, shared: &Shared, size: usize) -> bool {
        shared.queue.is_empty()
            || (shared.queue_bytes + size <= self.config.max_queue_bytes
                && shared.queue_duration() < self.config.max_queue_duration)
    }

    /// Waits until the queue has room for `size` bytes, or the uploader failed (backpressure for uploads that
    /// are not live).
    pub async fn wait_for_room(&self, size: usize) -> Result<(), String> {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let shared = self.lock();
                if let Some(reason) = &shared.failed {
                    return Err(reason.clone());
                }
                if self.has_room(&shared, size) {
                    return Ok(());
                }
            }
            if changes.changed().await.is_err() {
                return Err("the uploader stopped".into());
            }
        }
    }

    /// Queues a fragment. When the queue is full, the oldest fragments not being sent are dropped to make
    /// room (a live source cannot wait); callers that can wait call [`wait_for_room`](Self::wait_for_room)
    /// first.
    pub fn push(&self, fragment: Fragment) -> Result<(), String> {
        let mut dropped = Vec::new();
        {
            let mut shared = self.lock();
            if let Some(reason) = &shared.failed {
                return Err(reason.clone());
            }
            while !self.has_room(&shared, fragment.size) {
                let Some(index) = shared.queue.iter().position(|e| e.state == State::Queued) else { break };
                if let Some(entry) = shared.remove_at(index) {
                    shared.stats.fragments_dropped += 1;
                    dropped.push(entry);
                }
            }
            shared.queue_bytes += fragment.size;
            shared.stats.fragments_queued += 1;
            shared.queue.push_back(Entry { fragment, state: State::Queued, sends: 0 });
        }
        for entry in dropped {
            self.emit(UploadEvent::Dropped {
                timecode: entry.fragment.timecode,
                bytes: entry.fragment.size,
                reason: format!(
                    "the fragment queue is full ({} bytes, {} s at most: storage-size, buffer-duration)",
                    self.config.max_queue_bytes,
                    self.config.max_queue_duration.as_secs()
                ),
            });
        }
        self.notify();
        Ok(())
    }

    /// No more fragments will come: after the last one, the end-of-fragment tag is sent.
    pub fn finish(&self) {
        self.lock().end = true;
        self.notify();
    }

    /// Waits until every fragment is done (after [`finish`](Self::finish)); `Err` when the uploader gave up.
    pub async fn wait_done(&self) -> Result<(), String> {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let shared = self.lock();
                if let Some(reason) = &shared.failed {
                    return Err(reason.clone());
                }
                if shared.end && shared.queue.is_empty() {
                    return Ok(());
                }
            }
            if changes.changed().await.is_err() {
                return Err("the uploader stopped".into());
            }
        }
    }

    /// Stops the task at once, dropping its connections.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    fn fail(&self, reason: String) {
        {
            let mut shared = self.lock();
            if shared.failed.is_some() {
                return;
            }
            shared.failed = Some(reason.clone());
        }
        self.notify();
        self.emit(UploadEvent::Failed(reason));
    }

    async fn wait_for_work(&self) -> bool {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let shared = self.lock();
                if shared.failed.is_some() || (shared.end && shared.queue.is_empty()) {
                    return false;
                }
                if shared.has_unsent() {
                    return true;
                }
            }
            if changes.changed().await.is_err() {
                return false;
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = Duration::from_millis(250).saturating_mul(1u32 << attempt.saturating_sub(1).min(10));
        let capped = base.min(self.config.max_backoff);
        // Full jitter in [50 %, 100 %] of the delay, so that many producers do not come back in step.
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    async fn run(self: Arc<Self>) {
        let mut endpoint: Option<String> = None;
        let mut connection = 0u64;
        let mut create = self.config.create.clone();
        while self.wait_for_work().await {
            if let Some(params) = &mut create {
                let media_type = {
                    let shared = self.lock();
                    shared.queue.front().and_then(|e| e.fragment.header.media_type.clone())
                };
                params.media_type = params.media_type.clone().or(media_type);
                match crate::kvs::control::ensure_stream(&self.ctx, &self.config.stream_name, Some(params))
                    .await
                {
                    Ok(description) => {
                        self.retention_hours
                            .store(description.retention_hours, std::sync::atomic::Ordering::Relaxed);
                        create = None;
                    }
                    Err(error) => {
                        if !self.after_failure(connection, error.into()).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let url = match &endpoint {
                Some(url) => url.clone(),
                None => match crate::kvs::control::data_endpoint(
                    &self.ctx,
                    &self.config.stream_name,
                    aws_sdk_kinesisvideo::types::ApiName::PutMedia,
                )
                .await
                {
                    Ok(url) => {
                        endpoint = Some(url.clone());
                        url
                    }
                    Err(error) => {
                        if !self.after_failure(connection, error.into()).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            connection += 1;
            match self.connection(connection, &url).await {
                Ok(End::Done) => {
                    self.notify();
                    return;
                }
                Ok(End::Rotate) | Ok(End::Idle) => {}
                Err(failure) => {
                    if failure.action == Action::RefreshEndpoint {
                        endpoint = None;
                    }
                    if !self.after_failure(connection, failure).await {
                        return;
                    }
                }
            }
        }
    }

    /// Requeues the connection's fragments, reports, and sleeps the backoff. False: give up.
    async fn after_failure(&self, connection: u64, failure: Failure) -> bool {
        let attempt = {
            let mut shared = self.lock();
            shared.requeue(connection);
            shared.stats.reconnections += 1;
            if !failure.immediate {
                shared.failures += 1;
            }
            shared.failures
        };
        if failure.action == Action::Fail {
            self.fail(failure.reason);
            return false;
        }
        if self.config.retry_limit > 0 && attempt > self.config.retry_limit {
            self.fail(format!(
                "gave up after {} failed attempts in a row; the last: {}",
                attempt, failure.reason
            ));
            return false;
        }
        let delay = if failure.immediate { Duration::ZERO } else { self.backoff(attempt) };
        self.emit(UploadEvent::Disconnected { connection, reason: failure.reason, retry_in: delay, attempt });
        tokio::time::sleep(delay).await;
        true
    }

    /// The next fragment to send on a connection: the first queued one.
    fn next_to_send(&self) -> Option<(usize, Fragment)> {
        let shared = self.lock();
        shared
            .queue
            .iter()
            .position(|e| e.state == State::Queued)
            .map(|i| (i, shared.queue[i].fragment.clone()))
    }

    async fn connection(self: &Arc<Self>, id: u64, endpoint: &str) -> Result<End, Failure> {
        let (header, epoch) = {
            let shared = self.lock();
            let Some(first) = shared.queue.iter().find(|e| e.state == State::Queued) else {
                return Ok(End::Idle);
            };
            (first.fragment.header.clone(), shared.requeue_epoch)
        };
        let request = PutMediaRequest {
            endpoint: endpoint.to_owned(),
            stream_name: self.config.stream_name.clone(),
            producer_start_ms: now_ms(),
            acks: self.config.acks,
        };
        let connection = putmedia::open(&self.ctx, &request).await?;
        let opened = Instant::now();
        let resending = {
            let mut shared = self.lock();
            shared.stats.connections += 1;
            shared.queue.iter().filter(|e| e.state == State::Queued && e.sends > 0).count()
        };
        self.emit(UploadEvent::Connected { connection: id, endpoint: endpoint.to_owned(), resending });
        let body = connection.body;
        let mut acks = connection.acks;
        let mut parser = AckParser::new();
        let mut changes = self.changed.subscribe();
        let write_timeout = self.config.staleness;
        send(&body, header.bytes.clone(), write_timeout).await?;
        self.lock().stats.bytes_sent += header.bytes.len() as u64;
        let mut end_of_fragment_sent = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            // Send what there is to send.
            loop {
                if self.lock().requeue_epoch != epoch {
                    return Err(Failure::retry("an earlier connection ended with fragments to re-send"));
                }
                let Some((_, fragment)) = self.next_to_send() else { break };
                if fragment.header.generation != header.generation {
                    self.emit(UploadEvent::Rotating { connection: id, reason: "the stream header changed" });
                    self.drain(id, body, acks, parser);
                    return Ok(End::Rotate);
                }
                if opened.elapsed() >= self.config.rotation {
                    self.emit(UploadEvent::Rotating {
                        connection: id,
                        reason: "connection-rotation reached",
                    });
                    self.drain(id, body, acks, parser);
                    return Ok(End::Rotate);
                }
                for chunk in &fragment.chunks {
                    send(&body, chunk.clone(), write_timeout).await?;
                }
                let mut shared = self.lock();
                shared.stats.bytes_sent += fragment.size as u64;
                shared.stats.fragments_sent += 1;
                // The entry may have been dropped meanwhile (queue overflow): find it by timecode.
                if let Some(index) =
                    shared.queue.iter().position(|e| e.fragment.timecode == fragment.timecode)
                {
                    if shared.queue[index].sends > 0 {
                        shared.stats.fragments_resent += 1;
                    }
                    shared.queue[index].sends += 1;
                    shared.queue[index].state = State::Sent { connection: id, at: Instant::now() };
                    if !self.config.acks {
                        shared.remove_at(index);
                    }
                }
            }
            let (end, empty) = {
                let shared = self.lock();
                (shared.end, shared.queue.is_empty())
            };
            if end && empty {
                close(body, acks, write_timeout).await;
                return Ok(End::Done);
            }
            if end && !end_of_fragment_sent {
                let tag = end_of_fragment_tag();
                send(&body, tag.clone(), write_timeout).await?;
                self.lock().stats.bytes_sent += tag.len() as u64;
                end_of_fragment_sent = true;
            }
            if let Some(stale) = self.stale_for(id) {
                return Err(Failure::retry(format!(
                    "no acknowledgement for {:.1} s after a fragment was sent (connection-staleness)",
                    stale.as_secs_f64()
                )));
            }
            tokio::select! {
                frame = acks.frame() => match frame {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            for ack in parser.push(&data) {
                                self.handle_ack(id, ack)?;
                            }
                        }
                    }
                    Some(Err(error)) => return Err(Failure::retry(format!("the connection broke: {error}"))),
                    None => {
                        let outstanding = self.lock().queue.iter().any(|e| e.state.connection() == Some(id));
                        if outstanding {
                            return Err(Failure::retry("the service closed the connection with fragments not yet acknowledged"));
                        }
                        return Ok(End::Idle);
                    }
                },
                _ = changes.changed() => {}
                _ = tick.tick() => {}
            }
        }
    }

    /// How long the oldest fragment of this connection waits for its first ACK, if longer than the staleness
    /// limit.
    fn stale_for(&self, connection: u64) -> Option<Duration> {
        if !self.config.acks {
            return None;
        }
        let shared = self.lock();
        shared
            .queue
            .iter()
            .filter_map(|e| match e.state {
                State::Sent { connection: c, at } if c == connection => Some(at.elapsed()),
                _ => None,
            })
            .max()
            .filter(|waited| *waited >= self.config.staleness)
    }

    /// Applies one ACK. An ERROR ACK ends the connection (the service closes it after one).
    fn handle_ack(
        &self,
        connection: u64,
        ack: Result<AckEvent, crate::kvs::ack::AckError>,
    ) -> Result<(), Failure> {
        let ack = match ack {
            Ok(ack) => ack,
            Err(error) => return Err(Failure::retry(format!("the service sent {error}"))),
        };
        if ack.kind == AckKind::Idle {
            return Ok(());
        }
        let now = Instant::now();
        let mut latency = None;
        let mut dropped = None;
        let mut result = Ok(());
        {
            let mut shared = self.lock();
            let index = shared.queue.iter().position(|e| {
                e.state.connection() == Some(connection) && Some(e.fragment.timecode) == ack.timecode
            });
            if let Some(index) = index {
                latency = shared.queue[index].state.sent_at().map(|at| now.duration_since(at));
                shared.failures = 0;
            }
            match (&ack.kind, index) {
                (AckKind::Buffering, Some(i)) => {
                    let at = shared.queue[i].state.sent_at().unwrap_or(now);
                    shared.queue[i].state = State::Buffering { connection, at };
                }
                (AckKind::Received, Some(i)) => {
                    shared.stats.fragments_received += 1;
                    if self.retention_hours.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                        shared.remove_at(i);
                    } else {
                        let at = shared.queue[i].state.sent_at().unwrap_or(now);
                        shared.queue[i].state = State::Received { connection, at };
                    }
                }
                (AckKind::Persisted, Some(i)) => {
                    shared.stats.fragments_persisted += 1;
                    shared.remove_at(i);
                    // The service persists in order: earlier received fragments of this connection are stored.
                    let timecode = ack.timecode.unwrap_or(0);
                    while let Some(j) = shared.queue.iter().position(|e| {
                        matches!(e.state, State::Received { connection: c, .. } if c == connection)
                            && e.fragment.timecode < timecode
                    }) {
                        shared.stats.fragments_persisted += 1;
                        shared.remove_at(j);
                    }
                }
                (AckKind::Error { id, code }, index) => {
                    shared.stats.errors_acked += 1;
                    let reason = format!(
                        "the service refused fragment {} with ERROR {id} {code}",
                        ack.timecode.unwrap_or(0)
                    );
                    match ack_error_action(*id) {
                        AckErrorAction::Resend => result = Err(Failure::retry(reason)),
                        AckErrorAction::SkipFragment => {
                            if let Some(entry) = index.and_then(|i| shared.remove_at(i)) {
                                shared.stats.fragments_dropped += 1;
                                dropped =
                                    Some((entry.fragment.timecode, entry.fragment.size, reason.clone()));
                            }
                            result = Err(Failure { reason, action: Action::Retry, immediate: true });
                        }
                        AckErrorAction::Fail => {
                            result = Err(Failure { reason, action: Action::Fail, immediate: false });
                        }
                    }
                }
                _ => {}
            }
        }
        if latency.is_some() {
            self.lock().stats.last_ack_latency = latency;
        }
        // Messages first: a waiter woken by the notification (EOS) must find them already on the bus.
        self.emit(UploadEvent::Ack { connection, ack, latency });
        if let Some((timecode, bytes, reason)) = dropped {
            self.emit(UploadEvent::Dropped { timecode, bytes, reason });
        }
        self.notify();
        result
    }

    /// Ends a connection gracefully in the background: the end-of-fragment tag, then its last ACKs until all
    /// its fragments are done. If it fails first, its fragments are queued again and the current connection
    /// starts over.
    fn drain(
        self: &Arc<Self>,
        connection: u64,
        body: mpsc::Sender<Bytes>,
        acks: Incoming,
        parser: AckParser,
    ) {
        let this = self.clone();
        crate::runtime::RUNTIME.spawn(async move { this.drain_task(connection, body, acks, parser).await });
    }

    async fn drain_task(
        self: Arc<Self>,
        connection: u64,
        body: mpsc::Sender<Bytes>,
        mut acks: Incoming,
        mut parser: AckParser,
    ) {
        let timeout = self.config.staleness;
        let ok = async {
            send(&body, end_of_fragment_tag(), timeout).await.ok()?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if !self.lock().queue.iter().any(|e| e.state.connection() == Some(connection)) {
                    return Some(());
                }
                let frame = tokio::time::timeout_at(deadline, acks.frame()).await.ok()??.ok()?;
                if let Ok(data) = frame.into_data() {
                    for ack in parser.push(&data) {
                        self.handle_ack(connection, ack).ok()?;
                    }
                }
            }
        }
        .await;
        if ok.is_some() {
            close(body, acks, timeout).await;
            return;
        }
        drop(body);
        let mut shared = self.lock();
        if shared.requeue(connection) > 0 {
            shared.requeue_epoch += 1;
        }
        drop(shared);
        self.notify();
    }
}

/// Ends the request body (hyper writes the last chunk) and reads the response to its end, so the service sees
/// a complete request rather than a reset connection. Bounded: a response that stays open is abandoned.
async fn close(body: mpsc::Sender<Bytes>, mut acks: Incoming, timeout: Duration) {
    drop(body);
    let _ = tokio::time::timeout(timeout, async { while let Some(Ok(_)) = acks.frame().await {} }).await;
}

async fn send(body: &mpsc::Sender<Bytes>, chunk: Bytes, timeout: Duration) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, body.send(chunk)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Failure::retry("the connection closed while sending")),
        Err(_) => Err(Failure::retry(format!(
            "the service took no data for {:.1} s (connection-staleness)",
            timeout.as_secs_f64()
        ))),
    }
}
