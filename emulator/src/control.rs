// SPDX-License-Identifier: MPL-2.0

//! The control-plane operations: a JSON body in, a JSON body (or an [`ApiError`]) out.
//!
//! Every operation is a `POST` whose path is the operation name (KVS-PROTOCOL.md §1.1, §1.3). Requests are
//! checked against the service model's constraints (required members, lengths, patterns, ranges, enums); a
//! violation answers `InvalidArgumentException` (HTTP 400) with a message in the style of the service's
//! framework (`1 validation error detected: Value 'x' at 'streamName' failed to satisfy constraint: ...`).
//! A body that is not a JSON object, or a member of the wrong JSON type, answers `SerializationException`
//! (HTTP 400), which is what AWS JSON services answer before the operation sees the request; SDKs raise it as a
//! generic client error with that code.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use regex::Regex;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, json_response};
use crate::store::{MAX_TAGS_PER_STREAM, NewStream, Store, Stream};

/// ListStreams page size when `MaxResults` is not given (the model's documentation: "The default is 10,000").
pub const DEFAULT_LIST_STREAMS_PAGE_SIZE: usize = 10_000;

/// Tags per ListTagsForStream / ListTagsForResource page. A stream has at most 50 tags, so every tag fits in
/// the first page and `NextToken` never appears in practice; clients that do not page (the AWS CLI has no
/// paginator for these calls) therefore see every tag.
pub const TAGS_PAGE_SIZE: usize = MAX_TAGS_PER_STREAM;

/// Longest data retention accepted: 10 years, the documented maximum.
pub const MAX_DATA_RETENTION_HOURS: i64 = 87_600;

/// The operations, each with its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CreateStream,
    DescribeStream,
    ListStreams,
    DeleteStream,
    UpdateStream,
    UpdateDataRetention,
    GetDataEndpoint,
    TagStream,
    UntagStream,
    ListTagsForStream,
    TagResource,
    UntagResource,
    ListTagsForResource,
}

impl Operation {
    pub const ALL: [Operation; 13] = [
        Operation::CreateStream,
        Operation::DescribeStream,
        Operation::ListStreams,
        Operation::DeleteStream,
        Operation::UpdateStream,
        Operation::UpdateDataRetention,
        Operation::GetDataEndpoint,
        Operation::TagStream,
        Operation::UntagStream,
        Operation::ListTagsForStream,
        Operation::TagResource,
        Operation::UntagResource,
        Operation::ListTagsForResource,
    ];

    /// The request path, exactly as in the service model.
    pub fn path(self) -> &'static str {
        match self {
            Operation::CreateStream => "/createStream",
            Operation::DescribeStream => "/describeStream",
            Operation::ListStreams => "/listStreams",
            Operation::DeleteStream => "/deleteStream",
            Operation::UpdateStream => "/updateStream",
            Operation::UpdateDataRetention => "/updateDataRetention",
            Operation::GetDataEndpoint => "/getDataEndpoint",
            Operation::TagStream => "/tagStream",
            Operation::UntagStream => "/untagStream",
            Operation::ListTagsForStream => "/listTagsForStream",
            Operation::TagResource => "/TagResource",
            Operation::UntagResource => "/UntagResource",
            Operation::ListTagsForResource => "/ListTagsForResource",
        }
    }

    /// The operation at this path (case-sensitive, as the service's routing is).
    pub fn from_path(path: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.path() == path)
    }
}

/// Runs one operation and builds the HTTP answer.
///
/// `data_endpoint` is what GetDataEndpoint returns: the emulator's own base URL, no trailing slash.
impl Operation {
    /// True for the operations that create, change or delete streams (or their tags).
    pub fn changes_streams(self) -> bool {
        !matches!(
            self,
            Operation::DescribeStream
                | Operation::ListStreams
                | Operation::GetDataEndpoint
                | Operation::ListTagsForStream
                | Operation::ListTagsForResource
        )
    }
}

pub fn handle(
    op: Operation,
    body: &[u8],
    store: &Store,
    data_endpoint: &str,
) -> Response<Full<Bytes>> {
    match execute(op, body, store, data_endpoint) {
        Ok(output) => json_response(StatusCode::OK, output.to_string().into_bytes()),
        Err(err) => err.into_response(),
    }
}

