"""The Python floor: a byte pipe on uvloop, one backend connection per client connection, no HTTP
parsing, no policies (``data_received`` -> ``transport.write``, both ways). What flowgate costs per
line above this is its own; what this costs above nginx is Python and uvloop's.

Run: python -m bench.pipe BACKEND_PORT LISTEN_PORT
"""

from __future__ import annotations

import asyncio
import sys


class _Backend(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.backend: _Backend | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, self.backend = await loop.create_connection(lambda: _Backend(self), "127.0.0.1", self.backend_port)
        except OSError:
            self.transport.close()
            return
        for data in self.early:
            self.backend.transport.write(data)
        self.early = []

    def data_received(self, data: bytes) -> None:
        if self.backend is None:
            self.early.append(data)
        else:
            self.backend.transport.write(data)

    def connection_lost(self, exc) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.close()


async def serve(backend_port: int, port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: _Client(backend_port), "127.0.0.1", port, backlog=16384)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
