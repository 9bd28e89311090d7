# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-chunk path of a text body, of Langflow's events, an AI SDK data stream or SSE, compiled (Cython).

Why: a forwarded line costs the kernel the same under any proxy, and what flowgate adds on top is
the interpreter: ~10 Python frames and a handful of objects per chunk (an event, a list, a hook
call, framing), cheap alone and several microseconds per line with hundreds of streams
interleaved (README, Benchmark). For a backend that speaks ``text`` this path does the whole
common case of a chunk in C: count the gap, meter, compare with the policies' quiet limits, frame
and write. Python runs again only where something happens.

For a backend that speaks ``langflow`` (transcoded: the workflow route's text, profitbase's JSON
array) it also splits the events into lines and reads the common one, a ``token`` event, itself
(scanned in C: :func:`~proxy.stream.tokenlines.langflow_token`; orjson parses a line of another
shape), and the chunk's text goes on as a text piece does, the message's count in the
decoder's ``emitted`` kept as :meth:`LangflowDecoder.frame <proxy.protocols.langflow.LangflowDecoder.frame>` keeps it. Every
other event (a message, usage, the end, an error, a line that is not JSON) goes to that decoder
and its events to the pump (``Pump.decoded_events``). The incomplete last line stays in the
decoder's ``lines`` (its pieces held as they came, joined once the line ends, at most
``MAX_LINE_BYTES``: :mod:`proxy.protocols._lines`), as its own ``feed`` leaves it, so the pump can
take over at any byte. An AI SDK data stream (``ai-sdk``, transcoded) is read the same way: its
text parts (``0:"text"``) here, as :meth:`AiSdkDecoder.line
<proxy.protocols.ai_sdk.AiSdkDecoder.line>` reads them, every other part by that decoder. So is an
SSE stream (``sse``, always transcoded): a ``data:`` line holding an OpenAI chat or completion
chunk with text (:mod:`proxy.stream.tokenlines` reads it) is taken here only when it is certainly
a whole event (nothing pending in :class:`~proxy.protocols.sse.SseDecoder`, its blank line in
hand); every other line (comments, ``event:``, multi-line data, ``[DONE]``, usage, errors, a data
line whose blank line has not arrived) goes to ``SseDecoder.line`` as its ``feed`` gives it, so
its state is the Python path's at every byte. NDJSON stays on the Python pump: its lines are
Items the pump must see, and handing them over from here measured no faster (``bench.micro``).

Where it sits: it is the run's body consumer in the pump's place (:meth:`Pump.fast_path
<proxy.stream.pump.Pump.fast_path>` makes one), and receives body pieces exactly as the pump
would: ``body(piece)`` per piece and one ``flush()`` per socket read from the upstream
connection (a chunked body's framing is read by :class:`proxy.upstream.chunked.ChunkedBody`,
in C too), then ``end()`` or ``broken(message)``. It knows nothing of sockets or framing on the
backend's side. What it cannot do itself it hands to the pump, which then does for the piece what
it does for every piece of every other protocol:

- the first piece (time-to-first-byte metrics: ``Pump.count``), and a piece that arrives while
  the pump holds pieces behind a hook that awaits the store (``Pump.take``);
- a piece that crosses a policy's quiet limit (``Pump.decoded``: the hooks run);
- a flush of more than one small piece, or a client that cannot keep up (``Pump.flush``);
- the end and a broken stream (``Pump.end`` / ``Pump.broken``).

The one hand-over. Nothing of the pump's is copied here: its ``ended`` and ``held`` are read
where they are, per piece. What this path owns is what it counts per piece, kept in C because
touching Python objects per piece was most of its cost: bytes in and out, generated characters,
the chunk gaps' sum (the gap's bucket count is written in place), the previous piece's clock.
``hand_over()`` adds the counts to their owners (``run.bytes_in``, ``run.bytes_out``,
``run.meter.chars``, the chunk-gap histogram child) and is called before
every call into the pump and when the pump detaches it; after every call into the pump, and when
the pump's hooks ran on their own (a hold's task), ``limits()`` reads the meter and asks the
policies for their quiet limits again. Between hand-overs those Python objects lag by what this
counted: a policy sees them current whenever it is called.