/// Runs one operation: the JSON output, or the error to answer.
pub fn execute(
    op: Operation,
    body: &[u8],
    store: &Store,
    data_endpoint: &str,
) -> Result<Value, ApiError> {
    match op {
        Operation::CreateStream => create_stream(parse(body)?, store),
        Operation::DescribeStream => describe_stream(parse(body)?, store),
        Operation::ListStreams => list_streams(parse(body)?, store),
        Operation::DeleteStream => delete_stream(parse(body)?, store),
        Operation::UpdateStream => update_stream(parse(body)?, store),
        Operation::UpdateDataRetention => update_data_retention(parse(body)?, store),
        Operation::GetDataEndpoint => get_data_endpoint(parse(body)?, store, data_endpoint),
        Operation::TagStream => tag_stream(parse(body)?, store),
        Operation::UntagStream => untag_stream(parse(body)?, store),
        Operation::ListTagsForStream => list_tags_for_stream(parse(body)?, store),
        Operation::TagResource => tag_resource(parse(body)?, store),
        Operation::UntagResource => untag_resource(parse(body)?, store),
        Operation::ListTagsForResource => list_tags_for_resource(parse(body)?, store),
    }
}

/// Decodes a request body; an empty body counts as `{}`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::serialization(format!("Request body is not valid JSON: {err}")))?;
    if !value.is_object() {
        return Err(ApiError::serialization(
            "Request body must be a JSON object",
        ));
    }
    serde_json::from_value(value).map_err(|err| ApiError::serialization(err.to_string()))
}

// ---------------------------------------------------------------------------------------------------------
// Model constraints

/// A pattern of the model, anchored to the whole value.
struct Pattern {
    model: &'static str,
    regex: LazyLock<Regex>,
}

macro_rules! pattern {
    ($name:ident, $model:literal, $anchored:literal) => {
        static $name: Pattern = Pattern {
            model: $model,
            regex: LazyLock::new(|| Regex::new($anchored).expect("valid built-in regex")),
        };
    };
}

pattern!(NAME, "[a-zA-Z0-9_.-]+", r"^[a-zA-Z0-9_.-]+$");
pattern!(
    MEDIA_TYPE,
    r"[\w\-\.\+]+/[\w\-\.\+]+(,[\w\-\.\+]+/[\w\-\.\+]+)*",
    r"^[A-Za-z0-9_.+-]+/[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+/[A-Za-z0-9_.+-]+)*$"
);
pattern!(KMS_KEY_ID, ".+", r"^.+$");
pattern!(VERSION, "[a-zA-Z0-9]+", r"^[a-zA-Z0-9]+$");
pattern!(NEXT_TOKEN, "[a-zA-Z0-9+/=]*", r"^[a-zA-Z0-9+/=]*$");
pattern!(
    RESOURCE_ARN,
    r"arn:[a-z\d-]+:kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+",
    r"^arn:[a-z\d-]+:kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+$"
);
pattern!(
    TAG_KEY,
    r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$",
    r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$"
);
pattern!(
    TAG_VALUE,
    r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*",
    r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$"
);

const API_NAMES: &[&str] = &[
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
];

/// Collects constraint violations, then answers them all at once as the service's framework does.
#[derive(Default)]
struct Checks {
    errors: Vec<String>,
}

impl Checks {
    fn violation(&mut self, value: Option<&str>, member: &str, constraint: impl std::fmt::Display) {
        let value = match value {
            Some(value) => format!("'{value}'"),
            None => "null".to_owned(),
        };
        self.errors.push(format!(
            "Value {value} at '{}' failed to satisfy constraint: {constraint}",
            lower_first(member)
        ));
    }

    fn required<T>(&mut self, value: &Option<T>, member: &str) {
        if value.is_none() {
            self.violation(None, member, "Member must not be null");
        }
    }

    fn string(
        &mut self,
        value: Option<&str>,
        member: &str,
        min: usize,
        max: usize,
        pattern: Option<&Pattern>,
    ) {
        let Some(value) = value else { return };
        let length = value.chars().count();
        if length < min {
            self.violation(
                Some(value),
                member,
                format!("Member must have length greater than or equal to {min}"),
            );
        } else if length > max {
            self.violation(
                Some(value),
                member,
                format!("Member must have length less than or equal to {max}"),
            );
        } else if let Some(pattern) = pattern
            && !pattern.regex.is_match(value)
        {
            self.violation(
                Some(value),
                member,
                format!(
                    "Member must satisfy regular expression pattern: {}",
                    pattern.model
                ),
            );
        }
    }

    fn integer(&mut self, value: Option<i64>, member: &str, min: Option<i64>, max: Option<i64>) {
        let Some(value) = value else { return };
        let shown = value.to_string();
        if let Some(min) = min
            && value < min
        {
            self.violation(
                Some(&shown),
                member,
                format!("Member must have value greater than or equal to {min}"),
            );
        } else if let Some(max) = max
            && value > max
        {
            self.violation(
                Some(&shown),
                member,
                format!("Member must have value less than or equal to {max}"),
            );
        }
    }

