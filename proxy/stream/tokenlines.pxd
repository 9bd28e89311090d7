# The token-carrying lines of the line-framed backend protocols, read in C (tokenlines.pyx).
cdef object part_text(bytes line)
cdef object sse_text(bytes data, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t nxt, Py_ssize_t n, object decoder,
                     Py_ssize_t *after)
cdef object langflow_token(bytes line, Py_ssize_t start, Py_ssize_t stop, object last_id)
cdef object frame_token(dict frame)
