//! The official C++ kvssink's property names that kvssink does not have under its own names, accepted with the
//! C++ types and defaults so that pipelines written for it parse and run unchanged. Each says what it does here:
//!
//! - **implemented**: `user-agent` (prefixed to kvssink's own in every request), `connection-timeout` (seconds
//!   to connect), `completion-timeout` (seconds for a request to complete: `request-timeout`), and
//!   `restart-on-error` (false: the first failed connection is an element error instead of a reconnection);
//! - **for elementary-stream input** (`codec-id`, `track-name`, `timecode-scale`, `fragment-duration`,
//!   `key-frame-fragmentation`, `frame-timecodes`, `absolute-fragment-times`, `content-type`,
//!   `use-original-pts`, `disable-buffer-clipping`): they describe how the C++ element muxes H.264/AAC itself;
//!   kvssink takes `matroskamux` output, whose muxer settings decide those things, so they have no effect;
//! - **C++ SDK internals** (`avg-bandwidth-bps`, `framerate`, `max-latency`, `log-config`,
//!   `recalculate-metrics`, `get-kvs-metrics`, `replay-duration`, `rotation-period`, `streaming-type`): no
//!   effect; kvssink re-sends every fragment not yet persisted (not a `replay-duration` window), follows its
//!   source for real-time or offline upload, and the C++ element ignores `rotation-period` too;
//! - **credentials not supported yet** (`credential-path`, `iot-certificate`): setting one is a start error
//!   saying so, rather than an upload with other credentials than the user meant.
//!
//! Properties without effect that are set get one warning on the bus when the element starts.

use std::collections::BTreeMap;

use gst::glib;
use gst::prelude::*;

/// What a C++ property does in kvssink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Implemented,
    /// Accepted, no effect; the text says why (for the start warning).
    Ignored(&'static str),
    /// A start error when set.
    NotSupported,
}

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

const MUXER: &str = "matroskamux's output decides it";
const SDK: &str = "it tunes the C++ SDK";

/// The C++ properties kvssink accepts by their C++ names, with what each does.
pub fn effects() -> &'static [(&'static str, Support)] {
    &[
        ("user-agent", Support::Implemented),
        ("connection-timeout", Support::Implemented),
        ("completion-timeout", Support::Implemented),
        ("restart-on-error", Support::Implemented),
        ("codec-id", Support::Ignored(MUXER)),
        ("track-name", Support::Ignored(MUXER)),
        ("timecode-scale", Support::Ignored(MUXER)),
        ("fragment-duration", Support::Ignored(MUXER)),
        ("key-frame-fragmentation", Support::Ignored(MUXER)),
        ("frame-timecodes", Support::Ignored(MUXER)),
        ("absolute-fragment-times", Support::Ignored(MUXER)),
        ("content-type", Support::Ignored("the stream's media type comes from the Matroska tracks")),
        ("use-original-pts", Support::Ignored(MUXER)),
        ("disable-buffer-clipping", Support::Ignored(MUXER)),
        ("avg-bandwidth-bps", Support::Ignored(SDK)),
        ("framerate", Support::Ignored(SDK)),
        ("max-latency", Support::Ignored(SDK)),
        ("log-config", Support::Ignored("kvssink logs through GST_DEBUG")),
        ("recalculate-metrics", Support::Ignored(SDK)),
        ("get-kvs-metrics", Support::Ignored("the stats property and the bus messages carry the figures")),
        ("replay-duration", Support::Ignored("kvssink re-sends every fragment not yet persisted")),
        ("rotation-period", Support::Ignored("the C++ kvssink ignores it too; see connection-rotation")),
        (
            "streaming-type",
            Support::Ignored("kvssink follows its source; file-start-time uploads a recording"),
        ),
        ("credential-path", Support::NotSupported),
        ("iot-certificate", Support::NotSupported),
    ]
}

fn uint(name: &str, blurb: &str, default: u32) -> glib::ParamSpec {
    glib::ParamSpecUInt::builder(name).blurb(blurb).default_value(default).mutable_ready().build()
}

fn boolean(name: &str, blurb: &str, default: bool) -> glib::ParamSpec {
    glib::ParamSpecBoolean::builder(name).blurb(blurb).default_value(default).mutable_ready().build()
}

fn string(name: &str, blurb: &str, default: Option<&str>) -> glib::ParamSpec {
    glib::ParamSpecString::builder(name).blurb(blurb).default_value(default).mutable_ready().build()
}

