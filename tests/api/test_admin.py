"""The admin API (/admin/v1/): Admin keys only, problem+json errors, keys in the store, credits, ledger."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from tests.conftest import NOEXEC_SECRET, SECRET, base_config, sha

ADMIN_SECRET = "fg_test_secret_admin_1"


def admin_config(url: str, **overrides) -> dict:
    cfg = base_config(url, **overrides)
    cfg["keys"] = [*cfg["keys"], {"id": "key_admin", "sha256": sha(ADMIN_SECRET), "owner": "acme",
                                  "policies": ["Admin"]}]
    return cfg


PB = "/api/v1/tenants/t1/workspaces/w1/flows/wf_text"
AUTH = {"Authorization": f"Bearer {ADMIN_SECRET}"}


@pytest.fixture
async def client(gateway, text_upstream):
    return await gateway(admin_config(text_upstream.url))


async def _problem(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["status"] == status and body["code"] == code
    return body


async def test_no_key_401_execute_key_403_on_every_route(client):
    for method, path in [("POST", "/admin/v1/keys"), ("GET", "/admin/v1/keys"), ("DELETE", "/admin/v1/keys/x"),
                         ("GET", "/admin/v1/accounts/acme"), ("POST", "/admin/v1/accounts/acme/credits"),
                         ("GET", "/admin/v1/accounts/acme/ledger")]:
        await _problem(await client.request(method, path), 401, "unauthorized")
        await _problem(await client.request(method, path, headers={"x-api-key": "fg_nope"}), 401, "unauthorized")
        await _problem(await client.request(method, path, headers={"x-api-key": SECRET}), 403, "forbidden")
        await _problem(await client.request(method, path, headers={"Authorization": f"Bearer {NOEXEC_SECRET}"}),
                       403, "forbidden")
        await _problem(await client.request(method, path, headers={"Authorization": "Basic abc"}), 401,
                       "unauthorized")


async def test_create_use_list_revoke(client):
    resp = await client.post("/admin/v1/keys", headers=AUTH, json={"owner": "acme", "policies": ["Execute"],
                                                                  "envs": ["production"]})
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    assert made["secret"].startswith("fg_") and made["id"].startswith("key_")
    assert resp.headers["Location"] == f"/admin/v1/keys/{made['id']}"
    assert resp.headers["Cache-Control"] == "no-store"
    assert made["envs"] == ["Production"] and made["expires_at"] is None
    # the new key runs a flow at once
    run = await client.post("/api/v1/run/wf_text", headers={"x-api-key": made["secret"]})
    assert run.status == 200 and await run.json() == {"success": True, "result": "hello world"}
    # ... within its scope only (the profitbase dialect says 403; the workflow dialect has only 401)
    dev = await client.post(f"{PB}/run?env=Development", headers={"x-api-key": made["secret"]})
    assert dev.status == 403
    # the listing: both sources, no secret, no hash
    listing = await client.get("/admin/v1/keys", headers={"x-api-key": ADMIN_SECRET})
    raw = await listing.read()
    assert made["secret"].encode() not in raw and sha(made["secret"]).encode() not in raw
    assert sha(SECRET).encode() not in raw and b"sha256" not in raw
    keys = {k["id"]: k for k in orjson.loads(raw)["keys"]}
    assert keys["key_acme"]["source"] == "config" and keys[made["id"]]["source"] == "api"
    # revoke: 204, then 401 here at once, and 404 for a second revoke
    gone = await client.delete(f"/admin/v1/keys/{made['id']}", headers=AUTH)
    assert gone.status == 204
    again = await client.post("/api/v1/run/wf_text", headers={"x-api-key": made["secret"]})
    assert again.status == 401
    await _problem(await client.delete(f"/admin/v1/keys/{made['id']}", headers=AUTH), 404, "not_found")


async def test_config_keys_cannot_be_revoked_here(client):
    await _problem(await client.delete("/admin/v1/keys/key_acme", headers=AUTH), 409, "conflict")
    run = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert run.status == 200


async def test_an_id_taken_by_the_config_or_the_store_is_409(client):
    await _problem(await client.post("/admin/v1/keys", headers=AUTH, json={"owner": "acme", "id": "key_acme"}),
                   409, "conflict")
    assert (await client.post("/admin/v1/keys", headers=AUTH, json={"owner": "acme", "id": "mine"})).status == 201
    await _problem(await client.post("/admin/v1/keys", headers=AUTH, json={"owner": "acme", "id": "mine"}),
                   409, "conflict")


@pytest.mark.parametrize("body, field", [
    ({}, "owner"),
    ({"owner": "acme", "policies": ["Root"]}, "policies"),
    ({"owner": "acme", "policies": []}, "policies"),
    ({"owner": "acme", "envs": ["Staging"]}, "envs"),
    ({"owner": "acme", "expires_in_s": 0}, "expires_in_s"),
    ({"owner": "acme", "expires_in_s": "soon"}, "expires_in_s"),
    ({"owner": "acme", "secret": "mine"}, "secret"),
    ({"owner": "acme", "sha256": "0" * 64}, "sha256"),
    ({"owner": "acme", "rate_limit": {"requests_per_minute": 0}}, "rate_limit"),
    ({"owner": "acme", "id": "bad id!"}, "id"),
])
async def test_bad_bodies_400_name_the_field_and_change_nothing(client, body, field):
    body_resp = await _problem(await client.post("/admin/v1/keys", headers=AUTH, json=body), 400, "bad_request")
    assert field in body_resp["detail"]
    listing = await (await client.get("/admin/v1/keys", headers=AUTH)).json()
    assert all(k["source"] == "config" for k in listing["keys"])


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1]", b"null", b'"owner"', b"{" * 10000, b"x" * 70000])
async def test_junk_bodies_400(client, raw):
    await _problem(await client.post("/admin/v1/keys", headers=AUTH, data=raw), 400, "bad_request")


async def test_unknown_owner_422(client):
    await _problem(await client.post("/admin/v1/keys", headers=AUTH, json={"owner": "nobody"}), 422,
                   "unprocessable")


async def test_expiring_key(client):
    made = await (await client.post("/admin/v1/keys", headers=AUTH,
                                    json={"owner": "acme", "expires_in_s": 1})).json()
    assert abs(made["expires_at"] - (time.time() + 1)) < 2
    assert (await client.post("/api/v1/run/wf_text", headers={"x-api-key": made["secret"]})).status == 200
    await asyncio.sleep(1.2)
    assert (await client.post("/api/v1/run/wf_text", headers={"x-api-key": made["secret"]})).status == 401
    keys = {k["id"]: k for k in (await (await client.get("/admin/v1/keys", headers=AUTH)).json())["keys"]}
    assert keys[made["id"]]["expired"] is True


async def test_a_revoked_keys_stream_token_is_refused(client):
    made = await (await client.post("/admin/v1/keys", headers=AUTH, json={"owner": "acme"})).json()
    tok = await (await client.get("/api/v1/token", headers={"Authorization": f"Bearer {made['secret']}"})).json()
    assert (await client.delete(f"/admin/v1/keys/{made['id']}", headers=AUTH)).status == 204
    resp = await client.post(f"/api/v1/run/wf_text/stream?token={tok['token']}")
    assert resp.status == 401


async def test_an_admin_key_made_by_the_api_administers(client):
    made = await (await client.post("/admin/v1/keys", headers=AUTH,
                                    json={"owner": "acme", "policies": ["Admin"]})).json()
    resp = await client.get("/admin/v1/accounts/acme", headers={"x-api-key": made["secret"]})
    assert resp.status == 200
    # ... and cannot run flows (no Execute)
    assert (await client.post(f"{PB}/run", headers={"x-api-key": made["secret"]})).status == 403


async def test_accounts_credits_and_ledger(client):
    acct = await (await client.get("/admin/v1/accounts/acme", headers=AUTH)).json()
    assert acct == {"account": "acme", "balance": 100000, "held": 0, "spent": 0, "available": 100000}
    granted = await client.post("/admin/v1/accounts/acme/credits", headers=AUTH, json={"amount": 500})
    assert granted.status == 200 and (await granted.json())["balance"] == 100500
    for bad in ({"amount": 0}, {"amount": -5}, {"amount": 1.5}, {"amount": "5"}, {"amount": True}, {},
                {"amount": 2**63}, {"amount": 5, "note": "x"}):
        await _problem(await client.post("/admin/v1/accounts/acme/credits", headers=AUTH, json=bad), 400,
                       "bad_request")
    assert (await (await client.get("/admin/v1/accounts/acme", headers=AUTH)).json())["balance"] == 100500
    await _problem(await client.get("/admin/v1/accounts/nobody", headers=AUTH), 404, "not_found")
    await _problem(await client.post("/admin/v1/accounts/nobody/credits", headers=AUTH, json={"amount": 1}), 404,
                   "not_found")
    # a run, then its ledger entry (JSON and NDJSON), and the since/until window
    start = time.time()
    assert (await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})).status == 200
    await asyncio.sleep(0.05)
    ledger = await (await client.get("/admin/v1/accounts/acme/ledger", headers=AUTH)).json()
    assert len(ledger["entries"]) == 1 and ledger["entries"][0]["flow"] == "wf_text"
    nd = await client.get("/admin/v1/accounts/acme/ledger", headers={**AUTH, "Accept": "application/x-ndjson"})
    assert nd.headers["Content-Type"].startswith("application/x-ndjson")
    lines = (await nd.read()).splitlines()
    assert len(lines) == 1 and orjson.loads(lines[0])["job_id"] == ledger["entries"][0]["job_id"]
    later = await (await client.get(f"/admin/v1/accounts/acme/ledger?since={time.time() + 5}",
                                    headers=AUTH)).json()
    assert later["entries"] == []
    before = await (await client.get(f"/admin/v1/accounts/acme/ledger?until={start - 5}", headers=AUTH)).json()
    assert before["entries"] == []
    iso = await client.get("/admin/v1/accounts/acme/ledger?since=2020-01-01T00:00:00", headers=AUTH)
    assert len((await iso.json())["entries"]) == 1
    for q in ("since=yesterday", "until=1e", "limit=0", "limit=abc", "limit=1000001"):
        await _problem(await client.get(f"/admin/v1/accounts/acme/ledger?{q}", headers=AUTH), 400, "bad_request")


async def test_secrets_never_reach_the_log(client, capfd):
    made = await (await client.post("/admin/v1/keys", headers=AUTH, json={"owner": "acme"})).json()
    await client.get("/admin/v1/keys", headers=AUTH)
    await client.delete(f"/admin/v1/keys/{made['id']}", headers=AUTH)
    err = capfd.readouterr().err
    assert made["id"] in err  # the key's id is logged (created, revoked)
    for secret in (made["secret"], sha(made["secret"]), ADMIN_SECRET, sha(ADMIN_SECRET)):
        assert secret not in err
