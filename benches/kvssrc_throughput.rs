// SPDX-License-Identifier: MPL-2.0

//! kvssrc read throughput of an archived range: sequential (`parallel-downloads=1`) against parallel
//! GetMediaForFragmentList requests, and one plain GetMedia session, with the emulator throttling each
//! connection to a per-connection rate as the service's do. Prints numbers; asserts only that every byte came.
//!
//! `cargo bench --bench kvssrc_throughput [-- SIZE_MB [MB_PER_S]]` (default 256 MB stored, 16 MB/s per
//! connection).
//!
//! The stream holds synthetic fragments of 30 x 100-kB frames, uploaded once through PutMedia. Each read runs
//! in its own child process (this binary again), so its CPU time is its own:
//! - `kvssrc N`: `kvssrc start-selector=earliest end-timestamp=... parallel-downloads=N ! fakesink`.
//! - `getmedia`: one GetMedia session from EARLIEST read with a bare hyper client until every stored byte came.
//!
//! CPU per GB is given for the whole child process and for the read alone (from PLAYING to EOS for kvssrc, from
//! the request to the last byte for the client), whose ratio is the cost of kvssrc's work on the same bytes.

mod common;

use std::time::Instant;

use common::{Emu, report_child, run_child};
use gst::prelude::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

fn kvssrc(url: &str, parallel: &str) -> u64 {
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
    let end =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() + 60.0;
    let description = format!(
        "kvssrc stream-name=bench start-selector=earliest end-timestamp={end:.3} parallel-downloads={parallel} \
         endpoint-uri={url} access-key=AKIDBENCH secret-access-key=bench-secret region=us-east-1 ! fakesink"
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

fn getmedia(url: &str, total: &str) -> u64 {
    let total: u64 = total.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cpu_before = common::cpu_seconds();
    let read = runtime.block_on(async {
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let request = hyper::Request::post("/getMedia")
            .header("host", addr.as_str())
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("--child") {
        let started = Instant::now();
        let count = match args[1].as_str() {
            "kvssrc" => kvssrc(&args[2], &args[3]),
            "getmedia" => getmedia(&args[2], &args[3]),
            other => panic!("unknown mode {other}"),
        };
        report_child(started, count);
        return;
    }
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let size_mb = numbers.first().copied().unwrap_or(256) as usize;
    let rate_mb = numbers.get(1).copied().unwrap_or(16);
    let dir = std::env::temp_dir().join(format!("kvssrc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.mkv");
    let (clusters, _) = common::write_input(&path, size_mb);
    let emu = Emu::start("bench");
    assert_eq!(common::upload_file(&emu.url, "bench", path.to_str().unwrap()), clusters);
    std::fs::remove_dir_all(&dir).unwrap();
    // What a range read returns: every fragment as GetMediaForFragmentList gives it (tags included).
    let probe = run_child("kvssrc", &[&emu.url, "8"]);
    let stored = probe.count;
    for api in ["getMedia", "getMediaForFragmentList"] {
        let fault = format!(
            "{{\"api\":\"{api}\",\"kind\":\"throttle\",\"bytes_per_second\":{},\"times\":1000000}}",
            rate_mb * 1_000_000
        );
        assert_eq!(emu.post("/_emulator/faults", fault), 200);
    }
    println!(
        "stored: {:.1} MB in {clusters} fragments; each connection throttled to {rate_mb} MB/s",
        stored as f64 / 1e6
    );
    println!("note: {}", common::NO_SERVICE_LIMITS);
    let gb = stored as f64 / 1e9;
    let single = run_child("getmedia", &[&emu.url, &stored.to_string()]);
    let single_rate = single.count as f64 / 1e6 / single.seconds;
    let single_work = single.work_cpu.unwrap_or(single.cpu) / gb;
    println!(
        "one GetMedia session:         {:6.2} s, {single_rate:6.1} MB/s, {:.2} CPU s/GB ({single_work:.2} reading)",
        single.seconds,
        single.cpu / gb
    );
    for parallel in ["1", "4", "8"] {
        let m = run_child("kvssrc", &[&emu.url, parallel]);
        assert_eq!(m.count, stored, "every byte read");
        let rate = stored as f64 / 1e6 / m.seconds;
        let work = m.work_cpu.unwrap_or(m.cpu) / gb;
        println!(
            "kvssrc parallel-downloads={parallel}: {:6.2} s, {rate:6.1} MB/s, {:.2} CPU s/GB ({work:.2} reading, \
             {:.2}x the GetMedia client's), peak RSS {:.0} MB, {:.1}x one GetMedia session's rate",
            m.seconds,
            m.cpu / gb,
            work / single_work,
            m.rss_mb,
            rate / single_rate
        );
    }
}
