# SPDX-License-Identifier: MPL-2.0

"""The examples in examples/, run as users run them, against a kvs-emulator process: the Python uploader and
downloader (PyGObject, with the system Python that Debian's python3-gi serves), the C uploader compiled with
pkg-config, and the Rust example built by cargo. What they upload is read back and compared frame for frame
with the project's `mkvframes` tool."""

import os
import re
import subprocess
import time

import pytest

from conftest import BIN_DIR, REPO, make_client
from test_emulator_media import FRAMES, clip, mkvframes  # noqa: F401 (clip is a fixture)

SYSTEM_PYTHON = "/usr/bin/python3"
EXAMPLES = REPO / "examples"


def source_of(clip):
    """The uploaders' --source: the clip's H.264, unchanged."""
    return f"filesrc location={clip} ! matroskademux ! h264parse"


@pytest.fixture
def env(emulator, tmp_path):
    """The environment a user sets: AWS credentials and region, the emulator's endpoint, the plugin's
    directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GST_"))}
    env.update(
        AWS_ACCESS_KEY_ID=emulator.access_key_id,
        AWS_SECRET_ACCESS_KEY=emulator.secret_access_key,
        AWS_REGION=emulator.region,
        CONTROL_PLANE_URI=emulator.base_url,
        GST_PLUGIN_PATH=str(BIN_DIR),
        GST_REGISTRY=str(tmp_path / "registry.bin"),
    )
    return env


def run(command, env, timeout=120):
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    return result


def acks(stdout, event):
    return len(re.findall(rf"^ack: {event} fragment \d+ ", stdout, re.M))


def download(stream, env, path, since):
    """The Python downloader over [since - 60 s, now + 5 s]; returns its completed process."""
    return run(
        [
            SYSTEM_PYTHON,
            str(EXAMPLES / "python" / "kvs_download.py"),
            stream,
            str(since - 60),
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5)),
            str(path),
        ],
        env,
    )


def test_python_uploader_then_downloader_every_frame_back(stream_name, env, clip, tmp_path):
    started = time.time()
    upload = run(
        [SYSTEM_PYTHON, str(EXAMPLES / "python" / "kvs_upload.py"), stream_name, "--source", source_of(clip)], env
    )
    assert upload.returncode == 0, upload.stderr
    assert acks(upload.stdout, "PERSISTED") == 3, upload.stdout
    assert acks(upload.stdout, "RECEIVED") == 3, upload.stdout
    assert re.search(r"^stats: 3 fragments sent, 3 persisted, 0 dropped, \d+ bytes, 0 reconnections$",
                     upload.stdout, re.M), upload.stdout

    saved = tmp_path / "saved.mkv"
    fetched = download(stream_name, env, saved, started)
    assert fetched.returncode == 0, fetched.stderr
    assert f"[{'#' * 30}] 3/3 fragments" in fetched.stderr, fetched.stderr
    assert fetched.stderr.rstrip().endswith(f"saved {saved}")
    assert mkvframes(saved) == mkvframes(clip)
    # A file any player opens: ffprobe counts every frame.
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", str(saved)],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == str(FRAMES)


def test_python_examples_exit_with_the_element_error(stream_name, env, emulator, tmp_path):
    env = dict(env, AWS_SECRET_ACCESS_KEY="wrong-secret")
    upload = run([SYSTEM_PYTHON, str(EXAMPLES / "python" / "kvs_upload.py"), stream_name], env)
    assert upload.returncode == 1
    first = upload.stderr.splitlines()[0]
    assert first == (
        "error: DescribeStream failed: HTTP 403 InvalidSignatureException: The request signature we "
        "calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. "
        "Consult the service documentation for details."
    ), upload.stderr
    assert "wrong-secret" not in upload.stderr + upload.stdout

    bad_time = run([SYSTEM_PYTHON, str(EXAMPLES / "python" / "kvs_download.py"), stream_name, "yesterday",
                    "1795860000", str(tmp_path / "x.mkv")], env)
    assert bad_time.returncode == 1
    assert bad_time.stderr.strip() == (
        "error: start-timestamp: 'yesterday' is neither seconds since the Unix epoch nor an RFC 3339 time"
    )


def test_python_frame_times_prints_every_frame_with_its_capture_time_and_the_tags(stream_name, env, clip):
    started = time.time()
    upload = run(
        [SYSTEM_PYTHON, str(EXAMPLES / "python" / "kvs_upload.py"), stream_name, "--source", source_of(clip)], env
    )
    assert upload.returncode == 0, upload.stderr
    listed = run(
        [SYSTEM_PYTHON, str(EXAMPLES / "python" / "frame_times.py"), stream_name, str(int(started) - 60),
         str(int(time.time()) + 5)],
        env,
    )
    assert listed.returncode == 0, listed.stderr
    lines = re.findall(
        r"^frame (\d+): captured (\S+Z), received by the service (\S+Z), (\d+) bytes$", listed.stdout, re.M
    )
    assert len(lines) == mkvframes(clip)[0], listed.stdout
    assert [int(n) for n, *_ in lines] == list(range(len(lines)))
    captured = [c for _, c, _, _ in lines]
    assert captured == sorted(captured), "capture times in order"
    assert listed.stderr.strip() == f"{len(lines)} frames"


def test_python_triggered_upload_stores_exactly_the_window_it_reports(stream_name, env, emulator, kvs, tmp_path):
    started = time.time()
    source = (
        "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 "
        "! x264enc tune=zerolatency key-int-max=30 bframes=0 speed-preset=ultrafast ! h264parse"
    )
    upload = run(
        [SYSTEM_PYTHON, str(EXAMPLES / "python" / "triggered_upload.py"), stream_name, "--source", source,
         "--pre-roll", "2", "--post-roll", "1", "--trigger", "4:1", "--seconds", "9", "--event-tags",
         "notification"],
        env,
    )
    assert upload.returncode == 0, upload.stderr
    started_lines = re.findall(
        r"^window started: trigger signal at ([\d.]+) s, from the key frame at ([\d.]+) s \(pre-roll ([\d.]+) s\)$",
        upload.stdout, re.M,
    )
    ended = re.findall(r"^window ended: (\d+) frames in (\d+) fragments, \d+ bytes, ([\d.]+) s of media$",
                       upload.stdout, re.M)
    assert len(started_lines) == 1 and len(ended) == 1, upload.stdout
    trigger, first, pre_roll = (float(v) for v in started_lines[0])
    # From the key frame (one a second) at or before trigger - 2 s, to trigger + 1 s + 1 s (times printed to the
    # millisecond: a key frame a hair after trigger - 2 s puts the window's start 3.000 s before the trigger).
    assert trigger - 3.002 <= first <= trigger - 1.999, upload.stdout
    assert abs(pre_roll - (trigger - first)) < 0.002
    frames = int(ended[0][0])
    assert abs(frames - round((trigger + 2 - first) * 30)) <= 1, upload.stdout
    # What the service stored is what the sink says it uploaded.
    saved = tmp_path / "saved.mkv"
    fetched = download(stream_name, env, saved, started)
    assert fetched.returncode == 0, fetched.stderr
    assert mkvframes(saved)[0] == frames
    # boto3 GetMedia: the window's fragments carry the notification tag (the first as sent; the service repeats
    # the tags that follow a connection's header on its later fragments, and the emulator does the same).
    endpoint = kvs.get_data_endpoint(StreamName=stream_name, APIName="GET_MEDIA")["DataEndpoint"]
    media = make_client(emulator, service="kinesis-video-media", endpoint_url=endpoint)
    payload = media.get_media(StreamName=stream_name, StartSelector={"StartSelectorType": "EARLIEST"})["Payload"]
    documents = payload.read().split(bytes.fromhex("1a45dfa3"))[1:]
    assert len(documents) == int(ended[0][1])
    assert all(b"AWS_KINESISVIDEO_NOTIFICATION" in d for d in documents)
    assert not any(b"AWS_KINESISVIDEO_IMAGE_GENERATION" in d for d in documents)


def test_c_uploader_compiled_with_pkg_config(stream_name, env, clip, tmp_path):
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "gstreamer-1.0"], capture_output=True, text=True,
                           check=True).stdout.split()
    binary = tmp_path / "kvs_upload"
    subprocess.run(["cc", "-Wall", "-Werror", str(EXAMPLES / "c" / "kvs_upload.c"), "-o", str(binary), *flags],
                   check=True)
    upload = run([str(binary), stream_name, source_of(clip)], env)
    assert upload.returncode == 0, upload.stderr
    assert acks(upload.stdout, "PERSISTED") == 3, upload.stdout
    assert re.search(r"^stats: 3 persisted, \d+ bytes$", upload.stdout, re.M), upload.stdout
    saved = tmp_path / "saved.mkv"
    assert download(stream_name, env, saved, time.time() - 30).returncode == 0
    assert mkvframes(saved) == mkvframes(clip)

    missing = run([str(binary), stream_name, "nosuchelement"], env)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: cannot build the pipeline: no element \"nosuchelement\""), missing.stderr


def test_rust_example_uses_the_plugin_as_a_crate(stream_name, env, clip, tmp_path):
    binary = BIN_DIR / "examples" / "kvs_upload"
    if not binary.is_file():
        pytest.fail(f"{binary} not found: cargo build --example kvs_upload")
    # No GST_PLUGIN_PATH: the example registers the plugin itself.
    env = {k: v for k, v in env.items() if k != "GST_PLUGIN_PATH"}
    upload = run([str(binary), stream_name, source_of(clip)], env)
    assert upload.returncode == 0, upload.stderr
    assert acks(upload.stdout, "PERSISTED") == 3, upload.stdout
    assert re.search(r"^stats: 3 persisted, \d+ bytes$", upload.stdout, re.M), upload.stdout
    saved = tmp_path / "saved.mkv"
    assert download(stream_name, dict(env, GST_PLUGIN_PATH=str(BIN_DIR)), saved, time.time() - 30).returncode == 0
    assert mkvframes(saved) == mkvframes(clip)
