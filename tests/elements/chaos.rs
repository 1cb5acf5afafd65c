// SPDX-License-Identifier: MPL-2.0

//! A short fault campaign in the test command (two minutes of stream time, a restart, a few dozen faults); the
//! long one is `cargo bench --bench chaos`. See `tests/chaos/campaign.rs`.

#[path = "../chaos/campaign.rs"]
pub mod campaign;

use crate::common::{init, plugin_dir};

#[test]
fn a_short_fault_campaign_loses_nothing_and_kvssrc_reads_every_frame_once() {
    init();
    let config = campaign::Config {
        seed: 20261128,
        stream_seconds: 120,
        speed: 10,
        faults: 25,
        restarts: 1,
        read_faults: 8,
        emulator: plugin_dir().join("kvs-emulator"),
        plugin_dir: plugin_dir(),
    };
    let report = campaign::run(&config);
    report.print(&config);
    report.check();
    let fired: u64 = report.fired.values().sum();
    assert!(fired >= 10, "{:?}", report.fired);
    assert_eq!(report.restarts, 1);
}
