// SPDX-License-Identifier: MPL-2.0

//! `kvs://` URIs for both elements (`GstURIHandler`), so that `playbin uri=kvs://cam1`,
//! `gst-play-1.0 kvs://cam1` and `gst_element_make_from_uri()` find kvssrc and kvssink.
//!
//! A URI names the stream and sets the element's own properties by their names, with the same value syntax as
//! `gst-launch-1.0`:
//!
//! ```text
//! kvs://cam1?start-selector=producer-timestamp&start-timestamp=2026-11-28T10:00:00Z&end-timestamp=1795860000
//! kvs://cam1?endpoint-uri=http://127.0.0.1:4567&region=eu-west-1
//! ```
//!
//! `start-timestamp` and `end-timestamp` also take RFC 3339 times; `endpoint` is short for `endpoint-uri`.
//! Credentials never go in a URI (it ends up in logs, process lists and playlists): a user-info part or a
//! credential property is refused with an error that says where they belong.
//!
//! Parsing uses the `url` crate (RFC 3986 and percent-decoding); this module only maps the query onto
//! properties, through GStreamer's own value deserialisation so that enums take their nicks.

use gst::glib;
use gst::prelude::*;

pub const SCHEME: &str = "kvs";

/// Properties a URI never sets: the stream (the URI's host) and the credentials.
const CREDENTIALS: &[&str] = &[
    "access-key",
    "secret-access-key",
    "secret-key",
    "session-token",
];

/// The element's own writable properties that a URI may carry, in declaration order.
fn uri_properties(element: &gst::Element) -> Vec<glib::ParamSpec> {
    let own_type = element.type_();
    element
        .list_properties()
        .iter()
        .filter(|p| {
            p.owner_type() == own_type
                && p.flags()
                    .contains(glib::ParamFlags::WRITABLE | glib::ParamFlags::READABLE)
                && p.name() != "stream-name"
                && !CREDENTIALS.contains(&p.name())
        })
        .cloned()
        .collect()
}

fn bad_uri(message: String) -> glib::Error {
    glib::Error::new(gst::URIError::BadUri, &message)
}

