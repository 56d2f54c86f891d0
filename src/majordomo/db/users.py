"""`users` (who may log in to the admin API) and `admin_audit` (who changed what)."""

from __future__ import annotations

import builtins
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from majordomo.db.keys import iso
from majordomo.errors import MajordomoError

if TYPE_CHECKING:
    import asyncpg

    from majordomo.db import Database

ROLES = ("admin", "member")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_COLUMNS = "id, username, is_active, created_at, role, last_login_at"


def check_username(username: str) -> str:
    if not _USERNAME.fullmatch(username):
        raise MajordomoError(
            f"{username[:80]!r} is not a username: 1 to 64 letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return username


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    username: str
    is_active: bool
    created_at: datetime
    role: str
    last_login_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "is_active": self.is_active,
            "created_at": iso(self.created_at),
            "role": self.role,
            "last_login_at": iso(self.last_login_at),
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor_user_id: uuid.UUID | None
    actor: str
    action: str
    target_type: str | None
    target_id: str | None
    details: dict[str, Any]
    client_address: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": iso(self.at),
            "actor_user_id": str(self.actor_user_id) if self.actor_user_id else None,
            "actor": self.actor,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "details": self.details,
            "client_address": self.client_address,
        }


def unknown_user(what: str) -> MajordomoError:
    return MajordomoError(f"no user {what}; 'majordomo users list' shows them")


class UserQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, username: str, password_hash: str, role: str) -> User:
        row = await self._db.fetchrow(
            f"INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) "
            f"ON CONFLICT (username) DO NOTHING RETURNING {_COLUMNS}",
            check_username(username),
            password_hash,
            role,
        )
        if row is None:
            raise MajordomoError(f"a user named {username!r} already exists")
        return User.from_row(row)

    async def list(self) -> list[User]:
        rows = await self._db.fetch(f"SELECT {_COLUMNS} FROM users ORDER BY created_at, id")
        return [User.from_row(r) for r in rows]

    async def get(self, user_id: uuid.UUID) -> User:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)
        if row is None:
            raise unknown_user(f"with id {user_id}")
        return User.from_row(row)

    async def by_username(self, username: str) -> User:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE username = $1", username)
        if row is None:
            raise unknown_user(f"named {username!r}")
        return User.from_row(row)

    async def credentials(self, username: str) -> tuple[User, str] | None:
        """The user and its password hash, for a login; None if there is no such user."""
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS}, password_hash FROM users WHERE username = $1", username
        )
        return (User.from_row(row), row["password_hash"]) if row is not None else None

    async def password_hash(self, user_id: uuid.UUID) -> str:
        value: str | None = await self._db.fetchval(
            "SELECT password_hash FROM users WHERE id = $1", user_id
        )
        if value is None:
            raise unknown_user(f"with id {user_id}")
        return value

    async def logged_in(self, user_id: uuid.UUID, new_hash: str | None) -> None:
        await self._db.execute(
            "UPDATE users SET last_login_at = now(), "
            "password_hash = coalesce($2, password_hash) WHERE id = $1",
            user_id,
            new_hash,
        )

    async def update(
        self,
        user_id: uuid.UUID,
        *,
        password_hash: str | None = None,
        is_active: bool | None = None,
        role: str | None = None,
    ) -> User:
        row = await self._db.fetchrow(
            f"UPDATE users SET password_hash = coalesce($2, password_hash), "
            f"is_active = coalesce($3, is_active), role = coalesce($4, role) "
            f"WHERE id = $1 RETURNING {_COLUMNS}",
            user_id,
            password_hash,
            is_active,
            role,
        )
        if row is None:
            raise unknown_user(f"with id {user_id}")
        return User.from_row(row)

    # -- the audit trail -------------------------------------------------------------------

    async def audit(
        self,
        *,
        actor: str,
        actor_user_id: uuid.UUID | None,
        action: str,
        target_type: str | None = None,
        target_id: str | None = None,
        details: dict[str, Any] | None = None,
        client_address: str | None = None,
    ) -> None:
        await self._db.execute(
            "INSERT INTO admin_audit (actor, actor_user_id, action, target_type, target_id, "
            "details, client_address) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
            actor,
            actor_user_id,
            action,
            target_type,
            target_id,
            json.dumps(details or {}),
            client_address,
        )

    async def audit_log(
        self, *, limit: int, before: int | None = None
    ) -> builtins.list[AuditEntry]:
        rows = await self._db.fetch(
            "SELECT id, at, actor_user_id, actor, action, target_type, target_id, details, "
            "client_address FROM admin_audit WHERE $1::bigint IS NULL OR id < $1 "
            "ORDER BY id DESC LIMIT $2",
            before,
            limit,
        )
        return [
            AuditEntry(
                r["id"],
                r["at"],
                r["actor_user_id"],
                r["actor"],
                r["action"],
                r["target_type"],
                r["target_id"],
                json.loads(r["details"]),
                r["client_address"],
            )
            for r in rows
        ]
