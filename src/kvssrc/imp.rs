// SPDX-License-Identifier: MPL-2.0

//! The `kvssrc` element: a `PushSrc` emitting Matroska read from Kinesis Video Streams.
//!
//! `start()` loads the AWS configuration and checks the stream (DescribeStream), so a wrong name or secret is
//! an error at once; then a reader task ([`super::reader`]) runs on the shared runtime and hands items over a
//! bounded channel that `create()` waits on (cancellable, so flushes and state changes return at once).

use std::sync::{LazyLock, Mutex, MutexGuard};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use tokio::sync::mpsc;

use super::merger::Mode;
use super::reader::{Batch, CHANNEL_BATCHES, Item, ReaderConfig, Start};
use super::{CAT, OutputMode, OutputTimeline, StartSelector};
use crate::kvs::error::KvsError;
use crate::kvs::settings::ConnectionSettings;
use crate::props::{
    checked, connection_properties, connection_property, effective_connection,
    set_connection_property, string, string_value, uint,
};
use crate::runtime::{Canceller, RUNTIME};

const DEFAULT_PARALLEL: u32 = 4;

#[derive(Debug, Clone)]
struct Settings {
    stream_name: Option<String>,
    connection: ConnectionSettings,
    start_selector: StartSelector,
    start_fragment_number: Option<String>,
    start_timestamp: f64,
    end_timestamp: f64,
    continuation_token: Option<String>,
    mode: OutputMode,
    timeline: OutputTimeline,
    parallel: u32,
    /// Seconds a live read may go without reading before it fails; 0: never.
    max_outage: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stream_name: None,
            connection: ConnectionSettings::default(),
            start_selector: StartSelector::Now,
            start_fragment_number: None,
            start_timestamp: 0.0,
            end_timestamp: 0.0,
            continuation_token: None,
            mode: OutputMode::Merged,
            timeline: OutputTimeline::ProducerTime,
            parallel: DEFAULT_PARALLEL,
            max_outage: 0,
        }
    }
}

/// What the element learnt while reading, readable as properties.
#[derive(Debug, Default)]
struct Progress {
    last_fragment_number: Option<String>,
    continuation_token: Option<String>,
    /// How far behind the live edge the last fragment was, as GetMedia said (live reads).
    millis_behind_now: Option<u64>,
    /// A range read posted its GST_MESSAGE_PROGRESS start and not yet its end.
    range_in_progress: bool,
}

/**
 * element-kvssrc:
 * @short_description: Reads an Amazon Kinesis Video Streams stream (GetMedia) as Matroska
 *
 * Live from now or from a point in the past, or a time range to its end (then EOS); every frame once, on one
 * timeline, whatever the stream's producers did (restarts, re-sent fragments). `kvs://STREAM?…` URIs make it
 * from `playbin`. Element messages `kvssrc-fragment`, `kvssrc-session`, `kvssrc-progress` and
 * `kvssrc-connection` say what it reads.
 *
 * ## Example pipelines
 * ```bash
 * gst-launch-1.0 kvssrc stream-name=cam1 ! matroskademux ! h264parse ! avdec_h264 ! autovideosink
 * gst-launch-1.0 -e kvssrc stream-name=cam1 start-selector=producer-timestamp \
 *     start-timestamp=1795860000 end-timestamp=1795860300 ! filesink location=cam1.mkv
 * ```
 */
#[derive(Default)]
pub struct KvsSrc {
    settings: Mutex<Settings>,
    progress: Mutex<Progress>,
    /// The running read. `create` holds it while it waits for the next item (the canceller ends the wait), so
    /// what properties read (`progress`) is kept apart.
    reading: Mutex<Option<Reading>>,
    canceller: Canceller,
}

/// A read in progress: its task on the shared runtime, and what it hands over (in batches; the rest of the last
/// one waits in `items`).
struct Reading {
    task: tokio::task::JoinHandle<()>,
    receiver: mpsc::Receiver<Batch>,
    items: std::collections::VecDeque<Item>,
}

use crate::element::lock;

/// The reference timestamps each output frame carries (`GstReferenceTimestampMeta`, ns since the Unix epoch):
/// its producer timestamp, and its fragment's server timestamp.
pub const PRODUCER_TIMESTAMP_CAPS: &str = "timestamp/x-kvs-producer";
pub const SERVER_TIMESTAMP_CAPS: &str = "timestamp/x-kvs-server";
static PRODUCER_CAPS: LazyLock<gst::Caps> =
    LazyLock::new(|| gst::Caps::new_empty_simple(PRODUCER_TIMESTAMP_CAPS));
