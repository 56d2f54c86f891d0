"""Body storage: redaction and truncation (pure), the postgres mode against a real PostgreSQL,
the s3 mode against a real S3 protocol endpoint (moto's server on loopback)."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import logging
import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from majordomo.bodystore import (
    NoBodyStore,
    PostgresBodyStore,
    S3BodyStore,
    StoredBodies,
    body_text,
    open_body_store,
    truncate_utf8,
    truncation_marker,
)
from majordomo.config import LoggingSettings, Settings
from majordomo.db import schema_sql
from majordomo.errors import ConfigError
from majordomo.records import Exchange, RequestRecord
from tests.pghelpers import PgAdmin

if TYPE_CHECKING:
    from tests.s3server import S3Bucket, S3Server

# The s3_server / s3_bucket fixtures (harmless once conftest.py loads them for every module).
pytest_plugins = ["tests.s3server"]

MDM_KEY = "mdm_sk_" + "Zx9_-" * 8 + "abc"  # the shape `majordomo keys create` prints
OPENAI_KEY = "sk-proj-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-0123456789"
GEMINI_KEY = "AIzaSyD-0123456789abcdefghijklmnopqrstu"
FORBIDDEN = ["mdm_sk_", "Bearer sk-", OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY, "session=s3cr3t"]

TINY_DELAYS = (0.001, 0.001)  # three attempts, no real waiting

CHAT_REQUEST = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Grüße aus 東京 🚀"}],
        "metadata": {"note": f"please ignore {MDM_KEY}"},  # a careless client
    },
    ensure_ascii=False,
).encode()
CHAT_RESPONSE = json.dumps(
    {
        "id": "chatcmpl-1",
        "choices": [{"message": {"role": "assistant", "content": "こんにちは é"}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
    },
    ensure_ascii=False,
).encode()
SSE_RESPONSE = (
    b'data: {"candidates":[{"content":{"parts":[{"text":"Hal"}]}}]}\r\n\r\n'
    b'data: {"candidates":[{"content":{"parts":[{"text":"l\xc3\xb6 \xf0\x9f\x9a\x80"}]}}],'
    b'"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2}}\r\n\r\n'
)

# A Tuesday evening in New York is already Wednesday in UTC: the key's date must be UTC's.
REQUESTED_AT = datetime(2026, 11, 3, 21, 30, tzinfo=timezone(timedelta(hours=-5)))


def make_record(
    *,
    request_body: bytes = CHAT_REQUEST,
    response_body: bytes = CHAT_RESPONSE,
    request_truncated: bool = False,
    response_truncated: bool = False,
    with_exchange: bool = True,
    **fields: Any,
) -> RequestRecord:
    exchange = Exchange(
        method="POST",
        path="/v1/chat/completions",
        query="",
        request_headers=(
            ("host", "gateway.local"),
            ("content-type", "application/json"),
            ("x-majordomo-key", MDM_KEY),
            ("authorization", f"Bearer {OPENAI_KEY}"),
            ("x-majordomo-user-id", "u-42"),
            ("cookie", "session=s3cr3t"),
        ),
        request_body=request_body,
        response_status=200,
        response_headers=(("content-type", "application/json"), ("x-request-id", "req_1")),
        response_body=response_body,
        request_truncated=request_truncated,
        response_truncated=response_truncated,
    )
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "api_key_id": uuid.uuid4(),
        "provider": "openai",
        "model": "gpt-4o-mini",
        "request_path": "/v1/chat/completions",
        "request_method": "POST",
        "requested_at": REQUESTED_AT,
        "responded_at": REQUESTED_AT + timedelta(milliseconds=850),
        "status_code": 200,
        "exchange": exchange if with_exchange else None,
    }
    return RequestRecord(**{**values, **fields})


def settings(mode: str, *, s3: Any = None, **logging_values: Any) -> Settings:
    lg = LoggingSettings(body_storage=mode, **logging_values)
    return Settings(logging=lg, s3=s3) if s3 is not None else Settings(logging=lg)


# ---------------------------------------------------------------------------------------------
# truncate_utf8


MIXED = "aé東🚀b".encode() * 3  # 1-, 2-, 3- and 4-byte characters


@pytest.mark.parametrize("limit", range(len(MIXED) + 2))
def test_truncate_utf8_cuts_on_a_character_boundary_at_every_offset(limit: int) -> None:
    text, cut = truncate_utf8(MIXED, limit)
    text.encode("utf-8")  # valid text: no surrogates
    assert "\ufffd" not in text
    assert cut == (len(MIXED) > limit)
    if not cut:
        assert text == MIXED.decode()
        assert "truncated" not in text
        return
    kept = text.split("…[truncated ")[0].encode()
    assert text == kept.decode() + truncation_marker(len(MIXED) - len(kept))
    assert MIXED.startswith(kept)
    assert len(kept) <= limit
    # As much as fits is kept: the next character would not have.
    next_char = MIXED[len(kept) :].decode("utf-8", "ignore")[0]
    assert len(kept) + len(next_char.encode()) > limit


def test_truncate_utf8_replaces_nul_and_invalid_bytes() -> None:
    assert truncate_utf8(b"a\x00b\xffc", 100) == ("a\ufffdb\ufffdc", False)
    assert truncate_utf8(b"", 0) == ("", False)
    assert truncate_utf8(b"abc", 0) == ("…[truncated 3 bytes]", True)


@given(data=st.binary(max_size=64), limit=st.integers(min_value=0, max_value=80))
def test_truncate_utf8_always_gives_text_postgres_accepts(data: bytes, limit: int) -> None:
    text, cut = truncate_utf8(data, limit)
    text.encode("utf-8")
    assert "\x00" not in text
    assert cut == (len(data) > limit)
    body = text[: text.rindex("…[truncated ")] if cut else text
    assert len(body) <= limit


def test_body_text_marks_a_body_the_proxy_already_cut_and_drops_its_partial_character() -> None:
    captured = "東京".encode()[:4]  # the proxy stopped in the middle of 京
    assert body_text(captured, 1024, already_cut=True) == "東" + truncation_marker(None)
    assert body_text(b"done", 1024) == "done"


# ---------------------------------------------------------------------------------------------
# none and postgres modes


async def test_none_mode_keeps_nothing() -> None:
    store = open_body_store(settings("none"))
    assert isinstance(store, NoBodyStore)
    assert await store.store(make_record()) == StoredBodies()
    await store.aclose()


async def test_postgres_mode_returns_the_bodies_as_text_cut_at_max_body_size() -> None:
    store = open_body_store(settings("postgres", max_body_size=40))
    assert isinstance(store, PostgresBodyStore)
    stored = await store.store(make_record(response_body=b'{"ok":true}'))
    assert stored.s3_key is None
    assert stored.response_body == '{"ok":true}'
    assert stored.request_body is not None
    kept, marker = stored.request_body.split("…")
    assert CHAT_REQUEST.startswith(kept.encode())
    assert marker == f"[truncated {len(CHAT_REQUEST) - len(kept.encode())} bytes]"


async def test_postgres_mode_honours_store_request_and_response_body() -> None:
    only_response = open_body_store(settings("postgres", store_request_body=False))
    only_request = open_body_store(settings("postgres", store_response_body=False))
    record = make_record()
    assert (await only_response.store(record)).request_body is None
    assert (await only_response.store(record)).response_body == CHAT_RESPONSE.decode()
    assert (await only_request.store(record)).response_body is None
    assert await only_request.store(make_record(with_exchange=False)) == StoredBodies()


async def test_postgres_mode_scrubs_a_majordomo_key_from_bodies() -> None:
    stored = await open_body_store(settings("postgres")).store(make_record())
    assert stored.request_body is not None
    assert "mdm_sk_" not in stored.request_body
    assert "please ignore [REDACTED]" in stored.request_body


async def test_postgres_accepts_bodies_cut_mid_character_or_holding_nul(pg: PgAdmin) -> None:
    await trio.to_thread.run_sync(pg.execute, schema_sql())
    body = "東京🚀".encode() * 10 + b"\x00\xff"
    store = open_body_store(settings("postgres", max_body_size=8))  # 8 = inside 🚀
    cut = make_record(request_body=body, response_body=body[:5], response_truncated=True)
    raw = make_record(request_body=b"a\x00b\xfe", response_body=b"ok\x00")
    for record in (cut, raw):
        stored = await store.store(record)
        await trio.to_thread.run_sync(
            pg.execute,
            """INSERT INTO llm_requests (id, provider, model, request_path, request_method,
                   requested_at, responded_at, status_code, request_body, response_body)
               VALUES ($1, 'openai', 'm', '/v1/chat/completions', 'POST', $2, $2, 200, $3, $4)""",
            record.id,
            record.requested_at,
            stored.request_body,
            stored.response_body,
        )
        row = (await pg.afetch("SELECT * FROM llm_requests WHERE id = $1", record.id))[0]
        assert (row["request_body"], row["response_body"]) == (
            stored.request_body,
            stored.response_body,
        )
    rows = await pg.afetch("SELECT id, request_body, response_body FROM llm_requests")
    bodies = {r["id"]: (r["request_body"], r["response_body"]) for r in rows}
    assert bodies[cut.id] == (f"東京…[truncated {len(body) - 6} bytes]", "東…[truncated]")
    assert bodies[raw.id] == ("a\ufffdb\ufffd", "ok\ufffd")


# ---------------------------------------------------------------------------------------------
# s3 mode


def read_object(bucket: S3Bucket, key: str) -> tuple[dict[str, Any], bytes]:
    answer = bucket.get(key)
    assert answer["ContentType"] == "application/json"
    assert answer["ContentEncoding"] == "gzip"
    raw = gzip.decompress(answer["Body"])
    return json.loads(raw), raw


def assert_no_secrets(raw: bytes) -> None:
    for secret in FORBIDDEN:
        assert secret.encode() not in raw, secret


async def test_s3_mode_stores_one_gzip_json_object_per_request(s3_bucket: S3Bucket) -> None:
    store = open_body_store(settings("s3", s3=s3_bucket.settings(prefix="/bodies/")))
    record = make_record(streamed=False)
    stored = await store.store(record)
    await store.aclose()

    key = f"bodies/{record.api_key_id}/2026-11-04/{record.id}.json.gz"
    assert stored == StoredBodies(s3_key=key)
    assert s3_bucket.keys() == [key]
    document, raw = await trio.to_thread.run_sync(read_object, s3_bucket, key)
    assert_no_secrets(raw)
    assert document == {
        "request_id": str(record.id),
        "timestamp": "2026-11-03T21:30:00-05:00",
        "responded_at": "2026-11-03T21:30:00.850000-05:00",
        "api_key_id": str(record.api_key_id),
        "provider": "openai",
        "model": "gpt-4o-mini",
        "status_code": 200,
        "streamed": False,
        "request": {
            "method": "POST",
            "path": "/v1/chat/completions",
            "query": "",
            "headers": {
                "host": "gateway.local",
                "content-type": "application/json",
                "x-majordomo-key": "[REDACTED]",
                "authorization": "[REDACTED]",
                "x-majordomo-user-id": "u-42",
                "cookie": "[REDACTED]",
            },
            "body": CHAT_REQUEST.decode().replace(MDM_KEY, "[REDACTED]"),
            "body_encoding": "utf-8",
        },
        "response": {
            "status": 200,
            "headers": {"content-type": "application/json", "x-request-id": "req_1"},
            "body": CHAT_RESPONSE.decode(),
            "body_encoding": "utf-8",
        },
        "request_truncated": False,
        "response_truncated": False,
    }


async def test_s3_mode_keeps_a_stream_as_its_raw_event_text(s3_bucket: S3Bucket) -> None:
    record = make_record(
        provider="gemini",
        model="gemini-2.5-flash",
        api_key_id=None,
        streamed=True,
        exchange=Exchange(
            method="POST",
            path="/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            query=f"alt=sse&key={GEMINI_KEY}",
            request_headers=(("x-goog-api-key", GEMINI_KEY), ("X-Majordomo-Key", MDM_KEY)),
            request_body=b'{"contents":[]}',
            response_status=200,
            response_headers=(("content-type", "text/event-stream"),),
            response_body=SSE_RESPONSE,
            response_truncated=True,  # the proxy stopped capturing at max_body_size
        ),
    )
    store = open_body_store(settings("s3", s3=s3_bucket.settings()))
    stored = await store.store(record)
    await store.aclose()

    assert stored.s3_key == f"no-key/2026-11-04/{record.id}.json.gz"
    document, raw = await trio.to_thread.run_sync(read_object, s3_bucket, stored.s3_key)
    assert_no_secrets(raw)
    assert document["request"]["query"] == "alt=sse&key=[REDACTED]"
    assert document["request"]["headers"] == {
        "x-goog-api-key": "[REDACTED]",
        "x-majordomo-key": "[REDACTED]",
    }
    assert document["response"]["body"] == SSE_RESPONSE.decode()
    assert document["response"]["body_encoding"] == "utf-8"
    assert (document["api_key_id"], document["streamed"]) == (None, True)
    assert (document["request_truncated"], document["response_truncated"]) == (False, True)


async def test_s3_mode_cuts_bodies_keeps_binary_as_base64_and_honours_store_flags(
    s3_bucket: S3Bucket,
) -> None:
    binary = b"\x89PNG\r\n\x1a\n\x00\xff"
    store = open_body_store(
        settings("s3", s3=s3_bucket.settings(), max_body_size=7, store_response_body=False)
    )
    cut = await store.store(make_record(request_body="ab東京".encode()))
    png = await store.store(make_record(request_body=binary[:6]))
    await store.aclose()
    assert cut.s3_key is not None
    assert png.s3_key is not None

    document, _ = await trio.to_thread.run_sync(read_object, s3_bucket, cut.s3_key)
    assert document["request"]["body"] == "ab東京"[:3]  # 京 did not fit in 7 bytes
    assert document["request_truncated"] is True
    assert document["response"]["body"] is None
    assert document["response_truncated"] is False

    document, _ = await trio.to_thread.run_sync(read_object, s3_bucket, png.s3_key)
    assert document["request"]["body_encoding"] == "base64"
    assert base64.b64decode(document["request"]["body"]) == binary[:6]


async def test_s3_upload_to_a_missing_bucket_is_retried_then_counted(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_body_store(
        settings("s3", s3=s3_server.settings("no-such-bucket-here")), retry_delays=TINY_DELAYS
    )
    assert isinstance(store, S3BodyStore)
    attempts: list[str] = []
    store.client.meta.events.register(
        "before-send.s3.PutObject", lambda **kw: attempts.append(kw["request"].url)
    )
    record = make_record()
    with caplog.at_level(logging.WARNING, logger="majordomo.bodystore"):
        assert await store.store(record) == StoredBodies()
    await store.aclose()

    assert len(attempts) == 3
    assert store.failed_uploads == 1
    [warning] = caplog.records
    assert f"could not store the bodies of request {record.id}" in warning.getMessage()
    assert "NoSuchBucket" in warning.getMessage()
    assert "Check s3.bucket" in warning.getMessage()


async def test_s3_endpoint_down_does_not_raise(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    # A port nobody listens on: taken from the OS, then released.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = dataclasses.replace(s3_server, endpoint=f"http://127.0.0.1:{port}")
    store = open_body_store(settings("s3", s3=down.settings("b")), retry_delays=TINY_DELAYS)
    with caplog.at_level(logging.WARNING, logger="majordomo.bodystore"):
        assert await store.store(make_record()) == StoredBodies()
        assert await store.store(make_record()) == StoredBodies()
    await store.aclose()
    assert store.failed_uploads == 2
    assert len(caplog.records) == 2
    assert "Could not connect to the endpoint URL" in caplog.records[0].getMessage()


async def test_s3_uploads_run_in_worker_threads_while_trio_keeps_running(
    s3_bucket: S3Bucket,
) -> None:
    store = open_body_store(settings("s3", s3=s3_bucket.settings()))
    assert isinstance(store, S3BodyStore)
    trio_thread = threading.get_ident()
    upload_threads: list[int] = []
    in_flight = threading.Event()
    release = threading.Event()

    def hold_upload(**_: Any) -> None:
        # Runs where the upload runs, just before the request goes out.
        upload_threads.append(threading.get_ident())
        in_flight.set()
        release.wait(timeout=10)  # bounded: were this the trio thread, fail rather than hang

    store.client.meta.events.register("before-send.s3.PutObject", hold_upload)
    results: list[StoredBodies] = []

    async def upload() -> None:
        results.append(await store.store(make_record()))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            await trio.to_thread.run_sync(in_flight.wait)
            # The upload is held mid-flight; another trio task still gets to run.
            progressed = trio.Event()

            async def progress() -> None:
                progressed.set()

            nursery.start_soon(progress)
            await progressed.wait()
            assert not results
            release.set()
    await store.aclose()

    assert upload_threads
    assert trio_thread not in upload_threads
    assert results[0].s3_key is not None
    assert store.upload_threads.borrowed_tokens == 0


def test_open_body_store_explains_an_unusable_s3_setup(s3_server: S3Server) -> None:
    with pytest.raises(ConfigError, match=r"s3\.enabled is false; set s3\.enabled: true"):
        open_body_store(settings("s3", s3=s3_server.settings("b", enabled=False)))
    with pytest.raises(ConfigError, match=r"s3\.bucket is empty; set s3\.bucket"):
        open_body_store(settings("s3", s3=s3_server.settings(" ")))
