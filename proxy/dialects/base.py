"""The dialect base class (:class:`Dialect`), what a non-streaming run collected (:class:`Collected`)
and the request-body rules every dialect shares (:mod:`proxy.dialects` says how they are used)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web
from aiohttp.http import HttpVersion11

from ..env import ENV_ACCEPTED, Env
from ..errors import BadRequest, GatewayError, PayloadTooLarge, RequestTimeout
from ..run import Run


@dataclass(slots=True)
class Collected:
    """A non-streaming run's output: the encoded body, the generated text and the backend's result."""

    body: bytes
    text: str
    result: Any = None


class Dialect:
    """Base class. Subclasses set ``name`` and ``output`` and implement ``parse`` and ``error_body``."""

    name: ClassVar[str]
    output: ClassVar[str]  # output format (encoder name) of its streaming routes
    cors_routes: ClassVar[frozenset[str]] = frozenset()  # routes answered with CORS headers
    # an AI SDK chat request body is mapped onto the backend protocol's own (proxy.protocols.chat);
    # the other dialects' bodies go to the backend as sent (profitbase's contract; Langflow's API)
    maps_chat: ClassVar[bool] = False

    def __init__(self, max_body_bytes: int, body_timeout_s: float = 30.0) -> None:
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def parse(self, request: web.Request, route: str) -> Run:
        raise NotImplementedError

    def error_status(self, err: GatewayError) -> int:
        return err.status

    def error_body(self, err: GatewayError, status: int) -> tuple[bytes, str]:
        """(body, content type) for an error; the detail is already free of secrets."""
        raise NotImplementedError

    def render_error(self, err: GatewayError) -> web.Response:
        status = self.error_status(err)
        body, ctype = self.error_body(err, status)
        resp = web.Response(status=status, body=body, headers=err.headers)
        resp.content_type = ctype
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def stream_error(self, outcome: str, message: str) -> str:
        """The text of the error event that ends a cut stream (``outcome`` as in :mod:`proxy.run`);
        by default the pump's own message (the gateway's words, or the backend's error event)."""
        return message

    def render_result(self, run: Run, collected: Collected) -> web.Response:
        """The non-streaming response; by default the buffered output of the streaming format."""
        return web.Response(body=collected.body, content_type="application/json")

    # --- helpers shared by dialects -------------------------------------------------------------

    def new_run(self, request: web.Request, route: str, flow_ref: str, *, stream: bool, credential: str,
                **request_fields) -> Run:
        """A run parsed from ``request``'s head, its environment from ``?env=`` (400 when
        unknown). The body is read by the handler once the run is admitted."""
        return Run(request=request, dialect=self.name, route=route, flow_ref=flow_ref,
                   env=self.parse_env(request), stream=stream, body=b"", credential=credential,
                   **request_fields)

    @staticmethod
    def parse_env(request: web.Request) -> Env:
        raw = request.query.get("env")
        env = Env.parse(raw)
        if env is None:
            raise BadRequest(f"env must be one of {ENV_ACCEPTED} (case-insensitive)")
        return env

    def check_length(self, request: web.Request) -> None:
        """413 for a declared ``Content-Length`` above ``server.max_body_bytes`` (on the head)."""
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")

    async def read_body(self, request: web.Request) -> bytes:
        """The request body, refused with 413 above ``server.max_body_bytes`` without reading it all.

        Called by the handler only once the run is admitted. On flowgate's front the protocol's body
        timer ends a stalled body (408); on aiohttp's each read gets ``server.client_body_timeout_s``."""
        self.check_length(request)
        if not request.body_exists:
            return b""
        timed = not hasattr(request.content, "fail")  # aiohttp's stream: no front timer behind it
        if timed and request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # only now: see defer_continue
            request.writer.output_size = 0
        limit = self.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        reader = request.content.iter_any().__aiter__()
        while True:
            try:
                if timed:
                    async with asyncio.timeout(self.body_timeout_s):
                        chunk = await reader.__anext__()
                else:
                    chunk = await reader.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestTimeout("the request body did not arrive in time") from None
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


async def defer_continue(request: web.Request) -> None:
    """aiohttp's ``expect_handler`` for the dialect routes: no ``100 Continue`` at routing (before
    the credential is checked); :meth:`Dialect.read_body` sends it once the run is admitted. An
    expectation other than 100-continue is still 417."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11 and expect and expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="unknown expectation")
