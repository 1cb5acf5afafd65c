// SPDX-License-Identifier: MPL-2.0

//! kvssrc read throughput and CPU of an archived range, under the service's documented read limits as the
//! emulator enforces them (25 MB/s per connection, 5 GetMediaForFragmentList connections and 5 calls a second
//! per stream, 3 GetMedia sessions), over plain HTTP and over HTTPS (the emulator's TLS mode, a test CA), each
//! against a bare GetMedia client in the same run. Prints numbers; asserts only that every byte came.
//!
//! `cargo bench --bench kvssrc_throughput [-- SIZE_MB]` (default 256 MB stored).
//!
//! The stream holds synthetic fragments of 30 x 100-kB frames, uploaded once through PutMedia. Each read runs
//! in its own child process (this binary again), so its CPU time is its own:
//! - `kvssrc N`: `kvssrc start-selector=earliest end-timestamp=now parallel-downloads=N ! fakesink`.
//! - `getmedia`: one GetMedia session from EARLIEST read with a bare hyper client (rustls for HTTPS) until every
//!   stored byte came: the least any reader must do.
//!
//! CPU per GB is given for the whole child process and for the read alone (from PLAYING to EOS for kvssrc, from
//! the request to the last byte for the client), whose ratio is the cost of kvssrc's work on the same bytes.
//! Left out: a real network (loopback here), the service's own latency, SigV4 checks (the emulator runs
//! without credentials, kvssrc still signs every request).

mod common;

use std::path::Path;
use std::time::Instant;

use common::{Emu, Measured, Tls, report_child, run_child};
use gst::prelude::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

fn kvssrc(url: &str, parallel: &str, ca: Option<&str>) -> u64 {
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let ca = ca.map(|ca| format!("ca-file={ca}")).unwrap_or_default();
    let description = format!(
        "kvssrc stream-name=bench start-selector=earliest end-timestamp={end:.3} parallel-downloads={parallel} \
         endpoint-uri={url} {ca} access-key=AKIDBENCH secret-access-key=bench-secret region=us-east-1 ! fakesink"
    );
    let pipeline = gst::parse::launch(&description).unwrap();
    let bus = pipeline.bus().unwrap();
    let cpu_before = common::cpu_seconds();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut bytes = 0;
    for message in bus.iter_timed(gst::ClockTime::NONE) {
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} {:?}", e.error(), e.debug()),
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "kvssrc-progress"
                {
                    bytes = s.get::<u64>("bytes").unwrap();
                }
            }
            _ => {}
        }
    }
    println!("work-cpu {}", common::cpu_seconds() - cpu_before);
    pipeline.set_state(gst::State::Null).unwrap();
    bytes
}

fn getmedia(url: &str, total: &str, ca: Option<&str>) -> u64 {
    let total: u64 = total.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cpu_before = common::cpu_seconds();
    let read = runtime.block_on(async {
        let addr = url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let io = common::connect(url, ca.map(Path::new)).await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = hyper::Request::post("/getMedia")
            .header("host", addr)
            .body(Full::new(bytes::Bytes::from(
                "{\"StreamName\":\"bench\",\"StartSelector\":{\"StartSelectorType\":\"EARLIEST\"}}",
            )))
            .unwrap();
        let mut body = sender.send_request(request).await.unwrap().into_body();
        let mut read = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                read += data.len() as u64;
                if read >= total {
                    break; // the session would otherwise wait for new fragments
                }
            }
        }
        read
    });
    println!("work-cpu {}", common::cpu_seconds() - cpu_before);
    read
}

/// One transport's figures.
struct Row {
    transport: &'static str,
    what: String,
    m: Measured,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let started = Instant::now();
        let ca = args.get(4).map(String::as_str);
        let count = match args[1].as_str() {
            "kvssrc" => kvssrc(&args[2], &args[3], ca),
            "getmedia" => getmedia(&args[2], &args[3], ca),
            other => panic!("unknown mode {other}"),
        };
        report_child(started, count);
        return;
    }
    let size_mb = args
        .iter()
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(256);
    let dir = std::env::temp_dir().join(format!("kvssrc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.mkv");
    let (clusters, _) = common::write_input(&path, size_mb);
    let tls = Tls::new();
    let mut rows = Vec::new();
    let mut stored = 0;
    for (transport, tls) in [("HTTP", None), ("HTTPS", Some(&tls))] {
        let emu = Emu::start_with("bench", true, tls);
        let ca = emu.ca.as_ref().map(|p| p.to_str().unwrap().to_owned());
        let uploaded =
            common::upload_file_over(&emu.url, emu.ca.as_deref(), "bench", path.to_str().unwrap());
        assert_eq!(uploaded, clusters);
        let with_ca = |args: &[&str]| -> Vec<String> {
            args.iter()
                .map(|a| a.to_string())
                .chain(ca.clone())
                .collect()
        };
        let child = |mode: &str, args: &[&str]| {
            let args = with_ca(args);
            run_child(mode, &args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        // What a range read returns: every fragment as GetMediaForFragmentList gives it (tags included).
        stored = child("kvssrc", &[&emu.url, "4"]).count;
        let single = child("getmedia", &[&emu.url, &stored.to_string()]);
        assert!(single.count >= stored, "every byte read");
        rows.push(Row {
            transport,
            what: "bare GetMedia client, one session".into(),
            m: single,
        });
        for parallel in ["1", "4", "5"] {
            let m = child("kvssrc", &[&emu.url, parallel]);
            assert_eq!(m.count, stored, "every byte read");
            let default = if parallel == "4" { " (default)" } else { "" };
            rows.push(Row {
                transport,
                what: format!("kvssrc parallel-downloads={parallel}{default}"),
                m,
            });
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let gb = stored as f64 / 1e9;
    println!(
        "stored: {:.1} MB in {clusters} fragments; the emulator holds each stream to the service's read limits \
         (25 MB/s per connection, 5 GetMediaForFragmentList connections and 5 calls/s); loopback, no SigV4 checks",
        stored as f64 / 1e6
    );
    println!(
        "{:<6} {:<42} {:>7} {:>8} {:>9} {:>9} {:>7} {:>8}",
        "", "reader", "wall s", "MB/s", "CPU s/GB", "reading", "x bare", "RSS MB"
    );
    for transport in ["HTTP", "HTTPS"] {
        let bare = rows
            .iter()
            .find(|r| r.transport == transport && r.what.starts_with("bare"))
            .map(|r| r.m.work_cpu.unwrap_or(r.m.cpu) / gb)
            .unwrap();
        for row in rows.iter().filter(|r| r.transport == transport) {
            let work = row.m.work_cpu.unwrap_or(row.m.cpu) / gb;
            println!(
                "{:<6} {:<42} {:>7.2} {:>8.1} {:>9.2} {:>9.2} {:>7.2} {:>8.0}",
                row.transport,
                row.what,
                row.m.seconds,
                stored as f64 / 1e6 / row.m.seconds,
                row.m.cpu / gb,
                work,
                work / bare,
                row.m.rss_mb
            );
        }
    }
}
