# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-chunk path of a text body, compiled (Cython): the one module of flowgate that is not
Python, built by ``make install`` (``setup.py``) and skipped where no C compiler is found.

Why: a forwarded line costs the kernel the same under any proxy, and what flowgate adds on top is
the interpreter: ~10 Python frames and a handful of objects per chunk (an event, a list, a hook
call, framing), cheap alone and several microseconds per line with hundreds of streams
interleaved (README, Benchmark). For a backend that speaks ``text`` this path does the whole
common case of a chunk in C: count the gap, decode the UTF-8 side view, meter, compare with the
policies' quiet limits, frame and write. Python runs again only where something happens.

How it sits in the pump (:mod:`proxy.stream.pump` makes one when :meth:`Pump.fast_path` allows): it is
the upstream connection's body consumer in the pump's place, with the same four calls, and one
more.

- ``body(data)``: the common chunk here; the first chunk, an ended or held pump, and a chunk that
  crosses a quiet limit go to the pump (``Pump.body`` / ``Pump.decoded``), which then does for it
  what it does for every chunk of every other protocol.
- ``flush()``: one small chunked piece is framed and written here; anything else, and a client
  that cannot keep up, is ``Pump.flush``'s.
- ``end()``, ``broken(message)``: the pump's.
- ``take_body(conn, raw)``: for a chunked response (nearly every streaming backend's) it also
  reads the chunk framing itself: it becomes the socket's protocol (``data_received`` per read,
  RFC 9112 chunks read by :mod:`proxy.upstream.chunked`, as strict as llhttp) until the last chunk, then sets the
  connection back as its protocol, complete and reusable. So a line costs one call from the event
  loop into C, and no Python frame unless something happens (a transcoded chunk still calls its
  output encoder's ``encode_text``). Malformed framing is the backend's
  failure, as from the parser: the stream breaks off and the connection is dropped.

State: the decoder's ``rest`` (a split UTF-8 sequence) and the sink's ``out`` list are shared as
they are. The pump's ``ended``/``held``/``last`` and the run's counts (``run.bytes_in``,
``bytes_out``, ``run.meter.chars``, the chunk-gap histogram) are kept in C between hand-overs:
before any call into the pump this adds what it counted to them (``sync``), after the call it
reads the pump's state again (``refresh``); the pump calls ``refresh`` when its state changes on
its own (a hold's end, the run's end) and ``sync`` when the run ends (``detach``). Between
hand-overs those Python objects lag by what this counted: a policy always sees them current when
it is called, a credit checkpoint as of the call that asked for it. The two paths take turns
within one stream (a hook that awaits the store holds later chunks in the pump; they are replayed
through ``Pump.body``).

Quiet limits: every ``on_event`` policy of the run's chain says, through ``quiet(run)``, up to how
many generated characters and until which monotonic time its ``on_event`` would do nothing for a
text event; a chunk past either is handed to the pump, which calls the hooks, and the limits are
asked again. Adding an ``on_event`` policy without ``quiet`` turns this path off for its chain.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.math cimport INFINITY
from libc.stdio cimport snprintf
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from proxy.upstream.chunked cimport DONE, FAILED, ChunkedParser

from proxy.http1.chunks import JOIN_BELOW


cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8Stateful(const char *s, Py_ssize_t size, const char *errors,
                                        Py_ssize_t *consumed)

cdef Py_ssize_t SMALL = JOIN_BELOW  # below it a piece and its framing are one write (proxy.http1.chunks)
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
    p[h + n] = c'\r'
    p[h + n + 1] = c'\n'
    return framed


cdef bint _ascii(bytes data) noexcept:
    """Whether every byte is below 0x80 (then characters = bytes), eight at a time."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i = 0
    cdef unsigned long long word
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        if word & 0x8080808080808080ULL:
            return False
        i += 8
    while i < n:
        if p[i] & 0x80:
            return False
        i += 1
    return True


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
    """The compiled front of one run's :class:`~proxy.stream.pump.Pump` (see the module docstring)."""

    cdef object pump, run, meter, decoder, gap, transport, conn, encode_text
    cdef list out, counts, quiet
    cdef tuple bounds  # the histogram's, shared by every stream
    cdef bint passthrough, chunked
    cdef long long max_chars
    cdef double until
    # the pump's state as of the last pull(), and what this added since the last sync()
    cdef bint active  # the pump takes chunks and none is held behind a hook
    cdef double last  # when the previous chunk arrived (the pump's ``last``)
    cdef long long chars_base, d_chars, d_in, d_out
    cdef double d_gap
    # the backend's chunked body, when this parses it (take_body)
    cdef object upstream
    cdef ChunkedParser chunks
    cdef bint keep_alive
    cdef readonly long long raw_in  # the backend's bytes read here (the connection's read timer looks at it)

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
        self.bounds = pump.gap.bounds
        if not self.bounds or any(type(b) is not float for b in self.bounds):
            raise TypeError("the chunk-gap histogram's bounds must be a tuple of floats")
        self.passthrough = pump.passthrough
        self.quiet = quiet
        self.encode_text = encode_text
        self.refresh()

    cpdef sync(self):
        """Add what this counted since the last sync to the run, its meter and the chunk-gap
        histogram (they are Python objects: touching them per chunk was most of this path's cost).
        Called before any call into the pump, and by the pump when the run ends (detach)."""
        if self.d_in or self.d_out or self.d_chars:
            run = self.run
            run.bytes_in = run.bytes_in + self.d_in
            run.bytes_out = run.bytes_out + self.d_out
            meter = self.meter
            meter.chars = meter.chars + self.d_chars
            gap = self.gap
            gap.sum = gap.sum + self.d_gap
            self.d_in = self.d_out = self.d_chars = 0
            self.d_gap = 0.0
            self.pump.last = self.last

    cpdef refresh(self):
        """Read the pump's state again and ask the policies for their quiet limits (after the
        pump ran: it calls this too when its state changes on its own, e.g. a hold's end)."""
        pump = self.pump
        self.last = pump.last
        self.active = not pump.ended and pump.held is None and self.last != 0.0
        self.chars_base = self.meter.chars
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

    cdef int _piece(self, bytes data) except -1:
        """One body piece: the common case here, the rest the pump's."""
        if not self.active:
            self.sync()
            self.pump.body(data)  # the first chunk (time-to-first-byte metrics), or nothing for us to do
            self.refresh()
            return 0
        cdef double now = _monotonic()
        cdef double seconds = now - self.last
        cdef Py_ssize_t i = 0, last = PyTuple_GET_SIZE(self.bounds) - 1
        cdef long long chars
        cdef Py_ssize_t k
        try:
            while i < last and PyFloat_AS_DOUBLE(<object>PyTuple_GET_ITEM(self.bounds, i)) < seconds:
                i += 1  # bisect_left: the gap's bucket
            self.counts[i] = self.counts[i] + 1
            self.d_gap += seconds
            self.last = now
            self.d_in += PyBytes_GET_SIZE(data)
            decoder = self.decoder
            rest = decoder.rest
            if self.passthrough and not rest and _ascii(data):
                text, k = None, PyBytes_GET_SIZE(data)  # passed through: the count is all metering needs
            else:
                text = _decode((rest + data) if rest else data, decoder, rest)
                k = PyUnicode_GET_LENGTH(text)
            if k:
                chars = self.chars_base + self.d_chars + k
                if chars > self.max_chars or now >= self.until:
                    # a policy has something to do: the pump's path (which meters the text itself)
                    self.sync()
                    self.pump.decoded(data, data.decode("ascii") if text is None else text)
                    self.refresh()
                    return 0
                self.d_chars += k
                if not self.passthrough:
                    piece = self.encode_text(text)
                    if piece:
                        self.out.append(piece)
                        self.d_out += PyBytes_GET_SIZE(piece)
                    return 0
            if self.passthrough:
                self.out.append(data)
                self.d_out += PyBytes_GET_SIZE(data)
        except Exception as exc:  # a bug: the awaiting handler logs it and ends the run
            self.sync()
            self.pump._fail(exc)
        return 0

    cdef int _flush(self) except -1:
        cdef list out = self.out
        transport = self.transport
        if len(out) == 1 and self.chunked and PyBytes_GET_SIZE(out[0]) < SMALL and transport is not None \
                and not transport.is_closing():
            framed = _frame(out[0])
            out.clear()
            transport.write(framed)
            if not self.conn.writing_paused:
                return 0
        self.sync()
        self.pump.flush()  # more pieces, large ones, a closing client, or back-pressure
        self.refresh()
        return 0

    # --- the consumer of the upstream connection (proxy.upstream.Connection.attach) ---
    def body(self, bytes data):
        self._piece(data)

    def flush(self):
        self._flush()

    def end(self):
        self.sync()
        self.pump.end()
        self.refresh()

    def broken(self, message):
        self.sync()
        self.pump.broken(message)
        self.refresh()

    # --- the backend's chunked body, parsed here (the transport's protocol until it ends) ---
    def take_body(self, conn, list raw):
        """Parse the chunked body of ``conn``'s response from here on: ``conn`` (a
        :class:`proxy.upstream.Connection`) has parsed exactly the response's head, ``raw`` is
        what arrived after it. This object is the transport's protocol until the body ends; then
        the connection is again, complete, as if its own parser had read the body."""
        self.upstream = conn
        self.keep_alive = conn.parser.should_keep_alive()
        self.chunks = ChunkedParser()
        conn.transport.set_protocol(self)
        for data in raw:
            self.data_received(data)

    def data_received(self, bytes data):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i = 0, start = 0, take = 0
        cdef ChunkedParser chunks = self.chunks
        self.raw_in += n
        if chunks.state >= DONE:
            if chunks.state == DONE:
                self.upstream._extra()  # bytes after the body: the connection is dropped
            return
        while i < n:
            i = chunks.scan(data, i, &start, &take)
            if take:
                self._piece(data if take == n else PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + start, take))
            if chunks.state == FAILED:
                return self._malformed()
            if chunks.state == DONE:
                self._done()
                if i < n:  # bytes after the body: never read, the connection is dropped
                    self.upstream._extra()
                break
        self._flush()

    cdef _done(self):
        conn = self.upstream
        conn.keep_alive = self.keep_alive
        transport = conn.transport
        if transport is not None:
            transport.set_protocol(conn)
        conn._complete()  # the consumer's end: this object's, so the pump's

    cdef _malformed(self):
        conn = self.upstream
        conn._fail("the backend sent a malformed response")
        transport = conn.transport
        if transport is not None:
            transport.close()
        self._flush()

    def eof_received(self):
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc):
        self.upstream.connection_lost(exc)  # mid-body: the connection reports the stream broken

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass
