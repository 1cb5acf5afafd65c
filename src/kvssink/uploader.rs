// SPDX-License-Identifier: MPL-2.0

//! The uploader: one task on the shared runtime that owns the PutMedia connection for a stream.
//!
//! Fragments arrive frame by frame from the fragmenter ([`start_fragment`](Uploader::start_fragment),
//! [`push_frame`](Uploader::push_frame), [`end_fragment`](Uploader::end_fragment)) and each frame goes to the
//! connection as soon as it is queued: the task wakes on every change and writes what is new as one HTTP chunk
//! (the frame's own memory, no copy). Fragments stay queued until the service has them for good (PERSISTED, or
//! RECEIVED for a stream without retention). The task reads ACKs at the same time, and on a dropped
//! connection, a retryable ERROR ACK, an HTTP error or a stale connection it reconnects at once (with
//! exponential backoff and jitter when that fails too) and re-sends every fragment that is not yet done, in order, after a fresh header (a
//! fragment still being written continues on the new connection). Before the service's connection time limit,
//! or when the stream header changes, it rotates at the next fragment: the old connection gets the
//! end-of-fragment tag and its last ACKs are read before the next one opens (the service takes one PutMedia
//! connection per stream, and a newer one replaces the older); frames that come meanwhile wait in the queue.
//!
//! The first connection is opened as soon as the task starts (when the stream exists), so that the first frame
//! does not wait for GetDataEndpoint and the request's round trip.
//!
//! Nothing here depends on GStreamer: the element hears about what happens through [`UploadEvent`]s.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng;
use tokio::sync::watch;

use kvs_mkv::Rope;

use super::fragmenter::{FragmentStart, StreamHeader, end_of_fragment_tag};
use super::queue::{Cursor, FragmentQueue, Limits, Next, Stats};
use super::store::{FragmentFile, RecoveredFragment};
use crate::kvs::ack::{AckEvent, AckKind, AckParser};
use crate::kvs::config::AwsContext;
use crate::kvs::error::{Action, FinalError, GaveUp, KvsError};
use crate::kvs::putmedia::{self, AckStream, BodyWriter, PutMediaRequest};

/// How long the service keeps a PutMedia connection that carries no data (the service: 30 s; a little less, to
/// tell its idle close from a response that ends at once).
const IDLE_CLOSE: Duration = Duration::from_secs(25);

/// The service reads at most this many fragments a second on a stream, and this many bytes (PutMedia's
/// documented limits): a backlog goes up no faster, so that the service never has to hold the connection back.
pub const SERVICE_FRAGMENTS_PER_SECOND: usize = 5;
pub const SERVICE_BYTES_PER_SECOND: f64 = 12_500_000.0;

/// Keeps one connection within the service's ingest limits: a fragment starts at most as the fifth of the last
/// second, and bytes go out at most at the byte rate (a token bucket holding one second of it). Live media,
/// at a few fragments a minute, never waits; a backlog goes up at the limits.
#[derive(Debug)]
struct Pacer {
    starts: std::collections::VecDeque<Instant>,
    /// Bytes that may go now, and when that was counted.
    allowance: f64,
    counted: Instant,
}

impl Pacer {
    fn new(now: Instant) -> Self {
        Pacer {
            starts: Default::default(),
            allowance: SERVICE_BYTES_PER_SECOND,
            counted: now,
        }
    }

    /// How long a new fragment must wait.
    fn fragment_wait(&self, now: Instant) -> Duration {
        match self.starts.len() {
            n if n >= SERVICE_FRAGMENTS_PER_SECOND => {
                (self.starts[n - SERVICE_FRAGMENTS_PER_SECOND] + Duration::from_secs(1))
                    .saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        }
    }

    fn fragment_started(&mut self, now: Instant) {
        self.starts.push_back(now);
        while self.starts.len() > SERVICE_FRAGMENTS_PER_SECOND {
            self.starts.pop_front();
        }
    }

    /// The bytes that may go at `now` without waiting (at most a second's worth).
    fn allowance_at(&self, now: Instant) -> f64 {
        let refill =
            now.saturating_duration_since(self.counted).as_secs_f64() * SERVICE_BYTES_PER_SECOND;
        (self.allowance + refill).min(SERVICE_BYTES_PER_SECOND)
    }

    /// Whether `bytes` may go now without waiting.
    fn bytes_ready(&self, bytes: usize, now: Instant) -> bool {
        self.allowance_at(now) >= bytes as f64
    }

    /// Counts `bytes` about to go; returns how long to wait first.
    fn bytes_wait(&mut self, bytes: usize, now: Instant) -> Duration {
        self.allowance = self.allowance_at(now) - bytes as f64;
        self.counted = now;
        if self.allowance >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.allowance / SERVICE_BYTES_PER_SECOND)
        }
    }
}

/// How the uploader behaves; the element fills it from its properties.
#[derive(Debug, Clone)]
pub struct UploaderConfig {
    pub stream_name: String,
    /// 0: fragments are done when RECEIVED; otherwise when PERSISTED. Replaced by the created stream's
    /// retention when the stream is created.
    pub retention_hours: i32,
    /// The stream is missing: create it with these (and the media type of the first header) before uploading.
    pub create: Option<crate::kvs::control::CreateParams>,
    /// The stream could not be checked at start (the service was unreachable and there is a fragment store):
    /// check it (and create it, with `create`) before the first connection.
    pub check_stream: bool,
    /// Media is kept in a fragment store on disk: connection failures never make the upload give up
    /// (`retry-limit` is for uploads that hold media in RAM only).
    pub durable: bool,
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
    /// Put before kvssink's own user agent in PutMedia requests.
    pub user_agent: Option<String>,
    /// Reconnect after a failure (false: the first failure is final, the C++ `restart-on-error=false`).
    pub restart_on_error: bool,
    /// Keep a connection open while there is nothing to send (see [`set_active`](Uploader::set_active)).
    pub active: bool,
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
    /// An ACK line that could not be read was skipped; the connection goes on (a later PERSISTED covers the
    /// fragments before it).
    UnreadableAck { connection: u64, reason: String },
    /// Fragments wait to be sent (a catch-up after an outage or a restart, or an outage going on): posted each
    /// second while more than the fragment being written waits, and once more when the backlog is gone.
    Backlog(Backlog),
    /// The uploader gave up; nothing more will be sent.
    Failed(UploadFailure),
}

