"""Issue-2 timing claims, measured on real processes (not in the unit suite):

1. per-line delivery through each dialect vs direct, for a backend sending a line every 50 ms;
2. a flow capped at 2 s in front of a never-ending backend ends between 2 and 3 s, visibly incomplete;
3. a client that disconnects mid-stream: how soon the backend sees its request closed.

Run: .venv/bin/python -m bench.acceptance      (backend on core 0, gateway on core 1)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from .common import SECRET, STAMP, flowgate_config, free_port, no_options, spawn, start_flowgate, wait_port


async def line_latencies(session: aiohttp.ClientSession, method: str, url: str, **kw) -> list[float]:
    """One-way latency (ms) of each stamped line: receive time minus the backend's send stamp."""
    out: list[float] = []
    seen: set[bytes] = set()
    buf = b""
    async with session.request(method, url, **kw) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        async for chunk in resp.content.iter_any():
            now = time.monotonic_ns()
            buf += chunk
            for m in STAMP.finditer(buf):
                if m.group(1) not in seen:  # the first arrival of each line (Langflow's end repeats them)
                    seen.add(m.group(1))
                    out.append((now - int(m.group(2))) / 1e6)
            buf = buf[buf.rfind(b";") + 1:]
    return out


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="flowgate-accept-"))
    bport, gport = free_port(), free_port()
    backend = spawn([__import__("sys").executable, "-m", "bench.backend", str(bport)], 0)
    cfg = flowgate_config(tmp, gport, bport, max_duration_s=300)
    raw = __import__("yaml").safe_load(cfg.read_text())
    for flow in raw["flows"]:
        if flow["id"] == "wf_forever":
            flow["max_duration_s"] = 2
    cfg.write_text(__import__("yaml").safe_dump(raw))
    gw = start_flowgate(cfg, 1)
    try:
        wait_port(bport)
        wait_port(gport)
        g, b = f"http://127.0.0.1:{gport}", f"http://127.0.0.1:{bport}"
        async with aiohttp.ClientSession() as s:
            async def token() -> str:
                async with s.get(f"{g}/api/v1/token", headers={"x-api-key": SECRET}) as r:
                    return (await r.json())["token"]

            paths = {
                "direct": lambda: ("GET", f"{b}/lines?n=20&ms=50", {}),
                "profitbase": lambda: ("POST", f"{g}/api/v1/tenants/t/workspaces/w/flows/wf_lines50/run-streaming",
                                       {"headers": {"x-api-key": SECRET}}),
                "workflow": None,
                "langflow": lambda: ("POST", f"{g}/langflow/api/v1/run/wf_lines50?stream=true",
                                     {"headers": {"x-api-key": SECRET}}),
            }
            print("1. a line every 50 ms, 20 lines, per-line one-way latency (ms)")
            print(f"   {'path':<11} {'p50':>7} {'max':>7}   lines")
            results = {}
            for name, make in paths.items():
                if make is not None:  # warm the path once
                    method, url, kw = make()
                    await line_latencies(s, method, url, **kw)
                if name == "workflow":
                    method, url, kw = "POST", f"{g}/api/v1/run/wf_lines50/stream?token={await token()}", {}
                else:
                    method, url, kw = make()
                lat = await line_latencies(s, method, url, **kw)
                results[name] = lat
                print(f"   {name:<11} {statistics.median(lat):7.3f} {max(lat):7.3f}   {len(lat)}")
            base = statistics.median(results["direct"])
            worst = max(max(v) - base for k, v in results.items() if k != "direct")
            print(f"   worst line vs direct median: +{worst:.3f} ms (target: within 5 ms) -> "
                  f"{'OK' if worst <= 5 else 'MISSED'}")

            print("2. flow capped at 2 s, backend never ends")
            for label, url, kw in [
                ("profitbase", f"{g}/api/v1/tenants/t/workspaces/w/flows/wf_forever/run-streaming",
                 {"headers": {"x-api-key": SECRET}}),
                ("langflow", f"{g}/langflow/api/v1/run/wf_forever?stream=true", {"headers": {"x-api-key": SECRET}}),
            ]:
                t0 = time.monotonic()
                ending = "clean end"
                body = b""
                try:
                    async with s.post(url, **kw) as r:
                        body = await r.read()
                except aiohttp.ClientPayloadError:
                    ending = "aborted body (incomplete chunked response)"
                took = time.monotonic() - t0
                if ending == "clean end":
                    last = json.loads(body.strip().split(b"\n\n")[-1])
                    ending = f"clean end after an '{last['event']}' event, no 'end' event"
                print(f"   {label:<11} ended after {took:.3f} s: {ending} -> {'OK' if 2 <= took <= 3 else 'MISSED'}")

            print("3. client disconnects mid-stream")
            gaps = []
            for _ in range(5):
                r = await s.post(f"{g}/api/v1/tenants/t/workspaces/w/flows/wf_forever/run-streaming",
                                 headers={"x-api-key": SECRET})
                await r.content.readany()
                await asyncio.sleep(0.2)
                closed_at = time.monotonic_ns()
                r.close()
                for _ in range(100):
                    async with s.get(f"{b}/closed?id=forever") as c:
                        seen = (await c.json())["closed_ns"]
                    if seen and seen >= closed_at:
                        break
                    await asyncio.sleep(0.005)
                gaps.append((seen - closed_at) / 1e6)
            print(f"   backend saw the close after {', '.join(f'{x:.2f}' for x in gaps)} ms "
                  f"(target: within 100 ms) -> {'OK' if max(gaps) <= 100 else 'MISSED'}")
    finally:
        gw.terminate()
        backend.terminate()
        gw.wait(10)
        backend.wait(10)


if __name__ == "__main__":
    no_options(__doc__)
    asyncio.run(main())
