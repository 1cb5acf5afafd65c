// SPDX-License-Identifier: MPL-2.0

//! Emulator throughput on loopback: PutMedia ingest and GetMedia read, in MB/s. Prints numbers; asserts
//! nothing. `cargo bench -p kvs-emulator --bench throughput [-- SIZE_MB]` (default 512 MB).
//!
//! The body is synthetic Matroska the way the C++ producer writes it (unknown-size clusters of 1-frame
//! 100-kB SimpleBlocks, 30 per cluster, one cluster per second of timecodes), sent in 256-kB chunks by one
//! HTTP/1.1 client connection, so the number is what one producer connection can push through the emulator.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use kvs_emulator::{Config, Emulator};
use kvs_mkv::writer::{h264_stream_header, write_cluster_start, write_simple_block};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const FRAME_BYTES: usize = 100_000;
const FRAMES_PER_CLUSTER: usize = 30;
const CHUNK_BYTES: usize = 256 * 1024;

fn cluster(index: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAMES_PER_CLUSTER * (FRAME_BYTES + 16) + 32);
    write_cluster_start(&mut out, 1_795_000_000_000 + index * 1000);
    let mut frame = vec![0u8; FRAME_BYTES];
    for i in 0..FRAMES_PER_CLUSTER {
        frame.fill((index as u8).wrapping_add(i as u8));
        write_simple_block(&mut out, 1, (i * 33) as i16, i == 0, &frame);
    }
    out
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static,
) -> hyper::body::Incoming {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::post(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.into_body()
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    let size_mb: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(512);
    let emulator = Emulator::start(Config::default()).await.unwrap();
    let addr = emulator.local_addr();
    let create = "{\"StreamName\":\"bench\",\"DataRetentionInHours\":1}";
    post(addr, "/createStream", &[], Full::new(Bytes::from(create)))
        .await
        .collect()
        .await
        .unwrap();

    let clusters = (size_mb * 1_000_000 / (FRAME_BYTES * FRAMES_PER_CLUSTER)).max(1) as u64;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut body = h264_stream_header();
    for i in 0..clusters {
        body.extend_from_slice(&cluster(i));
        if body.len() > 8 * 1024 * 1024 {
            chunks.extend(
                Bytes::from(std::mem::take(&mut body))
                    .chunks(CHUNK_BYTES)
                    .map(Bytes::copy_from_slice),
            );
        }
    }
    chunks.extend(
        Bytes::from(body)
            .chunks(CHUNK_BYTES)
            .map(Bytes::copy_from_slice),
    );
    let total: usize = chunks.iter().map(Bytes::len).sum();

    // PutMedia ingest.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(64);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let writer = tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                break;
            }
        }
    });
    let headers = [
        ("x-amzn-stream-name", "bench"),
        ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
    ];
    let acks = post(
        addr,
        "/putMedia",
        &headers,
        StreamBody::new(ReceiverStream::new(rx)),
    )
    .await;
    let acks = acks.collect().await.unwrap().to_bytes();
    writer.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let persisted = acks.windows(9).filter(|w| *w == b"PERSISTED").count();
    assert_eq!(
        persisted as u64, clusters,
        "every fragment must be persisted"
    );
    println!(
        "PutMedia ingest: {:.1} MB in {:.2} s = {:.0} MB/s ({} fragments, {:.2} CPU s for client+emulator, {:.2} CPU s/GB)",
        total as f64 / 1e6,
        elapsed,
        total as f64 / 1e6 / elapsed,
        clusters,
        cpu,
        cpu / (total as f64 / 1e9)
    );

    // GetMedia read of everything.
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let request =
        "{\"StreamName\":\"bench\",\"StartSelector\":{\"StartSelectorType\":\"EARLIEST\"}}";
    let mut body = post(addr, "/getMedia", &[], Full::new(Bytes::from(request))).await;
    let mut read = 0usize;
    let mut first_byte = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            first_byte.get_or_insert_with(Instant::now);
            read += data.len();
            if read >= total {
                break; // the session would otherwise wait 3 s for new data
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "GetMedia read:   {:.1} MB in {:.2} s = {:.0} MB/s ({:.2} CPU s for client+emulator)",
        read as f64 / 1e6,
        elapsed,
        read as f64 / 1e6 / elapsed,
        cpu
    );
}
