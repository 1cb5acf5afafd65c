#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Checks the Debian packages (scripts/package-deb.sh) as a user installs them: they are unpacked into a
# temporary root whose GStreamer plugin directory is laid over the system's (an overlay mount in a private mount
# namespace, so nothing is installed on this machine), and then, with no GST_PLUGIN_PATH, gst-inspect-1.0 finds
# kvssink in the system plugin directory, the packaged kvs-emulator runs, and a pipeline streams test video
# through kvssink into it and reads it back with kvssrc, frame for frame.
#
# usage: bash scripts/test-packages.sh [PROFILE]   (PROFILE as for package-deb.sh; default debug)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-debug}
work=$(mktemp -d)
cleanup() {
    [ -n "${emulator_pid:-}" ] && kill "$emulator_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "error: $*" >&2; exit 1; }

DEB_COMPRESSION=gzip bash scripts/package-deb.sh "$profile" "$work/debs" >"$work/debs.txt"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
plugin_deb="$work/debs/gstreamer1.0-kvs_${version}_${arch}.deb"
dbgsym_deb="$work/debs/gstreamer1.0-kvs-dbgsym_${version}_${arch}.deb"
emulator_deb="$work/debs/kvs-emulator_${version}_${arch}.deb"
for deb in "$plugin_deb" "$dbgsym_deb" "$emulator_deb"; do
    [ -s "$deb" ] || fail "package-deb.sh made no $deb"
done

plugindir=$(pkg-config --variable=pluginsdir gstreamer-1.0)
echo "==> what the packages hold"
dpkg-deb -c "$plugin_deb" | grep " \.$plugindir/libgstkvs.so$" >/dev/null || fail "the plugin package has no $plugindir/libgstkvs.so"
dpkg-deb -c "$dbgsym_deb" | grep " \./usr/lib/debug$plugindir/libgstkvs.so.debug$" >/dev/null ||
    fail "the dbgsym package has no /usr/lib/debug$plugindir/libgstkvs.so.debug"
dpkg-deb -c "$emulator_deb" | grep " \./usr/bin/kvs-emulator$" >/dev/null || fail "the emulator package has no /usr/bin/kvs-emulator"
depends=$(dpkg-deb -f "$plugin_deb" Depends)
echo "  gstreamer1.0-kvs Depends: $depends"
for package in libc6 libglib2.0-0 libgstreamer1.0-0 gstreamer1.0-plugins-good; do
    [[ ", $depends" == *", $package "* ]] || fail "gstreamer1.0-kvs does not depend on $package"
done

root="$work/root"
for deb in "$plugin_deb" "$dbgsym_deb" "$emulator_deb"; do dpkg-deb -x "$deb" "$root"; done
plugin="$root$plugindir/libgstkvs.so"
echo "==> the installed plugin is stripped and points at its debug information"
sections=$(readelf -S --wide "$plugin")
! grep -q ' \.debug_' <<<"$sections" || fail "the installed plugin has debug sections"
grep -q ' \.gnu_debuglink ' <<<"$sections" || fail "the installed plugin has no .gnu_debuglink"
readelf -S --wide "$root/usr/lib/debug$plugindir/libgstkvs.so.debug" | grep -q ' \.debug_line ' ||
    fail "the debug file has no line tables"
printf '  %s: %s bytes; %s: %s bytes\n' "libgstkvs.so" "$(stat -c %s "$plugin")" \
    "libgstkvs.so.debug" "$(stat -c %s "$root/usr/lib/debug$plugindir/libgstkvs.so.debug")"

echo "==> the packaged kvs-emulator"
coproc EMULATOR { exec "$root/usr/bin/kvs-emulator" --listen 127.0.0.1:0 2>"$work/emulator.log"; }
emulator_pid=$EMULATOR_PID
read -r -u "${EMULATOR[0]}" url
echo "  listening at $url"

# Runs "$@" where the system plugin directory holds what the packages put there.
cat >"$work/installed.sh" <<EOF
set -eu
mount -t overlay overlay -o "lowerdir=$root$plugindir:$plugindir" "$plugindir"
exec env -u GST_PLUGIN_PATH -u GST_PLUGIN_PATH_1_0 -u GST_PLUGIN_SYSTEM_PATH -u GST_PLUGIN_SYSTEM_PATH_1_0 \
    GST_REGISTRY_1_0="$work/registry.bin" "\$@"
EOF
installed() { unshare --mount --propagation private bash "$work/installed.sh" "$@"; }
installed true 2>/dev/null || fail "cannot lay the package over $plugindir (unshare --mount and an overlay mount need root)"

echo "==> gst-inspect-1.0 kvssink, with no GST_PLUGIN_PATH"
installed gst-inspect-1.0 kvssink >"$work/inspect.txt" || { cat "$work/inspect.txt"; fail "gst-inspect-1.0 kvssink failed"; }
grep -E '^  (Filename|Version) ' "$work/inspect.txt"
# Where gst-inspect-1.0 found it, the same file as the system plugin directory's (Debian 12 links /lib to usr/lib).
found=$(sed -n 's/^  Filename  *//p' "$work/inspect.txt")
[ "$(readlink -f "$found")" = "$(readlink -f "$plugindir")/libgstkvs.so" ] || fail "kvssink comes from $found, not $plugindir"

echo "==> a pipeline into the packaged emulator, read back with kvssrc"
auth="endpoint-uri=$url access-key=AKIDPACKAGE secret-access-key=package-secret region=us-east-1"
installed gst-launch-1.0 -e -m videotestsrc num-buffers=90 \
    ! video/x-raw,width=320,height=240,framerate=30/1 \
    ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse \
    ! matroskamux ! tee name=t t. ! queue ! kvssink stream-name=packaged $auth sync=false \
    t. ! queue ! filesink location="$work/in.mkv" >"$work/kvssink.log" 2>&1 ||
    { cat "$work/kvssink.log"; fail "the kvssink pipeline failed"; }
persisted=$(grep -c 'event-type=(string)PERSISTED' "$work/kvssink.log" || true)
echo "  PERSISTED: $persisted"
[ "$persisted" = 3 ] || fail "3 fragments should be PERSISTED"
installed gst-launch-1.0 -e kvssrc stream-name=packaged start-selector=earliest end-timestamp="$(date +%s.%N)" \
    $auth ! filesink location="$work/out.mkv" >"$work/kvssrc.log" 2>&1 ||
    { cat "$work/kvssrc.log"; fail "the kvssrc pipeline failed"; }
checker="target/$([ "$profile" = release ] && echo release || echo debug)/examples/mkvframes"
"$checker" "$work/in.mkv" "$work/out.mkv" | tee "$work/check.txt"
in_line=$(sed -n 1p "$work/check.txt" | cut -d: -f2-)
[ "$in_line" = "$(sed -n 2p "$work/check.txt" | cut -d: -f2-)" ] || fail "the frames read back differ from those sent"
[[ "$in_line" == *" 90 frames "* ]] || fail "90 frames should have gone through"
echo "packages: ok"
