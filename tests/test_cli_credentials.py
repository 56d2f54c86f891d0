"""`majordomo proxy-keys …`, `keys set-provider …` and `secrets reencrypt`, as people run them."""

from __future__ import annotations

import re
import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest

from majordomo.db.credentials import API_KEY, PROXY_KEY
from majordomo.vault import Vault, key_id
from tests.cli import Result, assert_one_line_error, majordomo
from tests.pghelpers import PgAdmin

KEY = secrets.token_hex(32)
SECRET = "sk-proj-cli-held-credential-wxyz"


@pytest.fixture
def run(pg: PgAdmin, tmp_path: Path):  # type: ignore[no-untyped-def]
    def run(*args: str, **env: str) -> Result:
        return majordomo(
            *args, env={**pg.env, "MAJORDOMO_SECRETS_ENCRYPTION_KEY": KEY, **env}, cwd=tmp_path
        )

    return run


def with_stdin(pg: PgAdmin, tmp_path: Path, stdin: str, *args: str) -> Result:
    env = {**pg.env, "MAJORDOMO_SECRETS_ENCRYPTION_KEY": KEY}
    return majordomo(*args, env=env, cwd=tmp_path, stdin=stdin)


def new_key(run: Any) -> str:
    created = run("keys", "create", "--name", "operator", "--json")
    assert created.code == 0, created.err
    return str(created.json()["id"])


def test_proxy_keys_lifecycle_with_the_go_flags(run, pg: PgAdmin) -> None:  # type: ignore[no-untyped-def]
    key_id_ = new_key(run)
    created = run("proxy-keys", "create", "--name", "ci", "--majordomo-key-id", key_id_)
    assert created.code == 0, created.err
    plaintext = re.search(r"Proxy key: (mdm_pk_[A-Za-z0-9_-]{43})\n", created.out)
    proxy_id = re.search(r"Created proxy key ([0-9a-f-]{36}) \(ci\)", created.out)
    assert plaintext
    assert proxy_id
    stored = pg.fetch("SELECT key_hash, majordomo_api_key_id FROM proxy_keys")
    assert plaintext.group(1) not in str(stored)
    assert str(stored[0]["majordomo_api_key_id"]) == key_id_

    listed = run("proxy-keys", "list", "--majordomo-key-id", key_id_, "--json").json()
    assert [p["id"] for p in listed] == [proxy_id.group(1)]
    assert set(listed[0]) == {
        "id", "name", "description", "majordomo_api_key_id", "is_active", "created_at",
        "revoked_at", "last_used_at", "request_count", "limits",
    }  # fmt: skip
    assert run("proxy-keys", "list", "--majordomo-key-id", str(uuid.uuid4()), "--json").json() == []
    shown = run("proxy-keys", "get", "--json", proxy_id.group(1)).json()  # flags before the id
    assert shown["is_active"] is True

    revoked = run("proxy-keys", "revoke", proxy_id.group(1), "--json")
    assert revoked.code == 0, revoked.err
    assert revoked.json()["is_active"] is False
    assert revoked.json()["revoked_at"]
    again = run("proxy-keys", "revoke", proxy_id.group(1))
    assert_one_line_error(again, "is already revoked")
    assert_one_line_error(run("proxy-keys", "get", str(uuid.uuid4())), "no proxy key with id")
    assert_one_line_error(run("proxy-keys", "get", "nope"), "'nope' is not a proxy key id")
    assert_one_line_error(
        run("proxy-keys", "create", "--name", "x", "--majordomo-key-id", str(uuid.uuid4())),
        "no key with id",
    )


