#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The demo: installs what is missing, builds the plugin and the emulator, starts the emulator, streams ten
# seconds of H.264 test video through kvssink, reads it back with kvssrc and checks that every frame came back
# identical, and that the output plays (ffprobe counts its frames). Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_all

say "Building the plugin, kvs-emulator and the frame checker (release)"
cargo build --release --workspace --lib --bins --examples

export GST_PLUGIN_PATH="$PWD/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
out=demo-out
mkdir -p "$out"
say "Starting kvs-emulator on a free port (log: $out/emulator.log)"
coproc EMULATOR { exec target/release/kvs-emulator --listen 127.0.0.1:0 2>"$out/emulator.log"; }
trap 'kill "$EMULATOR_PID" 2>/dev/null || true' EXIT
read -r -u "${EMULATOR[0]}" url
say "kvs-emulator is at $url"

say "gst-inspect-1.0 kvs"
gst-inspect-1.0 kvs

say "CreateStream demo (retention 1 h)"
curl -sS -X POST "$url/createStream" -H 'content-type: application/json' \
    -d '{"StreamName":"demo","DataRetentionInHours":1}'
echo

say "kvssink: 10 s of test video (300 frames, H.264) through matroskamux to the emulator, a copy in $out/in.mkv"
GST_DEBUG="${GST_DEBUG:-kvssink:3}" gst-launch-1.0 -e -m videotestsrc num-buffers=300 pattern=ball \
    ! video/x-raw,format=I420,width=640,height=480,framerate=30/1 \
    ! x264enc key-int-max=30 option-string=scenecut=0 bframes=0 tune=zerolatency ! h264parse \
    ! matroskamux streamable=true ! tee name=t \
    t. ! queue ! kvssink stream-name=demo endpoint-uri="$url" access-key=AKIDDEMO secret-access-key=demo-secret \
        region=us-east-1 sync=false \
    t. ! queue ! filesink location="$out/in.mkv" >"$out/kvssink.log" 2>&1
for kind in BUFFERING RECEIVED PERSISTED ERROR; do
    printf '  %-9s %s\n' "$kind" "$(grep -c "event-type=(string)$kind" "$out/kvssink.log" || true)"
done
if grep -q 'ERROR: from element' "$out/kvssink.log"; then
    cat "$out/kvssink.log" >&2
    echo "error: kvssink failed" >&2
    exit 1
fi

say "kvssrc: everything stored up to now (a range read, ends with EOS) into $out/out.mkv"
end=$(date +%s.%N)
gst-launch-1.0 -e -m kvssrc stream-name=demo start-selector=earliest end-timestamp="$end" endpoint-uri="$url" \
    access-key=AKIDDEMO secret-access-key=demo-secret region=us-east-1 \
    ! filesink location="$out/out.mkv" >"$out/kvssrc.log" 2>&1 || { cat "$out/kvssrc.log" >&2; exit 1; }
grep -o 'kvssrc-progress.*percent=(uint)100' "$out/kvssrc.log" | tail -1 | sed 's/^/  /'
probed=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames \
    -of default=nokey=1:noprint_wrappers=1 "$out/out.mkv")
echo "  ffprobe counts $probed video frames in $out/out.mkv"

say "Checking: every frame back, byte for byte"
target/release/examples/mkvframes "$out/in.mkv" "$out/out.mkv" | tee "$out/check.txt"
in_line=$(sed -n 1p "$out/check.txt"); out_line=$(sed -n 2p "$out/check.txt")
in_frames=${in_line#*: }; in_frames=${in_frames%% *}; out_frames=${out_line#*: }; out_frames=${out_frames%% *}
if [ "${in_line##* }" != "${out_line##* }" ] || [ "$in_frames" != "$out_frames" ] || [ "$probed" != "$in_frames" ]; then
    echo "error: the frames read back differ from the frames uploaded" >&2
    exit 1
fi
say "Demo done: $in_frames frames uploaded through kvssink and read back through kvssrc identical."
