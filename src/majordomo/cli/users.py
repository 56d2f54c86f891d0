"""`majordomo users …`: people who log in to the admin API; `majordomo audit`: what they did."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import cyclopts

from majordomo.cli.common import ConfigOption, JsonFlag, prepare, print_json, run_with_database
from majordomo.db import Database, User
from majordomo.db.users import ROLES, AuditEntry, check_username
from majordomo.errors import MajordomoError
from majordomo.passwords import check_strength, hash_password

users_app = cyclopts.App(name="users", help="Manage the users of the admin API.")

Username = Annotated[str, cyclopts.Parameter(help="The user's name.")]
PasswordStdin = Annotated[
    bool,
    cyclopts.Parameter(
        name="--password-stdin",
        negative="",
        help="Read the password from the first line of standard input (for scripts).",
    ),
]


def read_password(from_stdin: bool) -> str:
    """The new password: from standard input, or typed twice without echo on a terminal."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise MajordomoError("the two passwords differ; nothing was changed")
    else:
        raise MajordomoError(
            "no terminal to type a password on: pass --password-stdin and pipe it in"
        )
    try:
        check_strength(password)
    except ValueError as exc:
        raise MajordomoError(str(exc)) from None
    return password


def _print_users(users: list[User]) -> None:
    if not users:
        print(
            "No users yet; create one with 'majordomo users create --username NAME --role admin'."
        )
        return
    print(f"{'ID':<36}  {'USERNAME':<24}  {'ROLE':<7}  {'STATUS':<8}  LAST LOGIN")
    for u in users:
        status = "active" if u.is_active else "disabled"
        last = f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "never"
        print(f"{u.id!s:<36}  {u.username[:24]:<24}  {u.role:<7}  {status:<8}  {last}")


async def _audit(db: Database, action: str, user: User, **details: object) -> None:
    await db.users.audit(
        actor="cli",
        actor_user_id=None,
        action=action,
        target_type="user",
        target_id=str(user.id),
        details={"username": user.username, **details},
    )


@users_app.command
def create(
    *,
    username: Annotated[str, cyclopts.Parameter(help="The name to log in with.")],
    role: Annotated[str, cyclopts.Parameter(help="admin or member.")] = "member",
    password_stdin: PasswordStdin = False,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Create a user (prompts for the password without echo on a terminal)."""
    check_username(username)
    if role not in ROLES:
        raise MajordomoError(f"--role {role!r} is not a role; use admin or member")
    password_hash = hash_password(read_password(password_stdin))
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> User:
        user = await db.users.create(username, password_hash, role)
        await _audit(db, "user.create", user, role=role)
        return user

    user = run_with_database(ctx, action)
    if json:
        print_json(user.as_json())
    else:
        print(f"Created {user.role} {user.username} ({user.id}).")


@users_app.command(name="list")
def list_(*, json: JsonFlag = False, config: ConfigOption = None) -> None:
    """List every user."""
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> list[User]:
        return await db.users.list()

    users = run_with_database(ctx, action)
    print_json([u.as_json() for u in users]) if json else _print_users(users)


@users_app.command(name="set-password")
def set_password(
    username: Username,
    /,
    *,
    password_stdin: PasswordStdin = False,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Set a user's password."""
    password_hash = hash_password(read_password(password_stdin))
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> User:
        user = await db.users.by_username(username)
        user = await db.users.update(user.id, password_hash=password_hash)
        await _audit(db, "user.set_password", user)
        return user

    user = run_with_database(ctx, action)
    print_json(user.as_json()) if json else print(f"Set the password of {user.username}.")


@users_app.command
def disable(username: Username, /, *, json: JsonFlag = False, config: ConfigOption = None) -> None:
    """Disable a user: they cannot log in, and their tokens stop working at once."""
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> User:
        user = await db.users.by_username(username)
        user = await db.users.update(user.id, is_active=False)
        await _audit(db, "user.disable", user)
        return user

    user = run_with_database(ctx, action)
    print_json(user.as_json()) if json else print(f"Disabled {user.username}.")


def audit(
    *,
    limit: Annotated[int, cyclopts.Parameter(help="How many entries, newest first.")] = 50,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Show the audit trail: who changed what, when, from where."""
    if not 1 <= limit <= 10_000:
        raise MajordomoError("--limit must be from 1 to 10000")
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> list[AuditEntry]:
        return await db.users.audit_log(limit=limit)

    entries = run_with_database(ctx, action)
    if json:
        print_json([e.as_json() for e in entries])
        return
    if not entries:
        print("Nothing audited yet.")
        return
    for e in entries:
        target = f" {e.target_type} {e.target_id}" if e.target_type else ""
        where = f" from {e.client_address}" if e.client_address else ""
        print(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.actor:<16}  {e.action}{target}{where}")