    fn one_of(&mut self, value: Option<&str>, member: &str, allowed: &[&str]) {
        if let Some(value) = value
            && !allowed.contains(&value)
        {
            self.violation(
                Some(value),
                member,
                format!(
                    "Member must satisfy enum value set: [{}]",
                    allowed.join(", ")
                ),
            );
        }
    }

    fn count(&mut self, count: usize, member: &str, min: usize, max: usize) {
        let shown = format!("{count} entries");
        if count < min {
            self.violation(
                Some(&shown),
                member,
                format!("Member must have length greater than or equal to {min}"),
            );
        } else if count > max {
            self.violation(
                Some(&shown),
                member,
                format!("Member must have length less than or equal to {max}"),
            );
        }
    }

    fn stream_name(&mut self, value: Option<&str>, member: &str) {
        self.string(value, member, 1, 256, Some(&NAME));
    }

    fn device_name(&mut self, value: Option<&str>) {
        self.string(value, "DeviceName", 1, 128, Some(&NAME));
    }

    fn media_type(&mut self, value: Option<&str>) {
        self.string(value, "MediaType", 1, 128, Some(&MEDIA_TYPE));
    }

    fn version(&mut self, value: Option<&str>, member: &str) {
        self.string(value, member, 1, 64, Some(&VERSION));
    }

    fn resource_arn(&mut self, value: Option<&str>, member: &str) {
        self.string(value, member, 1, 1024, Some(&RESOURCE_ARN));
    }

    fn next_token(&mut self, value: Option<&str>) {
        self.string(value, "NextToken", 0, 1024, Some(&NEXT_TOKEN));
    }

    fn tag_key(&mut self, key: &str, member: &str) {
        self.string(Some(key), member, 1, 128, Some(&TAG_KEY));
    }

    fn tag_value(&mut self, value: &str, member: &str) {
        self.string(Some(value), member, 0, 256, Some(&TAG_VALUE));
    }

    fn tag_keys(&mut self, keys: &[String]) {
        self.count(keys.len(), "TagKeyList", 1, MAX_TAGS_PER_STREAM);
        for (i, key) in keys.iter().enumerate() {
            self.tag_key(key, &format!("tagKeyList.{}.member", i + 1));
        }
    }

    fn finish(self) -> Result<(), ApiError> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(ApiError::invalid_argument(format!(
                "1 validation error detected: {}",
                self.errors[0]
            ))),
            n => Err(ApiError::invalid_argument(format!(
                "{n} validation errors detected: {}",
                self.errors.join("; ")
            ))),
        }
    }
}

