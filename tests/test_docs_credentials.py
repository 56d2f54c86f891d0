"""docs/credentials.md runs as a reader would run it: every block, in order, in one shell,
against an in-process gateway in front of the fake upstream and the CLI on the same database."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import trio

from tests.docblocks import outputs, parse_blocks, script
from tests.fakeupstream import FakeUpstream
from tests.harness import TEST_ENCRYPTION_KEY, running_gateway
from tests.pghelpers import PgAdmin

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "credentials.md"
BLOCKS = parse_blocks(GUIDE.read_text(encoding="utf-8"))
RUN_TIMEOUT = 240  # a dozen CLI commands and six interpreters importing an SDK each
SECRETS = {
    "OPENAI_API_KEY": "sk-proj-docs-openai-credential-0001",
    "ANTHROPIC_API_KEY": "sk-ant-api03-docs-anthropic-credential",
    "GEMINI_API_KEY": "AIzaSyDocs-gemini-credential-0003",
}


def test_every_block_runs_or_says_why_not() -> None:
    titles = [b.title for b in BLOCKS if b.runs]
    assert len(titles) == len(set(titles)) >= 10
    assert all(b.language == "bash" and "no-run" in b.flags for b in BLOCKS if not b.runs)


async def test_the_walkthrough(pg: PgAdmin, fake: FakeUpstream, tmp_path: Path) -> None:
    async with running_gateway(pg, fake.base_url) as gw:
        bin_dir = Path(sys.executable).parent  # `majordomo` and a `python3` with the SDKs
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MAJORDOMO_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_"))
        }
        env.update(pg.env)
        env.update(SECRETS)
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            MAJORDOMO_URL=gw.url,
            MAJORDOMO_KEY=gw.key,
            MAJORDOMO_KEY_ID=str(gw.key_id),
            MAJORDOMO_SECRETS_ENCRYPTION_KEY=TEST_ENCRYPTION_KEY,
            PYTHONIOENCODING="utf-8",
        )
        with trio.fail_after(RUN_TIMEOUT):
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
        rows = await gw.rows(5)
    printed = outputs(out)

    # Five calls reached the provider, each with the real credential in its native place.
    native = [("authorization", "Bearer {}"), ("x-api-key", "{}"), ("x-goog-api-key", "{}")]
    sent = [
        ("OPENAI_API_KEY", 0), ("ANTHROPIC_API_KEY", 1), ("GEMINI_API_KEY", 2),
        ("OPENAI_API_KEY", 0), ("ANTHROPIC_API_KEY", 1),
    ]  # fmt: skip
    assert len(fake.calls) == len(sent)
    for call, (secret, place) in zip(fake.calls, sent, strict=True):
        name, shape = native[place]
        assert call.header(name) == shape.format(SECRETS[secret])
        assert "mdm_" not in " ".join(f"{k}: {v}" for k, v in call.headers) + call.query
        assert call.text in out
    assert [r["proxy_key_id"] is not None for r in rows] == [False] * 3 + [True] * 2
    assert [r["provider_api_key_hash"] for r in rows] == [
        hashlib.sha256(SECRETS[s].encode()).hexdigest() for s, _ in sent
    ]

    # What the reader sees along the way: hints only, the rotation, the refusal, the reseal.
    assert "sk-…0001" in printed["hold-for-the-majordomo-key"]
    assert SECRETS["OPENAI_API_KEY"] not in out
    assert "sk-…0002" in printed["rotate-a-provider-key"]
    assert printed["a-revoked-proxy-key-is-refused"].startswith("proxy key ")
    assert "has been revoked" in printed["a-revoked-proxy-key-is-refused"]
    assert re.match(
        r"Re-sealed 5 credential\(s\) with key [0-9a-f]{16}\.", printed["rotate-the-encryption-key"]
    )
