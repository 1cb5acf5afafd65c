#!/bin/sh
# SPDX-License-Identifier: MPL-2.0
# Called by meson.build: builds libgstkvs.so with cargo and copies it to meson's output path. The whole
# workspace's libraries are built, so cargo resolves features as `cargo build --workspace` does and reuses what
# that already compiled. With ALL_TARGETS=true every target (tests, benches, examples) is built in the same call,
# as the test command does: dev-dependencies change the features of shared crates, so only the same target
# selection reuses the test command's compilation instead of compiling part of the graph again.
#
# The installed plugin is stripped: its debug information (the release profile keeps line tables, 70 MB of the
# 80 MB) goes to DEBUG_OUTPUT, which meson installs under /usr/lib/debug as Debian's -dbgsym packages do, linked
# from the plugin by a .gnu_debuglink section so that gdb and perf find it.
# usage: cargo-build.sh CARGO SOURCE_ROOT TARGET_DIR PROFILE ALL_TARGETS OUTPUT DEBUG_OUTPUT
set -eu
cargo=$1 src=$2 target_dir=$3 profile=$4 all_targets=$5 output=$6 debug_output=$7
set -- --manifest-path "$src/Cargo.toml" --target-dir "$target_dir" --workspace
if [ "$profile" = release ]; then set -- "$@" --release; fi
if [ "$all_targets" = true ]; then set -- "$@" --all-targets; else set -- "$@" --lib; fi
"$cargo" build "$@"
built="$target_dir/$profile/libgstkvs.so"
objcopy --only-keep-debug --compress-debug-sections "$built" "$debug_output"
chmod 644 "$debug_output"
objcopy --strip-debug --strip-unneeded --remove-section=.comment \
    --add-gnu-debuglink="$debug_output" "$built" "$output"
