"""Test certificates (a local CA and certificates for 127.0.0.1, by trustme on the `cryptography`
package) and a TLS gateway, in process (the sites `flowgate serve` starts) or as `flowgate serve`."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import trustme
import yaml
from aiohttp import web

from proxy.app import create_app
from proxy.config import parse_config
from proxy.front import GatewayRunner
from proxy.front.tls import Site, TlsListener

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Certs:
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def issue(self, cert_file: Path, key_file: Path) -> str:
        """A new certificate for 127.0.0.1 written to the two files; its SHA-256 fingerprint."""
        cert = self.ca.issue_cert("127.0.0.1")
        cert.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)  # (as certbot leaves it; 0644 is warned about)
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(str(cert_file), append=True)
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())).hexdigest()


def make_certs(tmp_path: Path) -> Certs:
    ca = trustme.CA()
    certs = Certs(ca, tmp_path / "ca.pem", tmp_path / "fullchain.pem", tmp_path / "privkey.pem")
    ca.cert_pem.write_to_path(str(certs.ca_file))
    certs.issue(certs.cert_file, certs.key_file)
    return certs


def client_context(certs: Certs) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tls_settings(certs: Certs, **extra) -> dict:
    return {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file), **extra}


async def serve_in_process(cfg: dict, sock=None) -> tuple[web.AppRunner, int, TlsListener]:
    """The gateway's main listener as `flowgate serve` starts it (GatewayRunner, Site, TlsListener),
    on a free port or on ``sock`` (bound and listening, as a supervisor hands it to a worker)."""
    config = parse_config(cfg)
    server = config.server
    runner = GatewayRunner(create_app(config), access_log=None, keepalive_timeout=server.client_keepalive_timeout_s,
                           handler_cancellation=True)
    await runner.setup()
    listener = TlsListener("main", server.tls)
    site = Site(runner, "127.0.0.1", 0, tls=listener, handshake_timeout_s=server.client_head_timeout_s,
                shutdown_timeout_s=server.client_write_timeout_s, sock=sock)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1], listener  # type: ignore[union-attr]


async def serve_process(tmp_path: Path, cfg: dict, port: int) -> subprocess.Popen:
    """`flowgate serve` with ``cfg``, once its TLS listener on ``port`` accepts."""
    path = tmp_path / "fg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived server, not awaited
        [sys.executable, "-m", "proxy", "serve", "--config", str(path)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(f"flowgate serve did not listen: {proc.communicate()[1].decode()[-2000:]}"
                                     ) from None
            await asyncio.sleep(0.1)


async def served_fingerprint(port: int, certs: Certs) -> str:
    """The SHA-256 fingerprint of the certificate a new handshake on ``port`` shows."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(certs))
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return hashlib.sha256(der).hexdigest()
