// SPDX-License-Identifier: MPL-2.0

//! The Matroska sink inside the `kvssink` bin ([`super::bin`]): a `BaseSink` taking Matroska (`matroskamux`
//! output). It is not registered: the bin creates it and forwards every property, signal and message.
//!
//! `start()` loads the AWS configuration and checks the stream (DescribeStream), so that missing credentials,
//! an unreachable endpoint or a missing stream fail the state change with a clear error. `render()` feeds the
//! [`Fragmenter`] and queues fragments for the [`Uploader`]; it never waits on the network, except that an
//! upload that is not live waits for room in the queue. EOS waits until every fragment is persisted, bounded
//! by `stop-stream-timeout`. Every wait goes through the element's [`Canceller`], so flushes and state changes
//! end it at once.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use super::capture::{CaptureTimes, Notice};
use super::fragmenter::{Fragmenter, Output, TimeAnchor, TimeJump, TrackNames};
use super::store::{Recovered, Store};
use super::triggers::{TriggerRequest, TriggerTime};
use super::uploader::{UploadEvent, Uploader, UploaderConfig};
use super::window::{Gate, Gated, Notice as WindowNotice, Source};
use super::{CAT, CaptureTime, EventTags, UploadMode};
use crate::kvs::ack::AckKind;
use crate::kvs::control::CreateParams;
use crate::kvs::error::KvsError;
use crate::kvs::settings::ConnectionSettings;
use crate::props::{
    checked, connection_properties, connection_property, effective_connection,
    set_connection_property, string, string_value, uint,
};
use crate::runtime::{Canceller, WaitError};

const DEFAULT_RETENTION_HOURS: u32 = 2;
const DEFAULT_STALENESS_S: u32 = 60;
const DEFAULT_STOP_TIMEOUT_S: u32 = 120;
const DEFAULT_STORAGE_MB: u32 = 128;
const DEFAULT_BUFFER_DURATION_S: u32 = 120;
const DEFAULT_ROTATION_S: u32 = 40 * 60;
const DEFAULT_RETRY_LIMIT: u32 = 10;
const DEFAULT_BUFFER_MAX_MB: u32 = 1024;

#[derive(Debug, Clone)]
struct Settings {
    stream_name: Option<String>,
    connection: ConnectionSettings,
    allow_create: bool,
    retention_hours: u32,
    kms_key_id: Option<String>,
    stream_tags: Option<gst::Structure>,
    fragment_acks: bool,
    staleness_s: u32,
    stop_timeout_s: u32,
    storage_mb: u32,
    buffer_duration_s: u32,
    file_start_time: u64,
    rotation_s: u32,
    retry_limit: u32,
    /// The fragment store's directory (`buffer-dir`), its size limit in MiB and age limit in seconds (0: none).
    buffer_dir: Option<String>,
    buffer_max_mb: u32,
    buffer_max_age_s: u32,
    /// Where capture times come from (`capture-time`).
    capture_time: CaptureTime,
    /// Upload windows ([`super::triggers`]): the mode, the pre-roll and post-roll in seconds, the `trigger`
    /// property, and the event tags for a window's first fragment.
    upload_mode: UploadMode,
    pre_roll_s: u32,
    post_roll_s: u32,
    trigger: bool,
    event_tags: EventTags,
    image_prefix: Option<String>,
    /// Track names and codec IDs when the bin muxes elementary streams itself.
    track_names: Option<TrackNames>,
    /// The C++ kvssink's properties ([`super::compat`]).
    cpp: super::compat::CppSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stream_name: None,
            connection: ConnectionSettings::default(),
            allow_create: true,
            retention_hours: DEFAULT_RETENTION_HOURS,
            kms_key_id: None,
            stream_tags: None,
            fragment_acks: true,
            staleness_s: DEFAULT_STALENESS_S,
            stop_timeout_s: DEFAULT_STOP_TIMEOUT_S,
            storage_mb: DEFAULT_STORAGE_MB,
            buffer_duration_s: DEFAULT_BUFFER_DURATION_S,
            file_start_time: 0,
            rotation_s: DEFAULT_ROTATION_S,
            retry_limit: DEFAULT_RETRY_LIMIT,
            buffer_dir: None,
            buffer_max_mb: DEFAULT_BUFFER_MAX_MB,
            buffer_max_age_s: 0,
            capture_time: CaptureTime::Auto,
            upload_mode: UploadMode::Continuous,
            pre_roll_s: 0,
            post_roll_s: 0,
            trigger: false,
            event_tags: EventTags::empty(),
            image_prefix: None,
            track_names: None,
            cpp: Default::default(),
        }
    }
}

struct Started {
    fragmenter: Fragmenter,
    uploader: Arc<Uploader>,
    /// The fragment store (`buffer-dir`), written from the streaming thread only.
    store: Option<Arc<Mutex<Store>>>,
    live: Option<bool>,
    /// False: fragments are stamped with the time their first frame reaches kvssink (`frame-timecodes`).
    frame_timecodes: bool,
    capture: CaptureTimes,
    stop_timeout: Duration,
    /// What is uploaded and what is held for the pre-roll.
    gate: Gate,
    /// The tags a window's first fragment gets (`event-tags`, `image-prefix`).
    window_tags: Vec<kvs_mkv::tags::SimpleTag>,
    /// What a new uploader needs when `stream-name` changes while PLAYING, and that new name until the next
    /// fragment.
    ctx: crate::kvs::config::AwsContext,
    config: UploaderConfig,
    create: Option<CreateParams>,
    next_stream: Option<String>,
}

/// A held fragment released from its file ([`Gated::Release`]).
struct Release {
    id: u64,
    header: Arc<super::fragmenter::StreamHeader>,
    timecode: u64,
    frames: usize,
    complete: bool,
}

/// Where the fragmenter's output goes: the uploader it is for, in order (a `stream-name` change starts a new
/// one at a fragment), and what to say on the bus once the state is unlocked.
#[derive(Default)]
struct Routed {
    segments: Vec<(Arc<Uploader>, Vec<Gated>)>,
    /// Held fragments (on disk) released as a window's first fragment: the event tags they get.
    release_tags: HashMap<u64, Vec<kvs_mkv::tags::SimpleTag>>,
    windows: Vec<WindowNotice>,
    warnings: Vec<String>,
    switched: Option<(String, u64)>,
}

#[derive(Default)]
pub struct KvsMkvSink {
    settings: Mutex<Settings>,
    /// Never held while waiting (render and EOS take what they need and let go).
    state: Mutex<Option<Started>>,
    canceller: Canceller,
    /// The fragment store's last write failed (a warning was posted).
    store_failing: Mutex<bool>,
    /// A backlog progress was started and not completed.
    backlog_open: Mutex<bool>,
    /// The files of the pre-roll's fragments held in the store, by the gate's id.
    held_files: Mutex<HashMap<u64, super::store::FragmentFile>>,
    /// `kvs-add-metadata` received before the upload started: added at start.
    early_metadata: Mutex<Vec<(String, String, bool)>>,
}

use crate::element::lock;

fn kvs_error_message(error: &KvsError) -> gst::ErrorMessage {
    crate::element::kvs_error_message(error, gst::ResourceError::OpenWrite)
}

/// Emitted for each ACK (the C++ kvssink's signal), with the `kvssink-ack` structure the bus message carries.
const SIGNAL_FRAGMENT_ACK: &str = "fragment-ack";
/// Emitted for an ERROR ACK and when the upload gives up (the C++ kvssink's signal), with a
/// `kvssink-stream-error` structure: `reason`, `error-id` (the ACK's ErrorId, 0 otherwise), `fatal`.
const SIGNAL_STREAM_ERROR: &str = "stream-error";

use crate::messages::stream_error;

