// SPDX-License-Identifier: MPL-2.0

//! Hostile input for the Matroska reader, the fragmenter, the ACK parser and the GetMedia merger: 100 seeded
//! inputs per family (`tests/hostile/cases.rs` says what each checks). The long run, 20,000 per family, is
//! `cargo bench --bench hostile`.

#[path = "hostile/cases.rs"]
mod cases;

#[global_allocator]
static ALLOC: cases::CountingAlloc = cases::CountingAlloc;

/// Cases per family here; `HOSTILE_CASES` sets another count.
const CASES: u64 = 100;

#[test]
fn hostile_input_never_panics_hangs_or_trusts_a_declared_size_and_splits_change_nothing() {
    let count = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let mut total = cases::Tally::default();
    for (name, case) in cases::FAMILIES {
        let tally = cases::run_family(name, *case, 1, count);
        println!(
            "{name}: {} inputs ({} refused, {} under the allocation check), {} splits compared, {} bytes",
            tally.inputs, tally.refused, tally.allocation_checked, tally.splits, tally.bytes
        );
        assert_eq!(tally.inputs, count, "{name}");
        assert_eq!(tally.allocation_checked, count, "{name}");
        total += tally;
    }
    println!(
        "total: {} distinct inputs, {} refused, {} splits compared",
        total.inputs, total.refused, total.splits
    );
}
