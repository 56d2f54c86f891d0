"""Password hashing: argon2id (argon2-cffi's defaults, RFC 9106's second recommendation), and
bcrypt hashes accepted as the Go gateway wrote them, so its users can be imported as they are
and are moved to argon2id at their next login.

Hashing and verifying take tens of milliseconds of CPU on purpose: callers on the event loop
run them in a worker thread (`trio.to_thread.run_sync`).
"""

from __future__ import annotations

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_ARGON2 = PasswordHasher()
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
MIN_LENGTH = 10
MAX_LENGTH = 1024  # bounded: a hash over megabytes of "password" is a denial of service


def check_strength(password: str) -> None:
    """ValueError saying what a new password lacks."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValueError(f"a password has at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    return _ARGON2.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether `password` matches `stored` (argon2id, or bcrypt from the Go gateway)."""
    if len(password) > MAX_LENGTH:
        return False
    if stored.startswith(_BCRYPT_PREFIXES):
        try:
            return bcrypt.checkpw(password.encode()[:72], stored.encode())
        except ValueError:
            return False
    try:
        return _ARGON2.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether a verified hash should be replaced (bcrypt, or argon2 with old parameters)."""
    if stored.startswith(_BCRYPT_PREFIXES):
        return True
    try:
        return _ARGON2.check_needs_rehash(stored)
    except InvalidHashError:
        return True
