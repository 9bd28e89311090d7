# cython: language_level=3, boundscheck=False, wraparound=False
"""The token-carrying lines of the line-framed backend protocols, read in C for the compiled path
(:mod:`proxy.stream.textpath`): whether a line (an SSE event: its lines) is one its protocol's
decoder would read as a piece of generated text and nothing else, and that text. Anything these
functions do not take is the decoder's, line by line, as its own ``feed`` would give it.

(Langflow's ``token`` event is read in the text path itself: the frame it parses goes on to the
decoder when it is not a token.)"""

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
