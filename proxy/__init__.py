"""flowgate: a streaming API gateway for flow runtimes."""

__version__ = "0.1.0"
