"""Stream tokens: minting, TTL clamping, single use, owner/flow binding, no token burned by bad input."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.context import GATEWAY
from tests.conftest import OTHER_SECRET, SECRET, base_config, stream_chunks


@pytest.fixture
async def client(upstream, gateway):
    async def text(request, seen):
        return await stream_chunks(request, ["hi"])

    upstream.handle("/text", text)
    return await gateway(base_config(upstream.url))


async def mint(client, secret=SECRET, **params):
    resp = await client.get("/api/v1/token", headers={"x-api-key": secret}, params=params)
    return resp.status, await resp.json()


async def spend(client, token, flow="wf_text", **params):
    resp = await client.post(f"/api/v1/run/{flow}/stream", params={"token": token, **params}, data=b"{}")
    body = await resp.read()
    return resp.status, body


@pytest.mark.parametrize("ttl,expected", [(None, 60), ("0", 1), ("-5", 1), ("9999", 300), ("120", 120)])
async def test_ttl_default_and_clamping(client, ttl, expected):
    status, body = await mint(client, **({"ttl": ttl} if ttl is not None else {}))
    assert status == 200
    assert body["ttl"] == expected and body["success"] is True
    assert body["token"].startswith("pub_tok_") and len(body["token"]) >= len("pub_tok_") + 22  # >= 128 bits


async def test_bad_ttl_is_400(client):
    resp = await client.get("/api/v1/token?ttl=soon", headers={"x-api-key": SECRET})
    assert resp.status == 400 and (await resp.json())["code"] == "bad_request"


async def test_token_route_needs_a_key_and_is_not_cors_enabled(client):
    resp = await client.get("/api/v1/token")
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
    resp = await client.get("/api/v1/token", headers={"x-api-key": "nope"})
    assert resp.status == 401
    resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET, "Origin": "https://evil.example"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_a_token_is_spent_once(client):
    _, body = await mint(client)
    assert (await spend(client, body["token"]))[0] == 200
    status, err = await spend(client, body["token"])
    assert status == 401 and b"invalid_token" in err


async def test_a_token_expires(client):
    _, body = await mint(client, ttl="1")
    await asyncio.sleep(1.2)
    status, err = await spend(client, body["token"])
    assert status == 401 and b"invalid_token" in err


async def test_a_token_of_owner_a_cannot_run_owner_b_flow(client):
    _, body = await mint(client, secret=OTHER_SECRET)
    status, err = await spend(client, body["token"], flow="wf_text")
    assert status == 401 and b"invalid_token" in err
    # and it was spent by that attempt: replay and enumeration cost a token
    status, _ = await spend(client, body["token"], flow="wf_other")
    assert status == 401


async def test_a_token_bound_to_one_flow(client):
    status, body = await mint(client, workflow_id="wf_lf")
    assert status == 200
    assert (await spend(client, body["token"], flow="wf_text"))[0] == 401
    status, body = await mint(client, workflow_id="wf_other")  # another owner's flow
    assert status == 404


async def test_bad_input_burns_no_token(client):
    _, body = await mint(client)
    token = body["token"]
    resp = await client.post(f"/api/v1/run/wf_text/stream?token={token}&env=moon")
    assert resp.status == 400
    resp = await client.post(f"/api/v1/run/wf_text/stream?token={token}", data=b"x" * 5000)
    assert resp.status == 413
    assert (await spend(client, token))[0] == 200


async def test_malformed_token_costs_no_store_round_trip(client, monkeypatch):
    store = client.app[GATEWAY].store
    calls = []
    original = store.consume_token

    async def counting(*args, **kwargs):
        calls.append(args)
        return await original(*args, **kwargs)

    monkeypatch.setattr(store, "consume_token", counting)
    for bad in ["x", "pub_tok_", "pub_tok_" + "a" * 31, "pub_tok_" + "a" * 33, "pub_tok_" + "!" * 32]:
        assert (await spend(client, bad))[0] == 401
    assert calls == []
    assert (await spend(client, "pub_tok_" + "a" * 32))[0] == 401
    assert len(calls) == 1


async def test_tokens_carry_their_mint_time_so_the_store_keeps_them_in_mint_order(client):
    """The digest starts with the mint time (ms): tokens minted in turn sort in turn in the store;
    the rest is 144 random bits (tokens minted in the same millisecond differ)."""
    import base64
    import time

    from proxy.policies.stream_token import TOKEN_RE, new_token, token_digest

    before = time.time_ns() // 1_000_000
    tokens = [(await mint(client))[1]["token"] for _ in range(5)]
    after = time.time_ns() // 1_000_000
    for token in tokens:
        assert TOKEN_RE.fullmatch(token)
        assert before <= int.from_bytes(base64.urlsafe_b64decode(token[8:16]), "big") <= after
    digests = [token_digest(t) for t in tokens]
    assert [d[:8] for d in digests] == sorted(d[:8] for d in digests) and len(set(digests)) == 5
    same_ms = {new_token(now_ms=after) for _ in range(1000)}
    assert len(same_ms) == 1000 and len({t[16:] for t in same_ms}) == 1000


async def test_a_token_minted_before_tokens_carried_a_time_is_spent_once(client):
    """A token of the old form (192 random bits, stored under its SHA-256 alone) still spends once:
    a rolling upgrade does not strand the tokens the old replicas minted."""
    import hashlib
    import time

    store = client.app[GATEWAY].store
    legacy = "pub_tok_" + "Zm9v" * 8  # its first 6 bytes read as a time 3,500 years away
    await store.put_token(hashlib.sha256(legacy.encode()).hexdigest(),
                          {"owner": "acme", "key_id": "key_acme", "flow_id": None}, time.time() + 60)
    status, _ = await spend(client, legacy)
    assert status == 200
    assert (await spend(client, legacy))[0] == 401


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**48 - 1), st.integers(0, 2**48 - 1))
def test_the_stored_prefix_sorts_as_the_mint_times_do(a, b):
    from proxy.policies.stream_token import _ORDERED, new_token

    ta, tb = new_token(now_ms=a), new_token(now_ms=b)
    pa, pb = ta[8:16].translate(_ORDERED), tb[8:16].translate(_ORDERED)
    assert (pa < pb) == (a < b) and (pa == pb) == (a == b)


async def test_a_token_with_a_lifetime_over_two_days_is_spent_until_it_expires(upstream, gateway, monkeypatch):
    """An operator may allow tokens longer than the ±2 days that tell a time-keyed token from an
    old one (``token_ttl_max_s`` has no upper bound): such a token, spent 2.5 days after its mint
    and before its expiry, is still found under the key it was stored by."""
    import time
    import types

    import proxy.policies.stream_token as stream_token

    async def text(request, seen):
        return await stream_chunks(request, ["hi"])

    upstream.handle("/text", text)
    cfg = base_config(upstream.url)
    cfg["limits"] = {"token_ttl_max_s": 3 * 86400}
    client = await gateway(cfg)
    status, body = await mint(client, ttl=str(3 * 86400))
    assert status == 200 and body["ttl"] == 3 * 86400
    later = time.time() + 2.5 * 86400  # the store keeps the token until its expiry, 0.5 day on
    monkeypatch.setattr(stream_token, "time", types.SimpleNamespace(time=lambda: later,
                                                                    time_ns=lambda: int(later * 1e9)))
    assert (await spend(client, body["token"]))[0] == 200
    assert (await spend(client, body["token"]))[0] == 401


@pytest.mark.parametrize("offset_ms", [-2 * 86_400_000 - 1, -2 * 86_400_000, 2 * 86_400_000, 2 * 86_400_000 + 1000,
                                       2**48 - 1, 0])
async def test_a_crafted_time_prefix_never_finds_another_tokens_record(client, offset_ms):
    """Prefixes at and across the window's edges, the far past and the far future: the key is the
    whole token's SHA-256 (with or without the stamp), so only the token minted spends its record."""
    import time

    from proxy.policies.stream_token import new_token, token_digest

    _, body = await mint(client)
    real = body["token"]
    now = time.time_ns() // 1_000_000
    ms = offset_ms if offset_ms in (0, 2**48 - 1) else now + offset_ms
    crafted = new_token(now_ms=ms)[:16] + real[16:]  # another prefix, the real token's random part
    assert token_digest(crafted) != token_digest(real) and token_digest(crafted)[-64:] != token_digest(real)[-64:]
    assert (await spend(client, crafted))[0] == 401
    assert (await spend(client, real))[0] == 200
