"""Budgets and rate limits (limits.py): leases on a real PostgreSQL, then whole gateways.

The lease tests run on trio's mock clock (time moves only when a test says so) so windows
roll over when the test decides; the gateway tests use the openai SDK against the fake
upstream and check the rows.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest
import trio
import trio.lowlevel
import trio.testing

from majordomo.db import open_database
from majordomo.db.limits import LimitQueries
from majordomo.errors import DatabaseUnavailable
from majordomo.limits import (
    LeaseManager,
    Limits,
    LimitsExceeded,
    estimate_tokens,
    parse_budget,
    window,
)
from tests.fakeupstream import FakeUpstream
from tests.gateway import start_gateway
from tests.harness import Gateway, create_key, running_gateway
from tests.netcut import PgRelay
from tests.pghelpers import PgAdmin

T = TypeVar("T")
EPOCH = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(function, *args))


@asynccontextmanager
async def limit_queries(pg: PgAdmin) -> AsyncIterator[LimitQueries]:
    """The queries on a pool of their own (opened in the test's task: the pool lives on the
    asyncio loop of the task that opened it)."""
    async with open_database(pg.settings) as db:
        await db.migrate()
        yield db.limits


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the background renewals run (their database I/O) until `condition` holds. The mock
    clock stands still, so the deadline is the wall clock's."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await trio.lowlevel.checkpoint()


def manager(queries: LimitQueries, **kwargs: Any) -> LeaseManager:
    """A lease manager whose wall clock is the mock clock from EPOCH on."""
    return LeaseManager(
        queries.lease,
        queries.give_back,
        fail_open=kwargs.pop("fail_open", False),
        clock=lambda: EPOCH + timedelta(seconds=trio.current_time()),
        **kwargs,
    )


@pytest.mark.fast
def test_budgets_parse() -> None:
    assert parse_budget("25/day") == (Decimal(25), "day")
    assert parse_budget("$0.05/month") == (Decimal("0.05"), "month")
    assert parse_budget("none") is None
    with pytest.raises(ValueError, match="25/day"):
        parse_budget("25 per day")


@pytest.mark.fast
def test_windows_are_utc_calendar_windows() -> None:
    at = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
    assert window("minute", at) == (at.replace(second=0), datetime(2027, 1, 1, tzinfo=UTC))
    assert window("day", at) == (
        at.replace(hour=0, minute=0, second=0),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert window("month", at) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


@pytest.mark.fast
def test_estimates_cover_the_prompt_and_the_output_asked_for() -> None:
    assert estimate_tokens({"max_tokens": 64}, 300) == (100, 64)
    assert estimate_tokens({"generationConfig": {"maxOutputTokens": 10}}, 3) == (1, 10)
    assert estimate_tokens({"inferenceConfig": {"maxTokens": 7}}, 0) == (0, 7)
    assert estimate_tokens(None, 10)[1] == 4096


async def test_requests_are_counted_exactly_and_the_window_rolls_over(
    mock_clock: trio.testing.MockClock, pg: PgAdmin
) -> None:
    key = uuid.uuid4()
    limits = Limits(rpm=10)
    async with limit_queries(pg) as queries, trio.open_nursery() as nursery:
        leases = manager(queries)
        await nursery.start(leases.run)
        for _ in range(10):
            await leases.admit(key, limits, 0, Decimal(0))
        with pytest.raises(LimitsExceeded) as refused:
            await leases.admit(key, limits, 0, Decimal(0))
        assert refused.value.refusal.kind == "requests"
        assert refused.value.refusal.retry_after == 60
        assert "rpm limit of 10" in refused.value.refusal.message
        assert refused.value.headers == [(b"x-majordomo-limit-remaining-requests", b"0")]
        mock_clock.jump(30)
        with pytest.raises(LimitsExceeded) as refused:
            await leases.admit(key, limits, 0, Decimal(0))
        assert refused.value.refusal.retry_after == 30
        mock_clock.jump(30)  # the next minute
        await leases.admit(key, limits, 0, Decimal(0))
        nursery.cancel_scope.cancel()
    rows = await pg.afetch(
        "SELECT window_start, granted FROM limit_windows WHERE owner_id = $1 ORDER BY 1", key
    )
    assert [(r["window_start"], r["granted"]) for r in rows] == [
        (EPOCH, 10),
        (EPOCH + timedelta(minutes=1), 1),
    ]
    assert leases.metrics.limit_refusals == {"requests": 2}


async def test_unused_leases_go_back_at_rollover_and_at_stop(
    mock_clock: trio.testing.MockClock, pg: PgAdmin
) -> None:
    key = uuid.uuid4()
    limits = Limits(rpm=100)
    async with limit_queries(pg) as queries, trio.open_nursery() as nursery:
        leases = manager(queries)
        await nursery.start(leases.run)
        for _ in range(3):
            await leases.admit(key, limits, 0, Decimal(0))
        (bucket,) = leases.snapshot()
        await until(lambda: bucket.balance > 0, "a renewed lease")
        mock_clock.jump(60)
        await leases.admit(key, limits, 0, Decimal(0))  # the next window
        await until(lambda: leases.metrics.limit_leases_returned == 1, "the rollover's return")
        nursery.cancel_scope.cancel()
    rows = await pg.afetch(
        "SELECT window_start, granted FROM limit_windows WHERE owner_id = $1 ORDER BY 1", key
    )
    assert [(r["window_start"], r["granted"]) for r in rows] == [
        (EPOCH, 3),  # the rest given back at the rollover
        (EPOCH + timedelta(minutes=1), 1),  # given back at the stop
    ]
    assert leases.metrics.limit_leases_returned == 2


async def test_leases_are_taken_ahead_in_the_background(
    mock_clock: trio.testing.MockClock, pg: PgAdmin
) -> None:
    key = uuid.uuid4()
    limits = Limits(rpm=1000)
    async with limit_queries(pg) as queries, trio.open_nursery() as nursery:
        leases = manager(queries)
        await nursery.start(leases.run)
        await leases.admit(key, limits, 0, Decimal(0))
        assert leases.metrics.limit_leases_taken == 1  # the first request waited for it
        (bucket,) = leases.snapshot()
        waited = 0
        for _ in range(300):
            await until(lambda: not bucket.renewing, "the renewal in flight")
            if bucket.balance < 1:
                waited += 1
            await leases.admit(key, limits, 0, Decimal(0))
        # A lease is at most a tenth of the capacity: 300 requests needed several, each
        # taken in the background before the balance ran out, so no request waited.
        assert leases.metrics.limit_leases_taken >= 3
        assert waited == 0
        nursery.cancel_scope.cancel()


async def test_tokens_and_dollars_settle_to_the_exact_amount(
    mock_clock: trio.testing.MockClock, pg: PgAdmin
) -> None:
    key = uuid.uuid4()
    limits = Limits(tpm=1000, budget_usd=Decimal("0.01"), budget_period="day")
    async with limit_queries(pg) as queries, trio.open_nursery() as nursery:
        leases = manager(queries)
        await nursery.start(leases.run)
        held = await leases.admit(key, limits, 400, Decimal("0.004"))
        leases.settle(held, 150, Decimal("0.001"))
        buckets = {b.kind: b for b in leases.snapshot()}
        assert buckets["tokens"].spent == 150
        assert buckets["usd"].spent == Decimal("0.001")
        # Over the estimate: a debt, paid from the next lease.
        held = await leases.admit(key, limits, 100, Decimal("0.001"))
        leases.settle(held, 900, Decimal("0.001"))
        assert buckets["tokens"].spent == 1050
        with pytest.raises(LimitsExceeded) as refused:
            await leases.admit(key, limits, 10, Decimal("0.0001"))
        assert refused.value.refusal.kind == "tokens"
        nursery.cancel_scope.cancel()
    granted = await pg.afetchval(
        "SELECT granted FROM limit_windows WHERE owner_id = $1 AND kind = 'tokens'", key
    )
    assert granted <= 1000  # leases never pass capacity; the overshoot is the debt


async def test_concurrent_leases_never_grant_past_capacity(pg: PgAdmin) -> None:
    key = uuid.uuid4()
    granted: list[Decimal] = []
    async with limit_queries(pg) as queries:

        async def take() -> None:
            got, _ = await queries.lease(key, "requests", EPOCH, Decimal(100), Decimal(7))
            granted.append(got)

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(take)
    assert sum(granted) == 100
    assert sorted(granted)[-1] == 7
    assert await pg.afetchval("SELECT granted FROM limit_windows WHERE owner_id = $1", key) == 100


async def test_the_database_away_fails_closed_or_open() -> None:
    async def away(*args: Any) -> Any:
        raise DatabaseUnavailable("the database is away")

    for fail_open in (False, True):
        leases = LeaseManager(
            away, away, fail_open=fail_open, clock=lambda: EPOCH + timedelta(seconds=0)
        )
        if fail_open:
            await leases.admit(uuid.uuid4(), Limits(rpm=5), 0, Decimal(0))
            assert leases.metrics.limit_admitted_open == 1
        else:
            with pytest.raises(DatabaseUnavailable):
                await leases.admit(uuid.uuid4(), Limits(rpm=5), 0, Decimal(0))


# -- through the gateway ---------------------------------------------------------------------


async def set_limits(pg: PgAdmin, key_id: uuid.UUID, **limits: Any) -> None:
    columns = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(limits))
    await pg.afetch(f"UPDATE api_keys SET {columns} WHERE id = $1", key_id, *limits.values())


def openai_client(gateway: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.url + "/v1",
        api_key="sk-caller-own",
        max_retries=0,
        default_headers={"X-Majordomo-Key": key or gateway.key},
    )


async def test_a_request_over_rpm_is_a_429_the_sdk_raises_and_a_row(
    pg: PgAdmin, fake: FakeUpstream
) -> None:
    async with running_gateway(pg, fake.base_url) as gw:
        await set_limits(pg, gw.key_id, rpm=3)
        gw.state.keys.clear()
        remaining: list[str | None] = []

        def run() -> None:
            with openai_client(gw) as client:
                for _ in range(3):
                    raw = client.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini", messages=MESSAGES, max_tokens=64
                    )
                    remaining.append(raw.headers.get("x-majordomo-limit-remaining-requests"))
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

        with pytest.raises(openai.RateLimitError) as refused:
            await in_thread(run)
        response = refused.value.response
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert "rpm limit of 3" in refused.value.message
        assert remaining == ["2", "1", "0"]
        assert len(fake.calls) == 3  # the refused one was never forwarded
        rows = await gw.rows(4)
        assert [r["status_code"] for r in rows] == [200, 200, 200, 429]
        assert rows[3]["total_cost"] == 0
        assert "rpm limit" in rows[3]["error_message"]

        def anthropic_call() -> None:
            with anthropic.Anthropic(
                base_url=gw.url,
                api_key="sk-ant",
                max_retries=0,
                default_headers={"X-Majordomo-Key": gw.key},
            ) as client:
                client.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=MESSAGES)

        with pytest.raises(anthropic.RateLimitError) as refused_too:
            await in_thread(anthropic_call)  # the same key, another SDK: its own error
        assert "rpm limit of 3" in str(refused_too.value)
        async with httpx.AsyncClient(base_url=gw.url) as http:
            metrics = (await http.get("/metrics")).text
        assert 'majordomo_limit_refusals_total{kind="requests"} 2' in metrics
        values = dict(
            line.rsplit(" ", 1)
            for line in metrics.splitlines()
            if line.startswith("majordomo_limit")
        )
        # A limit this small is leased one request at a time: a round trip each, then the two
        # that found nothing left.
        assert float(values["majordomo_limit_leases_taken_total"]) == 5
        assert float(values["majordomo_limit_lease_seconds_count"]) == 5


async def test_a_budget_stops_spending_at_the_budget(pg: PgAdmin, fake: FakeUpstream) -> None:
    async with running_gateway(pg, fake.base_url) as gw:
        budget = Decimal("0.0002")
        await set_limits(pg, gw.key_id, budget_usd=budget, budget_period="day")
        gw.state.keys.clear()

        def run() -> int:
            admitted = 0
            with openai_client(gw) as client:
                for _ in range(200):
                    try:
                        client.chat.completions.create(
                            model="gpt-4o-mini", messages=MESSAGES, max_tokens=64
                        )
                    except openai.RateLimitError:
                        return admitted
                    admitted += 1
            return admitted

        admitted = await in_thread(run)
        assert 0 < admitted < 200
        rows = await gw.rows(admitted + 1)
        spent = sum(r["total_cost"] for r in rows)
        # One request at a time, each estimate (its max_tokens) above its cost: no overshoot.
        assert spent <= budget
        assert rows[-1]["status_code"] == 429


async def test_three_gateway_processes_share_one_rpm(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    statuses: list[int] = []
    retry_after: list[str] = []

    def one(url: str) -> None:
        with openai.OpenAI(
            base_url=url + "/v1",
            api_key="sk-caller-own",
            max_retries=0,
            default_headers={"X-Majordomo-Key": key},
        ) as client:
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, max_tokens=16
                )
                statuses.append(200)
            except openai.RateLimitError as exc:
                statuses.append(429)
                retry_after.append(exc.response.headers["retry-after"])

    async with trio.open_nursery() as nursery:
        gateways = []
        for i in range(3):
            spool = tmp_path / f"spool-{i}"
            env = {
                **pg.env,
                "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": fake.base_url,
                "MAJORDOMO_LOGGING_SPOOL_DIR": str(spool),
            }
            gateways.append(await start_gateway(nursery, env=env, cwd=tmp_path))
        key, key_id = await trio.to_thread.run_sync(create_key, pg)  # once the schema is in
        await set_limits(pg, key_id, rpm=120)
        # 400 requests spread over the three, 20 at a time.
        limiter = trio.CapacityLimiter(20)
        async with trio.open_nursery() as clients:
            for i in range(400):
                clients.start_soon(
                    functools.partial(
                        trio.to_thread.run_sync, one, gateways[i % 3].url, limiter=limiter
                    )
                )
        for gateway in gateways:
            assert await gateway.terminate() == 0
    assert len(statuses) == 400
    rows = await pg.afetch("SELECT requested_at, status_code FROM llm_requests")
    assert len(rows) == 400  # refusals leave rows too
    admitted = Counter(
        # (a 499 is a request answered whose client hung up first: admitted all the same)
        r["requested_at"].replace(second=0, microsecond=0)
        for r in rows
        if r["status_code"] != 429
    )
    # Requests are counted at admission: the bound is the limit itself, in every window.
    assert all(count <= 120 for count in admitted.values()), admitted
    assert statuses.count(200) == sum(admitted.values())
    assert statuses.count(429) >= 400 - 120 * len(admitted)
    assert all(1 <= int(value) <= 60 for value in retry_after)
    # Every lease was given back or spent: what was granted is what was admitted.
    granted = await pg.afetchval("SELECT coalesce(sum(granted), 0) FROM limit_windows")
    assert granted == sum(admitted.values())


async def test_a_cut_stream_settles_what_it_used(pg: PgAdmin, fake: FakeUpstream) -> None:
    async with running_gateway(pg, fake.base_url) as gw:
        await set_limits(pg, gw.key_id, tpm=100_000)
        gw.state.keys.clear()
        async with httpx.AsyncClient(base_url=gw.url) as http:
            request = http.build_request(
                "POST",
                "/v1/messages",
                headers={"X-Majordomo-Key": gw.key, "x-api-key": "sk-ant", "X-Fake-Hold": "1"},
                json={
                    "model": "claude-sonnet-4-5-20250929",
                    "max_tokens": 5000,
                    "stream": True,
                    "messages": MESSAGES,
                },
            )
            response = await http.send(request, stream=True)
            async for _ in response.aiter_raw():
                break  # message_start arrived; hang up mid-stream
            await response.aclose()
        (row,) = await gw.rows(1)
        assert row["status_code"] == 499
        (bucket,) = gw.state.limits.snapshot()
        # The reservation (prompt / 3 + 5000 output) went back; what message_start reported
        # was paid.
        assert bucket.spent == row["input_tokens"] + row["output_tokens"]
        assert row["input_tokens"] > 0


@pytest.mark.parametrize("fail_open", [False, True])
async def test_the_database_cut_serves_from_the_lease_then_as_configured(
    pg: PgAdmin, fake: FakeUpstream, fail_open: bool
) -> None:
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        settings = {"limits": {"fail_open": fail_open}}
        async with running_gateway(
            pg, fake.base_url, settings=settings, postgres=relay.settings
        ) as gw:
            await set_limits(pg, gw.key_id, rpm=100)
            gw.state.keys.clear()
            async with httpx.AsyncClient(base_url=gw.url) as http:

                async def call() -> httpx.Response:
                    return await http.post(
                        "/v1/chat/completions",
                        headers={"X-Majordomo-Key": gw.key, "Authorization": "Bearer sk"},
                        json={"model": "gpt-4o-mini", "messages": MESSAGES},
                    )

                assert (await call()).status_code == 200
                (bucket,) = gw.state.limits.snapshot()
                await until(lambda: not bucket.renewing, "the renewal in flight")
                lease = int(bucket.balance)
                assert lease >= 1
                relay.cut()
                served = [await call() for _ in range(lease)]
                assert [r.status_code for r in served] == [200] * lease
                after = await call()
                if fail_open:
                    assert after.status_code == 200
                    assert gw.state.metrics.limit_admitted_open == 1
                else:
                    assert after.status_code == 503
                    assert "cannot check this key's limits" in after.json()["error"]["message"]
                relay.restore()
                # Nothing lost: every forwarded request's row arrives once it is back.
                await gw.rows(lease + 1 + (1 if fail_open else 0), deadline=30)
        nursery.cancel_scope.cancel()


async def test_a_proxy_keys_limits_hold_on_top_of_its_keys(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    from majordomo.db.credentials import PROXY_KEY
    from tests.cli import majordomo
    from tests.credentials import create_proxy_key, hold
    from tests.harness import TEST_ENCRYPTION_KEY

    async with running_gateway(pg, fake.base_url) as gw:
        proxy_key, proxy_key_id = await create_proxy_key(pg, gw.key_id)
        await hold(pg, PROXY_KEY, proxy_key_id, "openai", "sk-held-for-the-proxy-key")
        env = {**pg.env, "MAJORDOMO_SECRETS_ENCRYPTION_KEY": TEST_ENCRYPTION_KEY}
        result = await trio.to_thread.run_sync(
            lambda: majordomo(
                "proxy-keys",
                "update",
                str(proxy_key_id),
                "--rpm",
                "2",
                "--json",
                env=env,
                cwd=tmp_path,
            )
        )
        assert result.code == 0, result.err
        assert result.json()["limits"]["rpm"] == 2

        messages: list[str] = []

        def run(api_key: str) -> int:
            with openai.OpenAI(
                base_url=gw.url + "/v1",
                api_key=api_key,
                max_retries=0,
                default_headers={"X-Majordomo-Key": gw.key},
            ) as client:
                try:
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                except openai.RateLimitError as exc:
                    messages.append(exc.message)
                    return 429
                return 200

        async def proxied() -> list[int]:
            return [await in_thread(run, proxy_key) for _ in range(3)]

        statuses = await proxied()
        assert statuses == [200, 200, 429]
        (message,) = messages
        assert "this proxy key is over its rpm limit of 2" in message
        assert "majordomo proxy-keys update" in message
        assert await in_thread(run, "sk-callers-own") == 200  # the key itself has no limit
        shown = await trio.to_thread.run_sync(
            lambda: majordomo(
                "proxy-keys", "get", str(proxy_key_id), "--json", env=env, cwd=tmp_path
            )
        )
        (window_row,) = shown.json()["windows"]
        assert (window_row["limit"], window_row["value"], window_row["used"]) == ("rpm", 2, 2)


async def test_requests_arriving_together_share_one_lease(
    mock_clock: trio.testing.MockClock, pg: PgAdmin
) -> None:
    key = uuid.uuid4()
    limits = Limits(rpm=1000)
    async with limit_queries(pg) as queries, trio.open_nursery() as nursery:
        leases = manager(queries)
        await nursery.start(leases.run)
        async with trio.open_nursery() as requests:
            for _ in range(16):
                requests.start_soon(leases.admit, key, limits, 0, Decimal(0))
        # The first lease (25 requests) covered all sixteen: one round trip, not sixteen.
        assert leases.metrics.limit_leases_taken == 1
        nursery.cancel_scope.cancel()
