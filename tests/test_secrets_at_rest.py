"""No secret a caller sent reaches the disk: spool, quarantine, rows, stored bodies, the log."""

from __future__ import annotations

import io
import json
import logging
import stat
from pathlib import Path

import httpx
import trio

from majordomo.logconfig import JsonFormatter, TextFormatter
from majordomo.spool import PENDING, QUARANTINE, Spool
from tests.fakeupstream import FakeUpstream
from tests.harness import running_gateway
from tests.netcut import PgRelay
from tests.pghelpers import PgAdmin
from tests.poll import wait_until

OPENAI_KEY = "sk-proj-secret-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-api03-secret-anthropic-42"
GEMINI_KEY = "AIzaSy-secret-gemini-key-987654"
STRAY_KEY = "mdm_sk_" + "S" * 43  # a Majordomo key sent where it does not belong
PROXY_KEY = "mdm_pk_" + "P" * 43


def secrets_in(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


async def test_spool_rows_and_bodies_hold_no_secret(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        async with running_gateway(
            pg,
            fake.base_url,
            postgres=relay.settings,
            spool_dir=str(spool_dir),
            settings={"logging": {"body_storage": "postgres"}},
        ) as gw:
            secrets = [gw.key, OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY, STRAY_KEY, PROXY_KEY]
            base = {"X-Majordomo-Key": gw.key, "X-Majordomo-Note": f"copied {STRAY_KEY}"}
            async with httpx.AsyncClient(base_url=gw.url, headers=base, timeout=30) as c:
                # Every request passes the key cache first, then the database goes away.
                await c.get("/v1/models", headers={"Authorization": f"Bearer {OPENAI_KEY}"})
                relay.cut()
                await c.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {OPENAI_KEY}"},
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": f"use {PROXY_KEY} {STRAY_KEY}"}],
                    },
                )
                refused = await c.post(
                    "/v1/chat/completions",
                    headers={
                        "Authorization": f"Bearer {OPENAI_KEY}",
                        "X-Fake-Status": "401",
                        "X-Fake-Message": f"Incorrect API key provided: {OPENAI_KEY}",
                    },
                    json={"model": "gpt-4o-mini", "messages": []},
                )
                assert refused.status_code == 401
                await c.post(
                    "/v1/messages",
                    headers={"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
                    json={"model": "claude-x", "max_tokens": 5, "messages": []},
                )
                await c.post(
                    f"/v1beta/models/gemini-2.5-flash:generateContent?key={GEMINI_KEY}",
                    json={"contents": [{"parts": [{"text": "hi"}]}]},
                )
                await c.post(
                    "/v1beta/models/gemini-2.5-flash:generateContent",
                    headers={"x-goog-api-key": GEMINI_KEY},
                    json={"contents": [{"parts": [{"text": "hi"}]}]},
                )
                # The records went to the spool while the database was away.
                pending = spool_dir / PENDING
                await wait_until(
                    lambda: pending.exists() and pending.read_bytes().count(b"\n") >= 5,
                    deadline=30,
                    what="5 records spooled",
                )
                spooled = (spool_dir / PENDING).read_text()
                for line in spooled.splitlines():
                    assert secrets_in(line, secrets) == [], line
                assert stat.S_IMODE((spool_dir / PENDING).stat().st_mode) == 0o600
                assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
                assert "[REDACTED]" in spooled
                relay.restore()
                rows = await gw.rows(6, deadline=60)
        nursery.cancel_scope.cancel()
    for row in rows:
        stored = json.dumps({k: str(v) for k, v in dict(row).items()})
        assert secrets_in(stored, secrets) == [], row["request_path"]
    assert any(r["request_body"] and "[REDACTED]" in r["request_body"] for r in rows)
    notes = {r["raw_metadata"] for r in rows}
    assert all("[REDACTED]" in note and STRAY_KEY not in note for note in notes)
    (error,) = [r for r in rows if r["status_code"] == 401]
    assert error["error_message"] == "Incorrect API key provided: [REDACTED]"


def test_the_quarantine_file_is_private_and_redacted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (tmp_path / "spool").mkdir(mode=0o755)
    replay = tmp_path / "spool" / "replay-000000-x.jsonl"
    replay.write_text(f'{{"not": "a record", "key": "{STRAY_KEY}"}}\n')
    assert list(spool.read(replay, 10)) == []
    quarantine = tmp_path / "spool" / QUARANTINE
    assert stat.S_IMODE(quarantine.stat().st_mode) == 0o600
    # A line that does not parse is kept for a person, as it was: but never a key in it.
    assert STRAY_KEY not in quarantine.read_text()


def test_log_lines_never_carry_a_majordomo_or_proxy_key() -> None:
    record = logging.LogRecord(
        "majordomo.proxy", logging.WARNING, __file__, 1, "refused %s", (STRAY_KEY,), None
    )
    record.detail = PROXY_KEY
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert STRAY_KEY not in line
        assert PROXY_KEY not in line
        assert "[REDACTED]" in line


def test_a_stream_handler_scrubs_too() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.scrub")
    log.addHandler(handler)
    try:
        log.error("key was %s", STRAY_KEY)
    finally:
        log.removeHandler(handler)
    assert STRAY_KEY not in out.getvalue()
