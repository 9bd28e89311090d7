"""The build's compiled modules: proxy/stream/textpath.pyx (with the token-carrying lines it reads,
proxy/stream/tokenlines.pyx), the chunked-body reader
proxy/upstream/chunked.pyx, and the chunk framing proxy/http1/chunks.py (plain Python, compiled
so the text path calls it from C) (metadata is in pyproject.toml). They are optional: without a C compiler the
build goes on without them and every chunk takes the Python pump, which is the same behaviour,
slower (docs/internals.md: "The compiled text path")."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("proxy.http1.chunks", ["proxy/http1/chunks.py"], optional=True),
         Extension("proxy.upstream.chunked", ["proxy/upstream/chunked.pyx"], optional=True),
         Extension("proxy.stream.tokenlines", ["proxy/stream/tokenlines.pyx"], optional=True),
         Extension("proxy.stream.textpath", ["proxy/stream/textpath.pyx"], optional=True)],
        compiler_directives={"language_level": 3},
    )
)
