//! `kvssrc`: reads a Kinesis video stream with GetMedia and emits Matroska.

use gst::glib;
use gst::prelude::*;

mod imp;
pub mod merger;
pub mod reader;

glib::wrapper! {
    pub struct KvsSrc(ObjectSubclass<imp::KvsSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object, @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "kvssrc", gst::Rank::SECONDARY, KvsSrc::static_type())
}
