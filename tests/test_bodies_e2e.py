"""Body storage through the whole gateway: what the caller sent and got, without its secrets."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import httpx

from tests.fakeupstream import FakeUpstream
from tests.harness import Gateway, running_gateway
from tests.pghelpers import PgAdmin
from tests.s3server import S3Bucket

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Lumière 東京 🚀 " * 20}]}


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


async def post(gw: Gateway, path: str, body: Any, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        return await client.post(
            path,
            content=encode(body),
            headers={
                "Content-Type": "application/json",
                "X-Majordomo-Key": gw.key,
                "Authorization": "Bearer sk-secret-upstream",
                "X-Majordomo-User-Id": "u1",
                **headers,
            },
        )


async def test_postgres_bodies_are_cut_on_a_character_boundary_with_a_marker(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    settings = {"body_storage": "postgres", "max_body_size": "101", "spool_dir": str(tmp_path)}
    async with running_gateway(pg, fake.base_url, settings={"logging": settings}) as gw:
        response = await post(gw, "/v1/chat/completions", CHAT)
        assert response.status_code == 200
        (row,) = await gw.rows(1)
    sent = encode(CHAT)
    assert len(sent) > 101
    assert row["request_body"] == sent[:100].decode() + "…[truncated]"  # 101 cuts 🚀 in half
    assert row["request_body"].endswith("…[truncated]")
    assert "\ufffd" not in row["request_body"]  # no half character at the cut
    assert row["response_body"].startswith(response.text[:50])
    assert row["body_s3_key"] is None
    assert row["input_tokens"] > 0  # the row itself is complete


async def test_postgres_bodies_of_a_stream_are_its_event_text(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    settings = {"body_storage": "postgres", "spool_dir": str(tmp_path)}
    async with running_gateway(pg, fake.base_url, settings={"logging": settings}) as gw:
        response = await post(gw, "/v1/chat/completions", {**CHAT, "stream": True})
        (row,) = await gw.rows(1)
    # The raw upstream events (the client saw them minus the injected usage chunk).
    assert row["response_body"].startswith("data: {")
    assert row["response_body"].rstrip().endswith("data: [DONE]")
    assert '"choices":[]' in row["response_body"]
    assert '"choices":[]' not in response.text


async def test_s3_object_holds_the_exchange_with_every_secret_redacted(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    s3 = {k: v for k, v in dataclasses.asdict(s3_bucket.settings()).items() if v != ""}
    settings = {"logging": {"body_storage": "s3", "spool_dir": str(tmp_path)}, "s3": s3}
    async with running_gateway(pg, fake.base_url, settings=settings) as gw:
        response = await post(
            gw,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=AIza-in-query",
            {"contents": [{"parts": [{"text": "hi"}]}]},
            **{"x-goog-api-key": "AIza-in-header"},
        )
        assert response.status_code == 200
        (row,) = await gw.rows(1)
    key = row["body_s3_key"]
    assert key == f"{gw.key_id}/{row['requested_at']:%Y-%m-%d}/{row['id']}.json.gz"
    assert s3_bucket.keys() == [key]
    stored = s3_bucket.get(key)["Body"]
    text = gzip.decompress(stored).decode()
    for secret in (gw.key, "sk-secret-upstream", "AIza-in-query", "AIza-in-header"):
        assert secret not in text
    document = json.loads(text)
    assert document["request_id"] == str(row["id"])
    request, answer = document["request"], document["response"]
    assert request["method"] == "POST"
    assert request["path"] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert request["query"] == "alt=sse&key=[REDACTED]"
    assert request["headers"]["x-majordomo-key"] == "[REDACTED]"
    assert request["headers"]["authorization"] == "[REDACTED]"
    assert request["headers"]["x-majordomo-user-id"] == "u1"
    assert json.loads(request["body"]) == {"contents": [{"parts": [{"text": "hi"}]}]}
    assert answer["status"] == 200
    assert answer["body"] == response.text  # the raw event text, as relayed


async def test_failed_uploads_leave_no_key_and_are_counted(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    s3 = {
        k: v
        for k, v in dataclasses.asdict(s3_bucket.server.settings("no-such-bucket")).items()
        if v != ""
    }
    settings = {"logging": {"body_storage": "s3", "spool_dir": str(tmp_path)}, "s3": s3}
    async with running_gateway(pg, fake.base_url, settings=settings) as gw:
        assert (await post(gw, "/v1/chat/completions", CHAT)).status_code == 200
        (row,) = await gw.rows(1, deadline=30)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(gw.url + "/metrics")).text
    assert row["body_s3_key"] is None
    assert row["input_tokens"] > 0  # the usage row is never lost for a body
    assert "majordomo_body_uploads_failed_total 1" in metrics


async def test_the_admin_api_reads_a_requests_bodies_back_from_s3(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    from majordomo.passwords import hash_password

    s3 = {k: v for k, v in dataclasses.asdict(s3_bucket.settings()).items() if v != ""}
    settings = {"logging": {"body_storage": "s3", "spool_dir": str(tmp_path)}, "s3": s3}
    async with running_gateway(pg, fake.base_url, settings=settings) as gw:
        await pg.afetch(
            "INSERT INTO users (username, password_hash, role) VALUES ('root', $1, 'admin')",
            hash_password("a long enough password"),
        )
        response = await post(gw, "/v1/chat/completions", CHAT)
        row = await gw.row(response.headers["x-request-id"])
        assert row["body_s3_key"]
        async with httpx.AsyncClient(base_url=gw.url) as client:
            login = await client.post(
                "/api/v1/admin/login",
                json={"username": "root", "password": "a long enough password"},
            )
            detail = await client.get(
                f"/api/v1/admin/requests/{row['id']}",
                headers={"Authorization": f"Bearer {login.json()['token']}"},
            )
    stored = detail.json()["stored_bodies"]
    assert stored["request_id"] == str(row["id"])
    assert json.loads(stored["request"]["body"]) == CHAT
    assert stored["request"]["headers"]["authorization"] == "[REDACTED]"
