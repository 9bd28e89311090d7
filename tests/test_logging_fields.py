"""A request's log fields (``proxy.logging.bind``): on its own lines and its background work's,
never on another request's; the access line's direct JSON rendering keeps structlog's guarantees."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import structlog
from aiohttp import web

from proxy.logging import bind, configure_logging, make_access_middleware


@pytest.fixture
def logs(capfd):
    def read(level: str = "info", json: bool = True):
        configure_logging(level, json=json)
        capfd.readouterr()

        def lines() -> list:
            return [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]

        return lines

    yield read
    configure_logging("info", json=True)


def _app(background: list) -> web.Application:
    log = structlog.get_logger("flowgate.test")

    async def run(request: web.Request) -> web.Response:
        bind(job_id=request.query["job"], token="pub_tok_secret", api_key="fg_secret")

        async def later() -> None:
            await asyncio.sleep(0.05)
            log.info("background_line")

        background.append(asyncio.ensure_future(later()))
        log.info("in_request")
        return web.Response(text="ok")

    async def plain(request: web.Request) -> web.Response:
        log.info("in_plain")
        return web.Response(text="plain")

    async def odd(request: web.Request) -> web.Response:
        bind(strange="\udcff", huge=2**70, thing=object())
        return web.Response(text="odd")

    app = web.Application(middlewares=[make_access_middleware(True)])
    app.router.add_get("/run", run)
    app.router.add_get("/plain", plain)
    app.router.add_get("/odd", odd)
    return app


async def test_fields_stay_with_their_request_on_a_kept_alive_connection(aiohttp_client, logs):
    lines = logs()
    background: list = []
    client = await aiohttp_client(_app(background))
    assert (await client.get("/run", params={"job": "job-a"})).status == 200
    assert (await client.get("/plain")).status == 200  # the same connection (kept alive)
    await asyncio.gather(*background)
    await asyncio.sleep(0.01)
    got = lines()
    by_event = {}
    for line in got:
        by_event.setdefault((line["event"], line.get("route")), line)
    assert by_event[("in_request", "/run")]["job_id"] == "job-a"
    assert by_event[("access", "/run")]["job_id"] == "job-a"
    assert "job_id" not in by_event[("in_plain", "/plain")] and "job_id" not in by_event[("access", "/plain")]
    assert by_event[("background_line", "/run")]["job_id"] == "job-a"  # after the response, still its run's
    text = orjson.dumps(got).decode()
    assert "pub_tok_secret" not in text and "fg_secret" not in text and "[redacted]" in text


@pytest.mark.parametrize("json", [True, False])
async def test_a_field_orjson_cannot_write_does_not_fail_the_request(aiohttp_client, logs, capfd, json):
    logs("info", json=json)
    client = await aiohttp_client(_app([]))
    resp = await client.get("/odd")
    assert resp.status == 200 and await resp.text() == "odd"
    await asyncio.sleep(0.01)
    assert "access" in capfd.readouterr().err


async def test_warning_level_writes_no_access_line_and_the_console_one_does(aiohttp_client, logs, capfd):
    lines = logs("warning")
    client = await aiohttp_client(_app([]))
    assert (await client.get("/plain")).status == 200
    await asyncio.sleep(0.01)
    assert lines() == []
    logs("info", json=False)
    assert (await client.get("/plain")).status == 200
    await asyncio.sleep(0.01)
    err = capfd.readouterr().err
    assert "access" in err and "/plain" in err and not err.lstrip().startswith("{")
