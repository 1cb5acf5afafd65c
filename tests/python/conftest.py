# SPDX-License-Identifier: MPL-2.0

"""Shared fixtures for the Python tests: a real kvs-emulator process and clients pointed at it.

The binaries come from cargo's target/debug (the test command's profile; KVS_BIN_DIR names another directory,
KVS_EMULATOR_BIN another emulator). The emulator is started once per
test session with --listen 127.0.0.1:0 and one access key, so every request must be SigV4-signed; its first
stdout line is its base URL.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import uuid

import boto3
import botocore.config
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = pathlib.Path(os.environ.get("KVS_BIN_DIR", REPO / "target" / "debug"))
ACCESS_KEY_ID = "AKIDEMULATORTEST"
SECRET_ACCESS_KEY = "emulator/test+secret"
REGION = "us-east-1"
START_TIMEOUT_SECONDS = 20


class EmulatorProcess:
    """A running kvs-emulator: its base URL, the keys it accepts and its log."""

    def __init__(self, process, base_url, log_path):
        self.process = process
        self.base_url = base_url
        self.log_path = log_path
        self.access_key_id = ACCESS_KEY_ID
        self.secret_access_key = SECRET_ACCESS_KEY
        self.region = REGION

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def emulator_binary():
    path = pathlib.Path(os.environ.get("KVS_EMULATOR_BIN", BIN_DIR / "kvs-emulator"))
    if not path.is_file():
        pytest.fail(f"{path} not found: build it with `cargo build -p kvs-emulator` or set KVS_EMULATOR_BIN")
    return path


def start_emulator(log_path, *extra_args, base_url_scheme="http"):
    """Starts the emulator with the test keys and waits for its base URL."""
    args = [
        str(emulator_binary()),
        "--listen",
        "127.0.0.1:0",
        "--region",
        REGION,
        "--credentials",
        f"{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}",
        *extra_args,
    ]
    log = open(log_path, "wb")
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    timer = threading.Timer(START_TIMEOUT_SECONDS, process.kill)
    timer.start()
    try:
        first_line = process.stdout.readline().decode().strip()
    finally:
        timer.cancel()
    if not re.fullmatch(base_url_scheme + r"://127\.0\.0\.1:\d+", first_line):
        process.kill()
        process.wait()
        pytest.fail(f"kvs-emulator did not print its base URL (got {first_line!r}); log:\n{log_path.read_text()}")
    return EmulatorProcess(process, first_line, log_path)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """One emulator for the whole session (tests use unique stream names)."""
    running = start_emulator(tmp_path_factory.mktemp("emulator") / "kvs-emulator.log")
    yield running
    running.stop()


def make_client(emulator, service="kinesisvideo", secret=None, access_key_id=None, endpoint_url=None):
    """A boto3 client for the emulator, without retries so errors surface at once."""
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint_url or emulator.base_url,
        region_name=emulator.region,
        aws_access_key_id=access_key_id or emulator.access_key_id,
        aws_secret_access_key=secret or emulator.secret_access_key,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def kvs(emulator):
    """A boto3 `kinesisvideo` client with the emulator's keys."""
    return make_client(emulator)


@pytest.fixture
def stream_name(request):
    """A stream name unique to this test."""
    base = re.sub(r"[^a-zA-Z0-9_.-]", "-", request.node.name)[:60]
    return f"{base}-{uuid.uuid4().hex[:8]}"


def aws_executable():
    """The AWS CLI next to this Python (the project's venv), else the one on PATH."""
    beside = pathlib.Path(sys.executable).parent / "aws"
    if beside.is_file():
        return str(beside)
    found = shutil.which("aws")
    if not found:
        pytest.fail("the AWS CLI is not installed: run scripts/setup.sh (it installs awscli into .venv)")
    return found


class AwsCli:
    """Runs `aws kinesisvideo ...` against the emulator with credentials from the environment only."""

    def __init__(self, emulator, secret=None):
        self.emulator = emulator
        self.executable = aws_executable()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=emulator.access_key_id,
            AWS_SECRET_ACCESS_KEY=secret or emulator.secret_access_key,
            AWS_DEFAULT_REGION=emulator.region,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_MAX_ATTEMPTS="1",
            AWS_PAGER="",
        )
        self.env = env

    def run(self, *args):
        """The completed process of `aws kinesisvideo <args>`."""
        command = [
            self.executable,
            "kinesisvideo",
            *args,
            "--endpoint-url",
            self.emulator.base_url,
            "--output",
            "json",
        ]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)

    def __call__(self, *args):
        """The JSON output of a command that must succeed ({} when it prints nothing)."""
        result = self.run(*args)
        assert result.returncode == 0, f"aws {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        return json.loads(result.stdout) if result.stdout.strip() else {}

    def error(self, *args):
        """The error code of a command that must fail, from the CLI's `An error occurred (Code)` message."""
        result = self.run(*args)
        assert result.returncode != 0, f"aws {' '.join(args)} succeeded:\n{result.stdout}"
        match = re.search(r"An error occurred \((\w+)\)", result.stderr)
        assert match, result.stderr
        return match.group(1), result.stderr


@pytest.fixture
def aws_cli(emulator):
    return AwsCli(emulator)
