"""Azure OpenAI: OpenAI's wire format at the deployment paths of one Azure resource.

`providers.azure.base_url` is the resource endpoint (`https://NAME.openai.azure.com`); there is
no default, and until it is set Azure paths get a 404 saying so. The `openai` SDK's
`AzureOpenAI` client calls `/openai/deployments/{deployment}/chat/completions?api-version=…`,
and the v1 API is `/openai/v1/…`; both are read exactly as OpenAI's (streams, usage, errors),
so this module declares its facts and reuses the OpenAI functions. The credential is the
`api-key` header (or an Entra `Authorization: Bearer` token, passed through untouched); a held
credential goes in `api-key`. The model is the one the answer names (the deployment's
underlying model), priced as OpenAI's.
"""

from __future__ import annotations

from majordomo.providers import openai

NAME = "azure"
BASE_URL = ""  # the resource endpoint: nothing sensible to default to
BASE_URL_HINT = "the resource endpoint, https://NAME.openai.azure.com; no /openai"
# The deployments run OpenAI's models at OpenAI's list prices.
PRICE_PROVIDER = "openai"
LLM_PRICES_VENDOR = "openai"
CREDENTIAL_HEADER = b"api-key"
CREDENTIAL_SCHEME = b""
# Where Azure's API lives under the endpoint.
PATH_PREFIXES = ("/openai/deployments/", "/openai/v1/")

# OpenAI's wire format, whole.
request_info = openai.request_info
usage_from_body = openai.usage_from_body
error_body = openai.error_body
StreamParser = openai.StreamParser
