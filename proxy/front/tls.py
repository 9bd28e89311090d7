"""TLS on a listener: Python's ``ssl`` on the event loop, certificates swapped without a restart.

A :class:`TlsListener` holds one listener's TLS. The listening socket is created once with one
``SSLContext`` (asyncio takes it at ``create_server``), so the swap happens per handshake: that
context's ``sni_callback`` (called by OpenSSL for every ClientHello, with or without SNI) moves the
new connection onto the *current* context. :meth:`TlsListener.reload` builds a whole new context
from the files (checked as at load: readable, a certificate, the key that matches it) and only then
makes it current; a connection already open keeps the context it was made with, so open streams
go on; a bad file leaves the current context in place and logs why. (Loading a new chain into the
live context instead would leave it half-replaced when the key does not match, and would keep an
RSA certificate beside a new ECDSA one: OpenSSL keeps one per key type.)

:func:`reload_tls` is the one entry point for a reload (SIGHUP in :mod:`proxy.front.serve`; a
supervisor's reload calls it in each worker). :func:`prepare_tls` is the supervisor's: the contexts
a worker it forks later starts on (not files that may have gone bad since the last reload).

:class:`Site` is aiohttp's ``TCPSite`` with the handshake on the head timer: a client that
connects and stalls in the handshake is closed after ``client_head_timeout_s``, as one that stalls
before its request head is.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
from collections.abc import Iterable
from typing import Any

import structlog
from aiohttp import web

from ..config.tls import TlsFileError, server_context

log = structlog.get_logger("flowgate")


class TlsListener:
    """One listener's TLS: ``context`` is what its socket was created with, ``current`` what new
    handshakes get. ``settings`` is the listener's ``TlsConfig`` (cert_file, key_file, min_version,
    ciphers)."""

    def __init__(self, name: str, settings: Any) -> None:
        self.name = name
        self.settings = settings
        prepared = PREPARED.get(name)  # a worker's: its supervisor's, from files checked at the last reload
        # (else built here; raises TlsFileError: the config was checked)
        self.current, self.fingerprint = prepared if prepared is not None else self._build(settings)
        self.context = self.current
        self.context.sni_callback = self._pick

    def _build(self, settings: Any) -> tuple[ssl.SSLContext, str]:
        return _build(self.name, settings)

    def _pick(self, conn: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            conn.context = current

    def reload(self, settings: Any = None) -> bool:
        """Read the files again (of ``settings`` when given: a reloaded config) and make them current
        for new handshakes; False (and the old certificate kept) when they cannot be served."""
        settings = settings or self.settings
        try:
            context, fingerprint = self._build(settings)
        except TlsFileError as exc:
            log.error("tls_reload_failed", listener=self.name, problem=exc.line(), kept=self.fingerprint)
            return False
        self.current, self.settings = context, settings
        if fingerprint != self.fingerprint:
            log.info("tls_reloaded", listener=self.name, fingerprint=fingerprint, previous=self.fingerprint)
        else:
            log.info("tls_reloaded", listener=self.name, fingerprint=fingerprint, unchanged=True)
        self.fingerprint = fingerprint
        return True


def _build(name: str, settings: Any) -> tuple[ssl.SSLContext, str]:
    built = server_context(settings.cert_file, settings.key_file, settings.min_version, settings.ciphers)
    try:
        mode = os.stat(settings.key_file).st_mode
    except OSError:  # (replaced since: it was read a moment ago)
        return built
    if mode & stat.S_IROTH:  # served all the same, as nginx does; the operator is told at each load
        log.warning("tls_key_readable_by_all", listener=name, key_file=settings.key_file,
                    mode=oct(stat.S_IMODE(mode)), detail="any local user can read this private key: "
                    "chmod 600 (or 640 with a group the server runs in)")
    return built


# The supervisor's contexts for the workers it forks (listener name -> context, fingerprint).
PREPARED: dict[str, tuple[ssl.SSLContext, str]] = {}


def prepare_tls(server: Any) -> None:
    """(The supervisor, at start and after each reload it accepts, before it forks:) every
    listener's context, built from its files as they are now. A worker started later (after a
    crash) serves these, as its siblings do, even if the files went bad since: it cannot be kept
    from starting by them, and its slot's connections left waiting (nginx's master loads the
    certificates for its workers too). Files that fail here leave the prepared contexts as they were."""
    try:
        built = {name: _build(name, t) for name, t in (("main", server.tls), ("metrics", server.metrics_tls))
                 if t is not None}
    except TlsFileError as exc:
        log.error("tls_prepare_failed", problem=exc.line(), detail="workers started later build their own")
        return
    PREPARED.clear()
    PREPARED.update(built)


def reload_tls(listeners: Iterable[TlsListener]) -> bool:
    """Reload every listener's certificate (each keeps its old one when its new files are bad);
    True when all of them now serve their files."""
    results = [listener.reload() for listener in listeners]
    return all(results)


class Site(web.TCPSite):
    """``web.TCPSite`` with TLS from a :class:`TlsListener` and the handshake on a timer (aiohttp's
    sites pass no ``ssl_handshake_timeout``: asyncio's default is 60 s); on ``host:port``, or on a
    socket already bound and listening (``sock``: a worker's, from its supervisor)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, tls: TlsListener | None,
                 handshake_timeout_s: float, shutdown_timeout_s: float, sock: socket.socket | None = None,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, ssl_context=tls.context if tls else None, **kwargs)
        self.tls, self.sock = tls, sock
        self.handshake_timeout_s = handshake_timeout_s
        self.tls_shutdown_timeout_s = shutdown_timeout_s

    async def start(self) -> None:
        await web.BaseSite.start(self)  # (registers the site with its runner, as TCPSite.start does)
        assert self._runner.server is not None
        where: dict[str, Any] = {"sock": self.sock} if self.sock is not None else {
            "host": self._host, "port": self._port, "reuse_address": self._reuse_address,
            "reuse_port": self._reuse_port}
        if self.tls is not None:
            where.update(ssl=self.tls.context, ssl_handshake_timeout=self.handshake_timeout_s,
                         ssl_shutdown_timeout=self.tls_shutdown_timeout_s)
        self._server = await asyncio.get_running_loop().create_server(self._runner.server, backlog=self._backlog,
                                                                      **where)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
