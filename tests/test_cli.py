from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from majordomo.auth import hash_key
from majordomo.db import SCHEMA_VERSION
from tests.cli import Result, assert_one_line_error, majordomo
from tests.pghelpers import PgAdmin


@pytest.fixture
def run(pg: PgAdmin, tmp_path: Path):  # type: ignore[no-untyped-def]
    def run(*args: str, **env: str) -> Result:
        return majordomo(*args, env={**pg.env, **env}, cwd=tmp_path)

    return run


def test_create_prints_the_key_once_and_stores_only_its_hash(run, pg: PgAdmin) -> None:  # type: ignore[no-untyped-def]
    result = run("keys", "create", "--name", "Production API", "--description", "prod")
    assert result.code == 0, result.err
    key = re.search(r"Key: (mdm_sk_[A-Za-z0-9_-]{43})\n", result.out)
    key_id = re.search(r"Created key ([0-9a-f-]{36}) \(Production API\)", result.out)
    assert key
    assert key_id
    assert "not shown again" in result.out
    row = pg.fetch("SELECT * FROM api_keys")[0]
    assert str(row["id"]) == key_id.group(1)
    assert row["key_hash"] == hash_key(key.group(1))
    assert (row["name"], row["description"], row["is_active"]) == ("Production API", "prod", True)
    # Listing never shows the plaintext again.
    listing = run("keys", "list")
    assert key_id.group(1) in listing.out
    assert "Production API" in listing.out
    assert key.group(1) not in listing.out + run("keys", "get", key_id.group(1)).out


def test_json_output_for_scripts(run) -> None:  # type: ignore[no-untyped-def]
    created = run("keys", "create", "--name", "ci", "--json").json()
    assert created["key"].startswith("mdm_sk_")
    assert created["name"] == "ci"
    key_id = created["id"]
    assert [k["id"] for k in run("keys", "list", "--json").json()] == [key_id]
    got = run("keys", "get", key_id, "--json").json()
    assert "key" not in got
    assert got["is_active"] is True
    assert got["request_count"] == 0
    updated = run("keys", "update", key_id, "--description", "nightly", "--json").json()
    assert (updated["name"], updated["description"]) == ("ci", "nightly")
    revoked = run("keys", "revoke", key_id, "--json").json()
    assert revoked["is_active"] is False
    assert revoked["revoked_at"]
    assert run("db", "migrate", "--json").json() == {"schema_version": SCHEMA_VERSION}


def test_list_when_empty_says_how_to_create_one(run) -> None:  # type: ignore[no-untyped-def]
    result = run("keys", "list")
    assert result.code == 0
    assert "majordomo keys create --name NAME" in result.out
    assert run("keys", "list", "--json").json() == []


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "update", "{id}", "--name", "after-id"),
        ("keys", "update", "--name", "after-id", "{id}"),
    ],
)
def test_update_takes_options_before_or_after_the_id(run, pg: PgAdmin, args) -> None:  # type: ignore[no-untyped-def]
    key_id = run("keys", "create", "--name", "before", "--json").json()["id"]
    result = run(*(a.format(id=key_id) for a in args))
    assert result.code == 0, result.err
    assert pg.fetchval("SELECT name FROM api_keys") == "after-id"


def test_revoke_then_revoke_again(run, pg: PgAdmin) -> None:  # type: ignore[no-untyped-def]
    key_id = run("keys", "create", "--name", "temp", "--json").json()["id"]
    first = run("keys", "revoke", key_id)
    assert first.code == 0
    assert f"Revoked key {key_id} (temp)." in first.out
    row = pg.fetch("SELECT is_active, revoked_at FROM api_keys")[0]
    assert row["is_active"] is False
    assert row["revoked_at"] is not None
    assert_one_line_error(
        run("keys", "revoke", key_id),
        f"key {key_id} is already revoked \\(since .*\\); nothing to do",
    )


@pytest.mark.parametrize("command", ["get", "revoke", "update"])
def test_unknown_and_malformed_ids(run, command: str) -> None:  # type: ignore[no-untyped-def]
    extra = ["--name", "x"] if command == "update" else []
    missing = str(uuid.uuid4())
    assert_one_line_error(
        run("keys", command, missing, *extra),
        f"no key with id {missing}; 'majordomo keys list' shows the ids$",
    )
    assert_one_line_error(
        run("keys", command, "not-an-id", *extra),
        "'not-an-id' is not a key id; .*see 'majordomo keys list'",
    )


