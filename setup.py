"""The build's compiled modules, proxy/textpath.pyx and the chunked-body parser it uses,
proxy/chunked.pyx (metadata is in pyproject.toml). They are optional: without a C compiler the
build goes on without them and every chunk takes the Python pump, which is the same behaviour,
slower (README: "The compiled text path")."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("proxy.chunked", ["proxy/chunked.pyx"], optional=True),
         Extension("proxy.textpath", ["proxy/textpath.pyx"], optional=True)],
        compiler_directives={"language_level": 3},
    )
)
