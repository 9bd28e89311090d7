"""The build's compiled modules, proxy/stream/textpath.pyx and the chunked-body parser it uses,
proxy/upstream/chunked.pyx (metadata is in pyproject.toml). They are optional: without a C compiler the
build goes on without them and every chunk takes the Python pump, which is the same behaviour,
slower (docs/internals.md: "The compiled text path")."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("proxy.upstream.chunked", ["proxy/upstream/chunked.pyx"], optional=True),
         Extension("proxy.stream.textpath", ["proxy/stream/textpath.pyx"], optional=True)],
        compiler_directives={"language_level": 3},
    )
)
