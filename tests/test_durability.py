"""The usage log survives database outages, restarts and bad spool lines; counters are true."""

from __future__ import annotations

import dataclasses
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from majordomo.spool import PENDING, QUARANTINE, encode
from tests.cli import majordomo
from tests.fakeupstream import FakeUpstream
from tests.gateway import start_gateway
from tests.harness import Gateway, create_key, running_gateway
from tests.netcut import PgRelay
from tests.pghelpers import PgAdmin
from tests.poll import wait_until
from tests.samples import a_record

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def fire(
    gw_url: str,
    key: str,
    count: int,
    *,
    concurrency: int = 20,
    headers: dict[str, str] | None = None,
) -> list[str]:
    """Send `count` chat requests; return the X-Request-Id of every one answered."""
    answered: list[str] = []
    todo = iter(range(count))

    async def worker(client: httpx.AsyncClient) -> None:
        for n in todo:
            extra = {"X-Majordomo-User-Id": f"user-{n % 50}", **(headers or {})}
            try:
                response = await client.post("/v1/chat/completions", json=CHAT, headers=extra)
            except httpx.TransportError:
                continue  # the gateway stopped listening: no answer, no record due
            assert response.status_code == 200, response.text
            answered.append(response.headers["x-request-id"])

    async with (
        httpx.AsyncClient(base_url=gw_url, headers={"X-Majordomo-Key": key}, timeout=30) as client,
        trio.open_nursery() as nursery,
    ):
        for _ in range(concurrency):
            nursery.start_soon(worker, client)
    return answered


