"""The providers Majordomo fronts, one module each, and how a request path picks one.

Every module (`openai`, `anthropic`, `gemini`) exposes the same pure functions, described by
`ProviderModule`: `request_info`, `usage_from_body`, `error_body` and a `StreamParser` class.
Adding a provider is one module, one fixture folder under `tests/fixtures/` and one line in
`_MODULES`; there is no plugin machinery.

Routing by path (`detect_provider`), when `X-Majordomo-Provider` does not say:

* `/v1beta/...` and `/v1alpha/...` belong to Gemini alone;
* under `/v1/`, a path ending in a Gemini method (`...:generateContent`,
  `:streamGenerateContent`, `:countTokens`, `:embedContent`, `:batchEmbedContents`) is Gemini,
  since google-genai 3.x calls `/v1/`. Other colons stay OpenAI's: fine-tuned model ids
  contain them (`/v1/models/ft:gpt-4o-mini:acme::abc123`);
* `/v1/messages` and everything below it is Anthropic;
* any other `/v1/...` path is OpenAI;
* anything else is unknown (None): the caller answers 404 rather than guess.
"""

from __future__ import annotations

from majordomo.providers import anthropic, gemini, openai
from majordomo.providers.common import ProviderModule, RequestInfo, StreamParserLike

__all__ = [
    "PROVIDER_NAMES",
    "ProviderModule",
    "RequestInfo",
    "StreamParserLike",
    "detect_provider",
    "get_provider",
]

PROVIDER_NAMES = ("openai", "anthropic", "gemini")

_MODULES: dict[str, ProviderModule] = {
    "openai": openai,
    "anthropic": anthropic,
    "gemini": gemini,
}

_GEMINI_ONLY_PREFIXES = ("/v1beta/", "/v1alpha/")
_GEMINI_METHODS = frozenset(
    {
        "generateContent",
        "streamGenerateContent",
        "countTokens",
        "embedContent",
        "batchEmbedContents",
    }
)


def detect_provider(path: str) -> str | None:
    """The provider a request path belongs to, or None when no provider serves it."""
    if path.startswith(_GEMINI_ONLY_PREFIXES):
        return "gemini"
    if not path.startswith("/v1/"):
        return None
    if path.rpartition(":")[2] in _GEMINI_METHODS:
        return "gemini"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    return "openai"


def get_provider(name: str) -> ProviderModule:
    """The module for a provider name (case-insensitive); ValueError names the valid ones."""
    try:
        return _MODULES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown provider {name!r}; use one of: {', '.join(PROVIDER_NAMES)}"
        ) from None
