"""The backend-side HTTP/1.1 client: one keep-alive pool per app, one response per request,
bodies pushed to a consumer (see :mod:`proxy.upstream.connection`).

- :mod:`.endpoint`: a backend URL's connection key, Host header and request target.
- :mod:`.limits`: what one response may cost (head size, header count, head and read timeouts).
- :mod:`.connection`: one connection and the response in flight on it.
- :mod:`.timer`: its one timer (the head's deadline, then the body's progress).
- :mod:`.chunked` (compiled): a chunked body's framing, and ``ChunkedBody``, which reads one as the socket's protocol.
- :mod:`.pool`: the keep-alive pool.
"""

from .connection import READ_HEADERS, Connection
from .consumer import BodyConsumer
from .endpoint import Endpoint, endpoint
from .errors import UpstreamError, UpstreamTimeout
from .limits import MALFORMED, TIMEOUT, TOO_LARGE, Limits
from .pool import UpstreamPool

__all__ = [
    "MALFORMED", "READ_HEADERS", "TIMEOUT", "TOO_LARGE", "BodyConsumer", "Connection", "Endpoint", "Limits",
    "UpstreamError", "UpstreamPool", "UpstreamTimeout", "endpoint",
]
