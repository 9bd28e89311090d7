"""`server.tls`: HTTPS on the listeners with Python's ssl on the event loop (both fronts), the
handshake on the head timer, old protocol versions refused, certificates swapped on SIGHUP while
streams stay open. Certificates come from a local CA made for each test (tests/front/tlskit.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import time

import aiohttp
import pytest
from aiohttp import web

from proxy.config import parse_config
from proxy.config.tls import cert_fingerprint
from proxy.front.tls import TlsListener, reload_tls
from tests.conftest import SECRET, Flood, base_config, free_port
from tests.front.raw import FAST, STREAM, WF_STREAM, closed, config, post
from tests.front.served import Served, served_config
from tests.front.tlskit import (
    client_context,
    make_certs,
    serve_in_process,
    serve_process,
    served_fingerprint,
    tls_settings,
)

LINES = 4
GAP_S = 0.4


def spaced_lines(sent: list[float]):
    """A backend handler sending LINES lines GAP_S apart, noting when each left."""

    async def handler(request, seen):
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(LINES):
            sent.append(time.monotonic())
            await resp.write(f"line {i}\n".encode())
            await asyncio.sleep(GAP_S)
        await resp.write_eof()
        return resp

    return handler


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("front", ["flowgate", "aiohttp"])
async def test_curl_streams_a_run_over_https_line_by_line(upstream, tmp_path, front):
    certs = make_certs(tmp_path)
    sent: list[float] = []
    upstream.handle("/text", spaced_lines(sent))
    runner, port, _ = await serve_in_process(config(upstream, front=front, tls=tls_settings(certs)))
    base = ["curl", "-sS", "--no-buffer", "--cacert", str(certs.ca_file)]
    try:
        minted = await asyncio.create_subprocess_exec(  # a stream token, then the run with it (as a browser)
            *base, "-H", f"x-api-key: {SECRET}", f"https://127.0.0.1:{port}/api/v1/token",
            stdout=asyncio.subprocess.PIPE)
        token = json.loads((await minted.communicate())[0])["token"]
        proc = await asyncio.create_subprocess_exec(
            *base, "-X", "POST", "-H", "Content-Type: application/json", "-d", "{}",
            f"https://127.0.0.1:{port}{WF_STREAM}?token={token}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        received: list[tuple[float, bytes]] = []
        assert proc.stdout is not None
        while line := await asyncio.wait_for(proc.stdout.readline(), 10):
            received.append((time.monotonic(), line))
        assert await proc.wait() == 0, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
    assert [line for _, line in received] == [f"line {i}\n".encode() for i in range(LINES)]
    for i, (at, _) in enumerate(received):  # each line arrives as the backend sends it, before the next
        assert at - sent[i] < GAP_S / 2, f"line {i} came {at - sent[i]:.3f} s after the backend sent it"
    assert upstream.last.headers["X-Forwarded-Proto"] == "https"


async def test_python_client_streams_over_https_with_alpn_http11(upstream, tmp_path):
    certs = make_certs(tmp_path)
    sent: list[float] = []
    upstream.handle("/text", spaced_lines(sent))
    runner, port, _ = await serve_in_process(config(upstream, tls=tls_settings(certs)))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(certs))
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        writer.write(post(STREAM))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
        seen = b""
        for i in range(LINES):
            while f"line {i}".encode() not in seen:
                seen += await asyncio.wait_for(reader.read(4096), 5)
            assert time.monotonic() - sent[i] < GAP_S / 2
        writer.close()
        async with aiohttp.ClientSession() as session:  # a second client: aiohttp's, a keep-alive pair
            for _ in range(2):
                async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=client_context(certs)) as resp:
                    assert resp.status == 200
    finally:
        await runner.cleanup()
    assert upstream.last.headers["X-Forwarded-Proto"] == "https"


async def test_a_client_that_reads_nothing_pauses_the_backend_over_tls(upstream, tmp_path):
    """Back-pressure through the TLS transport: the backend could send 64 MiB at once; while the
    client reads nothing only buffers' worth leaves it; then everything arrives intact."""
    certs = make_certs(tmp_path)
    total = 64 << 20

    flood = Flood(total)
    upstream.handle("/text", flood)
    cfg = config(upstream, tls=tls_settings(certs))
    cfg["accounts"]["acme"]["initial_credits"] = 10**9
    runner, port, _ = await serve_in_process(cfg)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"https://127.0.0.1:{port}{STREAM}", headers={"x-api-key": SECRET},
                                    ssl=client_context(certs)) as resp:
                assert resp.status == 200
                await asyncio.sleep(1.0)
                assert flood.sent < 32 << 20, f"{flood.sent >> 20} MiB sent to a TLS client that read nothing"
                received = 0
                while chunk := await resp.content.readany():
                    received += chunk.count(b"x")
        assert received == total
    finally:
        await runner.cleanup()


