// SPDX-License-Identifier: MPL-2.0

//! The command-line options of the seeded benchmarks (`--name N`), shared by `chaos` and `hostile`.

/// The value after `--name` on the command line, as a number.
pub fn value(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// `--seed`, else the time: a run that fails prints its seed, so that it can be replayed.
pub fn seed() -> u64 {
    value("--seed").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    })
}
