"""/openapi.json: valid OpenAPI 3.1, made from the mounted routes (every one described, prefixes
followed), and schemathesis against a live gateway (a `flowgate serve` process in front of the demo
backend) finds no server error and no undocumented status or media type. Examples are bounded so
that this stays a few seconds of `make test`."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from proxy.api.openapi import OPERATIONS
from tests.conftest import base_config, free_port, sha

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent.parent
FUZZ_SECRET = "fg_test_secret_fuzz_admin"  # Execute and Admin: the fuzzer reaches every route's logic


async def test_the_document_is_valid_and_covers_every_mounted_route(gateway, text_upstream):
    client = await gateway(base_config(text_upstream.url))
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    doc = await resp.json()
    validate(doc)  # openapi-spec-validator: raises on an invalid document
    assert doc["openapi"].startswith("3.1")
    ops = {(method, path): op for path, item in doc["paths"].items() for method, op in item.items()}
    assert not [k for k, op in ops.items() if op.get("x-undescribed")]
    routes = {r.name for r in client.app.router.routes() if r.name}
    assert {op["operationId"] for op in ops.values()} == {n.replace(":", "_").replace("-", "_") for n in routes}
    for expected in [
        ("post", "/api/v1/tenants/{tenantId}/workspaces/{workspaceId}/flows/{flowId}/run-streaming"),
        ("post", "/api/v1/run/{workflowId}/stream"), ("options", "/api/v1/run/{workflowId}/stream"),
        ("get", "/api/v1/token"), ("post", "/langflow/api/v1/run/{flowIdOrName}"), ("get", "/api/v1/jobs/{jobId}"),
        ("post", "/admin/v1/keys"), ("get", "/admin/v1/keys"), ("delete", "/admin/v1/keys/{keyId}"),
        ("get", "/admin/v1/accounts/{account}"), ("post", "/admin/v1/accounts/{account}/credits"),
        ("get", "/admin/v1/accounts/{account}/ledger"), ("get", "/healthz"), ("get", "/readyz"),
        ("get", "/metrics"), ("get", "/openapi.json"),
    ]:
        assert expected in ops, expected
    # each dialect's own error body
    run_stream = ops[("post", "/api/v1/run/{workflowId}/stream")]
    assert run_stream["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("WorkflowError")
    pb = ops[("post", "/api/v1/tenants/{tenantId}/workspaces/{workspaceId}/flows/{flowId}/run")]
    assert "application/problem+json" in pb["responses"]["402"]["content"]
    # ?protocol=ui on the workflow stream route (the AI SDK UI message stream): described, with its media type
    params = {p["name"]: p for p in run_stream["parameters"]}
    assert params["protocol"]["schema"]["enum"] == ["text", "ui"]
    assert set(run_stream["responses"]["200"]["content"]) == {"text/plain", "text/event-stream"}
    assert "x-vercel-ai-ui-message-stream" in run_stream["responses"]["200"]["headers"]
    lf = ops[("post", "/langflow/api/v1/run/{flowIdOrName}")]
    assert "text/event-stream" in lf["responses"]["200"]["content"]
    assert set(doc["components"]["securitySchemes"]) >= {"apiKeyHeader", "bearer", "streamToken"}
    # the admin API's request body is the model that validates it
    assert "owner" in doc["components"]["schemas"]["KeySpec"]["properties"]


async def test_the_document_follows_the_mounts(gateway, text_upstream):
    client = await gateway(base_config(text_upstream.url, dialects={"langflow": {"prefix": "/lf"}}))
    doc = await (await client.get("/openapi.json")).json()
    validate(doc)
    assert "/lf/api/v1/run/{flowIdOrName}" in doc["paths"]
    assert not any(p.startswith("/api/v1/tenants") or p == "/api/v1/token" for p in doc["paths"])


def test_every_description_names_a_route_the_app_can_mount():
    from proxy.dialects.routes import ROUTES

    named = {f"{d}:{r}" for d, rows in ROUTES.items() for _m, _p, r in rows}
    for name in OPERATIONS:
        assert name in named or name.split(":")[0] in ("admin", "ops", "jobs"), name


# --- schemathesis against a live gateway ------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    backend_port, port = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, "-m", "proxy", "demo-backend", "--port", str(backend_port)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = base_config(f"http://127.0.0.1:{backend_port}", store=f"sqlite:///{tmp / 'fg.db'}")
    cfg["server"] = {"port": port, "access_log": False, "max_body_bytes": 65536}
    for flow in cfg["flows"]:
        for target in flow["targets"].values():
            target["path"] = "/stream" if target["backend"] != "lf" else "/api/v1/run/x?stream=true"
    cfg["keys"].append({"id": "key_fuzz", "sha256": sha(FUZZ_SECRET), "owner": "acme",
                        "policies": ["Execute", "Admin"]})
    (tmp / "fg.yaml").write_text(yaml.safe_dump(cfg))
    gw = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(tmp / "fg.yaml")], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert gw.poll() is None and time.monotonic() < deadline, gw.stderr.read() if gw.poll() is not None else ""
        time.sleep(0.1)
    yield url
    for proc in (gw, backend):
        proc.terminate()
        proc.wait(15)


STATUSES: dict[str, set[int]] = {}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


def test_schemathesis_finds_no_server_error(live, capsys):
    """Every operation of the live document, 12 generated cases each (derandomized: the same cases
    every run). Driven through schemathesis's Python API (its pytest plugin does not run on pytest 9)."""
    api = schemathesis.openapi.from_url(live + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 18  # (every operation of the document but the OPTIONS preflight)
    called: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call_and_validate(base_url=live, headers={"x-api-key": FUZZ_SECRET}, timeout=15,
                                              checks=CHECKS)
            called.append(case.operation.label)
            STATUSES.setdefault(case.operation.label, set()).add(response.status_code)

        fuzz()
    assert len(set(called)) == len(operations)
    with capsys.disabled():
        print("\n[must-show] schemathesis statuses per operation:")
        for label, statuses in sorted(STATUSES.items()):
            print(f"  {label}: {sorted(statuses)}")
