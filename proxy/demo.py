"""``flowgate demo``: the gateway, a built-in demo backend, and curl lines that work as printed.

The demo backend streams a made-up answer token by token in two flavours: plain text
(``POST /stream``) and Langflow events (``POST /api/v1/run/{flow}``), so every dialect and the
transcoding between them can be tried without a real flow runtime. Its state (config, SQLite store)
lives in ``--dir``; each start writes a fresh key and prints its secret once.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import orjson
import yaml
from aiohttp import web

from .config import parse_config
from .front.serve import CannotListen, install_uvloop, listen, serve_forever
from .policies.api_key import key_entry, new_secret

ANSWER = (
    "Streaming gateways pass each chunk on the moment it arrives, so the reader sees the answer "
    "grow word by word instead of waiting for the whole of it. This one was written about {topic}."
)
TOKEN_DELAY_S = 0.04


def _topic(body: bytes) -> str:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return "nothing in particular"
    if isinstance(data, dict):
        for key in ("topic", "input_value", "input", "question"):
            if isinstance(data.get(key), str) and data[key].strip():
                return data[key].strip()[:200]
    return "nothing in particular"


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def quiet_on_disconnect(handler):
    """A client that goes away mid-answer ends the handler quietly (no traceback per disconnect)."""

    async def view(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):  # aiohttp's own reset error too
            return web.Response(status=499)  # never sent: the connection is gone; aiohttp only needs an answer

    return view


async def demo_text(request: web.Request) -> web.StreamResponse:
    answer = ANSWER.format(topic=_topic(await request.read()))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    for tok in _tokens(answer):
        await resp.write(tok.encode())
        await asyncio.sleep(TOKEN_DELAY_S)
    await resp.write_eof()
    return resp


def _frame(event: str, data: object) -> bytes:
    return orjson.dumps({"event": event, "data": data}) + b"\n\n"


async def demo_langflow(request: web.Request) -> web.StreamResponse:
    topic = _topic(await request.read())
    answer = ANSWER.format(topic=topic)
    msg_id, session = str(uuid.uuid4()), str(uuid.uuid4())
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(_frame("add_message", {"id": str(uuid.uuid4()), "text": topic, "sender": "User",
                                            "sender_name": "User", "session_id": session}))
    for tok in _tokens(answer):
        await resp.write(_frame("token", {"chunk": tok, "id": msg_id, "timestamp": ""}))
        await asyncio.sleep(TOKEN_DELAY_S)
    usage = {"input_tokens": len(topic) // 4 + 1, "output_tokens": len(answer) // 4 + 1}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    message = {"id": msg_id, "text": answer, "sender": "Machine", "sender_name": "AI", "session_id": session,
               "properties": {"usage": usage}}
    await resp.write(_frame("add_message", message))
    result = {"session_id": session, "outputs": [{"inputs": {"input_value": topic}, "outputs": [
        {"results": {"message": message}, "outputs": {"message": {"message": answer, "type": "text"}},
         "artifacts": {}, "logs": {}, "messages": [], "component_display_name": "Chat Output",
         "component_id": "ChatOutput", "used_frozen_result": False}]}]}
    await resp.write(_frame("end", {"result": result}))
    await resp.write_eof()
    return resp


def demo_backend_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/stream", quiet_on_disconnect(demo_text))
    app.router.add_post("/api/v1/run/{flow}", quiet_on_disconnect(demo_langflow))
    app.router.add_get("/healthz", _ok)
    return app


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def run_demo_backend(host: str, port: int) -> int:
    """Only the demo backend, until SIGINT/SIGTERM (the compose kit's ``demo-backend`` service)."""
    import signal

    async def main() -> None:
        runner = web.AppRunner(demo_backend_app(), access_log=None)
        await runner.setup()
        await listen(web.TCPSite(runner, host, port), host, port, "the demo backend")
        print(f"flowgate demo backend on http://{host}:{port} (POST /stream, POST /api/v1/run/{{flow}})",
              flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except CannotListen as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def demo_config(workdir: Path, port: int, backend_port: int, secret: str) -> dict:
    backend = f"http://127.0.0.1:{backend_port}"
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "store": f"sqlite:///{(workdir / 'flowgate.db').resolve()}",
        "backends": {
            "demo_text": {"url": backend, "protocol": "text"},
            "demo_langflow": {"url": backend, "protocol": "langflow"},
        },
        "accounts": {"demo": {"initial_credits": 100000}},
        "flows": [
            {"id": "wf_demo", "name": "demo", "owner": "demo", "tenant": "t1", "workspace": "w1",
             "targets": {"Production": {"backend": "demo_text", "path": "/stream"}}},
            {"id": "wf_tutor", "name": "tutor", "owner": "demo", "tenant": "t1", "workspace": "w1",
             "targets": {"Production": {"backend": "demo_langflow", "path": "/api/v1/run/tutor?stream=true"},
                         "Development": {"backend": "demo_text", "path": "/stream"}}},
        ],
        "keys": [key_entry(secret, "key_demo", "demo", ["Execute"], None, None, None)],
    }


def curl_lines(port: int, secret: str) -> list[str]:
    base = f"http://127.0.0.1:{port}"
    body = "-H 'Content-Type: application/json' -d '{\"topic\": \"tide pools\"}'"
    return [
        "# profitbase: a streamed JSON array (the Langflow-event backend, transcoded)",
        f"curl --no-buffer -X POST "
        f"'{base}/api/v1/tenants/t1/workspaces/w1/flows/wf_tutor/run-streaming?env=Production' "
        f"-H 'x-api-key: {secret}' {body}",
        "# workflow: mint a single-use token with the key, then stream plain text with the token",
        f"TOKEN=$(curl -s '{base}/api/v1/token?ttl=60' -H 'Authorization: Bearer {secret}' "
        "| python3 -c 'import sys, json; print(json.load(sys.stdin)[\"token\"])')",
        f"curl --no-buffer -X POST \"{base}/api/v1/run/wf_demo/stream?token=$TOKEN\" {body}",
        "# workflow, non-streaming",
        f"curl -X POST '{base}/api/v1/run/wf_demo' -H 'x-api-key: {secret}' {body}",
        "# langflow: Langflow events, by flow name",
        f"curl --no-buffer -X POST '{base}/langflow/api/v1/run/tutor?stream=true' -H 'x-api-key: {secret}' "
        "-H 'Content-Type: application/json' -d '{\"input_value\": \"tide pools\"}'",
        "# operations",
        f"curl {base}/readyz ; echo ; curl -s {base}/metrics | grep '^flowgate_runs_ended_total'",
    ]


def run_demo(port: int, backend_port: int, workdir: str) -> int:
    from .logging import configure_logging

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    secret = new_secret()
    raw = demo_config(wd, port, backend_port, secret)
    (wd / "flowgate.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = parse_config(raw)
    configure_logging("info")

    async def main() -> None:
        runner = web.AppRunner(demo_backend_app(), access_log=None)
        await runner.setup()
        try:
            await listen(web.TCPSite(runner, "127.0.0.1", backend_port), "127.0.0.1", backend_port,
                         "the demo backend")
        except CannotListen:
            await runner.cleanup()
            raise
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve_forever(config, ready=ready))
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            await runner.cleanup()
            task.result()
            return
        print(f"\nflowgate demo: gateway on http://127.0.0.1:{port}, demo backend on :{backend_port}, "
              f"config and SQLite store in {wd}/\nAPI key for this run: {secret}\n\nTry:\n", flush=True)
        print("\n".join(curl_lines(port, secret)) + "\n", flush=True)
        try:
            await task
        finally:
            await runner.cleanup()

    loop = install_uvloop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main())
    except KeyboardInterrupt:
        pass
    except CannotListen as exc:
        print(f"{exc}\n(`make run PORT=... BACKEND_PORT=...` or `flowgate demo --port ... --backend-port ...` "
              "choose others)", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0
