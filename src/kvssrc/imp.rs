//! The `kvssrc` element: a `PushSrc` emitting Matroska read from Kinesis Video Streams.

use std::sync::{LazyLock, Mutex, MutexGuard};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use crate::runtime::Canceller;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new("kvssrc", gst::DebugColorFlags::empty(), Some("Kinesis Video Streams source"))
});

#[derive(Debug, Clone, Default)]
struct Settings {
    stream_name: Option<String>,
}

#[derive(Default)]
pub struct KvsSrc {
    settings: Mutex<Settings>,
    canceller: Canceller,
}

impl KvsSrc {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for KvsSrc {
    const NAME: &'static str = "GstKvsSrc";
    type Type = super::KvsSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for KvsSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("stream-name")
                    .nick("Stream name")
                    .blurb("Name of the Kinesis video stream to read (required; default: none)")
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

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_format(gst::Format::Bytes);
    }
}

impl GstObjectImpl for KvsSrc {}

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
                gst::PadTemplate::new("src", gst::PadDirection::Src, gst::PadPresence::Always, &caps)
                    .expect("valid pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for KvsSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings().clone();
        if settings.stream_name.as_deref().is_none_or(str::is_empty) {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ("kvssrc: the stream-name property is not set"),
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
    fn create(&self, _buffer: Option<&mut gst::BufferRef>) -> Result<CreateSuccess, gst::FlowError> {
        gst::element_imp_error!(
            self,
            gst::CoreError::NotImplemented,
            ("kvssrc: reading is not implemented yet"),
            ["GetMedia support lands with the kvssrc issue"]
        );
        Err(gst::FlowError::Error)
    }
}