impl KvsMkvSink {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        lock(&self.settings)
    }

    /// The names and codec IDs of the tracks the bin muxes (None: the input's own), from the next header on.
    pub(super) fn set_track_names(&self, names: Option<TrackNames>) {
        self.settings().track_names = names.clone();
        if let Some(started) = lock(&self.state).as_mut() {
            started.fragmenter.set_track_names(names);
        }
    }

    /// `kvs-add-metadata`: a tag for the next fragment, or for all of them with `persist`.
    pub(super) fn add_metadata(&self, metadata: &gst::StructureRef) {
        let name = metadata.get::<String>("name").unwrap_or_default();
        let value = metadata.get::<String>("value").unwrap_or_default();
        let persist = metadata.get::<bool>("persist").unwrap_or(false);
        self.add_tag(name, value, persist);
    }

    /// A fragment tag (see [`add_metadata`](Self::add_metadata)); before the upload starts, kept for it.
    fn add_tag(&self, name: String, value: String, persist: bool) {
        let result = match lock(&self.state).as_mut() {
            Some(started) => started.fragmenter.add_metadata(&name, &value, persist),
            // Before the upload starts: kept for its first fragment (checked then).
            None => {
                lock(&self.early_metadata).push((name.clone(), value.clone(), persist));
                gst::debug!(
                    CAT,
                    imp = self,
                    "metadata {name}={value} kept until the upload starts"
                );
                return;
            }
        };
        match result {
            Ok(()) => gst::debug!(
                CAT,
                imp = self,
                "metadata {name}={value} (persist {persist})"
            ),
            Err(error) => gst::element_imp_warning!(
                self,
                gst::StreamError::Failed,
                ("metadata {:?} not added: {}", name, error),
                ["the stream goes on without it"]
            ),
        }
    }

    /// Turns uploader events into bus messages, debug logs and, for a failure, an element error.
    fn listener(&self) -> super::uploader::Listener {
        let weak = self.obj().downgrade();
        Arc::new(move |event: UploadEvent| {
            let Some(element) = weak.upgrade() else {
                return;
            };
            let structure = crate::messages::upload_event(&event);
            match &event {
                UploadEvent::Connected {
                    connection,
                    endpoint,
                    resending,
                } => gst::info!(
                    CAT,
                    obj = element,
                    "connection {connection} to {endpoint} open, re-sending {resending}"
                ),
                UploadEvent::Disconnected {
                    connection,
                    reason,
                    retry_in,
                    attempt,
                } => gst::warning!(
                    CAT,
                    obj = element,
                    "connection {connection} lost: {reason}; retry {attempt} in {retry_in:?}"
                ),
                UploadEvent::Rotating { connection, reason } => {
                    gst::info!(
                        CAT,
                        obj = element,
                        "rotating connection {connection}: {reason}"
                    )
                }
                UploadEvent::Ack {
                    connection, ack, ..
                } => {
                    gst::debug!(CAT, obj = element, "connection {connection}: {ack:?}");
                    if let Some(structure) = &structure {
                        element.emit_by_name::<()>(SIGNAL_FRAGMENT_ACK, &[structure]);
                    }
                    if let AckKind::Error { id, code } = &ack.kind {
                        let error = stream_error(&format!("ERROR ACK {id} {code}"), *id, false);
                        element.emit_by_name::<()>(SIGNAL_STREAM_ERROR, &[&error]);
                    }
                }
                UploadEvent::Dropped {
                    timecode, reason, ..
                } => gst::element_warning!(
                    element,
                    gst::ResourceError::Write,
                    ("fragment {} dropped", timecode),
                    ["{}", reason]
                ),
                UploadEvent::UnreadableAck { connection, reason } => {
                    gst::element_warning!(
                        element,
                        gst::StreamError::Decode,
                        ("skipped {} on connection {}", reason, connection),
                        [
                            "the connection goes on; a later PERSISTED acknowledges the fragments before it"
                        ]
                    );
                }
                UploadEvent::Backlog(backlog) => {
                    gst::debug!(CAT, obj = element, "backlog: {backlog:?}");
                    element.imp().post_backlog_progress(backlog);
                }
                UploadEvent::Failed(failure) => {
                    let reason = failure.to_string();
                    let error_id = match &failure.error {
                        KvsError::FragmentRefused { id, .. } => *id,
                        _ => 0,
                    };
                    element.emit_by_name::<()>(
                        SIGNAL_STREAM_ERROR,
                        &[&stream_error(&reason, error_id, true)],
                    );
                    let message = crate::element::error_message(
                        &failure.error,
                        &reason,
                        gst::ResourceError::Write,
                    );
                    element.post_error_message(message);
                }
            }
            if let Some(structure) = structure {
                let _ = element.post_message(
                    gst::message::Element::builder(structure)
                        .src(&element)
                        .build(),
                );
            }
        })
    }

    /// A backlog as a standard GST_MESSAGE_PROGRESS (code `kvssink-backlog`) that `gst-launch-1.0` prints and
    /// applications read without knowing kvssink: start, continue each second, complete when it is gone. Start
    /// and continue only in PLAYING (`gst-launch-1.0` holds a pipeline in PAUSED while a progress is open).
    fn post_backlog_progress(&self, backlog: &super::uploader::Backlog) {
        let playing = self.obj().current_state() == gst::State::Playing;
        let kind = {
            let mut open = lock(&self.backlog_open);
            match (*open, backlog.fragments > 0) {
                (true, false) => {
                    *open = false;
                    gst::ProgressType::Complete
                }
                (started, true) if playing => {
                    *open = true;
                    if started {
                        gst::ProgressType::Continue
                    } else {
                        gst::ProgressType::Start
                    }
                }
                _ => return,
            }
        };
        let text = match (kind, backlog.eta) {
            (gst::ProgressType::Complete, _) => "Backlog uploaded".to_owned(),
            (_, _) if backlog.waiting => format!(
                "{} fragments ({:.1} MB) wait for the service",
                backlog.fragments,
                backlog.bytes as f64 / 1e6
            ),
            (_, eta) => format!(
                "{} fragments ({:.1} MB) to upload at {:.2} MB/s, about {} s left",
                backlog.fragments,
                backlog.bytes as f64 / 1e6,
                backlog.rate / 1e6,
                eta.unwrap_or_default().as_secs()
            ),
        };
        let element = self.obj();
        let message = gst::message::Progress::builder(kind, "kvssink-backlog", &text)
            .src(&*element)
            .build();
        let _ = element.post_message(message);
    }

    fn start_inner(&self) -> Result<Started, gst::ErrorMessage> {
        let settings = self.settings().clone();
        let stream_name = crate::element::stream_name(settings.stream_name.as_ref())?;
        let iot = settings.cpp.iot(&stream_name).map_err(|why| {
            gst::error_msg!(
                gst::LibraryError::Settings,
                ("{}", why),
                ["iot-certificate is a GstStructure with the fields endpoint, cert-path, key-path, ca-path, role-aliases and optionally iot-thing-name, connection-timeout and completion-timeout"]
            )
        })?;
        let without_effect = settings.cpp.without_effect(settings.track_names.is_some());
        if !without_effect.is_empty() {
            let list: Vec<String> = without_effect
                .iter()
                .map(|(name, why)| format!("{name} ({why})"))
                .collect();
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "these C++ kvssink properties have no effect here: {}",
                    list.join(", ")
                ),
                ["they are accepted so that pipelines written for the C++ kvssink run unchanged"]
            );
        }
        if settings.cpp.near_realtime() {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                ("streaming-type=near-realtime is uploaded as realtime: each frame goes out as it comes"),
                [
                    "kvssink has one live mode; near-realtime only changed how the C++ SDK buffered fragments"
                ]
            );
        }
        let mut connection = effective_connection(&settings.connection);
        if let Some(completion) = settings.cpp.completion_timeout() {
            connection.request_timeout = completion;
        }
        connection.connect_timeout = settings.cpp.connect_timeout();
        connection.credential_file = settings.cpp.credential_file();
        connection.iot = iot;
        // The store first: a directory that cannot be used, or that holds another stream, stops here.
        let (store, recovered) = match &settings.buffer_dir {
            Some(dir) => {
                let (store, recovered) = Store::open(std::path::Path::new(dir), &stream_name)
                    .map_err(|error| {
                        gst::error_msg!(
                            gst::ResourceError::OpenWrite,
                            ("{}", error),
                            [
                                "buffer-dir {} cannot hold the fragments of stream {}",
                                dir,
                                stream_name
                            ]
                        )
                    })?;
                (Some(store), recovered)
            }
            None => (None, Recovered::default()),
        };
        if !settings.fragment_acks {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                ("fragment-acks=false: a fragment is forgotten once written, so nothing lost on a dropped connection can be sent again"),
                [
                    "without acknowledgements kvssink cannot know what the service stored; set fragment-acks=true to keep every fragment until it is persisted"
                ]
            );
        }
        let started = std::time::Instant::now();
        let (ctx, description) = crate::element::prepare(
            "kvssink",
            &self.canceller,
            &connection,
            &stream_name,
            gst::ResourceError::OpenWrite,
        )?;
        gst::debug!(
            CAT,
            imp = self,
            "AWS configuration and DescribeStream took {:?}",
            started.elapsed()
        );
        let create_params = || {
            let tags: HashMap<String, String> = settings
                .stream_tags
                .iter()
                .flat_map(|s| {
                    s.iter().map(|(k, v)| {
                        (
                            k.to_string(),
                            v.serialize().map(|v| v.to_string()).unwrap_or_default(),
                        )
                    })
                })
                .map(|(k, v)| (k, v.trim_matches('"').to_owned()))
                .collect();
            CreateParams {
                retention_hours: settings.retention_hours as i32,
                kms_key_id: settings.kms_key_id.clone(),
                media_type: settings.cpp.content_type(),
                device_name: None,
                tags,
            }
        };
        let (retention_hours, create, check_stream) = match description {
            Ok(description) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "stream {} ({}), retention {} h",
                    stream_name,
                    description.arn,
                    description.retention_hours
                );
                (description.retention_hours, None, false)
            }
            Err(error)
                if error.code() == Some("ResourceNotFoundException") && settings.allow_create =>
            {
                gst::info!(
                    CAT,
                    imp = self,
                    "stream {} is missing: it is created with the first fragment",
                    stream_name
                );
                (
                    settings.retention_hours as i32,
                    Some(create_params()),
                    false,
                )
            }
            // With a store, an unreachable service is an outage like any other: record now, upload later.
            Err(error) if store.is_some() && error.action() != crate::kvs::error::Action::Fail => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::OpenWrite,
                    (
                        "the service cannot be reached ({}): recording into buffer-dir, uploading when it can",
                        error
                    ),
                    [
                        "DescribeStream for {} failed; fragments are kept in {} until they are persisted",
                        stream_name,
                        settings.buffer_dir.as_deref().unwrap_or_default()
                    ]
                );
                let create = settings.allow_create.then(create_params);
                (settings.retention_hours as i32, create, true)
            }
            Err(error) => return Err(kvs_error_message(&error)),
        };
        let durable = store.is_some();
        let (max_queue_bytes, max_queue_duration) = if durable {
            let age = match settings.buffer_max_age_s {
                0 => Duration::MAX,
                seconds => Duration::from_secs(u64::from(seconds)),
            };
            (settings.buffer_max_mb as usize * 1024 * 1024, age)
        } else {
            (
                settings.storage_mb as usize * 1024 * 1024,
                Duration::from_secs(u64::from(settings.buffer_duration_s.max(1))),
            )
        };
        let config = UploaderConfig {
            stream_name,
            retention_hours,
            create,
            check_stream,
            durable,
            acks: settings.fragment_acks,
            staleness: Duration::from_secs(u64::from(settings.staleness_s.max(1))),
            rotation: Duration::from_secs(u64::from(settings.rotation_s.max(1))),
            max_queue_bytes,
            max_queue_duration,
            retry_limit: settings.retry_limit,
            max_backoff: Duration::from_secs(10),
            user_agent: settings.cpp.user_agent(),
            restart_on_error: settings.cpp.restart_on_error(),
            active: settings.upload_mode == UploadMode::Continuous,
        };
        let uploader = Uploader::start(ctx.clone(), config.clone(), self.listener());
        let offline = settings.cpp.offline();
        let anchor = if settings.file_start_time > 0 {
            TimeAnchor::Fixed(UNIX_EPOCH + Duration::from_secs(settings.file_start_time))
        } else if offline {
            TimeAnchor::Fixed(SystemTime::now())
        } else {
            TimeAnchor::CaptureTime
        };
        let mut fragmenter = Fragmenter::new(anchor);
        fragmenter.set_track_names(settings.track_names.clone());
        if let Some(store) = &store {
            self.queue_recovered(store, recovered, &uploader, &mut fragmenter);
        }
        let mut gate = Gate::new(
            settings.upload_mode == UploadMode::Continuous,
            Duration::from_secs(u64::from(settings.pre_roll_s)),
            Duration::from_secs(u64::from(settings.post_roll_s)),
            max_queue_bytes,
            durable,
        );
        if settings.upload_mode == UploadMode::Triggered && settings.trigger {
            gate.trigger(Source::Property, 0, None);
        }
        Ok(Started {
            fragmenter,
            uploader,
            gate,
            window_tags: super::triggers::event_tags(
                settings.event_tags,
                settings.image_prefix.as_deref(),
            ),
            ctx,
            config,
            create: settings.allow_create.then(create_params),
            next_stream: None,
            store: store.map(|s| Arc::new(Mutex::new(s))),
            // Offline: never live, so a full queue waits instead of dropping.
            live: offline.then_some(false),
            frame_timecodes: settings.cpp.frame_timecodes(),
            capture: CaptureTimes::new(settings.capture_time),
            stop_timeout: Duration::from_secs(u64::from(settings.stop_timeout_s)),
        })
    }

    /// Queues what an earlier process left in the store, before any live media, and says on the bus what was
    /// found: a `kvssink-store-recovered` message, and a warning for each file cut or set aside. Live media
    /// then starts after the last recovered frame (one PutMedia stream must not go back in time).
    fn queue_recovered(
        &self,
        store: &Store,
        recovered: Recovered,
        uploader: &Arc<Uploader>,
        fragmenter: &mut Fragmenter,
    ) {
        for problem in &recovered.problems {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Read,
                ("{}", problem),
                ["found in buffer-dir {} at start", store.dir().display()]
            );
        }
        let mut headers: Vec<Arc<super::fragmenter::StreamHeader>> = Vec::new();
        let (mut bytes, mut frames, mut incomplete) = (0u64, 0u64, 0u64);
        let (first, count) = (
            recovered.fragments.first().map(|f| f.timecode),
            recovered.fragments.len(),
        );
        let mut last_end: Option<SystemTime> = None;
        for fragment in recovered.fragments {
            let header = match headers.last() {
                Some(h)
                    if h.bytes == fragment.header
                        && h.timecode_scale == fragment.timecode_scale =>
                {
                    h.clone()
                }
                _ => {
                    let header = Arc::new(super::fragmenter::StreamHeader {
                        generation: headers.len() as u64 + 1,
                        bytes: fragment.header.clone(),
                        timecode_scale: fragment.timecode_scale,
                        media_type: fragment.media_type.clone(),
                    });
                    headers.push(header.clone());
                    header
                }
            };
            bytes += fragment.size as u64;
            frames += fragment.frames as u64;
            incomplete += u64::from(!fragment.complete);
            let start =
                Duration::from_nanos(fragment.timecode.saturating_mul(fragment.timecode_scale));
            last_end = Some(UNIX_EPOCH + start + fragment.duration);
            uploader.queue_stored(header, fragment);
        }
        fragmenter.set_generation_base(headers.len() as u64);
        fragmenter.set_not_before(last_end);
        let mut structure = crate::messages::store_recovered(
            &store.dir().display().to_string(),
            count as u64,
            frames,
            bytes,
            incomplete,
            first,
            recovered.problems.len() as u64,
        );
        structure.set("pre-roll-discarded", recovered.discarded as u64);
        gst::info!(CAT, imp = self, "fragment store: {structure}");
        let _ = self.obj().post_message(
            gst::message::Element::builder(structure)
                .src(&*self.obj())
                .build(),
        );
    }

    /// True when upstream is live (then a full queue drops fragments instead of blocking).
    fn upstream_is_live(&self) -> bool {
        let mut query = gst::query::Latency::new();
        self.obj().sink_pad().peer_query(&mut query) && query.result().0
    }

    /// Hands the gate's output to the store (when there is one) and the uploader, frame by frame, in order.
    /// Waits for room only when not live. A frame is written to the store before it is queued for the
    /// connection; the pre-roll's held fragments are written as held files, deleted or released from there.
    fn queue_outputs(
        &self,
        uploader: &Arc<Uploader>,
        store: Option<&Arc<Mutex<Store>>>,
        live: bool,
        outputs: Vec<Gated>,
        release_tags: &HashMap<u64, Vec<kvs_mkv::tags::SimpleTag>>,
    ) -> Result<(), gst::FlowError> {
        let mut store = store.map(|s| lock(s));
        for gated in outputs {
            let output = match gated {
                Gated::Send(output) => output,
                Gated::HoldStart { id, start } => {
                    if let Some(store) = store.as_mut() {
                        let stored =
                            store.start_fragment(&start.header, start.timecode, &start.data, true);
                        if let Some(file) = self.stored(stored, start.timecode, store.position()) {
                            lock(&self.held_files).insert(id, file);
                        }
                    }
                    continue;
                }
                Gated::HoldFrame { data, duration } => {
                    if let Some(store) = store.as_mut() {
                        let appended = store.append(&data, duration);
                        self.stored(appended, 0, store.position());
                    }
                    continue;
                }
                Gated::HoldEnd => {
                    if let Some(store) = store.as_mut() {
                        let ended = store.end_fragment();
                        self.stored(ended, 0, None);
                    }
                    continue;
                }
                Gated::Discard { id } => {
                    if let Some(file) = lock(&self.held_files).remove(&id) {
                        file.release();
                    }
                    continue;
                }
                Gated::Release {
                    id,
                    header,
                    timecode,
                    frames,
                    complete,
                } => {
                    let tags = release_tags.get(&id).map(Vec::as_slice).unwrap_or_default();
                    let release = Release {
                        id,
                        header,
                        timecode,
                        frames,
                        complete,
                    };
                    self.release_held(uploader, live, release, tags)?;
                    continue;
                }
            };
            let size = match &output {
                Output::FragmentStart(start) => start.data.len(),
                Output::Frame { data, .. } => data.len(),
                Output::Header(_) | Output::FragmentEnd | Output::TimeJump(_) => 0,
            };
            self.wait_for_room(uploader, live, size)?;
            let queued = match output {
                Output::Header(header) => {
                    gst::info!(
                        CAT,
                        imp = self,
                        "stream header {} ({} bytes, media type {:?})",
                        header.generation,
                        header.bytes.len(),
                        header.media_type
                    );
                    Ok(())
                }
                Output::FragmentStart(start) => {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "fragment {} starts ({} bytes)",
                        start.timecode,
                        size
                    );
                    let stored = store.as_mut().and_then(|store| {
                        let stored =
                            store.start_fragment(&start.header, start.timecode, &start.data, false);
                        self.stored(stored, start.timecode, store.position())
                    });
                    uploader.start_fragment(start, stored)
                }
                Output::Frame { data, duration } => {
                    if let Some(store) = store.as_mut() {
                        let appended = store.append(&data, duration);
                        self.stored(appended, 0, store.position());
                    }
                    uploader.push_frame(data, duration)
                }
                Output::TimeJump(jump) => {
                    self.post_time_jump(&jump);
                    Ok(())
                }
                Output::FragmentEnd => {
                    if let Some(store) = store.as_mut() {
                        let ended = store.end_fragment();
                        self.stored(ended, 0, None);
                    }
                    uploader.end_fragment();
                    Ok(())
                }
            };
            if queued.is_err() {
                return Err(gst::FlowError::Error);
            }
        }
        Ok(())
    }

    /// Waits until the upload queue has room for `size` bytes (not when live: a full queue drops instead).
    fn wait_for_room(
        &self,
        uploader: &Arc<Uploader>,
        live: bool,
        size: usize,
    ) -> Result<(), gst::FlowError> {
        if size == 0 || live {
            return Ok(());
        }
        match self.canceller.wait(uploader.wait_for_room(size), None) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_failed)) => Err(gst::FlowError::Error),
            Err(_) => Err(gst::FlowError::Flushing),
        }
    }

    /// A held fragment of the pre-roll goes to the uploader from its file (renamed to be uploaded if the
    /// process stops first). `tags`: the event tags of a window's first fragment, put before it (they are sent
    /// from memory, so that a re-send has them too). A fragment whose file could not be written or read is
    /// left out, with a warning.
    fn release_held(
        &self,
        uploader: &Arc<Uploader>,
        live: bool,
        release: Release,
        tags: &[kvs_mkv::tags::SimpleTag],
    ) -> Result<(), gst::FlowError> {
        let Release {
            id,
            header,
            timecode,
            frames,
            complete,
        } = release;
        let file = lock(&self.held_files).remove(&id);
        let read = file
            .ok_or_else(|| "it was not stored (buffer-dir failed)".to_owned())
            .and_then(|file| {
                file.commit().map_err(|e| e.to_string())?;
                let pieces = file
                    .map()
                    .map_err(|e| format!("{}: {e}", file.path().display()))?;
                Ok((file, pieces))
            });
        let (file, pieces) = match read {
            Ok(read) => read,
            Err(why) => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Read,
                    ("pre-roll fragment {} left out: {}", timecode, why),
                    ["a held fragment of the pre-roll in buffer-dir could not be read back"]
                );
                return Ok(());
            }
        };
        let mut data = kvs_mkv::Rope::default();
        for piece in pieces.into_iter().take(frames) {
            data.append(kvs_mkv::Rope::from(piece));
        }
        let mut start = super::fragmenter::FragmentStart {
            header,
            timecode,
            data,
        };
        if let Err(why) = super::triggers::tag_fragment(&mut start, tags) {
            gst::element_imp_warning!(
                self,
                gst::StreamError::Format,
                ("event tags left off fragment {}: {}", timecode, why),
                ["event-tags"]
            );
        }
        self.wait_for_room(uploader, live, start.data.len())?;
        gst::debug!(
            CAT,
            imp = self,
            "pre-roll fragment {} from buffer-dir ({} bytes)",
            timecode,
            start.data.len()
        );
        if uploader.start_fragment(start, Some(file)).is_err() {
            return Err(gst::FlowError::Error);
        }
        if complete {
            uploader.end_fragment();
        }
        Ok(())
    }

    /// Decides, under the state lock, which uploader each output goes to and what the bus should hear: a
    /// window's first fragment gets the event tags; a `stream-name` changed while PLAYING takes effect at the
    /// next fragment (a new uploader for the new stream, the old one finishes what it has); the uploader keeps
    /// its connection only while a window is open.
    fn route(
        &self,
        started: &mut Started,
        mut outputs: Vec<Gated>,
        windows: Vec<WindowNotice>,
    ) -> Routed {
        let mut routed = Routed {
            windows,
            ..Default::default()
        };
        for notice in &routed.windows {
            let WindowNotice::Started(window) = notice else {
                continue;
            };
            if started.window_tags.is_empty() {
                continue;
            }
            for gated in outputs.iter_mut() {
                match gated {
                    Gated::Send(Output::FragmentStart(start))
                        if start.timecode == window.timecode =>
                    {
                        if let Err(why) = super::triggers::tag_fragment(start, &started.window_tags)
                        {
                            routed.warnings.push(format!(
                                "event tags left off fragment {}: {why}",
                                window.timecode
                            ));
                        }
                        break;
                    }
                    Gated::Release { id, timecode, .. } if *timecode == window.timecode => {
                        routed.release_tags.insert(*id, started.window_tags.clone());
                        break;
                    }
                    _ => {}
                }
            }
        }
        let starts = |g: &Gated| {
            matches!(
                g,
                Gated::Send(Output::FragmentStart(_)) | Gated::Release { .. }
            )
        };
        if started.next_stream.is_some()
            && let Some(at) = outputs.iter().position(starts)
        {
            let rest = outputs.split_off(at);
            routed.segments.push((started.uploader.clone(), outputs));
            let timecode = match &rest[0] {
                Gated::Send(Output::FragmentStart(start)) => start.timecode,
                Gated::Release { timecode, .. } => *timecode,
                _ => 0,
            };
            let name = started.next_stream.take().unwrap_or_default();
            self.switch_stream(started, &name);
            routed.switched = Some((name, timecode));
            outputs = rest;
        }
        started.uploader.set_active(started.gate.is_open());
        routed.segments.push((started.uploader.clone(), outputs));
        routed
    }

    /// Uploads to `name` from now on: a new uploader (that checks the stream, and creates it when allowed,
    /// before its first connection); the old one sends what it holds and ends.
    fn switch_stream(&self, started: &mut Started, name: &str) {
        let mut config = started.config.clone();
        config.stream_name = name.to_owned();
        config.check_stream = true;
        config.create = started.create.clone();
        config.active = true;
        let new = Uploader::start(started.ctx.clone(), config.clone(), self.listener());
        started.config = config;
        let old = std::mem::replace(&mut started.uploader, new);
        old.finish();
        let timeout = started.stop_timeout;
        crate::runtime::RUNTIME.spawn(async move {
            let _ = tokio::time::timeout(timeout, old.wait_done()).await;
            old.stop();
        });
    }

    /// Posts what [`route`](Self::route) found and queues its outputs.
    fn deliver(
        &self,
        routed: Routed,
        store: Option<&Arc<Mutex<Store>>>,
        live: bool,
    ) -> Result<(), gst::FlowError> {
        for warning in &routed.warnings {
            gst::element_imp_warning!(
                self,
                gst::StreamError::Format,
                ("{}", warning),
                ["event-tags"]
            );
        }
        if let Some((name, timecode)) = &routed.switched {
            gst::element_imp_info!(
                self,
                gst::ResourceError::OpenWrite,
                ("uploading to stream {} from fragment {}", name, timecode),
                [
                    "stream-name changed while PLAYING: the fragments before this one go to the previous stream"
                ]
            );
        }
        for notice in &routed.windows {
            let structure = crate::messages::window(notice);
            gst::info!(CAT, imp = self, "{structure}");
            let _ = self.obj().post_message(
                gst::message::Element::builder(structure)
                    .src(&*self.obj())
                    .build(),
            );
        }
        for (uploader, outputs) in routed.segments {
            self.queue_outputs(&uploader, store, live, outputs, &routed.release_tags)?;
        }
        Ok(())
    }

    /// The pipeline's running time now (the clock's), else that of the latest media.
    fn now_running(&self, latest: u64) -> u64 {
        let element = self.obj();
        match (element.clock(), element.base_time()) {
            (Some(clock), Some(base)) => clock.time().saturating_sub(base).nseconds(),
            _ => latest,
        }
    }

    /// `at` as a running time: `default` when not given; a Unix time through the wall clock and the
    /// pipeline clock read together (`clock`: the clock's running time now).
    fn resolve(&self, at: Option<TriggerTime>, default: u64, clock: u64) -> u64 {
        match at {
            None => default,
            Some(TriggerTime::Running(running)) => running,
            Some(TriggerTime::Unix(unix)) => {
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as i128;
                let running = i128::from(clock) - (wall - i128::from(unix));
                running.clamp(0, i128::from(u64::MAX)) as u64
            }
        }
    }

    /// A trigger (`trigger` signal, `kvs-trigger` event, `trigger` property): a window in triggered mode,
    /// nothing in the others (said in the log). `serialized`: its default time is that of the latest media
    /// (an event in the stream), not the clock's.
    pub(super) fn trigger(&self, source: Source, request: TriggerRequest, serialized: bool) {
        let mode = self.settings().upload_mode;
        let mut state = lock(&self.state);
        let Some(started) = state.as_mut() else {
            gst::info!(
                CAT,
                imp = self,
                "{request:?} before the upload started: ignored"
            );
            return;
        };
        if mode != UploadMode::Triggered {
            gst::info!(
                CAT,
                imp = self,
                "{request:?} ignored: upload-mode is {mode:?}, not triggered"
            );
            return;
        }
        let latest = started.gate.latest();
        let clock = self.now_running(latest);
        let now = if serialized { latest } else { clock };
        gst::debug!(CAT, imp = self, "{} {request:?} at {now}", source.name());
        match request {
            TriggerRequest::Start { at, duration } => {
                started
                    .gate
                    .trigger(source, self.resolve(at, now, clock), duration)
            }
            TriggerRequest::Stop { at } => started.gate.stop(self.resolve(at, now, clock)),
        }
    }

    /// kvssink's custom events (`kvs-add-metadata`, `kvs-trigger`); false for any other.
    pub(super) fn custom_event(&self, structure: &gst::StructureRef) -> bool {
        match structure.name().as_str() {
            METADATA_EVENT => self.add_metadata(structure),
            super::triggers::TRIGGER_EVENT => self.trigger_event(structure),
            _ => return false,
        }
        true
    }

    /// A `kvs-trigger` event (from upstream or sent to kvssink).
    fn trigger_event(&self, structure: &gst::StructureRef) {
        match super::triggers::trigger_request(structure) {
            Ok(request) => self.trigger(Source::Event, request, true),
            Err(why) => gst::element_imp_warning!(
                self,
                gst::StreamError::Format,
                ("{}", why),
                ["the event was {}; it is ignored", structure]
            ),
        }
    }

    /// `upload-mode` changed while the upload runs: pausing ends the open window now, resuming opens one now
    /// (with the pre-roll before it).
    fn mode_changed(&self, old: UploadMode, new: UploadMode, trigger: bool) {
        let mut state = lock(&self.state);
        let Some(started) = state.as_mut() else {
            return;
        };
        let now = self.now_running(started.gate.latest());
        gst::info!(CAT, imp = self, "upload-mode {old:?} -> {new:?} at {now}");
        match (old, new) {
            (old, new) if old == new => {}
            (_, UploadMode::Continuous) => started.gate.resume(now),
            (UploadMode::Paused, UploadMode::Triggered) if trigger => {
                started.gate.trigger(Source::Property, now, None)
            }
            (UploadMode::Paused, UploadMode::Triggered) => {}
            _ => started.gate.pause(now),
        }
    }

    /// The properties that may change while PLAYING and act on the running upload. True when `name` is one.
    fn set_window_property(&self, name: &str, value: &glib::Value) -> bool {
        let mut settings = self.settings();
        match name {
            "stream-name" => {
                let new = string_value(value);
                let old = std::mem::replace(&mut settings.stream_name, new.clone());
                let store = settings.buffer_dir.is_some();
                drop(settings);
                let mut state = lock(&self.state);
                let Some(started) = state.as_mut() else {
                    return true;
                };
                match new {
                    Some(new) if Some(&new) != old.as_ref() && !store => {
                        gst::info!(CAT, imp = self, "stream-name {new}: from the next fragment");
                        started.next_stream = Some(new);
                    }
                    Some(new) if Some(&new) != old.as_ref() => {
                        drop(state);
                        self.settings().stream_name = old.clone();
                        gst::element_imp_warning!(
                            self,
                            gst::LibraryError::Settings,
                            (
                                "stream-name cannot change while buffer-dir is set: still uploading to {}",
                                old.unwrap_or_default()
                            ),
                            [
                                "buffer-dir holds the fragments of one stream; asked for {}",
                                new
                            ]
                        );
                    }
                    _ => {}
                }
            }
            "upload-mode" => {
                let new: UploadMode = checked(value);
                let old = std::mem::replace(&mut settings.upload_mode, new);
                let trigger = settings.trigger;
                drop(settings);
                self.mode_changed(old, new, trigger);
            }
            "pre-roll" | "post-roll" => {
                let seconds: u32 = checked(value);
                if name == "pre-roll" {
                    settings.pre_roll_s = seconds;
                } else {
                    settings.post_roll_s = seconds;
                }
                let rolls = (settings.pre_roll_s, settings.post_roll_s);
                drop(settings);
                if let Some(started) = lock(&self.state).as_mut() {
                    let secs = |s: u32| Duration::from_secs(u64::from(s));
                    started.gate.set_rolls(secs(rolls.0), secs(rolls.1));
                }
            }
            "trigger" => {
                let on: bool = checked(value);
                let was = std::mem::replace(&mut settings.trigger, on);
                drop(settings);
                if on != was {
                    let request = if on {
                        TriggerRequest::Start {
                            at: None,
                            duration: None,
                        }
                    } else {
                        TriggerRequest::Stop { at: None }
                    };
                    self.trigger(Source::Property, request, false);
                }
            }
            "event-tags" | "image-prefix" => {
                if name == "event-tags" {
                    settings.event_tags = checked(value);
                } else if let Some(prefix) = string_value(value)
                    && prefix.len() > super::fragmenter::MAX_TAG_VALUE_BYTES
                {
                    drop(settings);
                    gst::element_imp_warning!(
                        self,
                        gst::LibraryError::Settings,
                        (
                            "image-prefix is longer than the service's {} bytes: not changed",
                            super::fragmenter::MAX_TAG_VALUE_BYTES
                        ),
                        ["AWS_KINESISVIDEO_IMAGE_PREFIX takes at most 256 bytes"]
                    );
                    return true;
                } else {
                    settings.image_prefix = string_value(value);
                }
                let tags = super::triggers::event_tags(
                    settings.event_tags,
                    settings.image_prefix.as_deref(),
                );
                drop(settings);
                if let Some(started) = lock(&self.state).as_mut() {
                    started.window_tags = tags;
                }
            }
            _ => return false,
        }
        true
    }

    /// What a store write gave: logged (each stored frame at debug level, which the crash tests read), and a
    /// warning when the store starts failing (the fragment then lives in memory only) or works again.
    fn stored<T>(
        &self,
        result: Result<T, super::store::StoreError>,
        timecode: u64,
        position: Option<(u64, usize)>,
    ) -> Option<T> {
        let mut failing = lock(&self.store_failing);
        match result {
            Ok(value) => {
                // Only a write that happened says the store works again (a frame of a fragment whose start
                // failed is not written at all).
                if position.is_some() && std::mem::take(&mut *failing) {
                    gst::element_imp_info!(
                        self,
                        gst::ResourceError::Write,
                        ("buffer-dir takes fragments again"),
                        [
                            "fragments are stored on disk again from fragment {}",
                            timecode
                        ]
                    );
                }
                if let Some((fragment, frames)) = position {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "stored frame {} of fragment {fragment}",
                        frames - 1
                    );
                }
                Some(value)
            }
            Err(error) => {
                if !std::mem::replace(&mut *failing, true) {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Write,
                        ("{}", error),
                        [
                            "buffer-dir failed: fragments live in memory only (lost if the process stops) until it works again"
                        ]
                    );
                }
                gst::debug!(CAT, imp = self, "store write failed: {error}");
                None
            }
        }
    }

    /// The wall-clock time at which the content of `buffer` was captured: its running time is a time of the
    /// pipeline clock (base time + running time), which is mapped to the real-time clock by reading both
    /// clocks now. `None` without a timestamp, a TIME segment or a clock (then the fragmenter goes on from its
    /// last anchor).
    fn capture_time(&self, running: Option<gst::ClockTime>) -> Option<SystemTime> {
        let element = self.obj();
        let running = running?;
        let clock = element.clock()?;
        let captured = element.base_time()?.checked_add(running)?;
        let now_clock = clock.time();
        let now = SystemTime::now();
        if captured <= now_clock {
            now.checked_sub(Duration::from_nanos((now_clock - captured).nseconds()))
        } else {
            now.checked_add(Duration::from_nanos((captured - now_clock).nseconds()))
        }
    }

    /// The running time of `buffer`'s timestamp (`None` without one or outside a TIME segment).
    fn running_time(&self, buffer: &gst::BufferRef) -> Option<gst::ClockTime> {
        let segment = self.obj().segment();
        segment
            .downcast_ref::<gst::ClockTime>()?
            .to_running_time(buffer.pts()?)
    }

    /// Says on the bus that capture time went back at a fragment's start, and what kvssink did.
    fn post_time_jump(&self, jump: &TimeJump) {
        let back_s = (jump.previous - jump.wanted) as f64 / 1000.0;
        let what = if jump.new_session {
            "the fragment keeps the source's time and starts a new PutMedia session"
        } else {
            "the stream goes on right after the previous frame (the media is live)"
        };
        gst::element_imp_warning!(
            self,
            gst::StreamError::Format,
            ("capture time went back {:.3} s", back_s),
            [
                "a fragment's first frame is at {} ms, before the previous frame at {} ms: {} (placed at {} ms)",
                jump.wanted,
                jump.previous,
                what,
                jump.placed
            ]
        );
    }

    /// Says on the bus what the capture times now come from.
    fn post_notices(&self, notices: Vec<Notice>) {
        for notice in notices {
            match notice {
                Notice::SourceClock { caps, ahead_s } => gst::element_imp_info!(
                    self,
                    gst::StreamError::Format,
                    ("frames carry the source's capture time ({})", caps),
                    [
                        "from this frame on, frames are stamped with the source's reference timestamps; its clock is {:.3} s {} the host's",
                        ahead_s.abs(),
                        if ahead_s < 0.0 { "behind" } else { "ahead of" }
                    ]
                ),
                Notice::NoReference { held } => gst::element_imp_warning!(
                    self,
                    gst::StreamError::Format,
                    (
                        "no reference timestamp within {} s: frames are stamped with the host clock",
                        super::capture::HOLD_LIMIT.as_secs()
                    ),
                    [
                        "capture-time=meta, but none of the first {} buffers carried a GstReferenceTimestampMeta (timestamp/x-ntp or timestamp/x-unix); they go out on the host clock, and later buffers take the source's time when one does",
                        held
                    ]
                ),
            }
        }
    }

    fn input_error(&self, error: &super::fragmenter::InputError) -> gst::FlowError {
        gst::element_imp_error!(
            self,
            gst::StreamError::Format,
            ("invalid input: {}", error),
            [
                "kvssink takes the output of matroskamux (video/x-matroska): {}",
                error
            ]
        );
        gst::FlowError::Error
    }

    fn on_eos(&self) {
        let (uploader, store, routed, live, stop_timeout) = {
            let mut state = lock(&self.state);
            let Some(started) = state.as_mut() else {
                return;
            };
            // What capture-time=meta still holds goes out on the clock it has (nothing is left behind).
            let held: Result<Vec<Output>, _> = started.capture.release().into_iter().try_fold(
                Vec::new(),
                |mut out, (data, stamp, _)| {
                    out.extend(started.fragmenter.push_stamped(data, stamp)?);
                    Ok(out)
                },
            );
            let finished = held.and_then(|mut out| {
                out.extend(started.fragmenter.finish()?);
                Ok(out)
            });
            let outputs = match finished {
                Ok(outputs) => outputs,
                Err(error) => {
                    drop(state);
                    let _ = self.input_error(&error);
                    return;
                }
            };
            let (mut gated, mut windows) = (Vec::new(), Vec::new());
            let latest = started.gate.latest();
            for output in outputs {
                started
                    .gate
                    .push(output, Some(latest), &mut gated, &mut windows);
            }
            started.gate.finish(&mut gated, &mut windows);
            let routed = self.route(started, gated, windows);
            (
                started.uploader.clone(),
                started.store.clone(),
                routed,
                started.live.unwrap_or(false),
                started.stop_timeout,
            )
        };
        if self.deliver(routed, store.as_ref(), live).is_err() {
            return;
        }
        uploader.finish();
        let started = std::time::Instant::now();
        match self
            .canceller
            .wait(uploader.wait_done(), Some(stop_timeout))
        {
            Ok(Ok(())) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "EOS: every fragment acknowledged in {:?}",
                    started.elapsed()
                )
            }
            Ok(Err(reason)) => gst::warning!(CAT, imp = self, "EOS after a failure: {reason}"),
            Err(WaitError::TimedOut(after)) => {
                let stats = uploader.stats();
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "{} fragments were not acknowledged as persisted within {} s",
                        stats.queue_fragments,
                        after.as_secs()
                    ),
                    [
                        "EOS went on after stop-stream-timeout ({} s); {} fragments ({} bytes) were still waiting",
                        after.as_secs(),
                        stats.queue_fragments,
                        stats.queue_bytes
                    ]
                );
            }
            Err(WaitError::Cancelled) => gst::debug!(CAT, imp = self, "EOS wait interrupted"),
        }
    }
}

