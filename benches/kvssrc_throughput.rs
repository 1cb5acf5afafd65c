// SPDX-License-Identifier: MPL-2.0

//! kvssrc read throughput and CPU of an archived range, under the service's documented read limits as the
//! emulator enforces them (25 MB/s per connection, 5 GetMediaForFragmentList connections and 5 calls a second
//! per stream, 3 GetMedia sessions), over plain HTTP and over HTTPS (the emulator's TLS mode, a test CA), each
//! against a bare GetMedia client in the same run. Prints numbers; asserts only that every byte came.
//!
//! `cargo bench --bench kvssrc_throughput [-- SIZE_MB]` (default 256 MB stored); `KVS_BENCH_ROUNDS` (default 3)
//! rounds of every reader, in turn, each figure the median of its rounds. `-- --serve` only uploads, prints the
//! emulators' addresses and the command that runs one reader, and serves until killed (to profile a reader
//! alone: `perf stat`, `perf record`).
//!
//! The stream holds synthetic fragments of 30 x 100-kB frames, uploaded once through PutMedia. Each read runs
//! in its own child process (this binary again), so its CPU time is its own:
//! - `kvssrc N`: `kvssrc start-selector=earliest end-timestamp=now parallel-downloads=N ! fakesink`.
//! - `getmedia`: one GetMedia session from EARLIEST read with a bare hyper client (rustls for HTTPS) until every
//!   stored byte came: the least any reader must do.
//!
//! CPU per GB is given for the whole child process and for the read alone (from PLAYING to EOS for kvssrc, from
//! the request to the last byte for the client), whose ratio is the cost of kvssrc's work on the same bytes,
//! with the context switches (all threads) and minor page faults per MB of that part: wake-ups and fresh
//! pages are most of what a reader costs beyond the bytes themselves.
//! Left out: a real network (loopback here), the service's own latency, SigV4 checks (the emulator runs
//! without credentials, kvssrc still signs every request).

mod common;

use std::path::Path;
use std::time::Instant;

use common::{Emu, Measured, report_child, run_child};
use gst::prelude::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kvs_emulator::tls::LocalCa;

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
    let events_before = common::switches_and_faults();
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
    print_events(events_before);
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
    let events_before = common::switches_and_faults();
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
    print_events(events_before);
    read
}

/// The context switches and page faults since `before`, as the `work-events` line.
fn print_events(before: (u64, u64)) {
    let after = common::switches_and_faults();
    println!("work-events {} {}", after.0 - before.0, after.1 - before.1);
}

/// One reader's runs over one transport, a run per round.
struct Row {
    transport: &'static str,
    what: String,
    runs: Vec<Measured>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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
    let serve = args.iter().any(|a| a == "--serve");
    let size_mb = args
        .iter()
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(256);
    let rounds: usize = std::env::var("KVS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let dir = std::env::temp_dir().join(format!("kvssrc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.mkv");
    let (clusters, _) = common::write_input(&path, size_mb);
    let tls = LocalCa::make().unwrap();
    let mut rows: Vec<Row> = Vec::new();
    let mut stored = 0;
    let mut serving = Vec::new();
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
        if serve {
            println!(
                "{transport}: {} {} (stored {stored} bytes); a reader: {} --child kvssrc|getmedia URL \
                 PARALLEL|BYTES [CA]",
                emu.url,
                ca.as_deref().unwrap_or(""),
                std::env::current_exe().unwrap().display()
            );
            serving.push(emu);
            continue;
        }
        // The readers in turn, round after round, so that a drift of the machine's speed reaches them all.
        let readers: [(&str, &str, String); 4] = [
            ("getmedia", "", "bare GetMedia client, one session".into()),
            ("kvssrc", "1", "kvssrc parallel-downloads=1".into()),
            (
                "kvssrc",
                "4",
                "kvssrc parallel-downloads=4 (default)".into(),
            ),
            ("kvssrc", "5", "kvssrc parallel-downloads=5".into()),
        ];
        let first = rows.len();
        for (_, _, what) in &readers {
            rows.push(Row {
                transport,
                what: what.clone(),
                runs: Vec::new(),
            });
        }
        for _ in 0..rounds {
            for (i, (mode, parallel, _)) in readers.iter().enumerate() {
                let m = if *mode == "getmedia" {
                    let m = child("getmedia", &[&emu.url, &stored.to_string()]);
                    assert!(m.count >= stored, "every byte read");
                    m
                } else {
                    let m = child("kvssrc", &[&emu.url, parallel]);
                    assert_eq!(m.count, stored, "every byte read");
                    m
                };
                rows[first + i].runs.push(m);
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    if serve {
        println!("serving until killed");
        loop {
            std::thread::park();
        }
    }
    drop(serving);
    let gb = stored as f64 / 1e9;
    let mb = stored as f64 / 1e6;
    println!(
        "stored: {mb:.1} MB in {clusters} fragments; the emulator holds each stream to the service's read limits \
         (25 MB/s per connection, 5 GetMediaForFragmentList connections and 5 calls/s); loopback, no SigV4 checks"
    );
    println!(
        "medians of {rounds} rounds (the readers in turn in each); x bare: the median of each round's ratio to \
         the bare client's reading CPU in the same round, with its lowest and highest"
    );
    println!(
        "{:<6} {:<38} {:>6} {:>6} {:>8} {:>7} {:>17} {:>6} {:>9} {:>8}",
        "",
        "reader",
        "wall s",
        "MB/s",
        "CPU s/GB",
        "reading",
        "x bare (min-max)",
        "RSS MB",
        "switch/MB",
        "fault/MB"
    );
    let work = |m: &Measured| m.work_cpu.unwrap_or(m.cpu) / gb;
    for transport in ["HTTP", "HTTPS"] {
        let bare = rows
            .iter()
            .find(|r| r.transport == transport && r.what.starts_with("bare"))
            .unwrap();
        for row in rows.iter().filter(|r| r.transport == transport) {
            let of = |f: &dyn Fn(&Measured) -> f64| median(row.runs.iter().map(f).collect());
            let ratios: Vec<f64> = row
                .runs
                .iter()
                .zip(&bare.runs)
                .map(|(m, b)| work(m) / work(b))
                .collect();
            let (low, high) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
            let events = |m: &Measured| m.work_events.unwrap_or_default();
            println!(
                "{:<6} {:<38} {:>6.2} {:>6.1} {:>8.2} {:>7.2} {:>5.2} ({:.2}-{:.2}) {:>6.0} {:>9.1} {:>8.1}",
                row.transport,
                row.what,
                of(&|m| m.seconds),
                mb / of(&|m| m.seconds),
                of(&|m| m.cpu / gb),
                of(&work),
                median(ratios),
                low,
                high,
                of(&|m| m.rss_mb),
                of(&|m| events(m).0 as f64 / mb),
                of(&|m| events(m).1 as f64 / mb)
            );
        }
    }
}
