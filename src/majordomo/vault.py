"""Provider credentials sealed at rest: AES-256-GCM, each ciphertext tagged with its key.

Theory of operation
-------------------
`secrets.encryption_key` (32 bytes as 64 hex characters) seals; `secrets.previous_keys` still
open what older keys sealed, so a key can be rotated without a window where stored
credentials cannot be read (`majordomo secrets reencrypt` then re-seals everything with the
current key). A stored value reads

    mdm1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>

where the key id is the first 16 hex digits of a SHA-256 over the key (it names the key, it
does not reveal it), and the associated data binds the ciphertext to where it is stored (the
owning row and the provider): a value copied into another row does not open. Values the Go
gateway wrote (base64 of nonce ‖ ciphertext, no tag, no associated data) are opened too, by
trying each key, and re-sealed in our format by `reencrypt`.

With no key configured and the embedded PostgreSQL in use, a key is generated once into a
file beside the data directory (mode 0600) and reused by every later process; with an external
database and no key, credential features are off and each one says so (`CREDENTIALS_OFF`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from majordomo.errors import MajordomoError
from majordomo.secretfile import beside_embedded_data, load_or_create

if TYPE_CHECKING:
    from majordomo.config import Settings

_FORMAT = "mdm1"
_NONCE_SIZE = 12
KEY_FILE_NAME = "encryption.key"

CREDENTIALS_OFF = (
    "held provider credentials are off on this gateway: no secrets.encryption_key is set and "
    "the database is not the embedded one; set MAJORDOMO_SECRETS_ENCRYPTION_KEY to 64 hex "
    "characters (e.g. the output of 'openssl rand -hex 32') on every gateway and CLI"
)


class CannotOpen(MajordomoError):
    """A stored credential no configured key opens (sealed with a key this process lacks)."""


def parse_key(raw: str) -> bytes:
    """32 bytes from 64 hex characters; ValueError (never echoing the value) otherwise."""
    text = raw.strip()
    if len(text) != 64:
        raise ValueError(
            f"expected 64 hex characters (32 bytes), got {len(text)} characters; "
            "generate one with 'openssl rand -hex 32'"
        )
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(
            "expected 64 hex characters (0-9, a-f); generate one with 'openssl rand -hex 32'"
        ) from None


def key_id(key: bytes) -> str:
    """The public name of a key, stored beside what it sealed."""
    return hashlib.sha256(b"majordomo encryption key\x00" + key).hexdigest()[:16]


def hint(secret: str) -> str:
    """What a listing shows of a credential: its kind and last four characters (`sk-…wxyz`);
    nothing of one too short to spare four characters."""
    if len(secret) < 12:
        return "…"
    dash = secret.find("-", 0, 8)
    return f"{secret[: dash + 1] if dash > 0 else ''}…{secret[-4:]}"


@dataclass(frozen=True)
class Vault:
    """Seals with the current key, opens with any configured key."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def seal(self, plaintext: str, context: str) -> str:
        """`plaintext` sealed for the place named by `context` (e.g. `proxy_key:<id>:openai`)."""
        nonce = secrets.token_bytes(_NONCE_SIZE)
        sealed = AESGCM(self.current).encrypt(nonce, plaintext.encode(), context.encode())
        token = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{_FORMAT}:{self.current_id}:{token}"

    def open(self, stored: str, context: str) -> str:
        """The plaintext of a stored value; `CannotOpen` says which key it needs."""
        keys = (self.current, *self.previous)
        if stored.startswith(_FORMAT + ":"):
            _, kid, token = stored.split(":", 2)
            key = next((k for k in keys if key_id(k) == kid), None)
            if key is None:
                raise CannotOpen(
                    f"it was sealed with encryption key {kid}, which this process does not "
                    "have: add that key to secrets.previous_keys (or set it again with "
                    "set-provider)"
                )
            data = _unb64(token)
            try:
                opened = AESGCM(key).decrypt(
                    data[:_NONCE_SIZE], data[_NONCE_SIZE:], context.encode()
                )
                return opened.decode()
            except (InvalidTag, ValueError):
                raise CannotOpen(
                    f"it does not open with encryption key {kid} (altered, or copied from "
                    "another row); set it again with set-provider"
                ) from None
        # The Go gateway's format: base64(nonce ‖ ciphertext ‖ tag), no associated data.
        data = _unb64(stored)
        for key in keys:
            try:
                return AESGCM(key).decrypt(data[:_NONCE_SIZE], data[_NONCE_SIZE:], None).decode()
            except (InvalidTag, ValueError):
                continue
        raise CannotOpen(
            "no configured encryption key opens it: add the key that sealed it to "
            "secrets.previous_keys"
        )

    def is_current(self, stored: str) -> bool:
        """Whether `stored` is sealed with the current key in the current format."""
        return stored.startswith(f"{_FORMAT}:{self.current_id}:")


def _unb64(text: str) -> bytes:
    """Base64 in either alphabet (ours is URL-safe, the Go gateway's standard), padded or not."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_")
    except (binascii.Error, ValueError):
        raise CannotOpen("it is not a sealed value (not base64)") from None


def load_or_create_key_file(directory: Path) -> bytes:
    """The generated key kept in `directory` (created once, mode 0600, race-free)."""
    path = directory / KEY_FILE_NAME
    try:
        return parse_key(load_or_create(directory, KEY_FILE_NAME))
    except ValueError as exc:
        raise MajordomoError(f"{path} does not hold an encryption key: {exc}") from None


def open_vault(settings: Settings) -> tuple[Vault | None, str]:
    """The vault these settings call for, and a line saying where its key came from (or why
    credentials are off). The embedded database's key is generated on first use."""
    s = settings.secrets
    previous = tuple(parse_key(k) for k in s.previous_keys)
    if s.encryption_key:
        vault = Vault(parse_key(s.encryption_key), previous)
        return vault, f"key {vault.current_id} from secrets.encryption_key"
    if settings.storage.postgres.host:
        return None, CREDENTIALS_OFF
    directory = beside_embedded_data(settings.storage.embedded.data_dir)
    vault = Vault(load_or_create_key_file(directory), previous)
    return vault, f"key {vault.current_id} kept in {directory / KEY_FILE_NAME}"
