// SPDX-License-Identifier: MPL-2.0

//! Errors from the AWS side, and the one table that says what to do about each.

use std::time::Duration;

/// What kind of failure an error is, for the GStreamer error domain an element posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Settings,
    NotAuthorized,
    NotFound,
    /// Any other failure: the element's read or write failed.
    Failed,
}

/// An error and its causes on one line, each cause once (a cause's text already in the line is not repeated).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// An error that ended an upload or a read, and what made it final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalError {
    pub error: KvsError,
    pub why: GaveUp,
}

/// What made an error final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The error cannot be retried (refused credentials, a deleted stream, a refused stream).
    Final,
    /// `restart-on-error` is false.
    NoRestart,
    /// This many failed attempts in a row.
    RetryLimit(u32),
    /// Nothing could be read for this long (kvssrc's `max-outage`), after this many attempts.
    Outage(std::time::Duration, u32),
    /// The task was stopped.
    Stopped,
}

impl std::fmt::Display for FinalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.why {
            GaveUp::Final | GaveUp::Stopped => write!(f, "{}", self.error),
            GaveUp::NoRestart => write!(f, "{} (restart-on-error is false)", self.error),
            GaveUp::RetryLimit(attempts) => {
                write!(
                    f,
                    "gave up after {attempts} failed attempts in a row; the last: {}",
                    self.error
                )
            }
            GaveUp::Outage(down, attempts) => write!(
                f,
                "gave up after {:.0} s without reading (max-outage) and {attempts} attempts; the last: {}",
                down.as_secs_f64(),
                self.error
            ),
        }
    }
}

impl From<KvsError> for FinalError {
    fn from(error: KvsError) -> Self {
        FinalError {
            error,
            why: GaveUp::Final,
        }
    }
}

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try again after a backoff.
    Retry,
    /// Resolve the data endpoint again (GetDataEndpoint), then try again.
    RefreshEndpoint,
    /// Give up: the element posts an error.
    Fail,
}

/// An error talking to Kinesis Video Streams. `Display` names the API, the cause and what to check; it never
/// contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvsError {
    /// Settings that cannot work (bad URL, unreadable CA file...).
    Config(String),
    /// No credentials could be found or loaded.
    Credentials(String),
    /// The service answered with an error; `request_id` is its `x-amzn-RequestId` when it sent one.
    Service {
        api: &'static str,
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// The service refused a fragment with an ERROR ACK (`fragment` is its timecode).
    FragmentRefused {
        fragment: u64,
        id: u32,
        code: String,
    },
    /// A connection ended or broke without an answer that says why (the message says what happened).
    Connection { api: &'static str, message: String },
    /// An answer that does not follow the protocol (not JSON, not Matroska); the message names the API.
    BadResponse { api: &'static str, message: String },
    /// A GetMedia stream carried an error chunk in place of a fragment.
    InStream { code: String, id: String },
    /// No answer: connection refused, reset, DNS, TLS.
    Network { api: &'static str, message: String },
    /// No answer within the request timeout.
    Timeout { api: &'static str, after: Duration },
}

impl std::fmt::Display for KvsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvsError::Config(message) => write!(f, "invalid configuration: {message}"),
            KvsError::Credentials(message) => write!(f, "no usable AWS credentials: {message}"),
            KvsError::Service {
                api,
                status,
                code,
                message,
                ..
            } => {
                write!(f, "{api} failed: HTTP {status} {code}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            KvsError::Network { api, message } => {
                write!(f, "{api} failed: cannot reach the service: {message}")
            }
            KvsError::Timeout { api, after } => {
                write!(
                    f,
                    "{api} failed: no answer within {:.1} s (request-timeout)",
                    after.as_secs_f64()
                )
            }
            KvsError::FragmentRefused { fragment, id, code } => {
                write!(
                    f,
                    "the service refused fragment {fragment} with ERROR {id} {code}"
                )
            }
            KvsError::Connection { message, .. } => f.write_str(message),
            KvsError::BadResponse { message, .. } => f.write_str(message),
            KvsError::InStream { code, id } => {
                write!(f, "the stream holds an error chunk: {code} ({id})")
            }
        }
    }
}

impl std::error::Error for KvsError {}

impl KvsError {
    /// The service error code (`ResourceNotFoundException`, `STREAM_DELETED`...), if the service answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            KvsError::Service { code, .. }
            | KvsError::FragmentRefused { code, .. }
            | KvsError::InStream { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The service's request id, if it answered with one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            KvsError::Service { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// What GStreamer error this is for an application: refused credentials or access, a stream that is not
    /// there, settings that cannot work, or (`None`) a failed read or write.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KvsError::Config(_) => ErrorKind::Settings,
            KvsError::Credentials(_) => ErrorKind::NotAuthorized,
            KvsError::Service {
                status: 401 | 403, ..
            } => ErrorKind::NotAuthorized,
            KvsError::Service { code, .. } if code == "ResourceNotFoundException" => {
                ErrorKind::NotFound
            }
            // 4500: KMS access denied; 4507: the stream was deleted.
            KvsError::FragmentRefused { id: 4500, .. } => ErrorKind::NotAuthorized,
            KvsError::FragmentRefused { id: 4507, .. } => ErrorKind::NotFound,
            _ => ErrorKind::Failed,
        }
    }

    /// The service refused the call for its request rate or its connection count: back off and try again.
    pub fn is_throttle(&self) -> bool {
        matches!(self, KvsError::Service { code, .. }
            if matches!(code.as_str(), "ClientLimitExceededException" | "ConnectionLimitExceededException" | "ThrottlingException"))
    }

    /// The table: what to do about this error.
    pub fn action(&self) -> Action {
        match self {
            KvsError::Config(_)
            | KvsError::Credentials(_)
            | KvsError::BadResponse { .. }
            | KvsError::InStream { .. } => Action::Fail,
            KvsError::Network { .. } | KvsError::Timeout { .. } | KvsError::Connection { .. } => {
                Action::Retry
            }
            KvsError::FragmentRefused { id, .. } => match ack_error_action(*id) {
                AckErrorAction::Resend | AckErrorAction::SkipFragment => Action::Retry,
                AckErrorAction::Fail => Action::Fail,
            },
            KvsError::Service { status, code, .. } => match code.as_str() {
                "InvalidEndpointException" | "InvalidEndpoint" => Action::RefreshEndpoint,
                "ClientLimitExceededException"
                | "ConnectionLimitExceededException"
                | "ThrottlingException"
                | "ServiceUnavailableException"
                | "InternalFailure"
                | "InternalServerError"
                | "RequestTimeout" => Action::Retry,
                "ResourceNotFoundException"
                | "NotAuthorizedException"
                | "AccessDeniedException"
                | "InvalidArgumentException"
                | "InvalidSignatureException"
                | "IncompleteSignatureException"
                | "UnrecognizedClientException"
                | "MissingAuthenticationTokenException"
                | "ExpiredTokenException"
                | "ResourceInUseException" => Action::Fail,
                _ if *status >= 500 || *status == 429 || *status == 408 => Action::Retry,
                _ => Action::Fail,
            },
        }
    }
}

/// What an ERROR ACK means for the fragment and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckErrorAction {
    /// Re-send the fragment on a new connection (4000, 4003, 5000, 5001, unknown ids).
    Resend,
    /// The service will never take this fragment: drop it, warn, and go on with the next one.
    SkipFragment,
    /// The stream cannot be written (deleted, KMS, inconsistent tracks): fail.
    Fail,
}

