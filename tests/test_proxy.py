"""The proxy's pure helpers: which headers go where, metadata, credential hashing."""

from __future__ import annotations

import hashlib

import pytest

from majordomo.proxy.headers import (
    SentCredential,
    credential_hash,
    metadata_from,
    our_key_in,
    sent_credentials,
    upstream_headers,
    with_credential,
    without_key_param,
)
from majordomo.proxy.tee import error_message_from

pytestmark = pytest.mark.fast


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_upstream_headers_drop_hop_by_hop_host_length_and_majordomo() -> None:
    headers = [
        (b"host", b"gateway:7680"),
        (b"authorization", b"Bearer sk-upstream"),
        (b"content-type", b"application/json"),
        (b"content-length", b"42"),
        (b"connection", b"keep-alive, x-custom-hop"),
        (b"keep-alive", b"timeout=5"),
        (b"x-custom-hop", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"accept-encoding", b"gzip, br"),
        (b"x-majordomo-key", b"mdm_sk_x"),
        (b"x-majordomo-user-id", b"u1"),
        (b"openai-organization", b"org-1"),
        (b"user-agent", b"OpenAI/Python 3.0"),
    ]
    assert upstream_headers(headers) == [
        (b"authorization", b"Bearer sk-upstream"),
        (b"content-type", b"application/json"),
        (b"openai-organization", b"org-1"),
        (b"user-agent", b"OpenAI/Python 3.0"),
        (b"accept-encoding", b"identity"),
    ]


def test_metadata_takes_every_majordomo_header_but_key_and_provider() -> None:
    headers = [
        (b"x-majordomo-key", b"mdm_sk_x"),
        (b"x-majordomo-provider", b"openai"),
        (b"x-majordomo-user-id", b"user_123"),
        (b"x-majordomo-feature", "caf\u00e9".encode()),
        (b"x-majordomo-provider-alias", b"team-a"),
        (b"authorization", b"Bearer x"),
    ]
    assert metadata_from(headers) == (
        {"user-id": "user_123", "feature": "caf\u00e9", "provider-alias": "team-a"},
        0,
    )


def test_metadata_is_bounded_and_what_is_dropped_is_counted() -> None:
    headers = [(f"x-majordomo-k{i}".encode(), b"v") for i in range(40)]
    headers += [
        (b"x-majordomo-" + b"n" * 129, b"too long a name"),
        (b"x-majordomo-k0", b"w" * 2000),  # an existing name: replaced, value cut
    ]
    metadata, dropped = metadata_from(headers)
    assert len(metadata) == 32
    assert metadata["k0"] == "w" * 1024
    assert "k32" not in metadata
    assert dropped == 8 + 1 + 1  # 8 keys over the limit, the long name, the cut value


@pytest.mark.parametrize(
    ("headers", "query", "secret"),
    [
        ([(b"authorization", b"Bearer sk-abc")], b"", "sk-abc"),
        ([(b"x-api-key", b"sk-ant-1")], b"", "sk-ant-1"),
        ([(b"x-goog-api-key", b"AIza1")], b"", "AIza1"),
        ([], b"alt=sse&key=AIza2", "AIza2"),
        ([(b"authorization", b"Bearer sk-first"), (b"x-api-key", b"second")], b"", "sk-first"),
    ],
)
def test_credential_hash_hashes_the_upstream_secret(
    headers: list[tuple[bytes, bytes]], query: bytes, secret: str
) -> None:
    assert credential_hash(headers, query) == sha(secret)


def test_no_credential_no_hash() -> None:
    assert credential_hash([(b"content-type", b"application/json")], b"alt=sse") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "Rate limit reached", "type": "x"}}', "Rate limit reached"),
        (
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            "Overloaded",
        ),
        (
            b'{"error": {"code": 400, "message": "API key not valid", "status": "X"}}',
            "API key not valid",
        ),
        (b"<html>bad gateway</html>", "<html>bad gateway</html>"),
        (b"x" * 10_000, "x" * 2000),
    ],
)
def test_error_message_is_readable_and_bounded(body: bytes, message: str) -> None:
    assert error_message_from(body) == message


# -- where credentials are, and what replaces them ------------------------------------------


def test_every_place_an_sdk_puts_a_credential_is_found() -> None:
    headers = [
        (b"authorization", b"Bearer mdm_pk_x"),
        (b"x-api-key", b"sk-ant"),
        (b"x-goog-api-key", b"AIza"),
        (b"api-key", b"azure"),
        (b"x-other", b"not a credential"),
    ]
    sent = sent_credentials(headers, b"alt=sse&key=AIza-query&k%65y=encoded")
    assert [(c.where, c.value) for c in sent] == [
        ("authorization", "mdm_pk_x"),
        ("x-api-key", "sk-ant"),
        ("x-goog-api-key", "AIza"),
        ("api-key", "azure"),
        ("?key", "AIza-query"),
        ("?key", "encoded"),
    ]
    assert sent_credentials([(b"authorization", b"token-without-scheme")], b"") == [
        SentCredential("authorization", "token-without-scheme")
    ]


def test_a_held_credential_replaces_every_credential_the_caller_sent() -> None:
    headers = [(b"authorization", b"Bearer mdm_pk_x"), (b"x-api-key", b"y"), (b"accept", b"*/*")]
    assert with_credential(headers, b"x-goog-api-key", b"AIza-real") == [
        (b"accept", b"*/*"),
        (b"x-goog-api-key", b"AIza-real"),
    ]
    assert without_key_param(b"alt=sse&key=mdm_pk_x&k%65y=y&keys=kept&key") == b"alt=sse&keys=kept"
    assert without_key_param(b"alt=sse") == b"alt=sse"


@pytest.mark.parametrize(
    ("headers", "query", "path", "where"),
    [
        ([(b"x-trace", b"mdm_sk_abc")], b"", b"/v1/chat", "the x-trace header"),
        ([], b"q=mdm%5Fpk%5Fabc", b"/v1/chat", "the query string"),
        ([], b"", b"/v1/mdm_sk_abc", "the path"),
        ([(b"x-trace", b"mdm-sk")], b"mdm=sk", b"/v1/chat", None),
    ],
)
def test_our_keys_are_found_wherever_they_would_leave(
    headers: list[tuple[bytes, bytes]], query: bytes, path: bytes, where: str | None
) -> None:
    assert our_key_in(headers, query, path) == where
