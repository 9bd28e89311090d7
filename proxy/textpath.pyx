# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-chunk path of a text body, compiled (Cython): the one module of flowgate that is not
Python, built by ``make install`` (``setup.py``) and skipped where no C compiler is found.

Why: a forwarded line costs the kernel the same under any proxy, and what flowgate adds on top is
the interpreter: ~10 Python frames and a handful of objects per chunk (an event, a list, a hook
call, framing), cheap alone and several microseconds per line with hundreds of streams
interleaved (README, Benchmark). For a backend that speaks ``text`` this path does the whole
common case of a chunk in C: count the gap, decode the UTF-8 side view, meter, compare with the
policies' quiet limits, frame and write. Python runs again only where something happens.

How it sits in the pump (:mod:`proxy.pump` makes one when :meth:`Pump.fast_path` allows): it is
the upstream connection's body consumer in the pump's place, with the same four calls.

- ``body(data)``: the common chunk here; the first chunk, an ended or held pump, and a chunk that
  crosses a quiet limit go to the pump (``Pump.body`` / ``Pump.decoded``), which then does for it
  what it does for every chunk of every other protocol.
- ``flush()``: one small chunked piece is framed and written here; anything else, and a client
  that cannot keep up, is ``Pump.flush``'s.
- ``end()``, ``broken(message)``: the pump's.

The state is the pump's, shared, never copied: ``pump.last``, ``run.bytes_in``/``bytes_out``,
``run.meter.chars``, the decoder's ``rest`` (a split UTF-8 sequence), the sink's ``out`` list.
So the two paths can take turns within one stream (a hook that awaits the store holds later
chunks in the pump; they are replayed through ``Pump.body``).

Quiet limits: every ``on_event`` policy of the run's chain says, through ``quiet(run)``, up to how
many generated characters and until which monotonic time its ``on_event`` would do nothing for a
text event; a chunk past either is handed to the pump, which calls the hooks, and the limits are
asked again. Adding an ``on_event`` policy without ``quiet`` turns this path off for its chain.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.math cimport INFINITY
from libc.stdio cimport snprintf
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8Stateful(const char *s, Py_ssize_t size, const char *errors,
                                        Py_ssize_t *consumed)

DEF MAX_BOUNDS = 64
cdef Py_ssize_t SMALL = 2048  # as proxy.sinks.SMALL: below it a piece and its framing are one write
cdef long long NO_LIMIT = 1 << 62


cdef inline double _monotonic() noexcept nogil:  # time.monotonic()'s clock
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef bytes _frame(bytes piece):
    """``piece`` as one HTTP/1.1 chunk: ``%x\\r\\n`` + piece + ``\\r\\n``."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(piece)
    cdef char head[24]
    cdef int h = snprintf(head, 24, "%zx\r\n", n)
    cdef bytes framed = PyBytes_FromStringAndSize(NULL, h + n + 2)
    cdef char *p = PyBytes_AS_STRING(framed)
    memcpy(p, head, h)
    memcpy(p + h, PyBytes_AS_STRING(piece), n)
    p[h + n] = b'\r'
    p[h + n + 1] = b'\n'
    return framed


cdef object _decode(bytes buf, decoder, rest):
    """The text of ``buf``; a multi-byte sequence split at its end stays in ``decoder.rest``."""
    cdef Py_ssize_t used = 0
    cdef Py_ssize_t size = PyBytes_GET_SIZE(buf)
    text = PyUnicode_DecodeUTF8Stateful(PyBytes_AS_STRING(buf), size, "replace", &used)
    if used != size:
        decoder.rest = buf[used:]
    elif rest:
        decoder.rest = b""
    return text


cdef class TextPath:
    """The compiled front of one run's :class:`~proxy.pump.Pump` (see the module docstring)."""

    cdef object pump, run, meter, decoder, gap, transport, conn, encode_text
    cdef list out, counts, quiet
    cdef double bounds[MAX_BOUNDS]
    cdef Py_ssize_t nbounds
    cdef bint passthrough, chunked
    cdef long long max_chars
    cdef double until

    def __init__(self, pump, sink, list quiet, encode_text):
        """``pump``: the run's pump (its sink is ``sink``, a ClientSink); ``quiet``: the chain's
        ``quiet`` functions; ``encode_text``: the encoder's, for a transcoded run (None when the
        bytes pass through as they came)."""
        self.pump = pump
        self.run = pump.run
        self.meter = pump.run.meter
        self.decoder = pump.decoder
        self.out = sink.out
        self.transport = sink.transport
        self.chunked = sink.chunked
        self.conn = sink.conn
        self.gap = pump.gap
        self.counts = pump.gap.counts
        bounds = tuple(pump.gap.bounds)
        if not 0 < len(bounds) <= MAX_BOUNDS:
            raise ValueError("histogram bounds")
        self.nbounds = len(bounds)
        for i, b in enumerate(bounds):
            self.bounds[i] = b
        self.passthrough = pump.passthrough
        self.quiet = quiet
        self.encode_text = encode_text
        self.refresh()

    cpdef refresh(self):
        """Ask the policies for their quiet limits again (after they ran)."""
        cdef long long most = NO_LIMIT
        cdef double until = INFINITY
        for quiet in self.quiet:
            chars, when = quiet(self.run)
            if chars is not None and chars < most:
                most = chars
            if when < until:
                until = when
        self.max_chars = most
        self.until = until

    def body(self, bytes data):
        pump = self.pump
        if pump.ended or pump.held is not None or pump.last == 0.0:
            pump.body(data)  # the first chunk (time-to-first-byte metrics), or nothing for us to do
            self.refresh()
            return
        cdef double now = _monotonic()
        cdef double seconds = now - <double>pump.last
        cdef Py_ssize_t i = 0
        cdef long long chars
        try:
            while i < self.nbounds - 1 and self.bounds[i] < seconds:  # bisect_left: the gap's bucket
                i += 1
            self.counts[i] = self.counts[i] + 1
            gap = self.gap
            gap.sum = gap.sum + seconds
            pump.last = now
            run = self.run
            run.bytes_in = run.bytes_in + PyBytes_GET_SIZE(data)
            decoder = self.decoder
            rest = decoder.rest
            buf = (rest + data) if rest else data
            text = _decode(buf, decoder, rest)
            if PyUnicode_GET_LENGTH(text):
                meter = self.meter
                chars = <long long>meter.chars + PyUnicode_GET_LENGTH(text)
                if chars > self.max_chars or now >= self.until:
                    pump.decoded(data, text)  # a policy has something to do: the pump's path
                    self.refresh()
                    return
                meter.chars = chars
                if not self.passthrough:
                    piece = self.encode_text(text)
                    if piece:
                        self.out.append(piece)
                        run.bytes_out = run.bytes_out + PyBytes_GET_SIZE(piece)
                    return
            if self.passthrough:
                self.out.append(data)
                run.bytes_out = run.bytes_out + PyBytes_GET_SIZE(data)
        except Exception as exc:  # a bug: the awaiting handler logs it and ends the run
            pump._fail(exc)

    def flush(self):
        cdef list out = self.out
        transport = self.transport
        if len(out) == 1 and self.chunked and PyBytes_GET_SIZE(out[0]) < SMALL and transport is not None \
                and not transport.is_closing():
            framed = _frame(out[0])
            out.clear()
            transport.write(framed)
            if not self.conn.writing_paused:
                return
        self.pump.flush()  # more pieces, large ones, a closing client, or back-pressure

    def end(self):
        self.pump.end()

    def broken(self, message):
        self.pump.broken(message)
