"""The front's routing (proxy.front.routing): its decisions agree with aiohttp's router, path by
path, and a request no route takes (404, 405) is answered by the front as aiohttp answers it, at a
fraction of the cost of a hand-over."""

from __future__ import annotations

import asyncio
import gc
import re

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import MatchInfoError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import parse_config
from proxy.front import FRONT_ROUTES
from proxy.front.request import FrontRequest
from proxy.front.routing import Routes, decidable
from tests.conftest import base_config
from tests.front.raw import STREAM, closed, config, connect, front_of, get, head, post, response
from tests.front.served import sample

pytestmark = pytest.mark.usefixtures("text_upstream")

APP = create_app(parse_config(base_config("http://127.0.0.1:1")))
REFUSE = object()  # the handler a request no route takes is given
ROUTES = Routes(APP.router, APP[FRONT_ROUTES], lambda handler: handler, refuse=REFUSE)

# the segments of every route the app has, a few near misses, and anything else
WORDS = ["api", "v1", "v2", "run", "token", "jobs", "tenants", "t1", "workspaces", "w1", "flows", "wf_text",
         "run-streaming", "stream", "langflow", "admin", "keys", "accounts", "credits", "ledger", "healthz",
         "readyz", "metrics", "openapi.json", "", "Token", "run%5Fx", ".", "..", "{x}", "x:y", "*"]
SEGMENT = st.one_of(st.sampled_from(WORDS), st.text(st.sampled_from("aZ09-_.~!$&'()*+,;=:@%{}"), max_size=6))
TEMPLATES = sorted({resource.canonical for resource in APP.router.resources()})
PATHS = st.one_of(
    st.builds(lambda parts, slash: "/" + "/".join(parts) + ("/" if slash else ""),
              st.lists(SEGMENT, max_size=8), st.booleans()),
    # a route's own template, its {params} filled with anything, sometimes with more after it
    st.builds(lambda template, fill, tail: re.sub(r"\{[^}]*\}", lambda _: fill, template) + tail,
              st.sampled_from(TEMPLATES), SEGMENT, st.sampled_from(["", "/", "/x", "x"])),
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=METHODS, path=PATHS)
async def test_the_fronts_decisions_agree_with_aiohttps_router(method, path):
    try:
        theirs = await APP.router.resolve(make_mocked_request(method, path, app=APP))
    except ValueError:
        return  # not a path aiohttp can take at all (the front's head parser refuses it too)
    found = ROUTES.route(method, path)
    if not decidable(path):
        assert found is None  # aiohttp's to decode
        return
    if isinstance(theirs, MatchInfoError):
        assert found is not None and found[1] is REFUSE
        refused = found[0]
        assert refused.http_exception.status == theirs.http_exception.status
        assert refused.http_exception.headers.get("Allow") == theirs.http_exception.headers.get("Allow")
        return
    assert found is None or found[1] is not REFUSE
    if theirs.route in APP[FRONT_ROUTES]:
        assert found is not None and found[0].route is theirs.route and dict(found[0]) == dict(theirs)
    else:
        assert found is None  # an ops, jobs or admin route: handed over


def test_a_router_it_does_not_model_refuses_nothing():
    async def ok(request):
        return web.Response()

    for add in (lambda r: r.add_get(r"/items/{n:\d+}", ok), lambda r: r.add_route("*", "/any", ok),
                lambda r: r.add_static("/static", ".")):
        app = web.Application()
        app.router.add_get("/plain", ok)
        add(app.router)
        routes = Routes(app.router, [], lambda handler: handler, refuse=REFUSE)
        assert routes.route("GET", "/nope") is None and routes.route("GET", "/items/x") is None
    plain = web.Application()
    plain.router.add_get("/items/{n}", ok)
    routes = Routes(plain.router, [], lambda handler: handler, refuse=REFUSE)
    assert routes.route("GET", "/items/1") is None
    assert routes.route("GET", "/items/1/2")[0].http_exception.status == 404
    assert routes.route("POST", "/items/1")[0].http_exception.headers["Allow"] == "GET,HEAD"


# what no route takes: (request bytes, status); each compared with what aiohttp answers
REFUSED = [
    (get("/wp-login.php"), 404),
    (get("/.env"), 404),  # a segment starting with a dot is an ordinary one (not "." or "..")
    (get("/.git/config?token=abc"), 404),
    (get("/api/v1/token/"), 404),  # a trailing slash is another path, as in aiohttp
    (post("/api/v1/run/wf_text/stream/more", b"{}"), 404),
    (head("PUT", STREAM, "Content-Length: 0"), 405),
    (get(STREAM), 405),
    (head("DELETE", "/healthz"), 405),
    (head("PROPFIND", "/api/v1/run/wf_text/stream"), 405),
]


async def _answers(client, requests: list[bytes]) -> list[tuple[int, dict, bytes]]:
    out = []
    for raw in requests:
        reader, writer = await connect(client)
        writer.write(raw)
        out.append(await response(reader))
        writer.close()
    return out


