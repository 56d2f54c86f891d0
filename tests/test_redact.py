"""Redaction (pure): credential headers and query parameters, key-shaped text, known values."""

from __future__ import annotations

import pytest

from majordomo.redact import (
    credential_values,
    redact_headers,
    redact_query,
    scrub_bytes,
    scrub_text,
    scrub_values,
)

pytestmark = pytest.mark.fast

MDM_KEY = "mdm_sk_" + "Zx9_-" * 8 + "abc"  # the shape `majordomo keys create` prints
PROXY_KEY = "mdm_pk_" + "Qw3-_" * 8 + "xyz"
ANTHROPIC_KEY = "sk-ant-api03-0123456789"
GEMINI_KEY = "AIzaSyD-0123456789abcdefghijklmnopqrstu"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("X-Majordomo-Key", MDM_KEY)], [("X-Majordomo-Key", "[REDACTED]")]),
        ([("authorization", "Bearer sk-x")], [("authorization", "[REDACTED]")]),
        ([("Proxy-Authorization", "Basic eA==")], [("Proxy-Authorization", "[REDACTED]")]),
        ([("x-api-key", ANTHROPIC_KEY)], [("x-api-key", "[REDACTED]")]),
        ([("x-goog-api-key", GEMINI_KEY)], [("x-goog-api-key", "[REDACTED]")]),
        ([("api-key", "azure")], [("api-key", "[REDACTED]")]),
        ([("Cookie", "a=b"), ("set-cookie", "c=d")], [("Cookie", "[REDACTED]"), ("set-cookie", "[REDACTED]")]),
        # Metadata and ordinary headers are kept, in order, names as given.
        (
            [("X-Majordomo-User-Id", "u1"), ("Content-Type", "application/json"), ("X-Majordomo-Provider", "gemini")],
            [("X-Majordomo-User-Id", "u1"), ("Content-Type", "application/json"), ("X-Majordomo-Provider", "gemini")],
        ),
        # A Majordomo key in a header where it does not belong is scrubbed all the same.
        ([("x-majordomo-note", f"key {MDM_KEY}")], [("x-majordomo-note", "key [REDACTED]")]),
    ],
)  # fmt: skip
def test_redact_headers(headers: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    assert redact_headers(headers) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ""),
        (f"key={GEMINI_KEY}", "key=[REDACTED]"),
        (f"alt=sse&key={GEMINI_KEY}", "alt=sse&key=[REDACTED]"),
        (f"key={GEMINI_KEY}&alt=sse&x=%20y+z", "key=[REDACTED]&alt=sse&x=%20y+z"),
        ("KEY=abc&api_key=def&access_token=ghi", "KEY=[REDACTED]&api_key=[REDACTED]&access_token=[REDACTED]"),
        ("k%65y=abc", "k%65y=[REDACTED]"),  # Google decodes the name: so do we
        ("key", "key"),
        ("key=", "key=[REDACTED]"),
        ("monkey=1&keys=2&a=key%3Dx", "monkey=1&keys=2&a=key%3Dx"),
        ("a=1&&b=&c", "a=1&&b=&c"),  # everything else byte-identical
    ],
)  # fmt: skip
def test_redact_query(query: str, expected: str) -> None:
    assert redact_query(query) == expected


def test_key_shaped_text_is_masked_whatever_it_is_in() -> None:
    text = f'{{"note": "{MDM_KEY}", "proxy": "{PROXY_KEY}", "other": "mdm_x"}}'
    assert scrub_text(text) == '{"note": "[REDACTED]", "proxy": "[REDACTED]", "other": "mdm_x"}'
    assert scrub_bytes(text.encode()) == scrub_text(text).encode()
    assert scrub_text("nothing here") == "nothing here"


def test_credential_values_are_found_in_every_slot() -> None:
    headers = [
        (b"authorization", b"Bearer sk-caller-0123"),
        (b"x-api-key", ANTHROPIC_KEY.encode()),
        (b"content-type", b"application/json"),
        (b"x-majordomo-key", MDM_KEY.encode()),
        (b"api-key", b"short"),  # too short to search for in text
    ]
    values = credential_values(headers, f"alt=sse&key={GEMINI_KEY}".encode())
    assert set(values) == {
        b"Bearer sk-caller-0123",
        b"sk-caller-0123",
        ANTHROPIC_KEY.encode(),
        MDM_KEY.encode(),
        GEMINI_KEY.encode(),
    }
    assert list(values) == sorted(values, key=len, reverse=True)  # longest masked first


def test_known_values_are_masked_in_a_body() -> None:
    values = credential_values([(b"authorization", b"Bearer sk-caller-0123")], b"")
    body = (
        b'{"error": "Incorrect API key provided: sk-caller-0123", "key": "'
        + MDM_KEY.encode()
        + b'"}'
    )
    assert scrub_values(body, values) == (
        b'{"error": "Incorrect API key provided: [REDACTED]", "key": "[REDACTED]"}'
    )