def tls11_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # (the client side allows TLS 1.1 at all)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("min_version", "refused", "accepted"), [
    ("1.2", ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2),
    ("1.3", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3),
])
async def test_an_older_protocol_version_is_refused_in_the_handshake(upstream, tmp_path, min_version, refused,
                                                                      accepted):
    certs = make_certs(tmp_path)
    runner, port, _ = await serve_in_process(config(upstream, tls=tls_settings(certs, min_version=min_version)))
    try:
        old = tls11_client()
        old.minimum_version = old.maximum_version = refused
        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # (asyncio drops it without the alert)
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=old), 5)
        good = tls11_client()  # the same client, at the accepted version: served
        good.minimum_version = good.maximum_version = accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=good)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("hello", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"])
async def test_a_handshake_that_stalls_is_closed_by_the_head_timer(upstream, tmp_path, hello):
    """Nothing sent, or a ClientHello cut short: closed after client_head_timeout_s (0.5 s here)."""
    certs = make_certs(tmp_path)
    runner, port, _ = await serve_in_process(config(upstream, **FAST, tls=tls_settings(certs)))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello)
        started = time.monotonic()
        assert await closed(reader, 5), "a stalled handshake was left open"
        assert 0.3 < time.monotonic() - started < 3
        writer.close()
        # after the handshake, the head timer itself: a TLS client that sends no request is closed too
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(certs))
        assert await closed(reader, 5)
        writer.close()
    finally:
        await runner.cleanup()


async def test_a_new_certificate_on_sighup_while_a_stream_is_open(upstream, tmp_path):
    """`flowgate serve`: files replaced and SIGHUP sent: a new handshake shows the new certificate
    within 3 s, the open stream goes on (on the old one); a bad key then keeps the new certificate
    and the log says why. The metrics listener has its own TLS."""
    certs = make_certs(tmp_path)
    first = cert_fingerprint(str(certs.cert_file))

    async def ticking(request, seen):
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(200):
            await resp.write(f"tick {i}\n".encode())
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    upstream.handle("/text", ticking)
    port, mport = free_port(), free_port()
    cfg = config(upstream, port=port, metrics_port=mport, access_log=False, tls=tls_settings(certs),
                 metrics_tls=tls_settings(certs, min_version="1.3"))
    proc = await serve_process(tmp_path, cfg, port)
    try:
        assert await served_fingerprint(port, certs) == first
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(certs))
        writer.write(post(STREAM))
        await asyncio.wait_for(reader.readuntil(b"tick 1"), 5)

        staged = (tmp_path / "new-cert.pem", tmp_path / "new-key.pem")
        second = certs.issue(*staged)
        os.replace(staged[1], certs.key_file)  # as a renewal leaves them: both files replaced
        os.replace(staged[0], certs.cert_file)
        proc.send_signal(signal.SIGHUP)
        started = time.monotonic()
        for _ in range(60):  # a new handshake every 50 ms, for 3 s at most
            if (shown := await served_fingerprint(port, certs)) == second or time.monotonic() - started > 3:
                break
            await asyncio.sleep(0.05)
        assert shown == second, "no new certificate within 3 s of SIGHUP"
        print(f"new certificate shown {time.monotonic() - started:.3f} s after SIGHUP")
        assert await served_fingerprint(mport, certs) == second  # the metrics listener's, reloaded too

        await asyncio.wait_for(reader.readuntil(b"tick 30"), 5)  # the open stream goes on, on the old one
        old = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert hashlib.sha256(old).hexdigest() == first

        other = certs.ca.issue_cert("127.0.0.1")  # a bad renewal: the key of another certificate
        other.private_key_pem.write_to_path(str(certs.key_file))
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert await served_fingerprint(port, certs) == second  # the old (second) certificate is kept
        await asyncio.wait_for(reader.readuntil(b"tick 40"), 5)
        writer.close()

        mreader, mwriter = await asyncio.open_connection("127.0.0.1", mport, ssl=client_context(certs))
        assert mwriter.get_extra_info("ssl_object").version() == "TLSv1.3"
        mwriter.write(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert (await asyncio.wait_for(mreader.readline(), 5)).startswith(b"HTTP/1.1 200")
        mwriter.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    log = err.decode()
    assert "tls_reloaded" in log and "does not match the certificate" in log
    assert "tls_reload_failed" in log or "reload_refused" in log  # (a config reload checks the files first)
    assert "Traceback" not in log



async def test_plain_http_on_the_tls_port_is_closed_and_answered_nothing_in_clear(upstream, tmp_path):
    """A careless client speaking HTTP to the HTTPS port (its API key in the head): the handshake
    fails, the connection closes, nothing is answered in clear text; the listener serves on."""
    certs = make_certs(tmp_path)
    runner, port, _ = await serve_in_process(config(upstream, tls=tls_settings(certs)))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(STREAM))
        got = b""
        with contextlib.suppress(ConnectionResetError):
            got = await asyncio.wait_for(reader.read(), 5)
        assert b"HTTP/1.1" not in got and SECRET.encode() not in got
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(certs))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await runner.cleanup()


