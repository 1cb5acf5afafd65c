#!/usr/bin/env bash
# The demo: installs what is missing, builds the plugin and the emulator, starts the emulator and shows the
# elements as gst-inspect-1.0 sees them. Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_all

say "Building the plugin and kvs-emulator (release)"
cargo build --release --workspace

export GST_PLUGIN_PATH="$PWD/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
say "Starting kvs-emulator on a free port"
coproc EMULATOR { exec target/release/kvs-emulator --listen 127.0.0.1:0; }
trap 'kill "$EMULATOR_PID" 2>/dev/null || true' EXIT
read -r -u "${EMULATOR[0]}" base_url
say "kvs-emulator is at $base_url"

say "gst-inspect-1.0 kvs"
gst-inspect-1.0 kvs
say "gst-inspect-1.0 kvssink"
gst-inspect-1.0 kvssink

say "Demo done: the plugin loads and the emulator answers at $base_url"
