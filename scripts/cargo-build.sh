#!/bin/sh
# Called by meson.build: builds libgstkvs.so with cargo and copies it to meson's output path.
# usage: cargo-build.sh CARGO SOURCE_ROOT TARGET_DIR PROFILE OUTPUT
set -eu
cargo=$1 src=$2 target_dir=$3 profile=$4 output=$5
if [ "$profile" = release ]; then
    "$cargo" build --manifest-path "$src/Cargo.toml" --target-dir "$target_dir" --release --lib -p gst-plugin-kvs
else
    "$cargo" build --manifest-path "$src/Cargo.toml" --target-dir "$target_dir" --lib -p gst-plugin-kvs
fi
cp "$target_dir/$profile/libgstkvs.so" "$output"
