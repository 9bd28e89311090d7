"""`flowgate serve` with workers: a real supervisor, real worker processes, real sockets.

Workers share the load and one /metrics counts them all; a SIGKILLed worker is replaced and the
server keeps answering; SIGTERM drains every worker's open streams; the workers do not outlive a
supervisor killed outright; a port already taken is a clear error; ``workers: 1`` is one process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import aiohttp
import pytest

from proxy.front.supervisor import BACKOFF_MAX_S, backoff_s
from proxy.store import open_store
from tests.conftest import SECRET, never_ending, stream_chunks
from tests.front.served import ROOT, Served, run, sample, served_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the workers")

WORDS = [f"w{i} " for i in range(40)]
BODY = json.dumps(WORDS, separators=(",", ":")).encode()  # the profitbase dialect's streamed JSON array


def words(delay: float = 0.0):
    async def handler(request, seen):
        return await stream_chunks(request, WORDS, delay=delay)
    return handler


async def test_workers_share_the_load_and_one_metrics_counts_them_all(upstream, tmp_path):
    upstream.handle("/text", words())
    server = await Served(tmp_path, served_config(upstream.url, tmp_path)).start()
    try:
        assert len(server.workers()) == 2
        async with aiohttp.ClientSession() as session:
            sem = asyncio.Semaphore(16)

            async def one():
                async with sem:
                    return await run(session, server.url, SECRET)

            results = await asyncio.gather(*(one() for _ in range(200)))
            assert [s for s, _ in results] == [200] * 200 and all(b == BODY for _, b in results)
            await asyncio.sleep(1.5)  # the other worker's snapshot (at most a second old)
            text = await server.metrics(session)
        assert sample(text, "flowgate_runs_ended_total", dialect="profitbase", flow="wf_text",
                      outcome="completed") == 200
        assert sample(text, "flowgate_workers") == 2
        assert "process_cpu_seconds_total" not in text  # per-process series are not pooled
        served = Counter(line["worker"] for line in server.events("access") if line.get("flow") == "wf_text")
        assert sum(served.values()) == 200 and set(served) == {0, 1}, served
        # the store is shared as between replicas: one ledger entry per run, each its own job id
        store = open_store(server.cfg["store"])
        await store.start()
        try:
            ledger, acct = await store.ledger("acme"), await store.get_account("acme")
        finally:
            await store.close()
        assert len(ledger) == 200 and len({e["job_id"] for e in ledger}) == 200
        assert acct.held == 0 and acct.balance == 100000 - sum(e["credits"] for e in ledger) < 100000
    finally:
        assert await server.stop() == 0


async def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(upstream, tmp_path):
    upstream.handle("/text", words())
    server = await Served(tmp_path, served_config(upstream.url, tmp_path)).start()
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                assert (await run(session, server.url, SECRET))[0] == 200
            await asyncio.sleep(1.5)  # every worker's snapshot holds its runs
            before = server.workers()
            victim = before[0]
            os.kill(victim, signal.SIGKILL)
            t0 = time.monotonic()
            after = await server.until(lambda: (w := server.workers()) and len(w) == 2 and victim not in w and w,
                                       5, "a new worker")
            assert time.monotonic() - t0 < 5
            results = await asyncio.gather(*(run(session, server.url, SECRET) for _ in range(50)))
            assert [s for s, _ in results] == [200] * 50
            await asyncio.sleep(1.5)
            text = await server.metrics(session)
        died = server.events("worker_died")
        assert len(died) == 1 and died[0]["pid"] == victim and died[0]["how"] == "signal SIGKILL"
        slot = str(died[0]["worker"])
        assert sample(text, "flowgate_worker_restarts_total", worker=slot) == 1
        assert sample(text, "flowgate_workers") == 2
        # the dead worker's counts were kept: nothing counted goes backwards
        assert sample(text, "flowgate_runs_ended_total", dialect="profitbase", flow="wf_text",
                      outcome="completed") == 70
        assert set(after) != set(before)
    finally:
        assert await server.stop() == 0


async def test_sigterm_drains_the_open_streams_of_every_worker_then_exits_0(upstream, tmp_path):
    upstream.handle("/text", words(delay=0.05))  # two seconds a stream
    server = await Served(tmp_path, served_config(upstream.url, tmp_path)).start()
    async with aiohttp.ClientSession() as session:
        runs = [asyncio.create_task(run(session, server.url, SECRET)) for _ in range(16)]
        await server.until(lambda: len(upstream.requests) == 16, 10, "sixteen streams open")
        await asyncio.sleep(0.2)
        server.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises(aiohttp.ClientError):  # the listeners are closed: refused at once, not left hanging
            await asyncio.wait_for(run(session, server.url, SECRET), 3)
        results = await asyncio.gather(*runs)
    assert [s for s, _ in results] == [200] * 16 and all(b == BODY for _, b in results)
    assert await server.stop() == 0
    assert len(server.events("worker_stopped")) == 2
    served = {line["worker"] for line in server.events("access") if line.get("flow") == "wf_text"}
    assert served == {0, 1}  # both workers had streams open, and both drained them


async def test_streams_longer_than_the_drain_are_cut_and_the_server_still_exits_0(upstream, tmp_path):
    upstream.handle("/text", never_ending)
    server = await Served(tmp_path, served_config(upstream.url, tmp_path, shutdown_timeout_s=1)).start()
    async with aiohttp.ClientSession() as session:
        async def endless():
            async with session.post(f"{server.url}/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming",
                                    headers={"x-api-key": SECRET}, json={}) as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):  # cut: never a clean end
                    await resp.read()

        streams = [asyncio.create_task(endless()) for _ in range(6)]
        await server.until(lambda: len(upstream.requests) == 6, 10, "six streams open")
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        assert await server.stop() == 0
        assert time.monotonic() - t0 < 1 + 4  # the drain, then the cut (well before the kill grace)
        await asyncio.gather(*streams)
    assert not server.events("worker_died") and len(server.events("worker_stopped")) == 2


async def test_workers_stop_when_the_supervisor_is_killed_outright(upstream, tmp_path, monkeypatch):
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))  # where the supervisor makes its directory
    server = await Served(tmp_path, served_config(upstream.url, tmp_path)).start()
    assert len(list(private.glob("flowgate-*"))) == 1
    workers = server.workers()
    server.signal(signal.SIGKILL)
    server.proc.wait()

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid) for pid in workers)

    deadline = time.monotonic() + 10
    while not gone():
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        await asyncio.sleep(0.1)
    assert not list(private.glob("flowgate-*"))  # the orphans removed the supervisor's directory
    assert server.port not in _listening_ports()  # no orphan holds the port


def _listening_ports() -> set[int]:
    """Local ports of every listening TCP socket on the machine (/proc/net/tcp and tcp6). A bind
    of the freed port would be no proof: once free, it is an ephemeral port like any other, and
    another process's outgoing connection may take it meanwhile (a one-off EADDRINUSE, seen)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_port_already_taken_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = served_config("http://127.0.0.1:9", tmp_path)
        cfg["server"]["port"] = taken.getsockname()[1]
        server = Served(tmp_path, cfg)
        done = subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(server.path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1" in done.stderr and "Traceback" not in done.stderr


async def test_one_worker_is_a_single_process(upstream, tmp_path):
    upstream.handle("/text", words())
    server = await Served(tmp_path, served_config(upstream.url, tmp_path, workers=1)).start(workers=1)
    try:
        assert server.workers() == []
        async with aiohttp.ClientSession() as session:
            assert await run(session, server.url, SECRET) == (200, BODY)
            text = await server.metrics(session)
        assert sample(text, "flowgate_workers") == 1
        assert "process_cpu_seconds_total" in text  # one process: its own collectors as before
    finally:
        assert await server.stop() == 0


def test_backoff_grows_while_a_worker_keeps_dying_young():
    assert backoff_s(1) == pytest.approx(0.1)
    assert backoff_s(2) == pytest.approx(0.2)
    assert backoff_s(5) == pytest.approx(1.6)
    assert backoff_s(1000) == BACKOFF_MAX_S


def test_workers_that_cannot_start_stop_the_server_with_exit_1(tmp_path):
    """A worker that never comes up (here: its SQLite file cannot be created) is not restarted
    forever: with no worker ever serving, the supervisor stops them all and exits 1."""
    cfg = served_config("http://127.0.0.1:9", tmp_path)
    cfg["store"] = "sqlite:////proc/no-such-dir/fg.db"
    server = Served(tmp_path, cfg)
    done = subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(server.path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    events = [json.loads(line)["event"] for line in done.stderr.splitlines() if line.startswith("{")]
    assert events.count("workers_cannot_start") == 1 and events[-1] == "stopped"
    assert "worker_died" not in events  # not restarted


async def test_a_storm_of_sighups_under_load_kills_no_worker(upstream, tmp_path):
    """Forty reloads in a row, alternating two configs, while runs go on: no worker dies, no run
    fails, and the last config is the one in force."""
    upstream.handle("/text", words())
    cfg = served_config(upstream.url, tmp_path)
    server = await Served(tmp_path, cfg).start()
    other = {**cfg, "cors": {"allow_origins": ["https://a.example"]}}
    try:
        async with aiohttp.ClientSession() as session:
            load = asyncio.gather(*(run(session, server.url, SECRET) for _ in range(100)))
            for i in range(40):
                server.write(other if i % 2 else cfg)
                server.signal(signal.SIGHUP)
                await asyncio.sleep(0.01)
            results = await load
            # signals sent faster than they are handled may merge (POSIX keeps one pending): the
            # last file written is the one in force, on both workers, whatever the count
            deadline = time.monotonic() + 5
            fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))  # a connection each
            while True:
                allowed = []
                for _ in range(10):
                    async with fresh.options(f"{server.url}/api/v1/run/wf_text/stream", headers={
                            "Origin": "https://b.example", "Access-Control-Request-Method": "POST"}) as resp:
                        allowed.append("Access-Control-Allow-Origin" in resp.headers)
                if not any(allowed):
                    break
                assert time.monotonic() < deadline, "the last config written is not in force"
                await asyncio.sleep(0.1)
            await fresh.close()
        assert 1 <= len(server.events("reloaded")) <= 40
        assert [s for s, _ in results] == [200] * 100
        assert not server.events("worker_died") and len(server.workers()) == 2
    finally:
        assert await server.stop() == 0


