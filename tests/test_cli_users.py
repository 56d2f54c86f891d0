"""`majordomo users …`, `keys create --user` and `majordomo audit`, as people run them."""

from __future__ import annotations

from pathlib import Path

import pytest

from majordomo.passwords import verify_password
from tests.cli import Result, assert_one_line_error, majordomo
from tests.pghelpers import PgAdmin

PASSWORD = "a long enough password"


@pytest.fixture
def run(pg: PgAdmin, tmp_path: Path):  # type: ignore[no-untyped-def]
    def run(*args: str, stdin: str | None = None) -> Result:
        return majordomo(*args, env=pg.env, cwd=tmp_path, stdin=stdin)

    return run


def test_users_lifecycle(run, pg: PgAdmin) -> None:  # type: ignore[no-untyped-def]
    created = run(
        "users", "create", "--username", "root", "--role", "admin", "--password-stdin", "--json",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert created.code == 0, created.err
    user = created.json()
    assert (user["username"], user["role"], user["is_active"]) == ("root", "admin", True)
    stored = pg.fetchval("SELECT password_hash FROM users")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, PASSWORD)
    assert PASSWORD not in created.out + created.err

    listed = run("users", "list", "--json").json()
    assert [u["username"] for u in listed] == ["root"]
    changed = run("users", "set-password", "root", "--password-stdin", stdin="another long one\n")
    assert changed.code == 0, changed.err
    assert verify_password(pg.fetchval("SELECT password_hash FROM users"), "another long one")
    disabled = run("users", "disable", "root", "--json")
    assert disabled.json()["is_active"] is False

    key = run("keys", "create", "--name", "owned", "--user", "root", "--json").json()
    assert key["user_id"] == user["id"]
    audit = run("audit", "--json").json()
    assert [(e["actor"], e["action"]) for e in audit] == [
        ("cli", "user.disable"),
        ("cli", "user.set_password"),
        ("cli", "user.create"),
    ]


def test_users_refusals_are_one_line(run) -> None:  # type: ignore[no-untyped-def]
    assert_one_line_error(
        run("users", "create", "--username", "x", "--password-stdin", stdin="short\n"),
        "at least 10 characters",
    )
    assert_one_line_error(
        run("users", "create", "--username", "x", stdin=""), "pass --password-stdin"
    )
    assert_one_line_error(
        run("users", "create", "--username", "bad name", "--password-stdin", stdin=PASSWORD),
        "is not a username",
    )
    assert_one_line_error(
        run(
            "users",
            "create",
            "--username",
            "x",
            "--role",
            "boss",
            "--password-stdin",
            stdin=PASSWORD,
        ),
        "is not a role",
    )
    run("users", "create", "--username", "x", "--password-stdin", stdin=PASSWORD)
    assert_one_line_error(
        run("users", "create", "--username", "x", "--password-stdin", stdin=PASSWORD),
        "already exists",
    )
    assert_one_line_error(run("users", "disable", "nobody"), "no user named 'nobody'")
    assert_one_line_error(run("keys", "create", "--name", "k", "--user", "nobody"), "no user named")