async def test_workers_on_reuseport_sockets_each_take_the_new_certificate(upstream, tmp_path):
    """Two listeners on SO_REUSEPORT sockets bound to one port (as a supervisor's workers serve),
    each with its own TlsListener: after reload_tls in each, every new handshake shows the new one."""
    certs = make_certs(tmp_path)
    port = free_port()
    socks = []
    for _ in range(2):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        socks.append(sock)
    served = [await serve_in_process(config(upstream, tls=tls_settings(certs)), sock=sock) for sock in socks]
    try:
        second = certs.issue(certs.cert_file, certs.key_file)
        assert all(reload_tls([listener]) for _, _, listener in served)
        shown = {await served_fingerprint(port, certs) for _ in range(20)}
        assert shown == {second}
    finally:
        for runner, _, _ in served:
            await runner.cleanup()


async def _handshakes(port: int, certs, n: int = 24, path: str = "/healthz") -> set[str]:
    """``n`` new connections to ``port``, each a handshake and one GET ``path`` answered 200: the
    fingerprints of the certificates they were shown."""
    shown = set()
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(certs))
        tls = writer.get_extra_info("ssl_object")
        assert tls.selected_alpn_protocol() == "http/1.1"  # (on a context swapped in by a reload too)
        shown.add(hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
    return shown


@pytest.mark.parametrize("workers", [2, 1])
async def test_every_worker_serves_https_and_takes_a_new_certificate_only_from_a_valid_reload(
        upstream, tmp_path, workers):
    """`flowgate serve` (a supervisor and two workers, or one process): every worker serves HTTPS
    on the main and metrics listeners (none answers in clear text); files replaced and SIGHUP sent,
    every worker shows the new certificate within 3 s. A reload that is refused changes no
    certificate anywhere: a key that does not match, a FIFO left at cert_file (read without
    blocking the supervisor or the event loop), a renewed certificate beside a broken config file.
    A worker that dies meanwhile starts again on the certificate in force, not on the bad files.
    Then the config fixed, the renewed certificate is taken."""
    certs = make_certs(tmp_path)
    mport = free_port()
    server = Served(tmp_path, served_config(upstream.url, tmp_path, workers=workers, tls=tls_settings(certs),
                                            metrics_port=mport, metrics_tls=tls_settings(certs)))
    await server.start(workers=workers)
    expected_workers = {0, 1} if workers == 2 else {None}

    async def shown_by_every_worker() -> str:
        before = len(server.events("access"))
        shown = await _handshakes(server.port, certs)
        lines = await server.until(lambda: server.events("access")[before:] if len(
            server.events("access")) >= before + 24 else None, 5, "the access lines")
        assert {line.get("worker") for line in lines} == expected_workers  # each worker made some of them
        assert len(shown) == 1, "workers show different certificates"
        assert await _handshakes(mport, certs, 8, "/metrics") == shown  # the metrics listener's
        return shown.pop()

    def refusals() -> int:
        return len(server.events("reload_refused"))

    try:
        assert await shown_by_every_worker() == cert_fingerprint(str(certs.cert_file))
        for _ in range(16):  # plain HTTP on either port: no worker answers in clear text
            for port in (server.port, mport):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
                with contextlib.suppress(ConnectionResetError):
                    assert b"HTTP/1." not in await asyncio.wait_for(reader.read(), 5)
                writer.close()

        staged = (tmp_path / "new-cert.pem", tmp_path / "new-key.pem")
        second = certs.issue(*staged)
        os.replace(staged[1], certs.key_file)
        os.replace(staged[0], certs.cert_file)
        server.signal(signal.SIGHUP)
        started = time.monotonic()
        while await _handshakes(server.port, certs, 8) != {second}:
            assert time.monotonic() - started < 3, "not every new handshake shows the new certificate within 3 s"
        assert await shown_by_every_worker() == second

        other = certs.ca.issue_cert("127.0.0.1")  # a bad renewal: the key of another certificate
        other.private_key_pem.write_to_path(str(certs.key_file))
        server.signal(signal.SIGHUP)
        await server.until(lambda: refusals() == 1, 5, "the reload refused")
        assert await shown_by_every_worker() == second

        certs.cert_file.unlink()
        os.mkfifo(certs.cert_file)  # a careless renewal; open() on it would wait for a writer
        server.signal(signal.SIGHUP)
        await server.until(lambda: refusals() == 2, 5, "the reload refused (not blocked on the FIFO)")
        assert "not a regular file" in server.events("reload_refused")[-1]["error"]
        assert await shown_by_every_worker() == second
        if workers == 2:  # a worker that dies now, its files bad, starts again on the certificate in force
            os.kill(server.workers()[0], signal.SIGKILL)
            await server.until(lambda: len(server.events("worker_started")) >= 3, 15, "the worker started again")
            assert await shown_by_every_worker() == second

        certs.cert_file.unlink()
        third = certs.issue(certs.cert_file, certs.key_file)  # renewed well, but the config file is broken
        server.write({**server.cfg, "no_such_section": 1})
        server.signal(signal.SIGHUP)
        await server.until(lambda: refusals() == 3, 5, "the reload refused")
        await asyncio.sleep(0.5)
        assert await shown_by_every_worker() == second

        server.write({key: value for key, value in server.cfg.items() if key != "no_such_section"})
        server.signal(signal.SIGHUP)
        started = time.monotonic()
        while await _handshakes(server.port, certs, 8) != {third}:
            assert time.monotonic() - started < 3, "the renewed certificate was not taken within 3 s"
        assert await shown_by_every_worker() == third
    finally:
        assert await server.stop() == 0
    assert "Traceback" not in server.text()


SPOOFED = {"X-Forwarded-Proto": "https", "Forwarded": "for=203.0.113.9;proto=https", "X-Forwarded-Ssl": "on",
           "X-Forwarded-Scheme": "https", "X-Forwarded-Protocol": "https", "X-Forwarded-Port": "443",
           "Front-End-Https": "on", "X-Url-Scheme": "https", "X-Real-IP": "203.0.113.9"}


@pytest.mark.parametrize("front", ["flowgate", "aiohttp"])
async def test_a_client_on_the_plain_listener_cannot_claim_https_to_the_backend(upstream, gateway, front):
    """What a client says about the connection (its scheme, port, address), under any of the names
    backends read it by, never reaches the backend: X-Forwarded-Proto is the gateway's own."""
    got: dict[str, list[str]] = {}

    async def text(request, seen):
        got.update({name: request.headers.getall(name, []) for name in [*SPOOFED, "X-Forwarded-Proto"]})
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b"hello")
        await resp.write_eof()
        return resp

    upstream.handle("/text", text)
    client = await gateway(config(upstream, front=front))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(post(STREAM, b"{}", *(f"{k}: {v}" for k, v in SPOOFED.items()), "x-forwarded-proto: https"))
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    writer.close()
    assert got.pop("X-Forwarded-Proto") == ["http"]
    assert got == {name: [] for name in SPOOFED if name != "X-Forwarded-Proto"}


