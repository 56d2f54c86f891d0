"""`set-provider`, `remove-provider`, `list-providers`: the held credentials of a proxy key
or of a Majordomo key, one implementation for both (`majordomo proxy-keys …`, `keys …`).

(No postponed annotations here: the commands are defined inside a function, and cyclopts
reads their annotations, which name that function's locals.)"""

import os
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import Annotated

import cyclopts

from majordomo.cli.common import ConfigOption, JsonFlag, prepare, print_json, run_with_database
from majordomo.db import Database, Mapping
from majordomo.db.credentials import Owner
from majordomo.errors import MajordomoError
from majordomo.providers import PROVIDER_NAMES
from majordomo.vault import CREDENTIALS_OFF, hint, open_vault

ProviderOption = Annotated[
    str,
    cyclopts.Parameter(
        help=f"The provider: {', '.join(PROVIDER_NAMES)}, or a providers.extra name."
    ),
]
ApiKeyOption = Annotated[
    str | None,
    cyclopts.Parameter(
        help="The provider's API key, or - to read it from standard input (kept out of shell "
        "history).",
        allow_leading_hyphen=True,  # `--api-key -`
    ),
]
ApiKeyEnvOption = Annotated[
    str | None,
    cyclopts.Parameter(help="Read the provider's API key from this environment variable."),
]


def parse_provider(raw: str, extras: Iterable[str] = ()) -> str:
    """A built-in provider's name, or one of `providers.extra`."""
    name = raw.strip().lower()
    known = (*PROVIDER_NAMES, *extras)
    if name not in known:
        raise MajordomoError(f"--provider {raw!r} is not a provider; use one of {', '.join(known)}")
    return name


def read_secret(api_key: str | None, api_key_env: str | None) -> str:
    """The credential from `--api-key K`, `--api-key -` (standard input) or `--api-key-env`."""
    if (api_key is None) == (api_key_env is None):
        raise MajordomoError(
            "pass the provider's API key with --api-key - (read from standard input), "
            "--api-key-env NAME, or --api-key KEY; exactly one of them"
        )
    if api_key_env is not None:
        value = os.environ.get(api_key_env)
        if value is None:
            raise MajordomoError(f"--api-key-env {api_key_env}: that variable is not set")
        source = f"${api_key_env}"
    elif api_key == "-":
        value = sys.stdin.readline()
        source = "standard input"
    else:
        value, source = api_key or "", "--api-key"
    value = value.strip()
    if not value:
        raise MajordomoError(f"the API key from {source} is empty")
    if not all(33 <= ord(c) <= 126 for c in value):
        raise MajordomoError(
            f"the API key from {source} holds spaces or characters no provider key has; "
            "check what was pasted"
        )
    if value.startswith(("mdm_sk_", "mdm_pk_")):
        raise MajordomoError(
            f"the API key from {source} is a Majordomo key, not a provider's; pass the "
            "provider's own API key"
        )
    return value


def _print_mappings(mappings: list[Mapping], owner: Owner, owner_id: uuid.UUID) -> None:
    if not mappings:
        print(f"{owner.kind.capitalize()} {owner_id} holds no provider credentials.")
        return
    print(f"{'PROVIDER':<12}  {'KEY':<14}  UPDATED")
    for m in mappings:
        print(f"{m.provider:<12}  {m.key_hint:<14}  {m.updated_at:%Y-%m-%d %H:%M}")


def add_held_credential_commands(
    app: cyclopts.App,
    owner: Owner,
    owner_field: str,
    parse_id: Callable[[str], uuid.UUID],
    id_help: str,
) -> None:
    """Register set-provider, remove-provider and list-providers on `app`."""
    OwnerId = Annotated[str, cyclopts.Parameter(help=id_help)]

    @app.command(name="set-provider")
    def set_provider(
        owner_id: OwnerId,
        /,
        *,
        provider: ProviderOption,
        api_key: ApiKeyOption = None,
        api_key_env: ApiKeyEnvOption = None,
        json: JsonFlag = False,
        config: ConfigOption = None,
    ) -> None:
        """Hold a provider credential (sealed at rest); every gateway uses it at once."""
        parsed = parse_id(owner_id)
        secret = read_secret(api_key, api_key_env)
        ctx = prepare(config, log_level="warning")
        name = parse_provider(provider, ctx.settings.providers.extra)
        vault, _ = open_vault(ctx.settings)
        if vault is None:
            raise MajordomoError(f"cannot hold a credential: {CREDENTIALS_OFF}")
        sealed = vault.seal(secret, owner.context(parsed, name))

        async def action(db: Database) -> Mapping:
            return await db.credentials.set_credential(owner, parsed, name, sealed, hint(secret))

        mapping = run_with_database(ctx, action)
        if json:
            print_json(mapping.as_json(owner_field))
        else:
            print(
                f"{owner.kind.capitalize()} {parsed} now holds a {name} credential ({mapping.key_hint})."
            )

    @app.command(name="remove-provider")
    def remove_provider(
        owner_id: OwnerId,
        /,
        *,
        provider: ProviderOption,
        json: JsonFlag = False,
        config: ConfigOption = None,
    ) -> None:
        """Forget a held provider credential; every gateway stops using it at once."""
        parsed = parse_id(owner_id)
        ctx = prepare(config, log_level="warning")
        name = parse_provider(provider, ctx.settings.providers.extra)

        async def action(db: Database) -> None:
            await db.credentials.remove_credential(owner, parsed, name)

        run_with_database(ctx, action)
        if json:
            print_json({owner_field: str(parsed), "provider": name, "removed": True})
        else:
            print(f"Removed the {name} credential of {owner.kind} {parsed}.")

    @app.command(name="list-providers")
    def list_providers(
        owner_id: OwnerId, /, *, json: JsonFlag = False, config: ConfigOption = None
    ) -> None:
        """List the provider credentials held (a hint of each, never the key)."""
        parsed = parse_id(owner_id)
        ctx = prepare(config, log_level="warning")

        async def action(db: Database) -> list[Mapping]:
            return await db.credentials.list_credentials(owner, parsed)

        mappings = run_with_database(ctx, action)
        if json:
            print_json([m.as_json(owner_field) for m in mappings])
        else:
            _print_mappings(mappings, owner, parsed)
