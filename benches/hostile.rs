// SPDX-License-Identifier: MPL-2.0

//! The long run of the hostile-input cases (`tests/hostile/cases.rs`): 20,000 seeded inputs per family (1,000 for
//! the every-split family, each split at every byte) for the Matroska reader, the fragmenter, the ACK parser and
//! the GetMedia merger, every family under the allocation check, with the seed printed so that any failure can
//! be replayed (`cargo bench --bench hostile -- --seed N --per-family M`). Distinct inputs and the buffer
//! splits compared on them are counted apart.

#[path = "../tests/hostile/cases.rs"]
mod cases;
#[path = "common/options.rs"]
mod options;
use options::value;

#[global_allocator]
static ALLOC: cases::CountingAlloc = cases::CountingAlloc;

fn main() {
    let seed = options::seed();
    let per_family = value("--per-family").unwrap_or(20_000);
    println!("hostile input: seed {seed}, {per_family} seeds per family");
    let started = std::time::Instant::now();
    let mut total = cases::Tally::default();
    for (index, (name, case)) in cases::FAMILIES.iter().enumerate() {
        // Every family gets its own seed range; the every-split family gives hundreds of cases per seed.
        let first = seed
            .wrapping_mul(31)
            .wrapping_add(index as u64 * 1_000_000_007);
        let count = if name.contains("every split") {
            per_family / 20
        } else {
            per_family
        };
        let family_started = std::time::Instant::now();
        let tally = cases::run_family(name, *case, first, count);
        let seconds = family_started.elapsed().as_secs_f64();
        println!(
            "{name}: {} inputs ({} refused, {} under the allocation check), {} splits compared, {:.1} MB, \
             {:.1} s",
            tally.inputs,
            tally.refused,
            tally.allocation_checked,
            tally.splits,
            tally.bytes as f64 / 1e6,
            seconds
        );
        assert_eq!(tally.allocation_checked, tally.inputs, "{name}");
        total += tally;
    }
    println!(
        "total: {} distinct inputs ({} refused), {} buffer splits compared with the whole input, {:.1} MB of \
         input, {:.1} s; no panic, hang, declared-size allocation or split-dependent output (seed {seed})",
        total.inputs,
        total.refused,
        total.splits,
        total.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
}