/// How much waits to be sent, and how long it should take.
#[derive(Debug, Clone, PartialEq)]
pub struct Backlog {
    pub fragments: usize,
    pub bytes: usize,
    /// Bytes sent per second over the last second.
    pub rate: f64,
    /// At the measured rate, and no sooner than the service's limits allow (None while nothing goes out).
    pub eta: Option<Duration>,
    /// Nothing goes out: no connection (an outage).
    pub waiting: bool,
}

impl Backlog {
    /// The backlog is gone.
    fn done() -> Self {
        Backlog {
            fragments: 0,
            bytes: 0,
            rate: 0.0,
            eta: Some(Duration::ZERO),
            waiting: false,
        }
    }
}

/// Why the uploader gave up.
pub type UploadFailure = FinalError;

fn stopped() -> UploadFailure {
    FinalError {
        error: KvsError::Connection {
            api: "PutMedia",
            message: "the uploader stopped".into(),
        },
        why: GaveUp::Stopped,
    }
}

struct Shared {
    queue: FragmentQueue,
    /// No more fragments will come (EOS).
    end: bool,
    failed: Option<UploadFailure>,
    /// Incremented whenever fragments of a connection other than the current one are queued again: the
    /// current connection must then start over so that fragments stay in order.
    requeue_epoch: u64,
    /// Consecutive failures without an ACK.
    failures: u32,
    /// ACKs applied to the queue whose events are not out yet: the upload is not done before they are (an
    /// application must see the last PERSISTED before EOS).
    reporting: u32,
    /// A backlog was reported and its end was not yet.
    backlog_open: bool,
    /// [`fail`](Uploader::fail) is reporting the failure.
    giving_up: bool,
    /// False: once everything sent is done, the connection closes until there is something to send.
    active: bool,
    /// The connection waits with a fragment in progress and nothing else to send: a new frame of that fragment
    /// is written at once by the thread that adds it ([`Uploader::push_frame`]), without waking the connection.
    live: Option<Live>,
}

/// See [`Shared::live`].
struct Live {
    connection: u64,
    /// Where the connection is in the fragment; the connection takes it back when it wakes.
    cursor: Cursor,
    body: BodyWriter,
}

/// Takes [`Shared::live`] back when a connection ends, however it ends.
struct LiveGuard<'a>(&'a Uploader);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().live = None;
    }
}

/// Receives the upload's events.
pub type Listener = Arc<dyn Fn(UploadEvent) + Send + Sync>;

/// See the module documentation.
pub struct Uploader {
    ctx: AwsContext,
    config: UploaderConfig,
    listener: Listener,
    shared: Mutex<Shared>,
    changed: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The backlog reporter ([`report_backlog`](Self::report_backlog)).
    reporter: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The service's ingest limits, across this stream's connections.
    pacer: Mutex<Pacer>,
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
    error: KvsError,
    action: Action,
    /// An ERROR ACK that only costs one fragment: reconnect at once, no backoff.
    immediate: bool,
}

impl From<KvsError> for Failure {
    fn from(error: KvsError) -> Self {
        Failure {
            action: error.action(),
            error,
            immediate: false,
        }
    }
}

impl Failure {
    /// A connection that ended or broke: retried.
    fn retry(message: impl Into<String>) -> Self {
        KvsError::Connection {
            api: "PutMedia",
            message: message.into(),
        }
        .into()
    }
}