def test_update_without_changes_says_what_to_pass(run) -> None:  # type: ignore[no-untyped-def]
    key_id = run("keys", "create", "--name", "x", "--json").json()["id"]
    assert_one_line_error(
        run("keys", "update", key_id), "pass --name, --description, --budget, --rpm and/or --tpm"
    )


def test_limits_are_set_shown_and_cleared(run, pg: PgAdmin) -> None:  # type: ignore[no-untyped-def]
    key_id = run("keys", "create", "--name", "limited", "--json").json()["id"]
    updated = run(
        "keys", "update", key_id, "--budget", "25/day", "--rpm", "600", "--tpm", "200000", "--json"
    ).json()
    assert updated["limits"] == {
        "budget_usd": 25.0,
        "budget_period": "day",
        "rpm": 600,
        "tpm": 200000,
    }
    pg.fetch(
        "INSERT INTO llm_requests (id, majordomo_api_key_id, provider, model, request_path, "
        "request_method, requested_at, responded_at, input_tokens, output_tokens, total_cost, "
        "status_code) VALUES (gen_random_uuid(), $1, 'openai', 'gpt-4o', '/v1/chat/completions', "
        "'POST', now(), now(), 10, 5, 0.25, 200)",
        uuid.UUID(key_id),
    )
    got = run("keys", "get", key_id, "--json").json()
    windows = {w["limit"]: w for w in got["windows"]}
    assert windows["rpm"]["used"] == 1
    assert windows["tpm"]["used"] == 15
    assert windows["budget_usd"] == windows["budget_usd"] | {"value": 25.0, "used": 0.25}
    assert windows["budget_usd"]["resets_at"].endswith("T00:00:00+00:00")
    text = run("keys", "get", key_id).out
    assert "budget $25/day, rpm 600, tpm 200000" in text
    assert "$0.2500 of $25.00 used" in text
    # One option changes one limit; none clears it.
    cleared = run("keys", "update", key_id, "--budget", "none", "--json").json()
    assert cleared["limits"] == {
        "budget_usd": None,
        "budget_period": None,
        "rpm": 600,
        "tpm": 200000,
    }
    assert_one_line_error(
        run("keys", "update", key_id, "--rpm", "-3"), "--rpm as a whole number from 1"
    )
    assert_one_line_error(run("keys", "update", key_id, "--budget", "lots"), "25/day")


def test_database_unreachable_is_one_line(run) -> None:  # type: ignore[no-untyped-def]
    result = run(
        "keys",
        "list",
        MAJORDOMO_STORAGE_POSTGRES_HOST="127.0.0.1",
        MAJORDOMO_STORAGE_POSTGRES_PORT="1",
    )
    assert_one_line_error(
        result, r"cannot reach database '\w+' at 127\.0\.0\.1:1: .*is PostgreSQL running\?"
    )


def test_bad_config_is_one_line(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert_one_line_error(
        run("keys", "list", MAJORDOMO_STORAGE_POSTGRES_PORT="five"),
        "MAJORDOMO_STORAGE_POSTGRES_PORT: 'five' is not allowed for storage.postgres.port; expected",
    )
    (tmp_path / "majordomo.yaml").write_text("storage:\n  postgres:\n    hots: x\n")
    assert_one_line_error(run("keys", "list"), "unknown setting 'storage.postgres.hots'")


def test_config_flag_points_at_a_file(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    elsewhere = tmp_path / "conf" / "gateway.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("storage:\n  postgres:\n    port: 1\n    host: 127.0.0.1\n")
    result = majordomo("keys", "list", "--config", str(elsewhere), env={}, cwd=tmp_path)
    assert_one_line_error(result, r"at 127\.0\.0\.1:1: ")
    assert_one_line_error(
        run("keys", "list", "--config", str(tmp_path / "missing.yaml")),
        "does not exist; check the --config path",
    )


def test_migrate_is_idempotent(run) -> None:  # type: ignore[no-untyped-def]
    assert run("db", "migrate").out.strip() == f"Schema is at version {SCHEMA_VERSION}."
    assert run("db", "migrate").out.strip() == f"Schema is at version {SCHEMA_VERSION}."