async def test_a_request_no_route_takes_is_answered_by_the_front_as_aiohttp_answers_it(upstream, gateway):
    ours = await _answers(await gateway(config(upstream)), [raw for raw, _ in REFUSED])
    theirs = await _answers(await gateway(config(upstream, front="aiohttp")), [raw for raw, _ in REFUSED])
    for (raw, status), (s1, h1, b1), (s2, h2, b2) in zip(REFUSED, ours, theirs, strict=True):
        assert s1 == s2 == status, raw
        assert b1 == b2 and orjson.loads(b1)["status"] == status
        assert h1["content-type"] == h2["content-type"] == "application/problem+json"
        assert h1.get("allow") == h2.get("allow")
        assert "server" not in h1 and "aiohttp" in h2["server"]  # served by the front, not handed over


async def test_junk_is_answered_on_a_kept_alive_connection_with_an_access_line_and_a_metric(upstream, gateway, capfd):
    client = await gateway(config(upstream))
    before = sample(await (await client.get("/metrics")).text(), "flowgate_requests_total", dialect="other",
                    flow="unknown", route="unmatched", status_class="4xx")
    capfd.readouterr()
    reader, writer = await connect(client)
    writer.write(b"".join(get(f"/junk/{i}") for i in range(50)) + head("PUT", STREAM, "Content-Length: 0")
                 + get("/api/v1/token", "x-api-key: " + "fg_" + "test_secret_key"))
    statuses = [(await response(reader))[0] for _ in range(52)]
    assert statuses == [404] * 50 + [405, 401]  # in order, one connection, the last one a front route
    assert not await closed(reader, 0.2)
    writer.close()
    access = [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if '"access"' in line]
    assert [a["status"] for a in access] == [404] * 50 + [405, 401]
    assert {a["route"] for a in access[:51]} == {"unmatched"} and access[0]["method"] == "GET"
    after = sample(await (await client.get("/metrics")).text(), "flowgate_requests_total", dialect="other",
                   flow="unknown", route="unmatched", status_class="4xx")
    assert after - before == 51


async def test_a_body_sent_to_no_route_is_never_read_nor_continued(upstream, gateway):
    client = await gateway(config(upstream))
    reader, writer = await connect(client)
    writer.write(head("POST", "/upload", "Content-Length: 100000000", "Expect: 100-continue"))
    status, headers, body = await response(reader)
    assert status == 404 and headers["connection"] == "close"  # not 100 Continue: the body is refused unread
    writer.write(b"x" * 65536)  # the lingering close discards it
    assert await closed(reader, 3.0)


async def _head_answer(client, target: str) -> tuple[bytes, dict[str, str], bytes]:
    """A HEAD's answer: the status line, the headers, and whatever came after them (then a GET on
    the same connection, if it stays open, must be answered next: nothing of a body in between)."""
    reader, writer = await connect(client)
    writer.write(head("HEAD", target) + get("/wp-login.php"))
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        after = await asyncio.wait_for(reader.readline(), 1.0)
    except TimeoutError:
        after = b"(nothing)"
    writer.close()
    return status_line, headers, after


@pytest.mark.parametrize("target", ["/wp-login.php", "/api/v1/token"])
async def test_a_head_no_route_takes_gets_the_gets_head_and_no_body(upstream, gateway, target):
    ours = await _head_answer(await gateway(config(upstream)), target)
    theirs = await _head_answer(await gateway(config(upstream, front="aiohttp")), target)
    assert ours[0] == theirs[0] and ours[0].split()[1] in (b"404", b"405")
    for name in ("content-type", "content-length", "allow"):
        assert ours[1].get(name) == theirs[1].get(name), name
    assert "server" not in ours[1]  # answered by the front, on a kept-alive connection
    assert ours[2].startswith(b"HTTP/1.1 404 ")  # the next answer, not a body


async def test_an_answered_refusal_leaves_nothing_for_the_cyclic_gc(upstream, gateway):
    """A 404 or 405 answered by the front is freed as its answer leaves, body and all, as a front
    route's answer is: nothing per request waits for the cyclic GC (an exception raised from the
    request's own match info would keep the request alive through its traceback)."""
    client = await gateway(config(upstream, access_log=False))

    async def answer(raw: bytes, n: int) -> None:
        reader, writer = await connect(client)
        for _ in range(n):
            writer.write(raw)
            assert (await response(reader))[0] in (404, 405)
        writer.close()

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is FrontRequest)

    junk = [post("/wp-login.php", b"x" * 512), head("PUT", STREAM, "Content-Length: 0")]
    for raw in junk:
        await answer(raw, 5)
    gc.collect()
    gc.disable()
    try:
        before = alive()
        for raw in junk:
            await answer(raw, 200)
        assert alive() - before <= 1  # (the last one may still be on its way out)
    finally:
        gc.enable()
    # every 404 shares one match info, whose exception is never raised (a raised one would keep a
    # traceback growing with every request's frames)
    assert front_of(client).routes.not_found.http_exception.__traceback__ is None
