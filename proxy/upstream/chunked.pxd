# The compiled chunked-body parser (proxy/upstream/chunked.pyx), as proxy/stream/textpath.pyx calls it from C.

cdef enum:
    SIZE_START, SIZE, EXT, EXT_NAME, EXT_VALUE, EXT_QUOTED, EXT_QPAIR, EXT_QDONE, SIZE_LF, DATA, DATA_CR,
    DATA_LF, TRAILER, END_LF, TRAILERS, DONE, FAILED

cdef class ChunkedParser:
    cdef readonly int state
    cdef unsigned long long remaining
    cdef object trailers
    cdef bytes tail
    cdef Py_ssize_t trailer_bytes

    cdef Py_ssize_t scan(self, bytes data, Py_ssize_t i, Py_ssize_t *start, Py_ssize_t *take) except -1
    cdef Py_ssize_t _trailers(self, bytes data, Py_ssize_t i) except -1
