"""Sealing held credentials: AES-256-GCM tagged with the key, bound to its row, rotatable."""

from __future__ import annotations

import base64
import os
import secrets
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from majordomo.config import load_settings
from majordomo.errors import ConfigError
from majordomo.vault import (
    CREDENTIALS_OFF,
    KEY_FILE_NAME,
    CannotOpen,
    Vault,
    hint,
    key_id,
    load_or_create_key_file,
    open_vault,
    parse_key,
)

pytestmark = pytest.mark.fast

OLD, NEW = secrets.token_bytes(32), secrets.token_bytes(32)
CONTEXT = "proxy_key_provider_mappings:0b4e7c1a-0000-0000-0000-000000000001:openai"


def test_a_sealed_credential_opens_and_names_its_key_but_never_shows_the_plaintext() -> None:
    vault = Vault(NEW)
    sealed = vault.seal("sk-live-abcdefgh12345678", CONTEXT)
    assert "sk-live" not in sealed
    assert "12345678" not in sealed
    assert sealed.startswith(f"mdm1:{key_id(NEW)}:")
    assert vault.is_current(sealed)
    assert vault.open(sealed, CONTEXT) == "sk-live-abcdefgh12345678"
    assert vault.seal("same", CONTEXT) != vault.seal("same", CONTEXT)  # a fresh nonce each


def test_a_ciphertext_copied_to_another_row_or_altered_does_not_open() -> None:
    vault = Vault(NEW)
    sealed = vault.seal("sk-live-abcdefgh12345678", CONTEXT)
    with pytest.raises(CannotOpen, match="copied from another row"):
        vault.open(sealed, CONTEXT.replace("openai", "anthropic"))
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(CannotOpen):
        vault.open(flipped, CONTEXT)


def test_rotation_old_ciphertexts_open_with_previous_keys_and_reseal_with_the_new() -> None:
    sealed_old = Vault(OLD).seal("sk-old-credential-0001", CONTEXT)
    rotated = Vault(NEW, (OLD,))
    assert not rotated.is_current(sealed_old)
    assert rotated.open(sealed_old, CONTEXT) == "sk-old-credential-0001"
    resealed = rotated.seal(rotated.open(sealed_old, CONTEXT), CONTEXT)
    assert rotated.is_current(resealed)
    assert Vault(NEW).open(resealed, CONTEXT) == "sk-old-credential-0001"
    with pytest.raises(CannotOpen, match=f"sealed with encryption key {key_id(OLD)}"):
        Vault(NEW).open(sealed_old, CONTEXT)


def test_the_go_gateways_ciphertexts_open_too() -> None:
    """base64(nonce ‖ ciphertext ‖ tag), standard alphabet, no associated data."""
    nonce = os.urandom(12)
    go = base64.b64encode(nonce + AESGCM(OLD).encrypt(nonce, b"sk-from-go-0001", None)).decode()
    assert Vault(NEW, (OLD,)).open(go, CONTEXT) == "sk-from-go-0001"
    with pytest.raises(CannotOpen, match="no configured encryption key opens it"):
        Vault(NEW).open(go, CONTEXT)


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        ("sk-proj-abcdefghijklmnopwxyz", "sk-…wxyz"),
        ("sk-ant-api03-abcdefghij1234", "sk-…1234"),
        ("AIzaSyAbcdefghijklmnop9876", "…9876"),
        ("short-key", "…"),
    ],
)
def test_hints_show_the_kind_and_four_characters_at_most(secret: str, shown: str) -> None:
    assert hint(secret) == shown


@pytest.mark.parametrize("bad", ["abc", "z" * 64, "0" * 63, "0" * 65])
def test_a_malformed_key_is_a_one_line_config_error_that_never_repeats_it(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {"MAJORDOMO_SECRETS_ENCRYPTION_KEY": bad})
    message = str(caught.value)
    assert message.startswith("MAJORDOMO_SECRETS_ENCRYPTION_KEY: the value is not allowed")
    assert "64 hex characters" in message
    assert bad not in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="entry 2") as caught:
        load_settings({"secrets": {"previous_keys": ["a" * 64, bad]}})
    assert bad not in str(caught.value)


def test_with_an_external_database_and_no_key_credentials_are_off() -> None:
    vault, why = open_vault(load_settings({"storage": {"postgres": {"host": "db.internal"}}}))
    assert vault is None
    assert why == CREDENTIALS_OFF


def test_a_configured_key_seals(tmp_path: Path) -> None:
    settings = load_settings(
        {"secrets": {"encryption_key": NEW.hex().upper(), "previous_keys": [OLD.hex()]}}
    )
    vault, where = open_vault(settings)
    assert vault == Vault(NEW, (OLD,))
    assert where == f"key {key_id(NEW)} from secrets.encryption_key"


def test_with_the_embedded_database_a_key_is_generated_once_beside_it(tmp_path: Path) -> None:
    settings = load_settings({"storage": {"embedded": {"data_dir": str(tmp_path / "pgdata")}}})
    first, where = open_vault(settings)
    assert first is not None
    path = tmp_path / KEY_FILE_NAME
    assert where == f"key {first.current_id} kept in {path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second, _ = open_vault(settings)
    assert second == first
    assert parse_key(path.read_text()) == first.current


def test_processes_starting_together_agree_on_one_generated_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    start = threading.Barrier(8)

    def race() -> None:
        start.wait()
        keys.append(load_or_create_key_file(tmp_path))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1
    assert len(keys) == 8
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE_NAME]  # no temporary left
