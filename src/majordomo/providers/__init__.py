"""The providers Majordomo fronts, one module each, and how a request path picks one.

Every module (`openai`, `anthropic`, `gemini`, `azure`, `bedrock`) declares the same facts and exposes the same
pure functions, described by `ProviderModule`: its `NAME`, default `BASE_URL` and price ids,
then `request_info`, `usage_from_body`, `error_body` and a `StreamParser` class. Everything
else is derived from `MODULES`: the names `X-Majordomo-Provider` accepts, the
`providers.<name>` settings, the upstreams, the pricing maps. Adding a provider is one
module, one fixture folder under `tests/fixtures/` and one line in `MODULES`; there is no
plugin machinery.

Routing (`detect_provider`), when `X-Majordomo-Provider` does not say, reads the request's
shape, so that a credential only ever goes to the provider it was meant for:

* a path containing a Gemini method (`:generateContent`, `:streamGenerateContent`,
  `:countTokens`, `:embedContent`, `:batchEmbedContents`), whatever its prefix, and anything
  under `/v1beta/` or `/v1alpha/`, is Gemini's;
* `/openai/deployments/…` and `/openai/v1/…` are Azure OpenAI's; `/model/…` (Converse,
  InvokeModel and their streams) is Amazon Bedrock's;
* `/v1/messages` and everything below it is Anthropic's;
* any other `/v1/...` path belongs to the provider whose credential or headers it carries:
  `anthropic-version` or `x-api-key` mean Anthropic (its SDK lists models at `/v1/models`
  too), `x-goog-api-key` or a `key` query parameter mean Gemini (google-genai 3.x calls
  `/v1/models/...`); otherwise it is OpenAI's. Other colons stay OpenAI's: fine-tuned model
  ids contain them (`/v1/models/ft:gpt-4o-mini:acme::abc123`);
* anything else is unknown (None): the caller answers 404 rather than guess, with a hint
  when the path looks like a `base_url` mistake (`misrouted_hint`).

The wire format a response is read in follows the path alone (`wire_format`): an
OpenAI-shaped path (`/v1/chat/completions`, Gemini's `/v1beta/openai/...`) is read as OpenAI's
whichever provider serves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from majordomo.providers import anthropic, azure, bedrock, gemini, openai
from majordomo.providers.common import ProviderModule, RequestInfo, StreamParserLike

__all__ = [
    "ALIASES",
    "MODULES",
    "PROVIDER_NAMES",
    "Alias",
    "ProviderModule",
    "RequestInfo",
    "StreamParserLike",
    "detect_provider",
    "get_provider",
    "misrouted_hint",
    "wire_format",
]

# The one list of providers.
MODULES: tuple[ProviderModule, ...] = (openai, anthropic, gemini, azure, bedrock)

PROVIDER_NAMES = tuple(module.NAME for module in MODULES)
_MODULES: dict[str, ProviderModule] = {module.NAME: module for module in MODULES}


@dataclass(frozen=True, slots=True)
class Alias:
    """A name `X-Majordomo-Provider` takes for another provider's API in another wire format
    (the Go gateway's names): who serves and bills it, how it is read, and where its API
    lives upstream. The client keeps its SDK's usual paths (`/v1/chat/completions`)."""

    provider: str
    wire_format: str
    prefix: bytes  # the upstream API's root, in place of the client's /v1/
    # Set when the gateway translates: the one client path served, and where it goes upstream
    # (`anthropic_openai.py`). Untranslated aliases forward every path under `prefix`.
    translates: tuple[str, bytes] | None = None

    def upstream_path(self, raw_path: bytes) -> bytes:
        """`/v1/chat/completions` → `<prefix>chat/completions` (or the translated API's
        path); a path already under the prefix goes as it came."""
        if self.translates is not None:
            return self.translates[1]
        if raw_path.startswith(self.prefix) or not raw_path.startswith(b"/v1/"):
            return raw_path
        return self.prefix + raw_path[len(b"/v1/") :]


ALIASES: dict[str, Alias] = {
    # Gemini's OpenAI-compatible endpoint, read as OpenAI's, billed by Google.
    "gemini-openai": Alias("gemini", "openai", b"/v1beta/openai/"),
    # OpenAI's Chat Completions, translated to Anthropic's Messages and back.
    "anthropic-openai": Alias(
        "anthropic", "openai", b"/v1/", translates=("/v1/chat/completions", b"/v1/messages")
    ),
}

_GEMINI_ONLY_PREFIXES = ("/v1beta/", "/v1alpha/")
# Headers only Anthropic's clients send.
_ANTHROPIC_HEADERS = frozenset({b"anthropic-version", b"x-api-key"})
# Paths of OpenAI's API that other providers' OpenAI-compatible endpoints also serve.
_OPENAI_SHAPED = ("/chat/completions", "/completions", "/embeddings", "/responses")
_GEMINI_METHODS = frozenset(
    {
        "generateContent",
        "streamGenerateContent",
        "countTokens",
        "embedContent",
        "batchEmbedContents",
    }
)


def _gemini_method(path: str) -> bool:
    return path.rpartition(":")[2] in _GEMINI_METHODS


def detect_provider(
    path: str, headers: Sequence[tuple[bytes, bytes]] = (), query: bytes = b""
) -> str | None:
    """The provider a request belongs to, from its path and its shape; None when none serves it."""
    if misrouted_hint(path) is not None:
        return None
    if _gemini_method(path) or path.startswith(_GEMINI_ONLY_PREFIXES):
        return "gemini"
    if path.startswith(azure.PATH_PREFIXES):
        return "azure"
    if path.startswith(bedrock.PATH_PREFIX):
        return "bedrock"
    if not path.startswith("/v1/"):
        return None
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    for name, _ in headers:
        if name in _ANTHROPIC_HEADERS:
            return "anthropic"
        if name == b"x-goog-api-key":
            return "gemini"
    if query and any(name == "key" for name, _ in parse_qsl(query.decode("latin-1"))):
        return "gemini"
    return "openai"


def wire_format(path: str, provider: str) -> str:
    """Whose wire format an exchange is in. Provider-specific paths speak their provider's;
    OpenAI-shaped ones (`/v1/chat/completions` sent to Anthropic, Gemini's
    `/v1beta/openai/...`) speak OpenAI's whoever serves them; the rest speak the serving
    provider's (its error shape is what its SDK reads)."""
    if path.startswith(azure.PATH_PREFIXES):
        return "azure"  # OpenAI's format, with Azure's credential header
    if path.startswith(bedrock.PATH_PREFIX):
        return "bedrock"
    if "/openai/" in path:
        return "openai"
    if _gemini_method(path) or path.startswith(_GEMINI_ONLY_PREFIXES):
        return "gemini"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path.rstrip("/").endswith(_OPENAI_SHAPED):
        return "openai"
    return provider


# Where each SDK puts /v1 itself, for the hints below: (wrong prefix, SDK, base_url to use).
_DOUBLED_PREFIXES = (
    (
        "/v1/v1/",
        "the Anthropic or OpenAI SDK",
        "http://<gateway>:7680 for Anthropic, http://<gateway>:7680/v1 for OpenAI",
    ),
    ("/v1beta/v1beta/", "google-genai", "http://<gateway>:7680 (no /v1beta)"),
    ("/v1beta/v1/", "google-genai", "http://<gateway>:7680 (no /v1beta)"),
    ("/v1/v1beta/", "google-genai", "http://<gateway>:7680 (no /v1)"),
)
# API paths an SDK sends below its base_url; seen without /v1, the base_url lacks it.
_UNVERSIONED_ROOTS = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/models",
    "/audio",
    "/images",
    "/moderations",
    "/files",
    "/batches",
    "/messages",
)


def misrouted_hint(path: str) -> str | None:
    """What is likely wrong with a client's `base_url` when `path` shows it, else None."""
    for prefix, sdk, right in _DOUBLED_PREFIXES:
        if path.startswith(prefix):
            return (
                f"{path} repeats its API version: {sdk} adds it itself, so base_url must not "
                f"end in it; use base_url={right}"
            )
    if any(path == root or path.startswith(root + "/") for root in _UNVERSIONED_ROOTS):
        if path.startswith("/messages") and not _gemini_method(path):
            return (
                f"{path} lacks /v1: the Anthropic SDK adds /v1 itself, so use "
                "base_url=http://<gateway>:7680 and it will call /v1/messages"
            )
        if not _gemini_method(path):
            return (
                f"{path} lacks /v1: the OpenAI SDK appends paths to base_url, so it must end "
                "in /v1; use base_url=http://<gateway>:7680/v1"
            )
    return None


def get_provider(name: str) -> ProviderModule:
    """The module for a provider name (case-insensitive); ValueError names the valid ones."""
    try:
        return _MODULES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown provider {name!r}; use one of: {', '.join(PROVIDER_NAMES)}"
        ) from None
