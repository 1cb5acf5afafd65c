#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the whole suite and prints a summary.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_all

log=$(mktemp)
trap 'rm -f "$log"' EXIT

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo test --release --workspace"
set +e
# The plugin library, the emulator binary and the examples first, in one build (one feature resolution that
# the meson build below reuses): a test runs gst-launch-1.0 against target/release/libgstkvs.so, and the Python
# tests run target/release/kvs-emulator and the mkvframes example.
cargo build --release --workspace --lib --bins --examples 2>&1 | tail -3
cargo test --release --workspace 2>&1 | tee "$log"
cargo_status=${PIPESTATUS[0]}
set -e

say "Python tests (boto3, AWS CLI) against the release emulator binary"
pylog=$(mktemp)
set +e
test -x target/release/kvs-emulator && test -x target/release/examples/mkvframes
build_status=$?
.venv/bin/python -m pytest tests/python -q 2>&1 | tee "$pylog"
pytest_status=${PIPESTATUS[0]}
set -e
# pytest's closing line, e.g. "1 failed, 14 passed, 2 warnings in 15.02s".
pytest_summary=$(grep -E '^=*( *[0-9]+ [a-z]+,?)+ in [0-9.]+s' "$pylog" | tail -1 || true)
pytest_passed=$( (echo "$pytest_summary" | grep -Eo '[0-9]+ passed' || true) | awk '{s+=$1} END {print s+0}')
pytest_failed=$( (echo "$pytest_summary" | grep -Eo '[0-9]+ (failed|errors?)' || true) | awk '{s+=$1} END {print s+0}')
# A pytest run that failed without counting a failure (no test collected, crash, missing binary) counts as one.
if { [ "$pytest_status" != 0 ] || [ "$build_status" != 0 ]; } && [ "$pytest_failed" = 0 ]; then pytest_failed=1; fi
rm -f "$pylog"

say "meson: build and install into a staging directory, then load the installed plugin"
stage=$(mktemp -d)
meson_status=0
(
    set -e
    rm -rf target/meson-build
    meson setup target/meson-build >/dev/null
    meson compile -C target/meson-build
    DESTDIR="$stage" meson install -C target/meson-build
    plugindir=$(pkg-config --variable=pluginsdir gstreamer-1.0)
    test -f "$stage$plugindir/libgstkvs.so"
    GST_REGISTRY="$stage/registry.bin" GST_PLUGIN_PATH="$stage$plugindir" gst-inspect-1.0 kvssink >/dev/null
) || meson_status=1
rm -rf "$stage"

passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
[ "$meson_status" = 0 ] && passed=$((passed + 1)) || failed=$((failed + 1))
passed=$((passed + pytest_passed))
failed=$((failed + pytest_failed))
if [ "$cargo_status" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
