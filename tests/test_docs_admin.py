"""docs/admin-api.md runs as a reader would run it: every block, in order, in one shell,
against an in-process gateway and the CLI on the same database."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

from tests.docblocks import outputs, parse_blocks, script
from tests.fakeupstream import FakeUpstream
from tests.harness import TEST_ENCRYPTION_KEY, TEST_JWT_SECRET, running_gateway
from tests.pghelpers import PgAdmin

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "admin-api.md"
BLOCKS = parse_blocks(GUIDE.read_text(encoding="utf-8"))


def json_lines(text: str) -> list[Any]:
    """Each JSON document curl printed, in order (curl ends none with a newline)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := _skip_space(text, at)) < len(text):
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


async def test_the_walkthrough(pg: PgAdmin, fake: FakeUpstream, tmp_path: Path) -> None:
    async with running_gateway(pg, fake.base_url) as gw:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAJORDOMO_", "OPENAI_"))}
        env.update(pg.env)
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            MAJORDOMO_URL=gw.url,
            MAJORDOMO_KEY=gw.key,
            MAJORDOMO_SECRETS_ENCRYPTION_KEY=TEST_ENCRYPTION_KEY,
            MAJORDOMO_JWT_SECRET=TEST_JWT_SECRET,
            ADMIN_PASSWORD="the first admin's password",
            OPENAI_API_KEY="sk-proj-docs-admin-credential-4321",
        )
        with trio.fail_after(120):
            done = await trio.run_process(
                ["bash", "-c", script(BLOCKS)],
                env=env,
                cwd=tmp_path,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode() + out
    printed = outputs(out)
    assert json_lines(printed["log-in"])[0]["username"] == "admin"
    keys = json_lines(printed["create-a-key"])
    assert sorted(k["name"] for k in keys[0]) == ["reporting", "test"]  # an admin sees all
    renamed, revoked = json_lines(printed["rename-and-revoke-a-key"])
    assert renamed["name"] == "reporting (old)"
    assert revoked["is_active"] is False
    (mapping,) = json_lines(printed["a-proxy-key-with-a-credential"])
    assert mapping["key_hint"] == "sk-…4321"
    mine, listed = json_lines(printed["self-service"])
    assert mine["majordomo_api_key_id"] == str(gw.key_id)
    assert [p["name"] for p in listed] == ["my laptop"]
    usage, log = json_lines(printed["usage-and-the-request-log"])
    assert usage["total"]["requests"] == 1
    assert usage["groups"][0]["group"] == "gpt-4o-mini"
    assert [r["raw_metadata"] for r in log["requests"]] == [{"team": "search"}]
    alice, audit = json_lines(printed["users-and-audit"])
    assert alice["role"] == "member"
    assert [e["action"] for e in audit][:1] == ["user.create"]
    assert "sk-proj-docs-admin-credential-4321" not in out
