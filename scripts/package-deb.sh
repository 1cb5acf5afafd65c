#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Builds the Debian packages of this machine's architecture, from a meson install (the plugin, stripped) and the
# emulator binary:
#   gstreamer1.0-kvs_VERSION_ARCH.deb         libgstkvs.so in GStreamer's plugin directory
#   gstreamer1.0-kvs-dbgsym_VERSION_ARCH.deb  its debug information under /usr/lib/debug (gdb and perf find it)
#   kvs-emulator_VERSION_ARCH.deb             /usr/bin/kvs-emulator
# The library dependencies come from dpkg-shlibdeps, as a Debian build computes them.
#
# usage: bash scripts/package-deb.sh [PROFILE [OUTDIR]]
#   PROFILE release (default: what users install) or debug (the test command's compilation, reused; the
#   packages are then laid out the same, with an unoptimised plugin). DEB_COMPRESSION (default xz) is passed to
#   dpkg-deb -Z.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-release}
out=${2:-target/debian}
# The cargo build of the emulator selects the same targets as meson's, so that nothing is compiled again.
case "$profile" in
release) buildtype=release all_targets=false cargo_args=(--release --bins) target_dir=target/release ;;
debug) buildtype=debug all_targets=true cargo_args=(--all-targets) target_dir=target/debug ;;
*) echo "usage: $0 [release|debug] [OUTDIR]" >&2; exit 2 ;;
esac

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# The plugin and its debug information, as `meson install` puts them.
build="target/meson-$profile"
rm -rf "$build"
meson setup "$build" -Dbuildtype="$buildtype" -Dcargo-all-targets="$all_targets" >/dev/null
meson compile -C "$build" >/dev/null
DESTDIR="$work/stage" meson install -C "$build" >/dev/null
cargo build --workspace "${cargo_args[@]}" 2>&1 | grep -Ev '^ +(Compiling|Fresh) ' || true

# dpkg-shlibdeps reads debian/control of the directory it runs in.
mkdir -p "$work/src/debian"
printf 'Source: gst-plugin-kvs\n\nPackage: any\nArchitecture: any\n' >"$work/src/debian/control"
depends() { # FILE: the library dependencies of FILE, as a Depends value
    (cd "$work/src" && dpkg-shlibdeps -O -e"$1" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
}

# package NAME ROOT CONTROL-FIELDS...: writes NAME_VERSION_ARCH.deb from ROOT
package() {
    local name=$1 root=$2
    shift 2
    mkdir -p "$root/DEBIAN" "$root/usr/share/doc/$name"
    cp LICENSE "$root/usr/share/doc/$name/copyright"
    {
        echo "Package: $name"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: gst-plugin-kvs developers <gst-plugin-kvs@users.noreply.invalid>"
        echo "Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)"
        printf '%s\n' "$@"
    } >"$root/DEBIAN/control"
    dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$root" "$out/${name}_${version}_${arch}.deb" >/dev/null
    echo "$out/${name}_${version}_${arch}.deb"
}

plugin_root="$work/plugin"
mkdir -p "$plugin_root"
(cd "$work/stage" && find . -path ./usr/lib/debug -prune -o -type f -print) | while read -r file; do
    install -D -m 644 "$work/stage/$file" "$plugin_root/$file"
done
plugin=$(find "$plugin_root" -name libgstkvs.so)
package gstreamer1.0-kvs "$plugin_root" \
    "Depends: $(depends "$plugin"), gstreamer1.0-plugins-good (>= 1.22)" \
    "Recommends: gstreamer1.0-plugins-bad, gstreamer1.0-plugins-base" \
    "Suggests: kvs-emulator" \
    "Section: libs" \
    "Priority: optional" \
    "Description: GStreamer elements for Amazon Kinesis Video Streams" \
    " kvssink streams video to Kinesis Video Streams (PutMedia), from matroskamux or from" \
    " elementary H.264/H.265/AAC streams, with the official C++ kvssink's property names;" \
    " kvssrc reads a stream (GetMedia) live or from the past as Matroska."

dbg_root="$work/dbgsym"
mkdir -p "$dbg_root/usr/lib"
cp -a "$work/stage/usr/lib/debug" "$dbg_root/usr/lib/debug"
package gstreamer1.0-kvs-dbgsym "$dbg_root" \
    "Depends: gstreamer1.0-kvs (= $version)" \
    "Section: debug" \
    "Priority: optional" \
    "Description: debug symbols for gstreamer1.0-kvs"

emulator_root="$work/emulator"
mkdir -p "$emulator_root/usr/bin"
objcopy --strip-debug --strip-unneeded "$target_dir/kvs-emulator" "$emulator_root/usr/bin/kvs-emulator"
chmod 755 "$emulator_root/usr/bin/kvs-emulator"
package kvs-emulator "$emulator_root" \
    "Depends: $(depends "$emulator_root/usr/bin/kvs-emulator")" \
    "Section: net" \
    "Priority: optional" \
    "Description: local Kinesis Video Streams-compatible server for tests and demos" \
    " The control plane, PutMedia, GetMedia and the archived-media APIs of Amazon Kinesis" \
    " Video Streams on one port, for testing producers and consumers without AWS."
