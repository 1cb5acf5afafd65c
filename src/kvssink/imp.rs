//! The `kvssink` element: a `BaseSink` taking Matroska (`matroskamux` output).

use std::sync::{LazyLock, Mutex, MutexGuard};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

use crate::runtime::Canceller;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new("kvssink", gst::DebugColorFlags::empty(), Some("Kinesis Video Streams sink"))
});

#[derive(Debug, Clone, Default)]
struct Settings {
    stream_name: Option<String>,
}

#[derive(Default)]
pub struct KvsSink {
    settings: Mutex<Settings>,
    canceller: Canceller,
}

impl KvsSink {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for KvsSink {
    const NAME: &'static str = "GstKvsSink";
    type Type = super::KvsSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for KvsSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("stream-name")
                    .nick("Stream name")
                    .blurb("Name of the Kinesis video stream to write to (required; default: none)")
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings();
        match pspec.name() {
            "stream-name" => {
                settings.stream_name = value.get::<Option<String>>().expect("type checked upstream");
            }
            name => unimplemented!("property {name}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings();
        match pspec.name() {
            "stream-name" => settings.stream_name.to_value(),
            name => unimplemented!("property {name}"),
        }
    }
}

impl GstObjectImpl for KvsSink {}

impl ElementImpl for KvsSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Kinesis Video Streams sink",
                "Sink/Network",
                "Streams Matroska (matroskamux output) to Amazon Kinesis Video Streams with PutMedia",
                "gst-plugin-kvs developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = ["video/x-matroska", "audio/x-matroska", "video/webm", "audio/webm"]
                .into_iter()
                .map(gst::Structure::new_empty)
                .collect::<gst::Caps>();
            vec![
                gst::PadTemplate::new("sink", gst::PadDirection::Sink, gst::PadPresence::Always, &caps)
                    .expect("valid pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for KvsSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings().clone();
        if settings.stream_name.as_deref().is_none_or(str::is_empty) {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ("kvssink: the stream-name property is not set"),
                ["set stream-name to the name of the Kinesis video stream"]
            ));
        }
        self.canceller.reset();
        gst::debug!(CAT, imp = self, "started for stream {:?}", settings.stream_name);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.cancel();
        Ok(())
    }

    fn render(&self, _buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        gst::element_imp_error!(
            self,
            gst::CoreError::NotImplemented,
            ("kvssink: uploading is not implemented yet"),
            ["PutMedia support lands with the kvssink issue"]
        );
        Err(gst::FlowError::Error)
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
