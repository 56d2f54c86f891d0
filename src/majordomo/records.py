"""Immutable values that flow from a request handler to the log writer, and the one table of
`llm_requests` columns.

A handler builds one `RequestRecord` when its request has finished (success, provider error,
timeout or client disconnect) and sends it over the log channel; nothing mutates it afterwards.
The writer adds `RowExtras` (cost, stored bodies) and inserts the row.

The columns are declared once, on the fields they come from: a field made with `column(...)`
is an `llm_requests` column, in declaration order (`Usage`'s fields stand for themselves inside
`RequestRecord.usage`, then `RowExtras`'s). `COLUMNS` is derived from those declarations, and
from it the batch INSERT and the row tuple (`db.requests`); the spool's JSON codec is derived
from the same dataclasses (`spool.py`). Adding a column is one field here plus `schema.sql`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """How a field is stored: the element type of the batch's array, and maybe its own name
    and a cast when the column differs (`raw_metadata` travels as text, is stored as jsonb)."""

    pg_type: str
    name: str | None = None
    cast: str | None = None


def column(
    pg_type: str,
    default: Any = dataclasses.MISSING,
    *,
    name: str | None = None,
    cast: str | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that is also an `llm_requests` column."""
    metadata = {"column": ColumnSpec(pg_type, name, cast)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# A field whose dataclass value contributes its own columns (`RequestRecord.usage`).
_EXPANDED = {"columns": "expanded"}


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, normalised across providers.

    `input_tokens` counts every prompt token, cache reads and writes included;
    `cached_tokens` are cache reads, `cache_creation_tokens` cache writes; `output_tokens`
    includes `reasoning_tokens` (thinking), which is also reported on its own.
    """

    input_tokens: int = column("bigint", 0)
    output_tokens: int = column("bigint", 0)
    cached_tokens: int = column("bigint", 0)
    cache_creation_tokens: int = column("bigint", 0)
    reasoning_tokens: int = column("bigint", 0)


@dataclass(frozen=True, slots=True)
class Exchange:
    """The full request and response of one call, kept when `logging.body_storage` is on.

    Built by the proxy with every secret already scrubbed (`redact.py`). Header names are
    lower-case; a streamed response body is its raw event text. Bodies may already be cut at
    `logging.max_body_size` (`*_truncated` says so).
    """

    method: str
    path: str
    query: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: bytes
    response_status: int
    response_headers: tuple[tuple[str, str], ...]
    response_body: bytes
    request_truncated: bool = False
    response_truncated: bool = False


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request, as the log writer will store it."""

    id: uuid.UUID = column("uuid")
    api_key_id: uuid.UUID | None = column("uuid", name="majordomo_api_key_id")
    provider: str = column("text")
    model: str = column("text")
    request_path: str = column("text")
    request_method: str = column("text")
    requested_at: datetime = column("timestamptz")
    responded_at: datetime = column("timestamptz")
    status_code: int = column("int")
    usage: Usage = field(default_factory=Usage, metadata=_EXPANDED)
    response_time_ms: int = column("int", 0)
    time_to_first_byte_ms: int | None = column("int", None)
    streamed: bool = column("bool", False)
    proxy_key_id: uuid.UUID | None = column("uuid", None)
    provider_api_key_hash: str | None = column("text", None)
    provider_api_key_alias: str | None = column("text", None)
    error_message: str | None = column("text", None)
    # Why the usage could not be read (an event too large, a body that does not decompress).
    usage_error: str | None = column("text", None)
    raw_metadata: dict[str, Any] = column("text", cast="jsonb", default_factory=dict)
    exchange: Exchange | None = None


@dataclass(frozen=True, slots=True)
class RowExtras:
    """What the log writer adds to a record before inserting it: cost and stored bodies."""

    input_cost: Decimal = column("numeric", Decimal(0))
    output_cost: Decimal = column("numeric", Decimal(0))
    total_cost: Decimal = column("numeric", Decimal(0))
    model_alias_found: bool = column("bool", False)
    request_body: str | None = column("text", None)
    response_body: str | None = column("text", None)
    body_s3_key: str | None = column("text", None)


@dataclass(frozen=True, slots=True)
class Column:
    """One `llm_requests` column the writer fills: its name, its array element type, an
    optional cast, and how to read its value from a record and its extras."""

    name: str
    pg_type: str
    cast: str | None
    read: Callable[[RequestRecord, RowExtras], Any]


def _columns() -> Iterator[Column]:
    def of(cls: type, reach: Callable[[RequestRecord, RowExtras], Any]) -> Iterator[Column]:
        for f in dataclasses.fields(cls):
            spec = f.metadata.get("column")
            if spec is not None:
                name = f.name

                def read(r: RequestRecord, x: RowExtras, name: str = name) -> Any:
                    return getattr(reach(r, x), name)

                yield Column(spec.name or f.name, spec.pg_type, spec.cast, read)
            elif f.metadata.get("columns") == "expanded":
                owner = f.name

                def nested(r: RequestRecord, x: RowExtras, owner: str = owner) -> Any:
                    return getattr(reach(r, x), owner)

                yield from of(f.type if isinstance(f.type, type) else _TYPES[f.type], nested)

    yield from of(RequestRecord, lambda r, x: r)
    yield from of(RowExtras, lambda r, x: x)


# Field types of expanded fields, by their annotation (this module uses postponed annotations).
_TYPES: dict[str, type] = {"Usage": Usage}

COLUMNS: tuple[Column, ...] = tuple(_columns())
