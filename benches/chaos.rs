// SPDX-License-Identifier: MPL-2.0

//! The fault campaign (`tests/chaos/campaign.rs`) at full length: an hour of stream time through kvssink while
//! 120 PutMedia and 40 GetMedia faults drawn from the seed (counted when they fire) and two emulator restarts
//! hit it, and a live kvssrc reads the stream. Prints what was sent, stored and read, the faults armed and
//! fired by kind, the reconnections, the longest gap and the memory; fails if a frame was lost, corrupted, or
//! read twice or out of order, or if a kind of fault armed never fired.
//!
//! `cargo bench --bench chaos [-- --seed N --seconds S --speed X --faults F]`

#[path = "../tests/chaos/campaign.rs"]
mod campaign;
#[path = "common/options.rs"]
mod options;
use options::value;

fn main() {
    let seed = options::seed();
    // target/<profile>/deps/chaos-<hash> -> target/<profile>: the plugin and the emulator of this profile.
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_path_buf();
    // The reader child loads libgstkvs.so and the campaign runs the emulator binary from this directory: build
    // both for this profile first (cargo bench builds neither).
    let profile = if dir.ends_with("release") {
        "release"
    } else {
        "dev"
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--profile",
            profile,
            "-p",
            "gst-plugin-kvs",
            "-p",
            "kvs-emulator",
            "--lib",
            "--bins",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success(), "cannot build the plugin and kvs-emulator");
    let emulator = dir.join("kvs-emulator");
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
    let config = campaign::Config {
        seed,
        stream_seconds: value("--seconds").unwrap_or(3600),
        speed: value("--speed").unwrap_or(30),
        faults: value("--faults").unwrap_or(120) as usize,
        restarts: 2,
        read_faults: value("--read-faults").unwrap_or(40) as usize,
        emulator,
        plugin_dir: dir,
    };
    println!(
        "chaos: seed {seed}, {} s of stream at {}x, {} PutMedia fault sets (each armed, then the connection \
         dropped so that the next one takes it, then waited for until it fired), {} restarts, {} GetMedia fault \
         sets",
        config.stream_seconds, config.speed, config.faults, config.restarts, config.read_faults
    );
    let report = campaign::run(&config);
    report.print(&config);
    report.check();
    println!("chaos: 0 lost, 0 corrupt, every frame read once in order (seed {seed})");
}
