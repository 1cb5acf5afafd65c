// SPDX-License-Identifier: MPL-2.0

//! The `kvssink` element: a bin around the Matroska sink ([`super::mkvsink`]), so that it takes both what
//! `matroskamux` makes (its `sink` pad) and the elementary streams the C++ kvssink takes on request pads
//! (`video_%u`: H.264, H.265; `audio_%u`: AAC, A-law, µ-law), which a real `matroskamux` inside muxes.
//!
//! - The bin has the inner sink's properties and BaseSink's (`sync`, `async`, …), forwarded to it, and its
//!   signals, re-emitted. Messages the inner elements post (errors, warnings, element messages) are posted again
//!   with the bin as their source, so an application sees one `kvssink`.
//! - Without request pads, `sink` is a ghost of the inner sink's pad: nothing sits between `matroskamux` and the
//!   upload. The first request pad adds `matroskamux` (streamable, the C++ element's timecode scale and
//!   fragment duration) in front of the inner sink; `sink` then has no target, and linking it is an error.
//! - At most one video and one audio pad, as with the C++ element. The tracks get the C++ element's names
//!   (`track-name` for video, `audio`) and, when set, its `codec-id`.
//! - Caps that change on a request pad once media flowed (a camera's new SPS/PPS, resolution or codec):
//!   matroskamux refuses that ("Caps changes are not supported by Matroska"), so the muxer is replaced. The
//!   old one is drained (EOS on its pads, its EOS kept from the inner sink: every frame it held goes out), a
//!   new one takes the pads, and its stream header (Tracks with the new codec private data) makes the inner
//!   sink end the fragment and start a new PutMedia session. A warning names what changed.
//! - A key frame without a DTS (what `matroskademux ! h264parse` gives) is muxed by its PTS (matroskamux does
//!   that; a test keeps it so); the C++ element drops such frames silently.

use std::sync::{LazyLock, Mutex, MutexGuard};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::CAT;
use super::fragmenter::{TrackNames, TrackRename};
use super::mkvsink::{SIGNALS, matroska_caps, property_specs, signal_specs};

/// With key-frame fragmentation, no cluster shorter than this (see `configure_muxing`).
const KEY_FRAME_CLUSTER_MIN_NS: i64 = 200_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Video,
    Audio,
}

impl Kind {
    fn of(template: &gst::PadTemplate) -> Option<Kind> {
        match template.name_template() {
            "video_%u" => Some(Kind::Video),
            "audio_%u" => Some(Kind::Audio),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Audio => "audio",
        }
    }
}

#[derive(Default)]
struct Muxing {
    mux: Option<gst::Element>,
    video: Option<gst::GhostPad>,
    audio: Option<gst::GhostPad>,
    /// The request pads a buffer went through since their caps were set (their caps cannot change in the
    /// muxer any more).
    flowing: Vec<gst::GhostPad>,
}

impl Muxing {
    fn slot(&mut self, kind: Kind) -> &mut Option<gst::GhostPad> {
        match kind {
            Kind::Video => &mut self.video,
            Kind::Audio => &mut self.audio,
        }
    }
}

/**
 * element-kvssink:
 * @short_description: Streams Matroska, or H.264/H.265 and AAC/G.711, to Amazon Kinesis Video Streams
 *
 * Each frame goes to the PutMedia API as soon as it arrives, stamped with its capture time; fragments are kept
 * until the service says they are persisted and sent again after a reconnection. Element messages
 * (`kvssink-connection`, `kvssink-ack`, `kvssink-fragment-dropped`), the `stats` property and the
 * `fragment-ack` and `stream-error` signals tell the application what happens.
 *
 * ## Example pipelines
 * ```bash
 * gst-launch-1.0 -e videotestsrc is-live=true ! x264enc tune=zerolatency key-int-max=60 ! h264parse \
 *     ! matroskamux ! kvssink stream-name=cam1
 * gst-launch-1.0 -e v4l2src ! videoconvert ! x264enc bframes=0 key-int-max=45 tune=zerolatency \
 *     ! video/x-h264,stream-format=avc,alignment=au ! kvssink name=s stream-name=cam1 \
 *     alsasrc ! audioconvert ! avenc_aac ! queue ! s.
 * ```
 */
