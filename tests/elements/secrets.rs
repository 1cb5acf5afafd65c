// SPDX-License-Identifier: MPL-2.0

//! A known secret key and session token, given to kvssink and kvssrc through the API (as applications do; a
//! `gst-launch-1.0` command line is logged by GStreamer's own parser), never show up: not in a `GST_DEBUG=*:9`
//! log, bus messages, error and warning texts, property reads, `gst-inspect-1.0`, nor the emulator's log (which
//! takes its keys from a file and the environment, not its command line). The run goes through a refused
//! request (403), reset connections and retries.
//!
//! `GST_DEBUG` is read once per process, so the pipelines run in a child process: this test binary again,
//! running [`child`].

use std::time::Duration;

use crate::common::*;
use gst::prelude::*;
use serde_json::json;

const KEY_ID: &str = "AKIDSECRETSTEST";
const SECRET: &str = "kvsSecretZq8wX3rT9mP2vL5";
const TOKEN: &str = "kvsTokenHn4vB7kL1sD6fG0";
/// A second key, given to the emulator through its environment.
const ENV_SECRET: &str = "kvsEnvSecretYt5cR1wQ8";

#[test]
fn secrets_never_appear_in_logs_messages_property_reads_or_the_emulators_log() {
    let dir = std::env::temp_dir().join(format!("kvs-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, format!("# test keys\n{KEY_ID}:{SECRET}\n")).unwrap();
    let emulator_log = dir.join("emulator.log");
    let mut emulator = std::process::Command::new(plugin_dir().join("kvs-emulator"))
        .args(["--listen", "127.0.0.1:0", "--credentials-file"])
        .arg(&keys)
        .env(
            "KVS_EMULATOR_CREDENTIALS",
            format!("AKIDFROMENV:{ENV_SECRET}"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&emulator_log).unwrap())
        .spawn()
        .unwrap();
    let mut url = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(emulator.stdout.take().unwrap()),
        &mut url,
    )
    .unwrap();

    let debug_log = dir.join("gst-debug.log");
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "secrets::child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KVS_SECRETS_CHILD", url.trim())
        .env("GST_DEBUG", "*:9")
        .env("GST_DEBUG_FILE", &debug_log)
        .env("GST_DEBUG_NO_COLOR", "1")
        .output()
        .unwrap();
    emulator.kill().unwrap();
    emulator.wait().unwrap();
    let child_out = format!(
        "{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(child.status.success(), "{child_out}");
    assert!(child_out.contains("child: done"), "{child_out}");

    let inspect: String = ["kvssink", "kvssrc"]
        .iter()
        .map(|factory| {
            let output = std::process::Command::new("gst-inspect-1.0")
                .arg(factory)
                .env("GST_PLUGIN_PATH", plugin_dir())
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
        .collect();
    assert!(inspect.contains("secret-access-key"));

    let log = std::fs::read(&debug_log).unwrap();
    let emulator_text = std::fs::read_to_string(&emulator_log).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // The log is the real thing: both elements logged at every level, through the failures.
    assert!(log.len() > 1_000_000, "{} bytes", log.len());
    println!(
        "GST_DEBUG=*:9 log: {} bytes; child output: {} lines",
        log.len(),
        child_out.lines().count()
    );
    let log = String::from_utf8_lossy(&log);
    for needle in ["kvssink", "kvssrc", "reconnect", "AccessDeniedException"] {
        assert!(
            log.contains(needle) || child_out.contains(needle),
            "nothing about {needle}"
        );
    }
    assert!(emulator_text.contains("putMedia"), "{emulator_text}");
    for (place, text) in [
        ("the GST_DEBUG=*:9 log", &*log),
        ("bus messages and property reads", &child_out),
        ("gst-inspect-1.0", &inspect),
        ("the emulator's log", &emulator_text),
    ] {
        for secret in [SECRET, TOKEN, ENV_SECRET] {
            assert!(!text.contains(secret), "{secret} appears in {place}");
        }
    }
}

/// Every readable property of `element`, printed.
fn print_properties(element: &gst::Element) {
    for pspec in element.list_properties() {
        if pspec.flags().contains(gst::glib::ParamFlags::READABLE) {
            let value = element.property_value(pspec.name());
            println!(
                "child: property {}.{} = {:?}",
                element.name(),
                pspec.name(),
                value.serialize().ok()
            );
        }
    }
}

/// Runs a pipeline whose kvs elements get the secrets through the API; prints every bus message and, at the end,
/// every property of the kvs elements.
fn run_with_secrets(description: &str) -> Option<String> {
    let pipeline = gst::parse::launch(description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let kvs: Vec<gst::Element> = pipeline
        .iterate_recurse()
        .into_iter()
        .flatten()
        .filter(|e| e.factory().is_some_and(|f| f.name().starts_with("kvs")))
        .collect();
    for element in &kvs {
        element.set_property("access-key", KEY_ID);
        element.set_property("secret-access-key", SECRET);
        element.set_property("session-token", TOKEN);
    }
    let bus = pipeline.bus().unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let mut error = None;
    for message in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        println!("child: message {message:?} {:?}", message.structure());
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                println!("child: error {} | {:?}", e.error(), e.debug());
                error = Some(e.error().to_string());
                break;
            }
            gst::MessageView::Warning(w) => {
                println!("child: warning {} | {:?}", w.error(), w.debug())
            }
            _ => {}
        }
    }
    for element in &kvs {
        print_properties(element);
    }
    pipeline.set_state(gst::State::Null).unwrap();
    error
}

#[test]
#[ignore = "run by secrets_never_appear_in_logs_messages_property_reads_or_the_emulators_log in a child process"]
fn child() {
    let Ok(url) = std::env::var("KVS_SECRETS_CHILD") else {
        return;
    };
    init();
    let emu = Emu::external(&url);
    let sink = |stream: &str| {
        format!("kvssink name=sink stream-name={stream} endpoint-uri={url} region=us-east-1")
    };
    let src = |stream: &str| {
        format!("kvssrc name=src stream-name={stream} endpoint-uri={url} region=us-east-1")
    };

    // A refused request.
    emu.fault(json!({"api": "describeStream", "kind": "http_error", "status": 403, "error": "AccessDeniedException"}));
    let error = run_with_secrets(&format!(
        "{} ! matroskamux ! {} sync=false",
        video_source(10),
        sink("refused")
    ));
    assert!(error.is_some_and(|e| e.contains("AccessDeniedException")));

    // An upload through two reset connections; kvssink creates the stream.
    emu.fault(
        json!({"api": "putMedia", "kind": "drop_after_bytes", "bytes": 20000, "close": "reset", "times": 2}),
    );
    let error = run_with_secrets(&format!(
        "{} ! matroskamux ! {} sync=false",
        video_source(90),
        sink("secret")
    ));
    assert_eq!(error, None);

    // A range read through a dropped download, and one through a server error.
    emu.fault(json!({"api": "getMediaForFragmentList", "kind": "drop_after_bytes", "bytes": 5000, "close": "reset"}));
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let read = format!(
        "{} start-selector=earliest end-timestamp={end:.3} ! fakesink",
        src("secret")
    );
    assert_eq!(run_with_secrets(&read), None);
    emu.fault(json!({"api": "listFragments", "kind": "http_error", "status": 500, "error": "ClientLimitExceededException"}));
    let failed = run_with_secrets(&read);
    println!("child: range read with a server error: {failed:?}");

    // A wrong secret for once: refused, and neither secret is shown.
    let wrong = format!(
        "{} ! matroskamux ! {} sync=false",
        video_source(10),
        sink("secret")
    );
    let pipeline = gst::parse::launch(&wrong)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let element = pipeline.by_name("sink").unwrap();
    element.set_property("access-key", KEY_ID);
    element.set_property("secret-access-key", format!("{SECRET}-wrong"));
    let _ = pipeline.set_state(gst::State::Playing);
    let message = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(30), &[gst::MessageType::Error])
        .expect("a refused signature");
    println!("child: wrong secret: {message:?}");
    pipeline.set_state(gst::State::Null).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    println!("child: done");
}
