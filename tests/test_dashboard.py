"""Every PromQL expression of the Grafana dashboard returns data from a real Prometheus scraping a
gateway under a short load. Skips (with the reason) only where the prometheus binary is missing."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import SECRET, base_config, free_port, stream_chunks

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "flowgate.json"


def exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    out += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return out


def test_dashboard_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "flowgate-overview" and len(dash["panels"]) >= 12
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for e in exprs():
        assert "flowgate_" in e



def to_promql(expr: str) -> str:
    """What Grafana sends: its variables substituted."""
    if expr.startswith("label_values("):
        return expr[len("label_values("):].split(",")[0]
    return expr.replace("$__rate_interval", "1m").replace('"$flow"', '".*"')


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus is not installed (Debian package `prometheus`; .ci/run installs it)")
async def test_every_dashboard_query_returns_data(upstream, gateway, tmp_path):
    async def text(request, seen):
        return await stream_chunks(request, ["abcd "] * 5, delay=0.01)

    upstream.handle("/text", text)
    upstream.handle("/lf", text)
    client = await gateway(base_config(upstream.url))
    target = f"127.0.0.1:{client.server.port}"
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: flowgate, static_configs: [{{targets: ['{target}']}}]}}]\n")
    prom = subprocess.Popen(  # noqa: ASYNC220 (a long-lived server, not awaited)
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        async with aiohttp.ClientSession() as s:
            async def query(q: str) -> dict:
                async with s.get(f"{api}/query", params={"query": q}) as r:
                    return await r.json()

            # a short mixed load: streams on every dialect, tokens, a replay, 401s, 404s
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                pb = "/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming"
                await (await client.post(pb, headers={"x-api-key": SECRET})).read()
                tok = (await (await client.get("/api/v1/token", headers={"x-api-key": SECRET})).json())["token"]
                await (await client.post(f"/api/v1/run/wf_text/stream?token={tok}")).read()
                await (await client.post(f"/api/v1/run/wf_text/stream?token={tok}")).read()
                await (await client.post("/langflow/api/v1/run/wf_text?stream=true",
                                         headers={"x-api-key": SECRET})).read()
                await (await client.post(pb, headers={"x-api-key": "nope"})).read()
                await (await client.post(pb.replace("wf_text", "wf_nope"), headers={"x-api-key": SECRET})).read()
                await asyncio.sleep(0.1)
            for _ in range(100):  # until Prometheus has scraped the load a few times
                try:
                    res = await query("count_over_time(flowgate_requests_total[1m])")
                    if res["data"]["result"] and max(float(r["value"][1]) for r in res["data"]["result"]) >= 4:
                        break
                except (aiohttp.ClientError, KeyError, ValueError):
                    pass
                await asyncio.sleep(0.25)
            failures = []
            for expr in exprs():
                res = await query(to_promql(expr))
                if res.get("status") != "success":
                    failures.append(f"{expr}: {res.get('error')}")
                elif not res["data"]["result"]:
                    failures.append(f"{expr}: no series")
            assert not failures, "\n".join(failures)
    finally:
        prom.terminate()
        prom.wait(10)
