# SPDX-License-Identifier: MPL-2.0

"""The emulator's control plane through real AWS clients: boto3 and the AWS CLI, with SigV4 signatures checked."""

import datetime
import json
import re
import urllib.error
import urllib.request

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from botocore.exceptions import ClientError

from conftest import make_client

ARN_RE = re.compile(r"arn:aws:kinesisvideo:us-east-1:123456789012:stream/(?P<name>[a-zA-Z0-9_.-]+)/(?P<ms>\d{13})")
NOT_FOUND = "The requested stream is not found or not active."
API_NAMES = [
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
]


def error_of(excinfo):
    """(code, message, HTTP status) of a ClientError."""
    response = excinfo.value.response
    return response["Error"]["Code"], response["Error"]["Message"], response["ResponseMetadata"]["HTTPStatusCode"]


def version_of(kvs, name):
    return kvs.describe_stream(StreamName=name)["StreamInfo"]["Version"]


# ---------------------------------------------------------------------------------------------------------------
# boto3


def test_create_and_describe_stream(kvs, stream_name):
    before = datetime.datetime.now(datetime.timezone.utc)
    created = kvs.create_stream(
        DeviceName="camera-1",
        StreamName=stream_name,
        MediaType="video/h264",
        DataRetentionInHours=24,
        Tags={"site": "home"},
    )
    arn = created["StreamARN"]
    match = ARN_RE.fullmatch(arn)
    assert match and match["name"] == stream_name
    assert re.fullmatch(r"[0-9a-f-]{36}", created["ResponseMetadata"]["RequestId"])

    info = kvs.describe_stream(StreamName=stream_name)["StreamInfo"]
    assert info["StreamName"] == stream_name
    assert info["StreamARN"] == arn
    assert info["DeviceName"] == "camera-1"
    assert info["MediaType"] == "video/h264"
    assert info["KmsKeyId"] == "arn:aws:kms:us-east-1:123456789012:alias/aws/kinesisvideo"
    assert info["Status"] == "ACTIVE"
    assert info["DataRetentionInHours"] == 24
    assert re.fullmatch(r"[a-zA-Z0-9]{20}", info["Version"])
    # botocore parses CreationTime (epoch seconds) into a datetime; it is the ARN's millisecond suffix.
    creation = info["CreationTime"]
    assert isinstance(creation, datetime.datetime)
    assert abs(creation - before) < datetime.timedelta(seconds=60)
    assert round(creation.timestamp() * 1000) == int(match["ms"])

    assert kvs.describe_stream(StreamARN=arn)["StreamInfo"] == info


def test_errors_parse_into_the_model_exceptions(kvs, stream_name):
    kvs.create_stream(StreamName=stream_name)

    with pytest.raises(kvs.exceptions.ResourceInUseException) as excinfo:
        kvs.create_stream(StreamName=stream_name)
    assert error_of(excinfo) == ("ResourceInUseException", f"The stream {stream_name} already exists.", 400)

    with pytest.raises(kvs.exceptions.ResourceNotFoundException) as excinfo:
        kvs.describe_stream(StreamName=stream_name + "-missing")
    assert error_of(excinfo) == ("ResourceNotFoundException", NOT_FOUND, 404)
    assert re.fullmatch(r"[0-9a-f-]{36}", excinfo.value.response["ResponseMetadata"]["RequestId"])

    with pytest.raises(kvs.exceptions.InvalidArgumentException) as excinfo:
        kvs.create_stream(StreamName="no spaces allowed")
    code, message, status = error_of(excinfo)
    assert (code, status) == ("InvalidArgumentException", 400)
    assert "streamName" in message and "regular expression" in message

    with pytest.raises(kvs.exceptions.InvalidArgumentException):
        kvs.get_data_endpoint(StreamName=stream_name, APIName="NOT_AN_API")

    with pytest.raises(kvs.exceptions.InvalidArgumentException):
        kvs.list_streams(MaxResults=10001)

    with pytest.raises(kvs.exceptions.VersionMismatchException) as excinfo:
        kvs.update_stream(StreamName=stream_name, CurrentVersion="stale", MediaType="video/h265")
    assert error_of(excinfo)[0] == "VersionMismatchException"

    with pytest.raises(kvs.exceptions.InvalidResourceFormatException):
        kvs.tag_stream(StreamARN="arn:aws:s3:::bucket", Tags={"a": "b"})

    with pytest.raises(kvs.exceptions.TagsPerResourceExceededLimitException):
        kvs.tag_stream(StreamName=stream_name, Tags={f"k{i}": "v" for i in range(51)})


