"""docs/getting-started.md cannot rot: its examples run against a gateway, its SQL on the schema.

The guide's fenced blocks are found by their info string:

* ```` ```python title=NAME ```` runs as `python -c`, in a fresh interpreter, with the
  environment the guide tells readers to export (`MAJORDOMO_URL`, `MAJORDOMO_KEY`, provider
  keys) pointing at an in-process gateway in front of the fake upstream. `requires=MODULE`
  skips the block while MODULE is not installed; ```` ```python no-run ```` never runs.
* ```` ```bash title=NAME ```` runs the same way under bash; untitled bash blocks (starting
  the gateway, creating keys) are for the reader only.
* ```` ```sql title=NAME ```` runs on a database filled by the guide's own examples (plus a
  second key, an error, an unpriced model and rows from other days), and its result is
  checked: rows, non-negative numbers, spend columns adding up to the table's spend.
* Other languages (javascript, text) are shown, never run.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.docblocks import RUNNABLE_LANGUAGES, Block, parse_blocks
from tests.fakeupstream import FakeUpstream
from tests.harness import Gateway, create_key, running_gateway
from tests.pghelpers import PgAdmin

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "getting-started.md"
README = ROOT / "README.md"

KNOWN_LANGUAGES = {"bash", "python", "javascript", "sql", "text", "yaml"}
KNOWN_OPTIONS = {"title", "requires"}
KNOWN_FLAGS = {"no-run"}
# Upper bound for one example or the seeding run (an interpreter importing three SDKs on a
# busy machine); each normally takes a second or two.
RUN_TIMEOUT = 90
# The metadata every SDK example sends, so each row can be traced back to the guide.
USER_ID = "user_123"
SECOND_KEY_NAME = "second app"
UNPRICED_MODEL = "acme-finetune-7"


BLOCKS = parse_blocks(GUIDE.read_text(encoding="utf-8"))
# The README's "Using it" calls run the same way as the guide's examples.
README_EXAMPLES = [
    b for b in parse_blocks(README.read_text(encoding="utf-8")) if b.runs and b.language == "python"
]
EXAMPLES = [b for b in BLOCKS if b.runs and b.language in ("python", "bash")] + README_EXAMPLES
PYTHON_EXAMPLES = [b for b in EXAMPLES if b.language == "python"]
RECIPES = [b for b in BLOCKS if b.runs and b.language == "sql"]


def params(blocks: list[Block]) -> list[Any]:
    """One test per block, skipped while a module it `requires=` is missing."""
    return [
        pytest.param(
            b,
            id=b.title,
            marks=pytest.mark.skipif(
                b.missing_module is not None,
                reason=f"{b.title} needs the module {b.missing_module!r}, not installed",
            ),
        )
        for b in blocks
    ]


# ------------------------------------------------------------------------- the guide's form


def test_the_readme_shows_one_complete_call_per_sdk() -> None:
    assert [b.title for b in README_EXAMPLES] == [
        "readme-openai",
        "readme-anthropic",
        "readme-gemini",
    ]
    for block, key in zip(
        README_EXAMPLES, ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"), strict=True
    ):
        assert f'os.environ["{key}"]' in block.code, block  # the provider key it still needs


def test_every_block_is_understood() -> None:
    assert EXAMPLES
    assert RECIPES
    titles = [b.title for b in BLOCKS if b.title is not None]
    assert len(titles) == len(set(titles)), f"titles must be unique: {titles}"
    for block in BLOCKS:
        assert block.language in KNOWN_LANGUAGES, f"{block}: unknown language {block.language!r}"
        assert set(block.options) <= KNOWN_OPTIONS, f"{block}: unknown option {block.options}"
        assert block.flags <= KNOWN_FLAGS, f"{block}: unknown flag {set(block.flags)}"
        if block.language in ("python", "sql"):
            # Executed unless said otherwise, and the title names the test.
            assert block.runs or "no-run" in block.flags, f"{block}: add title=NAME or no-run"
        elif block.language not in RUNNABLE_LANGUAGES:
            assert block.title is None, f"{block}: {block.language} blocks never run"


def test_examples_read_the_gateway_and_key_from_the_environment() -> None:
    """Copy-paste friendly and testable: no address or key written into an example."""
    for block in PYTHON_EXAMPLES:
        assert 'os.environ.get("MAJORDOMO_URL", "http://localhost:7680")' in block.code, block
        assert 'os.environ["MAJORDOMO_KEY"]' in block.code, block
        assert "mdm_sk_" not in block.code, block
    for block in [b for b in BLOCKS if b.language == "javascript"]:
        assert 'process.env.MAJORDOMO_URL ?? "http://localhost:7680"' in block.code, block
        assert '"X-Majordomo-Key": process.env.MAJORDOMO_KEY' in block.code, block
        assert "baseURL:" in block.code
        assert "defaultHeaders:" in block.code


def test_the_guide_names_every_header_the_readme_documents() -> None:
    readme_headers = set(re.findall(r"`(X-[A-Za-z]+(?:-[A-Za-z]+)*(?:-\*)?)`", README.read_text()))
    assert {"X-Majordomo-Key", "X-Request-Id", "X-Majordomo-*"} <= readme_headers
    guide = GUIDE.read_text(encoding="utf-8")
    missing = sorted(h for h in readme_headers if f"`{h}" not in guide)
    assert not missing, f"docs/getting-started.md does not mention {missing}"


# ---------------------------------------------------------------------------------- running


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url) as gw:
        yield gw


def reader_env(gw: Gateway) -> dict[str, str]:
    """What the guide has the reader export, pointing at `gw`, and nothing that interferes."""
    vendors = ("MAJORDOMO_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(vendors)}
    env.update(
        MAJORDOMO_URL=gw.url,
        MAJORDOMO_KEY=gw.key,
        OPENAI_API_KEY="sk-test",
        ANTHROPIC_API_KEY="sk-ant-test",
        GEMINI_API_KEY="AIza-test",
        PYTHONIOENCODING="utf-8",
    )
    return env


async def run(command: list[str], env: dict[str, str], cwd: Path, stdin: bytes = b"") -> str:
    with trio.fail_after(RUN_TIMEOUT):
        done = await trio.run_process(
            command,
            stdin=stdin,
            env=env,
            cwd=cwd,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, f"{command[:2]} exited {done.returncode}:\n{stderr}"
    return done.stdout.decode("utf-8")


def command_for(block: Block) -> list[str]:
    if block.language == "python":
        return [sys.executable, "-c", block.code]
    return ["bash", "-eu", "-o", "pipefail", "-c", block.code]


def expected_provider(block: Block) -> str:
    if "from anthropic import" in block.code:
        return "anthropic"
    if "from google import genai" in block.code:
        return "gemini"
    return "openai"


def check_metadata_per_request(row: Any, out: str) -> None:
    assert json.loads(row["raw_metadata"]) == {
        "user-id": USER_ID,
        "environment": "production",
        "feature": "summarize",
        "provider-alias": "team-a",
    }
    assert row["provider_api_key_alias"] == "team-a"


def check_response_headers(row: Any, out: str) -> None:
    printed = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert printed["request id"] == str(row["id"])
    assert float(printed["gateway overhead (ms)"]) >= 0


def check_stream(row: Any, out: str) -> None:
    assert row["streamed"] is True


def check_agent(row: Any, out: str) -> None:
    assert row["request_path"] == "/v1/responses"
    assert json.loads(row["raw_metadata"])["feature"] == "concierge-agent"


ROW_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "metadata-per-request": check_metadata_per_request,
    "response-headers": check_response_headers,
    "openai-stream": check_stream,
    "openai-agents": check_agent,
}


@pytest.mark.parametrize("block", params(EXAMPLES))
async def test_example(block: Block, gateway: Gateway, fake: FakeUpstream, tmp_path: Path) -> None:
    """The example runs unchanged, makes one call, prints the answer, and leaves its row."""
    out = await run(command_for(block), reader_env(gateway), tmp_path)
    (row,) = await gateway.rows(1)
    (call,) = fake.calls
    assert call.header("x-majordomo-key") is None  # never forwarded upstream
    if block.language == "python":
        assert call.text in out
    else:  # curl prints the provider's JSON as it came
        assert json.loads(out)["choices"][0]["message"]["content"] == call.text
    assert row["status_code"] == 200
    assert row["provider"] == expected_provider(block)
    assert row["model"] == call.model
    assert row["majordomo_api_key_id"] == gateway.key_id
    assert json.loads(row["raw_metadata"])["user-id"] == USER_ID
    # The guide uses models with a known price, so the reader sees a cost at once.
    assert row["model_alias_found"] is True
    assert row["total_cost"] > 0
    assert block.title is not None
    if block.title in ROW_CHECKS:
        ROW_CHECKS[block.title](row, out)


# ------------------------------------------------------------------------------ SQL recipes

# Runs the guide's Python examples one after another in one interpreter (cheaper than one
# each); stdin: a JSON list of [title, code, MAJORDOMO_KEY].
_SEED_DRIVER = """
import json, os, sys
for title, code, key in json.load(sys.stdin):
    os.environ["MAJORDOMO_KEY"] = key
    exec(compile(code, title, "exec"), {"__name__": "__main__"})
