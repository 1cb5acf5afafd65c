// SPDX-License-Identifier: MPL-2.0

//! Hostile input for the Matroska reader, the fragmenter, the ACK parser and the GetMedia merger: a few thousand
//! seeded cases per run (`tests/hostile/cases.rs` says what each checks). The long run, over a million cases,
//! is `cargo bench --bench hostile`.

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
            "{name}: {} cases, {} refused, {} bytes",
            tally.cases, tally.refused, tally.bytes
        );
        assert!(tally.cases >= count, "{name}");
        total += tally;
    }
    println!("total: {} cases, {} refused", total.cases, total.refused);
    assert!(total.cases >= 3_000);
}
