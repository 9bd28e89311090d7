"""The build's one compiled module, proxy/textpath.pyx (metadata is in pyproject.toml). It is
optional: without a C compiler the build goes on without it and every chunk takes the Python pump,
which is the same behaviour, slower (README: "The compiled text path")."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("proxy.textpath", ["proxy/textpath.pyx"], optional=True)],
        compiler_directives={"language_level": 3},
    )
)
