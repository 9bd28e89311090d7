# proxy/http1/chunks.py compiled (its types): the compiled text path (proxy/stream/textpath.pyx)
# calls one_chunk from C; Python callers import the same function.

cpdef bytes one_chunk(bytes data)
