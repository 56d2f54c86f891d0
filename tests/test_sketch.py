"""The metadata sketch: Python adds, PostgreSQL merges and estimates, and the two agree."""

from __future__ import annotations

import pytest

from majordomo import sketch
from majordomo.db import schema_sql
from tests.pghelpers import PgAdmin

SIZES = [0, 1, 7, 100, 640, 5_000, 40_000]  # below, around and far above 2.5 * 256 registers


@pytest.fixture
def pg(pg: PgAdmin) -> PgAdmin:
    """The test database with the schema (and so the sketch functions) applied."""
    pg.execute(schema_sql())
    return pg


@pytest.mark.parametrize("count", SIZES)
async def test_postgres_estimates_what_python_estimates_within_the_error(
    pg: PgAdmin, count: int
) -> None:
    registers = sketch.sketch(f"user-{n}" for n in range(count))
    in_sql = await pg.afetchval("SELECT majordomo_hll_estimate($1)", registers)
    assert in_sql == sketch.estimate(registers)
    assert abs(in_sql - count) <= max(2, 0.2 * count)  # three standard errors of 6.5 %


async def test_postgres_merges_as_python_merges_and_the_merge_counts_the_union(
    pg: PgAdmin,
) -> None:
    a = sketch.sketch(f"user-{n}" for n in range(0, 3_000))
    b = sketch.sketch(f"user-{n}" for n in range(2_000, 5_000))
    merged = await pg.afetchval("SELECT majordomo_hll_merge($1, $2)", a, b)
    assert merged == sketch.merge(a, b) == sketch.merge(b, a)
    assert await pg.afetchval("SELECT majordomo_hll_merge($1, $1)", merged) == merged  # replay
    assert abs(sketch.estimate(merged) - 5_000) <= 0.2 * 5_000
    # A missing sketch is the other one, as the writer's first upsert needs.
    assert await pg.afetchval("SELECT majordomo_hll_merge(NULL, $1)", b) == b
    assert await pg.afetchval("SELECT majordomo_hll_merge($1, NULL)", a) == a