pub struct KvsSink {
    core: super::KvsMkvSink,
    sink_pad: gst::GhostPad,
    muxing: Mutex<Muxing>,
}

use crate::element::lock;

/// A new spec like `spec` (BaseSink's properties, installed again on the bin).
fn copy_spec(spec: &glib::ParamSpec) -> Option<glib::ParamSpec> {
    let (name, nick, blurb, flags) = (
        spec.name(),
        spec.nick(),
        spec.blurb().unwrap_or_default(),
        spec.flags(),
    );
    // The numeric specs have the same builder shape.
    macro_rules! ranged {
        ($kind:ty) => {
            spec.downcast_ref::<$kind>().map(|p| {
                <$kind>::builder(name)
                    .nick(nick)
                    .blurb(blurb)
                    .minimum(p.minimum())
                    .maximum(p.maximum())
                    .default_value(p.default_value())
                    .flags(flags)
                    .build()
            })
        };
    }
    if let Some(copy) = ranged!(glib::ParamSpecInt64)
        .or_else(|| ranged!(glib::ParamSpecUInt))
        .or_else(|| ranged!(glib::ParamSpecUInt64))
    {
        return Some(copy);
    }
    Some(
        if let Some(p) = spec.downcast_ref::<glib::ParamSpecBoolean>() {
            glib::ParamSpecBoolean::builder(name)
                .nick(nick)
                .blurb(blurb)
                .default_value(p.default_value())
                .flags(flags)
                .build()
        } else if spec.value_type() == gst::Sample::static_type() {
            glib::ParamSpecBoxed::builder::<gst::Sample>(name)
                .nick(nick)
                .blurb(blurb)
                .flags(flags)
                .build()
        } else {
            return None;
        },
    )
}