@pytest.mark.parametrize("owner", ["proxy-keys", "keys"])
def test_set_provider_from_stdin_env_or_flag_list_shows_a_hint_remove_forgets(  # type: ignore[no-untyped-def]
    run, pg: PgAdmin, tmp_path: Path, owner: str
) -> None:
    key_id_ = new_key(run)
    owner_id = key_id_
    if owner == "proxy-keys":
        owner_id = run(
            "proxy-keys", "create", "--name", "ci", "--majordomo-key-id", key_id_, "--json"
        ).json()["id"]
    table = PROXY_KEY if owner == "proxy-keys" else API_KEY

    piped = with_stdin(
        pg, tmp_path, SECRET + "\n", owner, "set-provider", owner_id, "--provider", "openai",
        "--api-key", "-",
    )  # fmt: skip
    assert piped.code == 0, piped.err
    assert SECRET not in piped.out + piped.err
    from_env = run(
        owner, "set-provider", owner_id, "--provider", "Anthropic", "--api-key-env", "HELD",
        "--json", HELD="sk-ant-api03-from-env-1234",
    )  # fmt: skip
    assert from_env.code == 0, from_env.err
    assert from_env.json()["provider"] == "anthropic"
    flag = run(
        owner, "set-provider", owner_id, "--provider", "gemini", "--api-key", "AIzaSy-flag-5678"
    )
    assert flag.code == 0, flag.err

    listed = run(owner, "list-providers", owner_id, "--json").json()
    assert [(m["provider"], m["key_hint"]) for m in listed] == [
        ("anthropic", "sk-…1234"),
        ("gemini", "AIzaSy-…5678"),
        ("openai", "sk-…wxyz"),
    ]
    text = run(owner, "list-providers", owner_id).out
    assert "sk-…wxyz" in text
    assert SECRET not in text

    rows = pg.fetch(f"SELECT provider, encrypted_key FROM {table.table}")
    vault = Vault(bytes.fromhex(KEY))
    opened = {
        r["provider"]: vault.open(
            r["encrypted_key"], table.context(uuid.UUID(owner_id), r["provider"])
        )
        for r in rows
    }
    assert opened["openai"] == SECRET
    assert all(SECRET not in r["encrypted_key"] for r in rows)

    removed = run(owner, "remove-provider", owner_id, "--provider", "gemini")
    assert removed.code == 0, removed.err
    assert [m["provider"] for m in run(owner, "list-providers", owner_id, "--json").json()] == [
        "anthropic",
        "openai",
    ]
    assert_one_line_error(
        run(owner, "remove-provider", owner_id, "--provider", "gemini"),
        "holds no gemini credential",
    )


def test_set_provider_refuses_what_is_not_a_provider_key(run, pg: PgAdmin) -> None:  # type: ignore[no-untyped-def]
    key_id_ = new_key(run)
    base = ("keys", "set-provider", key_id_)
    assert_one_line_error(run(*base, "--provider", "openai"), "exactly one of them")
    assert_one_line_error(
        run(*base, "--provider", "mistral", "--api-key", "x" * 20), "'mistral' is not a provider"
    )
    assert_one_line_error(
        run(*base, "--provider", "openai", "--api-key-env", "UNSET_VARIABLE"), "is not set"
    )
    assert_one_line_error(
        run(*base, "--provider", "openai", "--api-key", "mdm_sk_" + "a" * 43),
        "is a Majordomo key, not a provider's",
    )
    assert_one_line_error(
        run(*base, "--provider", "openai", "--api-key", "sk two words"), "holds spaces"
    )
    assert pg.fetchval("SELECT count(*) FROM api_key_provider_mappings") == 0


def test_with_an_external_database_and_no_key_set_provider_says_credentials_are_off(  # type: ignore[no-untyped-def]
    run, pg: PgAdmin
) -> None:
    key_id_ = new_key(run)
    result = run(
        "keys", "set-provider", key_id_, "--provider", "openai", "--api-key", SECRET,
        MAJORDOMO_SECRETS_ENCRYPTION_KEY="",
    )  # fmt: skip
    assert_one_line_error(result, "held provider credentials are off on this gateway")
    assert SECRET not in result.err


def test_a_malformed_key_stops_every_command_in_one_line_without_repeating_it(run) -> None:  # type: ignore[no-untyped-def]
    result = run("keys", "list", MAJORDOMO_SECRETS_ENCRYPTION_KEY="not-a-key-" + "9" * 20)
    assert_one_line_error(result, "MAJORDOMO_SECRETS_ENCRYPTION_KEY: the value is not allowed")
    assert "9999" not in result.err


def test_reencrypt_reseals_with_the_rotated_key(run, pg: PgAdmin) -> None:  # type: ignore[no-untyped-def]
    key_id_ = new_key(run)
    for provider in ("openai", "anthropic"):
        done = run("keys", "set-provider", key_id_, "--provider", provider, "--api-key", SECRET)
        assert done.code == 0, done.err
    new = secrets.token_hex(32)
    # The new key alone cannot open what the old one sealed.
    rotated = {"MAJORDOMO_SECRETS_ENCRYPTION_KEY": new}
    failed = run("secrets", "reencrypt", **rotated)
    assert_one_line_error(
        failed, f"re-sealed 0, but 2 would not open: .*key {key_id(bytes.fromhex(KEY))}"
    )

    with_old = {**rotated, "MAJORDOMO_SECRETS_PREVIOUS_KEYS": KEY}
    result = run("secrets", "reencrypt", "--json", **with_old)
    assert result.code == 0, result.err
    assert result.json() == {"reencrypted": 2, "key_id": key_id(bytes.fromhex(new))}
    again = run("secrets", "reencrypt", "--json", **with_old)
    assert again.json()["reencrypted"] == 0  # already sealed with the current key
    vault = Vault(bytes.fromhex(new))  # no previous key needed any more
    for row in pg.fetch("SELECT provider, encrypted_key FROM api_key_provider_mappings"):
        context = API_KEY.context(uuid.UUID(key_id_), row["provider"])
        assert vault.open(row["encrypted_key"], context) == SECRET
