"""The listening sockets a supervisor binds once for all its workers (:func:`bind`)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from .serve import CannotListen

if TYPE_CHECKING:
    from ..config import Config


def bind(config: Config, count: int) -> list[list[socket.socket]]:
    """The listening sockets of each worker slot, bound once, here: the main one, then the metrics
    one and the admin one when configured.

    Where the system has SO_REUSEPORT, each slot gets sockets of its own on the shared port, and
    the kernel spreads new connections over them evenly; the supervisor keeps them open, so a
    connection that arrives while a slot's worker is being replaced waits in its backlog. (One
    shared socket, accepted on by every worker, lets whichever worker wakes first take a whole
    burst of connections: streams would pile up on one core.) Without SO_REUSEPORT every slot
    shares one socket per port.
    """
    server = config.server
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    slots: list[list[socket.socket]] = [[] for _ in range(count)]
    ports = [(server.host, server.port, "the gateway")]
    if server.metrics_port is not None:
        ports.append((server.host, server.metrics_port, "the metrics listener"))
    if server.admin_port is not None:
        ports.append((server.admin_host or server.host, server.admin_port, "the admin listener"))
    for host, port, what in ports:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        if reuse_port and port:
            _probe(family, kind, proto, addr, host, port, what, slots)
        for i, sockets in enumerate(slots):
            if i and not reuse_port:
                sockets.append(slots[0][-1])
                continue
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                sock.close()
                _close_all(slots)
                raise CannotListen(exc, host, port, what) from None
            addr = sock.getsockname()  # port 0: the others join the port the first one got
            sock.listen(server.backlog)
            sock.setblocking(False)
            sockets.append(sock)
    return slots


def _probe(family, kind, proto, addr, host: str, port: int, what: str, slots) -> None:
    """Bind without SO_REUSEPORT first: with it, any process of the same user joins a port already
    listened on (another flowgate started by mistake would take part of this one's connections)."""
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (a TIME_WAIT is no listener)
        try:
            probe.bind(addr)
        except OSError as exc:
            _close_all(slots)
            raise CannotListen(exc, host, port, what) from None


def _close_all(slots: list[list[socket.socket]]) -> None:
    for opened in {id(x): x for slot in slots for x in slot}.values():
        opened.close()
