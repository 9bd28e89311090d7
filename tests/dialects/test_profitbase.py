"""Profitbase dialect: routes, key placement rules, env parsing, problem+json error table."""

from __future__ import annotations

import json

import pytest

from tests.conftest import NOEXEC_SECRET, OTHER_SECRET, SCOPED_SECRET, SECRET, base_config, stream_chunks

PB = "/api/v1/tenants/t1/workspaces/w1/flows/{flow}/{route}"


def url(flow="wf_text", route="run-streaming", **q) -> str:
    base = PB.format(flow=flow, route=route)
    if q:
        base += "?" + "&".join(f"{k}={v}" for k, v in q.items())
    return base


@pytest.fixture
async def client(upstream, gateway):
    async def text(request, seen):
        return await stream_chunks(request, ["hello ", "wor", "ld"])

    upstream.handle("/text", text)
    upstream.handle("/text-dev", text)
    return await gateway(base_config(upstream.url))


async def test_streams_a_json_array_with_job_id_and_no_buffering_headers(client, upstream):
    resp = await client.post(url(), headers={"x-api-key": SECRET}, data=b'{"q": 1}')
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in resp.headers
    assert resp.headers["flow-job-id"]
    body = json.loads(await resp.read())
    assert "".join(body) == "hello world"
    assert upstream.last.body == b'{"q": 1}'


@pytest.mark.parametrize("route", ["run-streaming", "stream"])
async def test_stream_alias_and_query_key(client, route):
    resp = await client.post(url(route=route, api_key=SECRET))
    assert resp.status == 200
    assert "".join(json.loads(await resp.read())) == "hello world"


async def test_non_streaming_run_returns_the_whole_array(client):
    resp = await client.post(url(route="run"), headers={"x-api-key": SECRET})
    assert resp.status == 200
    assert resp.headers["flow-job-id"]
    assert "".join(json.loads(await resp.read())) == "hello world"


@pytest.mark.parametrize("env,path", [("development", "/text-dev"), ("0", "/text-dev"), ("PRODUCTION", "/text"),
                                      ("2", "/text")])
async def test_env_accepts_names_and_numbers_case_insensitively(client, upstream, env, path):
    resp = await client.post(url(env=env), headers={"x-api-key": SECRET})
    assert resp.status == 200, await resp.text()
    await resp.read()
    assert upstream.last.path == path


async def problem(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert body["status"] == status and body["code"] == code
    return body


async def test_both_key_places_is_400(client, upstream):
    resp = await client.post(url(api_key=SECRET), headers={"x-api-key": SECRET})
    body = await problem(resp, 400, "bad_request")
    assert SECRET not in json.dumps(body)
    assert upstream.requests == []


async def test_no_key_is_401(client):
    await problem(await client.post(url()), 401, "unauthorized")


async def test_unknown_key_is_401_and_never_echoed(client):
    resp = await client.post(url(), headers={"x-api-key": "fg_wrong"})
    body = await problem(resp, 401, "unauthorized")
    assert "fg_wrong" not in json.dumps(body)


async def test_key_without_execute_is_403(client):
    await problem(await client.post(url(), headers={"x-api-key": NOEXEC_SECRET}), 403, "forbidden")


async def test_key_of_another_owner_is_403(client):
    await problem(await client.post(url(), headers={"x-api-key": OTHER_SECRET}), 403, "forbidden")


async def test_key_scoped_to_another_env_is_403(client):
    await problem(await client.post(url(), headers={"x-api-key": SCOPED_SECRET}), 403, "forbidden")
    resp = await client.post(url(env="Development"), headers={"x-api-key": SCOPED_SECRET})
    assert resp.status == 200


@pytest.mark.parametrize("env", ["Staging", "3", "prod", "-1"])
async def test_bad_env_is_400_naming_the_accepted_values(client, upstream, env):
    body = await problem(await client.post(url(env=env), headers={"x-api-key": SECRET}), 400, "bad_request")
    assert "Development" in body["detail"] and "0" in body["detail"]
    assert upstream.requests == []


async def test_env_without_target_is_404(client):
    await problem(await client.post(url(flow="wf_lf", env="Test"), headers={"x-api-key": SECRET}), 404, "not_found")


@pytest.mark.parametrize("flow", ["wf_nope", "wf_hidden"])
async def test_unknown_or_unpublished_flow_is_404(client, flow):
    await problem(await client.post(url(flow=flow), headers={"x-api-key": SECRET}), 404, "not_found")


async def test_flow_under_another_workspace_is_404(client):
    path = "/api/v1/tenants/t1/workspaces/w9/flows/wf_text/run-streaming"
    await problem(await client.post(path, headers={"x-api-key": SECRET}), 404, "not_found")


async def test_oversized_body_is_413_and_never_forwarded(client, upstream):
    resp = await client.post(url(), headers={"x-api-key": SECRET}, data=b"x" * 2000)
    await problem(resp, 413, "payload_too_large")
    assert upstream.requests == []


async def test_oversized_chunked_body_is_413(client, upstream):
    async def gen():
        for _ in range(5):
            yield b"x" * 400

    resp = await client.post(url(), headers={"x-api-key": SECRET}, data=gen())
    await problem(resp, 413, "payload_too_large")
    assert upstream.requests == []


@pytest.mark.parametrize("path", ["/api/v1/tenants/t1/flows/wf_text/run", "/junk", "/api/v1/../../etc/passwd",
                                  "/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming/extra"])
async def test_junk_paths_are_404_problem_json(client, path):
    resp = await client.post(path, headers={"x-api-key": SECRET})
    assert resp.status == 404
    assert resp.headers["Content-Type"].startswith("application/problem+json")


async def test_wrong_method_is_405(client):
    resp = await client.get(url(), headers={"x-api-key": SECRET})
    assert resp.status == 405
    assert resp.headers["Content-Type"].startswith("application/problem+json")
