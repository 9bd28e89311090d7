"""The account balance gauge, its dashboard panel's metric and the example low-balance alerts."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SECRET, base_config, stream_chunks

ROOT = Path(__file__).resolve().parent.parent


async def balance_on_metrics(client, account: str) -> float | None:
    text = await (await client.get("/metrics")).text()
    found = re.search(rf'^flowgate_account_balance_credits{{account="{account}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


async def test_the_gauge_shows_each_configured_account_and_follows_settlements(upstream, gateway):
    async def text(request, seen):
        return await stream_chunks(request, ["abcd" * 100])  # 100 tokens

    upstream.handle("/text", text)
    client = await gateway(base_config(upstream.url))
    for _ in range(40):  # the first refresh reads every configured account
        if await balance_on_metrics(client, "other") is not None:
            break
        await asyncio.sleep(0.05)
    assert await balance_on_metrics(client, "acme") == 100000
    assert await balance_on_metrics(client, "other") == 100000
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 200
    for _ in range(60):  # a settlement is read again within a second or two
        if await balance_on_metrics(client, "acme") == 100000 - 100:
            break
        await asyncio.sleep(0.05)
    assert await balance_on_metrics(client, "acme") == 100000 - 100
    text_ = await (await client.get("/metrics")).text()
    accounts = set(re.findall(r'^flowgate_account_balance_credits{account="([^"]*)"}', text_, re.M))
    assert accounts == {"acme", "other"}  # configured accounts only: a bounded label set


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
def test_the_example_alert_rules_fire_as_their_unit_tests_say():
    for args in (["test", "rules", "alerts.test.yml"], ["check", "config", "prometheus.yml"]):
        done = subprocess.run(["promtool", *args], cwd=ROOT / "deploy", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
