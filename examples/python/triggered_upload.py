#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Uploads only what happens around events: kvssink in triggered mode keeps the last seconds of a camera in
memory and uploads nothing until the application calls its `trigger` action signal (here at the times given
with --trigger, standing in for a motion detector); then it uploads from the key frame before the pre-roll to
the end of the event plus the post-roll, and stops again.

    python3 examples/python/triggered_upload.py cam1 --trigger 20:4 --trigger 40:0
    python3 examples/python/triggered_upload.py cam1 --source "rtspsrc location=rtsp://camera/stream \\
        ! rtph264depay ! h264parse" --pre-roll 5 --post-roll 3 --trigger 10:2

--trigger SECONDS:DURATION fires `trigger` SECONDS after the pipeline starts playing, for DURATION seconds
(0: until the end). Credentials and region come from the AWS environment, the endpoint from CONTROL_PLANE_URI
when it is set (kvs-emulator). Each window is printed when it starts and when it ends:

    window started: trigger signal at 20.000 s, from the key frame at 15.000 s (pre-roll 5.000 s)
    window ended: 360 frames in 12 fragments, 1234567 bytes, 11.967 s of media
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

DEFAULT_SOURCE = (
    "videotestsrc is-live=true ! video/x-raw,width=640,height=480,framerate=30/1 "
    "! x264enc tune=zerolatency key-int-max=30 bframes=0 ! h264parse"
)


def seconds(clock_time):
    return clock_time / Gst.SECOND


def trigger_spec(text):
    at, _, duration = text.partition(":")
    return float(at), float(duration or 0)


def main():
    parser = argparse.ArgumentParser(description="Upload the windows around events with kvssink.")
    parser.add_argument("stream", help="the Kinesis video stream (created when it does not exist)")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="a live gst-launch-1.0 description ending in H.264")
    parser.add_argument("--pre-roll", type=int, default=5, help="seconds uploaded before each trigger")
    parser.add_argument("--post-roll", type=int, default=3, help="seconds uploaded after each trigger ends")
    parser.add_argument("--trigger", type=trigger_spec, action="append", default=[], metavar="SECONDS:DURATION")
    parser.add_argument("--seconds", type=float, default=0, help="end the stream after this long (0: Ctrl-C)")
    parser.add_argument("--event-tags", default="", help="KVS event tags on each window's first fragment: "
                        "notification, image-generation or notification+image-generation")
    args = parser.parse_args()

    Gst.init(None)
    try:
        pipeline = Gst.parse_launch(f"{args.source} ! matroskamux ! kvssink name=sink")
    except GLib.Error as error:
        sys.exit(f"error: cannot build the pipeline: {error.message}")
    sink = pipeline.get_by_name("sink")
    sink.set_property("stream-name", args.stream)
    Gst.util_set_object_arg(sink, "upload-mode", "triggered")
    sink.set_property("pre-roll", args.pre_roll)
    sink.set_property("post-roll", args.post_roll)
    if args.event_tags:
        Gst.util_set_object_arg(sink, "event-tags", args.event_tags)

    loop = GLib.MainLoop()
    status = 0

    def on_message(_bus, message):
        nonlocal status
        structure = message.get_structure()
        if message.type == Gst.MessageType.ELEMENT and structure.get_name() == "kvssink-window-started":
            print(
                f"window started: trigger {structure.get_string('trigger')} at "
                f"{seconds(structure.get_value('trigger-running-time')):.3f} s, from the key frame at "
                f"{seconds(structure.get_value('first-running-time')):.3f} s "
                f"(pre-roll {seconds(structure.get_value('pre-roll')):.3f} s)",
                flush=True,
            )
        elif message.type == Gst.MessageType.ELEMENT and structure.get_name() == "kvssink-window-ended":
            print(
                f"window ended: {structure.get_value('frames')} frames in {structure.get_value('fragments')} "
                f"fragments, {structure.get_value('bytes')} bytes, "
                f"{seconds(structure.get_value('duration')):.3f} s of media",
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

    def fire(duration):
        # GST_CLOCK_TIME_NONE: now, and until the end when no duration is given.
        length = int(duration * Gst.SECOND) if duration > 0 else Gst.CLOCK_TIME_NONE
        sink.emit("trigger", Gst.CLOCK_TIME_NONE, length)
        return GLib.SOURCE_REMOVE

    def stop():
        pipeline.send_event(Gst.Event.new_eos())
        return GLib.SOURCE_REMOVE

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        on_message(bus, bus.pop_filtered(Gst.MessageType.ERROR))
        return 1
    for at, duration in args.trigger:
        GLib.timeout_add(int(at * 1000), fire, duration)
    if args.seconds > 0:
        GLib.timeout_add(int(args.seconds * 1000), stop)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, 2, stop)
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    return status


if __name__ == "__main__":
    sys.exit(main())
