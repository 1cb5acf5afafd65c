// SPDX-License-Identifier: MPL-2.0

//! What both elements do the same way: lock their mutexes, require a stream name, and get ready to talk to KVS
//! at start (load the configuration, check the credentials and DescribeStream, bounded and cancellable), with
//! the same errors.

use std::sync::{Mutex, MutexGuard};

use crate::kvs::config::AwsContext;
use crate::kvs::control::{self, StreamDescription};
use crate::kvs::error::KvsError;
use crate::kvs::settings::ConnectionSettings;
use crate::runtime::{Canceller, WaitError};

/// Locks a mutex; a panic while it was held does not make the element unusable.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stream name, or the start error that says it is missing.
pub fn stream_name(name: Option<&String>) -> Result<String, gst::ErrorMessage> {
    name.filter(|n| !n.is_empty()).cloned().ok_or_else(|| {
        gst::error_msg!(
            gst::LibraryError::Settings,
            ("the stream-name property is not set"),
            ["set stream-name to the name of the Kinesis video stream"]
        )
    })
}

/// At start: the shared AWS context for `connection` and what DescribeStream says about `stream` (an `Err`
/// there, a timeout included, is the caller's to judge: kvssink creates a missing stream, and with a fragment
/// store goes on while the service cannot be reached). Each step is bounded by the request timeout, each of the
/// two by four times it, and `canceller` interrupts them (a state change back to NULL).
pub fn prepare(
    element: &'static str,
    canceller: &Canceller,
    connection: &ConnectionSettings,
    stream: &str,
    other: gst::ResourceError,
) -> Result<(AwsContext, Result<StreamDescription, KvsError>), gst::ErrorMessage> {
    let bound = Some(connection.request_timeout * 4);
    let interrupted = || gst::error_msg!(other, ["start was interrupted"]);
    let ctx = match canceller.wait(AwsContext::shared(connection, element), bound) {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(error)) => return Err(kvs_error_message(&error, other)),
        Err(WaitError::Cancelled) => return Err(interrupted()),
        Err(WaitError::TimedOut(after)) => {
            let error = KvsError::Timeout {
                api: "the AWS configuration",
                after,
            };
            return Err(kvs_error_message(&error, other));
        }
    };
    let description = match canceller.wait(control::ensure_stream(&ctx, stream, None), bound) {
        Ok(description) => description,
        Err(WaitError::Cancelled) => return Err(interrupted()),
        Err(WaitError::TimedOut(after)) => Err(KvsError::Timeout {
            api: "DescribeStream",
            after,
        }),
    };
    Ok((ctx, description))
}

/// An AWS-side error as a GStreamer error message with the cause in the message itself (what applications show),
/// not only in the debug string: the domain's stock text ("Not authorized to access resource.") does not say
/// which service call failed or why. The domain says what kind of failure it is ([`KvsError::kind`]); the debug
/// string has the service's error code and request id when it answered. (GStreamer names the element.)
pub fn kvs_error_message(error: &KvsError, other: gst::ResourceError) -> gst::ErrorMessage {
    error_message(error, &error.to_string(), other)
}

/// [`kvs_error_message`] with the text to show (the error with what came with it).
pub fn error_message(
    error: &KvsError,
    shown: &str,
    other: gst::ResourceError,
) -> gst::ErrorMessage {
    use crate::kvs::error::ErrorKind;
    let debug = error.code().map(|code| match error.request_id() {
        Some(id) => format!("error code {code}, request id {id}"),
        None => format!("error code {code}"),
    });
    let debug = debug.as_deref();
    match error.kind() {
        ErrorKind::Settings => build(gst::LibraryError::Settings, shown, debug),
        ErrorKind::NotAuthorized => build(gst::ResourceError::NotAuthorized, shown, debug),
        ErrorKind::NotFound => build(gst::ResourceError::NotFound, shown, debug),
        ErrorKind::Failed => build(other, shown, debug),
    }
}

fn build<T: gst::MessageErrorDomain>(
    domain: T,
    shown: &str,
    debug: Option<&str>,
) -> gst::ErrorMessage {
    match debug {
        Some(debug) => gst::error_msg!(domain, ("{}", shown), ["{}", debug]),
        None => gst::error_msg!(domain, ("{}", shown)),
    }
}
