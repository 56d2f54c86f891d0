"""Immutable values that flow from a request handler to the log writer.

A handler builds one `RequestRecord` when its request has finished (success, provider error,
timeout or client disconnect) and sends it over the log channel; nothing mutates it afterwards.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, normalised across providers.

    `input_tokens` counts every prompt token, cache reads and writes included;
    `cached_tokens` are cache reads, `cache_creation_tokens` cache writes; `output_tokens`
    includes `reasoning_tokens` (thinking), which is also reported on its own.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Exchange:
    """The full request and response of one call, kept when `logging.body_storage` is on.

    Headers are as sent/received (names lower-case), secrets included: the body store
    redacts them before anything is written. A streamed response body is its raw event text.
    Bodies may already be cut at `logging.max_body_size` (`*_truncated` says so).
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

    id: uuid.UUID
    api_key_id: uuid.UUID | None
    provider: str
    model: str
    request_path: str
    request_method: str
    requested_at: datetime
    responded_at: datetime
    status_code: int
    usage: Usage = field(default_factory=Usage)
    response_time_ms: int = 0
    time_to_first_byte_ms: int | None = None
    streamed: bool = False
    provider_api_key_hash: str | None = None
    provider_api_key_alias: str | None = None
    error_message: str | None = None
    # Why the usage could not be read (an event too large, a body that does not decompress).
    usage_error: str | None = None
    raw_metadata: dict[str, Any] = field(default_factory=dict)
    exchange: Exchange | None = None
