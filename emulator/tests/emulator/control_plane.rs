// SPDX-License-Identifier: MPL-2.0

//! The control plane over raw HTTP/1.1 against an in-process emulator: every operation's success shape and the
//! main errors, with exact status, headers and body.

use std::time::SystemTime;

use kvs_emulator::{Config, Emulator};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ERROR_TYPE_SUFFIX: &str = ":https://kinesisvideo.amazonaws.com/doc/2017-09-30/";
const NOT_FOUND_MESSAGE: &str = "The requested stream is not found or not active.";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "not JSON ({err}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A success: 200, JSON, a request id.
    fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_request_id(&self);
        self.json()
    }

    /// An error with the service's wire format.
    fn assert_error(&self, status: u16, name: &str, message: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("x-amzn-errortype"),
            Some(format!("{name}{ERROR_TYPE_SUFFIX}").as_str())
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_request_id(self);
        let body = self.json();
        let object = body.as_object().unwrap();
        assert_eq!(object.len(), 2, "{body}");
        assert_eq!(body["__type"], name);
        let actual = body["Message"].as_str().unwrap();
        if let Some(message) = message {
            assert_eq!(actual, message);
        } else {
            assert!(!actual.is_empty());
        }
    }
}

fn assert_request_id(reply: &Reply) {
    let id = reply.header("x-amzn-requestid").expect("x-amzn-RequestId");
    let groups: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
    assert!(
        id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
        "{id}"
    );
}

async fn start(credentials: &[(&str, &str)]) -> Emulator {
    let credentials = credentials
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect();
    Emulator::start(Config {
        credentials,
        ..Config::default()
    })
    .await
    .unwrap()
}

