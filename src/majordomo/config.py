"""Typed settings and how they are loaded.

Every setting has one dotted key (`server.port`) and one environment name derived from it
(`MAJORDOMO_SERVER_PORT`). Sources, lowest precedence first:

    defaults  <  majordomo.yaml  <  .env  <  environment

`load_settings` is pure: it takes the YAML mapping and the environment-like mappings and returns
`Settings`, or raises `ConfigError` naming the key, the value and what is allowed. Reading the
files lives in `read_sources`, so tests exercise the rules without touching the disk.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml
from dotenv import dotenv_values

from majordomo.errors import ConfigError
from majordomo.providers import MODULES as PROVIDER_MODULES
from majordomo.providers import ProviderModule

ENV_PREFIX = "MAJORDOMO_"
CONFIG_FILE_NAME = "majordomo.yaml"
SYSTEM_CONFIG_PATH = Path("/etc/majordomo") / CONFIG_FILE_NAME

# ---------------------------------------------------------------------------------------------
# Value parsers: each takes the raw value (from YAML: any scalar; from the environment: a str)
# and returns the typed value or raises ValueError with the "what is allowed" half of a message.

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_duration(raw: Any) -> float:
    """Seconds from `30s`, `5m`, `1h`, `250ms`, `1d` or a bare number of seconds."""
    if isinstance(raw, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h or a number of seconds")
    if isinstance(raw, int | float):
        if raw < 0:
            raise ValueError("expected a duration of zero or more")
        return float(raw)
    match = _DURATION_RE.match(str(raw))
    if not match:
        raise ValueError("expected a duration such as 30s, 5m, 1h or a number of seconds")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def parse_size(raw: Any) -> int:
    """Bytes from `32MiB`, `1MB`, `512KiB` or a bare number of bytes."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    match = _SIZE_RE.match(str(raw))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("expected a size such as 1048576, 512KiB, 32MiB or 1MB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def parse_str(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, dict | list):
        raise ValueError("expected a single value, not a list or mapping")
    return str(raw)


def parse_list(raw: Any) -> tuple[str, ...]:
    """A list: a YAML sequence, or (from the environment) comma-separated values."""
    if raw is None:
        return ()
    items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    if any(isinstance(item, dict | list) for item in items):
        raise ValueError("expected a list of single values")
    return tuple(text for item in items if (text := str(item).strip()))


def origins(raw: Any) -> tuple[str, ...]:
    """Browser origins (`https://app.example.com`, scheme and host, maybe a port) or `*`."""
    values = parse_list(raw)
    for value in values:
        if value != "*" and not re.fullmatch(r"https?://[^/\s?#]+", value):
            raise ValueError(
                f"expected origins such as https://app.example.com (no path) or *, got {value!r}"
            )
    return tuple(v.lower() for v in values)


