"""Login tokens and throttling, alone: pure but for an injected clock."""

from __future__ import annotations

import time
import uuid

import pytest

from majordomo.admin.auth import InvalidToken, LoginThrottle, Tokens

pytestmark = pytest.mark.fast


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_token_names_its_user_until_it_expires() -> None:
    clock = Clock()
    tokens = Tokens("s" * 32, expiry=60, clock=clock)
    user = uuid.uuid4()
    token = tokens.issue(user, "alice")
    assert Tokens("s" * 32, 60).user_id(token) == user
    with pytest.raises(InvalidToken, match="not valid"):
        Tokens("t" * 32, 60).user_id(token)  # another gateway's secret
    clock.now -= 61  # issued 61 s before the real time: expired by now
    with pytest.raises(InvalidToken, match="expired"):
        Tokens("s" * 32, 60).user_id(Tokens("s" * 32, 60, clock=clock).issue(user, "alice"))


def test_throttling_per_username_and_per_address_within_a_sliding_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(per_username=3, per_address=5, window=100, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("alice", "10.0.0.1") is None
        throttle.failed("alice", "10.0.0.1")
    assert throttle.retry_after("alice", "10.0.0.2") == 100  # the name, from anywhere
    assert throttle.retry_after("bob", "10.0.0.1") is None  # the address is not full yet
    throttle.failed("bob", "10.0.0.1")
    throttle.failed("carol", "10.0.0.1")
    assert throttle.retry_after("dave", "10.0.0.1") == 100  # five failures from one address
    clock.now += 60
    assert throttle.retry_after("alice", "10.0.0.9") == 40
    clock.now += 41
    assert throttle.retry_after("alice", "10.0.0.9") is None  # they left the window
    throttle.failed("erin", "10.0.0.3")
    throttle.succeeded("erin")
    assert throttle.retry_after("erin", "10.0.0.4") is None


def test_throttling_remembers_a_bounded_number_of_names() -> None:
    throttle = LoginThrottle(max_tracked=10, clock=Clock())
    for n in range(100):
        throttle.failed(f"user{n}", f"10.0.0.{n}")
    assert len(throttle._failures) <= 10