fn lower_first(member: &str) -> String {
    let mut chars = member.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Tags of a request: more than 50 answers `TagsPerResourceExceededLimitException` (the stream could not hold
/// them), bad keys or values answer `InvalidArgumentException` through `checks`.
fn check_tags<'a>(
    checks: &mut Checks,
    tags: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS_PER_STREAM {
        return Err(too_many_tags());
    }
    checks.count(tags.len(), "Tags", 1, MAX_TAGS_PER_STREAM);
    for (key, value) in tags {
        checks.tag_key(key, "tags.key");
        checks.tag_value(value, "tags.value");
    }
    Ok(())
}

fn too_many_tags() -> ApiError {
    ApiError::tags_per_resource_exceeded_limit(format!(
        "The resource cannot have more than {MAX_TAGS_PER_STREAM} tags."
    ))
}

/// The StreamARN check of the operations whose model lists `InvalidResourceFormatException`.
fn check_arn_format(arn: Option<&str>) -> Result<(), ApiError> {
    match arn {
        Some(arn) if arn.is_empty() || arn.len() > 1024 || !RESOURCE_ARN.regex.is_match(arn) => {
            Err(ApiError::invalid_resource_format(format!(
                "The StreamARN {arn} is not a valid ARN."
            )))
        }
        _ => Ok(()),
    }
}

fn check_version(stream: &Stream, current_version: &str) -> Result<(), ApiError> {
    if stream.version == current_version {
        Ok(())
    } else {
        Err(ApiError::version_mismatch(format!(
            "The version {current_version} of stream {} is not the current version.",
            stream.stream_name
        )))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Pagination: opaque tokens (base64, which fits the model's `[a-zA-Z0-9+/=]*`) holding the last item returned.

fn make_token(kind: &str, last: &str) -> String {
    BASE64.encode(format!("{kind}:{last}"))
}

/// The item after which a page starts, from a token of this kind; `None` for no (or an empty) token.
fn read_token(kind: &str, token: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(token) = token.filter(|token| !token.is_empty()) else {
        return Ok(None);
    };
    let invalid = || ApiError::invalid_argument(format!("The NextToken {token} is not valid."));
    let decoded = BASE64.decode(token).map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    match decoded.split_once(':') {
        Some((token_kind, last)) if token_kind == kind => Ok(Some(last.to_owned())),
        _ => Err(invalid()),
    }
}

/// Takes up to `limit` items; the token for the rest when there is more.
fn page<T>(
    mut items: impl Iterator<Item = T>,
    limit: usize,
    kind: &str,
    key: impl Fn(&T) -> &str,
) -> (Vec<T>, Option<String>) {
    let taken: Vec<T> = items.by_ref().take(limit).collect();
    let token = match (items.next(), taken.last()) {
        (Some(_), Some(last)) => Some(make_token(kind, key(last))),
        _ => None,
    };
    (taken, token)
}

// ---------------------------------------------------------------------------------------------------------
// Output

/// `StreamInfo` with its keys in alphabetical order, as the service prints them; optional members that were
/// never set are left out.
pub fn stream_info(stream: &Stream) -> Value {
    let mut info = Map::new();
    info.insert(
        "CreationTime".into(),
        json!(stream.creation_time_epoch_seconds()),
    );
    info.insert(
        "DataRetentionInHours".into(),
        json!(stream.data_retention_in_hours),
    );
    if let Some(device_name) = &stream.device_name {
        info.insert("DeviceName".into(), json!(device_name));
    }
    info.insert("KmsKeyId".into(), json!(stream.kms_key_id));
    if let Some(media_type) = &stream.media_type {
        info.insert("MediaType".into(), json!(media_type));
    }
    info.insert("Status".into(), json!(stream.status.as_str()));
    info.insert("StreamARN".into(), json!(stream.stream_arn));
    info.insert("StreamName".into(), json!(stream.stream_name));
    info.insert("Version".into(), json!(stream.version));
    Value::Object(info)
}

fn tags_output(tags: &BTreeMap<String, String>, after: Option<String>, kind: &str) -> Value {
    let remaining = tags
        .iter()
        .filter(|(key, _)| after.as_deref().is_none_or(|after| key.as_str() > after));
    let (taken, token) = page(remaining, TAGS_PAGE_SIZE, kind, |(key, _)| key.as_str());
    let tags: Map<String, Value> = taken
        .into_iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut output = Map::new();
    if let Some(token) = token {
        output.insert("NextToken".into(), json!(token));
    }
    output.insert("Tags".into(), Value::Object(tags));
    Value::Object(output)
}

// ---------------------------------------------------------------------------------------------------------
// Operations

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateStreamInput {
    device_name: Option<String>,
    stream_name: Option<String>,
    media_type: Option<String>,
    kms_key_id: Option<String>,
    data_retention_in_hours: Option<i64>,
    tags: Option<BTreeMap<String, String>>,
    stream_storage_configuration: Option<StreamStorageConfiguration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StreamStorageConfiguration {
    default_storage_tier: Option<String>,
}

fn create_stream(input: CreateStreamInput, store: &Store) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.required(&input.stream_name, "StreamName");
    checks.stream_name(input.stream_name.as_deref(), "StreamName");
    checks.device_name(input.device_name.as_deref());
    checks.media_type(input.media_type.as_deref());
    checks.string(
        input.kms_key_id.as_deref(),
        "KmsKeyId",
        1,
        2048,
        Some(&KMS_KEY_ID),
    );
    checks.integer(
        input.data_retention_in_hours,
        "DataRetentionInHours",
        Some(0),
        Some(MAX_DATA_RETENTION_HOURS),
    );
    if let Some(tags) = &input.tags {
        check_tags(
            &mut checks,
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
    }
    if let Some(storage) = &input.stream_storage_configuration {
        checks.required(
            &storage.default_storage_tier,
            "StreamStorageConfiguration.DefaultStorageTier",
        );
        checks.one_of(
            storage.default_storage_tier.as_deref(),
            "StreamStorageConfiguration.DefaultStorageTier",
            &["HOT", "WARM"],
        );
    }
    checks.finish()?;
    let Some(stream_name) = input.stream_name else {
        return Err(ApiError::internal("unchecked StreamName"));
    };
    let stream_arn = store.create(NewStream {
        stream_name,
        device_name: input.device_name,
        media_type: input.media_type,
        kms_key_id: input.kms_key_id,
        data_retention_in_hours: u32::try_from(input.data_retention_in_hours.unwrap_or(0))
            .unwrap_or(0),
        tags: input.tags.unwrap_or_default(),
    })?;
    Ok(json!({ "StreamARN": stream_arn }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeStreamInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

fn describe_stream(input: DescribeStreamInput, store: &Store) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.stream_name(input.stream_name.as_deref(), "StreamName");
    checks.resource_arn(input.stream_arn.as_deref(), "StreamARN");
    checks.finish()?;
    let streams = store.lock();
    let stream = streams.find(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    Ok(json!({ "StreamInfo": stream_info(stream) }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListStreamsInput {
    max_results: Option<i64>,
    next_token: Option<String>,
    stream_name_condition: Option<StreamNameCondition>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StreamNameCondition {
    comparison_operator: Option<String>,
    comparison_value: Option<String>,
}

fn list_streams(input: ListStreamsInput, store: &Store) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.integer(input.max_results, "MaxResults", Some(1), Some(10_000));
    checks.next_token(input.next_token.as_deref());
    let mut prefix = None;
    if let Some(condition) = &input.stream_name_condition {
        checks.one_of(
            condition.comparison_operator.as_deref(),
            "StreamNameCondition.ComparisonOperator",
            &["BEGINS_WITH"],
        );
        checks.stream_name(
            condition.comparison_value.as_deref(),
            "StreamNameCondition.ComparisonValue",
        );
        prefix = condition.comparison_value.clone();
    }
    checks.finish()?;
    let after = read_token("ListStreams", input.next_token.as_deref())?;
    let limit = input
        .max_results
        .map_or(DEFAULT_LIST_STREAMS_PAGE_SIZE, |n| {
            n.clamp(1, 10_000) as usize
        });

    let streams = store.lock();
    let candidates: Box<dyn Iterator<Item = &Stream>> = match &after {
        Some(after) => Box::new(streams.after(after)),
        None => Box::new(streams.iter()),
    };
    let matching = candidates.filter(|stream| {
        prefix
            .as_deref()
            .is_none_or(|prefix| stream.stream_name.starts_with(prefix))
    });
    let (taken, token) = page(matching, limit, "ListStreams", |stream| {
        stream.stream_name.as_str()
    });
    let mut output = Map::new();
    if let Some(token) = token {
        output.insert("NextToken".into(), json!(token));
    }
    output.insert(
        "StreamInfoList".into(),
        Value::Array(taken.into_iter().map(stream_info).collect()),
    );
    Ok(Value::Object(output))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteStreamInput {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    current_version: Option<String>,
}

fn delete_stream(input: DeleteStreamInput, store: &Store) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.required(&input.stream_arn, "StreamARN");
    checks.resource_arn(input.stream_arn.as_deref(), "StreamARN");
    checks.version(input.current_version.as_deref(), "CurrentVersion");
    checks.finish()?;
    let mut streams = store.lock();
    let stream = streams.find(None, input.stream_arn.as_deref())?;
    if let Some(current_version) = &input.current_version {
        check_version(stream, current_version)?;
    }
    streams.remove(None, input.stream_arn.as_deref())?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateStreamInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    current_version: Option<String>,
    device_name: Option<String>,
    media_type: Option<String>,
}

fn update_stream(input: UpdateStreamInput, store: &Store) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.stream_name(input.stream_name.as_deref(), "StreamName");
    checks.resource_arn(input.stream_arn.as_deref(), "StreamARN");
    checks.required(&input.current_version, "CurrentVersion");
    checks.version(input.current_version.as_deref(), "CurrentVersion");
    checks.device_name(input.device_name.as_deref());
    checks.media_type(input.media_type.as_deref());
    checks.finish()?;
    let mut streams = store.lock();
    let stream = streams.find_mut(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    check_version(stream, input.current_version.as_deref().unwrap_or_default())?;
    if let Some(device_name) = input.device_name {
        stream.device_name = Some(device_name);
    }
    if let Some(media_type) = input.media_type {
        stream.media_type = Some(media_type);
    }
    stream.bump_version();
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateDataRetentionInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    current_version: Option<String>,
    operation: Option<String>,
    data_retention_change_in_hours: Option<i64>,
}

fn update_data_retention(
    input: UpdateDataRetentionInput,
    store: &Store,
) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.stream_name(input.stream_name.as_deref(), "StreamName");
    checks.resource_arn(input.stream_arn.as_deref(), "StreamARN");
    checks.required(&input.current_version, "CurrentVersion");
    checks.version(input.current_version.as_deref(), "CurrentVersion");
    checks.required(&input.operation, "Operation");
    checks.one_of(
        input.operation.as_deref(),
        "Operation",
        &["INCREASE_DATA_RETENTION", "DECREASE_DATA_RETENTION"],
    );
    checks.required(
        &input.data_retention_change_in_hours,
        "DataRetentionChangeInHours",
    );
    checks.integer(
        input.data_retention_change_in_hours,
        "DataRetentionChangeInHours",
        Some(1),
        None,
    );
    checks.finish()?;
    let change = input.data_retention_change_in_hours.unwrap_or_default();
    let mut streams = store.lock();
    let stream = streams.find_mut(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    check_version(stream, input.current_version.as_deref().unwrap_or_default())?;
    let current = i64::from(stream.data_retention_in_hours);
    let new = if input.operation.as_deref() == Some("INCREASE_DATA_RETENTION") {
        let new = current.saturating_add(change);
        if new > MAX_DATA_RETENTION_HOURS {
            return Err(ApiError::invalid_argument(format!(
                "The data retention cannot exceed {MAX_DATA_RETENTION_HOURS} hours; it is {current} hours, and \
                 increasing it by {change} hours would make it {new}."
            )));
        }
        new
    } else {
        let new = current - change;
        if new < 0 {
            return Err(ApiError::invalid_argument(format!(
                "The data retention is {current} hours; it cannot be decreased by {change} hours."
            )));
        }
        new
    };
    stream.data_retention_in_hours = u32::try_from(new).unwrap_or(0);
    stream.bump_version();
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetDataEndpointInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    #[serde(rename = "APIName")]
    api_name: Option<String>,
}

fn get_data_endpoint(
    input: GetDataEndpointInput,
    store: &Store,
    data_endpoint: &str,
) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.stream_name(input.stream_name.as_deref(), "StreamName");
    checks.resource_arn(input.stream_arn.as_deref(), "StreamARN");
    checks.required(&input.api_name, "APIName");
    checks.one_of(input.api_name.as_deref(), "APIName", API_NAMES);
    checks.finish()?;
    store
        .lock()
        .find(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    Ok(json!({ "DataEndpoint": data_endpoint }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagStreamInput {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_name: Option<String>,
    tags: Option<BTreeMap<String, String>>,
}

fn tag_stream(input: TagStreamInput, store: &Store) -> Result<Value, ApiError> {
    check_arn_format(input.stream_arn.as_deref())?;
    let mut checks = Checks::default();
    checks.stream_name(input.stream_name.as_deref(), "StreamName");
    checks.required(&input.tags, "Tags");
    if let Some(tags) = &input.tags {
        check_tags(
            &mut checks,
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
    }
    checks.finish()?;
    add_tags(
        store,
        input.stream_name.as_deref(),
        input.stream_arn.as_deref(),
        input.tags.unwrap_or_default(),
    )
}

fn add_tags(
    store: &Store,
    name: Option<&str>,
    arn: Option<&str>,
    tags: BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let mut streams = store.lock();
    let stream = streams.find_mut(name, arn)?;
    let added = tags
        .keys()
        .filter(|key| !stream.tags.contains_key(*key))
        .count();
    if stream.tags.len() + added > MAX_TAGS_PER_STREAM {
        return Err(too_many_tags());
    }
    stream.tags.extend(tags);
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UntagStreamInput {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_name: Option<String>,
    tag_key_list: Option<Vec<String>>,
}

fn untag_stream(input: UntagStreamInput, store: &Store) -> Result<Value, ApiError> {
    check_arn_format(input.stream_arn.as_deref())?;
    let mut checks = Checks::default();
    checks.stream_name(input.stream_name.as_deref(), "StreamName");
    checks.required(&input.tag_key_list, "TagKeyList");
    if let Some(keys) = &input.tag_key_list {
        checks.tag_keys(keys);
    }
    checks.finish()?;
    remove_tags(
        store,
        input.stream_name.as_deref(),
        input.stream_arn.as_deref(),
        input.tag_key_list,
    )
}

fn remove_tags(
    store: &Store,
    name: Option<&str>,
    arn: Option<&str>,
    keys: Option<Vec<String>>,
) -> Result<Value, ApiError> {
    let mut streams = store.lock();
    let stream = streams.find_mut(name, arn)?;
    for key in keys.unwrap_or_default() {
        stream.tags.remove(&key);
    }
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsForStreamInput {
    next_token: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_name: Option<String>,
}

fn list_tags_for_stream(input: ListTagsForStreamInput, store: &Store) -> Result<Value, ApiError> {
    check_arn_format(input.stream_arn.as_deref())?;
    let mut checks = Checks::default();
    checks.next_token(input.next_token.as_deref());
    checks.stream_name(input.stream_name.as_deref(), "StreamName");
    checks.finish()?;
    let after = read_token("ListTags", input.next_token.as_deref())?;
    let streams = store.lock();
    let stream = streams.find(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    Ok(tags_output(&stream.tags, after, "ListTags"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagResourceInput {
    #[serde(rename = "ResourceARN")]
    resource_arn: Option<String>,
    tags: Option<Vec<Tag>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    key: Option<String>,
    value: Option<String>,
}

fn tag_resource(input: TagResourceInput, store: &Store) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.required(&input.resource_arn, "ResourceARN");
    checks.resource_arn(input.resource_arn.as_deref(), "ResourceARN");
    checks.required(&input.tags, "Tags");
    let mut tags = BTreeMap::new();
    if let Some(list) = &input.tags {
        if list.len() > MAX_TAGS_PER_STREAM {
            return Err(too_many_tags());
        }
        checks.count(list.len(), "Tags", 1, MAX_TAGS_PER_STREAM);
        for (i, tag) in list.iter().enumerate() {
            checks.required(&tag.key, &format!("tags.{}.member.key", i + 1));
            checks.required(&tag.value, &format!("tags.{}.member.value", i + 1));
            if let (Some(key), Some(value)) = (&tag.key, &tag.value) {
                checks.tag_key(key, &format!("tags.{}.member.key", i + 1));
                checks.tag_value(value, &format!("tags.{}.member.value", i + 1));
                tags.insert(key.clone(), value.clone());
            }
        }
    }
    checks.finish()?;
    add_tags(store, None, input.resource_arn.as_deref(), tags)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UntagResourceInput {
    #[serde(rename = "ResourceARN")]
    resource_arn: Option<String>,
    tag_key_list: Option<Vec<String>>,
}

fn untag_resource(input: UntagResourceInput, store: &Store) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.required(&input.resource_arn, "ResourceARN");
    checks.resource_arn(input.resource_arn.as_deref(), "ResourceARN");
    checks.required(&input.tag_key_list, "TagKeyList");
    if let Some(keys) = &input.tag_key_list {
        checks.tag_keys(keys);
    }
    checks.finish()?;
    remove_tags(
        store,
        None,
        input.resource_arn.as_deref(),
        input.tag_key_list,
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsForResourceInput {
    next_token: Option<String>,
    #[serde(rename = "ResourceARN")]
    resource_arn: Option<String>,
}

fn list_tags_for_resource(
    input: ListTagsForResourceInput,
    store: &Store,
) -> Result<Value, ApiError> {
    let mut checks = Checks::default();
    checks.next_token(input.next_token.as_deref());
    checks.required(&input.resource_arn, "ResourceARN");
    checks.resource_arn(input.resource_arn.as_deref(), "ResourceARN");
    checks.finish()?;
    let after = read_token("ListTags", input.next_token.as_deref())?;
    let streams = store.lock();
    let stream = streams.find(None, input.resource_arn.as_deref())?;
    Ok(tags_output(&stream.tags, after, "ListTags"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(store: &Store, op: Operation, body: Value) -> Result<Value, ApiError> {
        execute(op, body.to_string().as_bytes(), store, "http://127.0.0.1:1")
    }

    #[test]
    fn paths_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_path(op.path()), Some(op));
        }
        assert_eq!(Operation::from_path("/CreateStream"), None);
        assert_eq!(Operation::from_path("/tagresource"), None);
    }

    #[test]
    fn empty_body_is_an_empty_object_and_bad_json_is_a_serialization_error() {
        let store = Store::new("us-east-1");
        let output = execute(Operation::ListStreams, b"", &store, "x").unwrap();
        assert_eq!(output, json!({"StreamInfoList": []}));
        for body in [&b"{"[..], b"[]", b"\"x\"", b"{\"MaxResults\":\"ten\"}"] {
            let err = execute(Operation::ListStreams, body, &store, "x").unwrap_err();
            assert_eq!(err.name, "SerializationException", "{body:?}");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn validation_messages_look_like_the_service() {
        let store = Store::new("us-east-1");
        let err = run(&store, Operation::CreateStream, json!({})).unwrap_err();
        assert_eq!(err.name, "InvalidArgumentException");
        assert_eq!(
            err.message,
            "1 validation error detected: Value null at 'streamName' failed to satisfy constraint: Member must \
             not be null"
        );
        let err = run(
            &store,
            Operation::CreateStream,
            json!({"StreamName": "a b", "MediaType": "h264"}),
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "2 validation errors detected: Value 'a b' at 'streamName' failed to satisfy constraint: Member must \
             satisfy regular expression pattern: [a-zA-Z0-9_.-]+; Value 'h264' at 'mediaType' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: \
             [\\w\\-\\.\\+]+/[\\w\\-\\.\\+]+(,[\\w\\-\\.\\+]+/[\\w\\-\\.\\+]+)*"
        );
    }

    #[test]
    fn media_types_and_tags_follow_the_model_patterns() {
        let store = Store::new("us-east-1");
        for media_type in [
            "video/h264",
            "video/h264,audio/aac",
            "video/x-matroska",
            "application/vnd.a+b",
        ] {
            let body =
                json!({"StreamName": format!("s{}", media_type.len()), "MediaType": media_type});
            run(&store, Operation::CreateStream, body).unwrap();
        }
        for media_type in ["video", "video/h264,", "vidéo/h264", "video/h 264"] {
            let err = run(
                &store,
                Operation::CreateStream,
                json!({"StreamName": "x", "MediaType": media_type}),
            )
            .unwrap_err();
            assert_eq!(err.name, "InvalidArgumentException", "{media_type}");
        }
        let tags = json!({"Équipe": "caméra 1", "a:b/c=d+e-f@g_h.i": "", "数字": "１２３"});
        run(
            &store,
            Operation::CreateStream,
            json!({"StreamName": "tagged", "Tags": tags}),
        )
        .unwrap();
        for tags in [
            json!({"": "v"}),
            json!({"k": "v!"}),
            json!({"k#": "v"}),
            json!({}),
        ] {
            let err = run(
                &store,
                Operation::CreateStream,
                json!({"StreamName": "bad", "Tags": tags}),
            )
            .unwrap_err();
            assert_eq!(err.name, "InvalidArgumentException");
        }
    }

    #[test]
    fn list_streams_pages_with_opaque_tokens() {
        let store = Store::new("us-east-1");
        for name in ["cam-3", "cam-1", "door", "cam-2"] {
            run(&store, Operation::CreateStream, json!({"StreamName": name})).unwrap();
        }
        let condition = json!({"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam"});
        let first = run(
            &store,
            Operation::ListStreams,
            json!({"MaxResults": 2, "StreamNameCondition": condition}),
        )
        .unwrap();
        let names = |output: &Value| -> Vec<String> {
            output["StreamInfoList"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["StreamName"].to_string())
                .collect()
        };
        assert_eq!(names(&first), ["\"cam-1\"", "\"cam-2\""]);
        let token = first["NextToken"].as_str().unwrap();
        assert!(NEXT_TOKEN.regex.is_match(token));
        let second = run(
            &store,
            Operation::ListStreams,
            json!({"MaxResults": 2, "StreamNameCondition": condition, "NextToken": token}),
        )
        .unwrap();
        assert_eq!(names(&second), ["\"cam-3\""]);
        assert!(second.get("NextToken").is_none());

        let err = run(
            &store,
            Operation::ListStreams,
            json!({"NextToken": "bm9wZQ=="}),
        )
        .unwrap_err();
        assert_eq!(err.name, "InvalidArgumentException");
        let err = run(&store, Operation::ListStreams, json!({"MaxResults": 10001})).unwrap_err();
        assert_eq!(err.name, "InvalidArgumentException");
    }

    #[test]
    fn tag_pages() {
        let tags: BTreeMap<String, String> =
            (0..7).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
        let first = tags_output(&tags, None, "ListTags");
        assert_eq!(first["Tags"].as_object().unwrap().len(), 7);
        assert!(first.get("NextToken").is_none());

        let (taken, token) = page(tags.iter(), 3, "ListTags", |(k, _)| k.as_str());
        assert_eq!(taken.len(), 3);
        let after = read_token("ListTags", token.as_deref()).unwrap();
        assert_eq!(after.as_deref(), Some("k2"));
        let rest = tags_output(&tags, after, "ListTags");
        let keys: Vec<_> = rest["Tags"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["k3", "k4", "k5", "k6"]);
        assert!(read_token("ListStreams", token.as_deref()).is_err());
    }

    #[test]
    fn stream_info_keys_are_alphabetical() {
        let store = Store::new("us-east-1");
        run(
            &store,
            Operation::CreateStream,
            json!({"StreamName": "s", "DeviceName": "d", "MediaType": "video/h264"}),
        )
        .unwrap();
        let output = run(
            &store,
            Operation::DescribeStream,
            json!({"StreamName": "s"}),
        )
        .unwrap();
        let text = output["StreamInfo"].to_string();
        let keys = [
            "CreationTime",
            "DataRetentionInHours",
            "DeviceName",
            "KmsKeyId",
            "MediaType",
            "Status",
            "StreamARN",
            "StreamName",
            "Version",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\"")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}
