# SPDX-License-Identifier: MPL-2.0

"""The emulator over HTTPS (--tls-cert/--tls-key): boto3 works when it trusts the certificate, and refuses the
connection when it does not."""

import subprocess

import boto3
import botocore.config
import botocore.exceptions
import pytest

from conftest import start_emulator


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    running = start_emulator(directory / "kvs-emulator.log", "--tls-cert", str(cert), "--tls-key", str(key),
                             base_url_scheme="https")
    yield running, cert
    running.stop()


def client(emulator, verify):
    return boto3.session.Session().client(
        "kinesisvideo", endpoint_url=emulator.base_url, region_name=emulator.region,
        aws_access_key_id=emulator.access_key_id, aws_secret_access_key=emulator.secret_access_key,
        verify=verify, config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def test_https_with_a_trusted_certificate(tls_emulator):
    emulator, cert = tls_emulator
    assert emulator.base_url.startswith("https://127.0.0.1:")
    kvs = client(emulator, str(cert))
    kvs.create_stream(StreamName="over-tls")
    endpoint = kvs.get_data_endpoint(StreamName="over-tls", APIName="PUT_MEDIA")["DataEndpoint"]
    assert endpoint == emulator.base_url


def test_https_certificate_is_verified(tls_emulator):
    emulator, _ = tls_emulator
    with pytest.raises(botocore.exceptions.SSLError):
        client(emulator, True).list_streams()