def int_between(low: int, high: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = int(str(raw).strip()) if not isinstance(raw, int) else raw
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = parse_str(raw).strip().lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return parse


def url(raw: Any) -> str:
    """An upstream base URL: scheme, host, optional port and path prefix, nothing else.

    Credentials, a query or a fragment in it would be mixed into every request's URL (a
    `user:password@` part becomes an `Authorization: Basic` header), so they are refused.
    """
    value = parse_str(raw).strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http:// or https:// URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("expected an http:// or https:// URL with a valid host and port") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("expected a URL without user:password@ (credentials go in headers)")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("expected a URL without ?query or #fragment")
    return value


def optional_url(raw: Any) -> str:
    """`url`, or empty for none (a provider without a default endpoint, such as Azure)."""
    return url(raw) if parse_str(raw).strip() else ""


def _setting(default: Any, parse: Callable[[Any], Any], doc: str, *, secret: bool = False) -> Any:
    """A setting. A `secret` one's value is never repeated in an error message."""
    return field(default=default, metadata={"parse": parse, "doc": doc, "secret": secret})


def aws_region(raw: Any) -> str:
    """An AWS region name (`us-east-1`): it becomes part of a host name."""
    text = parse_str(raw).strip().lower()
    if not re.fullmatch(r"[a-z]{2}(-[a-z0-9]+)+", text):
        raise ValueError(f"expected an AWS region such as us-east-1, got {text[:40]!r}")
    return text


def encryption_key(raw: Any) -> str:
    """An AES-256 key as 64 hex characters, or empty for none (kept as text: `vault` reads it)."""
    from majordomo.vault import parse_key

    text = parse_str(raw).strip()
    if text:
        parse_key(text)
    return text.lower()


def encryption_keys(raw: Any) -> tuple[str, ...]:
    keys = parse_list(raw)
    for n, key in enumerate(keys, 1):
        try:
            encryption_key(key)
        except ValueError as exc:
            raise ValueError(f"entry {n}: {exc}") from None
    return tuple(k.lower() for k in keys)


# ---------------------------------------------------------------------------------------------
# The settings tree. Field names are the dotted keys' last parts; section fields hold sections.


@dataclass(frozen=True)
class ServerSettings:
    host: str = _setting("0.0.0.0", parse_str, "address to listen on")
    port: int = _setting(7680, int_between(0, 65535), "port to listen on (0 picks a free one)")
    read_timeout: float = _setting(
        30.0, parse_duration, "longest a client may stay silent while sending its request"
    )
    write_timeout: float = _setting(
        120.0, parse_duration, "longest one write to a slow client may stall before it is dropped"
    )
    shutdown_timeout: float = _setting(
        30.0, parse_duration, "grace period for in-flight requests (streams too) on shutdown"
    )
    max_request_body: int = _setting(
        32 * 1024**2, parse_size, "largest request body accepted; larger ones get 413"
    )
    # Above the SDKs' own idle expiry (httpx: 5 s), so a client never reuses a connection at
    # the moment the server closes it.
    keepalive_timeout: float = _setting(
        30.0, parse_duration, "an idle client connection is closed after this long"
    )


@dataclass(frozen=True)
class PostgresSettings:
    host: str = _setting(
        "", parse_str, "server host or unix socket directory; empty starts an embedded server"
    )
    port: int = _setting(5432, int_between(1, 65535), "server port")
    user: str = _setting("postgres", parse_str, "user name")
    password: str = _setting("", parse_str, "password (may be empty, may contain any character)")
    database: str = _setting("majordomo", parse_str, "database name")
    sslmode: str = _setting(
        "prefer",
        one_of("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
        "TLS mode, as libpq spells it",
    )
    max_conns: int = _setting(20, int_between(1, 1000), "largest number of pooled connections")
    connect_timeout: float = _setting(5.0, parse_duration, "how long to wait for a connection")


@dataclass(frozen=True)
class EmbeddedSettings:
    data_dir: str = _setting(
        ".majordomo/pgdata",
        parse_str,
        "data directory of the embedded PostgreSQL (relative to the working directory)",
    )


@dataclass(frozen=True)
class StorageSettings:
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)
    auto_migrate: bool = _setting(True, parse_bool, "apply schema.sql when serve starts")
    startup_wait: float = _setting(
        60.0, parse_duration, "how long serve waits for an unreachable database at start-up"
    )


@dataclass(frozen=True)
class LoggingSettings:
    body_storage: str = _setting(
        "none", one_of("none", "postgres", "s3"), "where full request/response bodies are kept"
    )
    store_request_body: bool = _setting(True, parse_bool, "keep request bodies")
    store_response_body: bool = _setting(True, parse_bool, "keep response bodies")
    max_body_size: int = _setting(1024**2, parse_size, "bodies are cut to this size when kept")
    level: str = _setting(
        "info", one_of("debug", "info", "warning", "error"), "lowest level of the process log"
    )
    format: str = _setting(
        "auto", one_of("auto", "json", "text"), "process log format; auto is text on a TTY"
    )
    access_log: bool = _setting(
        True,
        parse_bool,
        "one INFO line per request (method, path, provider, model, status, tokens, cost, ms)",
    )
    queue_size: int = _setting(
        10_000, int_between(1, 10_000_000), "usage records held in memory for the writer"
    )
    write_timeout: float = _setting(
        5.0,
        parse_duration,
        "longest one batch write may take; past it the batch goes to the spool",
    )
    drain_timeout: float = _setting(
        20.0, parse_duration, "on shutdown, how long the writer may take to store queued records"
    )
    spool_dir: str = _setting(
        ".majordomo/spool",
        parse_str,
        "where usage records wait on disk while the database is unreachable",
    )


@dataclass(frozen=True)
class S3Settings:
    enabled: bool = _setting(False, parse_bool, "store bodies in S3 (with body_storage: s3)")
    bucket: str = _setting("majordomo-logs", parse_str, "bucket name")
    region: str = _setting("us-east-1", parse_str, "bucket region")
    endpoint: str = _setting("", parse_str, "endpoint URL for S3-compatible stores; empty is AWS")
    prefix: str = _setting("", parse_str, "key prefix for stored bodies")
    path_style: bool = _setting(
        False,
        parse_bool,
        "force path-style URLs (endpoint/bucket/key); otherwise boto3 chooses: "
        "virtual-hosted on AWS, path-style for a custom endpoint",
    )
    access_key_id: str = _setting("", parse_str, "access key; empty uses the AWS default chain")
    secret_access_key: str = _setting("", parse_str, "secret key")


def _parse_price_overrides(raw: Any) -> Any:
    # Imported when used: the pricing package brings httpx and the price book along.
    from majordomo.pricing import parse_overrides

    return parse_overrides(raw)


@dataclass(frozen=True)
class PricingSettings:
    remote_url: str = _setting(
        "https://www.llm-prices.com/current-v1.json",
        parse_str,
        "price table to refresh from (genai-prices data.json or llm-prices current-v1.json); "
        "empty: bundled prices only",
    )
    refresh_interval: float = _setting(3600.0, parse_duration, "how often prices are refreshed")
    refresh_timeout: float = _setting(
        30.0, parse_duration, "longest one refresh may take; the last good table is kept"
    )
    # A mapping, not a scalar: {model: {input, output, cache_read, cache_write}} in USD per
    # 1M tokens; in the environment, the same as a JSON object.
    overrides: Mapping[str, ModelPrice] = field(
        default_factory=dict,
        metadata={
            "parse": _parse_price_overrides,
            "doc": "negotiated prices per 1M tokens, winning over every other source",
            "mapping": True,
        },
    )


@dataclass(frozen=True)
class UpstreamSettings:
    """`providers.<name>`: one provider's section, one per module in `majordomo.providers`."""

    base_url: str
    api_key: str


@dataclass(frozen=True)
class RegionalUpstreamSettings(UpstreamSettings):
    """A provider's section with an AWS region (Bedrock's): where its endpoint is when
    `base_url` is not set, and what requests are signed for."""

    region: str


def _upstream_section(module: ProviderModule) -> type[UpstreamSettings]:
    """The settings class of one provider, from what its module declares."""
    doc = f"upstream base URL ({module.BASE_URL_HINT})"
    region = getattr(module, "DEFAULT_REGION", None)
    key_doc = (
        "the gateway-wide credential sent to this provider for callers that put their "
        "Majordomo key in the SDK's api_key and hold no credential of their own; empty: none"
    )
    return make_dataclass(
        f"{module.NAME.title()}Settings",
        [
            (
                "base_url",
                str,
                _setting(module.BASE_URL, optional_url if not module.BASE_URL else url, doc),
            ),
            ("api_key", str, _setting("", parse_str, key_doc, secret=True)),
            *(
                [("region", str, _setting(region, aws_region, "the AWS region requests go to"))]
                if region is not None
                else []
            ),
        ],
        bases=(UpstreamSettings,) if region is None else (RegionalUpstreamSettings,),
        frozen=True,
    )


@dataclass(frozen=True)
class ExtraProvider:
    """`providers.extra.<name>`: an OpenAI-compatible provider added by configuration."""

    name: str
    base_url: str
    api_key: str = ""
    pricing_provider: str = ""  # genai-prices' id to price it as; empty: its own name


_EXTRA_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_EXTRA_FIELDS = {"base_url", "api_key", "pricing_provider"}


def extra_providers(raw: Any) -> Mapping[str, ExtraProvider]:
    """`{name: {base_url, api_key?, pricing_provider?}}`, or the same as a JSON object."""
    import json

    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ValueError(
                'expected a JSON object such as {"groq": {"base_url": "https://api.groq.com/openai"}}'
            ) from None
    if not isinstance(raw, Mapping):
        raise ValueError(
            "expected a mapping of provider name to {base_url, api_key, pricing_provider}"
        )
    from majordomo.providers import ALIASES, PROVIDER_NAMES

    found: dict[str, ExtraProvider] = {}
    for name, fields in raw.items():
        key = str(name).strip().lower()
        if not _EXTRA_NAME.fullmatch(key):
            raise ValueError(
                f"expected provider names of a-z, 0-9, - and _, got {str(name)[:40]!r}"
            )
        if key in PROVIDER_NAMES or key in ALIASES:
            raise ValueError(f"{key!r} is a built-in provider; choose another name")
        if not isinstance(fields, Mapping) or "base_url" not in fields:
            raise ValueError(
                f"expected {key}: {{base_url: ..., api_key: ..., pricing_provider: ...}}"
            )
        unknown = set(fields) - _EXTRA_FIELDS
        if unknown:
            raise ValueError(
                f"{key}: unknown field {sorted(unknown)[0]!r}; fields are {', '.join(sorted(_EXTRA_FIELDS))}"
            )
        found[key] = ExtraProvider(
            key,
            url(fields["base_url"]),
            parse_str(fields.get("api_key")).strip(),
            parse_str(fields.get("pricing_provider")).strip().lower(),
        )
    return found


@dataclass(frozen=True)
class _ProvidersCommon:
    connect_timeout: float = _setting(
        10.0, parse_duration, "longest wait to connect to a provider (then 504)"
    )
    idle_timeout: float = _setting(
        600.0, parse_duration, "longest a provider may go silent mid-response (then 504)"
    )
    max_event_size: int = _setting(
        16 * 1024**2,
        parse_size,
        "largest stream event or non-stream body held to read usage; past it the bytes still "
        "flow to the client, usage is not read",
    )
    max_decompressed_size: int = _setting(
        64 * 1024**2,
        parse_size,
        "most bytes of a compressed response decompressed to read usage (a gzip bomb stops there)",
    )
    inject_stream_usage: bool = _setting(
        True,
        parse_bool,
        "ask OpenAI streams for their usage chunk (hidden from clients that did not ask)",
    )
    # A mapping: {name: {base_url, api_key, pricing_provider}}; in the environment, JSON.
    extra: Mapping[str, ExtraProvider] = field(
        default_factory=dict,
        metadata={
            "parse": extra_providers,
            "doc": "OpenAI-compatible providers added by name (docs/providers.md)",
            "mapping": True,
            "secret": True,
        },
    )

    def upstream(self, name: str) -> UpstreamSettings:
        """The section of provider `name` (one of `providers.PROVIDER_NAMES`)."""
        section: UpstreamSettings = getattr(self, name)
        return section

    def region(self, name: str) -> str:
        """The AWS region of provider `name` (Bedrock), else empty."""
        section = self.upstream(name)
        return section.region if isinstance(section, RegionalUpstreamSettings) else ""

    def base_urls(self) -> dict[str, str]:
        """Every provider's base URL: the built-in ones and `providers.extra`."""
        from majordomo.providers import PROVIDER_NAMES

        urls = {name: self.upstream(name).base_url for name in PROVIDER_NAMES}
        if not urls["bedrock"]:
            from majordomo.providers import bedrock

            urls["bedrock"] = bedrock.base_url_for(self.region("bedrock"))
        urls.update({name: extra.base_url for name, extra in self.extra.items()})
        return {name: url for name, url in urls.items() if url}  # azure has no default

    def default_credentials(self) -> dict[str, str]:
        """`providers.<name>.api_key` of every provider that has one."""
        from majordomo.providers import PROVIDER_NAMES

        keys = {name: self.upstream(name).api_key for name in PROVIDER_NAMES}
        keys.update({name: extra.api_key for name, extra in self.extra.items()})
        return {name: key for name, key in keys.items() if key}


if TYPE_CHECKING:
    from majordomo.pricing.overrides import ModelPrice

    class ProvidersSettings(_ProvidersCommon):
        def __getattr__(self, name: str) -> UpstreamSettings: ...

else:
    # One `providers.<name>` section per provider module, then the common settings.
    ProvidersSettings = make_dataclass(
        "ProvidersSettings",
        [
            (m.NAME, UpstreamSettings, field(default_factory=_upstream_section(m)))
            for m in PROVIDER_MODULES
        ],
        bases=(_ProvidersCommon,),
        frozen=True,
    )


@dataclass(frozen=True)
class CorsSettings:
    allowed_origins: tuple[str, ...] = _setting(
        (),
        origins,
        "browser origins allowed to call the gateway (CORS); * for any; none by default",
    )


@dataclass(frozen=True)
class AuthSettings:
    cache_ttl: float = _setting(
        300.0, parse_duration, "how long a checked key is trusted without asking the database"
    )
    negative_cache_ttl: float = _setting(
        10.0, parse_duration, "how long an unknown key is remembered as unknown"
    )


@dataclass(frozen=True)
class SecretsSettings:
    encryption_key: str = _setting(
        "",
        encryption_key,
        "AES-256 key (64 hex characters) sealing held provider credentials; empty: generated "
        "beside the embedded database, or credentials off with an external one",
        secret=True,
    )
    previous_keys: tuple[str, ...] = _setting(
        (),
        encryption_keys,
        "earlier encryption keys, still opening what they sealed until "
        "'majordomo secrets reencrypt' has re-sealed it",
        secret=True,
    )


def jwt_secret(raw: Any) -> str:
    text = parse_str(raw).strip()
    if text and len(text) < 32:
        raise ValueError(
            "expected at least 32 characters (HS256 wants 256 bits); generate one with "
            "'openssl rand -hex 32'"
        )
    return text


@dataclass(frozen=True)
class JwtSettings:
    secret: str = _setting(
        "",
        jwt_secret,
        "HS256 secret signing admin API tokens (32+ characters); empty: generated beside the "
        "embedded database, or the admin API off with an external one",
        secret=True,
    )
    expiry: float = _setting(86400.0, parse_duration, "how long a login token is valid")


@dataclass(frozen=True)
class LimitsSettings:
    fail_open: bool = _setting(
        False,
        parse_bool,
        "with the database away and a key's lease spent: admit requests over an unknown limit "
        "(logging a warning) instead of refusing them with 503",
    )


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    providers: ProvidersSettings = field(default_factory=ProvidersSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)


# ---------------------------------------------------------------------------------------------
# The key table, derived once from the tree above.


@dataclass(frozen=True)
class SettingSpec:
    key: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    mapping: bool = False  # its value is a mapping (YAML) or a JSON object (environment)
    secret: bool = False  # never repeated in a message

    @property
    def env_name(self) -> str:
        return env_name(self.key)


def env_name(key: str) -> str:
    """`storage.postgres.host` → `MAJORDOMO_STORAGE_POSTGRES_HOST`."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def _walk(cls: type, prefix: str) -> Iterator[SettingSpec]:
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if "parse" in f.metadata:
            default = f.default
            if default is dataclasses.MISSING:  # a mapping setting: its factory builds it
                default = f.default_factory()  # type: ignore[operator]
            yield SettingSpec(
                key,
                default,
                f.metadata["parse"],
                f.metadata["doc"],
                f.metadata.get("mapping", False),
                f.metadata.get("secret", False),
            )
        else:
            yield from _walk(f.default_factory, key + ".")  # type: ignore[arg-type]


SPECS: dict[str, SettingSpec] = {spec.key: spec for spec in _walk(Settings, "")}
ENV_NAMES: dict[str, str] = {spec.env_name: spec.key for spec in SPECS.values()}
# MAJORDOMO_* names that are read elsewhere, not settings.
# (MAJORDOMO_URL and MAJORDOMO_KEY are what docs/getting-started.md's examples read.)
OTHER_ENV_NAMES = frozenset(
    {"MAJORDOMO_CONFIG", "MAJORDOMO_TEST_DSN", "MAJORDOMO_URL", "MAJORDOMO_KEY"}
)


def _flatten(mapping: Mapping[str, Any], prefix: str, source: str) -> Iterator[tuple[str, Any]]:
    for name, value in mapping.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and not (key in SPECS and SPECS[key].mapping):
            yield from _flatten(value, key + ".", source)
        elif key in SPECS:
            yield key, value
        else:
            raise ConfigError(f"{source}: unknown setting '{key}'; {_suggest(key)}")


def _suggest(key: str) -> str:
    section = key.rsplit(".", 1)[0]
    known = sorted(k for k in SPECS if k.startswith(section + "."))
    if known:
        return "settings here are " + ", ".join(known)
    return "sections are " + ", ".join(sorted({k.split(".")[0] for k in SPECS}))


def load_settings(
    file_values: Mapping[str, Any] | None = None,
    *env_sources: Mapping[str, str | None],
    file_name: str = CONFIG_FILE_NAME,
) -> Settings:
    """Build `Settings` from a parsed YAML mapping and environment-like mappings.

    Later `env_sources` win over earlier ones (pass `.env` values, then `os.environ`).
    Environment variables that are not `MAJORDOMO_*` settings are ignored.
    """
    raw: dict[str, tuple[Any, str]] = {}
    if file_values:
        for key, value in _flatten(file_values, "", file_name):
            raw[key] = (value, f"{key} in {file_name}")
    for environ in env_sources:
        for name, value in environ.items():
            if name in ENV_NAMES and value is not None:
                raw[ENV_NAMES[name]] = (value, name)

    values: dict[str, Any] = {}
    for key, (value, origin) in raw.items():
        try:
            values[key] = SPECS[key].parse(value)
        except ValueError as exc:
            shown = "the value" if SPECS[key].secret else repr(value)
            raise ConfigError(f"{origin}: {shown} is not allowed for {key}; {exc}") from None
    settings: Settings = _build(Settings, "", values)
    return settings


def _build(cls: type, prefix: str, values: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if "parse" in f.metadata:
            if key in values:
                kwargs[f.name] = values[key]
        else:
            kwargs[f.name] = _build(f.default_factory, key + ".", values)  # type: ignore[arg-type]
    return cls(**kwargs)


def unknown_env_names(environ: Mapping[str, str]) -> list[str]:
    """`MAJORDOMO_*` variables that name no setting (likely typos; reported as warnings)."""
    return sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX) and name not in ENV_NAMES and name not in OTHER_ENV_NAMES
    )


# ---------------------------------------------------------------------------------------------
# Reading the sources from disk.


@dataclass(frozen=True)
class Sources:
    file_path: Path | None
    file_values: Mapping[str, Any]
    dotenv_values: Mapping[str, str | None]


def find_config_file(explicit: Path | None, cwd: Path) -> Path | None:
    """`--config PATH` (must exist), else `./majordomo.yaml`, else `/etc/majordomo/…`."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist; check the --config path")
        return explicit
    for candidate in (cwd / CONFIG_FILE_NAME, SYSTEM_CONFIG_PATH):
        if candidate.is_file():
            return candidate
    return None


def read_sources(explicit: Path | None = None, cwd: Path | None = None) -> Sources:
    cwd = cwd or Path.cwd()
    path = find_config_file(explicit, cwd)
    file_values: Mapping[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        file_values = loaded
    env_file = cwd / ".env"
    dotenv = dotenv_values(env_file, interpolate=False) if env_file.is_file() else {}
    return Sources(path, file_values, dotenv)


def load(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for this process: files found from the working directory, then the environment."""
    environ = os.environ if environ is None else environ
    if explicit is None and environ.get("MAJORDOMO_CONFIG"):
        explicit = Path(environ["MAJORDOMO_CONFIG"])
    sources = read_sources(explicit)
    name = str(sources.file_path) if sources.file_path else CONFIG_FILE_NAME
    return load_settings(sources.file_values, sources.dotenv_values, environ, file_name=name)
