//! `kvssink`: streams the output of `matroskamux` to Kinesis Video Streams with PutMedia.
//!
//! [`fragmenter`] splits the Matroska byte stream into a header and fragments; [`uploader`] owns the PutMedia
//! connection and the fragment queue; `imp` is the GStreamer element around them.

use gst::glib;
use gst::prelude::*;

mod compat;
pub mod fragmenter;
mod imp;
pub mod uploader;

glib::wrapper! {
    pub struct KvsSink(ObjectSubclass<imp::KvsSink>) @extends gst_base::BaseSink, gst::Element, gst::Object, @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    compat::StreamingType::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(Some(plugin), "kvssink", gst::Rank::SECONDARY, KvsSink::static_type())
}
