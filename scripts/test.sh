#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The test command: installs what the tests need, then runs the whole suite and prints a summary that counts
# every test (Rust and Python), failures included. Usage: bash scripts/test.sh
#
# One compilation: every cargo step uses the dev profile (Cargo.toml says why) and the same target selection
# (`--workspace --all-targets`), so the dependency graph is compiled once and shared by the plugin library, the
# emulator binary, the examples, the benches (built, not run), the test binaries and the meson build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_all

started=$SECONDS
log=$(mktemp)
pylog=$(mktemp)
trap 'rm -f "$log" "$pylog"' EXIT

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo build --workspace --all-targets (the plugin, kvs-emulator, examples, benches and test binaries)"
set +e
cargo build --workspace --all-targets 2>&1 | grep -Ev '^ +(Compiling|Downloaded|Fresh) ' | tail -20
build_status=${PIPESTATUS[0]}
set -e
say "built in $((SECONDS - started)) s"

# The Python tests run beside the Rust ones (their output is printed after), and each Rust test binary runs 6
# tests at a time: most tests wait on real-time pipelines and sockets, not on the CPU.
say "Python tests (boto3, AWS CLI) against target/debug/kvs-emulator, in the background"
KVS_BIN_DIR="$PWD/target/debug" .venv/bin/python -m pytest tests/python -q >"$pylog" 2>&1 &
pytest_pid=$!

# The element tests (the longest binary) run beside the other test binaries (cargo runs one binary at a time, so
# the others would wait for them). Both cargo calls select targets, not packages, so that the workspace's
# features stay the same and nothing is compiled again. (No doc tests: the crates have none.)
otherlog=$(mktemp)
trap 'rm -f "$log" "$pylog" "$otherlog"' EXIT
say "cargo test --workspace --lib --bins --test hostile --test emulator --test fixtures, in the background"
cargo test --workspace --no-fail-fast --lib --bins --test hostile --test emulator --test fixtures \
    -- --test-threads=6 >"$otherlog" 2>&1 &
other_pid=$!

say "cargo test --workspace --test elements -- --test-threads=6"
set +e
cargo test --workspace --no-fail-fast --test elements -- --test-threads=6 2>&1 | tee "$log"
cargo_status=${PIPESTATUS[0]}
wait "$other_pid"
other_status=$?
wait "$pytest_pid"
pytest_status=$?
set -e
say "the other test binaries:"
cat "$otherlog"
cat "$otherlog" >>"$log"
[ "$other_status" = 0 ] || cargo_status=$other_status
say "Python tests:"
cat "$pylog"

say "cargo clippy --workspace --all-targets -- -D warnings"
clippy_status=0
cargo clippy --workspace --all-targets -- -D warnings 2>&1 | grep -Ev '^ +(Checking|Compiling) ' | tail -30
[ "${PIPESTATUS[0]}" = 0 ] || clippy_status=1

# The meson install, the Debian packages made from it and a pipeline through them, with no plugin path
# (scripts/test-packages.sh says how).
say "packages: meson install, the .deb packages, gst-inspect-1.0 and a pipeline from them"
packages_status=0
bash scripts/test-packages.sh debug || packages_status=1

# cargo-c and cargo-deny: installing them compiles them (10.5 and 4 min on 2 cores, beyond this command's
# budget on a fresh machine), so their checks run where they are installed; scripts/test-cbuild.sh and
# scripts/test-deny.sh install them and run the checks anywhere.
cbuild_status=skipped
if cargo cbuild --version >/dev/null 2>&1; then
    say "cargo cbuild: the static plugin linked into a C program"
    cbuild_status=0
    bash scripts/test-cbuild.sh || cbuild_status=1
else
    say "cargo cbuild: skipped, cargo-c is not installed (bash scripts/test-cbuild.sh installs it and checks)"
fi
deny_status=skipped
if cargo deny --version >/dev/null 2>&1; then
    say "cargo deny: licences, bans, sources"
    deny_status=0
    bash scripts/test-deny.sh || deny_status=1
else
    say "cargo deny: skipped, cargo-deny is not installed (bash scripts/test-deny.sh installs it and checks)"
fi

# Rust: the sum of every test binary's "test result:" line. A test binary that cargo reports failed without a
# failing result line (it crashed, or did not build) counts as one failure, and so does a failed build.
sum() { { grep -Eo "[0-9]+ $1" || true; } | awk '{s+=$1} END {print s+0}'; }
rust_passed=$(grep -E '^test result: ' "$log" | sum passed)
rust_failed=$(grep -E '^test result: ' "$log" | sum failed)
failed_binaries=$(grep -Ec '^test result: FAILED' "$log" || true)
failed_targets=$(grep -Eo '^error: [0-9]+ targets? failed' "$log" | grep -Eo '[0-9]+' || echo 0)
if [ "$failed_targets" -gt "$failed_binaries" ]; then rust_failed=$((rust_failed + failed_targets - failed_binaries)); fi
if { [ "$cargo_status" != 0 ] || [ "$build_status" != 0 ]; } && [ "$rust_failed" = 0 ]; then rust_failed=1; fi

# Python: pytest's closing line, e.g. "1 failed, 14 passed, 2 warnings in 15.02s". A run that failed without
# counting a failure (nothing collected, a crash) counts as one.
pytest_summary=$(grep -E '^=*( *[0-9]+ [a-z]+,?)+ in [0-9.]+s' "$pylog" | tail -1 || true)
py_passed=$(echo "$pytest_summary" | sum passed)
py_failed=$(echo "$pytest_summary" | sum '(failed|errors?)')
if [ "$pytest_status" != 0 ] && [ "$py_failed" = 0 ]; then py_failed=1; fi

[ "$packages_status" = 0 ] && packages_passed=1 packages_failed=0 || packages_passed=0 packages_failed=1
# optional STATUS TOOL: sets optional_passed, optional_failed and optional_text for a check that runs only
# where TOOL is installed.
optional() {
    case "$1" in
    0) optional_passed=1 optional_failed=0 optional_text="1 passed" ;;
    skipped) optional_passed=0 optional_failed=0 optional_text="skipped ($2 not installed)" ;;
    *) optional_passed=0 optional_failed=1 optional_text="1 failed" ;;
    esac
}
optional "$cbuild_status" cargo-c
cbuild_passed=$optional_passed cbuild_failed=$optional_failed cbuild_text=$optional_text
optional "$deny_status" cargo-deny
deny_passed=$optional_passed deny_failed=$optional_failed deny_text=$optional_text
[ "$clippy_status" = 0 ] && clippy_passed=1 clippy_failed=0 || clippy_passed=0 clippy_failed=1

echo
echo "Rust: $rust_passed passed, $rust_failed failed; Python: $py_passed passed, $py_failed failed;" \
    "clippy: $clippy_passed passed, $clippy_failed failed;" \
    "packages: $packages_passed passed, $packages_failed failed; cargo cbuild: $cbuild_text;" \
    "cargo deny: $deny_text ($((SECONDS - started)) s after set-up)"
passed=$((rust_passed + py_passed + clippy_passed + packages_passed + cbuild_passed + deny_passed))
failed=$((rust_failed + py_failed + clippy_failed + packages_failed + cbuild_failed + deny_failed))
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