async def test_database_outage_in_the_middle_of_1000_requests_loses_nothing(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        async with running_gateway(
            pg, fake.base_url, postgres=relay.settings, spool_dir=str(tmp_path / "spool")
        ) as gw:
            first = await fire(gw.url, gw.key, 300)
            relay.cut()
            during = await fire(gw.url, gw.key, 400)  # keys are cached: requests still pass
            relay.restore()
            after = await fire(gw.url, gw.key, 300)
            rows = await gw.rows(1000, deadline=60)
            assert sorted(str(r["id"]) for r in rows) == sorted(first + during + after)
            metrics = await scrape(gw)
        nursery.cancel_scope.cancel()
    # The outage went through the spool, and every spooled record came back exactly once.
    assert metrics["majordomo_log_spooled_total"] > 0
    assert metrics["majordomo_log_replayed_total"] == metrics["majordomo_log_spooled_total"]
    assert await pg.afetchval("SELECT request_count FROM api_keys") == 1000
    registry = (await pg.afetch("SELECT * FROM llm_requests_metadata_keys"))[0]
    assert (registry["key_name"], registry["request_count"]) == ("user-id", 1000)
    assert 45 <= registry["approx_cardinality"] <= 55  # 50 distinct users


async def scrape(gw: Gateway) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(gw.url + "/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_sigterm_during_load_with_the_database_away_then_restart(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Every answered request is in the table after the restart, none twice."""
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        env = {
            **PgAdmin(relay.settings).env,
            "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": fake.base_url,
            "MAJORDOMO_LOGGING_DRAIN_TIMEOUT": "2s",
        }
        gateway = await start_gateway(nursery, env=env, cwd=tmp_path)
        key, _ = await trio.to_thread.run_sync(create_key, pg)  # the schema exists now
        answered: list[str] = []

        async def load() -> None:
            answered.extend(await fire(gateway.url, key, 600, concurrency=10))

        async with trio.open_nursery() as clients:
            clients.start_soon(load)
            await wait_until(lambda: len(fake.calls) >= 200, deadline=30, what="200 calls upstream")
            relay.cut()  # the database goes away under load...
            await wait_until(lambda: len(fake.calls) >= 300, deadline=30, what="300 calls upstream")
            gateway.process.send_signal(signal.SIGTERM)  # ...and the gateway is stopped
        with trio.fail_after(60):
            assert await gateway.process.wait() == 0
        relay.restore()
        spooled = (tmp_path / ".majordomo" / "spool" / PENDING).read_bytes().splitlines()
        assert spooled  # what the database did not take is on disk

        # Restarted, with the database back: the spool is replayed first.
        gateway = await start_gateway(nursery, env=env, cwd=tmp_path)
        rows: list[Any] = []
        with trio.fail_after(30):
            while len(rows) < len(answered):
                rows = await pg.afetch("SELECT id FROM llm_requests")
                await trio.sleep(0.05)
        assert await gateway.terminate() == 0
        nursery.cancel_scope.cancel()
    assert 300 <= len(answered) < 600
    stored = {str(r["id"]) for r in rows}
    assert len(stored) == len(rows)  # none twice
    assert set(answered) <= stored  # every answered request is there
    # A request can also reach the provider and lose its answer to the shutdown (the client
    # sees a broken connection): it was served, so it is recorded too; there are few.
    assert len(rows) - len(answered) <= 10
    assert await pg.afetchval("SELECT request_count FROM api_keys") == len(rows)


async def test_a_corrupt_spool_line_is_quarantined_and_the_rest_replays(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    good = [a_record(n) for n in range(10)]
    lines = [encode(r) for r in good]
    lines.insert(4, b'{"id": "torn wr\n')
    lines.insert(7, b"\x00\x00garbage\n")
    (spool / PENDING).write_bytes(b"".join(lines))
    async with running_gateway(pg, fake.base_url, spool_dir=str(spool)) as gw:
        rows = await gw.rows(10)
        metrics = await scrape(gw)
    assert sorted(r["input_tokens"] for r in rows) == list(range(10))
    assert (spool / QUARANTINE).read_bytes() == b'{"id": "torn wr\n\x00\x00garbage\n'
    assert metrics["majordomo_log_quarantined_total"] == 2
    assert not list(spool.glob("replay-*"))


async def test_replaying_twice_counts_once(pg: PgAdmin, fake: FakeUpstream, tmp_path: Path) -> None:
    """A crash between insert and spool cleanup replays rows already stored: no double count."""
    spool = tmp_path / "spool"
    async with running_gateway(pg, fake.base_url, spool_dir=str(spool)) as gw:
        key_id = gw.key_id
    records = [
        dataclasses.replace(a_record(n), api_key_id=key_id, raw_metadata={"team": "a"})
        for n in range(5)
    ]
    spool.mkdir(exist_ok=True)
    for _ in range(2):
        (spool / PENDING).write_bytes(b"".join(encode(r) for r in records))
        async with running_gateway(pg, fake.base_url, spool_dir=str(spool)) as gw:
            await gw.rows(5)
    assert await pg.afetchval("SELECT request_count FROM api_keys WHERE id = $1", key_id) == 5
    assert await pg.afetchval("SELECT request_count FROM llm_requests_metadata_keys") == 5


# ----------------------------------------------------------------------------- metadata


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url, spool_dir=str(tmp_path / "spool")) as gw:
        yield gw


async def test_metadata_activation_indexes_new_rows_and_backfill_indexes_old_ones(
    gateway: Gateway, pg: PgAdmin, tmp_path: Path
) -> None:
    headers = {"X-Majordomo-Team": "search", "X-Majordomo-Env": "prod"}
    await fire(gateway.url, gateway.key, 3, concurrency=1, headers=headers)
    old = await gateway.rows(3)
    assert all(r["indexed_metadata"] == "{}" for r in old)

    def cli(*args: str) -> Any:
        result = majordomo(*args, "--json", env=pg.env, cwd=tmp_path)
        assert result.code == 0, result.err
        return result.json()

    key = str(gateway.key_id)
    listed = await trio.to_thread.run_sync(cli, "metadata", "list", "--key", key)
    assert {m["key_name"]: m["request_count"] for m in listed} == {
        "team": 3,
        "env": 3,
        "user-id": 3,
    }
    activated = await trio.to_thread.run_sync(cli, "metadata", "activate", "team", "--key", key)
    assert activated["is_active"] is True
    assert activated["activated_at"]

    await fire(gateway.url, gateway.key, 2, concurrency=1, headers=headers)
    new = (await gateway.rows(5))[3:]
    assert [json.loads(r["indexed_metadata"]) for r in new] == [{"team": "search"}] * 2
    # The GIN-indexed column answers containment queries.
    found = await pg.afetchval(
        'SELECT count(*) FROM llm_requests WHERE indexed_metadata @> \'{"team": "search"}\''
    )
    assert found == 2

    backfilled = await trio.to_thread.run_sync(cli, "metadata", "backfill", "--key", key)
    assert backfilled == {"rows_changed": 3}
    rows = await pg.afetch("SELECT indexed_metadata FROM llm_requests")
    assert all(json.loads(r["indexed_metadata"]) == {"team": "search"} for r in rows)

    await trio.to_thread.run_sync(cli, "metadata", "deactivate", "team", "--key", key)
    assert (await trio.to_thread.run_sync(cli, "metadata", "backfill")) == {"rows_changed": 5}


async def test_metadata_cli_errors(gateway: Gateway, pg: PgAdmin, tmp_path: Path) -> None:
    missing = str(uuid.uuid4())
    result = await trio.to_thread.run_sync(
        lambda: majordomo("metadata", "list", "--key", missing, env=pg.env, cwd=tmp_path)
    )
    assert result.code == 1
    assert result.err.strip() == (
        f"majordomo: no key with id {missing}; 'majordomo keys list' shows the ids"
    )


async def test_metadata_limits_are_enforced_and_counted(gateway: Gateway) -> None:
    headers = {f"X-Majordomo-K{i}": "v" for i in range(40)}
    headers["X-Majordomo-Big"] = "x" * 5000
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Majordomo-Key": gateway.key, **headers}
        )
    assert response.status_code == 200  # never an error to the client
    (row,) = await gateway.rows(1)
    assert len(json.loads(row["raw_metadata"])) == 32
    metrics = await scrape(gateway)
    assert metrics["majordomo_metadata_dropped_total"] == 41 - 32


async def test_metrics_report_requests_and_the_pipeline(gateway: Gateway) -> None:
    await fire(gateway.url, gateway.key, 4, concurrency=2)
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        await client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"X-Majordomo-Key": gateway.key, "X-Fake-Status": "429"},
        )
        await gateway.rows(5)
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    metrics = await scrape(gateway)
    assert metrics['majordomo_requests_total{provider="openai",status="200"}'] == 4
    assert metrics['majordomo_requests_total{provider="openai",status="429"}'] == 1
    assert metrics["majordomo_log_rows_written_total"] == 5
    assert metrics["majordomo_log_batches_total"] >= 1
    assert metrics["majordomo_log_write_seconds_count"] == metrics["majordomo_log_batches_total"]
    assert metrics['majordomo_request_duration_seconds_count{provider="openai"}'] == 5
    assert metrics["majordomo_log_queue_depth"] == 0
    assert "# TYPE majordomo_request_duration_seconds histogram" in response.text