/// Whether `name` is a valid Kinesis video stream name (1 to 256 of `[a-zA-Z0-9_.-]`).
fn valid_stream_name(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A time for `start-timestamp`/`end-timestamp`: seconds since the Unix epoch, or an RFC 3339 time.
fn epoch_seconds(value: &str) -> Result<String, String> {
    if value.parse::<f64>().is_ok() {
        return Ok(value.to_owned());
    }
    aws_smithy_types::DateTime::from_str(value, aws_smithy_types::date_time::Format::DateTime)
        .map(|t| t.as_secs_f64().to_string())
        .map_err(|_| {
            format!("'{value}' is neither seconds since the Unix epoch nor an RFC 3339 time")
        })
}

/// What a property takes, for error messages: its type, and its range or nicks.
fn describe(pspec: &glib::ParamSpec) -> String {
    if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt>() {
        format!("an integer from {} to {}", p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt64>() {
        format!("an integer from {} to {}", p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecDouble>() {
        format!("a number from {} to {}", p.minimum(), p.maximum())
    } else if pspec.is::<glib::ParamSpecBoolean>() {
        "true or false".to_owned()
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecEnum>() {
        let nicks: Vec<&str> = p.enum_class().values().iter().map(|v| v.nick()).collect();
        format!("one of {}", nicks.join(", "))
    } else {
        format!("a {}", pspec.value_type())
    }
}

/// The stream name and the `(property, value)` pairs of a `kvs://` URI, checked against `element`'s
/// properties (names, writability, value syntax) but not applied.
pub fn parse(
    element: &gst::Element,
    uri: &str,
) -> Result<(String, Vec<(glib::ParamSpec, glib::Value)>), glib::Error> {
    let url = url::Url::parse(uri).map_err(|e| bad_uri(format!("'{uri}' is not a URI: {e}")))?;
    if url.scheme() != SCHEME {
        return Err(glib::Error::new(
            gst::URIError::UnsupportedProtocol,
            &format!("'{}': kvs elements take kvs://STREAM URIs", url.scheme()),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad_uri(
            "credentials never go in a kvs:// URI: use the AWS environment variables, a profile or the \
             element's properties"
                .to_owned(),
        ));
    }
    // kvs://cam1 (the host) or kvs:///cam1 (the path).
    let stream = match url.host_str().filter(|h| !h.is_empty()) {
        Some(host) => host.to_owned(),
        None => url.path().trim_matches('/').to_owned(),
    };
    if !valid_stream_name(&stream) {
        return Err(bad_uri(format!(
            "'{uri}': the stream name '{stream}' is not valid (1 to 256 letters, digits, '_', '.' or '-')"
        )));
    }
    let allowed = uri_properties(element);
    let mut settings = Vec::new();
    for (key, value) in url.query_pairs() {
        let name = if key == "endpoint" {
            "endpoint-uri"
        } else {
            &*key
        };
        if CREDENTIALS.contains(&name) {
            return Err(bad_uri(format!(
                "credentials never go in a kvs:// URI ('{name}'): use the AWS environment variables, a profile \
                 or the element's properties"
            )));
        }
        let Some(pspec) = allowed.iter().find(|p| p.name() == name) else {
            let names: Vec<&str> = allowed.iter().map(|p| p.name()).collect();
            return Err(bad_uri(format!(
                "'{name}' cannot be set in a kvs:// URI of {}; these can: {}",
                element
                    .factory()
                    .map_or_else(|| "this element".into(), |f| f.name().to_string()),
                names.join(", ")
            )));
        };
        let text = if matches!(name, "start-timestamp" | "end-timestamp") {
            epoch_seconds(&value).map_err(|e| bad_uri(format!("{name}: {e}")))?
        } else {
            value.into_owned()
        };
        let parsed = glib::Value::deserialize_with_pspec(&text, pspec)
            .ok()
            .filter(|v| pspec.value_is_valid(v))
            .ok_or_else(|| {
                bad_uri(format!(
                    "{name}: '{text}' is not a valid value ({})",
                    describe(pspec)
                ))
            })?;
        settings.push((pspec.clone(), parsed));
    }
    Ok((stream, settings))
}

/// Applies a `kvs://` URI: the stream name, then every URI property reset to its default and set from the query
/// (a URI says all of what it sets; credentials and other properties are left as they are).
pub fn apply(element: &gst::Element, uri: &str) -> Result<(), glib::Error> {
    if element.current_state() > gst::State::Ready {
        return Err(glib::Error::new(
            gst::URIError::BadState,
            "the URI of a kvs element can only change in the NULL or READY state",
        ));
    }
    let (stream, settings) = parse(element, uri)?;
    element.set_property("stream-name", stream);
    for pspec in uri_properties(element) {
        element.set_property_from_value(pspec.name(), pspec.default_value());
    }
    for (pspec, value) in settings {
        element.set_property_from_value(pspec.name(), &value);
    }
    Ok(())
}

/// The element's settings as a `kvs://` URI: the stream, and every URI property that is not at its default.
pub fn current(element: &gst::Element) -> Option<String> {
    let stream: Option<String> = element.property("stream-name");
    let stream = stream?;
    // An unset string or structure is left out (GStreamer cannot serialize a NULL structure).
    let unset = |v: &glib::Value| {
        matches!(v.get::<Option<String>>(), Ok(None))
            || matches!(v.get::<Option<gst::Structure>>(), Ok(None))
    };
    let serialize = |v: &glib::Value| {
        (!unset(v))
            .then(|| v.serialize().ok().map(String::from))
            .flatten()
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    // aws-region is region under its C++ name: written once.
    for pspec in uri_properties(element)
        .iter()
        .filter(|p| p.name() != "aws-region")
    {
        let now = serialize(&element.property_value(pspec.name()));
        if let Some(now) = now.filter(|now| Some(now) != serialize(pspec.default_value()).as_ref())
        {
            query.append_pair(pspec.name(), &now);
            any = true;
        }
    }
    Some(if any {
        format!("{SCHEME}://{stream}?{}", query.finish())
    } else {
        format!("{SCHEME}://{stream}")
    })
}

/// `kvs://STREAM?property=value…` for an element implementation: its `GstURIHandler`, the same for both elements
/// but for the URI type.
macro_rules! uri_handler {
    ($imp:ty, $kind:expr) => {
        impl gst::subclass::prelude::URIHandlerImpl for $imp {
            const URI_TYPE: gst::URIType = $kind;

            fn protocols() -> &'static [&'static str] {
                &[crate::uri::SCHEME]
            }

            fn uri(&self) -> Option<String> {
                crate::uri::current(self.obj().upcast_ref())
            }

            fn set_uri(&self, uri: &str) -> Result<(), gst::glib::Error> {
                crate::uri::apply(self.obj().upcast_ref(), uri)
            }
        }
    };
}
pub(crate) use uri_handler;
