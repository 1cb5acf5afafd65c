// SPDX-License-Identifier: MPL-2.0

//! PutMedia and GetMedia against an in-process emulator, with bodies made by real GStreamer pipelines
//! (`x264enc ! matroskamux streamable=true`, with and without audio): the ACK sequence line by line, and
//! every frame read back through GetMedia byte for byte.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use kvs_emulator::{Config, Emulator};
use kvs_mkv::ebml::{id, read_uint};
use kvs_mkv::{Event, tags};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type UploadBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, std::convert::Infallible>>>;

/// Encodes a short clip with gst-launch-1.0; `audio` adds an AAC track.
fn encode(name: &str, frames: u32, audio: bool) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("{name}.mkv"));
    let mut pipeline = format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 option-string=scenecut=0 bframes=0 ! h264parse ! queue \
         ! matroskamux name=mux streamable=true ! filesink location={}",
        path.display()
    );
    if audio {
        pipeline.push_str(&format!(
            " audiotestsrc num-buffers={} samplesperbuffer=1024 ! audio/x-raw,rate=48000 ! avenc_aac ! aacparse \
             ! queue ! mux.",
            frames * 48000 / 30 / 1024
        ));
    }
    let status = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .status()
        .expect("gst-launch-1.0 (install gstreamer1.0-tools)");
    assert!(status.success(), "pipeline failed: {pipeline}");
    std::fs::read(&path).unwrap()
}

/// Every SimpleBlock of a Matroska stream as (track, absolute timecode, whole block data).
fn blocks(data: &[u8]) -> Vec<(u64, i64, Bytes)> {
    let mut out = Vec::new();
    let mut cluster_timecode = 0i64;
    let events = kvs_mkv::read_all(data).unwrap();
    for event in events {
        match event {
            Event::ClusterChild(el) if el.id == id::TIMECODE => {
                cluster_timecode = read_uint(&el.data()).unwrap() as i64
            }
            Event::ClusterChild(el) if el.id == id::SIMPLE_BLOCK => {
                let info = kvs_mkv::block::parse_simple_block(&el.data()).unwrap();
                out.push((
                    info.track,
                    cluster_timecode + i64::from(info.relative_timecode),
                    el.to_bytes().slice(el.header_len..),
                ));
            }
            _ => {}
        }
    }
    out
}

fn cluster_timecodes(data: &[u8]) -> Vec<u64> {
    let events = kvs_mkv::read_all(data).unwrap();
    events
        .into_iter()
        .filter_map(|event| match event {
            Event::ClusterChild(el) if el.id == id::TIMECODE => {
                Some(read_uint(&el.data()).unwrap())
            }
            _ => None,
        })
        .collect()
}

