"""The one table of columns, and the spool codec derived from the same declarations."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from majordomo.db import open_database
from majordomo.records import COLUMNS, Exchange, RequestRecord, RowExtras, Usage
from majordomo.spool import encode, record_from_json, record_to_json
from tests.pghelpers import PgAdmin

# Columns the database fills itself.
# Filled by the batch statement itself: indexed_metadata from the active metadata keys,
# user_id from the key's owner; created_at by its default.
FILLED_BY_THE_DATABASE = {"indexed_metadata", "created_at", "user_id"}


def full_record() -> RequestRecord:
    """A record with every field set to something other than its default."""
    return RequestRecord(
        id=uuid.uuid4(),
        api_key_id=uuid.uuid4(),
        provider="anthropic",
        model="claude-sonnet-4-5",
        request_path="/v1/messages",
        request_method="POST",
        requested_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        responded_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        status_code=200,
        usage=Usage(100, 50, 20, 10, 5),
        response_time_ms=1000,
        time_to_first_byte_ms=200,
        streamed=True,
        proxy_key_id=uuid.uuid4(),
        provider_api_key_hash="ab" * 32,
        provider_api_key_alias="team-a",
        error_message="none really",
        usage_error="an event was too large",
        raw_metadata={"user-id": "u1", "n": "2"},
        exchange=Exchange(
            method="POST",
            path="/v1/messages",
            query="beta=true",
            request_headers=(("content-type", "application/json"),),
            request_body=b'{"a": 1}',
            response_status=200,
            response_headers=(("x", "y"), ("x", "z")),
            response_body=b"\x00\xff binary",
            request_truncated=True,
            response_truncated=True,
        ),
    )


def test_every_field_round_trips_through_the_spool() -> None:
    record = full_record()
    for field in dataclasses.fields(RequestRecord):
        assert getattr(record, field.name) != field.default, field.name  # all non-default
    assert record_from_json(json.loads(encode(record))) == record


def test_a_line_written_before_a_field_existed_takes_the_default() -> None:
    line = record_to_json(full_record())
    del line["usage_error"]
    assert record_from_json(line).usage_error is None
    del line["id"]
    with pytest.raises(KeyError):
        record_from_json(line)  # a field without a default is required


@pytest.mark.parametrize(
    ("field", "bad"),
    [("status_code", "200"), ("usage", [1, "x", 0, 0, 0]), ("requested_at", "yesterday")],
)
def test_malformed_fields_are_refused(field: str, bad: object) -> None:
    line = record_to_json(full_record())
    line[field] = bad
    with pytest.raises((ValueError, TypeError)):
        record_from_json(line)


async def test_the_columns_are_exactly_the_tables(pg: PgAdmin) -> None:
    async with open_database(pg.settings) as db:
        await db.migrate()
    rows = await pg.afetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'llm_requests'"
    )
    in_table = {r["column_name"] for r in rows}
    declared = [c.name for c in COLUMNS]
    assert len(declared) == len(set(declared))
    assert set(declared) == in_table - FILLED_BY_THE_DATABASE


def test_columns_read_their_values_from_a_record_and_its_extras() -> None:
    record = full_record()
    extras = RowExtras(Decimal("0.1"), Decimal("0.2"), Decimal("0.3"), True, "req", "resp", "k")
    values = {c.name: c.read(record, extras) for c in COLUMNS}
    assert values["majordomo_api_key_id"] == record.api_key_id
    assert values["cached_tokens"] == 20
    assert values["total_cost"] == Decimal("0.3")
    assert values["raw_metadata"] == {"user-id": "u1", "n": "2"}
    assert values["body_s3_key"] == "k"
