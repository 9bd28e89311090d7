"""/metrics after a mixed run shows each outcome and rejection reason with the right counts."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SECRET, base_config, never_ending, stream_chunks

PB = "/api/v1/tenants/t1/workspaces/w1/flows/{flow}/run-streaming"


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_mixed_run_counts(upstream, gateway):
    async def text(request, seen):
        return await stream_chunks(request, ["abcd" * 5])

    upstream.handle("/text", text)
    upstream.handle("/text-dev", never_ending)
    cfg = base_config(upstream.url)
    cfg["flows"][0]["max_duration_s"] = 0.3
    cfg["accounts"]["other"]["initial_credits"] = 0
    client = await gateway(cfg)

    def snapshot():
        return {
            "completed": value("flowgate_runs_ended_total", dialect="profitbase", flow="wf_text", outcome="completed"),
            "deadline": value("flowgate_runs_ended_total", dialect="profitbase", flow="wf_text", outcome="deadline"),
            "disconnect": value("flowgate_runs_ended_total", dialect="profitbase", flow="wf_text",
                                outcome="client_disconnected"),
            "401": value("flowgate_rejections_total", dialect="profitbase", reason="unauthorized"),
            "402": value("flowgate_rejections_total", dialect="workflow", reason="no_credits"),
            "404": value("flowgate_rejections_total", dialect="profitbase", reason="not_found"),
            "tokens": value("flowgate_tokens_total", flow="wf_text", kind="output"),
            "credits": value("flowgate_credits_charged_total", flow="wf_text"),
            "2xx": value("flowgate_requests_total", dialect="profitbase", route="run-streaming", flow="wf_text",
                         status_class="2xx"),
            "minted": value("flowgate_stream_tokens_minted_total"),
            "refused_used": value("flowgate_stream_tokens_refused_total", reason="used"),
        }

    before = snapshot()
    for _ in range(2):
        await (await client.post(PB.format(flow="wf_text"), headers={"x-api-key": SECRET})).read()
    with pytest.raises(aiohttp.ClientPayloadError):
        await (await client.post(PB.format(flow="wf_text") + "?env=Development",
                                 headers={"x-api-key": SECRET})).read()
    resp = await client.post(PB.format(flow="wf_text") + "?env=0", headers={"x-api-key": SECRET})
    await resp.content.readany()
    resp.close()
    await (await client.post(PB.format(flow="wf_text"), headers={"x-api-key": "wrong"})).read()
    await (await client.post(PB.format(flow="wf_nope"), headers={"x-api-key": SECRET})).read()
    from tests.conftest import OTHER_SECRET
    tok = (await (await client.get("/api/v1/token", headers={"x-api-key": OTHER_SECRET})).json())["token"]
    assert (await client.post(f"/api/v1/run/wf_other/stream?token={tok}")).status == 402
    assert (await client.post(f"/api/v1/run/wf_other/stream?token={tok}")).status == 401
    for _ in range(100):
        after = snapshot()
        if after["disconnect"] - before["disconnect"] >= 1:
            break
        await asyncio.sleep(0.02)
    delta = {k: after[k] - before[k] for k in after}
    assert delta["completed"] == 2
    assert delta["deadline"] == 1
    assert delta["disconnect"] == 1
    assert delta["401"] == 1 and delta["402"] == 1 and delta["404"] == 1
    assert delta["tokens"] >= 10 and delta["credits"] >= 10
    assert delta["2xx"] >= 2 and delta["minted"] == 1 and delta["refused_used"] == 1

    text = await (await client.get("/metrics")).text()
    names = {f.name for f in text_string_to_metric_families(text)}
    for name in ("flowgate_runs_started", "flowgate_streams_open", "flowgate_backend_ttfb_seconds",
                 "flowgate_client_ttfb_seconds", "flowgate_chunk_gap_seconds", "flowgate_run_duration_seconds",
                 "flowgate_store_operation_seconds", "flowgate_backend_failures"):
        assert name in names, name


def test_lock_free_metrics_are_exposed_exactly_like_prometheus_clients():
    """Our lock-free counter, gauge and histogram render the same samples as prometheus-client's."""
    import prometheus_client as pc
    from prometheus_client import CollectorRegistry, generate_latest

    from proxy.metrics import LATENCY_BUCKETS, LoopCounter, LoopGauge, LoopHistogram

    registry = CollectorRegistry()
    ours = [LoopHistogram("flowgate_test_gap_seconds", "test", ["flow"], buckets=LATENCY_BUCKETS),
            LoopCounter("flowgate_test_things_total", "test", ["kind"]), LoopGauge("flowgate_test_open", "test"),
            LoopCounter("flowgate_test_plain_total", "test")]
    theirs = [pc.Histogram("flowgate_test_gap_seconds", "test", ["flow"], buckets=LATENCY_BUCKETS, registry=registry),
              pc.Counter("flowgate_test_things_total", "test", ["kind"], registry=registry),
              pc.Gauge("flowgate_test_open", "test", registry=registry),
              pc.Counter("flowgate_test_plain_total", "test", registry=registry)]
    for hist in (ours[0], theirs[0]):
        for v in (0.0001, 0.0005, 0.0007, 0.02, 0.02, 1, 299.0, 301.0):
            hist.labels("wf").observe(v)
    for counter, gauge, plain in (ours[1:], theirs[1:]):
        counter.labels("a").inc()
        counter.labels("b").inc(2.5)
        gauge.inc(3)
        gauge.dec()
        plain.inc()
        with pytest.raises(ValueError):
            plain.inc(-1)
    try:
        def samples(text: bytes) -> dict:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(text.decode()) for s in f.samples
                    if not s.name.endswith("_created")}

        mine = samples(generate_latest(REGISTRY))
        expected = samples(generate_latest(registry))
        assert expected and all(mine[k] == pytest.approx(v) for k, v in expected.items())
        assert mine[("flowgate_test_gap_seconds_bucket", (("flow", "wf"), ("le", "0.0005")))] == 2
        assert mine[("flowgate_test_things_total", (("kind", "b"),))] == 2.5
        assert mine[("flowgate_test_open", ())] == 2
    finally:
        for metric in ours:
            REGISTRY.unregister(metric)
