#!/bin/sh
# Called by meson.build: builds libgstkvs.so with cargo and copies it to meson's output path. The whole
# workspace's libraries are built, so cargo resolves features as `cargo build --workspace` does and reuses
# what that (or the test command) already compiled.
# usage: cargo-build.sh CARGO SOURCE_ROOT TARGET_DIR PROFILE OUTPUT
set -eu
cargo=$1 src=$2 target_dir=$3 profile=$4 output=$5
if [ "$profile" = release ]; then
    "$cargo" build --manifest-path "$src/Cargo.toml" --target-dir "$target_dir" --release --lib --workspace
else
    "$cargo" build --manifest-path "$src/Cargo.toml" --target-dir "$target_dir" --lib --workspace
fi
cp "$target_dir/$profile/libgstkvs.so" "$output"