Quiet limits: every ``on_event`` policy of the run's chain says, through ``quiet(run)``, up to how
many generated characters and until which monotonic time its ``on_event`` would do nothing for a
text event; a piece past either is handed to the pump. Adding an ``on_event`` policy without
``quiet`` turns this path off for its chain.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_GET_LENGTH
from libc.math cimport INFINITY
from libc.string cimport memchr, memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from proxy.http1.chunks cimport one_chunk
from proxy.stream.tokenlines cimport frame_token, langflow_token, part_text, sse_text

from proxy.http1.chunks import JOIN_BELOW
from proxy.protocols._lines import LineTooLong
from proxy.protocols.ai_sdk import AiSdkDecoder
from proxy.protocols.langflow import LangflowDecoder
from proxy.protocols.sse import SseDecoder
from proxy.protocols.text import TextDecoder, TextEncoder

from orjson import JSONDecodeError, loads

cdef Py_ssize_t SMALL = JOIN_BELOW  # below it a piece and its framing are one write (proxy.http1.chunks)
cdef long long NO_LIMIT = 1 << 62
cdef enum:
    TEXT, LANGFLOW, AI_SDK, SSE  # the backend protocols read here


cdef inline double _monotonic() noexcept nogil:  # time.monotonic()'s clock
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


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