/// The ERROR ACK table (ids from the PutMedia documentation).
pub fn ack_error_action(error_id: u32) -> AckErrorAction {
    match error_id {
        4000 | 4003 | 5000 | 5001 => AckErrorAction::Resend,
        // Too big, too long, timecode order, bad producer timestamp, too much metadata: this fragment only.
        4001 | 4002 | 4004 | 4007 | 4009 => AckErrorAction::SkipFragment,
        // Tracks or data the service cannot read, stream gone, KMS: every later fragment would fail too.
        4005 | 4006 | 4008 | 4010..=4012 | 4500..=4507 => AckErrorAction::Fail,
        _ => AckErrorAction::Resend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: &str) -> KvsError {
        KvsError::Service {
            api: "PutMedia",
            status,
            code: code.into(),
            message: String::new(),
            request_id: None,
        }
    }

    #[test]
    fn the_action_table() {
        assert_eq!(
            service(404, "ResourceNotFoundException").action(),
            Action::Fail
        );
        assert_eq!(
            service(403, "InvalidSignatureException").action(),
            Action::Fail
        );
        assert_eq!(
            service(400, "ClientLimitExceededException").action(),
            Action::Retry
        );
        assert_eq!(
            service(400, "ConnectionLimitExceededException").action(),
            Action::Retry
        );
        assert_eq!(
            service(400, "InvalidEndpointException").action(),
            Action::RefreshEndpoint
        );
        assert_eq!(
            service(503, "ServiceUnavailableException").action(),
            Action::Retry
        );
        assert_eq!(service(502, "Whatever").action(), Action::Retry);
        assert_eq!(service(400, "Whatever").action(), Action::Fail);
        let timeout = KvsError::Timeout {
            api: "PutMedia",
            after: Duration::from_secs(5),
        };
        assert_eq!(timeout.action(), Action::Retry);
        assert_eq!(
            timeout.to_string(),
            "PutMedia failed: no answer within 5.0 s (request-timeout)"
        );
        assert_eq!(
            service(404, "ResourceNotFoundException").to_string(),
            "PutMedia failed: HTTP 404 ResourceNotFoundException"
        );
    }

    #[test]
    fn the_ack_error_table() {
        for id in [4000, 4003, 5000, 5001, 4999] {
            assert_eq!(ack_error_action(id), AckErrorAction::Resend, "{id}");
        }
        for id in [4001, 4002, 4004, 4007, 4009] {
            assert_eq!(ack_error_action(id), AckErrorAction::SkipFragment, "{id}");
        }
        for id in [4006, 4008, 4010, 4507, 4500] {
            assert_eq!(ack_error_action(id), AckErrorAction::Fail, "{id}");
        }
    }
}