/// The property specs, with the C++ types and defaults.
pub fn properties() -> Vec<glib::ParamSpec> {
    let none = |what: &str| format!("C++ kvssink compatibility: no effect, {what}");
    vec![
        string(
            "user-agent",
            "Prefixed to kvssink's own user agent in every request (C++ kvssink name; default: none)",
            None,
        ),
        uint("connection-timeout", "Seconds to connect to the service (C++ kvssink name; default: 5)", 5),
        uint(
            "completion-timeout",
            "Seconds for each request to complete; the same as request-timeout in seconds (C++ kvssink name; default: 10)",
            10,
        ),
        boolean(
            "restart-on-error",
            "false: the first failed connection is an element error instead of a reconnection (C++ kvssink name; default: true)",
            true,
        ),
        string("codec-id", &format!("{} (default: V_MPEG4/ISO/AVC)", none(MUXER)), Some("V_MPEG4/ISO/AVC")),
        string("track-name", &format!("{} (default: kinesis_video)", none(MUXER)), Some("kinesis_video")),
        uint("timecode-scale", &format!("{} (milliseconds; default: 1)", none(MUXER)), 1),
        uint("fragment-duration", &format!("{} (milliseconds; default: 2000)", none(MUXER)), 2000),
        boolean("key-frame-fragmentation", &format!("{} (default: true)", none(MUXER)), true),
        boolean("frame-timecodes", &format!("{} (default: true)", none(MUXER)), true),
        boolean("absolute-fragment-times", &format!("{} (default: true)", none(MUXER)), true),
        string(
            "content-type",
            &format!("{} (default: video/h264)", none("the media type comes from the Matroska tracks")),
            Some("video/h264"),
        ),
        boolean("use-original-pts", &format!("{} (default: false)", none(MUXER)), false),
        boolean("disable-buffer-clipping", &format!("{} (default: false)", none(MUXER)), false),
        uint("avg-bandwidth-bps", &format!("{} (default: 4194304)", none(SDK)), 4 * 1024 * 1024),
        uint("framerate", &format!("{} (default: 25)", none(SDK)), 25),
        uint("max-latency", &format!("{} (seconds; default: 60)", none(SDK)), 60),
        string(
            "log-config",
            &format!("{} (default: ../kvs_log_configuration)", none("kvssink logs through GST_DEBUG")),
            Some("../kvs_log_configuration"),
        ),
        boolean("recalculate-metrics", &format!("{} (default: true)", none(SDK)), true),
        boolean("get-kvs-metrics", &format!("{} (default: false)", none("the stats property has the figures")), false),
        uint(
            "replay-duration",
            &format!("{} (seconds; default: 40)", none("kvssink re-sends every fragment not yet persisted")),
            40,
        ),
        uint("rotation-period", &format!("{} (seconds; default: 3600)", none("see connection-rotation")), 3600),
        glib::ParamSpecEnum::builder_with_default("streaming-type", StreamingType::Realtime)
            .blurb(&format!("{} (default: realtime)", none("kvssink follows its source")))
            .mutable_ready()
            .build(),
        string(
            "credential-path",
            "The C++ SDK's rotating credential file: not supported yet, an error when set (default: .kvs/credential)",
            Some(".kvs/credential"),
        ),
        glib::ParamSpecBoxed::builder::<gst::Structure>("iot-certificate")
            .blurb("IoT credentials (endpoint, cert-path, key-path, ca-path, role-aliases): not supported yet, an error when set (default: none)")
            .mutable_ready()
            .build(),
    ]
}

/// The values of the C++ properties that were set, serialized (None: set to NULL): plain strings, so that the
/// element's settings stay `Send`.
#[derive(Debug, Clone, Default)]
pub struct CppSettings {
    values: BTreeMap<String, Option<String>>,
}

impl CppSettings {
    /// Stores a value; false when `name` is not one of these properties.
    pub fn set(&mut self, name: &str, value: &glib::Value) -> bool {
        if !effects().iter().any(|(n, _)| *n == name) {
            return false;
        }
        let unset = matches!(value.get::<Option<String>>(), Ok(None))
            || matches!(value.get::<Option<gst::Structure>>(), Ok(None));
        let text = if unset { None } else { value.serialize().ok().map(String::from) };
        self.values.insert(name.to_owned(), text);
        true
    }

    /// The value of one of these properties (its default when it was not set); None when `name` is not one.
    pub fn get(&self, name: &str, pspec: &glib::ParamSpec) -> Option<glib::Value> {
        if !effects().iter().any(|(n, _)| *n == name) {
            return None;
        }
        Some(match self.values.get(name) {
            None => pspec.default_value().clone(),
            Some(None) => glib::Value::from_type(pspec.value_type()),
            Some(Some(text)) => glib::Value::deserialize_with_pspec(text, pspec)
                .unwrap_or_else(|_| pspec.default_value().clone()),
        })
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.as_deref())
    }

    pub fn user_agent(&self) -> Option<String> {
        let value = glib::Value::deserialize(self.text("user-agent")?, glib::Type::STRING).ok()?;
        value.get::<Option<String>>().ok().flatten().filter(|s| !s.is_empty())
    }

    fn seconds(&self, name: &str) -> Option<std::time::Duration> {
        let seconds: u64 = self.text(name)?.parse().ok()?;
        Some(std::time::Duration::from_secs(seconds.max(1)))
    }

    /// `connection-timeout`, when set.
    pub fn connect_timeout(&self) -> Option<std::time::Duration> {
        self.seconds("connection-timeout")
    }

    /// `completion-timeout`, when set.
    pub fn completion_timeout(&self) -> Option<std::time::Duration> {
        self.seconds("completion-timeout")
    }

    pub fn restart_on_error(&self) -> bool {
        self.text("restart-on-error") != Some("false")
    }

    /// The properties set that cannot work yet (a start error); an empty or NULL value does not count.
    pub fn unsupported(&self) -> Vec<&'static str> {
        effects()
            .iter()
            .filter(|(name, effect)| {
                *effect == Support::NotSupported
                    && self.text(name).is_some_and(|t| !t.is_empty() && t != "\"\"")
            })
            .map(|(name, _)| *name)
            .collect()
    }

    /// The properties set that have no effect, with why.
    pub fn without_effect(&self) -> Vec<(&'static str, &'static str)> {
        effects()
            .iter()
            .filter_map(|(name, effect)| match effect {
                Support::Ignored(why) if self.values.contains_key(*name) => Some((*name, *why)),
                _ => None,
            })
            .collect()
    }
}
