# cython: language_level=3, boundscheck=False, wraparound=False
"""The token-carrying lines of the line-framed backend protocols, read in C for the compiled path
(:mod:`proxy.stream.textpath`): whether a line (an SSE event: its lines) is one its protocol's
decoder would read as a piece of generated text and nothing else, and that text. Anything these
functions do not take is the decoder's, line by line, as its own ``feed`` would give it.

Langflow's ``token`` event is scanned here without a JSON parse (:func:`langflow_token`); what
the scanner does not take the text path parses with orjson, and the frame goes on to the decoder
when it is not a token."""

from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8, PyUnicode_GET_LENGTH

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void *PyUnicode_DATA(object o)
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp

from proxy.protocols._lines import MAX_LINE_BYTES

from orjson import JSONDecodeError, loads

cdef Py_ssize_t MAX_LINE = MAX_LINE_BYTES


cdef object part_text(bytes line):
    """An AI SDK text part (``0:"text"``) as :meth:`AiSdkDecoder.line
    <proxy.protocols.ai_sdk.AiSdkDecoder.line>` reads it: its text, ``""`` for one that generates
    none (empty, not a string, not JSON: skipped, as the decoder skips it); None for any other
    part (the decoder's)."""
    cdef const char *p = line
    if len(line) < 2 or p[0] != c'0' or p[1] != c':':
        return None
    try:
        value = loads(memoryview(line)[2:])
    except JSONDecodeError:
        return ""
    return value if type(value) is str else ""


cdef object sse_text(bytes data, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t nxt, Py_ssize_t n, object decoder,
                     Py_ssize_t *after):
    """The SSE line ``data[start:stop]`` (the next one begins at ``nxt``, ``n``: the bytes in
    hand), when it is a whole event on its own that :class:`SseDecoder
    <proxy.protocols.sse.SseDecoder>` (``decoder``) reads as text alone: a ``data:`` line, nothing
    pending in the decoder (no data line, no event name), the blank line that dispatches it in
    hand (``*after``: where the line after it begins), and its data an OpenAI chat or completion
    chunk (:func:`chat_text`) within the decoder's event bound. Else None: the line is the
    decoder's (a data line whose blank line has not arrived yet among them: certain is only what
    is in hand)."""
    cdef const char *p = data
    cdef Py_ssize_t v = start + 5
    if stop - start <= 5 or memcmp(p + start, b"data:", 5) != 0:
        return None
    if p[v] == c' ':
        v += 1
    if nxt < n and p[nxt] == c'\n':
        after[0] = nxt + 1
    elif nxt + 1 < n and p[nxt] == c'\r' and p[nxt + 1] == c'\n':
        after[0] = nxt + 2
    else:
        return None
    if stop - v > MAX_LINE or decoder._data or decoder._event:
        return None
    return chat_text(data[v:stop])


cdef object chat_text(bytes value):
    """The text SSE data ``value`` alone gives (an OpenAI chat/completion chunk: its first choice's
    ``delta.content``, or ``text``), when that is all the decoder makes of it (a non-empty string,
    no ``usage``); else None."""
    try:
        obj = loads(value)
    except JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    choices = obj.get("choices")
    if type(choices) is not list or not choices or obj.get("usage") is not None:
        return None
    choice = choices[0]
    if type(choice) is not dict:
        return None
    delta = choice.get("delta")
    text = delta.get("content") if type(delta) is dict else choice.get("text")
    return text if type(text) is str and text else None


# --- Langflow's token event, scanned -------------------------------------------------------------
# Why hand-written: orjson builds two dicts and five strings for a line whose every part but the
# chunk and its message id is thrown away (~1.2 µs of the compiled path's 1.6 per event:
# bench.micro). The scanner takes one shape of JSON only, the one Langflow writes (any key order,
# any JSON whitespace, escapes): an object of string values and, under ``data``, an object of
# string values; duplicate keys as orjson reads them (the last wins). Anything else (a number, a
# nested value, an escaped key, a byte above 0x7f, a lone surrogate, bad JSON) is not scanned: the
# caller parses the line with orjson as before. So what it takes it reads as orjson would, and what
# it does not take costs one failed scan (tests/stream/test_tokenlines.py holds it to orjson).

cdef enum:
    NO_DATA, DATA_OBJECT, DATA_OTHER
    SMALL_VALUE = 256  # an escaped string up to this many bytes is unescaped on the stack


