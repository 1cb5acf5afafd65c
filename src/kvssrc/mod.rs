// SPDX-License-Identifier: MPL-2.0

//! `kvssrc`: reads a Kinesis video stream with GetMedia and emits Matroska.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

mod imp;
pub mod merger;
pub mod reader;

/// The debug category of `kvssrc`.
pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "kvssrc",
        gst::DebugColorFlags::empty(),
        Some("Kinesis Video Streams source"),
    )
});

/// `start-selector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[enum_type(name = "GstKvsSrcStartSelector")]
pub enum StartSelector {
    #[default]
    #[enum_value(name = "Now: fragments that arrive from now on", nick = "now")]
    Now,
    #[enum_value(name = "Earliest: the oldest fragment kept", nick = "earliest")]
    Earliest,
    #[enum_value(
        name = "After the fragment start-fragment-number",
        nick = "fragment-number"
    )]
    FragmentNumber,
    #[enum_value(name = "Server timestamp start-timestamp", nick = "server-timestamp")]
    ServerTimestamp,
    #[enum_value(
        name = "Producer timestamp start-timestamp",
        nick = "producer-timestamp"
    )]
    ProducerTimestamp,
    #[enum_value(name = "After the continuation-token", nick = "continuation-token")]
    ContinuationToken,
}

/// `output-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[enum_type(name = "GstKvsSrcMode")]
pub enum OutputMode {
    #[default]
    #[enum_value(
        name = "One Matroska stream: the header once, then the clusters",
        nick = "merged"
    )]
    Merged,
    #[enum_value(
        name = "The service's bytes unchanged, one document per fragment",
        nick = "raw"
    )]
    Raw,
}

/// `output-timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[enum_type(name = "GstKvsSrcTimeline")]
pub enum OutputTimeline {
    #[default]
    #[enum_value(
        name = "Producer time: every cluster at its producer timestamp (epoch time), gaps between sessions kept",
        nick = "producer-time"
    )]
    ProducerTime,
    #[enum_value(
        name = "Continuous: as producer-time, but a gap of more than a second between fragments is closed",
        nick = "continuous"
    )]
    Continuous,
}

glib::wrapper! {
    pub struct KvsSrc(ObjectSubclass<imp::KvsSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object, @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // The property enums, documented with the element (gst-inspect, the plugin documentation cache).
    for enum_type in [
        StartSelector::static_type(),
        OutputMode::static_type(),
        OutputTimeline::static_type(),
    ] {
        enum_type.mark_as_plugin_api(gst::PluginAPIFlags::empty());
    }
    gst::Element::register(
        Some(plugin),
        "kvssrc",
        gst::Rank::SECONDARY,
        KvsSrc::static_type(),
    )
}
