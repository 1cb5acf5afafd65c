// SPDX-License-Identifier: MPL-2.0

//! Errors as the service puts them on the wire.
//!
//! Every error answer has the HTTP status from the service model, the headers
//! `x-amzn-ErrorType: <Name>:https://kinesisvideo.amazonaws.com/doc/2017-09-30/`, `x-amzn-RequestId: <uuid>` and
//! `Content-Type: application/json`, and the body `{"__type":"<Name>","Message":"..."}`. The real service was seen
//! sending only `Message` in the body; `__type` is added because botocore, the Java SDK and the Rust SDK all read
//! it when the header is missing (a proxy may drop it), and all of them ignore it otherwise.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

/// Suffix of the `x-amzn-ErrorType` header value.
pub const ERROR_TYPE_SUFFIX: &str = ":https://kinesisvideo.amazonaws.com/doc/2017-09-30/";

/// The message of ResourceNotFoundException for a stream, as the real service words it.
pub const STREAM_NOT_FOUND: &str = "The requested stream is not found or not active.";

/// One error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The error name, e.g. `ResourceNotFoundException`: what SDKs turn into an exception class.
    pub name: Cow<'static, str>,
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        status: StatusCode,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            name: name.into(),
            status,
            message: message.into(),
        }
    }

    /// 404, a stream (or other resource) that does not exist.
    pub fn resource_not_found(message: impl Into<String>) -> ApiError {
        ApiError::new("ResourceNotFoundException", StatusCode::NOT_FOUND, message)
    }

    /// 404 with the service's message for a missing stream.
    pub fn stream_not_found() -> ApiError {
        ApiError::resource_not_found(STREAM_NOT_FOUND)
    }

    /// 400, e.g. a stream name already in use.
    pub fn resource_in_use(message: impl Into<String>) -> ApiError {
        ApiError::new("ResourceInUseException", StatusCode::BAD_REQUEST, message)
    }

    /// 400, a parameter that breaks the model's constraints.
    pub fn invalid_argument(message: impl Into<String>) -> ApiError {
        ApiError::new("InvalidArgumentException", StatusCode::BAD_REQUEST, message)
    }

    /// 400, a `CurrentVersion` that is not the stream's version.
    pub fn version_mismatch(message: impl Into<String>) -> ApiError {
        ApiError::new("VersionMismatchException", StatusCode::BAD_REQUEST, message)
    }

    /// 400, a malformed resource ARN (on the operations whose model lists this error).
    pub fn invalid_resource_format(message: impl Into<String>) -> ApiError {
        ApiError::new(
            "InvalidResourceFormatException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    /// 400, more than 50 tags on a resource.
    pub fn tags_per_resource_exceeded_limit(message: impl Into<String>) -> ApiError {
        ApiError::new(
            "TagsPerResourceExceededLimitException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    /// 400, throttling.
    pub fn client_limit_exceeded(message: impl Into<String>) -> ApiError {
        ApiError::new(
            "ClientLimitExceededException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    /// 401, the model's "not authorised" error.
    pub fn not_authorized(message: impl Into<String>) -> ApiError {
        ApiError::new("NotAuthorizedException", StatusCode::UNAUTHORIZED, message)
    }

    /// 400, a body that is not JSON or has a member of the wrong JSON type (what the service's framework
    /// answers before the operation sees the request).
    pub fn serialization(message: impl Into<String>) -> ApiError {
        ApiError::new("SerializationException", StatusCode::BAD_REQUEST, message)
    }

    /// 404, a path that is no operation.
    pub fn unknown_operation(path: &str) -> ApiError {
        ApiError::new(
            "UnknownOperationException",
            StatusCode::NOT_FOUND,
            format!("Unknown operation {path}"),
        )
    }

    /// 413, a request body above the emulator's limit.
    pub fn request_too_large(limit: usize) -> ApiError {
        ApiError::new(
            "RequestEntityTooLargeException",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body larger than {limit} bytes"),
        )
    }

    /// 405, a method other than POST on an operation path.
    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            "MethodNotAllowedException",
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Method {method} is not allowed here; every operation is a POST"),
        )
    }

    /// 500, a bug in the emulator.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            "InternalFailure",
            StatusCode::INTERNAL_SERVER_ERROR,
            message,
        )
    }

    // Signature errors, worded as AWS words them.

    /// 403, no `Authorization` header and no presigned query.
    pub fn missing_authentication_token() -> ApiError {
        ApiError::new(
            "MissingAuthenticationTokenException",
            StatusCode::FORBIDDEN,
            "Missing Authentication Token",
        )
    }

    /// 403, an access key the emulator was not given.
    /// 403, temporary credentials past their expiration.
    pub fn expired_token() -> ApiError {
        ApiError::new(
            "ExpiredTokenException",
            StatusCode::FORBIDDEN,
            "The security token included in the request is expired",
        )
    }

    pub fn unrecognized_client() -> ApiError {
        ApiError::new(
            "UnrecognizedClientException",
            StatusCode::FORBIDDEN,
            "The security token included in the request is invalid.",
        )
    }

    /// 403, a signature that does not match.
    pub fn signature_mismatch() -> ApiError {
        ApiError::invalid_signature(
            "The request signature we calculated does not match the signature you provided. Check your AWS \
             Secret Access Key and signing method. Consult the service documentation for details.",
        )
    }

    /// 403, any other problem with a signature that could be parsed (expired, wrong scope...).
    pub fn invalid_signature(message: impl Into<String>) -> ApiError {
        ApiError::new("InvalidSignatureException", StatusCode::FORBIDDEN, message)
    }

    /// 400, an `Authorization` header or presigned query that lacks a part.
    pub fn incomplete_signature(message: impl Into<String>) -> ApiError {
        ApiError::new(
            "IncompleteSignatureException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    /// The HTTP answer, with a fresh request id.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "__type": self.name, "Message": self.message });
        let mut response = json_response(self.status, body.to_string().into_bytes());
        let error_type = format!("{}{ERROR_TYPE_SUFFIX}", self.name);
        if let Ok(value) = HeaderValue::from_str(&error_type) {
            response.headers_mut().insert("x-amzn-ErrorType", value);
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.name,
            self.status.as_u16(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// A fresh `x-amzn-RequestId` value (a random UUID, as the service uses).
pub fn new_request_id() -> HeaderValue {
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(&uuid::Uuid::new_v4().hyphenated().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-0000-0000-000000000000"))
}

/// A JSON answer with `Content-Type: application/json` and a fresh `x-amzn-RequestId`.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-amzn-RequestId", new_request_id());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_response_has_the_wire_format() {
        let response = ApiError::stream_not_found().into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let headers = response.headers();
        assert_eq!(
            headers["x-amzn-errortype"],
            "ResourceNotFoundException:https://kinesisvideo.amazonaws.com/doc/2017-09-30/"
        );
        assert_eq!(headers["content-type"], "application/json");
        let request_id = headers["x-amzn-requestid"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"__type": "ResourceNotFoundException", "Message": STREAM_NOT_FOUND})
        );
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }
}
