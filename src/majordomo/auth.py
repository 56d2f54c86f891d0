"""Majordomo API keys: their format and their hash.

A key is `mdm_sk_` followed by 43 base64url characters (32 random bytes, unpadded). Only the
SHA-256 hex digest of the whole key is stored; the plaintext is shown once, at creation.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

KEY_PREFIX = "mdm_sk_"
_KEY_RE = re.compile(r"^mdm_sk_[A-Za-z0-9_-]{43}$")


def generate_key() -> str:
    """A new plaintext key: `mdm_sk_` + base64url of 32 random bytes, without padding."""
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return KEY_PREFIX + token


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_well_formed(key: str) -> bool:
    """Whether `key` has the shape of a Majordomo key (checked before any lookup)."""
    return _KEY_RE.fullmatch(key) is not None