cdef class TextPath:
    """The compiled front of one run's :class:`~proxy.stream.pump.Pump` (see the module docstring)."""

    cdef object pump, run, meter, decoder, decode, gap, transport, conn, encode_text
    cdef object lines, emitted, last_id  # a Langflow decoder's (and the last message id read)
    cdef list out, counts, quiet
    cdef tuple bounds  # the histogram's, shared by every stream
    cdef bint passthrough, chunked, head_pending, utf8_out  # utf8_out: text out as its UTF-8 (TextEncoder)
    cdef int kind
    cdef long long max_chars, chars_base
    cdef double until
    # owned here between hand-overs (see the module docstring)
    cdef double last  # when the previous piece arrived (0: none yet)
    cdef long long d_chars, d_in, d_out
    cdef double d_gap

    @staticmethod
    def takes(decoder, bint passthrough):
        """Whether this path reads what ``decoder`` reads: text; Langflow's events, the AI SDK's
        data stream and SSE, transcoded."""
        return type(decoder) is TextDecoder or \
            (type(decoder) in (LangflowDecoder, AiSdkDecoder, SseDecoder) and not passthrough)

    def __init__(self, pump, sink, list quiet, encode_text):
        """``pump``: the run's pump (its sink is ``sink``, a ClientSink; its decoder one that
        :meth:`takes`); ``quiet``: the chain's ``quiet`` functions; ``encode_text``: the
        encoder's, for a transcoded run (None when the bytes pass through as they came)."""
        self.pump = pump
        self.run = pump.run
        self.meter = pump.run.meter
        self.decoder = pump.decoder
        if type(self.decoder) is TextDecoder:
            self.kind = TEXT
            self.decode = pump.decoder.text
        else:
            self.kind = {LangflowDecoder: LANGFLOW, AiSdkDecoder: AI_SDK, SseDecoder: SSE}[type(self.decoder)]
            self.lines = pump.decoder.lines
            if self.kind == LANGFLOW:
                self.emitted = pump.decoder.emitted
        self.out = sink.out
        self.transport = sink.transport
        self.head_pending = sink.head is not None  # the response head leaves with the first flush: the sink's
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
        self.utf8_out = getattr(encode_text, "__func__", None) is TextEncoder.encode_text
        self.limits()

    cpdef hand_over(self):
        """Add what this counted since the last hand-over to its owners (the run, its meter and
        the chunk-gap histogram child)."""
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

    cpdef limits(self):
        """Read the meter and ask the policies for their quiet limits (after the pump ran)."""
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
        pump = self.pump
        if pump.ended:
            return 0
        cdef double now = _monotonic()
        if self.last == 0.0:  # the first piece: the pump counts it (time to first byte)
            self.last = now
            pump.count(PyBytes_GET_SIZE(data))
            return self._to_pump(data)
        cdef double seconds = now - self.last
        cdef Py_ssize_t i = 0, top = PyTuple_GET_SIZE(self.bounds) - 1
        cdef long long chars
        cdef Py_ssize_t k
        try:
            # the chunk-gap histogram child's observe() (proxy.metrics), with the sum kept here
            while i < top and PyFloat_AS_DOUBLE(<object>PyTuple_GET_ITEM(self.bounds, i)) < seconds:
                i += 1
            self.counts[i] = self.counts[i] + 1
            self.d_gap += seconds
            self.last = now
            self.d_in += PyBytes_GET_SIZE(data)
            if pump.held is not None:  # pieces wait behind a hook: in arrival order, the pump's
                return self._to_pump(data)
            if self.kind != TEXT:
                return self._events(data, now)
            if self.passthrough and not self.decoder.rest and _ascii(data):
                text, k = None, PyBytes_GET_SIZE(data)  # passed through: the count is all metering needs
            else:
                text = self.decode(data)
                k = PyUnicode_GET_LENGTH(text)
            if self._text(data, text, k, now) and self.passthrough:
                self.out.append(data)
                self.d_out += PyBytes_GET_SIZE(data)
        except Exception as exc:  # a bug: the awaiting handler logs it and ends the run
            self.hand_over()
            pump._fail(exc)
        return 0

    cdef bint _text(self, bytes data, text, Py_ssize_t k, double now) except -1:
        """``k`` characters of generated text (``text``; None: ``data`` is ASCII passed through):
        metered and, transcoded, encoded here; or, when a policy has something to do, the pump's
        (which meters it itself). True when the caller still writes ``data`` (passthrough)."""
        cdef long long chars
        if not k:
            return True
        chars = self.chars_base + self.d_chars + k
        if chars > self.max_chars or now >= self.until:
            self.hand_over()
            self.pump.decoded(data, data.decode("ascii") if text is None else text)
            self.limits()
            return False
        self.d_chars += k
        if self.passthrough:
            return True
        piece = PyUnicode_AsUTF8String(text) if self.utf8_out else self.encode_text(text)
        if piece:
            self.out.append(piece)
            self.d_out += PyBytes_GET_SIZE(piece)
        return False

    cdef int _events(self, bytes data, double now) except -1:
        """A line-framed body: the complete lines of what arrived, each read here or handed over."""
        lines = self.lines
        cdef const char *p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), start = 0, end, stop, nxt
        cdef const char *nl
        if memchr(p, c'\n', n) == NULL:  # no line ends here: held as it came (joined once, when one does)
            try:
                lines.hold(data)
            except LineTooLong as exc:
                events = []
                self.decoder.too_long(exc, events)
                self._decoded(events)
            return 0
        if lines.buf:  # (joined() empties the decoder's buffer)
            data = lines.joined(data)
            p = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        pump = self.pump
        while start < n:
            nl = <const char *>memchr(p + start, c'\n', n - start)
            if nl == NULL:
                break
            end = nl - p
            stop = end - 1 if end > start and p[end - 1] == c'\r' else end
            nxt = end + 1  # where the next line begins
            if self.kind == SSE:  # (a blank line is an SSE event's end)
                nxt = self._sse(data, start, stop, nxt, n, now)
            elif stop > start:
                if self.kind == LANGFLOW:
                    self._event(data, start, stop, now)
                else:
                    self._part(data[start:stop], now)
            else:
                start = nxt
                continue
            if pump.ended or pump.held is not None:  # the run ended, or a hook awaits: the rest is the pump's
                lines.buf = b""
                if nxt < n and not pump.ended:
                    self.hand_over()
                    pump.take(data[nxt:])
                    self.limits()
                return 0
            start = nxt
        if start < n:  # an incomplete last line, held as the decoder holds it
            lines.buf = data[start:]
            lines.size = n - start
        return 0

    cdef Py_ssize_t _sse(self, bytes data, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t nxt, Py_ssize_t n,
                         double now) except -1:
        """One SSE line (``data[start:stop]``, the next begins at ``nxt``): a whole event of text
        (:func:`~proxy.stream.tokenlines.sse_text`) here, with its blank line; any other line to
        the decoder and its events to the pump. Returns where the next line to read begins."""
        cdef Py_ssize_t after = -1
        text = sse_text(data, start, stop, nxt, n, self.decoder, &after)
        if text is not None:
            self._text(b"", text, PyUnicode_GET_LENGTH(text), now)
            return after
        self._line(data[start:stop])
        return nxt

    cdef int _part(self, bytes line, double now) except -1:
        """One AI SDK part: a text part (``0:"text"``) here, as ``AiSdkDecoder.line`` reads it;
        any other to the decoder and its events to the pump."""
        text = part_text(line)
        if text is None:
            self._line(line)
        elif text:
            self._text(b"", text, PyUnicode_GET_LENGTH(text), now)
        return 0

    cdef int _line(self, bytes line) except -1:
        """A line for the decoder: its events to the pump."""
        events = []
        self.decoder.line(line, events)
        return self._decoded(events)

    cdef int _decoded(self, list events) except -1:
        """The decoder's events, if any, to the pump (counts handed over first, limits read after)."""
        if events:
            self.hand_over()
            self.pump.decoded_events(events)
            self.limits()
        return 0

    cdef int _event(self, bytes data, Py_ssize_t start, Py_ssize_t stop, double now) except -1:
        """One Langflow event line (``data[start:stop]``): a ``token`` event here (as
        ``LangflowDecoder.frame`` reads it), any other to the decoder and its events to the pump."""
        token = langflow_token(data, start, stop, self.last_id)
        if token is None:
            try:
                frame = loads(memoryview(data)[start:stop])
            except JSONDecodeError:
                return 0  # skipped, as the decoder skips it
            if type(frame) is not dict:  # (skipped too)
                return 0
            token = frame_token(frame)
            if token is None:  # another event: the decoder's
                events = []
                self.decoder.frame(frame, events)
                return self._decoded(events)
        chunk, msg_id = token
        self.last_id = msg_id
        if chunk:
            emitted = self.emitted
            emitted[msg_id] = emitted.get(msg_id, 0) + PyUnicode_GET_LENGTH(chunk)
            self._text(b"", chunk, PyUnicode_GET_LENGTH(chunk), now)
        return 0

    cdef int _to_pump(self, bytes data) except -1:
        """A counted piece the pump takes from the decoder on."""
        self.hand_over()
        self.pump.take(data)
        self.limits()
        return 0

    # --- the body consumer (proxy.upstream.consumer.BodyConsumer) ---
    def body(self, bytes data):
        self._piece(data)

    def flush(self):
        cdef list out = self.out
        transport = self.transport
        if self.head_pending:  # the first flush is the sink's (the head and these bytes in one write)
            self.head_pending = False
        elif len(out) == 1 and self.chunked and PyBytes_GET_SIZE(out[0]) < SMALL and transport is not None \
                and not transport.is_closing():
            framed = one_chunk(out[0])
            out.clear()
            transport.write(framed)
            if not self.conn.writing_paused:
                return
        self.hand_over()
        self.pump.flush()  # more pieces, large ones, a closing client, or back-pressure
        self.limits()

    def end(self):
        self.hand_over()
        self.pump.end()
        self.limits()

    def broken(self, message):
        self.hand_over()
        self.pump.broken(message)
        self.limits()