/// What the Matroska sink pad takes (kvssink's `sink` pad too).
pub(super) fn matroska_caps() -> gst::Caps {
    [
        "video/x-matroska",
        "audio/x-matroska",
        "video/webm",
        "audio/webm",
    ]
    .into_iter()
    .map(gst::Structure::new_empty)
    .collect()
}

/// The custom downstream event that adds fragment metadata.
pub(super) const METADATA_EVENT: &str = "kvs-add-metadata";

#[glib::object_subclass]
impl ObjectSubclass for KvsMkvSink {
    const NAME: &'static str = "GstKvsMkvSink";
    type Type = super::KvsMkvSink;
    type ParentType = gst_base::BaseSink;
}

/// kvssink's own properties (the bin has the same, and BaseSink's).
pub(super) fn property_specs() -> Vec<glib::ParamSpec> {
    let mut properties = vec![
        glib::ParamSpecString::builder("stream-name")
            .nick("Stream name")
            .blurb("Name of the Kinesis video stream to write to (required). Changed while PLAYING, it takes effect at the next fragment (key frame)")
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("allow-create-stream")
            .nick("Allow create stream")
            .blurb("Create the stream when it does not exist")
            .default_value(true)
            .mutable_ready()
            .build(),
        uint("retention-period", "Retention of a stream created by kvssink, in hours; 0: no persistence", 87_600, DEFAULT_RETENTION_HOURS),
        string("kms-key-id", "KMS key for a stream created by kvssink (unset: the AWS managed key)"),
        glib::ParamSpecBoxed::builder::<gst::Structure>("stream-tags")
            .nick("Stream tags")
            .blurb("Tags of a stream created by kvssink, as a GstStructure such as \"tags, team=video, env=prod\"")
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("fragment-acks")
            .nick("Fragment acks")
            .blurb("Ask for fragment acknowledgements and keep every fragment until it is persisted")
            .default_value(true)
            .mutable_ready()
            .build(),
        uint("connection-staleness", "Reconnect when a sent fragment gets no acknowledgement for this long, in seconds", 86_400, DEFAULT_STALENESS_S),
        uint("stop-stream-timeout", "At EOS, wait at most this long for the last fragments to be persisted, in seconds", 86_400, DEFAULT_STOP_TIMEOUT_S),
        uint("storage-size", "Fragment queue size limit, in MiB: a live source then drops the oldest unsent fragments, other sources wait", 1_048_576, DEFAULT_STORAGE_MB),
        uint("buffer-duration", "Fragment queue duration limit, in seconds", 86_400, DEFAULT_BUFFER_DURATION_S),
        glib::ParamSpecUInt64::builder("file-start-time")
            .nick("File start time")
            .blurb("Producer time of the first frame, in seconds since the Unix epoch, for uploading recordings ; 0: the wall clock at the first buffer")
            .default_value(0)
            .mutable_ready()
            .build(),
        uint("connection-rotation", "Open a new PutMedia connection after this long, in seconds; the service ends them at 45 min", 2700, DEFAULT_ROTATION_S),
        uint("retry-limit", "Failed connection attempts in a row before giving up; 0: never give up", u32::MAX, DEFAULT_RETRY_LIMIT),
        string("buffer-dir", "Directory of the fragment store: every frame is written there before it is sent and kept until the service persists it, so a crash, a restart or an outage loses nothing; a sink started on it uploads what it holds first; unset: fragments in RAM only"),
        uint("buffer-max-size", "Fragment store size limit, in MiB: a live source then drops the oldest fragments, other sources wait", 16_777_216, DEFAULT_BUFFER_MAX_MB),
        uint("buffer-max-age", "Fragment store age limit: the stored media spans at most this long, in seconds; 0: no limit", u32::MAX, 0),
        glib::ParamSpecEnum::builder_with_default("capture-time", CaptureTime::Auto)
            .nick("Capture time")
            .blurb("Where frames' capture times come from: auto (the source's reference timestamps, timestamp/x-ntp or timestamp/x-unix, when buffers carry them, such as rtspsrc add-reference-timestamp-meta=true; else the host clock), clock (the host clock), meta (the reference timestamps for every frame: what comes before the first waits for it, at most 10 s)")
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("upload-mode", UploadMode::Continuous)
            .nick("Upload mode")
            .blurb("What is uploaded: continuous (everything), triggered (the windows around triggers: the trigger signal, the kvs-trigger event, the trigger property, each with pre-roll and post-roll), paused (nothing; back to continuous resumes with the pre-roll). The pre-roll is held in RAM within storage-size")
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("pre-roll")
            .nick("Pre roll")
            .blurb("Media before a trigger (or a resume) that is uploaded with it, in seconds: from the last key frame at or before trigger - pre-roll")
            .maximum(3600)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("post-roll")
            .nick("Post roll")
            .blurb("Media after a trigger's end that is uploaded with it, in seconds")
            .maximum(3600)
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("trigger")
            .nick("Trigger")
            .blurb("upload-mode=triggered: true opens an upload window now, false closes it (the post-roll follows)")
            .mutable_playing()
            .build(),
        glib::ParamSpecFlags::builder::<EventTags>("event-tags")
            .nick("Event tags")
            .blurb("KVS event tags on the first fragment of each upload window: notification (AWS_KINESISVIDEO_NOTIFICATION, an SNS notification) and image-generation (AWS_KINESISVIDEO_IMAGE_GENERATION, images in S3)")
            .mutable_playing()
            .build(),
        glib::ParamSpecString::builder("image-prefix")
            .nick("Image prefix")
            .blurb("S3 key prefix of the images of event-tags=image-generation (AWS_KINESISVIDEO_IMAGE_PREFIX, at most 256 bytes)")
            .mutable_playing()
            .build(),
        glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
            .nick("Stats")
            .blurb("Upload statistics (kvssink-stats: bytes-sent, fragments-sent/received/persisted/dropped/resent, connections, reconnections, last-ack-latency-ms, queued-fragments, queued-bytes, backlog-fragments, backlog-bytes, pre-roll-fragments, pre-roll-bytes; read-only)")
            .read_only()
            .build(),
    ];
    properties.splice(1..1, connection_properties());
    properties.extend(super::compat::properties());
    properties
}