"""


@dataclass(frozen=True)
class Seeded:
    total_cost: Decimal
    key_names: set[str]
    indexed_ids: set[uuid.UUID]


async def seed(gw: Gateway, pg: PgAdmin, cwd: Path) -> Seeded:
    """Fill the database as a reader would after following the guide, then some."""
    # `majordomo metadata activate user-id --key ID`, before the calls.
    await pg.afetch(
        "INSERT INTO llm_requests_metadata_keys (majordomo_api_key_id, key_name, is_active,"
        " activated_at) VALUES ($1, 'user-id', true, now())",
        gw.key_id,
    )
    second_key, _ = await trio.to_thread.run_sync(create_key, pg, SECOND_KEY_NAME)
    examples = [b for b in PYTHON_EXAMPLES if not b.missing_module]
    jobs = [[b.title, b.code, gw.key] for b in examples]
    jobs.append([examples[0].title, examples[0].code, second_key])
    await run(
        [sys.executable, "-c", _SEED_DRIVER],
        reader_env(gw),
        cwd,
        stdin=json.dumps(jobs).encode(),
    )
    # A provider error and a model without a price.
    headers = {"X-Majordomo-Key": gw.key, "Authorization": "Bearer sk-test"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers) as client:
        for model, extra in (("gpt-5-mini", {"X-Fake-Status": "429"}), (UNPRICED_MODEL, {})):
            await client.post(
                "/v1/chat/completions",
                headers=extra,
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            )
    rows = await gw.rows(len(jobs) + 2)
    # Two calls from three days ago, so that days differ.
    await pg.afetch(
        "UPDATE llm_requests SET requested_at = requested_at - interval '3 days',"
        " responded_at = responded_at - interval '3 days' WHERE id = ANY($1::uuid[])",
        [rows[0]["id"], rows[1]["id"]],
    )
    return Seeded(
        total_cost=sum((r["total_cost"] for r in rows), Decimal(0)),
        key_names={"test", SECOND_KEY_NAME},
        indexed_ids={
            r["id"]
            for r in rows
            if r["majordomo_api_key_id"] == gw.key_id
            and json.loads(r["raw_metadata"]).get("user-id") == USER_ID
        },
    )


def column(rows: list[Any], name: str) -> list[Any]:
    return [r[name] for r in rows]


def check_spend_by_day(rows: list[Any], seeded: Seeded) -> None:
    assert len(rows) == 2
    assert column(rows, "day") == sorted(column(rows, "day"))


def check_spend_by_key(rows: list[Any], seeded: Seeded) -> None:
    assert set(column(rows, "api_key")) == seeded.key_names


def check_spend_by_user(rows: list[Any], seeded: Seeded) -> None:
    assert USER_ID in column(rows, "app_user")
    assert None in column(rows, "app_user")  # the two calls sent without the header


def check_one_user_indexed(rows: list[Any], seeded: Seeded) -> None:
    assert set(column(rows, "id")) == seeded.indexed_ids


def check_cache_usage(rows: list[Any], seeded: Seeded) -> None:
    (anthropic,) = [r for r in rows if r["provider"] == "anthropic"]
    assert anthropic["cache_write_tokens"] > 0
    assert 0 < anthropic["cache_read_pct"] < 100


def check_errors_and_latency(rows: list[Any], seeded: Seeded) -> None:
    by_provider = {r["provider"]: r for r in rows}
    assert by_provider["openai"]["errors"] == 1
    assert 0 < by_provider["openai"]["error_pct"] < 100
    assert by_provider["anthropic"]["errors"] == 0


def check_latest_errors(rows: list[Any], seeded: Seeded) -> None:
    (error,) = rows
    assert error["status_code"] == 429
    assert error["error_message"]


def check_unpriced_models(rows: list[Any], seeded: Seeded) -> None:
    assert column(rows, "model") == [UNPRICED_MODEL]


RECIPE_CHECKS: dict[str, Callable[[list[Any], Seeded], None]] = {
    "spend-by-day": check_spend_by_day,
    "spend-by-key": check_spend_by_key,
    "spend-by-user": check_spend_by_user,
    "one-user-indexed": check_one_user_indexed,
    "cache-usage": check_cache_usage,
    "errors-and-latency": check_errors_and_latency,
    "latest-errors": check_latest_errors,
    "unpriced-models": check_unpriced_models,
}


@pytest.mark.parametrize("block", params(RECIPES))
async def test_sql_recipe(
    block: Block, gateway: Gateway, pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    seeded = await seed(gateway, pg, tmp_path)
    assert seeded.total_cost > 0
    rows = await pg.afetch(block.code)
    assert rows, f"{block} returned no rows"
    for row in rows:
        for name, value in row.items():
            if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
                assert value >= 0, f"{block}: {name} = {value}"
    if "spend_usd" in dict(rows[0]):
        # Spend recipes partition every call: their spend adds up to the table's, give or
        # take the rounding to 6 decimals.
        spend = sum(column(rows, "spend_usd"), Decimal(0))
        assert abs(spend - seeded.total_cost) <= Decimal("0.0000005") * len(rows), block
    assert block.title is not None
    if block.title in RECIPE_CHECKS:
        RECIPE_CHECKS[block.title](rows, seeded)
