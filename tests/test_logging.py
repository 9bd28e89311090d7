"""Secrets never reach a log line or /metrics; one access line per request, with the run's facts."""

from __future__ import annotations

import asyncio
import io
import json
import sys

import aiohttp
import pytest

from tests.conftest import SECRET, base_config, never_ending, stream_chunks


async def test_no_key_or_token_in_logs_or_metrics(upstream, gateway, capfd):
    async def text(request, seen):
        return await stream_chunks(request, ["hello"])

    upstream.handle("/text", text)
    upstream.handle("/text-dev", never_ending)
    cfg = base_config(upstream.url)
    cfg["flows"][0]["max_duration_s"] = 0.3
    client = await gateway(cfg)
    tokens = []
    for _ in range(2):
        resp = await client.get("/api/v1/token", headers={"Authorization": f"Bearer {SECRET}"})
        tokens.append((await resp.json())["token"])
    await (await client.post(f"/api/v1/run/wf_text/stream?token={tokens[0]}")).read()
    await (await client.post(f"/api/v1/run/wf_text/stream?token={tokens[0]}")).read()  # replay: 401
    await (await client.post(f"/api/v1/run/wf_text/stream?token={tokens[1]}&env=moon")).read()  # 400
    pb = "/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming"
    await (await client.post(f"{pb}?api_key={SECRET}")).read()
    await (await client.post(f"{pb}?api_key={SECRET}", headers={"x-api-key": SECRET})).read()  # 400
    with pytest.raises(aiohttp.ClientPayloadError):  # cut at the cap: an aborted body
        await (await client.post(f"{pb}?api_key={SECRET}&env=Development")).read()
    await (await client.post(f"/langflow/api/v1/run/wf_text?stream=true&x-api-key={SECRET}")).read()
    await (await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET + "x"})).read()  # 401
    metrics = await (await client.get("/metrics")).text()
    out, err = capfd.readouterr()
    logs = out + err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "access"]
    assert len(access) >= 10
    for secret in [SECRET, *tokens]:
        assert secret not in logs
        assert secret not in metrics
        assert secret[8:] not in logs  # not even the token's random part
    run_lines = [a for a in access if a.get("outcome") == "completed"]
    assert run_lines and {"job_id", "flow", "key_id", "env", "status", "output_tokens", "duration_s"} <= set(
        run_lines[0])
    assert any(a.get("outcome") == "deadline" for a in access)


class _Recorder(io.RawIOBase):
    """A raw stream that records each write that reaches it (each would be one syscall)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.writes.append(bytes(b))
        return len(b)


async def test_lines_of_one_loop_turn_leave_in_one_write_right_after_it(monkeypatch):
    import structlog

    raw = _Recorder()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BufferedWriter(raw), write_through=True))
    log = structlog.get_logger("flowgate.test")
    log.info("first_line")
    log.info("second_line")
    assert raw.writes == []  # deferred to the end of this loop turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(raw.writes) == 1 and b"first_line" in raw.writes[0] and b"second_line" in raw.writes[0]


def test_outside_a_loop_each_line_is_flushed_at_once(capfd):
    import structlog

    capfd.readouterr()
    structlog.get_logger("flowgate.test").info("sync_line")
    assert "sync_line" in capfd.readouterr().err


def test_aiohttp_and_asyncio_records_are_one_short_line_without_the_request(caplog):
    import logging

    from proxy.logging import install_stdlib_redaction

    install_stdlib_redaction()
    secret = "fg_live_should_never_show"
    try:
        raise ValueError(f"bad line: GET /?api_key={secret}")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s: %s", "1.2.3.4", secret)
    logging.getLogger("aiohttp.access").error("GET /?token=%s", secret)
    logging.getLogger("asyncio").error("Fatal error: %r", secret)
    err = caplog.text
    assert secret not in err and "Traceback" not in err
    assert "aiohttp.server: ValueError (details redacted)" in err
    assert len(caplog.records) == 2  # the access record is dropped
    assert all(r.exc_info is None and not r.args for r in caplog.records)


async def test_access_lines_name_the_key_and_the_backends_failure(upstream, gateway, capfd):
    """Token mints and refused runs (403) name the key id; a 502 names the backend and what went wrong."""
    import orjson

    from tests.conftest import NOEXEC_SECRET, free_port

    cfg = base_config(upstream.url)
    cfg["backends"]["text"]["url"] = f"http://127.0.0.1:{free_port()}"  # nobody listens
    client = await gateway(cfg)
    capfd.readouterr()
    assert (await client.get("/api/v1/token", headers={"x-api-key": SECRET})).status == 200
    pb = "/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run"
    assert (await client.post(pb, headers={"x-api-key": NOEXEC_SECRET})).status == 403
    assert (await client.post(pb, headers={"x-api-key": "fg_unknown"})).status == 401
    assert (await client.post(pb, headers={"x-api-key": SECRET})).status == 502
    lines = [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if '"access"' in line]
    mint, forbidden, unknown, failed = lines[-4:]
    assert mint["key_id"] == "key_acme" and mint["status"] == 200
    assert forbidden["key_id"] == "key_noexec" and forbidden["status"] == 403
    assert unknown["status"] == 401 and unknown.get("key_id") is None
    assert failed["status"] == 502 and failed["backend"] == "text"
    assert "Connect" in failed["backend_error"] or "refused" in failed["backend_error"].lower()
