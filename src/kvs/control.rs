// SPDX-License-Identifier: MPL-2.0

//! The control plane through `aws-sdk-kinesisvideo`: DescribeStream, CreateStream when allowed, and
//! GetDataEndpoint, with errors turned into [`KvsError`].

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kinesisvideo::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesisvideo::types::{ApiName, Status};
use aws_smithy_types::error::display::DisplayErrorContext;

use super::config::AwsContext;
use super::error::KvsError;

/// What kvssink needs to know about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDescription {
    pub name: String,
    pub arn: String,
    pub retention_hours: i32,
    /// True when the stream was created by this call.
    pub created: bool,
}

/// What CreateStream is called with when the stream is missing and creation is allowed.
#[derive(Debug, Clone, Default)]
pub struct CreateParams {
    pub retention_hours: i32,
    pub kms_key_id: Option<String>,
    pub media_type: Option<String>,
    pub device_name: Option<String>,
    pub tags: HashMap<String, String>,
}

/// Turns an SDK error into a [`KvsError`] naming the API.
pub fn sdk_error<E, R>(api: &'static str, error: SdkError<E, R>, timeout: Duration) -> KvsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status_code();
            let meta = service.err();
            KvsError::Service {
                api,
                status,
                code: meta
                    .code()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP{status}")),
                message: meta.message().unwrap_or_default().to_owned(),
                request_id: service.raw().request_id(),
            }
        }
        SdkError::TimeoutError(_) => KvsError::Timeout {
            api,
            after: timeout,
        },
        SdkError::DispatchFailure(failure) if failure.is_timeout() => KvsError::Timeout {
            api,
            after: timeout,
        },
        _ => KvsError::Network {
            api,
            message: DisplayErrorContext(&error).to_string(),
        },
    }
}

/// The HTTP status of a raw SDK response.
pub trait HasStatus {
    fn status_code(&self) -> u16;
    /// The `x-amzn-RequestId` header.
    fn request_id(&self) -> Option<String>;
}

impl HasStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
    fn request_id(&self) -> Option<String> {
        self.headers().get("x-amzn-requestid").map(str::to_owned)
    }
}

/// DescribeStream; when the stream is missing and `create` is given, CreateStream, then DescribeStream until it
/// is ACTIVE. A stream being deleted, or missing with creation not allowed, is an error.
pub async fn ensure_stream(
    ctx: &AwsContext,
    name: &str,
    create: Option<&CreateParams>,
) -> Result<StreamDescription, KvsError> {
    let mut created = false;
    for _attempt in 0..20 {
        let described = ctx
            .kinesis_video
            .describe_stream()
            .stream_name(name)
            .send()
            .await;
        match described {
            Ok(output) => {
                let info = output.stream_info.ok_or_else(|| KvsError::BadResponse {
                    api: "DescribeStream",
                    message: "DescribeStream answered without StreamInfo".into(),
                })?;
                match info.status {
                    Some(Status::Active) | Some(Status::Updating) => {
                        return Ok(StreamDescription {
                            name: name.to_owned(),
                            arn: info.stream_arn.unwrap_or_default(),
                            retention_hours: info.data_retention_in_hours.unwrap_or(0),
                            created,
                        });
                    }
                    Some(Status::Deleting) => {
                        return Err(KvsError::Service {
                            api: "DescribeStream",
                            status: 200,
                            code: "StreamDeleting".into(),
                            message: format!("the stream {name:?} is being deleted"),
                            request_id: None,
                        });
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
            Err(error) => {
                let error = sdk_error("DescribeStream", error, ctx.request_timeout);
                if error.code() != Some("ResourceNotFoundException") || created {
                    return Err(error);
                }
                let Some(params) = create else {
                    return Err(KvsError::Service {
                        api: "DescribeStream",
                        status: 404,
                        code: "ResourceNotFoundException".into(),
                        message: format!(
                            "the stream {name:?} does not exist and creating it is not allowed (allow-create-stream=false)"
                        ),
                        request_id: error.request_id().map(str::to_owned),
                    });
                };
                let mut request = ctx
                    .kinesis_video
                    .create_stream()
                    .stream_name(name)
                    .data_retention_in_hours(params.retention_hours)
                    .set_kms_key_id(params.kms_key_id.clone())
                    .set_media_type(params.media_type.clone())
                    .set_device_name(params.device_name.clone());
                if !params.tags.is_empty() {
                    request = request.set_tags(Some(params.tags.clone()));
                }
                match request.send().await {
                    Ok(_) => created = true,
                    Err(error) => {
                        let error = sdk_error("CreateStream", error, ctx.request_timeout);
                        // Someone else created it in between: describe it.
                        if error.code() != Some("ResourceInUseException") {
                            return Err(error);
                        }
                    }
                }
            }
        }
    }
    Err(KvsError::Service {
        api: "DescribeStream",
        status: 200,
        code: "StreamNotActive".into(),
        message: format!("the stream {name:?} did not become ACTIVE"),
        request_id: None,
    })
}

/// GetDataEndpoint for one API: the `scheme://host[:port]` to send that API's requests to.
pub async fn data_endpoint(
    ctx: &AwsContext,
    stream: &str,
    api: ApiName,
) -> Result<String, KvsError> {
    let output = ctx
        .kinesis_video
        .get_data_endpoint()
        .stream_name(stream)
        .api_name(api)
        .send()
        .await
        .map_err(|e| sdk_error("GetDataEndpoint", e, ctx.request_timeout))?;
    output
        .data_endpoint
        .map(|e| e.trim_end_matches('/').to_owned())
        .ok_or_else(|| KvsError::BadResponse {
            api: "GetDataEndpoint",
            message: "GetDataEndpoint answered without DataEndpoint".into(),
        })
}
