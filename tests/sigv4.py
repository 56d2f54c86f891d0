"""Checking an AWS SigV4 signature the way AWS does, for the Bedrock tests.

The fake upstream records each request; `signature_error` recomputes the signature of a
recorded request with botocore's signer, from the keys the test expects, over exactly the
headers the request says it signed, and reports what does not match.
"""

from __future__ import annotations

import re

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.fakeupstream import Call

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def signature_error(
    call: Call,
    *,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None = None,
    region: str,
    service: str = "bedrock",
) -> str | None:
    """Why `call` is not signed by these keys for `region`, or None when it is."""
    found = _AUTHORIZATION.fullmatch(call.header("authorization") or "")
    if found is None:
        return f"no SigV4 Authorization header: {call.header('authorization')!r}"
    if found["key"] != access_key_id:
        return f"signed by access key {found['key']!r}"
    if (found["region"], found["service"]) != (region, service):
        return f"signed for {found['region']}/{found['service']}"
    if call.header("x-amz-security-token") != session_token:
        return "the session token does not match"
    names = found["signed"].split(";")
    headers = {name: call.header(name) or "" for name in names}
    target = call.raw_path + (f"?{call.query}" if call.query else "")
    request = AWSRequest(
        method=call.method, url=f"http://{headers.get('host', '')}{target}", data=call.body
    )
    for name, value in headers.items():
        request.headers[name] = value
    request.context["timestamp"] = call.header("x-amz-date")
    signer = SigV4Auth(
        Credentials(access_key_id, secret_access_key, session_token), service, region
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if expected != found["signature"]:
        return f"the signature does not verify (canonical request: {canonical!r})"
    return None
