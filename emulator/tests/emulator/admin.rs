// SPDX-License-Identifier: MPL-2.0

//! The admin API: import of recorded service output (compared element by element with the recording),
//! fragment listing, reset, and every kind of fault.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kvs_emulator::{Config, Emulator};
use kvs_mkv::{Event, tags};
use serde_json::{Value, json};
use tokio::net::TcpStream;

fn fixture(path: &str) -> Vec<u8> {
    let dir = std::env::var_os("KVS_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"));
    std::fs::read(dir.join(path))
        .unwrap_or_else(|e| panic!("fixture {path} (set KVS_FIXTURES_DIR): {e}"))
}

/// One request on a new connection; the response status and body, or the error if the connection broke.
async fn call(
    emulator: &Emulator,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, Bytes), String> {
    let stream = TcpStream::connect(emulator.local_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", emulator.local_addr().to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

async fn json_call(emulator: &Emulator, path: &str, body: Value) -> (u16, Value) {
    let (status, body) = call(
        emulator,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().into_bytes(),
    )
    .await
    .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Every top-level and cluster element of a Matroska stream, as (kind, bytes).
fn elements(data: &[u8]) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    let events = kvs_mkv::read_all(data).unwrap();
    for event in events {
        match event {
            Event::EbmlHeader(el) => out.push(("EBML".to_owned(), el.to_bytes())),
            Event::SegmentStart { header, .. } => out.push(("Segment".to_owned(), header)),
            Event::ClusterStart { header, .. } => out.push(("Cluster".to_owned(), header)),
            Event::Element(el) => {
                let kind = if el.id == kvs_mkv::ebml::id::TAGS {
                    let parsed = tags::parse_tags(&el.data()).unwrap();
                    format!(
                        "Tags[{}]",
                        parsed
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                } else {
                    format!("{:X}", el.id)
                };
                out.push((kind, el.to_bytes()));
            }
            Event::ClusterChild(el) => out.push((format!("child {:X}", el.id), el.to_bytes())),
            Event::ClusterEnd { .. } | Event::SegmentEnd { .. } => {}
        }
    }
    out
}

async fn get_media(emulator: &Emulator, stream: &str) -> Bytes {
    let body = json!({"StreamName": stream, "StartSelector": {"StartSelectorType": "EARLIEST"}})
        .to_string();
    let (status, body) = call(emulator, "POST", "/getMedia", &[], body.into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn imported_service_recordings_read_back_element_for_element() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    for (stream, file) in [
        ("ffmpeg", "getmedia/output_get_media.mkv"),
        ("sdk", "getmedia/test_mixed_tags.mkv"),
    ] {
        let recording = fixture(file);
        let (status, body) = call(
            &emulator,
            "POST",
            &format!("/_emulator/streams/{stream}/import"),
            &[],
            recording.clone(),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body:?}");
        let output = get_media(&emulator, stream).await;
        let expected = elements(&recording);
        let actual = elements(&output);
        let kinds = |v: &[(String, Bytes)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        if actual.len() != expected.len() {
            let (a, e) = (kinds(&actual), kinds(&expected));
            let first = a
                .iter()
                .zip(&e)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(e.len()));
            panic!(
                "{file}: element {first} differs: {:?} vs {:?}",
                &a[first.saturating_sub(2)..(first + 3).min(a.len())],
                &e[first.saturating_sub(2)..(first + 3).min(e.len())]
            );
        }
        for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert_eq!(a.0, e.0, "{file}: element {i}");
            if e.0.contains("MILLIS_BEHIND_NOW") {
                continue; // the only value that depends on when it is read
            }
            assert!(
                a.1 == e.1,
                "{file}: element {i} ({}) differs:\n{:02x?}\n{:02x?}",
                e.0,
                a.1,
                e.1
            );
        }
    }
    // The fragment listing of the ffmpeg recording: 5 fragments of 60 frames, producer times from the tags.
    let (status, body) = call(
        &emulator,
        "GET",
        "/_emulator/streams/ffmpeg/fragments",
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let listing: Value = serde_json::from_slice(&body).unwrap();
    let fragments = listing["fragments"].as_array().unwrap();
    assert_eq!(fragments.len(), 5);
    assert_eq!(
        fragments[0]["number"],
        "91343852333181432392682062607743920146159169392"
    );
    assert_eq!(fragments[0]["producer_timestamp_ms"], 1511852108513i64);
    assert_eq!(fragments[0]["server_timestamp_ms"], 1511852109126i64);
    assert!(
        fragments
            .iter()
            .all(|f| f["frames"] == json!({"1": 60}) && f["state"] == "complete")
    );
    assert!(
        fragments
            .iter()
            .all(|f| f["size_bytes"].as_u64().unwrap() > 10_000)
    );

    // Reset forgets streams and media.
    let (status, _) = call(&emulator, "POST", "/_emulator/reset", &[], vec![])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = json_call(
        &emulator,
        "/describeStream",
        json!({"StreamName": "ffmpeg"}),
    )
    .await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (404, Some("ResourceNotFoundException"))
    );
}

async fn add_fault(emulator: &Emulator, fault: Value) {
    let (status, body) = call(
        emulator,
        "POST",
        "/_emulator/faults",
        &[],
        fault.to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body:?}");
}

/// A PIC-style body: header, then `clusters` one-frame clusters 100 ms apart, then the end-of-fragment tag.
fn body(clusters: u64) -> Vec<u8> {
    use kvs_mkv::writer::{h264_stream_header, write_cluster_start, write_simple_block};
    let mut out = h264_stream_header();
    for i in 0..clusters {
        write_cluster_start(&mut out, 1_795_312_662_000 + i * 100);
        write_simple_block(&mut out, 1, 0, true, &[i as u8; 1000]);
    }
    tags::write_tags(
        &mut out,
        &[tags::SimpleTag::new(tags::END_OF_FRAGMENT, "")],
        8,
    );
    out
}

async fn create(emulator: &Emulator, name: &str) {
    let (status, body) = json_call(
        emulator,
        "/createStream",
        json!({"StreamName": name, "DataRetentionInHours": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn put(emulator: &Emulator, stream: &str, data: Vec<u8>) -> Result<Vec<Value>, String> {
    let headers = [
        ("x-amzn-stream-name", stream),
        ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
    ];
    let (status, acks) = call(emulator, "POST", "/putMedia", &headers, data).await?;
    assert_eq!(status, 200, "{acks:?}");
    Ok(String::from_utf8(acks.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

fn kinds(acks: &[Value]) -> Vec<String> {
    acks.iter()
        .map(|a| a["EventType"].as_str().unwrap().to_owned())
        .collect()
}

async fn stored(emulator: &Emulator, stream: &str) -> Vec<String> {
    let (_, body) = call(
        emulator,
        "GET",
        &format!("/_emulator/streams/{stream}/fragments"),
        &[],
        vec![],
    )
    .await
    .unwrap();
    let listing: Value = serde_json::from_slice(&body).unwrap();
    listing["fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["state"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn putmedia_faults_drop_error_withhold_delay_throttle() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    create(&emulator, "f").await;

    // Dropped after 3.5 clusters' worth of bytes: the client sees the connection break; 3 fragments stored,
    // the 4th (cut off) is not.
    let data = body(5);
    let header_len = data
        .windows(4)
        .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
        .unwrap();
    let cut = header_len + 3 * 1024 + 500;
    add_fault(
        &emulator,
        json!({"api": "putMedia", "stream": "f", "kind": "drop_after_bytes", "bytes": cut}),
    )
    .await;
    let result = put(&emulator, "f", data.clone()).await;
    assert!(result.is_err(), "the connection should break: {result:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        stored(&emulator, "f").await,
        ["complete", "complete", "complete", "aborted"]
    );

    // The fault fired once: the same upload now goes through.
    let acks = put(&emulator, "f", data.clone()).await.unwrap();
    assert_eq!(kinds(&acks).len(), 15);

    // ERROR ACK 5000 for fragment 2, then the connection ends.
    add_fault(
        &emulator,
        json!({"api": "putMedia", "kind": "error_ack", "fragment": 2, "error_id": 5000}),
    )
    .await;
    let acks = put(&emulator, "f", data.clone()).await.unwrap();
    assert_eq!(
        kinds(&acks),
        ["BUFFERING", "RECEIVED", "PERSISTED", "BUFFERING", "ERROR"]
    );
    assert_eq!(
        (acks[4]["ErrorId"].as_u64(), acks[4]["ErrorCode"].as_str()),
        (Some(5000), Some("INTERNAL_ERROR"))
    );

    // PERSISTED withheld.
    add_fault(
        &emulator,
        json!({"api": "putMedia", "kind": "withhold_acks", "event": "PERSISTED"}),
    )
    .await;
    let acks = put(&emulator, "f", body(2)).await.unwrap();
    assert_eq!(
        kinds(&acks),
        ["BUFFERING", "RECEIVED", "BUFFERING", "RECEIVED"]
    );

    // All ACKs delayed by 300 ms (in order).
    add_fault(
        &emulator,
        json!({"api": "putMedia", "kind": "delay_acks", "ms": 300}),
    )
    .await;
    let started = Instant::now();
    let acks = put(&emulator, "f", body(1)).await.unwrap();
    assert_eq!(kinds(&acks), ["BUFFERING", "RECEIVED", "PERSISTED"]);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Throttled to 20 kB/s: 5 clusters of ~1 kB plus the header take at least ~0.2 s.
    add_fault(
        &emulator,
        json!({"api": "putMedia", "kind": "throttle", "bytes_per_second": 20000}),
    )
    .await;
    let data = body(5);
    let started = Instant::now();
    put(&emulator, "f", data.clone()).await.unwrap();
    let floor = Duration::from_secs_f64(data.len() as f64 / 20000.0 * 0.8);
    assert!(
        started.elapsed() >= floor,
        "{:?} < {floor:?}",
        started.elapsed()
    );

    // HTTP error on connect.
    add_fault(&emulator, json!({"api": "putMedia", "kind": "http_error", "status": 503, "error": "ServiceUnavailableException"})).await;
    let headers = [
        ("x-amzn-stream-name", "f"),
        ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
    ];
    let (status, answer) = call(&emulator, "POST", "/putMedia", &headers, vec![])
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap()["__type"],
        "ServiceUnavailableException"
    );

    // A fault taken by a connection that never gets where it acts does not fire: a 2-fragment upload takes a
    // drop at the 9th fragment and goes through.
    add_fault(
        &emulator,
        json!({"api": "putMedia", "kind": "drop_at_fragment", "fragment": 9}),
    )
    .await;
    let acks = put(&emulator, "f", body(2)).await.unwrap();
    assert_eq!(kinds(&acks).len(), 6);
    // Each kind that acted counts once per connection (both PERSISTED withheld in one connection: 1).
    let (_, listing) = call(&emulator, "GET", "/_emulator/faults", &[], vec![])
        .await
        .unwrap();
    let listing: Value = serde_json::from_slice(&listing).unwrap();
    assert_eq!(listing["faults"], json!([]));
    assert_eq!(
        listing["fired"],
        json!({"putMedia": {"delay_acks": 1, "drop_after_bytes": 1, "error_ack": 1, "http_error": 1,
               "throttle": 1, "withhold_acks": 1}})
    );
}

#[tokio::test]
async fn control_plane_http_errors_fire_a_set_number_of_times() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    create(&emulator, "c").await;
    add_fault(
        &emulator,
        json!({"api": "describeStream", "stream": "c", "kind": "http_error", "status": 500,
        "error": "InternalFailure", "message": "boom", "times": 2}),
    )
    .await;
    for _ in 0..2 {
        let (status, body) =
            json_call(&emulator, "/describeStream", json!({"StreamName": "c"})).await;
        assert_eq!(
            (status, body["__type"].as_str(), body["Message"].as_str()),
            (500, Some("InternalFailure"), Some("boom"))
        );
    }
    let (status, _) = json_call(&emulator, "/describeStream", json!({"StreamName": "c"})).await;
    assert_eq!(status, 200);
    // Listing and clearing.
    add_fault(&emulator, json!({"api": "getDataEndpoint", "kind": "http_error", "status": 400, "error": "ClientLimitExceededException"})).await;
    let (_, body) = call(&emulator, "GET", "/_emulator/faults", &[], vec![])
        .await
        .unwrap();
    let listed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed["faults"][0]["api"], "getDataEndpoint");
    call(&emulator, "DELETE", "/_emulator/faults", &[], vec![])
        .await
        .unwrap();
    let (status, _) = json_call(
        &emulator,
        "/getDataEndpoint",
        json!({"StreamName": "c", "APIName": "PUT_MEDIA"}),
    )
    .await;
    assert_eq!(status, 200);
    // A malformed fault is refused with a reason.
    let (status, body) = call(
        &emulator,
        "POST",
        "/_emulator/faults",
        &[],
        br#"{"api":"putMedia","kind":"explode"}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body:?}");
}

#[tokio::test]
async fn getmedia_faults_drop_at_fragment_and_after_bytes() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    create(&emulator, "g").await;
    put(&emulator, "g", body(4)).await.unwrap();
    let whole = get_media(&emulator, "g").await;
    assert_eq!(
        whole
            .windows(4)
            .filter(|w| *w == [0x1A, 0x45, 0xDF, 0xA3])
            .count(),
        4
    );

    add_fault(
        &emulator,
        json!({"api": "getMedia", "kind": "drop_at_fragment", "fragment": 3}),
    )
    .await;
    let request =
        json!({"StreamName": "g", "StartSelector": {"StartSelectorType": "EARLIEST"}}).to_string();
    let result = call(
        &emulator,
        "POST",
        "/getMedia",
        &[],
        request.clone().into_bytes(),
    )
    .await;
    assert!(result.is_err(), "the connection should break");

    add_fault(
        &emulator,
        json!({"api": "getMedia", "kind": "drop_after_bytes", "bytes": 100}),
    )
    .await;
    let result = call(&emulator, "POST", "/getMedia", &[], request.into_bytes()).await;
    assert!(result.is_err(), "the connection should break");
}

#[tokio::test]
async fn data_dir_keeps_streams_and_fragments_across_a_restart() {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("data-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = || Config {
        data_dir: Some(dir.clone()),
        ..Config::default()
    };

    let emulator = Emulator::start(config()).await.unwrap();
    create(&emulator, "kept").await;
    let acks = put(&emulator, "kept", body(3)).await.unwrap();
    assert_eq!(kinds(&acks).iter().filter(|k| *k == "PERSISTED").count(), 3);
    let before = get_media(&emulator, "kept").await;
    call(
        &emulator,
        "POST",
        "/_emulator/streams/imported/import",
        &[],
        fixture("getmedia/test_mixed_tags.mkv"),
    )
    .await
    .unwrap();
    let imported_before = get_media(&emulator, "imported").await;
    let arn_before = json_call(&emulator, "/describeStream", json!({"StreamName": "kept"}))
        .await
        .1["StreamInfo"]["StreamARN"]
        .clone();
    emulator.shutdown();

    let emulator = Emulator::start(config()).await.unwrap();
    let (status, described) =
        json_call(&emulator, "/describeStream", json!({"StreamName": "kept"})).await;
    assert_eq!(status, 200);
    assert_eq!(described["StreamInfo"]["StreamARN"], arn_before);
    assert_eq!(described["StreamInfo"]["DataRetentionInHours"], 1);
    let after = get_media(&emulator, "kept").await;
    let strip = |data: &[u8]| -> Vec<(String, Bytes)> {
        elements(data)
            .into_iter()
            .filter(|(k, _)| !k.contains("MILLIS"))
            .collect()
    };
    assert!(
        strip(&after) == strip(&before),
        "GetMedia after the restart differs"
    );
    assert!(strip(&get_media(&emulator, "imported").await) == strip(&imported_before));

    // New fragments continue the sequence: their numbers are larger.
    let first_numbers = acks
        .iter()
        .map(|a| a["FragmentNumber"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    let more = put(&emulator, "kept", body(1)).await.unwrap();
    assert!(more[0]["FragmentNumber"].as_str().unwrap() > first_numbers.last().unwrap().as_str());

    // Deleting the stream deletes its media on disk.
    let (status, _) = json_call(&emulator, "/deleteStream", json!({"StreamARN": arn_before})).await;
    assert_eq!(status, 200);
    let media_dirs = std::fs::read_dir(dir.join("media")).unwrap().count();
    assert_eq!(
        media_dirs, 1,
        "only the imported stream's media should remain"
    );
    emulator.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn getmedia_error_tag_fault_sends_an_error_chunk_and_ends() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    create(&emulator, "e").await;
    put(&emulator, "e", body(3)).await.unwrap();
    add_fault(
        &emulator,
        json!({"api": "getMedia", "stream": "e", "kind": "error_tag", "fragment": 2, "error_id": 4000}),
    )
    .await;
    let output = get_media(&emulator, "e").await;
    let kinds: Vec<String> = elements(&output)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !k.starts_with("child"))
        .collect();
    assert_eq!(
        kinds,
        [
            "EBML",
            "Segment",
            "1549A966",
            "1654AE6B",
            "Tags[AWS_KINESISVIDEO_FRAGMENT_NUMBER,AWS_KINESISVIDEO_SERVER_TIMESTAMP,AWS_KINESISVIDEO_PRODUCER_TIMESTAMP]",
            "Cluster",
            "Tags[AWS_KINESISVIDEO_MILLIS_BEHIND_NOW,AWS_KINESISVIDEO_CONTINUATION_TOKEN]",
            "EBML",
            "Segment",
            "Tags[AWS_KINESISVIDEO_FRAGMENT_NUMBER,AWS_KINESISVIDEO_ERROR_CODE,AWS_KINESISVIDEO_ERROR_ID]",
        ]
    );
    let last = elements(&output).pop().unwrap().1;
    let parsed = tags::parse_tags(&last[4 + 4..]).unwrap();
    assert_eq!(parsed[1].value, "Requested fragment is not found");
    assert_eq!(parsed[2].value, "4000");
}

#[tokio::test]
async fn at_most_three_getmedia_sessions_per_stream() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    create(&emulator, "r").await;
    let request =
        json!({"StreamName": "r", "StartSelector": {"StartSelectorType": "NOW"}}).to_string();
    let mut open = Vec::new();
    for _ in 0..3 {
        let stream = TcpStream::connect(emulator.local_addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = hyper::Request::post("/getMedia")
            .header("host", emulator.local_addr().to_string())
            .body(Full::new(Bytes::from(request.clone())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        open.push(response); // the session waits for data (up to 3 s)
    }
    let (status, body) = call(
        &emulator,
        "POST",
        "/getMedia",
        &[],
        request.clone().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["__type"], "ConnectionLimitExceededException");
    // Once they end (3 s without data), a new session is accepted.
    for response in open {
        response.into_body().collect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = call(&emulator, "POST", "/getMedia", &[], request.into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn arrival_times_of_uploaded_frames_are_recorded_when_asked_for() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let emulator = Emulator::start(Config {
        record_arrivals: true,
        ..Config::default()
    })
    .await
    .unwrap();
    create(&emulator, "timed").await;
    put(&emulator, "timed", body(4)).await.unwrap();
    let (status, bytes) = call(
        &emulator,
        "GET",
        "/_emulator/streams/timed/arrivals",
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let listing: Value = serde_json::from_slice(&bytes).unwrap();
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let uploads = listing["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 1);
    let first_byte = uploads[0]["first_body_byte_us"].as_u64().unwrap();
    assert!(
        before <= uploads[0]["request_us"].as_u64().unwrap() && first_byte <= after,
        "{listing}"
    );
    let frames = listing["frames"].as_array().unwrap();
    let producer: Vec<i64> = frames
        .iter()
        .map(|f| f["producer_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(
        producer,
        [
            1_795_312_662_000,
            1_795_312_662_100,
            1_795_312_662_200,
            1_795_312_662_300
        ]
    );
    assert!(
        frames
            .iter()
            .all(|f| f["track"] == 1 && f["arrived_us"].as_u64().unwrap() >= first_byte)
    );

    // Off by default: nothing is kept.
    let quiet = Emulator::start(Config::default()).await.unwrap();
    create(&quiet, "timed").await;
    put(&quiet, "timed", body(2)).await.unwrap();
    let (_, bytes) = call(
        &quiet,
        "GET",
        "/_emulator/streams/timed/arrivals",
        &[],
        vec![],
    )
    .await
    .unwrap();
    let listing: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        listing,
        json!({"enabled": false, "uploads": [], "frames": []})
    );
}

#[tokio::test]
async fn a_capture_cut_inside_a_frame_imports_every_whole_fragment_and_frame() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    let recording = fixture("getmedia/output_get_media.mkv");
    // Cut in the middle of the 31st frame of the last fragment (5 fragments of 60 frames).
    let last_document = recording
        .windows(4)
        .rposition(|w| w == [0x1A, 0x45, 0xDF, 0xA3])
        .unwrap();
    let blocks: Vec<usize> = kvs_mkv::read_all(&recording[last_document..])
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::ClusterChild(el) if el.id == kvs_mkv::ebml::id::SIMPLE_BLOCK => {
                Some(el.offset as usize)
            }
            _ => None,
        })
        .collect();
    let cut = last_document + blocks[30] + 100;
    let (status, body) = call(
        &emulator,
        "POST",
        "/_emulator/streams/cut/import",
        &[],
        recording[..cut].to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body:?}");
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["imported"], 5);
    assert_eq!(
        answer["truncated"]["fragment"],
        "91343852333181432412489103236310005892133364608"
    );
    assert_eq!(answer["truncated"]["frames_kept"], 30);
    let bytes_left_out = answer["truncated"]["bytes_left_out"].as_u64().unwrap();
    assert!((100..20_000).contains(&bytes_left_out), "{answer}");
    let (_, body) = call(
        &emulator,
        "GET",
        "/_emulator/streams/cut/fragments",
        &[],
        vec![],
    )
    .await
    .unwrap();
    let listing: Value = serde_json::from_slice(&body).unwrap();
    let frames: Vec<&Value> = listing["fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["frames"]["1"])
        .collect();
    assert_eq!(frames, [60, 60, 60, 60, 30]);

    // Cut inside the last fragment's tags, before its cluster: the four whole fragments only.
    let tags_at = last_document + 600;
    let (status, body) = call(
        &emulator,
        "POST",
        "/_emulator/streams/cut2/import",
        &[],
        recording[..tags_at].to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body:?}");
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (
            answer["imported"].as_u64(),
            answer["truncated"]["frames_kept"].as_u64()
        ),
        (Some(4), Some(0))
    );
}

type BodyTx = tokio::sync::mpsc::Sender<Result<hyper::body::Frame<Bytes>, std::io::Error>>;
type UploadBody = http_body_util::StreamBody<
    tokio_stream::wrappers::ReceiverStream<Result<hyper::body::Frame<Bytes>, std::io::Error>>,
>;

/// A PutMedia request on a new connection whose body is fed through the returned sender and stays open until
/// it is dropped.
async fn open_putmedia(
    emulator: &Emulator,
    stream_name: &str,
) -> (
    BodyTx,
    hyper::client::conn::http1::SendRequest<UploadBody>,
    hyper::Request<UploadBody>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stream = TcpStream::connect(emulator.local_addr()).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::post("/putMedia")
        .header("host", emulator.local_addr().to_string())
        .header("x-amzn-stream-name", stream_name)
        .header("x-amzn-fragment-timecode-type", "ABSOLUTE")
        .body(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    (tx, sender, request)
}

#[tokio::test]
async fn open_connections_are_dropped_on_request_with_a_reset() {
    let emulator = Emulator::start(Config::default()).await.unwrap();
    create(&emulator, "d").await;
    // A PutMedia whose body stays open: two clusters sent, then nothing.
    let (tx, mut sender, request) = open_putmedia(&emulator, "d").await;
    let mut data = body(2);
    data.truncate(data.len() - 40);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from(data))))
        .await
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    let (status, dropped) = json_call(
        &emulator,
        "/_emulator/streams/d/drop",
        json!({"api": "getMedia"}),
    )
    .await;
    assert_eq!(
        (status, dropped),
        (200, json!({"dropped": 0})),
        "no GetMedia is open"
    );
    let (status, dropped) = json_call(
        &emulator,
        "/_emulator/streams/d/drop",
        json!({"api": "putMedia", "close": "reset"}),
    )
    .await;
    assert_eq!((status, dropped), (200, json!({"dropped": 1})));
    let read = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .unwrap();
    let error = read.expect_err("the connection was reset").to_string();
    assert!(error.contains("error reading a body"), "{error}");
    drop(tx);
    let (status, _) = json_call(
        &emulator,
        "/_emulator/streams/nosuch/drop",
        json!({"api": "putMedia"}),
    )
    .await;
    assert_eq!(status, 404);
}

/// An emulator with the service's per-stream PutMedia limits (the default) or without them.
async fn with_limits(on: bool) -> Emulator {
    let mut config = Config::default();
    config.put_media.service_limits = on;
    Emulator::start(config).await.unwrap()
}

#[tokio::test]
async fn putmedia_is_read_at_five_fragments_a_second_unless_the_limits_are_lifted() {
    for on in [true, false] {
        let emulator = with_limits(on).await;
        create(&emulator, "rate").await;
        // 16 fragments of 100 ms sent at once: the 6th can start 1 s after the 1st, the 16th 3 s after.
        let started = Instant::now();
        let acks = put(&emulator, "rate", body(16)).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(
            kinds(&acks).iter().filter(|k| *k == "PERSISTED").count(),
            16
        );
        let (_, listed) =
            json_call(&emulator, "/listFragments", json!({"StreamName": "rate"})).await;
        let mut arrivals: Vec<u64> = listed["Fragments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["ServerTimestamp"].as_f64().unwrap() * 1000.0).round() as u64)
            .collect();
        arrivals.sort();
        let spread = arrivals[15] - arrivals[0];
        if on {
            assert!(elapsed >= Duration::from_millis(2950), "{elapsed:?}");
            assert!(
                spread >= 2950,
                "server timestamps of the 1st and 16th fragments {spread} ms apart"
            );
            // No second has more than five fragments.
            for window in arrivals.windows(6) {
                assert!(window[5] - window[0] >= 995, "{arrivals:?}");
            }
        } else {
            assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
        }
    }
}

/// One fragment of 25 frames of 1 MB.
fn big_body() -> Vec<u8> {
    use kvs_mkv::writer::{h264_stream_header, write_cluster_start, write_simple_block};
    let mut out = h264_stream_header();
    write_cluster_start(&mut out, 1_795_312_662_000);
    for i in 0..25u8 {
        write_simple_block(&mut out, 1, i16::from(i) * 33, i == 0, &vec![i; 1 << 20]);
    }
    tags::write_tags(
        &mut out,
        &[tags::SimpleTag::new(tags::END_OF_FRAGMENT, "")],
        8,
    );
    out
}

#[tokio::test]
async fn putmedia_is_read_at_most_at_12_5_mb_a_second_unless_the_limits_are_lifted() {
    for on in [true, false] {
        let emulator = with_limits(on).await;
        create(&emulator, "bytes").await;
        let data = big_body();
        let started = Instant::now();
        let acks = put(&emulator, "bytes", data.clone()).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(kinds(&acks), ["BUFFERING", "RECEIVED", "PERSISTED"]);
        let floor = Duration::from_secs_f64(data.len() as f64 / 12_500_000.0 * 0.95);
        if on {
            assert!(elapsed >= floor, "{} bytes in {elapsed:?}", data.len());
        } else {
            assert!(
                elapsed < floor / 2,
                "{} bytes in {elapsed:?} without limits",
                data.len()
            );
        }
    }
}

#[tokio::test]
async fn a_second_putmedia_on_a_stream_replaces_the_first_which_is_reset() {
    let emulator = with_limits(true).await;
    create(&emulator, "two").await;
    // The first connection: two clusters sent, the body left open.
    let (tx, mut sender, request) = open_putmedia(&emulator, "two").await;
    // Two fragments without the end-of-fragment tag: the second stays open.
    let mut tag = Vec::new();
    tags::write_tags(
        &mut tag,
        &[tags::SimpleTag::new(tags::END_OF_FRAGMENT, "")],
        8,
    );
    let mut data = body(2);
    data.truncate(data.len() - tag.len());
    tx.send(Ok(hyper::body::Frame::data(Bytes::from(data))))
        .await
        .unwrap();
    let first = sender.send_request(request).await.unwrap();
    assert_eq!(first.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The second is accepted; the first is reset, its open fragment not stored.
    let acks = put(&emulator, "two", body(1)).await.unwrap();
    assert_eq!(kinds(&acks), ["BUFFERING", "RECEIVED", "PERSISTED"]);
    let read = tokio::time::timeout(Duration::from_secs(5), first.into_body().collect())
        .await
        .unwrap();
    let error = read
        .expect_err("the first connection was reset")
        .to_string();
    assert!(error.contains("error reading a body"), "{error}");
    drop(tx);
    assert_eq!(
        stored(&emulator, "two").await,
        ["complete", "aborted", "complete"]
    );
}

#[tokio::test]
async fn reads_are_held_to_the_service_rates_unless_the_limits_are_lifted() {
    let mut limited = Duration::ZERO;
    for on in [true, false] {
        let emulator = with_limits(on).await;
        create(&emulator, "reads").await;
        put(&emulator, "reads", big_body()).await.unwrap();
        // ListFragments: the 6th call within a second is refused.
        let mut statuses = Vec::new();
        let mut refusal = Value::Null;
        for _ in 0..6 {
            let (status, body) =
                json_call(&emulator, "/listFragments", json!({"StreamName": "reads"})).await;
            statuses.push(status);
            if status != 200 {
                refusal = body;
            }
        }
        let numbers: Vec<String> = {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let (_, listed) =
                json_call(&emulator, "/listFragments", json!({"StreamName": "reads"})).await;
            listed["Fragments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["FragmentNumber"].as_str().unwrap().into())
                .collect()
        };
        // GetMediaForFragmentList: one connection sends its 26 MB at 25 MB/s at most.
        let request = json!({"StreamName": "reads", "Fragments": numbers})
            .to_string()
            .into_bytes();
        let started = Instant::now();
        let (status, media) = call(&emulator, "POST", "/getMediaForFragmentList", &[], request)
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(status, 200);
        let floor = Duration::from_secs_f64(media.len() as f64 / 25_000_000.0 * 0.95);
        if on {
            assert_eq!(statuses, [200, 200, 200, 200, 200, 400]);
            assert_eq!(refusal["__type"], "ClientLimitExceededException");
            assert_eq!(
                refusal["Message"],
                "ListFragments is limited to 5 calls a second on this stream; try again later."
            );
            assert!(elapsed >= floor, "{} bytes in {elapsed:?}", media.len());
            limited = elapsed;
        } else {
            assert_eq!(statuses, [200; 6]);
            // Faster than with the limit (not a fixed time: a loaded debug build serves 26 MB in about 0.9 s).
            assert!(
                elapsed < limited,
                "{} bytes in {elapsed:?} without limits, {limited:?} with",
                media.len()
            );
        }
    }
}
