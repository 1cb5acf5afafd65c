//! Errors from the AWS side, and the one table that says what to do about each.

use std::time::Duration;

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
    /// The service answered with an error.
    Service { api: &'static str, status: u16, code: String, message: String },
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
            KvsError::Service { api, status, code, message } => {
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
                write!(f, "{api} failed: no answer within {:.1} s (request-timeout)", after.as_secs_f64())
            }
        }
    }
}

impl std::error::Error for KvsError {}

impl KvsError {
    /// The service error code (`ResourceNotFoundException`...), if the service answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            KvsError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The table: what to do about this error.
    pub fn action(&self) -> Action {
        match self {
            KvsError::Config(_) | KvsError::Credentials(_) => Action::Fail,
            KvsError::Network { .. } | KvsError::Timeout { .. } => Action::Retry,
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
        KvsError::Service { api: "PutMedia", status, code: code.into(), message: String::new() }
    }

    #[test]
    fn the_action_table() {
        assert_eq!(service(404, "ResourceNotFoundException").action(), Action::Fail);
        assert_eq!(service(403, "InvalidSignatureException").action(), Action::Fail);
        assert_eq!(service(400, "ClientLimitExceededException").action(), Action::Retry);
        assert_eq!(service(400, "ConnectionLimitExceededException").action(), Action::Retry);
        assert_eq!(service(400, "InvalidEndpointException").action(), Action::RefreshEndpoint);
        assert_eq!(service(503, "ServiceUnavailableException").action(), Action::Retry);
        assert_eq!(service(502, "Whatever").action(), Action::Retry);
        assert_eq!(service(400, "Whatever").action(), Action::Fail);
        let timeout = KvsError::Timeout { api: "PutMedia", after: Duration::from_secs(5) };
        assert_eq!(timeout.action(), Action::Retry);
        assert_eq!(timeout.to_string(), "PutMedia failed: no answer within 5.0 s (request-timeout)");
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