/// Sends raw request bytes and reads the answer (the request must say `connection: close`).
async fn exchange(emulator: &Emulator, request: &[u8]) -> Reply {
    let mut conn = TcpStream::connect(emulator.local_addr()).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (k, v) = line.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn request(
    emulator: &Emulator,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        emulator.local_addr(),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    exchange(emulator, &bytes).await
}

async fn post(emulator: &Emulator, path: &str, body: Value) -> Reply {
    request(
        emulator,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

async fn create(emulator: &Emulator, name: &str) -> String {
    let output = post(emulator, "/createStream", json!({"StreamName": name}))
        .await
        .ok();
    output["StreamARN"].as_str().unwrap().to_owned()
}

async fn describe(emulator: &Emulator, name: &str) -> Value {
    post(emulator, "/describeStream", json!({"StreamName": name}))
        .await
        .ok()["StreamInfo"]
        .clone()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn create_and_describe_stream() {
    let emulator = start(&[]).await;
    let before = now_ms();
    let output = post(
        &emulator,
        "/createStream",
        json!({
            "DeviceName": "camera-1",
            "StreamName": "front-door",
            "MediaType": "video/h264",
            "DataRetentionInHours": 24,
            "Tags": {"site": "home"}
        }),
    )
    .await
    .ok();
    let after = now_ms();
    assert_eq!(output.as_object().unwrap().len(), 1);
    let arn = output["StreamARN"].as_str().unwrap();
    let millis: u64 = arn
        .strip_prefix("arn:aws:kinesisvideo:us-east-1:123456789012:stream/front-door/")
        .unwrap_or_else(|| panic!("{arn}"))
        .parse()
        .unwrap();
    assert!((before..=after).contains(&millis));

    let reply = post(
        &emulator,
        "/describeStream",
        json!({"StreamName": "front-door"}),
    )
    .await;
    let raw = reply.text();
    let info = reply.ok()["StreamInfo"].clone();
    assert_eq!(
        info,
        json!({
            "CreationTime": millis as f64 / 1000.0,
            "DataRetentionInHours": 24,
            "DeviceName": "camera-1",
            "KmsKeyId": "arn:aws:kms:us-east-1:123456789012:alias/aws/kinesisvideo",
            "MediaType": "video/h264",
            "Status": "ACTIVE",
            "StreamARN": arn,
            "StreamName": "front-door",
            "Version": info["Version"],
        })
    );
    let version = info["Version"].as_str().unwrap();
    assert_eq!(version.len(), 20);
    assert!(version.chars().all(|c| c.is_ascii_alphanumeric()));
    // CreationTime is a JSON number in epoch seconds, keys come in alphabetical order.
    assert!(
        raw.starts_with(r#"{"StreamInfo":{"CreationTime":1"#),
        "{raw}"
    );
    assert!(raw.find("\"StreamARN\"").unwrap() < raw.find("\"StreamName\"").unwrap());

    let by_arn = post(&emulator, "/describeStream", json!({"StreamARN": arn}))
        .await
        .ok();
    assert_eq!(by_arn["StreamInfo"], info);

    // Optional members that were never set are left out; KmsKeyId given is kept.
    post(
        &emulator,
        "/createStream",
        json!({"StreamName": "bare", "KmsKeyId": "alias/mine"}),
    )
    .await
    .ok();
    let bare = describe(&emulator, "bare").await;
    assert!(bare.get("DeviceName").is_none() && bare.get("MediaType").is_none());
    assert_eq!(bare["DataRetentionInHours"], 0);
    assert_eq!(bare["KmsKeyId"], "alias/mine");
}

#[tokio::test]
async fn create_stream_errors() {
    let emulator = start(&[]).await;
    create(&emulator, "taken").await;
    post(&emulator, "/createStream", json!({"StreamName": "taken"}))
        .await
        .assert_error(
            400,
            "ResourceInUseException",
            Some("The stream taken already exists."),
        );
    post(&emulator, "/createStream", json!({})).await.assert_error(
        400,
        "InvalidArgumentException",
        Some(
            "1 validation error detected: Value null at 'streamName' failed to satisfy constraint: Member must not \
             be null",
        ),
    );
    let long = "x".repeat(257);
    for body in [
        json!({"StreamName": "has space"}),
        json!({"StreamName": long}),
        json!({"StreamName": "ok", "DeviceName": "bad/name"}),
        json!({"StreamName": "ok", "MediaType": "h264"}),
        json!({"StreamName": "ok", "DataRetentionInHours": -1}),
        json!({"StreamName": "ok", "Tags": {"": "v"}}),
        json!({"StreamName": "ok", "Tags": {"k": "x".repeat(257)}}),
        json!({"StreamName": "ok", "StreamStorageConfiguration": {"DefaultStorageTier": "COLD"}}),
    ] {
        post(&emulator, "/createStream", body).await.assert_error(
            400,
            "InvalidArgumentException",
            None,
        );
    }
    let tags: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    post(
        &emulator,
        "/createStream",
        json!({"StreamName": "ok", "Tags": tags}),
    )
    .await
    .assert_error(400, "TagsPerResourceExceededLimitException", None);
    // Nothing was created by the failed calls.
    let list = post(&emulator, "/listStreams", json!({})).await.ok();
    assert_eq!(list["StreamInfoList"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn missing_streams_are_404() {
    let emulator = start(&[]).await;
    let arn = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/nope/1700000000000";
    for (path, body) in [
        ("/describeStream", json!({"StreamName": "nope"})),
        ("/describeStream", json!({"StreamARN": arn})),
        ("/deleteStream", json!({"StreamARN": arn})),
        (
            "/updateStream",
            json!({"StreamName": "nope", "CurrentVersion": "abc"}),
        ),
        (
            "/updateDataRetention",
            json!({"StreamName": "nope", "CurrentVersion": "abc", "Operation": "INCREASE_DATA_RETENTION",
                   "DataRetentionChangeInHours": 1}),
        ),
        (
            "/getDataEndpoint",
            json!({"StreamName": "nope", "APIName": "PUT_MEDIA"}),
        ),
        (
            "/tagStream",
            json!({"StreamName": "nope", "Tags": {"a": "b"}}),
        ),
        (
            "/untagStream",
            json!({"StreamName": "nope", "TagKeyList": ["a"]}),
        ),
        ("/listTagsForStream", json!({"StreamName": "nope"})),
        (
            "/TagResource",
            json!({"ResourceARN": arn, "Tags": [{"Key": "a", "Value": "b"}]}),
        ),
        (
            "/UntagResource",
            json!({"ResourceARN": arn, "TagKeyList": ["a"]}),
        ),
        ("/ListTagsForResource", json!({"ResourceARN": arn})),
    ] {
        let reply = post(&emulator, path, body).await;
        reply.assert_error(404, "ResourceNotFoundException", Some(NOT_FOUND_MESSAGE));
    }
    // Neither a name nor an ARN.
    post(&emulator, "/describeStream", json!({}))
        .await
        .assert_error(400, "InvalidArgumentException", None);
}

#[tokio::test]
async fn list_streams_pages_and_filters() {
    let emulator = start(&[]).await;
    for name in ["cam-b", "door", "cam-a", "cam-c"] {
        create(&emulator, name).await;
    }
    let names = |output: &Value| -> Vec<String> {
        output["StreamInfoList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|info| info["StreamName"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = post(&emulator, "/listStreams", json!({})).await.ok();
    assert_eq!(names(&all), ["cam-a", "cam-b", "cam-c", "door"]);
    assert!(all.get("NextToken").is_none());
    assert_eq!(all["StreamInfoList"][3], describe(&emulator, "door").await);

    let condition = json!({"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam-"});
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..5 {
        let mut body = json!({"MaxResults": 2, "StreamNameCondition": condition});
        if let Some(token) = &token {
            body["NextToken"] = json!(token);
        }
        let page = post(&emulator, "/listStreams", body).await.ok();
        seen.extend(names(&page));
        token = page
            .get("NextToken")
            .map(|t| t.as_str().unwrap().to_owned());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["cam-a", "cam-b", "cam-c"]);

    for body in [
        json!({"MaxResults": 0}),
        json!({"MaxResults": 10001}),
        json!({"NextToken": "not a token!"}),
        json!({"NextToken": "Zm9v"}),
        json!({"StreamNameCondition": {"ComparisonOperator": "ENDS_WITH", "ComparisonValue": "x"}}),
    ] {
        post(&emulator, "/listStreams", body).await.assert_error(
            400,
            "InvalidArgumentException",
            None,
        );
    }
}

#[tokio::test]
async fn delete_stream() {
    let emulator = start(&[]).await;
    let arn = create(&emulator, "gone").await;
    let version = describe(&emulator, "gone").await["Version"]
        .as_str()
        .unwrap()
        .to_owned();
    post(
        &emulator,
        "/deleteStream",
        json!({"StreamARN": arn, "CurrentVersion": "stale"}),
    )
    .await
    .assert_error(400, "VersionMismatchException", None);
    post(&emulator, "/deleteStream", json!({"StreamName": "gone"}))
        .await
        .assert_error(400, "InvalidArgumentException", None);
    post(&emulator, "/deleteStream", json!({"StreamARN": "arn:nope"}))
        .await
        .assert_error(400, "InvalidArgumentException", None);
    let output = post(
        &emulator,
        "/deleteStream",
        json!({"StreamARN": arn, "CurrentVersion": version}),
    )
    .await
    .ok();
    assert_eq!(output, json!({}));
    post(&emulator, "/describeStream", json!({"StreamName": "gone"}))
        .await
        .assert_error(404, "ResourceNotFoundException", Some(NOT_FOUND_MESSAGE));
    // The name is free again at once, with a new ARN.
    let new_arn = create(&emulator, "gone").await;
    assert_ne!(new_arn, arn);
    post(&emulator, "/deleteStream", json!({"StreamARN": arn}))
        .await
        .assert_error(404, "ResourceNotFoundException", None);
    assert_eq!(
        post(&emulator, "/deleteStream", json!({"StreamARN": new_arn}))
            .await
            .ok(),
        json!({})
    );
}

#[tokio::test]
async fn update_stream_and_data_retention() {
    let emulator = start(&[]).await;
    let arn = create(&emulator, "s").await;
    let v1 = describe(&emulator, "s").await["Version"]
        .as_str()
        .unwrap()
        .to_owned();
    let output = post(
        &emulator,
        "/updateStream",
        json!({"StreamARN": arn, "CurrentVersion": v1, "DeviceName": "dev", "MediaType": "video/h265"}),
    )
    .await
    .ok();
    assert_eq!(output, json!({}));
    let info = describe(&emulator, "s").await;
    assert_eq!(
        (info["DeviceName"].as_str(), info["MediaType"].as_str()),
        (Some("dev"), Some("video/h265"))
    );
    let v2 = info["Version"].as_str().unwrap().to_owned();
    assert_ne!(v2, v1);
    post(
        &emulator,
        "/updateStream",
        json!({"StreamName": "s", "CurrentVersion": v1}),
    )
    .await
    .assert_error(400, "VersionMismatchException", None);
    post(&emulator, "/updateStream", json!({"StreamName": "s"})).await.assert_error(
        400,
        "InvalidArgumentException",
        Some(
            "1 validation error detected: Value null at 'currentVersion' failed to satisfy constraint: Member must \
             not be null",
        ),
    );

    let retention = |version: &str, operation: &str, hours: i64| {
        json!({"StreamName": "s", "CurrentVersion": version, "Operation": operation,
               "DataRetentionChangeInHours": hours})
    };
    let output = post(
        &emulator,
        "/updateDataRetention",
        retention(&v2, "INCREASE_DATA_RETENTION", 48),
    )
    .await
    .ok();
    assert_eq!(output, json!({}));
    let info = describe(&emulator, "s").await;
    assert_eq!(info["DataRetentionInHours"], 48);
    let v3 = info["Version"].as_str().unwrap().to_owned();
    assert_ne!(v3, v2);
    post(
        &emulator,
        "/updateDataRetention",
        retention(&v3, "DECREASE_DATA_RETENTION", 12),
    )
    .await
    .ok();
    let info = describe(&emulator, "s").await;
    assert_eq!(info["DataRetentionInHours"], 36);
    let v4 = info["Version"].as_str().unwrap().to_owned();

    post(
        &emulator,
        "/updateDataRetention",
        retention(&v3, "INCREASE_DATA_RETENTION", 1),
    )
    .await
    .assert_error(400, "VersionMismatchException", None);
    for body in [
        retention(&v4, "DECREASE_DATA_RETENTION", 37),
        retention(&v4, "INCREASE_DATA_RETENTION", 0),
        retention(&v4, "DOUBLE_DATA_RETENTION", 1),
        retention(&v4, "INCREASE_DATA_RETENTION", 87_600),
    ] {
        post(&emulator, "/updateDataRetention", body)
            .await
            .assert_error(400, "InvalidArgumentException", None);
    }
    assert_eq!(describe(&emulator, "s").await["DataRetentionInHours"], 36);
}

#[tokio::test]
async fn get_data_endpoint_returns_the_emulator_for_every_api() {
    let emulator = start(&[]).await;
    let arn = create(&emulator, "s").await;
    for api in [
        "PUT_MEDIA",
        "GET_MEDIA",
        "LIST_FRAGMENTS",
        "GET_MEDIA_FOR_FRAGMENT_LIST",
        "GET_HLS_STREAMING_SESSION_URL",
        "GET_DASH_STREAMING_SESSION_URL",
        "GET_CLIP",
        "GET_IMAGES",
    ] {
        let output = post(
            &emulator,
            "/getDataEndpoint",
            json!({"StreamName": "s", "APIName": api}),
        )
        .await
        .ok();
        assert_eq!(output, json!({"DataEndpoint": emulator.base_url()}));
        let output = post(
            &emulator,
            "/getDataEndpoint",
            json!({"StreamARN": arn, "APIName": api}),
        )
        .await
        .ok();
        assert_eq!(output["DataEndpoint"], emulator.base_url());
    }
    assert!(!emulator.base_url().ends_with('/'));
    post(
        &emulator,
        "/getDataEndpoint",
        json!({"StreamName": "s", "APIName": "PUT_STUFF"}),
    )
    .await
    .assert_error(400, "InvalidArgumentException", None);
    post(&emulator, "/getDataEndpoint", json!({"StreamName": "s"}))
        .await
        .assert_error(400, "InvalidArgumentException", None);
}

#[tokio::test]
async fn stream_tags() {
    let emulator = start(&[]).await;
    let arn = create(&emulator, "s").await;
    let list = |body: Value| {
        let emulator = &emulator;
        async move { post(emulator, "/listTagsForStream", body).await.ok() }
    };
    assert_eq!(list(json!({"StreamName": "s"})).await, json!({"Tags": {}}));
    let output = post(
        &emulator,
        "/tagStream",
        json!({"StreamARN": arn, "Tags": {"a": "1", "b": "2"}}),
    )
    .await
    .ok();
    assert_eq!(output, json!({}));
    post(
        &emulator,
        "/tagStream",
        json!({"StreamName": "s", "Tags": {"b": "two", "c": ""}}),
    )
    .await
    .ok();
    assert_eq!(
        list(json!({"StreamARN": arn})).await,
        json!({"Tags": {"a": "1", "b": "two", "c": ""}})
    );
    post(
        &emulator,
        "/untagStream",
        json!({"StreamName": "s", "TagKeyList": ["a", "zzz"]}),
    )
    .await
    .ok();
    assert_eq!(
        list(json!({"StreamName": "s"})).await,
        json!({"Tags": {"b": "two", "c": ""}})
    );

    // 50 tags at most per stream.
    let tags: serde_json::Map<String, Value> =
        (0..48).map(|i| (format!("k{i:02}"), json!("v"))).collect();
    post(
        &emulator,
        "/tagStream",
        json!({"StreamName": "s", "Tags": tags}),
    )
    .await
    .ok();
    post(
        &emulator,
        "/tagStream",
        json!({"StreamName": "s", "Tags": {"one-more": "v"}}),
    )
    .await
    .assert_error(400, "TagsPerResourceExceededLimitException", None);
    // Overwriting existing keys is fine.
    post(
        &emulator,
        "/tagStream",
        json!({"StreamName": "s", "Tags": {"b": "2"}}),
    )
    .await
    .ok();
    let all = list(json!({"StreamName": "s"})).await;
    assert_eq!(all["Tags"].as_object().unwrap().len(), 50);
    assert!(all.get("NextToken").is_none());

    // Malformed ARNs: the stream-tag APIs say InvalidResourceFormatException.
    for path in ["/tagStream", "/untagStream", "/listTagsForStream"] {
        let body =
            json!({"StreamARN": "arn:aws:s3:::bucket", "Tags": {"a": "b"}, "TagKeyList": ["a"]});
        post(&emulator, path, body)
            .await
            .assert_error(400, "InvalidResourceFormatException", None);
    }
    post(&emulator, "/tagStream", json!({"StreamName": "s"}))
        .await
        .assert_error(400, "InvalidArgumentException", None);
    post(
        &emulator,
        "/untagStream",
        json!({"StreamName": "s", "TagKeyList": []}),
    )
    .await
    .assert_error(400, "InvalidArgumentException", None);
}

#[tokio::test]
async fn resource_tags() {
    let emulator = start(&[]).await;
    let arn = create(&emulator, "s").await;
    let output = post(
        &emulator,
        "/TagResource",
        json!({"ResourceARN": arn, "Tags": [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]}),
    )
    .await
    .ok();
    assert_eq!(output, json!({}));
    let listed = post(
        &emulator,
        "/ListTagsForResource",
        json!({"ResourceARN": arn}),
    )
    .await
    .ok();
    assert_eq!(listed, json!({"Tags": {"a": "1", "b": "2"}}));
    post(
        &emulator,
        "/UntagResource",
        json!({"ResourceARN": arn, "TagKeyList": ["a"]}),
    )
    .await
    .ok();
    let listed = post(
        &emulator,
        "/ListTagsForResource",
        json!({"ResourceARN": arn}),
    )
    .await
    .ok();
    assert_eq!(listed, json!({"Tags": {"b": "2"}}));
    // The same tags through the stream APIs.
    let listed = post(&emulator, "/listTagsForStream", json!({"StreamName": "s"}))
        .await
        .ok();
    assert_eq!(listed, json!({"Tags": {"b": "2"}}));

    for (path, body) in [
        (
            "/TagResource",
            json!({"ResourceARN": "nope", "Tags": [{"Key": "a", "Value": "1"}]}),
        ),
        (
            "/TagResource",
            json!({"ResourceARN": arn, "Tags": [{"Key": "a"}]}),
        ),
        ("/TagResource", json!({"ResourceARN": arn})),
        ("/UntagResource", json!({"ResourceARN": arn})),
        ("/ListTagsForResource", json!({})),
    ] {
        post(&emulator, path, body)
            .await
            .assert_error(400, "InvalidArgumentException", None);
    }
    let too_many: Vec<Value> = (0..51)
        .map(|i| json!({"Key": format!("k{i}"), "Value": "v"}))
        .collect();
    post(
        &emulator,
        "/TagResource",
        json!({"ResourceARN": arn, "Tags": too_many}),
    )
    .await
    .assert_error(400, "TagsPerResourceExceededLimitException", None);
    // A signaling-channel ARN: not a stream the emulator has.
    let channel = "arn:aws:kinesisvideo:us-east-1:123456789012:channel/c/1700000000000";
    post(
        &emulator,
        "/ListTagsForResource",
        json!({"ResourceARN": channel}),
    )
    .await
    .assert_error(404, "ResourceNotFoundException", None);
}

#[tokio::test]
async fn malformed_requests_and_unknown_paths() {
    let emulator = start(&[]).await;
    for body in [&b"{"[..], b"[1]", b"{\"StreamName\": 5}", b"\xff"] {
        let reply = request(
            &emulator,
            "POST",
            "/describeStream",
            &[("content-type", "application/json")],
            body,
        )
        .await;
        reply.assert_error(400, "SerializationException", None);
    }
    // An empty body is an empty request.
    let reply = request(&emulator, "POST", "/listStreams", &[], b"").await;
    assert_eq!(reply.ok(), json!({"StreamInfoList": []}));

    for (method, path) in [
        ("POST", "/noSuchOperation"),
        ("POST", "/DescribeStream"),
        ("GET", "/describeStream"),
    ] {
        let reply = request(&emulator, method, path, &[], b"{}").await;
        reply.assert_error(404, "UnknownOperationException", None);
    }

    let big = vec![b' '; kvs_emulator::MAX_CONTROL_BODY_BYTES + 1];
    let reply = request(&emulator, "POST", "/listStreams", &[], &big).await;
    assert_eq!(reply.status, 413);
}

mod signatures {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;

    /// A control-plane call signed by `aws-sigv4` with these keys.
    async fn signed_post(
        emulator: &Emulator,
        path: &str,
        body: Value,
        key_id: &str,
        secret: &str,
    ) -> Reply {
        let body = body.to_string();
        let host = emulator.local_addr().to_string();
        let headers = [
            ("host", host.as_str()),
            ("content-type", "application/json"),
        ];
        let identity = Credentials::new(key_id, secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("kinesisvideo")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let url = format!("{}{path}", emulator.base_url());
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let signed: Vec<(String, String)> = instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        all.extend(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        request(emulator, "POST", path, &all, body.as_bytes()).await
    }

    #[tokio::test]
    async fn signed_requests_pass_and_bad_ones_answer_403() {
        let emulator = start(&[("AKIDTEST", "secret/one"), ("AKIDOTHER", "secret-two")]).await;
        let output = signed_post(
            &emulator,
            "/createStream",
            json!({"StreamName": "s"}),
            "AKIDTEST",
            "secret/one",
        )
        .await
        .ok();
        assert!(output["StreamARN"].is_string());
        let listed = signed_post(
            &emulator,
            "/listStreams",
            json!({}),
            "AKIDOTHER",
            "secret-two",
        )
        .await
        .ok();
        assert_eq!(listed["StreamInfoList"].as_array().unwrap().len(), 1);

        signed_post(&emulator, "/listStreams", json!({}), "AKIDTEST", "wrong").await.assert_error(
            403,
            "InvalidSignatureException",
            Some(
                "The request signature we calculated does not match the signature you provided. Check your AWS \
                 Secret Access Key and signing method. Consult the service documentation for details.",
            ),
        );
        signed_post(
            &emulator,
            "/listStreams",
            json!({}),
            "AKIDNOBODY",
            "secret/one",
        )
        .await
        .assert_error(
            403,
            "UnrecognizedClientException",
            Some("The security token included in the request is invalid."),
        );
        post(&emulator, "/listStreams", json!({}))
            .await
            .assert_error(
                403,
                "MissingAuthenticationTokenException",
                Some("Missing Authentication Token"),
            );
        // Unknown paths are checked too: like AWS, an unsigned call learns nothing.
        post(&emulator, "/noSuchOperation", json!({}))
            .await
            .assert_error(403, "MissingAuthenticationTokenException", None);
        let reply = signed_post(
            &emulator,
            "/noSuchOperation",
            json!({}),
            "AKIDTEST",
            "secret/one",
        )
        .await;
        reply.assert_error(404, "UnknownOperationException", None);
        // The admin paths are never checked.
        let reply = request(&emulator, "GET", "/_emulator/no-such-endpoint", &[], b"").await;
        assert_ne!(reply.status, 403);
        assert_ne!(
            reply.header("x-amzn-errortype").unwrap_or_default(),
            "MissingAuthenticationTokenException"
        );
    }
}