fn lock_pacer(pacer: &Mutex<Pacer>) -> MutexGuard<'_, Pacer> {
    pacer.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Uploader {
    /// Starts the uploader task on the shared runtime.
    pub fn start(ctx: AwsContext, config: UploaderConfig, listener: Listener) -> Arc<Uploader> {
        let uploader = Arc::new(Uploader {
            ctx,
            config: config.clone(),
            listener,
            shared: Mutex::new(Shared {
                queue: FragmentQueue::new(Limits {
                    max_bytes: config.max_queue_bytes,
                    max_duration: config.max_queue_duration,
                    acks: config.acks,
                    staleness: config.staleness,
                }),
                end: false,
                failed: None,
                requeue_epoch: 0,
                failures: 0,
                reporting: 0,
                backlog_open: false,
                giving_up: false,
                active: config.active,
                live: None,
            }),
            changed: watch::channel(0).0,
            task: Mutex::new(None),
            reporter: Mutex::new(None),
            pacer: Mutex::new(Pacer::new(Instant::now())),
            retention_hours: std::sync::atomic::AtomicI32::new(config.retention_hours),
        });
        let task = crate::runtime::RUNTIME.spawn(uploader.clone().run());
        *uploader.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        let reporter = crate::runtime::RUNTIME.spawn(uploader.clone().report_backlog());
        *uploader.reporter.lock().unwrap_or_else(|e| e.into_inner()) = Some(reporter);
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
        self.lock().queue.stats()
    }

    /// Why the uploader gave up, if it did.
    pub fn failure(&self) -> Option<UploadFailure> {
        self.lock().failed.clone()
    }

    /// Waits until the queue has room for `size` bytes, or the uploader failed (backpressure for uploads that
    /// are not live).
    pub async fn wait_for_room(&self, size: usize) -> Result<(), UploadFailure> {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let shared = self.lock();
                if let Some(reason) = &shared.failed {
                    return Err(reason.clone());
                }
                if shared.queue.has_room(size) {
                    return Ok(());
                }
            }
            if changes.changed().await.is_err() {
                return Err(stopped());
            }
        }
    }

    /// Adds to the queue under the lock, first dropping the oldest fragments not sent if it is full (a live
    /// source cannot wait; callers that can wait call [`wait_for_room`](Self::wait_for_room) first), then
    /// reports what was dropped and wakes the connection.
    fn queue_with(
        &self,
        size: usize,
        add: impl FnOnce(&mut FragmentQueue),
    ) -> Result<(), UploadFailure> {
        self.queue_then(size, |shared| {
            add(&mut shared.queue);
            false
        })
    }

    /// [`queue_with`](Self::queue_with) where `add` returns true when the connection needs no wake-up.
    fn queue_then(
        &self,
        size: usize,
        add: impl FnOnce(&mut Shared) -> bool,
    ) -> Result<(), UploadFailure> {
        let (dropped, sent) = {
            let mut shared = self.lock();
            if let Some(reason) = &shared.failed {
                return Err(reason.clone());
            }
            let dropped = shared.queue.make_room(size);
            let sent = add(&mut shared);
            (dropped, sent)
        };
        for entry in dropped {
            let (limit, what) = if self.config.durable {
                ("buffer-max-size, buffer-max-age", "fragment store")
            } else {
                ("storage-size, buffer-duration", "fragment queue")
            };
            self.emit(UploadEvent::Dropped {
                timecode: entry.timecode,
                bytes: entry.bytes,
                reason: format!(
                    "the {what} is full ({} bytes, {} s at most: {limit}): the oldest fragment goes",
                    self.config.max_queue_bytes,
                    self.config.max_queue_duration.as_secs()
                ),
            });
        }
        if !sent {
            self.notify();
        }
        Ok(())
    }

    /// Queues a new fragment with its first frame; it goes out at once. A fragment still being written is
    /// complete from now on.
    pub fn start_fragment(
        &self,
        start: FragmentStart,
        stored: Option<FragmentFile>,
    ) -> Result<(), UploadFailure> {
        self.queue_with(start.data.len(), |queue| {
            queue.start_fragment(start, stored);
            queue.spill();
        })
    }

    /// Queues a complete fragment read back from the fragment store (before any live media).
    pub fn queue_stored(&self, header: Arc<StreamHeader>, fragment: RecoveredFragment) {
        self.lock()
            .queue
            .push_stored(header, fragment.timecode, fragment.duration, fragment.file);
        self.notify();
    }

    /// Adds a frame to the fragment being written; it goes out at once. `duration`: the fragment's length
    /// with it.
    ///
    /// When the connection waits for it ([`Shared::live`]), the frame is written from this thread: no
    /// wake-up of the runtime for the frames of a live stream.
    pub fn push_frame(&self, data: Rope, duration: Duration) -> Result<(), UploadFailure> {
        self.queue_then(data.len(), |shared| {
            shared.queue.push_frame(data, duration);
            self.write_live(shared)
        })
    }

    /// Writes the new pieces of the fragment in progress on the waiting connection, if there is one and the
    /// service's byte rate allows it now. True: written whole, nothing for the connection to do.
    fn write_live(&self, shared: &mut Shared) -> bool {
        let Some(live) = shared.live.as_mut() else {
            return false;
        };
        let mut cursor = live.cursor;
        let Some(pieces) = shared.queue.next_pieces(live.connection, &mut cursor) else {
            return false;
        };
        let size: usize = pieces.iter().map(bytes::Bytes::len).sum();
        {
            let mut pacer = lock_pacer(&self.pacer);
            let now = Instant::now();
            if !pacer.bytes_ready(size, now) {
                return false;
            }
            pacer.bytes_wait(size, now);
        }
        live.cursor = cursor;
        let written = live.body.write_now(&pieces);
        shared.queue.stats.bytes_sent += size as u64;
        // Not all of it taken (the connection flushes the rest) or failed (the connection finds out): wake it.
        matches!(written, Ok(true))
    }

    /// The fragment being written is complete.
    pub fn end_fragment(&self) {
        {
            let mut shared = self.lock();
            shared.queue.end_fragment();
            shared.queue.spill();
        }
        self.notify();
    }

    /// Active (the default): the connection stays open between fragments. Inactive (kvssink does not upload
    /// for now: a triggered upload between windows, a paused one): once what was sent is done, the last
    /// fragment is closed with the end-of-fragment tag and the connection ends; the next fragment opens a new
    /// one.
    pub fn set_active(&self, active: bool) {
        let changed = {
            let mut shared = self.lock();
            std::mem::replace(&mut shared.active, active) != active
        };
        if changed {
            self.notify();
        }
    }

    /// No more fragments will come: after the last one, the end-of-fragment tag is sent.
    pub fn finish(&self) {
        self.lock().end = true;
        self.notify();
    }

    /// Waits until every fragment is done (after [`finish`](Self::finish)); `Err` when the uploader gave up.
    pub async fn wait_done(&self) -> Result<(), UploadFailure> {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let mut shared = self.lock();
                if let Some(reason) = &shared.failed {
                    return Err(reason.clone());
                }
                if shared.end && shared.queue.is_empty() && shared.reporting == 0 {
                    let backlog_open = std::mem::take(&mut shared.backlog_open);
                    drop(shared);
                    if backlog_open {
                        // Its end goes out before EOS does.
                        self.emit(UploadEvent::Backlog(Backlog::done()));
                    }
                    return Ok(());
                }
            }
            if changes.changed().await.is_err() {
                return Err(stopped());
            }
        }
    }

    /// Stops the task at once, dropping its connections.
    pub fn stop(&self) {
        for task in [&self.task, &self.reporter] {
            if let Some(task) = task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
    }

    fn fail(&self, error: KvsError, why: GaveUp) {
        let failure = FinalError { error, why };
        {
            let mut shared = self.lock();
            if shared.failed.is_some() || shared.giving_up {
                return;
            }
            shared.giving_up = true;
        }
        // The element's error goes on the bus before anything sees the failure: a render that then returns an
        // error makes its source post a vaguer "Internal data stream error", which must come second.
        self.emit(UploadEvent::Failed(failure.clone()));
        self.lock().failed = Some(failure);
        self.notify();
    }

    async fn wait_for_work(&self) -> bool {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let shared = self.lock();
                if shared.failed.is_some() || (shared.end && shared.queue.is_empty()) {
                    return false;
                }
                if shared.queue.has_unsent() {
                    return true;
                }
            }
            if changes.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Each second while fragments wait to be sent beyond the one being written: how many, and how long they
    /// should take; once more when they are all sent.
    async fn report_backlog(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent = self.lock().queue.stats.bytes_sent;
        let mut last_at = Instant::now();
        loop {
            tick.tick().await;
            let now = Instant::now();
            let backlog = {
                let mut shared = self.lock();
                if shared.failed.is_some() {
                    return;
                }
                let (fragments, bytes) = shared.queue.backlog();
                let sent = shared.queue.stats.bytes_sent;
                let rate = (sent - last_sent) as f64
                    / now.duration_since(last_at).as_secs_f64().max(0.001);
                (last_sent, last_at) = (sent, now);
                if fragments <= 1 && !shared.backlog_open {
                    continue;
                }
                shared.backlog_open = fragments > 1;
                if fragments <= 1 {
                    Backlog::done()
                } else {
                    let at_limits = (fragments as f64 / SERVICE_FRAGMENTS_PER_SECOND as f64)
                        .max(bytes as f64 / SERVICE_BYTES_PER_SECOND);
                    let waiting = rate == 0.0;
                    let eta = (!waiting)
                        .then(|| Duration::from_secs_f64((bytes as f64 / rate).max(at_limits)));
                    Backlog {
                        fragments,
                        bytes,
                        rate,
                        eta,
                        waiting,
                    }
                }
            };
            self.emit(UploadEvent::Backlog(backlog));
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base =
            Duration::from_millis(250).saturating_mul(1u32 << attempt.saturating_sub(1).min(10));
        let capped = base.min(self.config.max_backoff);
        // Full jitter in [50 %, 100 %] of the delay, so that many producers do not come back in step.
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    async fn run(self: Arc<Self>) {
        let mut endpoint: Option<String> = None;
        let mut connection = 0u64;
        let mut create = self.config.create.clone();
        let mut check = self.config.check_stream || create.is_some();
        // The first connection opens at once when the stream exists and the upload is active; later ones when
        // there is work. An inactive upload looks its endpoint up ahead, so that its first fragment does not
        // wait for GetDataEndpoint.
        let mut eager = !check && self.lock().active;
        if !check && !eager {
            let api = aws_sdk_kinesisvideo::types::ApiName::PutMedia;
            endpoint = crate::kvs::control::data_endpoint(&self.ctx, &self.config.stream_name, api)
                .await
                .ok();
        }
        loop {
            if !std::mem::take(&mut eager) && !self.wait_for_work().await {
                return;
            }
            if check {
                if let Some(params) = &mut create {
                    let media_type = {
                        let shared = self.lock();
                        shared
                            .queue
                            .front()
                            .and_then(|e| e.header.media_type.clone())
                    };
                    params.media_type = params.media_type.clone().or(media_type);
                }
                match crate::kvs::control::ensure_stream(
                    &self.ctx,
                    &self.config.stream_name,
                    create.as_ref(),
                )
                .await
                {
                    Ok(description) => {
                        self.retention_hours.store(
                            description.retention_hours,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        check = false;
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
            shared.queue.requeue(connection);
            shared.queue.spill();
            shared.queue.stats.reconnections += 1;
            if !failure.immediate {
                shared.failures += 1;
            }
            shared.failures
        };
        if failure.action == Action::Fail {
            self.fail(failure.error, GaveUp::Final);
            return false;
        }
        if !self.config.restart_on_error {
            self.fail(failure.error, GaveUp::NoRestart);
            return false;
        }
        if self.config.retry_limit > 0 && attempt > self.config.retry_limit && !self.config.durable
        {
            self.fail(failure.error, GaveUp::RetryLimit(attempt));
            return false;
        }
        // The first attempt after a failure goes at once (a reset connection is usually just that); only when
        // that fails too does the backoff start.
        let delay = if failure.immediate || attempt <= 1 {
            Duration::ZERO
        } else {
            self.backoff(attempt)
        };
        let reason = failure.error.to_string();
        self.emit(UploadEvent::Disconnected {
            connection,
            reason,
            retry_in: delay,
            attempt,
        });
        tokio::time::sleep(delay).await;
        true
    }

    /// What a connection sends next ([`FragmentQueue::next_to_send`]); it rotates after `connection-rotation`.
    fn next_to_send(
        &self,
        connection: u64,
        cursor: &mut Option<Cursor>,
        generation: u64,
        opened: Instant,
        may_start: bool,
    ) -> Next {
        let rotate = opened.elapsed() >= self.config.rotation;
        self.lock().queue.next_to_send(
            connection,
            cursor,
            generation,
            rotate,
            Instant::now(),
            may_start,
        )
    }

    async fn connection(self: &Arc<Self>, id: u64, endpoint: &str) -> Result<End, Failure> {
        let request = PutMediaRequest {
            endpoint: endpoint.to_owned(),
            stream_name: self.config.stream_name.clone(),
            producer_start_ms: now_ms(),
            acks: self.config.acks,
            user_agent: self.config.user_agent.clone(),
        };
        let connection = putmedia::open(&self.ctx, &request).await?;
        let _live = LiveGuard(self);
        let opened = Instant::now();
        let body = connection.body;
        let mut acks = connection.acks;
        let mut parser = AckParser::new();
        let mut changes = self.changed.subscribe();
        let write_timeout = self.config.staleness;
        // Opened ahead of the data: the header goes when the first fragment does.
        let (header, epoch) = loop {
            let over = {
                let shared = self.lock();
                if let Some(first) = shared.queue.first_queued() {
                    break (first.header.clone(), shared.requeue_epoch);
                }
                shared.failed.is_some()
                    || ((shared.end || !shared.active) && shared.queue.is_empty())
            };
            if over {
                close(body, acks, write_timeout).await;
                return Ok(End::Idle);
            }
            tokio::select! {
                frame = acks.frame() => match frame {
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(Failure::retry(format!("the connection broke: {error}"))),
                    // The service closes a connection that carries no data for 30 s; anything sooner is a
                    // failure (a proxy's plain answer), retried with backoff so that it cannot spin.
                    None if opened.elapsed() < IDLE_CLOSE => {
                        return Err(Failure::retry("the service ended the response before any data was sent"));
                    }
                    None => return Ok(End::Idle),
                },
                _ = changes.changed() => {}
            }
        };
        let resending = {
            let mut shared = self.lock();
            shared.queue.stats.connections += 1;
            shared.queue.resending()
        };
        self.emit(UploadEvent::Connected {
            connection: id,
            endpoint: endpoint.to_owned(),
            resending,
        });
        // A write that fails: the service may have said why (an ERROR ACK) before it closed the connection,
        // and its word goes before the socket's.
        macro_rules! written {
            ($write:expr) => {
                if let Err(failure) = $write.await {
                    return Err(self.why_closed(id, &mut acks, &mut parser, failure).await);
                }
            };
        }
        written!(send(
            &body,
            std::slice::from_ref(&header.bytes),
            write_timeout
        ));
        self.lock().queue.stats.bytes_sent += header.bytes.len() as u64;
        let mut cursor: Option<Cursor> = None;
        let mut end_of_fragment_sent = false;
        loop {
            // Send what there is to send, at most one new fragment at a time: the ACKs are read between two
            // (a long catch-up must not keep every fragment it sent until its end), and a new fragment waits
            // for the service's fragment rate without holding up the ACKs either.
            let mut pace_until = None;
            let mut more_now = false;
            let mut started = false;
            loop {
                if self.lock().requeue_epoch != epoch {
                    return Err(Failure::retry(
                        "an earlier connection ended with fragments to re-send",
                    ));
                }
                let wait = lock_pacer(&self.pacer).fragment_wait(Instant::now());
                let before = cursor.map(|c: Cursor| c.entry());
                match self.next_to_send(
                    id,
                    &mut cursor,
                    header.generation,
                    opened,
                    !started && wait.is_zero(),
                ) {
                    Next::Send(pieces) => {
                        let starting = cursor.map(|c: Cursor| c.entry()) != before;
                        started |= starting;
                        end_of_fragment_sent &= !starting;
                        let size: usize = pieces.iter().map(bytes::Bytes::len).sum();
                        let wait = {
                            let mut pacer = lock_pacer(&self.pacer);
                            if starting {
                                pacer.fragment_started(Instant::now());
                            }
                            pacer.bytes_wait(size, Instant::now())
                        };
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        written!(send(&body, &pieces, write_timeout));
                        self.lock().queue.stats.bytes_sent += size as u64;
                    }
                    Next::Hold if started => {
                        more_now = true;
                        break;
                    }
                    Next::Hold => {
                        pace_until = Some(tokio::time::Instant::now() + wait);
                        break;
                    }
                    Next::Rotate(reason) => {
                        self.emit(UploadEvent::Rotating {
                            connection: id,
                            reason,
                        });
                        // Ended before the next one opens: the service accepts one PutMedia connection per
                        // stream (a newer one replaces an older one that still waits for its ACKs).
                        self.clone().drain_task(id, body, acks, parser).await;
                        return Ok(End::Rotate);
                    }
                    Next::Lost(dropped, reason) => self.emit(UploadEvent::Dropped {
                        timecode: dropped.timecode,
                        bytes: dropped.bytes,
                        reason,
                    }),
                    Next::Wait => break,
                }
            }
            let (end, empty, unsent, active) = {
                let shared = self.lock();
                (
                    shared.end,
                    shared.queue.is_empty(),
                    shared.queue.has_work(),
                    shared.active,
                )
            };
            if end && empty {
                close(body, acks, write_timeout).await;
                return Ok(End::Done);
            }
            if !active && empty {
                close(body, acks, write_timeout).await;
                return Ok(End::Idle);
            }
            if (end || !active) && !unsent && cursor.is_none() && !end_of_fragment_sent {
                let tag = end_of_fragment_tag();
                let size = tag.len() as u64;
                written!(send(&body, &[tag], write_timeout));
                self.lock().queue.stats.bytes_sent += size;
                end_of_fragment_sent = true;
            }
            let stale_at = match self.stale_check(id) {
                Ok(at) => at,
                Err(stale) => {
                    return Err(Failure::retry(format!(
                        "no acknowledgement for {:.1} s after a fragment was sent (connection-staleness)",
                        stale.as_secs_f64()
                    )));
                }
            };
            // Waiting in the middle of a fragment with nothing else to send: its next frames are written by the
            // thread that adds them.
            if let (Some(at), false, None) = (cursor.take(), more_now, pace_until) {
                self.lock().live = Some(Live {
                    connection: id,
                    cursor: at,
                    body: body.clone(),
                });
            }
            let woke = tokio::select! {
                frame = acks.frame() => Some(frame),
                _ = changes.changed() => None,
                _ = tokio::time::sleep_until(stale_at.unwrap_or_else(Instant::now).into()), if stale_at.is_some() => None,
                _ = tokio::time::sleep_until(pace_until.unwrap_or_else(tokio::time::Instant::now)),
                    if pace_until.is_some() => None,
                _ = std::future::ready(()), if more_now => None,
            };
            if let Some(live) = self.lock().live.take() {
                cursor = Some(live.cursor);
            }
            // What a thread wrote and the socket did not take at once (or how writing failed).
            written!(flush(&body, write_timeout));
            match woke {
                None => {}
                Some(frame) => match frame {
                    Some(Ok(data)) => {
                        for ack in parser.push(&data) {
                            self.handle_ack(id, ack)?;
                        }
                    }
                    Some(Err(error)) => {
                        return Err(Failure::retry(format!("the connection broke: {error}")));
                    }
                    None => {
                        let outstanding = self.lock().queue.holds(id);
                        if outstanding {
                            return Err(Failure::retry(
                                "the service closed the connection with fragments not yet acknowledged",
                            ));
                        }
                        return Ok(End::Idle);
                    }
                },
            }
        }
    }

    /// `failure` (a write that failed), unless the ACKs the service sent before it closed the connection say
    /// why: an ERROR ACK's failure then.
    async fn why_closed(
        &self,
        connection: u64,
        acks: &mut AckStream,
        parser: &mut AckParser,
        failure: Failure,
    ) -> Failure {
        let read = async {
            while let Some(Ok(data)) = acks.frame().await {
                for ack in parser.push(&data) {
                    if let Err(failure) = self.handle_ack(connection, ack) {
                        return Some(failure);
                    }
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(1), read)
            .await
            .ok()
            .flatten()
            .unwrap_or(failure)
    }

    /// Err(how long): the oldest fragment of this connection waits for its ACK longer than the staleness
    /// limit. Ok(when that would be next), if ever.
    fn stale_check(&self, connection: u64) -> Result<Option<Instant>, Duration> {
        let shared = self.lock();
        let now = Instant::now();
        match shared.queue.stale_for(connection, now) {
            Some(stale) => Err(stale),
            None => Ok(shared.queue.stale_at(connection)),
        }
    }

    /// Applies one ACK. An ERROR ACK ends the connection (the service closes it after one).
    fn handle_ack(
        &self,
        connection: u64,
        ack: Result<AckEvent, crate::kvs::ack::AckError>,
    ) -> Result<(), Failure> {
        let ack = match ack {
            Ok(ack) => ack,
            // A line too long to be an ACK: the response is not an ACK stream (any more).
            Err(error @ crate::kvs::ack::AckError::TooLong) => {
                return Err(Failure::retry(format!("the service sent {error}")));
            }
            // One bad line (a proxy's mangling, a cut write): skipped. Dropping the connection for it would
            // re-send fragments the service may already have stored.
            Err(error) => {
                self.emit(UploadEvent::UnreadableAck {
                    connection,
                    reason: error.to_string(),
                });
                return Ok(());
            }
        };
        if ack.kind == AckKind::Idle {
            return Ok(());
        }
        let persisting = self
            .retention_hours
            .load(std::sync::atomic::Ordering::Relaxed)
            != 0;
        let effect = {
            let mut shared = self.lock();
            let effect = shared
                .queue
                .apply_ack(connection, &ack, Instant::now(), persisting);
            if effect.latency.is_some() {
                shared.failures = 0;
            }
            shared.reporting += 1;
            effect
        };
        // Messages first: a waiter (EOS) must find them already on the bus, even one woken by something else
        // between the queue's change and these events.
        let refused = effect.refused;
        self.emit(UploadEvent::Ack {
            connection,
            ack,
            latency: effect.latency,
        });
        if let (Some(dropped), Some((error, _))) = (effect.dropped, &refused) {
            let reason = error.to_string();
            self.emit(UploadEvent::Dropped {
                timecode: dropped.timecode,
                bytes: dropped.bytes,
                reason,
            });
        }
        self.lock().reporting -= 1;
        self.notify();
        match refused {
            Some((error, immediate)) => Err(Failure {
                action: error.action(),
                error,
                immediate,
            }),
            None => Ok(()),
        }
    }

    /// Ends a connection gracefully: the end-of-fragment tag, then its last ACKs until all its fragments are
    /// done (bounded by `connection-staleness`). If it fails first, its fragments are queued again.
    async fn drain_task(
        self: Arc<Self>,
        connection: u64,
        body: BodyWriter,
        mut acks: AckStream,
        mut parser: AckParser,
    ) {
        let timeout = self.config.staleness;
        let ok = async {
            send(&body, &[end_of_fragment_tag()], timeout).await.ok()?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if !self.lock().queue.holds(connection) {
                    return Some(());
                }
                let data = tokio::time::timeout_at(deadline, acks.frame())
                    .await
                    .ok()??
                    .ok()?;
                for ack in parser.push(&data) {
                    self.handle_ack(connection, ack).ok()?;
                }
            }
        }
        .await;
        if ok.is_some() {
            close(body, acks, timeout).await;
            return;
        }
        body.abort();
        let mut shared = self.lock();
        if shared.queue.requeue(connection) > 0 {
            shared.requeue_epoch += 1;
            shared.queue.spill();
        }
        drop(shared);
        self.notify();
    }
}

/// Ends the request body with its last chunk and reads the response to its end, so the service sees a
/// complete request rather than a reset connection. Bounded: a response that stays open is abandoned.
async fn close(body: BodyWriter, mut acks: AckStream, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        body.finish().await.ok()?;
        while let Some(Ok(_)) = acks.frame().await {}
        Some(())
    })
    .await;
}

/// Writes one chunk of the body and waits until the socket took it.
async fn send(body: &BodyWriter, pieces: &[Bytes], timeout: Duration) -> Result<(), Failure> {
    body.write_now(pieces).map_err(closed_while_sending)?;
    flush(body, timeout).await
}

fn closed_while_sending(error: std::io::Error) -> Failure {
    Failure::retry(format!("the connection closed while sending: {error}"))
}

/// Waits until the socket took everything written to the body (by any thread).
async fn flush(body: &BodyWriter, timeout: Duration) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, body.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(closed_while_sending(error)),
        Err(_) => Err(Failure::retry(format!(
            "the service took no data for {:.1} s (connection-staleness)",
            timeout.as_secs_f64()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_lets_five_fragments_start_a_second_and_bytes_at_the_service_rate() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        for i in 0..5 {
            let at = t0 + Duration::from_millis(i * 10);
            assert_eq!(pacer.fragment_wait(at), Duration::ZERO);
            pacer.fragment_started(at);
        }
        // The sixth waits until a second after the first.
        assert_eq!(
            pacer.fragment_wait(t0 + Duration::from_millis(50)),
            Duration::from_millis(950)
        );
        assert_eq!(
            pacer.fragment_wait(t0 + Duration::from_millis(1000)),
            Duration::ZERO
        );
        pacer.fragment_started(t0 + Duration::from_millis(1000));
        assert_eq!(
            pacer.fragment_wait(t0 + Duration::from_millis(1000)),
            Duration::from_millis(10)
        );

        // One second of bytes goes at once, the next second's waits its time.
        let mut pacer = Pacer::new(t0);
        assert_eq!(pacer.bytes_wait(12_500_000, t0), Duration::ZERO);
        assert_eq!(pacer.bytes_wait(6_250_000, t0), Duration::from_millis(500));
        // Half a second later it is paid back.
        assert_eq!(
            pacer.bytes_wait(0, t0 + Duration::from_millis(500)),
            Duration::ZERO
        );
        // A pause refills at most one second's worth.
        assert_eq!(
            pacer.bytes_wait(25_000_000, t0 + Duration::from_secs(60)),
            Duration::from_secs(1)
        );
    }

    /// The uploader's reconnect and re-send rules, driven directly (no GStreamer): Matroska made with the
    /// project's writer goes through the fragmenter into an [`Uploader`] on the shared runtime, against a
    /// kvs-emulator in this process whose faults end connections or refuse fragments. Not a fake connection
    /// on paused time: the uploader runs on the plugin's shared runtime with real sockets, and the emulator is
    /// the real peer these rules answer to.
    mod with_the_emulator {
        use super::super::*;
        use crate::kvs::control::CreateParams;
        use crate::kvs::settings::{ConnectionSettings, Secret};
        use crate::kvssink::fragmenter::{Fragmenter, Output, TimeAnchor};
        use kvs_emulator::faults::{Action, Close, Fault};
        use kvs_emulator::media::FragmentState;

        const FRAGMENTS: u64 = 6;
        const FRAMES: u64 = 5;

        struct Run {
            result: Result<(), UploadFailure>,
            events: Vec<UploadEvent>,
            stats: Stats,
            /// How many times each frame's payload is in the stream's complete fragments.
            stored: Vec<usize>,
        }

        fn payload(fragment: u64, frame: u64) -> Vec<u8> {
            format!("[fragment {fragment:02} frame {frame:02}]").into_bytes()
        }

        /// Uploads `FRAGMENTS` fragments of `FRAMES` frames through an uploader with `config` changed by
        /// `adjust`, after arming `fault` for that many PutMedia connections.
        fn upload(
            stream: &str,
            fault: (Action, u32),
            adjust: impl FnOnce(&mut UploaderConfig),
        ) -> Run {
            let server = tokio::runtime::Runtime::new().unwrap();
            let emulator = server
                .block_on(kvs_emulator::Emulator::start(
                    kvs_emulator::Config::default(),
                ))
                .unwrap();
            emulator.faults().add(Fault {
                api: "putMedia".into(),
                stream: Some(stream.into()),
                action: fault.0,
                times: fault.1,
                id: 0,
            });
            let settings = ConnectionSettings {
                region: Some("us-east-1".into()),
                access_key: Some("AKIDTEST".into()),
                secret_access_key: Some(Secret::new("test-secret")),
                endpoint_uri: Some(emulator.base_url()),
                ..ConnectionSettings::default()
            };
            let ctx = crate::runtime::RUNTIME
                .block_on(AwsContext::load(&settings, "kvssink"))
                .unwrap();
            let mut config = UploaderConfig {
                stream_name: stream.into(),
                retention_hours: 1,
                create: Some(CreateParams {
                    retention_hours: 1,
                    kms_key_id: None,
                    media_type: None,
                    device_name: None,
                    tags: Default::default(),
                }),
                check_stream: true,
                durable: false,
                acks: true,
                staleness: Duration::from_secs(5),
                rotation: Duration::from_secs(3600),
                max_queue_bytes: 64 << 20,
                max_queue_duration: Duration::from_secs(120),
                retry_limit: 0,
                max_backoff: Duration::from_millis(500),
                user_agent: None,
                restart_on_error: true,
                active: true,
            };
            adjust(&mut config);
            let events = Arc::new(Mutex::new(Vec::new()));
            let listener: Listener = {
                let events = events.clone();
                Arc::new(move |event| events.lock().unwrap().push(event))
            };
            let uploader = Uploader::start(ctx, config, listener);

            let mut data = kvs_mkv::writer::h264_stream_header();
            for f in 0..FRAGMENTS {
                kvs_mkv::writer::write_cluster_start(&mut data, f * 1000);
                for i in 0..FRAMES {
                    let relative = (i * 200) as i16;
                    kvs_mkv::writer::write_simple_block(
                        &mut data,
                        1,
                        relative,
                        i == 0,
                        &payload(f, i),
                    );
                }
            }
            let started = SystemTime::now() - Duration::from_secs(60);
            let mut fragmenter = Fragmenter::new(TimeAnchor::Fixed(started));
            let mut outputs = fragmenter.push(Bytes::from(data), None).unwrap();
            outputs.extend(fragmenter.finish().unwrap());
            let mut result = Ok(());
            for output in outputs {
                let fed = match output {
                    Output::FragmentStart(start) => uploader.start_fragment(start, None),
                    Output::Frame { data, duration } => uploader.push_frame(data, duration),
                    Output::FragmentEnd => {
                        uploader.end_fragment();
                        Ok(())
                    }
                    Output::Header(_) | Output::TimeJump(_) => Ok(()),
                };
                if let Err(failure) = fed {
                    result = Err(failure);
                    break;
                }
            }
            uploader.finish();
            if result.is_ok() {
                result = crate::runtime::RUNTIME.block_on(async {
                    tokio::time::timeout(Duration::from_secs(60), uploader.wait_done())
                        .await
                        .expect("the upload ends within a minute")
                });
            }
            let stats = uploader.stats();
            uploader.stop();

            // Every complete fragment once (by timecode), then each payload's occurrences in them.
            let mut clusters = std::collections::BTreeMap::new();
            for media in emulator.media().lock().values() {
                for fragment in &media.fragments {
                    if fragment.state == FragmentState::Complete {
                        let bytes: Vec<u8> = fragment.cluster.iter().flatten().copied().collect();
                        clusters.entry(fragment.timecode).or_insert(bytes);
                    }
                }
            }
            let all: Vec<u8> = clusters.into_values().flatten().collect();
            let stored = (0..FRAGMENTS)
                .flat_map(|f| (0..FRAMES).map(move |i| payload(f, i)))
                .map(|p| all.windows(p.len()).filter(|w| *w == p.as_slice()).count())
                .collect();
            emulator.shutdown();
            let events = events.lock().unwrap().clone();
            Run {
                result,
                events,
                stats,
                stored,
            }
        }

        fn reconnected_resending(events: &[UploadEvent]) -> Vec<usize> {
            events
                .iter()
                .filter_map(|e| match e {
                    UploadEvent::Connected {
                        connection,
                        resending,
                        ..
                    } if *connection > 1 => Some(*resending),
                    _ => None,
                })
                .collect()
        }

        #[test]
        fn a_dropped_connection_is_reconnected_and_what_was_not_persisted_is_sent_again() {
            let run = upload(
                "uploader-drop",
                (
                    Action::DropAtFragment {
                        fragment: 3,
                        close: Close::Reset,
                        delay_ms: 0,
                    },
                    1,
                ),
                |_| {},
            );
            assert_eq!(run.result, Ok(()));
            assert_eq!(run.stored, vec![1; (FRAGMENTS * FRAMES) as usize]);
            assert_eq!(run.stats.fragments_persisted, FRAGMENTS, "{:?}", run.stats);
            assert_eq!(run.stats.reconnections, 1, "{:?}", run.stats);
            assert!(run.stats.fragments_resent >= 1, "{:?}", run.stats);
            let disconnected = run
                .events
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        UploadEvent::Disconnected {
                            connection: 1,
                            attempt: 1,
                            ..
                        }
                    )
                })
                .count();
            assert_eq!(disconnected, 1);
            // The second connection starts with what the first did not get persisted.
            let resending = reconnected_resending(&run.events);
            assert!(resending.len() == 1 && resending[0] >= 1, "{resending:?}");
        }

        #[test]
        fn a_refused_fragment_that_may_be_sent_again_is_sent_again() {
            // ERROR 5000 (INTERNAL_ERROR) for the 2nd fragment: the service ends the connection after it.
            let run = upload(
                "uploader-error-ack",
                (
                    Action::ErrorAck {
                        fragment: 2,
                        error_id: 5000,
                    },
                    1,
                ),
                |_| {},
            );
            assert_eq!(run.result, Ok(()));
            assert_eq!(run.stored, vec![1; (FRAGMENTS * FRAMES) as usize]);
            assert_eq!(run.stats.errors_acked, 1, "{:?}", run.stats);
            assert!(run.stats.fragments_resent >= 1, "{:?}", run.stats);
            assert_eq!(run.stats.fragments_persisted, FRAGMENTS, "{:?}", run.stats);
        }

        #[test]
        fn without_restart_on_error_the_first_failure_is_final() {
            let run = upload(
                "uploader-no-restart",
                (
                    Action::DropAtFragment {
                        fragment: 2,
                        close: Close::Reset,
                        delay_ms: 0,
                    },
                    1,
                ),
                |config| config.restart_on_error = false,
            );
            let failure = run.result.unwrap_err();
            assert_eq!(failure.why, GaveUp::NoRestart);
            assert_eq!(run.stats.reconnections, 1);
            assert!(
                run.events
                    .iter()
                    .any(|e| matches!(e, UploadEvent::Failed(f) if f.why == GaveUp::NoRestart))
            );
        }

        #[test]
        fn the_retry_limit_counts_failures_in_a_row_and_then_gives_up() {
            // Three refused PutMedia requests in a row against a limit of 2.
            let refusal = Action::HttpError {
                status: 500,
                error: "InternalFailure".into(),
                message: None,
            };
            let run = upload("uploader-retry-limit", (refusal, 3), |config| {
                config.retry_limit = 2
            });
            let failure = run.result.unwrap_err();
            assert_eq!(failure.why, GaveUp::RetryLimit(3));
            assert_eq!(run.stats.fragments_persisted, 0);
            // The second attempt went at once, the third after a backoff.
            let retries: Vec<(u32, Duration)> = run
                .events
                .iter()
                .filter_map(|e| match e {
                    UploadEvent::Disconnected {
                        attempt, retry_in, ..
                    } => Some((*attempt, *retry_in)),
                    _ => None,
                })
                .collect();
            assert_eq!(retries.len(), 2, "{retries:?}");
            assert_eq!(retries[0], (1, Duration::ZERO));
            assert_eq!(retries[1].0, 2);
            assert!(
                retries[1].1 >= Duration::from_millis(125)
                    && retries[1].1 <= Duration::from_millis(500),
                "{retries:?}"
            );
        }
    }
}