def test_list_streams_paginates_and_filters(kvs, stream_name):
    names = [f"{stream_name}-{i}" for i in (3, 0, 4, 1, 2)]
    for name in names:
        kvs.create_stream(StreamName=name)
    condition = {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": stream_name + "-"}

    first = kvs.list_streams(MaxResults=2, StreamNameCondition=condition)
    assert [s["StreamName"] for s in first["StreamInfoList"]] == sorted(names)[:2]
    assert re.fullmatch(r"[a-zA-Z0-9+/=]+", first["NextToken"])

    paginator = kvs.get_paginator("list_streams")
    pages = list(paginator.paginate(StreamNameCondition=condition, PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3
    listed = [s["StreamName"] for page in pages for s in page["StreamInfoList"]]
    assert listed == sorted(names)

    everything = kvs.list_streams()["StreamInfoList"]
    assert set(names) <= {s["StreamName"] for s in everything}
    assert all(s["Status"] == "ACTIVE" for s in everything)


def test_delete_stream(kvs, stream_name):
    arn = kvs.create_stream(StreamName=stream_name)["StreamARN"]
    with pytest.raises(kvs.exceptions.VersionMismatchException):
        kvs.delete_stream(StreamARN=arn, CurrentVersion="0000")
    kvs.delete_stream(StreamARN=arn, CurrentVersion=version_of(kvs, stream_name))
    with pytest.raises(kvs.exceptions.ResourceNotFoundException):
        kvs.describe_stream(StreamName=stream_name)
    with pytest.raises(kvs.exceptions.ResourceNotFoundException):
        kvs.delete_stream(StreamARN=arn)


def test_update_stream_and_data_retention(kvs, stream_name):
    kvs.create_stream(StreamName=stream_name, DataRetentionInHours=2)
    v1 = version_of(kvs, stream_name)
    kvs.update_stream(StreamName=stream_name, CurrentVersion=v1, DeviceName="dev-2", MediaType="video/h265")
    info = kvs.describe_stream(StreamName=stream_name)["StreamInfo"]
    assert (info["DeviceName"], info["MediaType"]) == ("dev-2", "video/h265")
    assert info["Version"] != v1

    kvs.update_data_retention(
        StreamName=stream_name,
        CurrentVersion=info["Version"],
        Operation="INCREASE_DATA_RETENTION",
        DataRetentionChangeInHours=10,
    )
    info = kvs.describe_stream(StreamName=stream_name)["StreamInfo"]
    assert info["DataRetentionInHours"] == 12
    kvs.update_data_retention(
        StreamARN=info["StreamARN"],
        CurrentVersion=info["Version"],
        Operation="DECREASE_DATA_RETENTION",
        DataRetentionChangeInHours=12,
    )
    assert kvs.describe_stream(StreamName=stream_name)["StreamInfo"]["DataRetentionInHours"] == 0
    with pytest.raises(kvs.exceptions.InvalidArgumentException):
        kvs.update_data_retention(
            StreamName=stream_name,
            CurrentVersion=version_of(kvs, stream_name),
            Operation="DECREASE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        )
    with pytest.raises(kvs.exceptions.VersionMismatchException):
        kvs.update_data_retention(
            StreamName=stream_name,
            CurrentVersion=v1,
            Operation="INCREASE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        )


def test_get_data_endpoint_is_the_emulator(kvs, emulator, stream_name):
    arn = kvs.create_stream(StreamName=stream_name)["StreamARN"]
    for api_name in API_NAMES:
        assert kvs.get_data_endpoint(StreamName=stream_name, APIName=api_name)["DataEndpoint"] == emulator.base_url
        assert kvs.get_data_endpoint(StreamARN=arn, APIName=api_name)["DataEndpoint"] == emulator.base_url
    with pytest.raises(kvs.exceptions.ResourceNotFoundException):
        kvs.get_data_endpoint(StreamName=stream_name + "-missing", APIName="GET_MEDIA")


def test_data_endpoint_works_with_the_media_clients(kvs, emulator, stream_name):
    """The returned endpoint is a valid endpoint_url for the data-plane clients (botocore accepts it)."""
    kvs.create_stream(StreamName=stream_name)
    endpoint = kvs.get_data_endpoint(StreamName=stream_name, APIName="GET_MEDIA")["DataEndpoint"]
    media = make_client(emulator, service="kinesis-video-media", endpoint_url=endpoint)
    assert media.meta.endpoint_url == emulator.base_url


def test_stream_tags(kvs, stream_name):
    arn = kvs.create_stream(StreamName=stream_name, Tags={"a": "1"})["StreamARN"]
    kvs.tag_stream(StreamName=stream_name, Tags={"b": "2", "c": ""})
    kvs.tag_stream(StreamARN=arn, Tags={"a": "one"})
    assert kvs.list_tags_for_stream(StreamName=stream_name)["Tags"] == {"a": "one", "b": "2", "c": ""}
    kvs.untag_stream(StreamARN=arn, TagKeyList=["c", "not-there"])
    listed = kvs.list_tags_for_stream(StreamARN=arn)
    assert listed["Tags"] == {"a": "one", "b": "2"}
    assert "NextToken" not in listed


def test_resource_tags(kvs, stream_name):
    arn = kvs.create_stream(StreamName=stream_name)["StreamARN"]
    kvs.tag_resource(ResourceARN=arn, Tags=[{"Key": "team", "Value": "video"}, {"Key": "env", "Value": "test"}])
    assert kvs.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"team": "video", "env": "test"}
    kvs.untag_resource(ResourceARN=arn, TagKeyList=["env"])
    assert kvs.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"team": "video"}
    assert kvs.list_tags_for_stream(StreamName=stream_name)["Tags"] == {"team": "video"}
    with pytest.raises(kvs.exceptions.InvalidArgumentException):
        kvs.list_tags_for_resource(ResourceARN="arn:aws:s3:::bucket")


def test_wrong_secret_is_an_invalid_signature(emulator):
    client = make_client(emulator, secret="not-the-secret")
    with pytest.raises(ClientError) as excinfo:
        client.list_streams()
    code, message, status = error_of(excinfo)
    assert (code, status) == ("InvalidSignatureException", 403)
    assert message.startswith("The request signature we calculated does not match the signature you provided.")


def test_unknown_access_key_is_unrecognized(emulator):
    client = make_client(emulator, access_key_id="AKIDNOBODY")
    with pytest.raises(ClientError) as excinfo:
        client.list_streams()
    assert error_of(excinfo) == (
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
        403,
    )


def raw_post(emulator, path, body, sign=True):
    """POSTs raw bytes (signed with botocore's own SigV4 signer); (status, headers, parsed JSON body)."""
    url = emulator.base_url + path
    request = botocore.awsrequest.AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    if sign:
        credentials = botocore.credentials.Credentials(emulator.access_key_id, emulator.secret_access_key)
        botocore.auth.SigV4Auth(credentials, "kinesisvideo", emulator.region).add_auth(request)
    prepared = request.prepare()
    http_request = urllib.request.Request(url, data=body, headers=dict(prepared.headers), method="POST")
    try:
        with urllib.request.urlopen(http_request, timeout=30) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def test_raw_wire_format(emulator):
    status, headers, body = raw_post(emulator, "/describeStream", b'{"StreamName": ')
    assert status == 400
    assert headers["x-amzn-ErrorType"] == "SerializationException:https://kinesisvideo.amazonaws.com/doc/2017-09-30/"
    assert body["__type"] == "SerializationException"

    status, headers, body = raw_post(emulator, "/describeStream", b'{"StreamName": "no-such-stream-here"}')
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert body == {"__type": "ResourceNotFoundException", "Message": NOT_FOUND}

    status, headers, body = raw_post(emulator, "/noSuchOperation", b"{}")
    assert (status, body["__type"]) == (404, "UnknownOperationException")

    status, headers, body = raw_post(emulator, "/listStreams", b"{}", sign=False)
    assert (status, body) == (
        403,
        {"__type": "MissingAuthenticationTokenException", "Message": "Missing Authentication Token"},
    )


# ---------------------------------------------------------------------------------------------------------------
# AWS CLI


def test_cli_every_control_plane_command(aws_cli, emulator, stream_name):
    created = aws_cli(
        "create-stream",
        "--stream-name",
        stream_name,
        "--device-name",
        "cli-device",
        "--media-type",
        "video/h264",
        "--data-retention-in-hours",
        "1",
        "--tags",
        "origin=cli",
    )
    arn = created["StreamARN"]
    assert ARN_RE.fullmatch(arn)

    info = aws_cli("describe-stream", "--stream-name", stream_name)["StreamInfo"]
    assert (info["StreamARN"], info["Status"], info["DeviceName"]) == (arn, "ACTIVE", "cli-device")
    assert aws_cli("describe-stream", "--stream-arn", arn)["StreamInfo"]["StreamName"] == stream_name

    listed = aws_cli(
        "list-streams",
        "--stream-name-condition",
        f"ComparisonOperator=BEGINS_WITH,ComparisonValue={stream_name}",
    )
    assert [s["StreamName"] for s in listed["StreamInfoList"]] == [stream_name]

    aws_cli("update-stream", "--stream-name", stream_name, "--current-version", info["Version"], "--media-type", "video/h265")
    info = aws_cli("describe-stream", "--stream-name", stream_name)["StreamInfo"]
    assert info["MediaType"] == "video/h265"

    aws_cli(
        "update-data-retention",
        "--stream-name",
        stream_name,
        "--current-version",
        info["Version"],
        "--operation",
        "INCREASE_DATA_RETENTION",
        "--data-retention-change-in-hours",
        "5",
    )
    info = aws_cli("describe-stream", "--stream-arn", arn)["StreamInfo"]
    assert info["DataRetentionInHours"] == 6

    for api_name in ("PUT_MEDIA", "GET_MEDIA", "GET_CLIP"):
        endpoint = aws_cli("get-data-endpoint", "--stream-name", stream_name, "--api-name", api_name)
        assert endpoint == {"DataEndpoint": emulator.base_url}

    aws_cli("tag-stream", "--stream-name", stream_name, "--tags", "a=1,b=2")
    assert aws_cli("list-tags-for-stream", "--stream-name", stream_name)["Tags"] == {"origin": "cli", "a": "1", "b": "2"}
    aws_cli("untag-stream", "--stream-arn", arn, "--tag-key-list", "a", "origin")
    assert aws_cli("list-tags-for-stream", "--stream-arn", arn)["Tags"] == {"b": "2"}

    aws_cli("tag-resource", "--resource-arn", arn, "--tags", "Key=team,Value=video", "Key=env,Value=ci")
    assert aws_cli("list-tags-for-resource", "--resource-arn", arn)["Tags"] == {"b": "2", "team": "video", "env": "ci"}
    aws_cli("untag-resource", "--resource-arn", arn, "--tag-key-list", "b", "env")
    assert aws_cli("list-tags-for-resource", "--resource-arn", arn)["Tags"] == {"team": "video"}

    aws_cli("delete-stream", "--stream-arn", arn, "--current-version", info["Version"])
    code, stderr = aws_cli.error("describe-stream", "--stream-name", stream_name)
    assert code == "ResourceNotFoundException"
    assert NOT_FOUND in stderr


def test_cli_errors(aws_cli, stream_name):
    aws_cli("create-stream", "--stream-name", stream_name)
    code, stderr = aws_cli.error("create-stream", "--stream-name", stream_name)
    assert code == "ResourceInUseException"
    assert f"The stream {stream_name} already exists." in stderr
    code, _ = aws_cli.error("update-stream", "--stream-name", stream_name, "--current-version", "stale")
    assert code == "VersionMismatchException"
    code, _ = aws_cli.error("get-data-endpoint", "--stream-name", stream_name, "--api-name", "NOPE")
    assert code == "InvalidArgumentException"


def test_cli_wrong_secret(emulator):
    from conftest import AwsCli

    code, stderr = AwsCli(emulator, secret="wrong-secret").error("list-streams")
    assert code == "InvalidSignatureException"
    assert "does not match the signature you provided" in stderr
