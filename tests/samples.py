"""Sample values for tests that need a finished request without running one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from majordomo.records import RequestRecord, Usage


def a_record(n: int = 1) -> RequestRecord:
    """A successful OpenAI chat record with `n` input tokens and a fresh id."""
    now = datetime.now(UTC)
    return RequestRecord(
        id=uuid.uuid4(),
        api_key_id=None,
        provider="openai",
        model="gpt-4o-mini",
        request_path="/v1/chat/completions",
        request_method="POST",
        requested_at=now,
        responded_at=now,
        status_code=200,
        usage=Usage(input_tokens=n, output_tokens=1),
    )
