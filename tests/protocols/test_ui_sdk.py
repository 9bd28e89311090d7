"""The real AI SDK (the ``ai`` package pinned in tests/sdk/package.json) through a live gateway in
front of a Langflow-event backend: useChat's machinery (``AbstractChat``) over
``DefaultChatTransport`` (``?protocol=ui``) and ``TextStreamChatTransport`` (text/plain), a fresh
stream token per message (tests/sdk/harness.mjs).

Needs node (>= 18) and ``npm ci`` in tests/sdk (``make test`` runs it when node is present); skips
with the reason otherwise, and fails instead under REQUIRE_NODE=1 (as .ci/run sets).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from itertools import pairwise
from pathlib import Path

import pytest

from proxy.api.runs import DEADLINE_MESSAGE
from tests.conftest import SECRET, base_config, langflow_tokens

SDK = Path(__file__).resolve().parent.parent / "sdk"
N_TOKENS, SPACING_S = 20, 0.05  # the backend's 20 tokens over ~1 s


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed: the AI SDK harness (tests/sdk) needs node >= 18 and npm"
    elif not (SDK / "node_modules" / "ai" / "package.json").exists():
        reason = "the AI SDK is not installed in tests/sdk: run `make test` (or `npm ci` in tests/sdk)"
    else:
        return node
    if os.environ.get("REQUIRE_NODE") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


async def harness(node: str, config: dict) -> dict:
    proc = await asyncio.create_subprocess_exec(node, str(SDK / "harness.mjs"), json.dumps(config), cwd=SDK,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    results = {r["name"]: r for r in json.loads(out)["runs"]}
    for r in results.values():
        assert "crashed" not in r, r["crashed"]
    return results


@pytest.fixture(scope="module")
def node() -> str:
    return require_node()


@pytest.fixture
async def sdk(node, upstream, gateway):
    """``await sdk(run, ...)``: the harness's results by run name (``_backend``: the bodies the
    Langflow backend received)."""
    upstream.handle("/lf", langflow_tokens(N_TOKENS, SPACING_S, usage={"input_tokens": 7, "output_tokens": 20}))
    upstream.handle("/lf-forever", langflow_tokens(spacing_s=SPACING_S, forever=True))
    cfg = base_config(upstream.url)
    cfg["flows"].append({"id": "wf_capped", "owner": "acme", "max_duration_s": 2,
                         "targets": {"Production": {"backend": "lf", "path": "/lf-forever"}}})
    client = await gateway(cfg)

    async def run(*runs: dict) -> dict:
        out = await harness(node, {"base": str(client.make_url("")).rstrip("/"), "key": SECRET, "runs": list(runs)})
        out["_backend"] = [json.loads(r.body) for r in upstream.requests]
        return out

    return run


UI = {"name": "ui", "transport": "ui", "flow": "wf_lf", "texts": ["Tell me about owls", "And about bats?"]}
UI_CAPPED = {"name": "ui-capped", "transport": "ui", "flow": "wf_capped", "texts": ["Talk forever"]}
TEXT = {"name": "text", "transport": "text", "flow": "wf_lf", "texts": ["Tell me about owls"]}
TEXT_CAPPED = {"name": "text-capped", "transport": "text", "flow": "wf_capped", "texts": ["Talk forever"]}


def deltas(run: dict, send: int = 0) -> list[tuple[float, str]]:
    s = run["sends"][send]
    return [(c["t"], c["chunk"]["delta"]) for c in run["chunks"][s["from"]:s["to"]]
            if c["chunk"]["type"] == "text-delta"]


def spread(times: list[float]) -> tuple[float, float]:
    """(first to last in s, largest gap in s)."""
    return (times[-1] - times[0]) / 1000, max(b - a for a, b in pairwise(times)) / 1000


async def test_default_chat_transport_reads_20_deltas_as_they_are_generated_from_the_users_text(sdk):
    results = await sdk(UI)
    run = results["ui"]
    assert [s["status"] for s in run["sends"]] == ["ready", "ready"] and run["errors"] == []
    for send in (0, 1):
        got = deltas(run, send)
        assert [d for _, d in got] == [f"w{i} " for i in range(N_TOKENS)]
        first_to_last, widest = spread([t for t, _ in got])
        print(f"DefaultChatTransport message {send + 1}: {len(got)} text deltas over {first_to_last:.3f} s, "
              f"largest gap {widest:.3f} s")
        assert first_to_last > 0.6 and widest < 0.5  # spread over the backend's ~1 s, not one burst
    assistant = [m for m in run["messages"] if m["role"] == "assistant"]
    assert [m["text"] for m in assistant] == ["".join(f"w{i} " for i in range(N_TOKENS))] * 2
    for m in assistant:  # the finish part's metadata, as useChat keeps it on the message
        assert m["metadata"]["usage"] == {"inputTokens": 7, "outputTokens": 20, "totalTokens": 27}
        assert m["metadata"]["jobId"] == m["id"]  # the start part's messageId: the gateway's job id
    assert [f["finishReason"] for f in run["finishes"]] == ["stop", "stop"]
    assert not any(f["isError"] for f in run["finishes"])
    assert len({r["token_tail"] for r in run["requests"]}) == 2  # a fresh token per message
    # the Langflow backend received the user's text (not the SDK's chat request), the chat as its session
    bodies = [b for b in results["_backend"] if b.get("session_id") == "chat-ui"]
    assert [b["input_value"] for b in bodies] == ["Tell me about owls", "And about bats?"]
    assert all(b["input_type"] == "chat" and b["output_type"] == "chat" and "messages" not in b for b in bodies)


async def test_a_capped_run_ends_with_an_error_part_never_a_finish(sdk):
    run = (await sdk(UI_CAPPED))["ui-capped"]
    types = [c["chunk"]["type"] for c in run["chunks"]]
    print(f"DefaultChatTransport capped at 2 s: {types.count('text-delta')} deltas, then {types[-2:]}; "
          f"status {run['sends'][0]['status']!r}, error {run['sends'][0]['error']!r}, "
          f"after {(run['sends'][0]['ended'] - run['sends'][0]['started']) / 1000:.2f} s")
    assert types[-1] == "error" and "finish" not in types
    assert run["chunks"][-1]["chunk"]["errorText"] == DEADLINE_MESSAGE
    assert run["sends"][0]["status"] == "error" and run["sends"][0]["error"] == DEADLINE_MESSAGE
    assert run["errors"] == [DEADLINE_MESSAGE]
    assert 1.9 < (run["sends"][0]["ended"] - run["sends"][0]["started"]) / 1000 < 5
    assert types.count("text-delta") >= 30  # what was generated before the cap is shown
    assert [f["isError"] for f in run["finishes"]] == [True]


async def test_text_stream_chat_transport_reads_the_plain_text_route(sdk):
    run = (await sdk(TEXT))["text"]
    assert run["sends"][0]["status"] == "ready" and run["errors"] == []
    got = deltas(run)
    assert "".join(d for _, d in got) == "".join(f"w{i} " for i in range(N_TOKENS))
    first_to_last, widest = spread([t for t, _ in got])
    print(f"TextStreamChatTransport: {len(got)} text deltas over {first_to_last:.3f} s, largest gap {widest:.3f} s")
    assert first_to_last > 0.6 and widest < 0.5


async def test_text_stream_chat_transport_sees_a_capped_run_as_a_broken_body(sdk):
    """text/plain has no error event: the cut shows only as a body that breaks off (a network error,
    no cause), which is why a chat UI should ask for ``protocol=ui``."""
    run = (await sdk(TEXT_CAPPED))["text-capped"]
    print(f"TextStreamChatTransport capped at 2 s: status {run['sends'][0]['status']!r}, "
          f"error {run['sends'][0]['error']!r}")
    assert run["sends"][0]["status"] == "error" and run["sends"][0]["error"] != DEADLINE_MESSAGE
    assert "finish" not in [c["chunk"]["type"] for c in run["chunks"]]


async def test_a_spent_token_is_an_error_the_chat_shows(sdk):
    """A token sent twice (not fetched per message): the second message is refused before any run
    (401 invalid_token), and useChat reports it as an error instead of an empty answer."""
    run = (await sdk({"name": "reuse", "transport": "ui", "flow": "wf_lf", "texts": ["one", "two"],
                      "reuseToken": True}))["reuse"]
    assert [s["status"] for s in run["sends"]] == ["ready", "error"]
    assert json.loads(run["sends"][1]["error"])["code"] == "invalid_token"
    assert [m["role"] for m in run["messages"]] == ["user", "assistant", "user"]
