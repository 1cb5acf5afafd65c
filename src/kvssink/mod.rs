// SPDX-License-Identifier: MPL-2.0

//! `kvssink`: streams the output of `matroskamux`, or elementary H.264/H.265/AAC streams, to Kinesis Video
//! Streams with PutMedia.
//!
//! [`fragmenter`] splits the Matroska byte stream into a header and fragments; [`uploader`] owns the PutMedia
//! connection and the fragment queue; `mkvsink` is the Matroska sink around them, and `bin` the `kvssink`
//! element: a bin holding that sink and, for elementary streams on request pads, a `matroskamux`. The
//! property enums and the debug category are here.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

mod bin;
mod capture;
mod compat;
pub mod fragmenter;
mod mkvsink;
pub mod queue;
pub mod store;
pub(crate) mod triggers;
pub mod uploader;
pub(crate) mod window;

/// The debug category of `kvssink` and everything in it.
pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "kvssink",
        gst::DebugColorFlags::empty(),
        Some("Kinesis Video Streams sink"),
    )
});

/// `upload-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[enum_type(name = "GstKvsUploadMode")]
pub enum UploadMode {
    /// Everything is uploaded.
    #[default]
    #[enum_value(name = "Upload everything", nick = "continuous")]
    Continuous,
    /// Only the windows around triggers (with their pre-roll and post-roll).
    #[enum_value(name = "Upload the windows around triggers", nick = "triggered")]
    Triggered,
    /// Nothing is uploaded (the pre-roll is kept); back to continuous resumes with it.
    #[enum_value(name = "Upload nothing until resumed", nick = "paused")]
    Paused,
}

/// `event-tags`.
#[glib::flags(name = "GstKvsEventTags")]
pub enum EventTags {
    /// `AWS_KINESISVIDEO_NOTIFICATION`: an SNS notification for the fragment.
    #[flags_value(
        name = "AWS_KINESISVIDEO_NOTIFICATION (an SNS notification)",
        nick = "notification"
    )]
    NOTIFICATION = 0b01,
    /// `AWS_KINESISVIDEO_IMAGE_GENERATION`: images from the fragment in S3.
    #[flags_value(
        name = "AWS_KINESISVIDEO_IMAGE_GENERATION (images in S3)",
        nick = "image-generation"
    )]
    IMAGE_GENERATION = 0b10,
}

/// `capture-time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[enum_type(name = "GstKvsCaptureTime")]
pub enum CaptureTime {
    /// The source's reference timestamps when buffers carry them, the host clock before.
    #[default]
    #[enum_value(
        name = "Reference timestamps when present, else the host clock",
        nick = "auto"
    )]
    Auto,
    /// The host clock always.
    #[enum_value(
        name = "The host clock (the running time mapped to the wall clock)",
        nick = "clock"
    )]
    Clock,
    /// The source's reference timestamps for every frame: what comes before the first one waits for it.
    #[enum_value(
        name = "The source's reference timestamps for every frame",
        nick = "meta"
    )]
    Meta,
}

/// `streaming-type` (the C++ kvssink's property).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[enum_type(name = "GstKvsRsStreamingType")]
pub enum StreamingType {
    #[default]
    #[enum_value(name = "Realtime", nick = "realtime")]
    Realtime,
    #[enum_value(name = "Near real-time", nick = "near-realtime")]
    NearRealtime,
    #[enum_value(name = "Offline", nick = "offline")]
    Offline,
}

glib::wrapper! {
    /// The `kvssink` element.
    pub struct KvsSink(ObjectSubclass<bin::KvsSink>) @extends gst::Bin, gst::Element, gst::Object, @implements gst::URIHandler, gst::ChildProxy;
}

glib::wrapper! {
    /// The Matroska sink inside `kvssink` (not registered as an element of its own).
    pub struct KvsMkvSink(ObjectSubclass<mkvsink::KvsMkvSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    StreamingType::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    CaptureTime::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    UploadMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    EventTags::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "kvssink",
        gst::Rank::SECONDARY,
        KvsSink::static_type(),
    )
}