static SERVER_CAPS: LazyLock<gst::Caps> =
    LazyLock::new(|| gst::Caps::new_empty_simple(SERVER_TIMESTAMP_CAPS));

fn kvs_error_message(error: &KvsError) -> gst::ErrorMessage {
    crate::element::kvs_error_message(error, gst::ResourceError::OpenRead)
}

fn selector_nick(selector: StartSelector) -> String {
    glib::EnumValue::from_value(&selector.to_value())
        .map_or_else(String::new, |(_, v)| v.nick().to_owned())
}

impl KvsSrc {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        lock(&self.settings)
    }

    fn reader_config(settings: &Settings) -> Result<ReaderConfig, gst::ErrorMessage> {
        let missing = |what: &str| {
            gst::error_msg!(
                gst::LibraryError::Settings,
                (
                    "start-selector {} needs {}",
                    selector_nick(settings.start_selector),
                    what
                ),
                ["set {} or choose another start-selector", what]
            )
        };
        let start = match settings.start_selector {
            StartSelector::Now => Start::Now,
            StartSelector::Earliest => Start::Earliest,
            StartSelector::FragmentNumber => Start::FragmentNumber(
                settings
                    .start_fragment_number
                    .clone()
                    .ok_or_else(|| missing("start-fragment-number"))?,
            ),
            StartSelector::ServerTimestamp => Start::ServerTimestamp(settings.start_timestamp),
            StartSelector::ProducerTimestamp => Start::ProducerTimestamp(settings.start_timestamp),
            StartSelector::ContinuationToken => Start::ContinuationToken(
                settings
                    .continuation_token
                    .clone()
                    .ok_or_else(|| missing("continuation-token"))?,
            ),
        };
        let end = (settings.end_timestamp > 0.0).then_some(settings.end_timestamp);
        if end.is_some()
            && !matches!(
                start,
                Start::Earliest | Start::ServerTimestamp(_) | Start::ProducerTimestamp(_)
            )
        {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ("end-timestamp needs start-selector earliest, server-timestamp or producer-timestamp"),
                [
                    "a range is listed by time; start-selector is {}",
                    selector_nick(settings.start_selector)
                ]
            ));
        }
        Ok(ReaderConfig {
            stream_name: settings.stream_name.clone().unwrap_or_default(),
            start,
            end,
            mode: match settings.mode {
                OutputMode::Merged => Mode::Merged,
                OutputMode::Raw => Mode::Raw,
            },
            close_gaps: settings.timeline == OutputTimeline::Continuous,
            parallel: settings.parallel.max(1) as usize,
            max_outage: (settings.max_outage > 0)
                .then(|| std::time::Duration::from_secs(settings.max_outage.into())),
        })
    }

    fn post(&self, structure: gst::Structure) {
        let element = self.obj();
        let _ = element.post_message(
            gst::message::Element::builder(structure)
                .src(&*element)
                .build(),
        );
    }

    /// A range read's progress as a standard GST_MESSAGE_PROGRESS (code `kvs-read`), which `gst-launch-1.0`
    /// prints and applications read without knowing kvssrc: start, continue per batch of fragments, complete.
    ///
    /// Start and continue are posted in PLAYING only: `gst-launch-1.0` (and applications written like it) hold
    /// a prerolled pipeline in PAUSED while a progress is open, and a range read cannot go on in PAUSED.
    /// Complete is posted only after a start.
    fn post_progress(&self, done: usize, total: usize, percent: u32) {
        let playing = self.obj().current_state() == gst::State::Playing;
        let kind = {
            let mut progress = lock(&self.progress);
            match (progress.range_in_progress, done < total) {
                (true, false) => {
                    progress.range_in_progress = false;
                    gst::ProgressType::Complete
                }
                (_, true) if playing => {
                    let started = std::mem::replace(&mut progress.range_in_progress, true);
                    if started {
                        gst::ProgressType::Continue
                    } else {
                        gst::ProgressType::Start
                    }
                }
                _ => return,
            }
        };
        self.post_progress_message(
            kind,
            &format!("Read {done} of {total} fragments ({percent}%)"),
            Some(percent),
        );
    }

    fn post_progress_message(&self, kind: gst::ProgressType, text: &str, percent: Option<u32>) {
        let element = self.obj();
        let mut message = gst::message::Progress::builder(kind, "kvs-read", text).src(&*element);
        if let Some(percent) = percent {
            message = message.other_field("percent", percent as i32);
        }
        let _ = element.post_message(message.build());
    }

    /// Sends a fragment's own tags downstream where they come (before its frames, or after them: `after`): a
    /// tag event with one `extended-comment` (`NAME=value`) per tag.
    fn push_tags(&self, user_tags: &[kvs_mkv::tags::SimpleTag], after: bool) {
        let mut tags = gst::TagList::new();
        {
            let tags = tags.get_mut().expect("new tag list");
            for tag in user_tags {
                let comment = format!("{}={}", tag.name, tag.value);
                tags.add::<gst::tags::ExtendedComment>(
                    &comment.as_str(),
                    gst::TagMergeMode::Append,
                );
            }
        }
        if after {
            // From the streaming thread, after the fragment's frames: the stream's first events went before
            // them, and no later buffer needs to come for it to go.
            self.obj().src_pad().push_event(gst::event::Tag::new(tags));
        } else {
            // BaseSrc puts it in the data flow before the next buffer (after the stream's first events).
            self.obj().send_event(gst::event::Tag::new(tags));
        }
    }

    /// Posts what an item says; returns the buffer it carries, if any.
    fn handle(&self, item: Item) -> Result<Option<gst::Buffer>, gst::FlowError> {
        match item {
            Item::Data {
                data,
                header,
                frame,
            } => {
                // The response's own memory, one GstMemory per piece: not copied.
                let mut buffer = gst::Buffer::new();
                {
                    let buffer = buffer.get_mut().expect("new buffer");
                    for piece in data.into_pieces() {
                        buffer.append_memory(gst::Memory::from_slice(piece));
                    }
                    if header {
                        buffer.set_flags(gst::BufferFlags::HEADER);
                    }
                    // A frame carries its producer and server timestamps.
                    let times = frame.unwrap_or_default();
                    for (caps, time) in [
                        (&*PRODUCER_CAPS, times.producer_ns),
                        (&*SERVER_CAPS, times.server_ns),
                    ] {
                        if let Some(ns) = time {
                            gst::ReferenceTimestampMeta::add(
                                buffer,
                                caps,
                                gst::ClockTime::from_nseconds(ns),
                                None,
                            );
                        }
                    }
                }
                return Ok(Some(buffer));
            }
            Item::Fragment(info) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "fragment {} at {} ns{}{}",
                    info.number,
                    info.output_time_ns,
                    if info.session_start {
                        ", a producer session starts"
                    } else {
                        ""
                    },
                    info.skipped
                        .as_deref()
                        .map(|r| format!(", left out: {r}"))
                        .unwrap_or_default()
                );
                match &info.skipped {
                    None => lock(&self.progress).last_fragment_number = Some(info.number.clone()),
                    Some(reason) => gst::element_imp_warning!(
                        self,
                        gst::StreamError::Failed,
                        ("fragment {} left out: {}", info.number, reason),
                        [
                            "fragment {} (producer timestamp {}): {}",
                            info.number,
                            info.producer_timestamp.as_deref().unwrap_or("unknown"),
                            reason
                        ]
                    ),
                }
                let behind = lock(&self.progress).millis_behind_now;
                self.post(crate::messages::fragment(&info, behind));
                if info.skipped.is_none() && !info.user_tags.is_empty() {
                    self.push_tags(&info.user_tags, false);
                }
            }
            Item::FragmentTags { number, tags } => {
                self.post(crate::messages::fragment_tags(&number, &tags));
                self.push_tags(&tags, true);
            }
            Item::Session {
                millis_behind_now,
                continuation_token,
            } => {
                {
                    let mut progress = lock(&self.progress);
                    if let Some(token) = &continuation_token {
                        progress.continuation_token = Some(token.clone());
                    }
                    progress.millis_behind_now = millis_behind_now.or(progress.millis_behind_now);
                }
                self.post(crate::messages::session(
                    millis_behind_now,
                    continuation_token.as_deref(),
                ));
            }
            Item::Progress { done, total, bytes } => {
                self.post(crate::messages::progress(done, total, bytes));
                self.post_progress(done, total, crate::messages::progress_percent(done, total));
            }
            Item::Reconnecting {
                reason,
                retry_in,
                attempt,
            } => {
                gst::info!(CAT, imp = self, "{reason}; reading again in {retry_in:?}");
                self.post(crate::messages::reconnecting(&reason, retry_in, attempt));
            }
            Item::OutageStarted { reason } => {
                let limit = match self.settings().max_outage {
                    0 => {
                        "for as long as it takes (max-outage=0), then goes on from where it stopped"
                            .to_owned()
                    }
                    s => format!("for up to {s} s (max-outage), then ends with an error"),
                };
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Read,
                    ("Cannot read the stream: {}", reason),
                    ["the live read retries {}", limit]
                );
            }
            Item::Resumed {
                down,
                attempts,
                millis_behind_now,
            } => {
                gst::info!(
                    CAT,
                    imp = self,
                    "reading again after {down:?} and {attempts} failed attempts, {millis_behind_now:?} ms behind now"
                );
                self.post(crate::messages::resumed(down, attempts, millis_behind_now));
            }
            Item::Error(failure) => {
                let message = failure.to_string();
                if std::mem::take(&mut lock(&self.progress).range_in_progress) {
                    self.post_progress_message(
                        gst::ProgressType::Error,
                        &format!("Reading failed: {message}"),
                        None,
                    );
                }
                self.obj().post_error_message(crate::element::error_message(
                    &failure.error,
                    &message,
                    gst::ResourceError::Read,
                ));
                return Err(gst::FlowError::Error);
            }
        }
        Ok(None)
    }
}