impl KvsSink {
    fn muxing(&self) -> MutexGuard<'_, Muxing> {
        lock(&self.muxing)
    }

    fn cpp<T: for<'a> glib::value::FromValue<'a> + 'static>(&self, name: &str) -> T {
        self.core.property::<T>(name)
    }

    /// The track names and codec IDs the C++ element gives the tracks it muxes.
    fn track_names(&self, muxing: &Muxing) -> Option<TrackNames> {
        muxing.mux.as_ref()?;
        let codec_id: Option<String> = self.cpp("codec-id");
        let codec_id_set = codec_id.as_deref().is_some_and(|c| c != "V_MPEG4/ISO/AVC");
        let track_name: Option<String> = self.cpp("track-name");
        Some(TrackNames {
            video: TrackRename {
                name: Some(track_name.unwrap_or_else(|| "kinesis_video".into())),
                codec_id: codec_id.filter(|_| codec_id_set),
            },
            audio: TrackRename {
                name: Some("audio".into()),
                codec_id: None,
            },
        })
    }

    /// Applies the C++ muxing properties to the inner `matroskamux` and the track names to the inner sink.
    fn configure_muxing(&self) {
        let muxing = self.muxing();
        if let Some(mux) = &muxing.mux {
            let scale_ms: u32 = self.cpp("timecode-scale");
            mux.set_property("timecodescale", i64::from(scale_ms.max(1)) * 1_000_000);
            // A cluster (a KVS fragment) at each video key frame, as the C++ element's default
            // key-frame-fragmentation does; otherwise (and for audio only) at least fragment-duration long.
            // With key frames, at least KEY_FRAME_CLUSTER_MIN: audio that arrives just before the first key
            // frame (at the start, after a muxer change) then shares its fragment instead of making an
            // audio-only one, which the service refuses when the stream has video (4011).
            let by_key_frame: bool = self.cpp("key-frame-fragmentation");
            let duration_ms: u32 = self.cpp("fragment-duration");
            let min = if by_key_frame && muxing.video.is_some() {
                KEY_FRAME_CLUSTER_MIN_NS
            } else {
                i64::from(duration_ms) * 1_000_000
            };
            mux.set_property("min-cluster-duration", min);
        }
        self.core.imp().set_track_names(self.track_names(&muxing));
    }

    /// Re-posts a message of an inner element with the bin as its source.
    fn repost(&self, message: &gst::Message) -> Option<gst::Message> {
        let obj = self.obj();
        // Error, warning and info messages: the same error, debug string and details, another source.
        macro_rules! again {
            ($kind:ident, $m:expr) => {{
                let debug = $m.debug();
                let mut builder = gst::message::$kind::builder_from_error($m.error()).src(&*obj);
                if let Some(debug) = debug.as_deref() {
                    builder = builder.debug(debug);
                }
                if let Some(details) = $m.details() {
                    builder = builder.details(details.to_owned());
                }
                builder.build()
            }};
        }
        Some(match message.view() {
            gst::MessageView::Error(m) => again!(Error, m),
            gst::MessageView::Warning(m) => again!(Warning, m),
            gst::MessageView::Info(m) => again!(Info, m),
            gst::MessageView::Element(m) => {
                gst::message::Element::builder(m.structure()?.to_owned())
                    .src(&*obj)
                    .build()
            }
            _ => return None,
        })
    }

    fn refuse(&self, why: String) -> Option<gst::Pad> {
        gst::element_imp_warning!(
            self,
            gst::CoreError::Pad,
            ("{}", why),
            [
                "pipelines link either matroskamux ! kvssink or the elementary streams to its video_%u and audio_%u pads"
            ]
        );
        None
    }

    /// Adds `matroskamux` between the request pads and the inner sink.
    fn add_mux(&self) -> Result<gst::Element, String> {
        let mux = gst::ElementFactory::make("matroskamux")
            .name("mux")
            .property("streamable", true)
            .build()
            .map_err(|_| "matroskamux (gst-plugins-good) is not installed".to_owned())?;
        let obj = self.obj();
        obj.add(&mux).map_err(|e| e.to_string())?;
        self.sink_pad
            .set_target(None::<&gst::Pad>)
            .map_err(|e| e.to_string())?;
        mux.link(&self.core).map_err(|e| e.to_string())?;
        let _ = mux.sync_state_with_parent();
        Ok(mux)
    }

    /// Makes a request pad a ghost of the muxer's; fragment metadata goes to the inner sink (the muxer does not
    /// pass custom events on).
    fn ghost(
        &self,
        template: &gst::PadTemplate,
        name: &str,
        target: &gst::Pad,
    ) -> Result<gst::GhostPad, String> {
        let ghost = gst::GhostPad::builder_from_template_with_target(template, target)
            .map_err(|e| e.to_string())?
            .name(name)
            .build();
        let core = self.core.downgrade();
        let bin = self.obj().downgrade();
        ghost.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |pad, info| {
            let Some(gst::PadProbeData::Event(event)) = &info.data else {
                return gst::PadProbeReturn::Ok;
            };
            match event.view() {
                gst::EventView::CustomDownstream(custom) => {
                    // Handled, not Drop: GStreamer before 1.24.8 unrefs a dropped event twice (a CRITICAL).
                    if let (Some(s), Some(core)) = (custom.structure(), core.upgrade())
                        && core.imp().custom_event(s)
                    {
                        return gst::PadProbeReturn::Handled;
                    }
                }
                gst::EventView::Caps(caps) => {
                    if let (Some(bin), Some(ghost), Some(old)) = (
                        bin.upgrade(),
                        pad.downcast_ref::<gst::GhostPad>(),
                        pad.current_caps(),
                    ) && old.as_ref() != caps.caps()
                    {
                        bin.imp().caps_changed(ghost, &old, caps.caps());
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        });
        let bin = self.obj().downgrade();
        ghost.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |pad, _| {
                if let (Some(bin), Some(ghost)) =
                    (bin.upgrade(), pad.downcast_ref::<gst::GhostPad>())
                {
                    let mut muxing = bin.imp().muxing();
                    if !muxing.flowing.contains(ghost) {
                        muxing.flowing.push(ghost.clone());
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        Ok(ghost)
    }

    /// New caps on a request pad (called from its streaming thread, before the muxer sees them): once media
    /// went through it, the muxer is replaced (see the module documentation).
    fn caps_changed(&self, ghost: &gst::GhostPad, old: &gst::Caps, new: &gst::CapsRef) {
        let mut muxing = self.muxing();
        if !muxing.flowing.contains(ghost) {
            return;
        }
        muxing.flowing.clear();
        let Some(old_mux) = muxing.mux.clone() else {
            return;
        };
        let what = caps_difference(old, new);
        gst::info!(
            CAT,
            imp = self,
            "{}: caps change ({what}): a new muxer",
            ghost.name()
        );
        let pads: Vec<gst::GhostPad> = [muxing.video.clone(), muxing.audio.clone()]
            .into_iter()
            .flatten()
            .collect();
        drop(muxing);
        // The old muxer's EOS stays inside: the upload goes on with the next muxer.
        if let Some(src) = old_mux.static_pad("src") {
            src.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, |_, info| {
                match &info.data {
                    Some(gst::PadProbeData::Event(event))
                        if event.type_() == gst::EventType::Eos =>
                    {
                        gst::PadProbeReturn::Handled
                    }
                    _ => gst::PadProbeReturn::Ok,
                }
            });
        }
        // Drained pad by pad: this pad first (its thread is ours), then the others with their streaming lock
        // held, so that none of their buffers reaches the old muxer after its EOS (the first EOS lets a buffer
        // the muxer holds from them go out, so taking the lock cannot wait on us).
        let _ = ghost
            .target()
            .map(|target| target.send_event(gst::event::Eos::new()));
        let others: Vec<_> = pads.iter().filter(|p| *p != ghost).collect();
        let _locks: Vec<_> = others
            .iter()
            .map(|other| {
                let lock = other.stream_lock();
                let _ = other
                    .target()
                    .map(|target| target.send_event(gst::event::Eos::new()));
                lock
            })
            .collect();
        if let Err(why) = self.replace_mux(&old_mux, &pads) {
            gst::element_imp_error!(
                self,
                gst::StreamError::Mux,
                (
                    "cannot change the muxer for new caps on {}: {}",
                    ghost.name(),
                    why
                ),
                ["caps change on {}: {}", ghost.name(), what]
            );
            return;
        }
        gst::element_imp_warning!(
            self,
            gst::StreamError::Format,
            ("{} changed mid-stream: {}", ghost.name(), what),
            [
                "a new stream header with the new codec private data starts at the next frame, in a new fragment and a new PutMedia session; no frame is dropped"
            ]
        );
    }

    /// Puts a new muxer in the place of `old` (drained) for the request pads `pads`.
    fn replace_mux(&self, old: &gst::Element, pads: &[gst::GhostPad]) -> Result<(), String> {
        let obj = self.obj();
        old.unlink(&self.core);
        let _ = old.set_state(gst::State::Null);
        let targets: Vec<Option<gst::Pad>> = pads.iter().map(|p| p.target()).collect();
        for (pad, target) in pads.iter().zip(&targets) {
            let _ = pad.set_target(None::<&gst::Pad>);
            if let Some(target) = target {
                old.release_request_pad(target);
            }
        }
        let _ = obj.remove(old);
        let mux = self.add_mux()?;
        for pad in pads {
            let template = pad
                .pad_template()
                .ok_or("a request pad without a template")?;
            let target = mux
                .request_pad_simple(template.name_template())
                .ok_or_else(|| format!("matroskamux gave no pad for {}", pad.name()))?;
            pad.set_target(Some(&target)).map_err(|e| e.to_string())?;
        }
        self.muxing().mux = Some(mux);
        self.configure_muxing();
        Ok(())
    }
}

/// What differs between two caps, for a message: the media type, or each field that changed.
fn caps_difference(old: &gst::Caps, new: &gst::CapsRef) -> String {
    let (Some(old), Some(new)) = (old.structure(0), new.structure(0)) else {
        return format!("{old} → {new}");
    };
    if old.name() != new.name() {
        return format!("{} → {}", old.name(), new.name());
    }
    let mut names: Vec<&str> = old
        .fields()
        .chain(new.fields())
        .map(|f| f.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let show = |s: &gst::StructureRef, name: &str| match s.value(name) {
        Ok(value) => value
            .serialize()
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "?".into()),
        Err(_) => "none".into(),
    };
    let changes: Vec<String> = names
        .into_iter()
        .filter(|name| {
            let (a, b) = (old.value(*name).ok(), new.value(*name).ok());
            match (a, b) {
                (Some(a), Some(b)) => a.compare(b) != Some(std::cmp::Ordering::Equal),
                (a, b) => a.is_some() != b.is_some(),
            }
        })
        .map(|name| {
            if name == "codec_data" || name == "streamheader" {
                format!("new {name}")
            } else {
                format!("{name} {} → {}", show(old, name), show(new, name))
            }
        })
        .collect();
    if changes.is_empty() {
        "caps".into()
    } else {
        changes.join(", ")
    }
}

#[glib::object_subclass]
impl ObjectSubclass for KvsSink {
    const NAME: &'static str = "GstKvsSink";
    type Type = super::KvsSink;
    type ParentType = gst::Bin;
    type Interfaces = (gst::URIHandler,);

    fn with_class(klass: &Self::Class) -> Self {
        let core = glib::Object::builder::<super::KvsMkvSink>()
            .property("name", "core")
            .build();
        let template = klass.pad_template("sink").expect("sink template");
        let sink_pad = gst::GhostPad::builder_from_template(&template).build();
        KvsSink {
            core,
            sink_pad,
            muxing: Mutex::default(),
        }
    }
}

impl ObjectImpl for KvsSink {
    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            let mut signals = signal_specs();
            signals.extend(action_signals());
            signals
        });
        SIGNALS.as_ref()
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut specs = property_specs();
            let base = glib::object::ObjectClass::from_type(gst_base::BaseSink::static_type())
                .expect("BaseSink class");
            for spec in base.list_properties().iter() {
                if spec.owner_type() == gst_base::BaseSink::static_type()
                    && !specs.iter().any(|s| s.name() == spec.name())
                    && let Some(copy) = copy_spec(spec)
                {
                    specs.push(copy);
                }
            }
            specs
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        self.core.set_property_from_value(pspec.name(), value);
        if self.muxing().mux.is_some() {
            self.configure_muxing();
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        self.core.property_value(pspec.name())
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        // The inner sink joins the bin before the ghost pad targets it (adding it would undo the link).
        obj.add(&self.core).expect("the inner sink joins the bin");
        self.sink_pad
            .set_target(self.core.static_pad("sink").as_ref())
            .expect("sink pad target");
        obj.add_pad(&self.sink_pad).expect("sink pad");
        // Linking `sink` while the request pads are in use cannot work: say so.
        let weak = obj.downgrade();
        self.sink_pad.connect_linked(move |_, _| {
            if let Some(obj) = weak.upgrade()
                && obj.imp().muxing().mux.is_some()
            {
                gst::element_error!(
                    obj,
                    gst::CoreError::Pad,
                    ("its sink pad was linked while its video/audio request pads are in use"),
                    ["link either matroskamux ! kvssink or the elementary streams to video_%u and audio_%u"]
                );
            }
        });
        for signal in SIGNALS {
            let weak = obj.downgrade();
            self.core.connect(signal, false, move |args| {
                if let (Some(obj), Some(structure)) = (weak.upgrade(), args.get(1)) {
                    obj.emit_by_name_with_values(signal, std::slice::from_ref(structure));
                }
                None
            });
        }
    }
}

impl GstObjectImpl for KvsSink {}

crate::uri::uri_handler!(KvsSink, gst::URIType::Sink);

/// A time argument of the action signals: `GST_CLOCK_TIME_NONE` is "not given".
fn time_arg(args: &[glib::Value], index: usize) -> Option<u64> {
    args.get(index)
        .and_then(|v| v.get::<u64>().ok())
        .filter(|&t| t != u64::MAX)
}

/// The action signals: `trigger(running-time, duration)` opens an upload window at `running-time`
/// (`GST_CLOCK_TIME_NONE`: now) for `duration` ns (`GST_CLOCK_TIME_NONE`: until `trigger-stop`);
/// `trigger-stop(running-time)` ends the open-ended ones (the post-roll follows).
fn action_signals() -> Vec<glib::subclass::Signal> {
    use super::triggers::{TriggerRequest, TriggerTime};
    let core = |args: &[glib::Value]| {
        args[0]
            .get::<super::KvsSink>()
            .ok()
            .map(|sink| sink.imp().core.clone())
    };
    vec![
        glib::subclass::Signal::builder("trigger")
            .param_types([u64::static_type(), u64::static_type()])
            .action()
            .class_handler(move |args| {
                if let Some(core) = core(args) {
                    let at = time_arg(args, 1).map(TriggerTime::Running);
                    let duration = time_arg(args, 2).map(std::time::Duration::from_nanos);
                    let request = TriggerRequest::Start { at, duration };
                    core.imp()
                        .trigger(super::window::Source::Signal, request, false);
                }
                None
            })
            .build(),
        glib::subclass::Signal::builder("trigger-stop")
            .param_types([u64::static_type()])
            .action()
            .class_handler(move |args| {
                if let Some(core) = core(args) {
                    let at = time_arg(args, 1).map(TriggerTime::Running);
                    core.imp().trigger(
                        super::window::Source::Signal,
                        TriggerRequest::Stop { at },
                        false,
                    );
                }
                None
            })
            .build(),
    ]
}

impl ElementImpl for KvsSink {
    /// `kvs-trigger` and `kvs-add-metadata` sent to the element itself (`gst_element_send_event`) act at once;
    /// other events go the usual way.
    fn send_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::CustomDownstream(custom) = event.view()
            && let Some(s) = custom.structure()
            && self.core.imp().custom_event(s)
        {
            return true;
        }
        self.parent_send_event(event)
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Kinesis Video Streams sink",
                "Sink/Network",
                "Streams Matroska (matroskamux output), or H.264/H.265 video and AAC/A-law/µ-law audio on request \
                 pads, to Amazon Kinesis Video Streams with PutMedia",
                "gst-plugin-kvs developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let matroska = matroska_caps();
            let mut video = gst::Caps::builder("video/x-h264")
                .field("stream-format", "avc")
                .field("alignment", "au")
                .build();
            video.merge(
                gst::Caps::builder("video/x-h265")
                    .field("alignment", "au")
                    .build(),
            );
            let audio = gst::Caps::builder("audio/mpeg")
                .field("mpegversion", gst::List::new([2i32, 4]))
                .field("stream-format", "raw")
                .field("channels", gst::IntRange::new(1, 2))
                .field("rate", gst::IntRange::new(8000, 192_000))
                .build();
            let audio =
                ["audio/x-alaw", "audio/x-mulaw"]
                    .into_iter()
                    .fold(audio, |mut caps, name| {
                        caps.merge(
                            gst::Caps::builder(name)
                                .field("channels", gst::IntRange::new(1, 2))
                                .field("rate", gst::IntRange::new(8000, 192_000))
                                .build(),
                        );
                        caps
                    });
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &matroska,
                )
                .expect("valid pad template"),
                gst::PadTemplate::new(
                    "video_%u",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &video,
                )
                .expect("valid pad template"),
                gst::PadTemplate::new(
                    "audio_%u",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &audio,
                )
                .expect("valid pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn request_new_pad(
        &self,
        template: &gst::PadTemplate,
        name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        let kind = Kind::of(template)?;
        let mut muxing = self.muxing();
        if muxing.slot(kind).is_some() {
            drop(muxing);
            return self.refuse(format!(
                "it takes one {} stream on its request pads, as the C++ kvssink does; mux more tracks with \
                 matroskamux ! kvssink",
                kind.name()
            ));
        }
        if self.sink_pad.is_linked() {
            drop(muxing);
            return self.refuse(format!(
                "cannot take {} on a request pad: its sink pad is linked (Matroska input)",
                kind.name()
            ));
        }
        let mux = match &muxing.mux {
            Some(mux) => mux.clone(),
            None => match self.add_mux() {
                Ok(mux) => {
                    muxing.mux = Some(mux.clone());
                    mux
                }
                Err(why) => {
                    drop(muxing);
                    return self.refuse(format!("cannot mux elementary streams: {why}"));
                }
            },
        };
        let Some(mux_pad) = mux.request_pad_simple(template.name_template()) else {
            drop(muxing);
            return self.refuse(format!("matroskamux gave no {} pad", kind.name()));
        };
        let name = name
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}_0", kind.name()));
        let ghost = match self.ghost(template, &name, &mux_pad) {
            Ok(ghost) => ghost,
            Err(why) => {
                mux.release_request_pad(&mux_pad);
                drop(muxing);
                return self.refuse(why);
            }
        };
        *muxing.slot(kind) = Some(ghost.clone());
        drop(muxing);
        let obj = self.obj();
        if obj.current_state() > gst::State::Ready {
            let _ = ghost.set_active(true);
        }
        if obj.add_pad(&ghost).is_err() {
            return None;
        }
        gst::debug!(
            CAT,
            imp = self,
            "{} pad {} muxed by matroskamux",
            kind.name(),
            name
        );
        self.configure_muxing();
        Some(ghost.upcast())
    }

    fn release_pad(&self, pad: &gst::Pad) {
        let Some(ghost) = pad.downcast_ref::<gst::GhostPad>() else {
            return;
        };
        let mut muxing = self.muxing();
        for kind in [Kind::Video, Kind::Audio] {
            if muxing.slot(kind).as_ref() == Some(ghost) {
                *muxing.slot(kind) = None;
            }
        }
        let target = ghost.target();
        let _ = ghost.set_target(None::<&gst::Pad>);
        let obj = self.obj();
        if let (Some(mux), Some(target)) = (muxing.mux.clone(), target) {
            mux.release_request_pad(&target);
            if muxing.video.is_none() && muxing.audio.is_none() {
                // Back to Matroska input: `sink` is the inner sink's pad again.
                muxing.mux = None;
                mux.unlink(&self.core);
                let _ = mux.set_state(gst::State::Null);
                let _ = obj.remove(&mux);
                let _ = self
                    .sink_pad
                    .set_target(self.core.static_pad("sink").as_ref());
            }
        }
        drop(muxing);
        let _ = obj.remove_pad(ghost);
        self.muxing().flowing.retain(|p| p != ghost);
        self.configure_muxing();
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady {
            self.configure_muxing();
        }
        self.parent_change_state(transition)
    }
}

impl BinImpl for KvsSink {
    fn handle_message(&self, message: gst::Message) {
        let from_inside = message
            .src()
            .is_some_and(|src| src != self.obj().upcast_ref::<gst::Object>());
        match from_inside.then(|| self.repost(&message)).flatten() {
            Some(reposted) => {
                let _ = self.obj().post_message(reposted);
            }
            None => self.parent_handle_message(message),
        }
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send + Sync>() {}
    is_send::<KvsSink>();
}
