"""A real S3 protocol endpoint on loopback for the tests: moto's server mode.

One server per test session (`s3_server`), started on a free port of 127.0.0.1 in a thread of
this process; one fresh, empty bucket per test (`s3_bucket`), emptied and deleted afterwards.
The gateway talks to it exactly as to AWS: boto3 with `endpoint_url`, path-style addressing
and explicit dummy credentials passed in settings, never through the environment.

Use the fixtures from a test module with `from tests.s3server import s3_bucket, s3_server`,
or everywhere with `pytest_plugins = ["tests.s3server"]` in `tests/conftest.py`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from majordomo.config import S3Settings

# moto accepts any credentials; these only have to look like some.
ACCESS_KEY_ID = "AKIDMAJORDOMOTEST"
SECRET_ACCESS_KEY = "majordomo-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """Where the session's S3 endpoint listens, and how to reach it."""

    endpoint: str
    region: str = REGION
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY

    def client(self) -> Any:
        """A boto3 S3 client for checks made by the test itself (close it after use)."""
        session = boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )
        return session.client(
            "s3",
            endpoint_url=self.endpoint,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def settings(self, bucket: str, **overrides: Any) -> S3Settings:
        """`s3.*` settings that point the gateway at `bucket` on this server."""
        values: dict[str, Any] = {
            "enabled": True,
            "bucket": bucket,
            "region": self.region,
            "endpoint": self.endpoint,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }
        return S3Settings(**{**values, **overrides})


@dataclass
class S3Bucket:
    """A fresh bucket on the session's server, with a client to read it back."""

    server: S3Server
    name: str
    client: Any = field(repr=False)

    def settings(self, **overrides: Any) -> S3Settings:
        return self.server.settings(self.name, **overrides)

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def get(self, key: str) -> dict[str, Any]:
        """`get_object`'s answer with `Body` read into bytes (as stored: not decompressed)."""
        answer: dict[str, Any] = self.client.get_object(Bucket=self.name, Key=key)
        answer["Body"] = answer["Body"].read()
        return answer


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, on a port the OS picked, for the whole session."""
    # werkzeug logs every request at INFO: noise in the captured logs of failing tests.
    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint=f"http://{host}:{port}")
    finally:
        server.stop()
        # stop() ends serve_forever but leaves the listening socket open (a ResourceWarning,
        # an error under filterwarnings=error): close it.
        wsgi_server = getattr(server, "_server", None)
        if wsgi_server is not None:
            wsgi_server.server_close()
        werkzeug_log.setLevel(level)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[S3Bucket]:
    """An empty bucket of its own for one test; emptied and deleted afterwards."""
    client = s3_server.client()
    name = f"mdm-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    try:
        yield S3Bucket(s3_server, name, client)
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)
        client.close()