#[glib::object_subclass]
impl ObjectSubclass for KvsSrc {
    const NAME: &'static str = "GstKvsSrc";
    type Type = super::KvsSrc;
    type ParentType = gst_base::PushSrc;
    type Interfaces = (gst::URIHandler,);
}

impl ObjectImpl for KvsSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut properties = vec![
                string("stream-name", "Name of the Kinesis video stream to read (required)"),
                glib::ParamSpecEnum::builder_with_default("start-selector", StartSelector::Now)
                    .nick("Start selector")
                    .blurb("Where reading starts: new fragments (now), the oldest kept, after a fragment, at a server or producer time, or after a continuation token")
                    .mutable_ready()
                    .build(),
                string("start-fragment-number", "The fragment to start after, for start-selector=fragment-number"),
                glib::ParamSpecDouble::builder("start-timestamp")
                    .nick("Start timestamp")
                    .blurb("Start time in seconds since the Unix epoch, for start-selector server-timestamp or producer-timestamp")
                    .minimum(0.0)
                    .default_value(0.0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("end-timestamp")
                    .nick("End timestamp")
                    .blurb("End of a range to read, in seconds since the Unix epoch; reading then ends with EOS. 0: read live, no end")
                    .minimum(0.0)
                    .default_value(0.0)
                    .mutable_ready()
                    .build(),
                string("continuation-token", "Write: the token to resume after, for start-selector=continuation-token. Read: the last token the service gave, to persist and resume from later"),
                glib::ParamSpecString::builder("last-fragment-number")
                    .nick("Last fragment number")
                    .blurb("Number of the last fragment written to the output (read-only)")
                    .read_only()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("mode", OutputMode::Merged)
                    .nick("Mode")
                    .blurb("Output: merged (one Matroska stream) or raw (the service's bytes)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("timeline", OutputTimeline::ProducerTime)
                    .nick("Timeline")
                    .blurb("Output timestamps (merged mode): producer-time (each fragment at its producer timestamp, gaps kept) or continuous (gaps of more than a second closed)")
                    .mutable_ready()
                    .build(),
                uint("max-outage", "Seconds a live read keeps retrying while the stream cannot be read (refused, unreachable, throttled), with backoff capped at 10 s, before it ends with an error; 0: for as long as it takes, reading then goes on from where it stopped", u32::MAX, 0),
                uint("parallel-downloads", "GetMediaForFragmentList requests at once when reading a range; the service allows 5 connections per stream", 64, DEFAULT_PARALLEL),
            ];
            properties.splice(1..1, connection_properties());
            properties
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings();
        if set_connection_property(&mut settings.connection, pspec.name(), value) {
            return;
        }
        match pspec.name() {
            "stream-name" => settings.stream_name = string_value(value),
            "start-selector" => settings.start_selector = checked(value),
            "start-fragment-number" => settings.start_fragment_number = string_value(value),
            "start-timestamp" => settings.start_timestamp = checked(value),
            "end-timestamp" => {
                settings.end_timestamp = checked(value);
                // Decided here, not in start(): a live source must say so before READY -> PAUSED.
                self.obj().set_live(settings.end_timestamp == 0.0);
            }
            "continuation-token" => settings.continuation_token = string_value(value),
            "mode" => settings.mode = checked(value),
            "timeline" => settings.timeline = checked(value),
            "parallel-downloads" => settings.parallel = checked(value),
            "max-outage" => settings.max_outage = checked(value),
            other => unimplemented!("property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings();
        if let Some(value) = connection_property(&settings.connection, pspec.name()) {
            return value;
        }
        match pspec.name() {
            "stream-name" => settings.stream_name.to_value(),
            "start-selector" => settings.start_selector.to_value(),
            "start-fragment-number" => settings.start_fragment_number.to_value(),
            "start-timestamp" => settings.start_timestamp.to_value(),
            "end-timestamp" => settings.end_timestamp.to_value(),
            "continuation-token" => lock(&self.progress)
                .continuation_token
                .clone()
                .or(settings.continuation_token.clone())
                .to_value(),
            "last-fragment-number" => lock(&self.progress).last_fragment_number.to_value(),
            "mode" => settings.mode.to_value(),
            "timeline" => settings.timeline.to_value(),
            "parallel-downloads" => settings.parallel.to_value(),
            "max-outage" => settings.max_outage.to_value(),
            other => unimplemented!("property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_format(gst::Format::Bytes);
        // Without end-timestamp, reading is live.
        self.obj().set_live(true);
    }
}

impl GstObjectImpl for KvsSrc {}

crate::uri::uri_handler!(KvsSrc, gst::URIType::Src);

impl ElementImpl for KvsSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Kinesis Video Streams source",
                "Source/Network",
                "Reads a stream from Amazon Kinesis Video Streams with GetMedia and emits Matroska",
                "gst-plugin-kvs developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::new_empty_simple("video/x-matroska");
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("valid pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for KvsSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings().clone();
        let stream_name = crate::element::stream_name(settings.stream_name.as_ref())?;
        let config = Self::reader_config(&settings)?;
        self.canceller.reset();
        *lock(&self.progress) = Progress::default();
        let connection = effective_connection(&settings.connection);
        let (ctx, description) = crate::element::prepare(
            "kvssrc",
            &self.canceller,
            &connection,
            &stream_name,
            gst::ResourceError::OpenRead,
        )?;
        description.map_err(|error| kvs_error_message(&error))?;
        gst::info!(
            CAT,
            imp = self,
            "reading {stream_name} from {:?} to {:?}",
            config.start,
            config.end
        );
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let task = RUNTIME.spawn(super::reader::run(ctx, config, tx));
        *lock(&self.reading) = Some(Reading {
            task,
            receiver: rx,
            items: Default::default(),
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.cancel();
        if std::mem::take(&mut lock(&self.progress).range_in_progress) {
            self.post_progress_message(gst::ProgressType::Canceled, "Reading stopped", None);
        }
        if let Some(reading) = lock(&self.reading).take() {
            reading.task.abort();
        }
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.cancel();
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.reset();
        Ok(())
    }
}

impl PushSrcImpl for KvsSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let mut reading = lock(&self.reading);
        let Some(Reading {
            receiver: rx,
            items,
            ..
        }) = reading.as_mut()
        else {
            return Err(gst::FlowError::Flushing);
        };
        loop {
            if self.canceller.is_cancelled() {
                return Err(gst::FlowError::Flushing);
            }
            if let Some(item) = items.pop_front() {
                if let Some(buffer) = self.handle(item)? {
                    return Ok(CreateSuccess::NewBuffer(buffer));
                }
                continue;
            }
            // What is there already is taken without a round trip through the runtime.
            let next = match rx.try_recv() {
                Ok(batch) => Ok(Some(batch)),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Ok(None),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    self.canceller.wait(rx.recv(), None)
                }
            };
            match next {
                Ok(Some(batch)) => items.extend(batch),
                // The reader finished: the range is read.
                Ok(None) => return Err(gst::FlowError::Eos),
                Err(_) => return Err(gst::FlowError::Flushing),
            }
        }
    }
}
