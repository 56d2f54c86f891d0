"""`majordomo secrets reencrypt`: re-seal every held credential with the current key."""

from __future__ import annotations

import cyclopts

from majordomo.cli.common import ConfigOption, JsonFlag, prepare, print_json, run_with_database
from majordomo.db import Database
from majordomo.db.credentials import Sealed
from majordomo.errors import MajordomoError
from majordomo.vault import CREDENTIALS_OFF, CannotOpen, open_vault

secrets_app = cyclopts.App(name="secrets", help="Manage the encryption of held credentials.")


@secrets_app.command
def reencrypt(*, json: JsonFlag = False, config: ConfigOption = None) -> None:
    """Re-seal every held credential with secrets.encryption_key (after a rotation: the old
    key in secrets.previous_keys opens them); report how many changed."""
    ctx = prepare(config, log_level="warning")
    vault, _ = open_vault(ctx.settings)
    if vault is None:
        raise MajordomoError(f"nothing to re-seal with: {CREDENTIALS_OFF}")
    unreadable: list[str] = []

    def reseal(sealed: Sealed) -> str | None:
        if vault.is_current(sealed.encrypted_key):
            return None
        context = sealed.owner.context(sealed.owner_id, sealed.provider)
        try:
            return vault.seal(vault.open(sealed.encrypted_key, context), context)
        except CannotOpen as exc:
            unreadable.append(f"{sealed.owner.kind} {sealed.owner_id} ({sealed.provider}): {exc}")
            return None

    async def action(db: Database) -> int:
        return await db.credentials.reseal_all(reseal)

    changed = run_with_database(ctx, action)
    if unreadable:
        # Nothing was half done: the transaction stored the ones that opened; say which did not.
        raise MajordomoError(
            f"re-sealed {changed}, but {len(unreadable)} would not open: " + "; ".join(unreadable)
        )
    if json:
        print_json({"reencrypted": changed, "key_id": vault.current_id})
    else:
        print(f"Re-sealed {changed} credential(s) with key {vault.current_id}.")
