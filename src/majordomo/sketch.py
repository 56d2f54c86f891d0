"""HyperLogLog sketches of metadata values (pure).

Each metadata key of each API key gets 256 one-byte registers: a value's 64-bit hash picks a
register with its top 8 bits and offers the position of the first 1 in the remaining 56 bits;
a register keeps the largest offer. Merging two sketches is a register-wise max, which
PostgreSQL does in `majordomo_hll_merge`, so any number of gateways can add to the same sketch
in any order, and replaying a batch changes nothing. The estimate (`majordomo_hll_estimate`,
mirrored by `estimate` here) is within about 6.5 % of the true count of distinct values.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

REGISTERS = 256  # 2**8: the standard error is 1.04 / sqrt(256) ≈ 6.5 %
_INDEX_BITS = 8
_REST_BITS = 64 - _INDEX_BITS


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


def add(registers: bytearray, value: str) -> None:
    """Offer one value to a sketch."""
    h = _hash(value)
    index = h >> _REST_BITS
    rest = h & ((1 << _REST_BITS) - 1)
    rank = _REST_BITS - rest.bit_length() + 1
    if rank > registers[index]:
        registers[index] = rank


def sketch(values: Iterable[str]) -> bytes:
    """A sketch of `values`."""
    registers = bytearray(REGISTERS)
    for value in values:
        add(registers, value)
    return bytes(registers)


def merge(a: bytes, b: bytes) -> bytes:
    return bytes(max(x, y) for x, y in zip(a, b, strict=True))


def estimate(registers: bytes) -> int:
    """The approximate number of distinct values offered (same formula as the SQL)."""
    m = len(registers)
    total = sum(2.0**-r for r in registers)
    zeros = registers.count(0)
    value = (0.7213 / (1 + 1.079 / m)) * m * m / total
    if value <= 2.5 * m and zeros:
        value = m * math.log(m / zeros)
    return round(value)