async def test_a_second_server_on_the_same_port_is_refused_not_sharing_it(upstream, tmp_path):
    """SO_REUSEPORT lets any socket of the same user join a port: a second ``flowgate serve`` (another
    config, another pid_file) must not silently take half of the first one's connections."""
    cfg = served_config(upstream.url, tmp_path)
    server = await Served(tmp_path, cfg).start()
    try:
        twin = tmp_path / "twin"
        twin.mkdir()
        other = served_config(upstream.url, twin)
        other["server"]["port"] = cfg["server"]["port"]
        second = Served(twin, other)
        proc = subprocess.Popen(  # noqa: ASYNC220 - nothing in this loop serves it; it is waited for below
            [sys.executable, "-m", "proxy", "serve", "--config", str(second.path)], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError("a second server joined the first one's port") from None
        assert proc.returncode == 1 and "cannot listen on 127.0.0.1" in err and "already in use" in err, err
        assert "Traceback" not in err
    finally:
        assert await server.stop() == 0


async def test_every_worker_serves_the_admin_and_metrics_listeners(upstream, tmp_path):
    """server.admin_port and server.metrics_port with workers: bound once by the supervisor, served
    by every worker (no worker fails to bind them, none is restarted), /metrics pooled on its port."""
    from tests.api.test_admin import ADMIN_SECRET
    from tests.conftest import free_port, sha

    upstream.handle("/text", words())
    admin_port, metrics_port = free_port(), free_port()
    cfg = served_config(upstream.url, tmp_path, admin_port=admin_port, metrics_port=metrics_port)
    cfg["keys"].append({"id": "key_admin", "sha256": sha(ADMIN_SECRET), "owner": "acme",
                        "policies": ["Execute", "Admin"]})
    server = await Served(tmp_path, cfg).start()
    try:
        await asyncio.sleep(1.0)  # a crash loop would show here
        fresh = aiohttp.TCPConnector(force_close=True)  # a connection each: the kernel spreads them
        async with aiohttp.ClientSession(connector=fresh) as session:
            made = []
            for _ in range(20):
                async with session.post(f"http://127.0.0.1:{admin_port}/admin/v1/keys",
                                        headers={"x-api-key": ADMIN_SECRET}, json={"owner": "acme"}) as resp:
                    assert resp.status == 201
                    made.append((await resp.json())["secret"])
            results = await asyncio.gather(*(run(session, server.url, secret) for secret in made))
            assert [s for s, _ in results] == [200] * 20  # a key made on one worker works on the other
            await asyncio.sleep(1.5)
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                text = await resp.text()
        assert sample(text, "flowgate_runs_ended_total", dialect="profitbase", flow="wf_text",
                      outcome="completed") == 20
        admin = Counter(line["worker"] for line in server.events("access")
                        if line.get("route") == "/admin/v1/keys")
        assert set(admin) == {0, 1}, admin
        assert not server.events("worker_died") and len(server.workers()) == 2
    finally:
        assert await server.stop() == 0


async def test_metrics_stay_whole_when_a_worker_is_killed_mid_stream(upstream, tmp_path):
    """Streams open on a worker SIGKILLed: the pooled gauge drops them (never below zero), counters
    never go backwards, and the killed runs are not counted as ended."""
    upstream.handle("/text", never_ending)
    server = await Served(tmp_path, served_config(upstream.url, tmp_path)).start()
    try:
        fresh = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=fresh) as session:
            async def endless():
                try:
                    async with session.post(
                            f"{server.url}/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming",
                            headers={"x-api-key": SECRET}, json={}) as resp:
                        await resp.read()
                except aiohttp.ClientError:
                    pass

            streams = [asyncio.create_task(endless()) for _ in range(10)]
            await server.until(lambda: len(upstream.requests) == 10, 10, "ten streams open")
            await asyncio.sleep(1.5)
            text = await server.metrics(session)
            assert sample(text, "flowgate_streams_open", dialect="profitbase", flow="wf_text") == 10
            started = sample(text, "flowgate_runs_started_total", dialect="profitbase", flow="wf_text")
            assert started == 10
            victim = server.workers()[0]
            os.kill(victim, signal.SIGKILL)
            await server.until(lambda: (w := server.workers()) and len(w) == 2 and victim not in w, 5, "a new worker")
            await asyncio.sleep(1.5)
            text = await server.metrics(session)
            survivors = sum(not t.done() for t in streams)
            assert 0 < survivors < 10
            assert sample(text, "flowgate_streams_open", dialect="profitbase", flow="wf_text") == survivors
            assert sample(text, "flowgate_runs_started_total", dialect="profitbase", flow="wf_text") == 10
            ended = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("flowgate_runs_ended_total{"))
            assert ended == 0
            negative = [line for line in text.splitlines()
                        if line.startswith("flowgate_") and float(line.rsplit(" ", 1)[1]) < 0]
            assert not negative, negative
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
    finally:
        assert await server.stop() == 0