/// The C++ kvssink's signals, with arguments any language reads: a `GstStructure` each, emitted from the
/// upload thread (connect with a handler that does not block).
pub(super) fn signal_specs() -> Vec<glib::subclass::Signal> {
    [SIGNAL_FRAGMENT_ACK, SIGNAL_STREAM_ERROR]
        .into_iter()
        .map(|name| {
            glib::subclass::Signal::builder(name)
                .param_types([gst::Structure::static_type()])
                .build()
        })
        .collect()
}

/// The signals' names.
pub(super) const SIGNALS: [&str; 2] = [SIGNAL_FRAGMENT_ACK, SIGNAL_STREAM_ERROR];

impl ObjectImpl for KvsMkvSink {
    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(signal_specs);
        SIGNALS.as_ref()
    }

    fn constructed(&self) {
        self.parent_constructed();
        // With sync, a buffer is rendered at its running time, not 20 ms (BaseSink's default deadline) after.
        self.obj().set_processing_deadline(gst::ClockTime::ZERO);
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(property_specs);
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        if self.set_window_property(pspec.name(), value) {
            return;
        }
        let mut settings = self.settings();
        if set_connection_property(&mut settings.connection, pspec.name(), value)
            || settings.cpp.set(pspec.name(), value)
        {
            return;
        }
        match pspec.name() {
            "allow-create-stream" => settings.allow_create = checked(value),
            "retention-period" => settings.retention_hours = checked(value),
            "kms-key-id" => settings.kms_key_id = string_value(value),
            "stream-tags" => settings.stream_tags = checked(value),
            "fragment-acks" => settings.fragment_acks = checked(value),
            "connection-staleness" => settings.staleness_s = checked(value),
            "stop-stream-timeout" => settings.stop_timeout_s = checked(value),
            "storage-size" => settings.storage_mb = checked(value),
            "buffer-duration" => settings.buffer_duration_s = checked(value),
            "file-start-time" => settings.file_start_time = checked(value),
            "connection-rotation" => settings.rotation_s = checked(value),
            "retry-limit" => settings.retry_limit = checked(value),
            "buffer-dir" => settings.buffer_dir = string_value(value),
            "buffer-max-size" => settings.buffer_max_mb = checked(value),
            "buffer-max-age" => settings.buffer_max_age_s = checked(value),
            "capture-time" => settings.capture_time = checked(value),
            other => unimplemented!("property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings();
        if let Some(value) = connection_property(&settings.connection, pspec.name())
            .or_else(|| settings.cpp.get(pspec.name()))
        {
            return value;
        }
        match pspec.name() {
            "stream-name" => settings.stream_name.to_value(),
            "allow-create-stream" => settings.allow_create.to_value(),
            "retention-period" => settings.retention_hours.to_value(),
            "kms-key-id" => settings.kms_key_id.to_value(),
            "stream-tags" => settings.stream_tags.to_value(),
            "fragment-acks" => settings.fragment_acks.to_value(),
            "connection-staleness" => settings.staleness_s.to_value(),
            "stop-stream-timeout" => settings.stop_timeout_s.to_value(),
            "storage-size" => settings.storage_mb.to_value(),
            "buffer-duration" => settings.buffer_duration_s.to_value(),
            "file-start-time" => settings.file_start_time.to_value(),
            "connection-rotation" => settings.rotation_s.to_value(),
            "retry-limit" => settings.retry_limit.to_value(),
            "buffer-dir" => settings.buffer_dir.to_value(),
            "buffer-max-size" => settings.buffer_max_mb.to_value(),
            "buffer-max-age" => settings.buffer_max_age_s.to_value(),
            "capture-time" => settings.capture_time.to_value(),
            "upload-mode" => settings.upload_mode.to_value(),
            "pre-roll" => settings.pre_roll_s.to_value(),
            "post-roll" => settings.post_roll_s.to_value(),
            "trigger" => settings.trigger.to_value(),
            "event-tags" => settings.event_tags.to_value(),
            "image-prefix" => settings.image_prefix.to_value(),
            "stats" => {
                drop(settings);
                let (stats, held) = lock(&self.state)
                    .as_ref()
                    .map(|s| (s.uploader.stats(), s.gate.held()))
                    .unwrap_or_default();
                let mut structure = crate::messages::stats(&stats);
                structure.set("pre-roll-fragments", held.1 as u64);
                structure.set("pre-roll-bytes", held.0 as u64);
                structure.to_value()
            }
            other => unimplemented!("property {other}"),
        }
    }
}

impl GstObjectImpl for KvsMkvSink {}

impl ElementImpl for KvsMkvSink {
    // No metadata: the sink is not registered, so no factory shows any (the bin's is `kvssink`'s). The pad
    // template is what `BaseSink` makes its sink pad from.
    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &matroska_caps(),
                )
                .expect("valid pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for KvsMkvSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.reset();
        // What an earlier run reported is not this run's.
        *lock(&self.store_failing) = false;
        *lock(&self.backlog_open) = false;
        lock(&self.held_files).clear();
        let started = self.start_inner()?;
        *lock(&self.state) = Some(started);
        let early: Vec<(String, String, bool)> = std::mem::take(&mut *lock(&self.early_metadata));
        for (name, value, persist) in early {
            self.add_tag(name, value, persist);
        }
        gst::debug!(CAT, imp = self, "started");
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.cancel();
        if let Some(started) = lock(&self.state).take() {
            started.uploader.stop();
            // What the store holds is on disk before the next start (or a power loss).
            if let Some(store) = &started.store {
                lock(store).sync();
            }
        }
        Ok(())
    }

    /// Called before the clock wait: the first buffer tells whether upstream is live. A live source sets the
    /// pace itself, so kvssink then does not sync: waiting for the pipeline latency would only hold frames back.
    fn prepare(&self, _buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if lock(&self.state).as_ref().is_none_or(|s| s.live.is_some()) {
            return Ok(gst::FlowSuccess::Ok);
        }
        let live = self.upstream_is_live();
        if let Some(started) = lock(&self.state).as_mut() {
            started.live = Some(live);
        }
        let element = self.obj();
        if live {
            gst::info!(
                CAT,
                imp = self,
                "upstream is live: frames go out as they come (no sync), a full queue drops the oldest fragments"
            );
            element.set_sync(false);
        } else {
            gst::info!(
                CAT,
                imp = self,
                "upstream is not live: a full queue blocks{}",
                if element.is_sync() {
                    ", frames are paced at their timestamps (sync)"
                } else {
                    ""
                }
            );
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        // The buffer's memory, kept (not copied) until its fragment is acknowledged.
        let data = buffer.clone().into_mapped_buffer_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::ResourceError::Read, ["cannot map the buffer"]);
            gst::FlowError::Error
        })?;
        let data = bytes::Bytes::from_owner(data);
        let mut notices = Vec::new();
        let (routed, store, live) = {
            let mut state = lock(&self.state);
            let Some(started) = state.as_mut() else {
                return Err(gst::FlowError::Flushing);
            };
            if let Some(reason) = started.uploader.failure() {
                gst::debug!(CAT, imp = self, "uploader failed: {reason}");
                return Err(gst::FlowError::Error);
            }
            let running = self.running_time(buffer);
            let host = if started.frame_timecodes {
                self.capture_time(running)
            } else {
                Some(SystemTime::now())
            };
            let reference = if started.frame_timecodes {
                super::capture::reference_time(buffer)
            } else {
                None
            };
            let stamped = started
                .capture
                .stamp(data, running, host, reference, &mut notices);
            let mut outputs = Vec::new();
            let mut windows = Vec::new();
            for (data, stamp, running) in stamped {
                match started.fragmenter.push_stamped(data, stamp) {
                    Ok(more) => {
                        for output in more {
                            started.gate.push(
                                output,
                                running.map(|r| r.nseconds()),
                                &mut outputs,
                                &mut windows,
                            );
                        }
                    }
                    Err(error) => {
                        drop(state);
                        self.post_notices(notices);
                        return Err(self.input_error(&error));
                    }
                }
            }
            let routed = self.route(started, outputs, windows);
            (routed, started.store.clone(), started.live.unwrap_or(false))
        };
        self.post_notices(notices);
        self.deliver(routed, store.as_ref(), live)?;
        Ok(gst::FlowSuccess::Ok)
    }

    fn event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Eos(_) => self.on_eos(),
            gst::EventView::CustomDownstream(custom) => {
                if let Some(s) = custom.structure() {
                    self.custom_event(s);
                }
            }
            _ => {}
        }
        self.parent_event(event)
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Seeking(q) = query.view_mut() {
            // A live upload cannot go back: matroskamux then writes a streamable file.
            q.set(false, gst::format::Bytes::ZERO, gst::format::Bytes::NONE);
            return true;
        }
        BaseSinkImplExt::parent_query(self, query)
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

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send + Sync>() {}
    is_send::<KvsMkvSink>();
}