async fn post(
    emulator: &Emulator,
    path: &str,
    headers: &[(&str, &str)],
    body: UploadBody,
) -> (u16, hyper::body::Incoming) {
    let stream = TcpStream::connect(emulator.local_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::post(path).header("host", emulator.local_addr().to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(body).unwrap())
        .await
        .unwrap();
    (response.status().as_u16(), response.into_body())
}

fn body_channel() -> (
    mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>,
    UploadBody,
) {
    let (tx, rx) = mpsc::channel(4);
    (tx, StreamBody::new(ReceiverStream::new(rx)))
}

async fn json_call(emulator: &Emulator, path: &str, body: Value) -> (u16, Bytes) {
    let (tx, stream_body) = body_channel();
    tx.send(Ok(Frame::data(Bytes::from(body.to_string()))))
        .await
        .unwrap();
    drop(tx);
    let (status, incoming) = post(
        emulator,
        path,
        &[("content-type", "application/json")],
        stream_body,
    )
    .await;
    (status, incoming.collect().await.unwrap().to_bytes())
}

/// Uploads `data` in pieces of `piece` bytes and returns the ACK lines.
async fn put_media(emulator: &Emulator, stream: &str, data: &[u8], piece: usize) -> Vec<Value> {
    let (tx, stream_body) = body_channel();
    let headers = [
        ("x-amzn-stream-name", stream),
        ("x-amzn-fragment-timecode-type", "RELATIVE"),
        ("x-amzn-producer-start-timestamp", "1795312662.5"),
        ("x-amzn-fragment-acknowledgment-required", "1"),
    ];
    let data = Bytes::copy_from_slice(data);
    let writer = tokio::spawn(async move {
        for start in (0..data.len()).step_by(piece) {
            let end = (start + piece).min(data.len());
            if tx
                .send(Ok(Frame::data(data.slice(start..end))))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (status, incoming) = post(emulator, "/putMedia", &headers, stream_body).await;
    assert_eq!(status, 200);
    let acks = tokio::time::timeout(Duration::from_secs(20), incoming.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    writer.await.unwrap();
    String::from_utf8(acks.to_vec())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("ack {line:?}: {e}")))
        .collect()
}

async fn create_stream(emulator: &Emulator, name: &str, retention: u32) {
    let (status, body) = json_call(
        emulator,
        "/createStream",
        json!({"StreamName": name, "DataRetentionInHours": retention}),
    )
    .await;
    assert_eq!(status, 200, "{body:?}");
}

async fn get_media(emulator: &Emulator, stream: &str, selector: Value) -> Bytes {
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(30),
        json_call(
            emulator,
            "/getMedia",
            json!({"StreamName": stream, "StartSelector": selector}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body:?}");
    body
}

async fn round_trip(audio: bool) {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    let name = if audio { "av" } else { "video" };
    let input = encode(name, 90, audio);
    create_stream(&emulator, name, 2).await;
    let acks = put_media(&emulator, name, &input, 1000).await;

    // One BUFFERING, RECEIVED, PERSISTED triple per cluster, in order, with the cluster timecodes as sent.
    let timecodes = cluster_timecodes(&input);
    assert!(timecodes.len() >= 3, "{timecodes:?}");
    assert_eq!(acks.len(), timecodes.len() * 3, "{acks:#?}");
    let mut previous_number = String::new();
    for (i, timecode) in timecodes.iter().enumerate() {
        let triple = &acks[i * 3..i * 3 + 3];
        let kinds: Vec<&str> = triple
            .iter()
            .map(|a| a["EventType"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["BUFFERING", "RECEIVED", "PERSISTED"],
            "fragment {i}"
        );
        for ack in triple {
            assert_eq!(ack["FragmentTimecode"].as_u64(), Some(*timecode));
            assert_eq!(ack["FragmentNumber"], triple[0]["FragmentNumber"]);
        }
        let number = triple[0]["FragmentNumber"].as_str().unwrap().to_owned();
        assert_eq!(number.len(), 47);
        assert!(number > previous_number);
        previous_number = number;
    }

    // Every frame comes back through GetMedia, byte for byte and in order.
    let output = get_media(&emulator, name, json!({"StartSelectorType": "EARLIEST"})).await;
    let expected = blocks(&input);
    let actual = blocks(&output);
    assert_eq!(actual.len(), expected.len());
    assert!(actual == expected, "frames differ");
    if audio {
        assert!(
            expected.iter().any(|(track, _, _)| *track == 2),
            "no audio frames in the input"
        );
    }
    assert_eq!(
        output
            .windows(4)
            .filter(|w| *w == [0x1A, 0x45, 0xDF, 0xA3])
            .count(),
        timecodes.len()
    );
}

#[tokio::test]
async fn video_round_trip_acks_and_frames() {
    round_trip(false).await;
}

#[tokio::test]
async fn audio_and_video_round_trip_acks_and_frames() {
    round_trip(true).await;
}

#[tokio::test]
async fn getmedia_chunks_carry_the_service_tags() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    let input = encode("tags", 60, false);
    create_stream(&emulator, "tags", 1).await;
    let acks = put_media(&emulator, "tags", &input, 4096).await;
    let numbers: Vec<&str> = acks
        .iter()
        .filter(|a| a["EventType"] == "PERSISTED")
        .map(|a| a["FragmentNumber"].as_str().unwrap())
        .collect();
    let output = get_media(&emulator, "tags", json!({"StartSelectorType": "EARLIEST"})).await;

    let mut layout = Vec::new();
    let mut tag_values: Vec<(String, String)> = Vec::new();
    for event in kvs_mkv::read_all(&output).unwrap() {
        match event {
            Event::EbmlHeader(_) => layout.push("EBML".to_owned()),
            Event::SegmentStart { size, .. } => layout.push(format!("Segment({size:?})")),
            Event::Element(el) if el.id == id::TAGS => {
                let parsed = tags::parse_tags(&el.data()).unwrap();
                layout.push(format!(
                    "Tags[{}]",
                    parsed
                        .iter()
                        .map(|t| t.name.trim_start_matches("AWS_KINESISVIDEO_"))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
                tag_values.extend(parsed.into_iter().map(|t| (t.name, t.value)));
            }
            Event::Element(el) => layout.push(format!("{:X}", el.id)),
            Event::ClusterStart { .. } => layout.push("Cluster".to_owned()),
            _ => {}
        }
    }
    let per_fragment = [
        "EBML",
        "Segment(None)",
        "Tags[ENCODER]",
        "1549A966",
        "1654AE6B",
        "Tags[FRAGMENT_NUMBER,SERVER_TIMESTAMP,PRODUCER_TIMESTAMP]",
        "Cluster",
        "Tags[MILLIS_BEHIND_NOW,CONTINUATION_TOKEN]",
    ];
    // Tags that preceded the first Cluster (here matroskamux's ENCODER tag) are part of the header and,
    // as in the service's recorded output, also the first fragment's own metadata after its Cluster.
    let mut expected: Vec<String> = Vec::new();
    for i in 0..numbers.len() {
        expected.extend(per_fragment[..7].iter().map(|s| s.to_string()));
        if i == 0 {
            expected.push("Tags[ENCODER]".to_owned());
        }
        expected.push(per_fragment[7].to_owned());
    }
    assert_eq!(layout, expected);
    let values = |name: &str| -> Vec<&str> {
        tag_values
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values(tags::FRAGMENT_NUMBER), numbers);
    assert_eq!(values(tags::CONTINUATION_TOKEN), numbers);
    // RELATIVE: producer timestamp = start header + cluster timecode.
    assert_eq!(values(tags::PRODUCER_TIMESTAMP)[0], "1795312662.500");
    assert_eq!(values(tags::PRODUCER_TIMESTAMP)[1], "1795312663.500");

    // CONTINUATION_TOKEN resumes with the next fragment; FRAGMENT_NUMBER starts at that fragment.
    // Each of these starts at the second fragment (30 frames in): the continuation token of the first, the
    // second's number (AfterFragmentNumber is inclusive here), a producer time inside the second.
    let selectors = [
        json!({"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": numbers[0]}),
        json!({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": numbers[1]}),
        json!({"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": 1795312663.6}),
    ];
    for selector in selectors {
        let read = get_media(&emulator, "tags", selector.clone()).await;
        assert!(blocks(&read) == blocks(&output)[30..], "{selector}");
    }
}

#[tokio::test]
async fn not_matroska_gets_an_invalid_mkv_data_error_ack() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    create_stream(&emulator, "bad", 1).await;
    let acks = put_media(
        &emulator,
        "bad",
        b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
        100,
    )
    .await;
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0]["EventType"], "ERROR");
    assert_eq!(acks[0]["ErrorId"], 4006);
    assert_eq!(acks[0]["ErrorCode"], "INVALID_MKV_DATA");
}

#[tokio::test]
async fn putmedia_to_a_missing_stream_is_404() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    let (tx, body) = body_channel();
    drop(tx);
    let headers = [
        ("x-amzn-stream-name", "nope"),
        ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
    ];
    let (status, incoming) = post(&emulator, "/putMedia", &headers, body).await;
    assert_eq!(status, 404);
    let body = incoming.collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["__type"], "ResourceNotFoundException");
}

#[tokio::test]
async fn live_getmedia_follows_an_upload_in_progress() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    let input = encode("live", 60, false);
    create_stream(&emulator, "live", 1).await;
    let (tx, stream_body) = body_channel();
    let headers = [
        ("x-amzn-stream-name", "live"),
        ("x-amzn-fragment-timecode-type", "RELATIVE"),
    ];
    let (status, acks) = post(&emulator, "/putMedia", &headers, stream_body).await;
    assert_eq!(status, 200);
    // The reader starts before any data: NOW waits for the first fragment.
    let reader = {
        let addr = emulator.local_addr();
        tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let body = json!({"StreamName": "live", "StartSelector": {"StartSelectorType": "NOW"}})
                .to_string();
            let request = hyper::Request::post("/getMedia")
                .header("host", addr.to_string())
                .body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap().to_bytes()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for piece in input.chunks(2000) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(tx);
    acks.collect().await.unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(
        blocks(&output) == blocks(&input),
        "live output differs from the input"
    );
}

#[tokio::test]
async fn connections_end_with_4003_at_the_maximum_duration_and_idle_acks_then_close() {
    let put_media = kvs_emulator::putmedia::PutMediaConfig {
        max_connection_duration: Duration::from_millis(1500),
        idle_ack_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let emulator = Emulator::start(Config {
        put_media,
        ..Config::default()
    })
    .await
    .unwrap();
    let input = encode("duration", 60, false);
    create_stream(&emulator, "duration", 1).await;
    let (tx, stream_body) = body_channel();
    let headers = [
        ("x-amzn-stream-name", "duration"),
        ("x-amzn-fragment-timecode-type", "RELATIVE"),
    ];
    let (status, acks) = post(&emulator, "/putMedia", &headers, stream_body).await;
    assert_eq!(status, 200);
    // The first fragment and a bit of the second, then silence: IDLE ACKs, then 4003 at 1.5 s.
    let second_cluster = input
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0x1F, 0x43, 0xB6, 0x75])
        .nth(1)
        .unwrap()
        .0;
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(
        &input[..second_cluster + 200],
    ))))
    .await
    .unwrap();
    let acks = tokio::time::timeout(Duration::from_secs(10), acks.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let acks: Vec<Value> = String::from_utf8(acks.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = acks
        .iter()
        .map(|a| a["EventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds[..4],
        ["BUFFERING", "RECEIVED", "PERSISTED", "BUFFERING"],
        "{kinds:?}"
    );
    assert!(
        kinds[4..kinds.len() - 1].iter().all(|k| *k == "IDLE") && kinds.len() >= 6,
        "{kinds:?}"
    );
    let last = acks.last().unwrap();
    assert_eq!(
        (last["ErrorId"].as_u64(), last["ErrorCode"].as_str()),
        (Some(4003), Some("MAX_CONNECTION_DURATION_REACHED"))
    );
    assert_eq!(last["FragmentNumber"], acks[3]["FragmentNumber"]);
    drop(tx);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let put_media = kvs_emulator::putmedia::PutMediaConfig {
        idle_ack_interval: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(900),
        ..Default::default()
    };
    let emulator = Emulator::start(Config {
        put_media,
        ..Config::default()
    })
    .await
    .unwrap();
    create_stream(&emulator, "idle", 1).await;
    let (tx, stream_body) = body_channel();
    let headers = [
        ("x-amzn-stream-name", "idle"),
        ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
    ];
    let (status, acks) = post(&emulator, "/putMedia", &headers, stream_body).await;
    assert_eq!(status, 200);
    let acks = tokio::time::timeout(Duration::from_secs(5), acks.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let lines: Vec<&str> = std::str::from_utf8(&acks).unwrap().lines().collect();
    assert!(
        lines.len() >= 2 && lines.iter().all(|l| *l == "{\"EventType\":\"IDLE\"}"),
        "{lines:?}"
    );
    drop(tx);
}

#[tokio::test]
async fn list_fragments_and_get_media_for_fragment_list() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    let input = encode("archive", 150, false);
    create_stream(&emulator, "archive", 1).await;
    let acks = put_media(&emulator, "archive", &input, 8192).await;
    let numbers: Vec<String> = acks
        .iter()
        .filter(|a| a["EventType"] == "PERSISTED")
        .map(|a| a["FragmentNumber"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(numbers.len(), 5);

    // All fragments, paged two at a time.
    let mut listed = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = json!({"StreamName": "archive", "MaxResults": 2});
        if let Some(token) = &token {
            request["NextToken"] = json!(token);
        }
        let (status, body) = json_call(&emulator, "/listFragments", request).await;
        assert_eq!(status, 200, "{body:?}");
        let page: Value = serde_json::from_slice(&body).unwrap();
        let fragments = page["Fragments"].as_array().unwrap();
        assert!(fragments.len() <= 2);
        listed.extend(fragments.iter().cloned());
        match page["NextToken"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    let listed_numbers: Vec<&str> = listed
        .iter()
        .map(|f| f["FragmentNumber"].as_str().unwrap())
        .collect();
    assert_eq!(listed_numbers, numbers);
    assert_eq!(listed[0]["ProducerTimestamp"].as_f64(), Some(1795312662.5));
    assert_eq!(listed[1]["ProducerTimestamp"].as_f64(), Some(1795312663.5));
    assert!(
        listed
            .iter()
            .all(|f| f["FragmentSizeInBytes"].as_u64().unwrap() > 1000)
    );
    // 30 frames at 30 fps: the first frame to the last is 29 frames (966 ms with 1-ms timecodes).
    assert!(
        listed
            .iter()
            .all(|f| (960..=1000).contains(&f["FragmentLengthInMilliseconds"].as_i64().unwrap()))
    );

    // A producer-time range: inclusive on the fragment start times.
    let selector = json!({"FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": 1795312663.5, "EndTimestamp": 1795312665.5}});
    let (status, body) = json_call(
        &emulator,
        "/listFragments",
        json!({"StreamName": "archive", "FragmentSelector": selector}),
    )
    .await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_slice(&body).unwrap();
    let in_range: Vec<&str> = page["Fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FragmentNumber"].as_str().unwrap())
        .collect();
    assert_eq!(in_range, numbers[1..4]);

    // The media of fragments 4 and 2, in that order.
    let (status, body) = json_call(
        &emulator,
        "/getMediaForFragmentList",
        json!({"StreamName": "archive", "Fragments": [numbers[3], numbers[1]]}),
    )
    .await;
    assert_eq!(status, 200);
    let all = blocks(&input);
    let mut expected = all[90..120].to_vec();
    expected.extend_from_slice(&all[30..60]);
    assert!(
        blocks(&body) == expected,
        "GetMediaForFragmentList returned other frames"
    );

    // Unknown fragment → 404.
    let (status, body) = json_call(
        &emulator,
        "/getMediaForFragmentList",
        json!({"StreamName": "archive", "Fragments": ["12345"]}),
    )
    .await;
    assert_eq!(status, 404, "{body:?}");
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["__type"], "ResourceNotFoundException");
}

mod signed {
    //! The same round trip against an emulator that checks signatures: PutMedia signed with `aws-sigv4`
    //! (UNSIGNED-PAYLOAD, as a streaming upload must be), control plane and GetMedia signed over their bodies.
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{
        PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
    };
    use aws_sigv4::sign::v4;

    const KEY_ID: &str = "AKIDSIGNEDTEST";
    const SECRET: &str = "signed/test+secret";

    fn signed_headers(
        emulator: &Emulator,
        path: &str,
        headers: &[(&str, &str)],
        body: SignableBody<'_>,
        secret: &str,
    ) -> Vec<(String, String)> {
        let identity = Credentials::new(KEY_ID, secret, None, None, "test").into();
        let mut settings = SigningSettings::default();
        if matches!(body, SignableBody::UnsignedPayload) {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        }
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("kinesisvideo")
            .time(std::time::SystemTime::now())
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let host = emulator.local_addr().to_string();
        let url = format!("http://{host}{path}");
        let mut all: Vec<(&str, &str)> = vec![("host", host.as_str())];
        all.extend_from_slice(headers);
        let signable =
            SignableRequest::new("POST", url.as_str(), all.iter().copied(), body).unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let (added, _) = instructions.into_parts();
        let mut out: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        out.extend(
            added
                .into_iter()
                .map(|h| (h.name().to_owned(), h.value().to_owned())),
        );
        out
    }

    async fn signed_json(
        emulator: &Emulator,
        path: &str,
        body: Value,
        secret: &str,
    ) -> (u16, Bytes) {
        let text = body.to_string();
        let headers = signed_headers(
            emulator,
            path,
            &[("content-type", "application/json")],
            SignableBody::Bytes(text.as_bytes()),
            secret,
        );
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let (tx, stream_body) = body_channel();
        tx.send(Ok(Frame::data(Bytes::from(text)))).await.unwrap();
        drop(tx);
        let (status, incoming) = post(emulator, path, &refs, stream_body).await;
        (status, incoming.collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn putmedia_signed_with_aws_sigv4_round_trips() {
        let credentials = vec![(KEY_ID.to_owned(), SECRET.to_owned())];
        let emulator = Emulator::start(Config {
            credentials,
            ..Config::default()
        })
        .await
        .unwrap();
        let input = encode("signed", 60, true); // H.264 + AAC
        let (status, body) = signed_json(
            &emulator,
            "/createStream",
            json!({"StreamName": "signed", "DataRetentionInHours": 1}),
            SECRET,
        )
        .await;
        assert_eq!(status, 200, "{body:?}");

        let media_headers = [
            ("x-amzn-stream-name", "signed"),
            ("x-amzn-fragment-timecode-type", "RELATIVE"),
            ("x-amzn-producer-start-timestamp", "1795312662.5"),
        ];
        let headers = signed_headers(
            &emulator,
            "/putMedia",
            &media_headers,
            SignableBody::UnsignedPayload,
            SECRET,
        );
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let (tx, stream_body) = body_channel();
        let data = Bytes::from(input.clone());
        let writer = tokio::spawn(async move {
            for piece in data.chunks(3000) {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
                    .await;
            }
        });
        let (status, acks) = post(&emulator, "/putMedia", &refs, stream_body).await;
        assert_eq!(status, 200);
        let acks = acks.collect().await.unwrap().to_bytes();
        writer.await.unwrap();
        let kinds: Vec<String> = String::from_utf8(acks.to_vec())
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["EventType"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let clusters = cluster_timecodes(&input).len();
        assert!(clusters >= 2);
        assert_eq!(
            kinds,
            ["BUFFERING", "RECEIVED", "PERSISTED"].repeat(clusters)
        );

        let request =
            json!({"StreamName": "signed", "StartSelector": {"StartSelectorType": "EARLIEST"}});
        let (status, output) = signed_json(&emulator, "/getMedia", request, SECRET).await;
        assert_eq!(status, 200);
        assert!(blocks(&output) == blocks(&input), "frames differ");
        assert!(
            blocks(&input).iter().any(|(track, _, _)| *track == 2),
            "no audio frames in the input"
        );

        // A wrong secret: 403 before any byte is read.
        let headers = signed_headers(
            &emulator,
            "/putMedia",
            &media_headers,
            SignableBody::UnsignedPayload,
            "wrong",
        );
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let (tx, stream_body) = body_channel();
        drop(tx);
        let (status, body) = post(&emulator, "/putMedia", &refs, stream_body).await;
        assert_eq!(status, 403);
        let body: Value =
            serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["__type"], "InvalidSignatureException");
    }
}