async def test_a_client_offering_only_h2_is_not_served_http2_and_is_closed(upstream, tmp_path):
    """ALPN offers http/1.1 alone: a client that offers only h2 gets no protocol agreed (OpenSSL
    goes on without one, as Python's ssl cannot refuse it); its HTTP/2 preface is then a bad
    HTTP/1.1 request: answered 4xx and closed at once, never served, never left open."""
    certs = make_certs(tmp_path)
    runner, port, _ = await serve_in_process(config(upstream, tls=tls_settings(certs)))
    try:
        ctx = client_context(certs)
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            answer = await asyncio.wait_for(reader.read(), 2)  # closed within 2 s (the head timer is 10 s)
        assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), answer[:80]
        writer.close()
    finally:
        await runner.cleanup()


async def test_a_slowloris_after_the_handshake_is_closed_by_the_head_timer(upstream, tmp_path):
    """The handshake done, a head dripped a byte every 50 ms: closed client_head_timeout_s (0.5 s)
    after the handshake, however it keeps sending."""
    certs = make_certs(tmp_path)
    runner, port, _ = await serve_in_process(config(upstream, **FAST, tls=tls_settings(certs)))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(certs))
        started = time.monotonic()
        drip = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n" + b"X-Pad: " + b"a" * 200

        async def dripping():
            with contextlib.suppress(ConnectionError, RuntimeError):
                for i in range(len(drip)):
                    writer.write(drip[i:i + 1])
                    await asyncio.sleep(0.05)

        task = asyncio.create_task(dripping())
        assert await closed(reader, 5)
        assert time.monotonic() - started < 2
        task.cancel()
        writer.close()
    finally:
        await runner.cleanup()


