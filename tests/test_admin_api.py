"""The admin API and the self-service routes over real HTTP: the Go gateway's paths and JSON
shapes, JSON errors everywhere, members confined to their own keys, audit, throttling."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio

from majordomo.passwords import hash_password
from tests.cli import majordomo
from tests.fakeupstream import FakeUpstream
from tests.harness import TEST_JWT_SECRET, Gateway, running_gateway
from tests.pghelpers import PgAdmin

PASSWORD = "correct horse battery"
ADMIN = "/api/v1/admin"
HASH = hash_password(PASSWORD)  # once: argon2id takes a while on purpose
GO_KEY_FIELDS = {
    "id", "name", "description", "user_id", "is_active", "created_at", "revoked_at",
    "last_used_at", "request_count",
}  # fmt: skip
GO_PROXY_KEY_FIELDS = {
    "id", "name", "description", "majordomo_api_key_id", "is_active", "created_at",
    "revoked_at", "last_used_at", "request_count",
}  # fmt: skip


async def add_user(pg: PgAdmin, username: str, role: str = "member") -> uuid.UUID:
    user_id: uuid.UUID = await pg.afetchval(
        "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) RETURNING id",
        username,
        HASH,
        role,
    )
    return user_id


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url) as gw:
        yield gw


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as c:
        yield c


async def token_for(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    response = await client.post(
        f"{ADMIN}/login", json={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type"}
    return str(error["message"])


async def test_login_gives_a_token_and_the_user(client: httpx.AsyncClient, pg: PgAdmin) -> None:
    user_id = await add_user(pg, "alice")
    response = await client.post(f"{ADMIN}/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    claims = jwt.decode(body["token"], TEST_JWT_SECRET, algorithms=["HS256"])
    assert claims["user_id"] == claims["sub"] == str(user_id)
    assert claims["username"] == "alice"
    assert claims["exp"] - claims["iat"] == 86400
    assert body["user"]["username"] == "alice"
    assert body["user"]["last_login_at"] is not None
    assert {"id", "username", "is_active", "created_at"} <= set(body["user"])
    me = await client.get(f"{ADMIN}/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.json()["id"] == str(user_id)


async def test_a_go_gateways_bcrypt_user_logs_in_and_is_moved_to_argon2id(
    client: httpx.AsyncClient, pg: PgAdmin
) -> None:
    import bcrypt

    go_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    await pg.afetch("INSERT INTO users (username, password_hash) VALUES ('from-go', $1)", go_hash)
    await token_for(client, "from-go")
    assert (await pg.afetchval("SELECT password_hash FROM users")).startswith("$argon2id$")
    await token_for(client, "from-go")  # and the new hash verifies


async def test_wrong_credentials_and_bad_tokens_are_401_in_json(
    client: httpx.AsyncClient, pg: PgAdmin
) -> None:
    user_id = await add_user(pg, "alice")
    wrong = await client.post(f"{ADMIN}/login", json={"username": "alice", "password": "nope"})
    assert error_of(wrong, 401) == "wrong username or password"
    nobody = await client.post(f"{ADMIN}/login", json={"username": "nobody", "password": "x"})
    assert error_of(nobody, 401) == "wrong username or password"  # no hint who exists
    assert "missing Authorization" in error_of(await client.get(f"{ADMIN}/me"), 401)
    now = int(time.time())
    forged = jwt.encode({"sub": str(user_id), "exp": now + 60}, "another secret" * 4, "HS256")
    expired = jwt.encode({"sub": str(user_id), "exp": now - 1}, TEST_JWT_SECRET, "HS256")
    for token, message in ((forged, "not valid"), (expired, "expired"), ("garbage", "not valid")):
        response = await client.get(f"{ADMIN}/me", headers={"Authorization": f"Bearer {token}"})
        assert message in error_of(response, 401)


async def test_a_disabled_users_token_stops_working_at_once(
    client: httpx.AsyncClient, pg: PgAdmin
) -> None:
    user_id = await add_user(pg, "alice")
    headers = await token_for(client, "alice")
    assert (await client.get(f"{ADMIN}/me", headers=headers)).status_code == 200
    await pg.afetch("UPDATE users SET is_active = false WHERE id = $1", user_id)
    assert error_of(await client.get(f"{ADMIN}/me", headers=headers), 401) == (
        "this user has been disabled"
    )
    login = await client.post(f"{ADMIN}/login", json={"username": "alice", "password": PASSWORD})
    assert error_of(login, 401) == "wrong username or password"


async def test_failed_logins_are_throttled_per_username(
    client: httpx.AsyncClient, pg: PgAdmin
) -> None:
    await add_user(pg, "alice")
    for _ in range(5):
        wrong = {"username": "alice", "password": "wrong password"}
        assert (await client.post(f"{ADMIN}/login", json=wrong)).status_code == 401
    right = {"username": "alice", "password": PASSWORD}
    throttled = await client.post(f"{ADMIN}/login", json=right)
    assert "too many failed logins" in error_of(throttled, 429)
    assert 1 <= int(throttled.headers["retry-after"]) <= 900
    await add_user(pg, "bob")  # another user from the same address is not held up yet
    assert (
        await client.post(f"{ADMIN}/login", json={"username": "bob", "password": PASSWORD})
    ).status_code == 200


async def test_a_go_client_round_trips_a_key(
    client: httpx.AsyncClient, pg: PgAdmin, gateway: Gateway
) -> None:
    alice = await add_user(pg, "alice")
    headers = await token_for(client, "alice")
    created = await client.post(
        f"{ADMIN}/api-keys", headers=headers, json={"name": "ci", "description": "for CI"}
    )
    assert created.status_code == 201
    key = created.json()
    assert set(key) == GO_KEY_FIELDS | {"key", "limits"}  # limits: ours, beyond the Go fields
    assert key["key"].startswith("mdm_sk_")
    assert key["user_id"] == str(alice)
    # The new key works at once, through the proxy.
    async with httpx.AsyncClient(base_url=gateway.url) as proxy:
        answer = await proxy.post(
            "/v1/chat/completions",
            headers={"X-Majordomo-Key": key["key"]},
            json={"model": "gpt-4o-mini", "messages": []},
        )
    assert answer.status_code == 200
    got = (await client.get(f"{ADMIN}/api-keys/{key['id']}", headers=headers)).json()
    assert set(got) == GO_KEY_FIELDS | {"limits", "windows"}
    assert "key" not in got
    updated = await client.put(
        f"{ADMIN}/api-keys/{key['id']}", headers=headers, json={"name": "ci-2"}
    )
    assert (updated.json()["name"], updated.json()["description"]) == ("ci-2", "for CI")
    listed = (await client.get(f"{ADMIN}/api-keys", headers=headers)).json()
    assert [k["id"] for k in listed] == [key["id"]]  # not the harness's key: not alice's
    revoked = await client.delete(f"{ADMIN}/api-keys/{key['id']}", headers=headers)
    assert revoked.json()["is_active"] is False
    again = await client.delete(f"{ADMIN}/api-keys/{key['id']}", headers=headers)
    assert "already revoked" in error_of(again, 409)


async def test_admins_set_limits_members_only_see_them(
    client: httpx.AsyncClient, pg: PgAdmin, gateway: Gateway
) -> None:
    await add_user(pg, "alice")
    await add_user(pg, "root", role="admin")
    alice_h, root_h = [await token_for(client, u) for u in ("alice", "root")]
    key = (await client.post(f"{ADMIN}/api-keys", headers=alice_h, json={"name": "a"})).json()
    path = f"{ADMIN}/api-keys/{key['id']}"
    limits = {"budget_usd": 25, "budget_period": "month", "rpm": 600}
    refused = await client.put(path, headers=alice_h, json={"limits": limits})
    assert error_of(refused, 403) == "only an admin sets a key's limits"
    updated = await client.put(path, headers=root_h, json={"limits": limits})
    assert updated.json()["limits"] == {**limits, "budget_usd": 25.0, "tpm": None}
    # Fields left out keep their limit; null clears one.
    again = await client.put(path, headers=root_h, json={"limits": {"rpm": None, "tpm": 1000}})
    assert again.status_code == 200, again.text
    assert again.json()["limits"] == {
        "budget_usd": 25.0,
        "budget_period": "month",
        "rpm": None,
        "tpm": 1000,
    }
    got = (await client.get(path, headers=alice_h)).json()
    assert [(w["limit"], w["used"]) for w in got["windows"]] == [("tpm", 0), ("budget_usd", 0.0)]
    assert got["windows"][1]["resets_at"].endswith("-01T00:00:00+00:00")
    bad = await client.put(path, headers=root_h, json={"limits": {"rpm": 0}})
    assert "whole number from 1 to 2147483647" in error_of(bad, 400)
    audit = await pg.afetchval(
        "SELECT details FROM admin_audit WHERE action = 'api_key.update' ORDER BY at DESC LIMIT 1"
    )
    assert '"tpm": 1000' in audit


async def test_members_see_only_their_keys_admins_see_all(
    client: httpx.AsyncClient, pg: PgAdmin, gateway: Gateway
) -> None:
    await add_user(pg, "alice")
    bob = await add_user(pg, "bob")
    await add_user(pg, "root", role="admin")
    alice_h, bob_h, root_h = [await token_for(client, u) for u in ("alice", "bob", "root")]
    bobs = (await client.post(f"{ADMIN}/api-keys", headers=bob_h, json={"name": "b"})).json()
    for method, path in [
        ("GET", f"{ADMIN}/api-keys/{bobs['id']}"),
        ("PUT", f"{ADMIN}/api-keys/{bobs['id']}"),
        ("DELETE", f"{ADMIN}/api-keys/{bobs['id']}"),
        ("GET", f"{ADMIN}/api-keys/{bobs['id']}/proxy-keys"),
        ("GET", f"{ADMIN}/api-keys/{bobs['id']}/providers"),
    ]:
        response = await client.request(method, path, headers=alice_h, json={"name": "x"})
        assert error_of(response, 403) == f"key {bobs['id']} belongs to another user"
    assert (await client.get(f"{ADMIN}/api-keys", headers=alice_h)).json() == []
    everything = (await client.get(f"{ADMIN}/api-keys", headers=root_h)).json()
    assert {k["id"] for k in everything} == {bobs["id"], str(gateway.key_id)}
    only_bob = await client.get(f"{ADMIN}/api-keys", headers=root_h, params={"user_id": str(bob)})
    assert [k["id"] for k in only_bob.json()] == [bobs["id"]]
    assert (await client.get(f"{ADMIN}/users", headers=alice_h)).status_code == 403


async def test_proxy_keys_and_held_credentials_under_a_key(
    client: httpx.AsyncClient, pg: PgAdmin
) -> None:
    await add_user(pg, "alice")
    headers = await token_for(client, "alice")
    key = (await client.post(f"{ADMIN}/api-keys", headers=headers, json={"name": "k"})).json()
    base = f"{ADMIN}/api-keys/{key['id']}/proxy-keys"
    created = await client.post(base, headers=headers, json={"name": "customer-a"})
    assert created.status_code == 201
    proxy_key = created.json()
    assert set(proxy_key) == GO_PROXY_KEY_FIELDS | {"key", "limits"}  # limits: ours
    assert proxy_key["key"].startswith("mdm_pk_")
    assert [p["id"] for p in (await client.get(base, headers=headers)).json()] == [proxy_key["id"]]
    one = f"{base}/{proxy_key['id']}"
    assert (await client.get(one, headers=headers)).json()["name"] == "customer-a"
    secret = "sk-proj-api-held-credential-9876"
    mapped = await client.put(f"{one}/providers/openai", headers=headers, json={"api_key": secret})
    assert mapped.status_code == 200
    assert set(mapped.json()) == {
        "id", "proxy_key_id", "provider", "key_hint", "created_at", "updated_at"
    }  # fmt: skip
    listed = (await client.get(f"{one}/providers", headers=headers)).json()
    assert [(m["provider"], m["key_hint"]) for m in listed] == [("openai", "sk-…9876")]
    assert secret not in str(await pg.afetch("SELECT * FROM proxy_key_provider_mappings"))
    bad = await client.put(f"{one}/providers/mistral", headers=headers, json={"api_key": secret})
    assert "'mistral' is not a provider" in error_of(bad, 400)
    removed = await client.delete(f"{one}/providers/openai", headers=headers)
    assert removed.status_code == 200
    assert (await client.get(f"{one}/providers", headers=headers)).json() == []
    assert (await client.delete(one, headers=headers)).json()["is_active"] is False
    stranger = f"{base}/{uuid.uuid4()}"
    assert "no proxy key with id" in error_of(await client.get(stranger, headers=headers), 404)


async def test_self_service_routes_use_the_majordomo_key(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    headers = {"X-Majordomo-Key": gateway.key}
    created = await client.post("/api/v1/proxy-keys", headers=headers, json={"name": "mine"})
    assert created.status_code == 201
    proxy_key = created.json()
    assert proxy_key["majordomo_api_key_id"] == str(gateway.key_id)
    one = f"/api/v1/proxy-keys/{proxy_key['id']}"
    assert (await client.get("/api/v1/proxy-keys", headers=headers)).json()[0]["id"] == proxy_key[
        "id"
    ]
    put = await client.put(
        f"{one}/providers/anthropic", headers=headers, json={"api_key": "sk-ant-self-0001"}
    )
    assert put.json()["key_hint"] == "sk-…0001"
    assert (await client.delete(one, headers=headers)).json()["is_active"] is False
    assert "missing X-Majordomo-Key" in error_of(await client.get("/api/v1/proxy-keys"), 401)


async def test_users_are_managed_by_admins_and_every_change_is_audited(
    client: httpx.AsyncClient, pg: PgAdmin
) -> None:
    await add_user(pg, "root", role="admin")
    headers = await token_for(client, "root")
    created = await client.post(
        f"{ADMIN}/users", headers=headers, json={"username": "carol", "password": PASSWORD}
    )
    assert created.status_code == 201
    carol = created.json()
    assert carol["role"] == "member"
    duplicate = await client.post(
        f"{ADMIN}/users", headers=headers, json={"username": "carol", "password": PASSWORD}
    )
    assert "already exists" in error_of(duplicate, 409)
    weak = await client.post(
        f"{ADMIN}/users", headers=headers, json={"username": "d", "password": "short"}
    )
    assert "at least 10 characters" in error_of(weak, 400)
    promoted = await client.put(
        f"{ADMIN}/users/{carol['id']}", headers=headers, json={"role": "admin"}
    )
    assert promoted.json()["role"] == "admin"
    disabled = await client.put(
        f"{ADMIN}/users/{carol['id']}", headers=headers, json={"is_active": False}
    )
    assert disabled.json()["is_active"] is False
    listed = (await client.get(f"{ADMIN}/users", headers=headers)).json()
    assert sorted(u["username"] for u in listed) == ["carol", "root"]
    audit = (await client.get(f"{ADMIN}/audit", headers=headers)).json()
    assert [(e["actor"], e["action"]) for e in audit] == [
        ("root", "user.update"),
        ("root", "user.update"),
        ("root", "user.create"),
        ("root", "user.login"),
    ]
    assert audit[0]["target_id"] == carol["id"]
    assert audit[0]["details"] == {"is_active": False}
    assert audit[0]["client_address"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", f"{ADMIN}/api-keys", {}, 400, "'name' is required"),
        ("POST", f"{ADMIN}/api-keys", {"name": 7}, 400, "'name' must be a string"),
        ("POST", f"{ADMIN}/api-keys", [1], 400, "must be a JSON object"),
        ("GET", f"{ADMIN}/api-keys/not-a-uuid", None, 400, "is not a key id"),
        ("GET", f"{ADMIN}/api-keys/{uuid.uuid4()}", None, 404, "no key with id"),
        ("PUT", f"{ADMIN}/users/{uuid.uuid4()}", {"role": "member"}, 403, "only admins"),
        ("GET", f"{ADMIN}/nothing-here", None, 404, "no route GET"),
        ("PATCH", f"{ADMIN}/me", {}, 405, "PATCH is not allowed"),
        ("POST", f"{ADMIN}/api-keys", {"name": "x" * 70_000}, 413, "the body is over"),
    ],
)
async def test_bad_requests_get_clear_json_errors(
    client: httpx.AsyncClient,
    pg: PgAdmin,
    method: str,
    path: str,
    body: Any,
    status: int,
    message: str,
) -> None:
    await add_user(pg, "alice")
    headers = await token_for(client, "alice")
    response = await client.request(method, path, headers=headers, json=body)
    assert message in error_of(response, status)


async def test_not_json_is_a_400(client: httpx.AsyncClient, pg: PgAdmin) -> None:
    await add_user(pg, "alice")
    headers = {**await token_for(client, "alice"), "content-type": "application/json"}
    response = await client.post(f"{ADMIN}/api-keys", headers=headers, content=b"{nope")
    assert error_of(response, 400) == "the body is not valid JSON"


async def test_openapi_lists_exactly_the_routes_served(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    spec = (await client.get("/api/v1/openapi.json")).json()
    listed = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    from majordomo.admin import ROUTES

    assert listed == {(r.method, r.path) for r in ROUTES}
    # Every listed route answers with JSON (401/404/400 without credentials), never a 405 or
    # an HTML page: it exists.
    for method, path in sorted(listed):
        concrete = path.replace("{provider}", "openai")
        for name in ("{id}", "{pk_id}"):
            concrete = concrete.replace(name, str(uuid.uuid4()))
        response = await client.request(method, concrete, json={})
        assert response.status_code not in (405, 500), (method, path)
        assert response.headers["content-type"] == "application/json", (method, path)


@pytest.mark.parametrize("by", ["model", "key", "day", "meta:user-id"])
async def test_usage_is_the_clis_report(
    client: httpx.AsyncClient, pg: PgAdmin, gateway: Gateway, tmp_path: Path, by: str
) -> None:
    await add_user(pg, "root", role="admin")
    headers = await token_for(client, "root")
    async with httpx.AsyncClient(base_url=gateway.url) as proxy:
        for n, model in enumerate(["gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]):
            await proxy.post(
                "/v1/chat/completions",
                headers={"X-Majordomo-Key": gateway.key, "X-Majordomo-User-Id": f"u{n % 2}"},
                json={"model": model, "messages": []},
            )
    await gateway.rows(3)
    window = {"since": "2020-01-01", "until": "2100-01-01", "by": by}
    api = await client.get(f"{ADMIN}/usage", headers=headers, params=window)
    assert api.status_code == 200, api.text
    cli = await trio.to_thread.run_sync(
        lambda: majordomo(
            "usage",
            "--json",
            "--since",
            window["since"],
            "--until",
            window["until"],
            "--by",
            by,
            env=pg.env,
            cwd=tmp_path,
        )
    )
    assert cli.code == 0, cli.err
    assert api.json() == cli.json()
    assert api.json()["total"]["requests"] == 3
    # A member sees only their own requests: none here.
    await add_user(pg, "alice")
    mine = await client.get(
        f"{ADMIN}/usage", headers=await token_for(client, "alice"), params=window
    )
    assert mine.json()["total"]["requests"] == 0
    bad = await client.get(f"{ADMIN}/usage", headers=headers, params={"by": "colour"})
    assert "is not a grouping" in error_of(bad, 400)


async def test_metadata_keys_are_activated_over_http_as_the_cli_does(
    client: httpx.AsyncClient, pg: PgAdmin, gateway: Gateway
) -> None:
    await add_user(pg, "root", role="admin")
    headers = await token_for(client, "root")
    base = f"{ADMIN}/api-keys/{gateway.key_id}/metadata-keys"
    activated = await client.put(f"{base}/X-Majordomo-Team/active", headers=headers)
    assert activated.status_code == 200, activated.text
    assert (activated.json()["key_name"], activated.json()["is_active"]) == ("team", True)
    async with httpx.AsyncClient(base_url=gateway.url) as proxy:
        await proxy.post(
            "/v1/chat/completions",
            headers={"X-Majordomo-Key": gateway.key, "X-Majordomo-Team": "search"},
            json={"model": "gpt-4o-mini", "messages": []},
        )
    (row,) = await gateway.rows(1)
    assert row["indexed_metadata"] == '{"team": "search"}'
    listed = (await client.get(base, headers=headers)).json()
    assert [(m["key_name"], m["is_active"]) for m in listed] == [("team", True)]
    off = await client.delete(f"{base}/team/active", headers=headers)
    assert off.json()["is_active"] is False


# -- the request log --------------------------------------------------------------------------


async def send(gateway: Gateway, model: str, **headers: str) -> str:
    async with httpx.AsyncClient(base_url=gateway.url) as proxy:
        response = await proxy.post(
            "/v1/chat/completions",
            headers={"X-Majordomo-Key": gateway.key, **headers},
            json={"model": model, "messages": [{"role": "user", "content": "hello"}]},
        )
    return response.headers["x-request-id"]


async def test_the_request_log_pages_newest_first_and_filters(
    client: httpx.AsyncClient, pg: PgAdmin, gateway: Gateway
) -> None:
    await add_user(pg, "root", role="admin")
    headers = await token_for(client, "root")
    ids = [
        await send(gateway, "gpt-4o-mini", **{"X-Majordomo-Team": f"t{n % 2}"}) for n in range(5)
    ]
    await send(gateway, "gpt-4o", **{"X-Fake-Status": "500"})
    await gateway.rows(6)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", "model": "gpt-4o-mini", **({"before": cursor} if cursor else {})}
        page = (await client.get(f"{ADMIN}/requests", headers=headers, params=params)).json()
        seen += [r["id"] for r in page["requests"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each once
    errors = await client.get(f"{ADMIN}/requests", headers=headers, params={"status": "500"})
    assert [r["model"] for r in errors.json()["requests"]] == ["gpt-4o"]
    team = await client.get(f"{ADMIN}/requests", headers=headers, params={"meta.team": "t1"})
    assert [r["id"] for r in team.json()["requests"]] == [ids[3], ids[1]]
    assert team.json()["requests"][0]["raw_metadata"] == {"team": "t1"}
    bad = await client.get(f"{ADMIN}/requests", headers=headers, params={"before": "nonsense"})
    assert "is not a cursor" in error_of(bad, 400)
    # A member sees none of these requests (their keys made none), and not one of them.
    await add_user(pg, "alice")
    alice = await token_for(client, "alice")
    assert (await client.get(f"{ADMIN}/requests", headers=alice)).json()["requests"] == []
    other = await client.get(f"{ADMIN}/requests/{ids[0]}", headers=alice)
    assert "belongs to another user" in error_of(other, 403)


async def test_a_request_shows_its_bodies_from_postgres(
    client: httpx.AsyncClient, pg: PgAdmin, fake: FakeUpstream
) -> None:
    async with running_gateway(
        pg, fake.base_url, settings={"logging": {"body_storage": "postgres"}}
    ) as gw:
        await add_user(pg, "root", role="admin")
        async with httpx.AsyncClient(base_url=gw.url) as admin:
            headers = await token_for(admin, "root")
            request_id = await send(gw, "gpt-4o-mini")
            await gw.row(request_id)
            detail = (await admin.get(f"{ADMIN}/requests/{request_id}", headers=headers)).json()
    assert detail["id"] == request_id
    assert json.loads(detail["request_body"])["messages"][0]["content"] == "hello"
    answer = json.loads(detail["response_body"])
    assert answer["choices"][0]["message"]["content"] == fake.calls[0].text
    assert detail["stored_bodies"] is None
    assert detail["total_cost"] != "0"


async def test_browser_apps_on_an_allowed_origin_may_call_the_admin_api(
    pg: PgAdmin, fake: FakeUpstream
) -> None:
    origin = "https://console.example.com"
    settings = {"cors": {"allowed_origins": [origin]}}
    async with (
        running_gateway(pg, fake.base_url, settings=settings) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        preflight = await client.options(
            f"{ADMIN}/login",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == origin
        refused = await client.post(
            f"{ADMIN}/login", headers={"Origin": origin}, json={"username": "x", "password": "y"}
        )
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == origin
        other = await client.get(f"{ADMIN}/me", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_a_members_own_requests_carry_their_user_id_and_are_theirs_to_see(
    client: httpx.AsyncClient, pg: PgAdmin, gateway: Gateway
) -> None:
    alice = await add_user(pg, "alice")
    headers = await token_for(client, "alice")
    key = (await client.post(f"{ADMIN}/api-keys", headers=headers, json={"name": "a"})).json()
    async with httpx.AsyncClient(base_url=gateway.url) as proxy:
        answer = await proxy.post(
            "/v1/chat/completions",
            headers={"X-Majordomo-Key": key["key"]},
            json={"model": "gpt-4o-mini", "messages": []},
        )
    row = await gateway.row(answer.headers["x-request-id"])
    assert row["user_id"] == alice  # the writer filled it from the key's owner
    mine = (await client.get(f"{ADMIN}/requests", headers=headers)).json()["requests"]
    assert [r["id"] for r in mine] == [str(row["id"])]
    detail = await client.get(f"{ADMIN}/requests/{row['id']}", headers=headers)
    assert detail.json()["user_id"] == str(alice)
    usage = (await client.get(f"{ADMIN}/usage", headers=headers, params={"since": "1d"})).json()
    assert usage["total"]["requests"] == 1


async def test_changing_my_password(client: httpx.AsyncClient, pg: PgAdmin) -> None:
    await add_user(pg, "alice")
    headers = await token_for(client, "alice")
    path = f"{ADMIN}/me/password"
    wrong = await client.put(
        path, headers=headers, json={"current_password": "nope", "new_password": "x" * 12}
    )
    assert error_of(wrong, 401) == "the current password is wrong"
    weak = await client.put(
        path, headers=headers, json={"current_password": PASSWORD, "new_password": "short"}
    )
    assert "at least 10 characters" in error_of(weak, 400)
    done = await client.put(
        path, headers=headers, json={"current_password": PASSWORD, "new_password": "x" * 12}
    )
    assert done.status_code == 200
    relogin = await client.post(f"{ADMIN}/login", json={"username": "alice", "password": "x" * 12})
    assert relogin.status_code == 200


async def test_no_route_under_api_is_served_that_openapi_does_not_list(gateway: Gateway) -> None:
    from majordomo.admin import ROUTES
    from majordomo.app import create_admin_app

    app = create_admin_app(gateway.state)
    served = {
        (method, re.sub(r"<(\w+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    assert served == {(r.method, r.path) for r in ROUTES}
