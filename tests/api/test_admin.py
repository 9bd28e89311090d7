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
    ({"owner": "acme", "rate_limit": {"requests_per_minute": True}}, "rate_limit"),
    ({"owner": "acme", "rate_limit": {"requests_per_minute": "5"}}, "rate_limit"),
    ({"owner": "acme", "rate_limit": {"concurrent_runs": 2.5}}, "rate_limit"),
    ({"owner": "acme", "tenant": "t1\r\nX-Evil: 1"}, "tenant"),
    ({"owner": "acme", "workspace": "\x1b[2Jw1"}, "workspace"),
    ({"owner": "acme", "tenant": ""}, "tenant"),
    ({"owner": "acme", "tenant": "t" * 10_000}, "tenant"),
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
                {"amount": 2**63}, {"amount": 2**53}, {"amount": 2**53 + 1}, {"amount": 2**64}, {"amount": 1e308},
                {"amount": 5, "note": "x"}):
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


# --- hostile inputs found in review ------------------------------------------------------------
@pytest.mark.parametrize("q", ["since=nan", "since=NaN", "until=inf", "since=-inf", "since=1e999",
                               "limit=%C2%B2", "limit=" + "9" * 5000, "limit=%D9%A1", "limit=+5", "limit=%205"])
async def test_ledger_garbage_bounds_are_400_not_a_store_error(client, q):
    """nan went to Redis as a score bound (its error: a 503 and an error log); ² passes isdigit() but
    not int(); 5000 digits pass isdigit() and fail int() (a 500 each)."""
    body = await _problem(await client.get(f"/admin/v1/accounts/acme/ledger?{q}", headers=AUTH), 400, "bad_request")
    assert "since" in body["detail"] or "until" in body["detail"] or "limit" in body["detail"]