SSL3_HELLO = bytes.fromhex("160300" "002d" "01" "000029" "0300") + b"\x11" * 32 + bytes.fromhex("00" "0002" "002f"
                                                                                                       "0100")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_sslv3_and_tls10_clients_are_refused(upstream, tmp_path):
    certs = make_certs(tmp_path)
    runner, port, _ = await serve_in_process(config(upstream, tls=tls_settings(certs)))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(SSL3_HELLO)  # (OpenSSL 3 clients cannot even send one)
        got = b""
        with contextlib.suppress(ConnectionResetError):
            got = await asyncio.wait_for(reader.read(), 5)
        assert not got.startswith(b"\x16"), "a ServerHello to an SSLv3 client"  # an alert (\x15) or nothing
        writer.close()
        old = tls11_client()
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=old), 5)
    finally:
        await runner.cleanup()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
async def test_a_renegotiation_is_refused_and_the_listener_serves_on(upstream, tmp_path):
    """TLS 1.2 renegotiation (a client-initiated one costs the server a handshake each time): the
    client's request is refused with an alert; the listener serves the next client."""
    certs = make_certs(tmp_path)
    runner, port, _ = await serve_in_process(config(upstream, tls=tls_settings(certs)))
    try:
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-tls1_2", "-connect", f"127.0.0.1:{port}", "-CAfile", str(certs.ca_file),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert proc.stdin is not None
        await asyncio.sleep(0.5)
        proc.stdin.write(b"R\n")  # s_client's renegotiate command
        await asyncio.sleep(0.5)
        proc.stdin.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            proc.stdin.close()
        out = (await asyncio.wait_for(proc.communicate(), 10))[0].decode(errors="replace")
        assert "RENEGOTIATING" in out
        assert "no renegotiation" in out.lower() or "alert" in out.lower(), out[-1500:]
        assert '"status"' not in out  # no answer after the refused renegotiation
        assert await _handshakes(port, certs, 2)  # served on
    finally:
        await runner.cleanup()


def test_a_key_readable_by_every_user_is_warned_about(tmp_path, capfd):
    certs = make_certs(tmp_path)
    TlsListener("main", parse_config(config_for_tls(certs)).server.tls)
    assert "tls_key_readable_by_all" not in capfd.readouterr().err  # 0600: nothing to say
    certs.key_file.chmod(0o644)
    listener = TlsListener("main", parse_config(config_for_tls(certs)).server.tls)
    warned = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "tls_key_readable_by_all" in line]
    assert len(warned) == 1 and warned[0]["mode"] == "0o644" and warned[0]["key_file"] == str(certs.key_file)
    assert listener.reload()  # served all the same (as nginx does), and said again at each load
    assert "tls_key_readable_by_all" in capfd.readouterr().err


def config_for_tls(certs) -> dict:
    cfg = base_config("http://127.0.0.1:9")
    cfg["server"]["tls"] = tls_settings(certs)
    return cfg
