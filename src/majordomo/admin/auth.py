"""Who is calling the admin API: login tokens (HS256 JWTs), the secret that signs them, and
login throttling. Pure but for the clock; the routes look the user up on every request, so a
disabled user's token stops working at once."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import jwt

from majordomo.config import Settings
from majordomo.secretfile import beside_embedded_data, load_or_create

JWT_FILE_NAME = "jwt.secret"
ALGORITHM = "HS256"

ADMIN_API_OFF = (
    "the admin API is off on this gateway: no jwt.secret is set and the database is not the "
    "embedded one; set MAJORDOMO_JWT_SECRET (32+ characters, e.g. 'openssl rand -hex 32') on "
    "every gateway"
)


def jwt_secret(settings: Settings) -> tuple[str | None, str]:
    """The signing secret these settings call for, and where it came from (or why none)."""
    if settings.jwt.secret:
        return settings.jwt.secret, "from jwt.secret"
    if settings.storage.postgres.host:
        return None, ADMIN_API_OFF
    directory = beside_embedded_data(settings.storage.embedded.data_dir)
    return load_or_create(directory, JWT_FILE_NAME), f"kept in {directory / JWT_FILE_NAME}"


@dataclass(frozen=True)
class Tokens:
    secret: str
    expiry: float
    clock: Callable[[], float] = time.time

    def issue(self, user_id: uuid.UUID, username: str) -> str:
        now = int(self.clock())
        claims = {
            "sub": str(user_id),
            "user_id": str(user_id),
            "username": username,
            "iat": now,
            "exp": now + int(self.expiry),
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def user_id(self, token: str) -> uuid.UUID:
        """The user a valid token names; `InvalidToken` (with why) otherwise."""
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"]},
                leeway=0,
            )
            return uuid.UUID(str(claims["sub"]))
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired; log in again") from None
        except (jwt.InvalidTokenError, ValueError):
            raise InvalidToken("the token is not valid here; log in again") from None


class InvalidToken(Exception):
    pass


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)


@dataclass
class LoginThrottle:
    """Failed logins remembered per username and per client address, in a sliding window:
    past the limit, further attempts get 429 until the oldest failure leaves the window."""

    per_username: int = 5
    per_address: int = 20
    window: float = 900.0
    clock: Callable[[], float] = time.monotonic
    max_tracked: int = 10_000
    _failures: dict[tuple[str, str], _Failures] = field(default_factory=dict)

    def retry_after(self, username: str, address: str) -> int | None:
        """Seconds to wait before another attempt, or None if one may be made now."""
        now = self.clock()
        waits = [
            self._wait(("user", username.lower()), self.per_username, now),
            self._wait(("address", address), self.per_address, now),
        ]
        longest = max((w for w in waits if w is not None), default=None)
        return None if longest is None else max(1, int(longest + 0.999))

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        for key in (("user", username.lower()), ("address", address)):
            if key not in self._failures and len(self._failures) >= self.max_tracked:
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(key, _Failures()).times.append(now)

    def succeeded(self, username: str) -> None:
        self._failures.pop(("user", username.lower()), None)

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float | None:
        entry = self._failures.get(key)
        if entry is None:
            return None
        while entry.times and entry.times[0] <= now - self.window:
            entry.times.popleft()
        if not entry.times:
            del self._failures[key]
            return None
        if len(entry.times) < limit:
            return None
        return entry.times[0] + self.window - now
