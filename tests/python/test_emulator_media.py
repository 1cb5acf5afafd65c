# SPDX-License-Identifier: MPL-2.0

"""The emulator's media APIs through real AWS clients: PutMedia signed with botocore's SigV4 signer, then
GetMedia, ListFragments and GetMediaForFragmentList with boto3 and the AWS CLI. Frames are compared with the
project's `mkvframes` tool (count and digest of every frame's bytes)."""

import json
import os
import pathlib
import subprocess
import urllib.request

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest

from conftest import BIN_DIR, AwsCli, aws_executable, make_client

FRAMES = 90  # 3 fragments of 30 frames


def mkvframes(path):
    """(frame count, digest) of a Matroska file with one or many documents."""
    tool = BIN_DIR / "examples" / "mkvframes"
    if not tool.is_file():
        pytest.fail(f"{tool} not found: cargo build -p kvs-mkv --example mkvframes")
    line = subprocess.run([str(tool), str(path)], check=True, capture_output=True, text=True).stdout.strip()
    # "<path>: <n> frames in <d> Matroska document(s), digest <hex>"
    words = line.rsplit(": ", 1)[1].split()
    return int(words[0]), words[-1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "in.mkv"
    pipeline = (
        f"videotestsrc num-buffers={FRAMES} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 "
        "! x264enc key-int-max=30 option-string=scenecut=0 bframes=0 ! h264parse "
        f"! matroskamux streamable=true ! filesink location={path}"
    )
    subprocess.run(["gst-launch-1.0", "-q", *pipeline.split()], check=True, timeout=60)
    return path


def put_media(emulator, stream, body):
    """A signed PutMedia (UNSIGNED-PAYLOAD, as the Java producer signs); the ACKs as parsed JSON."""
    url = emulator.base_url + "/putMedia"
    headers = {
        "x-amzn-stream-name": stream,
        "x-amzn-fragment-timecode-type": "RELATIVE",
        "x-amzn-producer-start-timestamp": "1795312662.5",
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
    }
    request = botocore.awsrequest.AWSRequest(method="POST", url=url, data=b"", headers=headers)
    credentials = botocore.credentials.Credentials(emulator.access_key_id, emulator.secret_access_key)
    botocore.auth.SigV4Auth(credentials, "kinesisvideo", emulator.region).add_auth(request)
    http_request = urllib.request.Request(url, data=body, headers=dict(request.headers.items()), method="POST")
    with urllib.request.urlopen(http_request, timeout=60) as response:
        assert response.status == 200
        return [json.loads(line) for line in response.read().decode().splitlines()]


@pytest.fixture
def uploaded(emulator, kvs, stream_name, clip):
    kvs.create_stream(StreamName=stream_name, DataRetentionInHours=1)
    acks = put_media(emulator, stream_name, clip.read_bytes())
    persisted = [a["FragmentNumber"] for a in acks if a["EventType"] == "PERSISTED"]
    assert [a["EventType"] for a in acks] == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3, acks
    return stream_name, persisted


def media_client(emulator, kvs, service, stream, api):
    endpoint = kvs.get_data_endpoint(StreamName=stream, APIName=api)["DataEndpoint"]
    return make_client(emulator, service=service, endpoint_url=endpoint)


def test_boto3_get_media_returns_every_frame(emulator, kvs, uploaded, clip, tmp_path):
    stream, numbers = uploaded
    media = media_client(emulator, kvs, "kinesis-video-media", stream, "GET_MEDIA")
    response = media.get_media(StreamName=stream, StartSelector={"StartSelectorType": "EARLIEST"})
    assert response["ContentType"] == "video/webm"
    out = tmp_path / "out.mkv"
    out.write_bytes(response["Payload"].read())
    assert mkvframes(out) == mkvframes(clip)
    assert out.read_bytes().count(bytes.fromhex("1a45dfa3")) == 3
    for number in numbers:
        assert number.encode() in out.read_bytes()


def test_boto3_list_fragments_and_get_media_for_fragment_list(emulator, kvs, uploaded, clip, tmp_path):
    stream, numbers = uploaded
    archive = media_client(emulator, kvs, "kinesis-video-archived-media", stream, "LIST_FRAGMENTS")
    listed = archive.list_fragments(StreamName=stream)["Fragments"]
    assert [f["FragmentNumber"] for f in listed] == numbers
    assert listed[0]["ProducerTimestamp"].timestamp() == pytest.approx(1795312662.5)
    paged = archive.list_fragments(StreamName=stream, MaxResults=2)
    assert len(paged["Fragments"]) == 2 and paged["NextToken"]
    rest = archive.list_fragments(StreamName=stream, MaxResults=2, NextToken=paged["NextToken"])
    assert [f["FragmentNumber"] for f in paged["Fragments"] + rest["Fragments"]] == numbers

    response = archive.get_media_for_fragment_list(StreamName=stream, Fragments=numbers)
    out = tmp_path / "list.mkv"
    out.write_bytes(response["Payload"].read())
    assert mkvframes(out) == mkvframes(clip)

    with pytest.raises(archive.exceptions.ResourceNotFoundException):
        archive.get_media_for_fragment_list(StreamName=stream, Fragments=["1234567"])


def test_cli_get_media_list_fragments_and_fragment_list(emulator, uploaded, clip, tmp_path):
    stream, numbers = uploaded
    env = AwsCli(emulator).env

    def aws(service, *args):
        command = [aws_executable(), service, *args, "--endpoint-url", emulator.base_url, "--output", "json"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if result.stdout.strip() else {}

    out = tmp_path / "cli.mkv"
    meta = aws("kinesis-video-media", "get-media", "--stream-name", stream,
               "--start-selector", "StartSelectorType=EARLIEST", str(out))
    assert meta["ContentType"] == "video/webm"
    assert mkvframes(out) == mkvframes(clip)

    listed = aws("kinesis-video-archived-media", "list-fragments", "--stream-name", stream)
    assert sorted(f["FragmentNumber"] for f in listed["Fragments"]) == sorted(numbers)

    out = tmp_path / "cli-list.mkv"
    # The outfile goes first: --fragments takes every argument after it.
    aws("kinesis-video-archived-media", "get-media-for-fragment-list", str(out), "--stream-name", stream,
        "--fragments", *numbers)
    assert mkvframes(out) == mkvframes(clip)


def test_putmedia_with_a_wrong_secret_is_refused(emulator, kvs, stream_name):
    kvs.create_stream(StreamName=stream_name, DataRetentionInHours=1)
    url = emulator.base_url + "/putMedia"
    headers = {"x-amzn-stream-name": stream_name, "x-amzn-fragment-timecode-type": "ABSOLUTE",
               "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    request = botocore.awsrequest.AWSRequest(method="POST", url=url, data=b"", headers=headers)
    credentials = botocore.credentials.Credentials(emulator.access_key_id, "not-the-secret")
    botocore.auth.SigV4Auth(credentials, "kinesisvideo", emulator.region).add_auth(request)
    http_request = urllib.request.Request(url, data=b"x", headers=dict(request.headers.items()), method="POST")
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(http_request, timeout=30)
    assert excinfo.value.code == 403
    assert json.loads(excinfo.value.read())["__type"] == "InvalidSignatureException"
