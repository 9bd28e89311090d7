"""Reload: a new config for a running server (SIGHUP, ``flowgate reload``).

What reloads (keys, flows, backends, accounts, limits, CORS) is in force for the next request,
on every worker; runs already open finish under the config they started with; what cannot reload
(listen address, workers, store) is named and kept; an invalid file changes nothing and is logged
with check-config's own message; accounts new to the config are seeded set-if-absent.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import subprocess
import sys
import time
from collections import Counter

import aiohttp
import pytest
import structlog

from proxy import metrics as m
from proxy.config import parse_config
from proxy.context import GATEWAY
from proxy.front.reload import apply, invalid_text, prepare, prepared
from tests.conftest import OTHER_SECRET, SECRET, base_config, sha, stream_chunks
from tests.front.served import ROOT, Served, run, served_config

NEW_SECRET = "fg_test_secret_reloaded_1"
WORDS = [f"w{i} " for i in range(40)]
BODY = json.dumps(WORDS, separators=(",", ":")).encode()


def words(delay: float = 0.0):
    async def handler(request, seen):
        return await stream_chunks(request, WORDS, delay=delay)
    return handler


def grown(cfg: dict) -> dict:
    """``cfg`` plus an account, a flow of it and a key for it; key_other removed."""
    new = copy.deepcopy(cfg)
    new["accounts"]["newco"] = {"initial_credits": 1_000_000}
    new["flows"].append({"id": "wf_new", "owner": "newco", "tenant": "t1", "workspace": "w1",
                         "targets": {"Production": {"backend": "text", "path": "/new"}}})
    new["keys"] = [k for k in new["keys"] if k["id"] != "key_other"]
    new["keys"].append({"id": "key_new", "sha256": sha(NEW_SECRET), "owner": "newco"})
    return new


def write(path, cfg: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(cfg))


# --- prepare: validated first, restart-only keys named and kept ----------------------------------

def test_prepare_names_what_applies_at_the_next_restart_and_keeps_it(tmp_path):
    raw = base_config("http://127.0.0.1:9")
    running = parse_config(raw)
    new = grown(raw)
    new["server"] = {**new["server"], "port": 9999, "workers": 3}
    new["store"] = f"sqlite:///{tmp_path / 'other.db'}"
    new["dialects"] = {"workflow": {"prefix": "/wf"}}
    new["cors"] = {"allow_origins": ["https://app.example"]}
    write(tmp_path / "new.yaml", new)
    plan = prepare(tmp_path / "new.yaml", running)
    assert plan.pending_restart == ["server.port", "server.workers", "store", "dialects"]
    assert plan.config.server == running.server and plan.config.store == running.store
    assert plan.config.dialects == running.dialects
    assert plan.config.key_by_id("key_new") is not None and plan.config.key_by_id("key_other") is None
    assert plan.config.flow("wf_new") is not None
    assert plan.config.cors.allow_origins == ["https://app.example"]


def test_an_invalid_file_is_refused_with_check_configs_own_message(tmp_path, capsys):
    running = parse_config(base_config("http://127.0.0.1:9"))
    bad = grown(base_config("http://127.0.0.1:9"))
    bad["flows"][-1]["targets"]["Production"]["backend"] = "ghost"
    bad["keys"][0]["sha256"] = "nothex"
    path = tmp_path / "bad.yaml"
    write(path, bad)
    structlog.reset_defaults()
    from proxy.logging import configure_logging

    configure_logging("info", json=True)
    capsys.readouterr()
    assert prepared(path, running) is None
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    refused = [line for line in lines if line["event"] == "reload_refused"]
    assert len(refused) == 1 and len(lines) == 1
    checked = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 2
    assert refused[0]["error"] == checked.stdout.rstrip("\n")
    assert "'ghost' is not a backend" in refused[0]["error"] and "sha256" in refused[0]["error"]
    missing = tmp_path / "gone.yaml"
    assert prepared(missing, running) is None  # an unreadable file is refused the same way
    assert "cannot read" in capsys.readouterr().err


# --- apply: one worker's gateway -----------------------------------------------------------------

@pytest.fixture(autouse=True)
def forget_newco():
    yield
    m.forget(m.ACCOUNT_BALANCE, "newco")  # the account these tests add: other tests read the gauge's labels


async def test_apply_swaps_for_new_requests_while_an_open_run_finishes_under_its_own(upstream, gateway, tmp_path):
    upstream.handle("/text", words(delay=0.03))
    upstream.handle("/new", words())
    raw = base_config(upstream.url, store=f"sqlite:///{tmp_path / 'fg.db'}")
    client = await gateway(raw)
    gw = client.app[GATEWAY]
    url = "/api/v1/tenants/t1/workspaces/w1/flows/{}/run-streaming"
    new = grown(raw)
    new["keys"] = [k for k in new["keys"] if k["id"] != "key_acme"]  # the open run's own key goes
    new["cors"] = {"allow_origins": ["https://app.example"]}

    async def open_run():
        async with client.post(url.format("wf_text"), headers={"x-api-key": SECRET}, json={}) as resp:
            return resp.status, await resp.read()

    opened = asyncio.create_task(open_run())
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    await apply(gw, parse_config(new))
    assert gw.generation == 1
    async with client.post(url.format("wf_text"), headers={"x-api-key": SECRET}, json={}) as resp:
        assert resp.status == 401  # the removed key: its next request
    async with client.post(url.format("wf_new"), headers={"x-api-key": NEW_SECRET}, json={}) as resp:
        assert resp.status == 200 and await resp.read() == BODY
    async with client.options("/api/v1/run/wf_text/stream", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"}) as resp:
        assert resp.headers.get("Access-Control-Allow-Origin") == "https://app.example"
    assert await opened == (200, BODY)  # intact, under the key that admitted it
    acct = await gw.store.get_account("newco")
    assert acct.balance == 1_000_000 - acct.spent and acct.spent > 0  # seeded at the reload
    ledger = await gw.store.ledger("acme")
    assert len(ledger) == 1 and ledger[0]["outcome"] == "completed"  # settled by its own chain


async def test_a_reload_seeds_new_accounts_set_if_absent(gateway, tmp_path):
    raw = base_config("http://127.0.0.1:9", store=f"sqlite:///{tmp_path / 'fg.db'}")
    client = await gateway(raw)
    gw = client.app[GATEWAY]
    await gw.store.seed_account("newco", 5)  # another replica (or an older config) seeded it already
    await gw.store.grant("newco", 10)
    await apply(gw, parse_config(grown(raw)))
    assert (await gw.store.get_account("newco")).balance == 15  # never reset to 1_000_000
    raw2 = grown(raw)
    raw2["accounts"]["acme"]["initial_credits"] = 1
    await apply(gw, parse_config(raw2))
    assert (await gw.store.get_account("acme")).balance == 100000  # an existing balance is not reseeded
    m.child(m.ACCOUNT_BALANCE, "newco").set(15)
    await apply(gw, parse_config(raw))  # newco leaves the config: its balance series goes with it
    assert ("newco",) not in m.ACCOUNT_BALANCE._children


async def test_the_key_ring_a_reload_puts_in_force_is_kept_current(gateway, tmp_path):
    """The admin API's keys (in the store) are re-validated in the background every FRESH_S / 2 so
    a request does not wait for the store: on the ring in force, not on the one a reload replaced."""
    from proxy.policies.keys import KeySpec, create_key

    raw = base_config("http://127.0.0.1:9", store=f"sqlite:///{tmp_path / 'fg.db'}")
    client = await gateway(raw)
    gw = client.app[GATEWAY]
    replaced = gw.keys
    await apply(gw, parse_config(grown(raw)))
    assert gw.keys is not replaced
    await create_key(gw.config, gw.store, KeySpec(owner="acme"))  # made on another replica, say
    version = await gw.store.keys_version()
    await asyncio.sleep(gw.keys.fresh_s * 2)
    assert gw.keys._version == version and time.monotonic() - gw.keys._checked < gw.keys.fresh_s
    assert len(gw.keys.stored()) == 1


async def test_a_stream_token_minted_with_a_key_a_reload_removed_is_refused(upstream, gateway):
    """The token outlives its key: spending it after the reload is refused (401), and only once."""
    upstream.handle("/text", words())
    raw = base_config(upstream.url)
    client = await gateway(raw)
    gw = client.app[GATEWAY]
    tokens = []
    for _ in range(2):
        resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
        assert resp.status == 200
        tokens.append((await resp.json())["token"])
    new = copy.deepcopy(raw)
    new["keys"] = [k for k in new["keys"] if k["id"] != "key_acme"]
    await apply(gw, parse_config(new))
    resp = await client.post("/api/v1/run/wf_text/stream", params={"token": tokens[0]}, data=b"{}")
    assert resp.status == 401
    assert await gw.store.ledger("acme") == []  # nothing ran, nothing billed
    await apply(gw, parse_config(raw))  # the key is back
    resp = await client.post("/api/v1/run/wf_text/stream", params={"token": tokens[0]}, data=b"{}")
    assert resp.status == 401  # spent by the refusal: single use, whatever the key does later
    resp = await client.post("/api/v1/run/wf_text/stream", params={"token": tokens[1]}, data=b"{}")
    assert resp.status == 200  # its key is live again


# --- a real server: SIGHUP, every worker, the open stream ----------------------------------------

async def test_sighup_reloads_every_worker_keeps_open_streams_and_refuses_a_bad_file(upstream, tmp_path):
    upstream.handle("/text", words(delay=0.05))  # the open stream: two seconds
    upstream.handle("/new", words())
    cfg = served_config(upstream.url, tmp_path)
    server = await Served(tmp_path, cfg).start()
    try:
        async with aiohttp.ClientSession() as session:
            opened = asyncio.create_task(run(session, server.url, SECRET))
            await asyncio.wait_for(upstream.arrived.wait(), 5)
            new = grown(cfg)
            new["server"] = {**new["server"], "port": 1, "workers": 3}  # restart-only: named, kept
            server.write(new)
            server.signal(signal.SIGHUP)
            t0 = time.monotonic()
            await server.until(lambda: len(server.events("config_swapped")) >= 2, 3, "every worker swapped")
            results = await asyncio.gather(*(run(session, server.url, NEW_SECRET, "wf_new") for _ in range(20)))
            took = time.monotonic() - t0
            assert [s for s, _ in results] == [200] * 20 and all(b == BODY for _, b in results)
            assert took < 3
            gone = await asyncio.gather(*(run(session, server.url, OTHER_SECRET, "wf_other") for _ in range(10)))
            assert [s for s, _ in gone] == [401] * 10
            assert await opened == (200, BODY)
            pending = server.events("reload_pending_restart")
            assert len(pending) == 1 and pending[0]["keys"] == ["server.port", "server.workers"]
            assert len(server.workers()) == 2  # workers: 3 waits for the next restart

            bad = copy.deepcopy(new)
            bad["flows"][-1]["targets"]["Production"]["backend"] = "ghost"
            server.write(bad)
            server.signal(signal.SIGHUP)
            await server.until(lambda: server.events("reload_refused"), 3, "the refusal logged")
            await asyncio.sleep(0.3)
            assert len(server.events("config_swapped")) == 2  # nobody swapped
            again = await asyncio.gather(*(run(session, server.url, NEW_SECRET, "wf_new") for _ in range(20)))
            assert [s for s, _ in again] == [200] * 20
        served = Counter(line["worker"] for line in server.events("access") if line.get("flow") == "wf_new")
        assert set(served) == {0, 1}, served  # the new key ran the new flow on every worker
        refused = server.events("reload_refused")
        assert len(refused) == 1 and refused[0]["error"] == invalid_text(server.path, _problems(server.path))
    finally:
        assert await server.stop() == 0


def _problems(path):
    from proxy.config import ConfigError, load_config

    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return exc.value


async def test_a_worker_started_after_a_reload_starts_on_the_new_config(upstream, tmp_path):
    upstream.handle("/new", words())
    cfg = served_config(upstream.url, tmp_path)
    server = await Served(tmp_path, cfg).start()
    try:
        server.write(grown(cfg))
        server.signal(signal.SIGHUP)
        await server.until(lambda: len(server.events("config_swapped")) >= 2, 5, "every worker swapped")
        for pid in server.workers():
            import os

            os.kill(pid, signal.SIGKILL)
        await server.until(lambda: len(server.events("worker_started")) >= 4 and len(server.workers()) == 2, 10,
                           "two new workers")
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(run(session, server.url, NEW_SECRET, "wf_new") for _ in range(10)))
        assert [s for s, _ in results] == [200] * 10
    finally:
        assert await server.stop() == 0


async def test_one_process_reloads_on_sighup_too(upstream, tmp_path):
    upstream.handle("/new", words())
    cfg = served_config(upstream.url, tmp_path, workers=1)
    server = await Served(tmp_path, cfg).start(workers=1)
    try:
        server.write(grown(cfg))
        server.signal(signal.SIGHUP)
        await server.until(lambda: server.events("config_swapped"), 5, "the swap")
        async with aiohttp.ClientSession() as session:
            assert await run(session, server.url, NEW_SECRET, "wf_new") == (200, BODY)
    finally:
        assert await server.stop() == 0


# --- flowgate reload ------------------------------------------------------------------------------

def flowgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


async def test_flowgate_reload_validates_first_then_signals_the_server(upstream, tmp_path):
    upstream.handle("/new", words())
    cfg = served_config(upstream.url, tmp_path)
    server = await Served(tmp_path, cfg).start()
    try:
        bad = grown(cfg)
        bad["flows"][-1]["owner"] = "nobody"
        server.write(bad)
        done = flowgate("reload", "--config", str(server.path))
        assert done.returncode == 2 and done.stderr.startswith(f"{server.path}: invalid config:")
        await asyncio.sleep(0.5)
        assert not server.events("reload_refused") and not server.events("reloaded")  # nothing was sent
        server.write(grown(cfg))
        done = flowgate("reload", "--config", str(server.path))
        assert done.returncode == 0, done.stderr
        assert f"sent SIGHUP to {server.proc.pid}" in done.stdout
        await server.until(lambda: len(server.events("config_swapped")) >= 2, 5, "every worker swapped")
    finally:
        assert await server.stop() == 0


def test_flowgate_reload_without_a_pid_file_says_what_to_do(tmp_path):
    cfg = base_config("http://127.0.0.1:9")
    write(tmp_path / "fg.yaml", cfg)
    done = flowgate("reload", "--config", str(tmp_path / "fg.yaml"))
    assert done.returncode == 2 and "server.pid_file" in done.stderr
    cfg["server"]["pid_file"] = str(tmp_path / "none.pid")
    write(tmp_path / "fg.yaml", cfg)
    done = flowgate("reload", "--config", str(tmp_path / "fg.yaml"))
    assert done.returncode == 1 and "no server pid there" in done.stderr and "Traceback" not in done.stderr
    done = flowgate("reload", "--config", str(tmp_path / "fg.yaml"), "--pid", "999999999")
    assert done.returncode == 1 and "not a process id" in done.stderr  # above any pid_max
    gone = subprocess.Popen(["true"])
    gone.wait()
    done = flowgate("reload", "--config", str(tmp_path / "fg.yaml"), "--pid", str(gone.pid))
    assert done.returncode == 1 and "no process" in done.stderr


# --- SIGHUP as soon as the pid file names the server (flowgate reload, a config manager) ----------

@pytest.mark.parametrize("workers", [1, 2])
async def test_a_sighup_storm_while_the_server_starts_neither_kills_it_nor_is_lost(upstream, tmp_path, workers):
    """The pid file is written before the server can serve: a reload sent the moment it appears
    must not end the process (SIGHUP's default action), and the config it asked for is in force."""
    import os
    from pathlib import Path

    upstream.handle("/new", words())
    cfg = served_config(upstream.url, tmp_path, workers=workers)
    server = Served(tmp_path, cfg)
    server.write(grown(cfg))  # changed before the server even started: what a reload asks for
    server.write(cfg)
    pid_file = Path(cfg["server"]["pid_file"])
    server.log = server.log_path.open("wb")
    server.proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived server, not awaited
        [sys.executable, "-m", "proxy", "serve", "--config", str(server.path)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=server.log)
    try:
        await server.until(pid_file.exists, 30, "the pid file")
        server.write(grown(cfg))
        started = "worker_started" if workers > 1 else "listening"
        sent = 0
        while sent < 3 or len(server.events(started)) < workers:  # (a fast start may beat the first one)
            assert server.proc.poll() is None, f"killed by a SIGHUP while starting: {server.text()[-2000:]}"
            os.kill(server.proc.pid, signal.SIGHUP)
            sent += 1
            await asyncio.sleep(0.005)
        assert sent > 1
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 5
            while True:  # on every worker (a worker takes a reload handed over while it started once it serves)
                results = await asyncio.gather(*(run(session, server.url, NEW_SECRET, "wf_new") for _ in range(10)))
                if [s for s, _ in results] == [200] * 10:
                    break
                assert time.monotonic() < deadline, f"the reload asked for while starting was lost ({results})"
                await asyncio.sleep(0.1)
        assert not server.events("worker_died")
    finally:
        assert await server.stop() == 0
