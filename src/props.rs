// SPDX-License-Identifier: MPL-2.0

//! GStreamer glue shared by kvssink and kvssrc: the connection properties (credentials, region, endpoint, CA,
//! timeout) with the same names, defaults and behaviour on both elements, and AWS errors as element errors.

use std::time::Duration;

use gst::glib;
use gst::prelude::*;

use crate::kvs::settings::{ConnectionSettings, Secret};

pub const DEFAULT_REQUEST_TIMEOUT_MS: u32 =
    crate::kvs::settings::DEFAULT_REQUEST_TIMEOUT.as_millis() as u32;

/// A property's nick, made from its name: "connection-staleness" gives "Connection staleness", with the
/// abbreviations written as such ("aws-region" gives "AWS region").
pub fn nick(name: &str) -> String {
    let words: Vec<String> = name
        .split('-')
        .enumerate()
        .map(|(i, word)| match word {
            "aws" => "AWS".to_owned(),
            "iot" => "IoT".to_owned(),
            "kms" => "KMS".to_owned(),
            "id" => "ID".to_owned(),
            "uri" => "URI".to_owned(),
            "ca" => "CA".to_owned(),
            "arn" => "ARN".to_owned(),
            "s3" => "S3".to_owned(),
            _ if i == 0 => word[..1].to_uppercase() + &word[1..],
            _ => word.to_owned(),
        })
        .collect();
    words.join(" ")
}
pub fn uint(name: &str, blurb: &str, max: u32, default: u32) -> glib::ParamSpec {
    glib::ParamSpecUInt::builder(name)
        .nick(&nick(name))
        .blurb(blurb)
        .maximum(max)
        .default_value(default)
        .mutable_ready()
        .build()
}

pub fn string(name: &str, blurb: &str) -> glib::ParamSpec {
    string_or(name, blurb, None)
}

/// A string property whose default is `default`.
pub fn string_or(name: &str, blurb: &str, default: Option<&str>) -> glib::ParamSpec {
    glib::ParamSpecString::builder(name)
        .nick(&nick(name))
        .blurb(blurb)
        .default_value(default)
        .mutable_ready()
        .build()
}

pub fn boolean(name: &str, blurb: &str, default: bool) -> glib::ParamSpec {
    glib::ParamSpecBoolean::builder(name)
        .nick(&nick(name))
        .blurb(blurb)
        .default_value(default)
        .mutable_ready()
        .build()
}

fn secret(name: &str, blurb: &str) -> glib::ParamSpec {
    glib::ParamSpecString::builder(name)
        .nick(&nick(name))
        .blurb(blurb)
        .write_only()
        .mutable_ready()
        .build()
}

/// A property's value, of the type GObject checked against the property's spec before `set_property`.
pub fn checked<'a, T: glib::value::FromValue<'a>>(value: &'a glib::Value) -> T {
    value
        .get::<T>()
        .expect("GObject checks a property's type before it is set")
}

/// A string property's value; an empty string counts as unset.
pub fn string_value(value: &glib::Value) -> Option<String> {
    checked::<Option<String>>(value).filter(|s| !s.is_empty())
}

/// The connection properties, in gst-inspect order.
pub fn connection_properties() -> Vec<glib::ParamSpec> {
    vec![
        string(
            "access-key",
            "AWS access key ID; unset: the AWS default credential chain",
        ),
        secret(
            "secret-access-key",
            "AWS secret access key (write-only; unset: the default credential chain)",
        ),
        secret(
            "secret-key",
            "Same as secret-access-key, the C++ kvssink's name (write-only)",
        ),
        secret(
            "session-token",
            "AWS session token for temporary credentials (write-only)",
        ),
        string(
            "region",
            "AWS region (unset: the default chain, else us-west-2)",
        ),
        string(
            "aws-region",
            "Same as region, the C++ kvssink's name (unset: the default chain, else us-west-2)",
        ),
        string("role-arn", "ARN of an IAM role to assume with STS"),
        string(
            "endpoint-uri",
            "Control-plane endpoint URL, e.g. http://127.0.0.1:4567 for kvs-emulator (unset: CONTROL_PLANE_URI, else the regional AWS endpoint)",
        ),
        string(
            "ca-file",
            "PEM file of extra CA certificates to trust (unset: KVSSINK_CA_CERT_PATH; system roots are always trusted)",
        ),
        uint(
            "request-timeout",
            "Timeout of each request and connection attempt, in milliseconds",
            u32::MAX,
            DEFAULT_REQUEST_TIMEOUT_MS,
        ),
    ]
}

/// Sets a connection property; false when `name` is not one.
pub fn set_connection_property(
    settings: &mut ConnectionSettings,
    name: &str,
    value: &glib::Value,
) -> bool {
    match name {
        "access-key" => settings.access_key = string_value(value),
        "secret-access-key" | "secret-key" => {
            settings.secret_access_key = string_value(value).map(Secret::new)
        }
        "session-token" => settings.session_token = string_value(value).map(Secret::new),
        "region" | "aws-region" => settings.region = string_value(value),
        "role-arn" => settings.role_arn = string_value(value),
        "endpoint-uri" => settings.endpoint_uri = string_value(value),
        "ca-file" => settings.ca_file = string_value(value),
        "request-timeout" => {
            let ms = checked::<u32>(value).max(1);
            settings.request_timeout = Duration::from_millis(u64::from(ms));
        }
        _ => return false,
    }
    true
}

/// A connection property's value (secrets read back as NULL); None when `name` is not one.
pub fn connection_property(settings: &ConnectionSettings, name: &str) -> Option<glib::Value> {
    Some(match name {
        "access-key" => settings.access_key.to_value(),
        "secret-access-key" | "secret-key" | "session-token" => None::<String>.to_value(),
        "region" | "aws-region" => settings.region.to_value(),
        "role-arn" => settings.role_arn.to_value(),
        "endpoint-uri" => settings.endpoint_uri.to_value(),
        "ca-file" => settings.ca_file.to_value(),
        "request-timeout" => (settings.request_timeout.as_millis() as u32).to_value(),
        _ => return None,
    })
}

/// The connection settings to use: a custom CA from `KVSSINK_CA_CERT_PATH` (the C++ kvssink's variable) when
/// `ca-file` is not set.
pub fn effective_connection(settings: &ConnectionSettings) -> ConnectionSettings {
    let mut connection = settings.clone();
    if connection.ca_file.is_none() {
        connection.ca_file = std::env::var("KVSSINK_CA_CERT_PATH")
            .ok()
            .filter(|s| !s.is_empty());
    }
    connection
}