cdef inline Py_ssize_t _ws(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and (p[i] == c' ' or p[i] == c'\t' or p[i] == c'\r' or p[i] == c'\n'):
        i += 1
    return i


cdef inline int _hex4(const unsigned char *p) noexcept:
    """The value of four hex digits, -1 if one is not."""
    cdef int v = 0, d, k
    cdef unsigned char c
    for k in range(4):
        c = p[k]
        if c'0' <= c <= c'9':
            d = c - c'0'
        elif c'a' <= c <= c'f':
            d = c - c'a' + 10
        elif c'A' <= c <= c'F':
            d = c - c'A' + 10
        else:
            return -1
        v = v * 16 + d
    return v


cdef Py_ssize_t _string(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, bint *escaped) noexcept:
    """The JSON string whose opening quote is at ``p[i]``, ASCII only: the index after its closing
    quote, or -1 (not taken: a control character, a byte above 0x7f, a bad escape, a lone
    surrogate, no closing quote). ``escaped``: whether it holds a backslash."""
    cdef unsigned char c, e
    cdef int u, low
    i += 1
    escaped[0] = False
    while i < n:
        c = p[i]
        if c == c'"':
            return i + 1
        if c < 0x20 or c >= 0x80:
            return -1
        if c != c'\\':
            i += 1
            continue
        escaped[0] = True
        if i + 1 >= n:
            return -1
        e = p[i + 1]
        if e == c'u':
            if i + 6 > n:
                return -1
            u = _hex4(p + i + 2)
            if u < 0 or 0xDC00 <= u <= 0xDFFF:
                return -1
            if 0xD800 <= u <= 0xDBFF:  # a high surrogate: its low one must follow
                if i + 12 > n or p[i + 6] != c'\\' or p[i + 7] != c'u':
                    return -1
                low = _hex4(p + i + 8)
                if not 0xDC00 <= low <= 0xDFFF:
                    return -1
                i += 12
            else:
                i += 6
        elif e == c'"' or e == c'\\' or e == c'/' or e == c'b' or e == c'f' or e == c'n' or e == c'r' or e == c't':
            i += 2
        else:
            return -1
    return -1


cdef inline unsigned char _unescaped(unsigned char e) noexcept:
    """The character of a one-letter escape (``\\n``: a newline; ``\\"``, ``\\\\``, ``\\/``: themselves)."""
    if e == c'n':
        return 10
    if e == c't':
        return 9
    if e == c'r':
        return 13
    if e == c'b':
        return 8
    if e == c'f':
        return 12
    return e


cdef object _value(const unsigned char *p, Py_ssize_t a, Py_ssize_t b, bint escaped):
    """The str of a string :func:`_string` took (``p[a:b]``: between its quotes)."""
    if not escaped:
        return PyUnicode_DecodeASCII(<const char *>p + a, b - a, NULL)
    cdef unsigned char small[SMALL_VALUE]  # (a model's token is short: no allocation per chunk)
    cdef unsigned char *out = small  # UTF-8 is never longer than its escape
    if b - a > SMALL_VALUE:
        out = <unsigned char *>malloc(b - a)
        if out == NULL:
            raise MemoryError()
    cdef Py_ssize_t i = a, k = 0
    cdef unsigned int u
    cdef unsigned char e
    try:
        while i < b:
            if p[i] != c'\\':
                out[k] = p[i]
                k += 1
                i += 1
                continue
            e = p[i + 1]
            i += 2
            if e == c'u':
                u = <unsigned int>_hex4(p + i)
                i += 4
                if 0xD800 <= u <= 0xDBFF:  # (its low surrogate checked by _string)
                    u = 0x10000 + ((u - 0xD800) << 10) + (<unsigned int>_hex4(p + i + 2) - 0xDC00)
                    i += 6
                if u < 0x80:
                    out[k] = u
                    k += 1
                elif u < 0x800:
                    out[k] = 0xC0 | (u >> 6)
                    out[k + 1] = 0x80 | (u & 0x3F)
                    k += 2
                elif u < 0x10000:
                    out[k] = 0xE0 | (u >> 12)
                    out[k + 1] = 0x80 | ((u >> 6) & 0x3F)
                    out[k + 2] = 0x80 | (u & 0x3F)
                    k += 3
                else:
                    out[k] = 0xF0 | (u >> 18)
                    out[k + 1] = 0x80 | ((u >> 12) & 0x3F)
                    out[k + 2] = 0x80 | ((u >> 6) & 0x3F)
                    out[k + 3] = 0x80 | (u & 0x3F)
                    k += 4
            else:
                out[k] = _unescaped(e)
                k += 1
        return PyUnicode_DecodeUTF8(<const char *>out, k, NULL)
    finally:
        if out != small:
            free(out)


cdef inline bint _is(const unsigned char *p, Py_ssize_t a, Py_ssize_t b, const char *name, Py_ssize_t size) noexcept:
    return b - a == size and memcmp(p + a, name, size) == 0


cdef Py_ssize_t _key(const unsigned char *p, Py_ssize_t i, Py_ssize_t stop, Py_ssize_t *k0,
                     Py_ssize_t *k1) noexcept:
    """An object's key at ``p[i]`` (a string without escapes: ``p[k0:k1]``), its colon and the
    whitespace after it: the index of the value's first byte (< ``stop``), or -1."""
    cdef bint esc
    if i >= stop or p[i] != c'"':
        return -1
    k0[0] = i + 1
    i = _string(p, i, stop, &esc)
    if i < 0 or esc:
        return -1
    k1[0] = i - 1
    i = _ws(p, i, stop)
    if i >= stop or p[i] != c':':
        return -1
    i = _ws(p, i + 1, stop)
    return i if i < stop else -1


cdef object langflow_token(bytes line, Py_ssize_t start, Py_ssize_t stop, object last_id):
    """The Langflow event line ``line[start:stop]`` when it is a ``token`` event the scanner takes
    (the module's note above): ``(chunk, message id)`` as :meth:`LangflowDecoder.frame
    <proxy.protocols.langflow.LangflowDecoder.frame>` reads them, ``("", None)`` for a token event
    that generates nothing (its ``data`` not an object, no non-empty string ``chunk``); None for
    any other line (another event, or a shape not scanned: the caller parses it). A message id
    equal to ``last_id`` (the previous line's, most often) is that same str object: not made
    again, its hash already known to the decoder's ``emitted`` dict."""
    cdef const unsigned char *p = <const unsigned char *>(<const char *>line)
    cdef Py_ssize_t i = _ws(p, start, stop), k0, k1, v0, v1
    cdef Py_ssize_t c0 = -1, c1 = -1, m0 = -1, m1 = -1, e0 = -1, e1 = -1
    cdef bint esc, c_esc = False, m_esc = False, e_esc = False, inner
    cdef int data = NO_DATA
    if i >= stop or p[i] != c'{':
        return None
    i = _ws(p, i + 1, stop)
    if i < stop and p[i] == c'}':
        return None
    while True:
        i = _key(p, i, stop, &k0, &k1)
        if i < 0:
            return None
        inner = _is(p, k0, k1, b"data", 4)
        if p[i] == c'{' and inner:  # data: an object of string values
            data = DATA_OBJECT
            c0 = m0 = -1
            i = _ws(p, i + 1, stop)
            if i < stop and p[i] == c'}':
                i += 1
            else:
                while True:
                    i = _key(p, i, stop, &k0, &k1)
                    if i < 0 or p[i] != c'"':
                        return None
                    v0 = i + 1
                    i = _string(p, i, stop, &esc)
                    if i < 0:
                        return None
                    v1 = i - 1
                    if _is(p, k0, k1, b"chunk", 5):
                        c0, c1, c_esc = v0, v1, esc
                    elif _is(p, k0, k1, b"id", 2):
                        m0, m1, m_esc = v0, v1, esc
                    i = _ws(p, i, stop)
                    if i < stop and p[i] == c',':
                        i = _ws(p, i + 1, stop)
                        continue
                    if i < stop and p[i] == c'}':
                        i += 1
                        break
                    return None
        elif p[i] == c'"':
            v0 = i + 1
            i = _string(p, i, stop, &esc)
            if i < 0:
                return None
            if inner:
                data = DATA_OTHER
            elif _is(p, k0, k1, b"event", 5):
                e0, e1, e_esc = v0, i - 1, esc
        else:
            return None
        i = _ws(p, i, stop)
        if i < stop and p[i] == c',':
            i = _ws(p, i + 1, stop)
            continue
        if i < stop and p[i] == c'}':
            break
        return None
    if _ws(p, i + 1, stop) != stop or e0 < 0 or e_esc or not _is(p, e0, e1, b"token", 5):
        return None
    if data != DATA_OBJECT or c0 < 0 or c1 == c0:
        return "", None
    if m0 < 0:
        return _value(p, c0, c1, c_esc), ""
    if not m_esc and type(last_id) is str and PyUnicode_IS_COMPACT_ASCII(last_id) \
            and PyUnicode_GET_LENGTH(last_id) == m1 - m0 and memcmp(PyUnicode_DATA(last_id), p + m0, m1 - m0) == 0:
        return _value(p, c0, c1, c_esc), last_id
    return _value(p, c0, c1, c_esc), _value(p, m0, m1, m_esc)


cdef object frame_token(dict frame):
    """A Langflow frame orjson parsed, read as :meth:`LangflowDecoder.frame
    <proxy.protocols.langflow.LangflowDecoder.frame>` reads a ``token`` event: as
    :func:`langflow_token` answers; None for another event (the decoder's)."""
    if frame.get("event") != "token":
        return None
    payload = frame.get("data")
    if type(payload) is dict:
        chunk = payload.get("chunk")
        if type(chunk) is str and chunk:
            return chunk, str(payload.get("id", ""))
    return "", None


def scan_langflow_token(bytes line, last_id=None):
    """:func:`langflow_token` of a whole line (for tests and ``bench.micro``)."""
    return langflow_token(line, 0, len(line), last_id)