async def test_a_row_the_database_refuses_is_set_aside_and_the_rest_written(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    good = [a_record(n) for n in range(3)]
    orphan = dataclasses.replace(a_record(99), api_key_id=uuid.uuid4())  # no such key: FK
    (spool / PENDING).write_bytes(b"".join(encode(r) for r in [*good, orphan]))
    async with running_gateway(pg, fake.base_url, spool_dir=str(spool)) as gw:
        rows = await gw.rows(3)
        metrics = await scrape(gw)
    assert sorted(r["input_tokens"] for r in rows) == [0, 1, 2]
    (set_aside,) = (spool / QUARANTINE).read_bytes().splitlines()
    assert json.loads(set_aside)["id"] == str(orphan.id)
    assert metrics["majordomo_log_quarantined_total"] == 1


async def test_two_gateways_merge_their_metadata_sketches(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Distinct values are counted across processes: overlapping sets count once."""
    async with (
        running_gateway(pg, fake.base_url, spool_dir=str(tmp_path / "a")) as a,
        running_gateway(pg, fake.base_url, spool_dir=str(tmp_path / "b")) as b,
    ):
        key = a.key  # one API key, used through both gateways

        async def send(gw: Gateway, users: range) -> None:
            async with httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": key}) as c:
                for n in users:
                    headers = {"X-Majordomo-Team": f"team-{n}"}
                    response = await c.post("/v1/chat/completions", json=CHAT, headers=headers)
                    assert response.status_code == 200

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, a, range(0, 120))  # teams 0..119 through one gateway,
            nursery.start_soon(send, b, range(80, 200))  # 80..199 through the other
        await a.rows(240, deadline=30)
    row = (
        await pg.afetch(
            "SELECT * FROM llm_requests_metadata_keys WHERE key_name = 'team' "
            "AND majordomo_api_key_id = $1",
            a.key_id,
        )
    )[0]
    assert row["request_count"] == 240
    assert 180 <= row["approx_cardinality"] <= 220  # 200 distinct teams, ±10 %


async def test_an_idle_gateway_writes_its_spool_once_the_database_is_back(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        async with running_gateway(
            pg, fake.base_url, postgres=relay.settings, spool_dir=str(tmp_path / "spool")
        ) as gw:
            await fire(gw.url, gw.key, 1)  # the key is cached from here on
            relay.cut()
            answered = await fire(gw.url, gw.key, 20)
            await wait_until(
                lambda: gw.state.metrics.records_spooled >= 20,
                deadline=30,
                what="20 records spooled",
            )
            relay.restore()
            # No request comes after the outage: the writer retries the spool on its own.
            rows = await gw.rows(21, deadline=60)
        nursery.cancel_scope.cancel()
    assert set(answered) <= {str(r["id"]) for r in rows}
