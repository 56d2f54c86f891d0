"""Signing a request for Amazon Bedrock, which the caller's own signature cannot be.

A SigV4 signature covers the host it was made for, so the one boto3 made for the gateway
never verifies at AWS. The gateway signs instead, with the credential it holds for the caller
(`majordomo keys set-provider ID bedrock`, or `providers.bedrock.api_key`), which is one of:

* `ACCESS_KEY_ID:SECRET_ACCESS_KEY` or `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`: the
  request is signed with botocore's own SigV4 signer (service `bedrock`, the configured
  `providers.bedrock.region`) over the exact URL and body that go upstream;
* anything else is a Bedrock API key, sent as `Authorization: Bearer …` (no signing).

Only `host`, `content-type` and the `x-amz-*` headers the signer adds are signed: every other
header may be changed by the HTTP client on the way without breaking the signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from majordomo.proxy.headers import RawHeaders

SERVICE = "bedrock"
# What the caller's own signature left that must not go upstream beside ours.
_CALLER_SIGNATURE = frozenset(
    {b"authorization", b"x-amz-date", b"x-amz-security-token", b"x-amz-content-sha256"}
)
_SIGNED = (b"content-type",)


@dataclass(frozen=True, slots=True)
class AwsKeys:
    """An AWS access key (and session token, for temporary credentials)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never the secret, whatever prints this
        return f"AwsKeys(access_key_id={self.access_key_id[:4]}…)"


def aws_keys(secret: str) -> AwsKeys | None:
    """The access key a held Bedrock credential holds, or None for a Bedrock API key."""
    parts = secret.strip().split(":")
    if len(parts) not in (2, 3) or not all(parts):
        return None
    return AwsKeys(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def without_signature(headers: RawHeaders) -> RawHeaders:
    """`headers` without the caller's SigV4 signature (and its credential headers)."""
    return [(name, value) for name, value in headers if name not in _CALLER_SIGNATURE]


def sigv4_signed(
    headers: RawHeaders, *, method: str, url: str, body: bytes, keys: AwsKeys, region: str
) -> RawHeaders:
    """`headers` without the caller's signature, with one of ours for `url` and `body`."""
    # botocore is imported on first use: a gateway that never signs does not pay its memory.
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    kept = without_signature(headers)
    signed = {
        name.decode("latin-1"): value.decode("latin-1") for name, value in kept if name in _SIGNED
    }
    request = AWSRequest(method=method, url=url, data=body, headers=signed)
    credentials = Credentials(keys.access_key_id, keys.secret_access_key, keys.session_token)
    SigV4Auth(credentials, SERVICE, region).add_auth(request)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        value = request.headers.get(name)
        if value is not None:
            kept.append((name.lower().encode(), value.encode("latin-1")))
    return kept


def is_sigv4(authorization: bytes | None) -> bool:
    """Whether an `Authorization` value is a SigV4 signature (the caller's, made for us)."""
    return authorization is not None and authorization.startswith(b"AWS4-HMAC-SHA256")
