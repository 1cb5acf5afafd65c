#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Streams a camera (or any H.264 source) to Kinesis Video Streams with kvssink, printing every fragment
acknowledgement and, every few seconds, the upload statistics.

    python3 examples/python/kvs_upload.py cam1
    python3 examples/python/kvs_upload.py cam1 --source "v4l2src ! videoconvert \\
        ! x264enc tune=zerolatency key-int-max=60 bframes=0 ! h264parse"

Credentials and region come from the AWS environment (AWS_ACCESS_KEY_ID..., AWS_PROFILE, an instance role);
the endpoint from CONTROL_PLANE_URI when it is set (kvs-emulator). Ctrl-C ends the stream cleanly: kvssink
sends what it holds and waits for the last acknowledgements. Exits with 1 and the element's message on an error.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

DEFAULT_SOURCE = (
    "videotestsrc is-live=true ! video/x-raw,width=640,height=480,framerate=30/1 "
    "! x264enc tune=zerolatency key-int-max=60 bframes=0 ! h264parse"
)


def print_stats(sink):
    stats = sink.get_property("stats")
    print(
        f"stats: {stats.get_value('fragments-sent')} fragments sent, "
        f"{stats.get_value('fragments-persisted')} persisted, {stats.get_value('fragments-dropped')} dropped, "
        f"{stats.get_value('bytes-sent')} bytes, {stats.get_value('reconnections')} reconnections",
        flush=True,
    )
    return True  # keep the timer


def main():
    parser = argparse.ArgumentParser(description="Stream H.264 to Kinesis Video Streams with kvssink.")
    parser.add_argument("stream", help="the Kinesis video stream (created when it does not exist)")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="a gst-launch-1.0 description ending in H.264")
    parser.add_argument("--stats-every", type=float, default=5.0, help="seconds between statistics lines")
    args = parser.parse_args()

    Gst.init(None)
    try:
        pipeline = Gst.parse_launch(f"{args.source} ! matroskamux ! kvssink name=sink")
    except GLib.Error as error:
        sys.exit(f"error: cannot build the pipeline: {error.message}")
    sink = pipeline.get_by_name("sink")
    sink.set_property("stream-name", args.stream)

    loop = GLib.MainLoop()
    status = 0

    def on_message(_bus, message):
        nonlocal status
        if message.type == Gst.MessageType.ELEMENT and message.get_structure().get_name() == "kvssink-ack":
            ack = message.get_structure()
            latency = ack.get_value("latency-ms") if ack.has_field("latency-ms") else "-"
            print(
                f"ack: {ack.get_string('event-type')} fragment {ack.get_string('fragment-number')} "
                f"(timecode {ack.get_value('fragment-timecode')} ms, {latency} ms after it was sent)",
                flush=True,
            )
        elif message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            print(f"error: {error.message}", file=sys.stderr)
            if debug:
                print(f"details: {debug}", file=sys.stderr)
            status = 1
            loop.quit()
        elif message.type == Gst.MessageType.EOS:
            loop.quit()

    def stop():
        print("stopping: sending what is left", flush=True)
        pipeline.send_event(Gst.Event.new_eos())
        return GLib.SOURCE_REMOVE

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    for signum in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, stop)
    GLib.timeout_add(int(args.stats_every * 1000), print_stats, sink)

    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        # The element's error message, already on the bus, says why.
        on_message(bus, bus.pop_filtered(Gst.MessageType.ERROR))
    else:
        loop.run()
    if status == 0:
        print_stats(sink)
    pipeline.set_state(Gst.State.NULL)
    return status


if __name__ == "__main__":
    sys.exit(main())