def _entries(n: int, ties: int = 1, start: float = 1_700_000_000.0) -> list[dict]:
    """n ledger entries, ``ties`` of them at each instant (settlements on replicas at the same µs)."""
    return [{"job_id": f"job{i:06d}", "owner": "acme", "flow": "wf_text", "credits": 1,
             "ended_at": start + i // ties} for i in range(n)]


@pytest.mark.parametrize("ties", [1, 3, 7])
async def test_an_ndjson_export_is_read_and_written_a_page_at_a_time(client, monkeypatch, ties):
    import proxy.api.admin as admin
    from proxy.context import GATEWAY

    monkeypatch.setattr(admin, "LEDGER_PAGE", 5)
    store = client.app[GATEWAY].store
    store.inner.ledgers["acme"] = _entries(53, ties)
    asked: list[int | None] = []
    real = store.ledger

    async def counted(account, since=None, limit=None):
        asked.append(limit)
        return await real(account, since=since, limit=limit)

    monkeypatch.setattr(store, "ledger", counted)
    nd = await client.get("/admin/v1/accounts/acme/ledger", headers={**AUTH, "Accept": "application/x-ndjson"})
    assert nd.status == 200 and nd.headers["Content-Type"].startswith("application/x-ndjson")
    assert nd.headers.get("Transfer-Encoding") == "chunked"  # streamed, not one body
    ids = [orjson.loads(line)["job_id"] for line in (await nd.read()).splitlines()]
    assert ids == [f"job{i:06d}" for i in range(53)]  # every entry once, oldest first, across tied pages
    assert max(asked) <= 5 + ties and len(asked) >= 53 // 5  # never the whole ledger at once
    # the window and the limit across pages; JSON gives the same entries
    since, until = 1_700_000_000.0 + 10 // ties, 1_700_000_000.0 + 40 // ties
    want = [e["job_id"] for e in store.inner.ledgers["acme"] if since <= e["ended_at"] < until]
    for accept in ("application/x-ndjson", "application/json"):
        resp = await client.get(f"/admin/v1/accounts/acme/ledger?since={since}&until={until}&limit=17",
                                headers={**AUTH, "Accept": accept})
        raw = await resp.read()
        got = ([orjson.loads(x)["job_id"] for x in raw.splitlines()] if "ndjson" in accept
               else [e["job_id"] for e in orjson.loads(raw)["entries"]])
        assert got == want[:17]


async def test_an_ndjson_export_cut_by_the_store_is_not_a_complete_body(client, monkeypatch):
    import aiohttp

    import proxy.api.admin as admin
    from proxy.context import GATEWAY
    from proxy.errors import StoreUnavailable

    monkeypatch.setattr(admin, "LEDGER_PAGE", 5)
    store = client.app[GATEWAY].store
    store.inner.ledgers["acme"] = _entries(30)
    real, calls = store.ledger, []

    async def failing(account, since=None, limit=None):
        calls.append(since)
        if len(calls) > 2:
            raise StoreUnavailable("gone")
        return await real(account, since=since, limit=limit)

    monkeypatch.setattr(store, "ledger", failing)
    nd = await client.get("/admin/v1/accounts/acme/ledger", headers={**AUTH, "Accept": "application/x-ndjson"})
    assert nd.status == 200
    with pytest.raises(aiohttp.ClientError):  # no last chunk: the reader knows it is cut
        await nd.read()
    calls.clear()
    monkeypatch.setattr(store, "ledger", lambda *a, **k: (_ for _ in ()).throw(StoreUnavailable("down")))
    await _problem(await client.get("/admin/v1/accounts/acme/ledger", headers={**AUTH, "Accept":
                                                                                "application/x-ndjson"}),
                   503, "store_unavailable")


@pytest.mark.parametrize("value", ["2", True, 2.0, 1e308, -1, 0])
async def test_expires_in_s_is_a_whole_number_not_a_string_or_bool(client, value):
    """"2" became 2 and true became 1 s (pydantic's lax mode), unlike the credits grant's amount."""
    body = await _problem(await client.post("/admin/v1/keys", headers=AUTH,
                                            json={"owner": "acme", "expires_in_s": value}), 400, "bad_request")
    assert "expires_in_s" in body["detail"]


async def test_a_token_does_not_outlive_its_key_through_a_new_key_with_the_same_id(client):
    """Revoke key "k", make a new "k" (same owner): the old key's unspent token was honoured again."""
    made = await (await client.post("/admin/v1/keys", headers=AUTH, json={"owner": "acme", "id": "k"})).json()
    tok = await (await client.get("/api/v1/token", headers={"x-api-key": made["secret"]})).json()
    assert (await client.delete("/admin/v1/keys/k", headers=AUTH)).status == 204
    again = await client.post("/admin/v1/keys", headers=AUTH, json={"owner": "acme", "id": "k"})
    assert again.status == 201
    assert (await client.post(f"/api/v1/run/wf_text/stream?token={tok['token']}")).status == 401
    fresh = await (await client.get("/api/v1/token", headers={"x-api-key": (await again.json())["secret"]})).json()
    assert (await client.post(f"/api/v1/run/wf_text/stream?token={fresh['token']}")).status == 200


async def test_a_store_key_shadowed_by_a_config_key_id_can_still_be_revoked(gateway, text_upstream):
    """An API key "ops" exists; the operator then adds a config key "ops": DELETE said 409 (a config
    key) and the API key could never be revoked."""
    from proxy.config import parse_config
    from proxy.context import GATEWAY
    from proxy.front.reload import apply
    from proxy.policies.keys import KeySpec, create_key

    cfg = admin_config(text_upstream.url)
    client = await gateway(cfg)
    gw = client.app[GATEWAY]
    secret, _ = await create_key(gw.config, gw.store, KeySpec(owner="acme", id="ops"))
    cfg["keys"].append({"id": "ops", "sha256": sha("fg_test_config_ops"), "owner": "acme"})
    await apply(gw, parse_config(cfg))  # a reload
    assert (await client.post("/api/v1/run/wf_text", headers={"x-api-key": secret})).status == 200
    assert (await client.delete("/admin/v1/keys/ops", headers=AUTH)).status == 204
    await asyncio.sleep(0.6)
    assert (await client.post("/api/v1/run/wf_text", headers={"x-api-key": secret})).status == 401
    await _problem(await client.delete("/admin/v1/keys/ops", headers=AUTH), 409, "conflict")  # the config's


@pytest.mark.parametrize("path", ["/admin/v1/keys/a%2Fb", "/admin/v1/keys/..%2F..%2Fkeys", "/admin/v1/keys/a%0D%0Ab",
                                  "/admin/v1/keys/" + "x" * 10000, "/admin/v1/keys/%E2%80%AE"])
async def test_revoking_junk_ids_is_a_problem_not_a_crash(client, path):
    resp = await client.delete(path, headers=AUTH)
    assert resp.status in (400, 404) and resp.headers["Content-Type"].startswith("application/problem+json")
