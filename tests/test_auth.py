from __future__ import annotations

import base64
import hashlib

from majordomo.auth import generate_key, hash_key, is_well_formed


def test_generated_keys_have_the_documented_format() -> None:
    key = generate_key()
    assert key.startswith("mdm_sk_")
    token = key.removeprefix("mdm_sk_")
    assert len(token) == 43
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert is_well_formed(key)


def test_keys_are_unique() -> None:
    assert len({generate_key() for _ in range(1000)}) == 1000


def test_hash_is_sha256_hex_of_the_whole_key() -> None:
    key = generate_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert len(hash_key(key)) == 64


def test_malformed_keys_are_recognised() -> None:
    assert not is_well_formed("mdm_sk_short")
    assert not is_well_formed("sk-" + "a" * 43)
    assert not is_well_formed(generate_key() + "x")
    assert not is_well_formed("mdm_sk_" + "!" * 43)
