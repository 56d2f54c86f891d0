"""`majordomo serve` as people run it: a child process, stopped by a signal."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import trio

from majordomo.vault import key_id
from tests.cli import assert_one_line_error, majordomo
from tests.fakeupstream import FakeUpstream
from tests.gateway import start_gateway
from tests.harness import create_key
from tests.pghelpers import PgAdmin
from tests.poll import wait_until


async def test_serve_with_nothing_configured_uses_an_embedded_database(tmp_path: Path) -> None:
    """The README's run command: no config at all, then keys commands beside it."""
    async with trio.open_nursery() as nursery:
        gateway = await start_gateway(nursery, env={}, cwd=tmp_path)
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            health = await client.get("/health")
            assert (health.status_code, health.text) == (200, "ok")
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ok"})

        created = await trio.to_thread.run_sync(
            lambda: majordomo(
                "keys", "create", "--name", "beside serve", "--json", env={}, cwd=tmp_path
            )
        )
        assert created.code == 0, created.err
        listed = await trio.to_thread.run_sync(
            lambda: majordomo("keys", "list", "--json", env={}, cwd=tmp_path)
        )
        assert [k["id"] for k in listed.json()] == [created.json()["id"]]
        # Held credentials need no setup either: the key generated beside the data directory
        # is the one the gateway uses.
        held = await trio.to_thread.run_sync(
            lambda: majordomo(
                "keys",
                "set-provider",
                created.json()["id"],
                "--provider",
                "openai",
                "--api-key-env",
                "HELD",
                env={"HELD": "sk-proj-embedded-0001"},
                cwd=tmp_path,
            )
        )
        assert held.code == 0, held.err

        assert await gateway.terminate() == 0
    key_file = tmp_path / ".majordomo" / "encryption.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    kid = key_id(bytes.fromhex(key_file.read_text().strip()))
    messages = gateway.messages()
    assert f"held provider credentials: on, key {kid} kept in {key_file}" in messages
    jwt_file = tmp_path / ".majordomo" / "jwt.secret"  # the admin API needs no setup either
    assert stat.S_IMODE(jwt_file.stat().st_mode) == 0o600
    assert f"admin API: on, signing secret kept in {jwt_file}" in messages
    embedded = [m for m in messages if m.startswith("using embedded PostgreSQL in ")]
    assert embedded == [
        f"using embedded PostgreSQL in {tmp_path / '.majordomo' / 'pgdata'} "
        "(no storage.postgres.host configured)"
    ]
    assert (tmp_path / ".majordomo" / "pgdata" / "PG_VERSION").exists()
    # Start-up is serialised by a lock beside the data directory, owned by whoever runs it
    # (not a /tmp file shared by every user, which root would leave unwritable to others).
    assert (tmp_path / ".majordomo" / ".pgserver.lock").exists()
    assert messages[-1] == "stopped"
    assert not [e for e in gateway.log if e.get("level") in ("error", "raw")], gateway.log


async def test_sigterm_stops_in_order_and_exits_zero(pg: PgAdmin, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        gateway = await start_gateway(nursery, env=pg.env, cwd=tmp_path)
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            assert (await client.get("/readyz")).status_code == 200
        assert await gateway.terminate() == 0
    messages = gateway.messages()
    assert not any(m.startswith("using embedded") for m in messages)  # a host is configured
    order = [
        "received SIGTERM, shutting down",
        "server stopped; writing queued usage records",
        "log writer stopped; every record written",
        "stopped",
    ]
    positions = [messages.index(m) for m in order]
    assert positions == sorted(positions), messages


async def test_serve_refuses_to_start_on_a_bad_setting(tmp_path: Path) -> None:
    result = await trio.to_thread.run_sync(
        lambda: majordomo("serve", env={"MAJORDOMO_LOGGING_BODY_STORAGE": "disk"}, cwd=tmp_path)
    )
    assert result.code == 1
    assert result.err.strip() == (
        "majordomo: MAJORDOMO_LOGGING_BODY_STORAGE: 'disk' is not allowed for "
        "logging.body_storage; expected one of none, postgres, s3"
    )


async def test_a_busy_port_is_one_line_before_the_database_is_touched(tmp_path: Path) -> None:
    holder = trio.socket.socket()
    await holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = await trio.to_thread.run_sync(
            lambda: majordomo(
                "serve",
                env={"MAJORDOMO_SERVER_HOST": "127.0.0.1", "MAJORDOMO_SERVER_PORT": str(port)},
                cwd=tmp_path,
            )
        )
    finally:
        holder.close()
    assert_one_line_error(result, rf"cannot listen on 127\.0\.0\.1:{port}: .*server\.port")
    assert not (tmp_path / ".majordomo").exists()  # no embedded database was started


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_after_kill_9_the_embedded_server_is_adopted_then_stops_with_its_last_user(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / ".majordomo" / "pgdata"
    async with trio.open_nursery() as nursery:
        first = await start_gateway(nursery, env={}, cwd=tmp_path)
        server = postmaster_pid(data_dir)
        first.process.kill()  # SIGKILL: no clean-up of any kind
        await first.process.wait()
        assert running(server)  # left behind, with the dead gateway still listed as a user

        second = await start_gateway(nursery, env={}, cwd=tmp_path)
        assert postmaster_pid(data_dir) == server  # adopted, not started twice
        async with httpx.AsyncClient(base_url=second.url) as client:
            assert (await client.get("/readyz")).status_code == 200
        assert await second.terminate() == 0
    await wait_until(
        lambda: not running(server),
        deadline=30,
        what="the embedded PostgreSQL stopping with its last user",
    )


async def test_one_access_line_per_request_and_listening_said_once(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    env = {**pg.env, "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": fake.base_url}
    async with trio.open_nursery() as nursery:
        gateway = await start_gateway(nursery, env=env, cwd=tmp_path)
        key, _ = await trio.to_thread.run_sync(create_key, pg)
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            ok = await client.post(
                "/v1/chat/completions", json=chat, headers={"X-Majordomo-Key": key}
            )
            refused = await client.post("/v1/chat/completions", json=chat)
        assert (ok.status_code, refused.status_code) == (200, 401)
        await wait_until(
            lambda: len([e for e in gateway.log if e.get("logger") == "majordomo.access"]) >= 2,
            deadline=30,
            what="two access lines",
        )
        assert await gateway.terminate() == 0
    lines = [e for e in gateway.log if e.get("logger") == "majordomo.access"]
    assert len(lines) == 2
    served = next(e for e in lines if e["status"] == 200)
    assert served["request_id"] == ok.headers["x-request-id"]
    assert (served["method"], served["path"], served["provider"], served["model"]) == (
        "POST",
        "/v1/chat/completions",
        "openai",
        "gpt-4o-mini",
    )
    assert served["input_tokens"] > 0
    assert float(served["cost"]) > 0
    assert served["msg"].startswith("POST /v1/chat/completions openai gpt-4o-mini 200 ")
    assert next(e for e in lines if e["status"] == 401)["msg"].startswith(
        "POST /v1/chat/completions openai 401 refused: missing X-Majordomo-Key"
    )
    messages = gateway.messages()
    assert len([m for m in messages if m.startswith("listening on")]) == 1
    assert not [m for m in messages if m.startswith("Running on")]
